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


class RunFolder:
    """The output folder of a run: created on the first write, cleaned up if the run fails.

    ``file(name)`` returns the path of ``name`` inside the folder, creating the folder
    (and missing parents) first and remembering both. Used as a context manager, an
    exception (KeyboardInterrupt included) removes what this run added: the files it
    wrote and the folders it created, if they are then empty. A folder that existed
    before (an ``--out`` the user named) stays, with everything that was in it.

    Example::

        with RunFolder("runs/today") as out:
            write_text(out.file("results.json"), text)
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.written, self.created = [], []

    def file(self, name):
        """The path of ``name`` in the folder, which exists from now on."""
        if not self.created and not os.path.isdir(self.path):
            missing, folder = [], os.path.abspath(self.path)
            while not os.path.isdir(folder):
                missing.append(folder)
                folder = os.path.dirname(folder)
            os.makedirs(self.path)
            self.created = missing  # deepest first
        path = os.path.join(self.path, name)
        self.written.append(path)
        return path

    def discard(self):
        """Remove the files written and the folders created by this run (folders only if empty)."""
        for path in self.written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for folder in self.created:
            with contextlib.suppress(OSError):  # not empty: someone else's files are there
                os.rmdir(folder)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.discard()
        return False
