"""``python -m flowattn_np``: the command line (see cli.py)."""

import sys

from flowattn_np.cli import main

sys.exit(main())
