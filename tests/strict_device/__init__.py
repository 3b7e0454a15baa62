"""A strict stand-in for CuPy, so that the GPU code path is tested on machines without a GPU.

``with strict_device.installed(): ...`` puts a fake ``cupy`` (and ``cupyx``) into
``sys.modules`` for the block and restores what was there afterwards; the test
suite's ``backend`` fixture does this for its ``"strict"`` cases, then runs the test
with ``flowattn_np.use_backend("cupy")``. Where real CuPy is installed with a GPU,
the fixture's ``"cupy"`` cases run on it instead and the strict cases are skipped.

What it enforces and counts is listed in ``array.py``; ``COUNTS`` holds the
counters (``COUNTS.window()`` counts one block). What it cannot catch is in
README.md.
"""

from __future__ import annotations

import contextlib
import sys

from . import module
from .array import ndarray
from .counters import COUNTS, Counts

NAMES = ("cupy", "cupy.linalg", "cupy.random", "cupy.cuda", "cupy.cuda.runtime", "cupyx",
         "cupyx.profiler")


@contextlib.contextmanager
def installed():
    """Install the stand-in as ``cupy`` for the block; yields the fake module."""
    saved = {name: sys.modules.get(name, _MISSING) for name in NAMES}
    mods = module.build()
    sys.modules.update(mods)
    module.MODULE = mods["cupy"]
    COUNTS.reset()
    try:
        yield mods["cupy"]
    finally:
        module.MODULE = None
        for name, old in saved.items():
            if old is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


_MISSING = object()

__all__ = ["COUNTS", "Counts", "installed", "ndarray"]
