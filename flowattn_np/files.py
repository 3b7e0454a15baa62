"""Files written all-or-nothing: a reader never sees half a checkpoint, download or table.

``atomic_write`` is the one way the package writes a file: the content goes to a
temporary file in the target's folder, is flushed to disk, and only then renamed
over the target (``os.replace`` is atomic within one file system). If anything
fails in between, the temporary file is removed and the target keeps its old
content (or stays absent).
"""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Context manager yielding a file object that becomes ``path`` only if the block succeeds.

    ``mode`` is "wb" (binary) or "w" (text; ``encoding`` defaults to UTF-8). The
    folder of ``path`` is created if missing. On any exception, KeyboardInterrupt
    included, the temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_write("results.json", "w") as f:
            f.write(text)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    if mode == "w":
        encoding = encoding or "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path, "w") as f:
        f.write(text)
