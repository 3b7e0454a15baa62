"""Files written all-or-nothing, and run folders that own only what they create.

``atomic_write`` is the one way the package writes a file: the content goes to a
temporary file in the target's folder, is flushed to disk, and only then renamed
over the target (``os.replace`` is atomic within one file system). If anything
fails in between, the temporary file is removed and the target keeps its old
content (or stays absent). A new file gets the mode the umask allows (as ``open``
would); a file written over keeps its mode; a symbolic link is followed, so its
target is written and the link stays.

``RunFolder`` is the output folder of a run: the run's files are written into a
hidden staging folder inside it and moved into place together at the end, so a
failure or a signal at any moment leaves the folder as it was (see
docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
import time

STAGING_PREFIX = ".flowattn-run-"  # a run's files before they are moved into place
BACKUP_PREFIX = ".flowattn-previous-"  # the replaced run's files, while the new ones move in
RUN_FILES = ("results.json", "results.md")
KNOWN_FIGURES = ("figure1.png", "accuracy_vs_layers.png", "training_curves.png", "normalisation.png",
                 "part5_accuracy.png")
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _umask():
    with contextlib.suppress(OSError, ValueError):  # Linux says it without changing it
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _target(path):
    """The file a write to ``path`` must replace: a symbolic link's target, the link kept."""
    target = os.path.realpath(path)
    if os.path.islink(target):  # realpath stops at a loop
        raise OSError(errno.ELOOP, "a loop of symbolic links", path)
    return target


def _mode_for(target):
    """The mode of the file written: the old file's if there is one, else 0666 less the umask."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return 0o666 & ~_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Context manager yielding a file object that becomes ``path`` only if the block succeeds.

    ``mode`` is "wb" (binary) or "w" (text; ``encoding`` defaults to UTF-8). The
    folder of ``path`` is created if missing. On any exception, KeyboardInterrupt
    included, the temporary file is removed and ``path`` is left as it was; an
    OSError names ``path``.

    Example::

        with atomic_write("results.json", "w") as f:
            f.write(text)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    tmp = None
    try:
        target = _target(path)
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
        if hasattr(os, "fchmod"):  # mkstemp made it private (0600)
            os.fchmod(fd, _mode_for(target))
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            exc.filename = path  # ENOSPC from a write names no file
        raise


def prove_writable(path):
    """Raise OSError naming ``path`` unless a file can be written there: a probe file is created
    and removed in its folder (or, for a folder still to be made, the nearest that exists).
    Called before the compute whose result goes to ``path``; leaves nothing behind."""
    path = os.fspath(path)
    try:
        folder = os.path.dirname(_target(path))
        while not os.path.isdir(folder) and not os.path.lexists(folder):
            folder = os.path.dirname(folder)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write a file here ({exc.strerror or exc})", path) from None


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path, "w") as f:
        f.write(text)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt).

    A signal the process was told to ignore (``nohup``) stays ignored. Only the main
    thread can install handlers; elsewhere the block runs unchanged.
    """
    installed = {}
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise Terminated(signum)

        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                installed[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP during a short step that must not stop half-way;
    one that arrives is delivered when the step ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class DestinationError(ValueError):
    """An output folder that cannot take a run's files (said before any compute)."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid
        return True
    return True


def _stale(folder):
    """True for a staging folder whose run is gone (killed: it could not clean up)."""
    try:
        with open(os.path.join(folder, "pid"), encoding="ascii") as f:
            return not _alive(int(f.read().strip()))
    except (OSError, ValueError):  # no pid file yet: stale only if old
        with contextlib.suppress(OSError):
            return time.time() - os.stat(folder).st_mtime > 600
        return False


class RunFolder:
    """The output folder of a run: prepared before the compute, filled all together at the end.

    ``prepare()`` creates the folder (and missing parents), refuses one that holds a
    previous run's files unless ``overwrite``, writes a probe into a hidden staging
    folder inside it and checks there are ``need_bytes`` free: a folder that cannot
    take the results fails before any compute, with ``DestinationError``. With
    ``fresh=True`` the folder must be new: a taken name gets a suffix ``-2``, ``-3``, ...
    (exclusive creation, so two runs started together get two folders).

    ``file(name)`` is where to write ``name``: inside the staging folder. Used as a
    context manager, a run that succeeds moves its files into the folder together,
    with signals held (``overwrite``: the previous run's files, figures it had and this
    run has not included, are removed in the same step); a run that fails or is
    interrupted removes its staging folder and the folders it created, and leaves
    everything else, a previous run's files included, as it was.

    Example::

        with RunFolder("runs/today") as out:
            write_text(out.file("results.json"), text)
    """

    def __init__(self, path, overwrite=False, need_bytes=0, fresh=False):
        self.path = os.fspath(path)
        self.overwrite, self.need_bytes, self.fresh = overwrite, int(need_bytes), fresh
        self.created, self.names = [], []  # folders this run created (deepest first), files it wrote
        self.staging = None

    # ------------------------------------------------------------ before the compute

    def prepare(self):
        """Create and prove the folder (see the class); idempotent. Returns self."""
        if self.staging is not None:
            return self
        with _signals_held():
            try:
                self._create()
                if not self.overwrite and self.previous_run():
                    raise DestinationError(
                        f"{self.path} holds a previous run ({', '.join(self.previous_run())}); "
                        "expected a new folder, or --overwrite to replace that run")
                self._remove_stale()
                self.staging = tempfile.mkdtemp(dir=self.path, prefix=STAGING_PREFIX)
                with open(os.path.join(self.staging, "pid"), "w", encoding="ascii") as f:  # the probe
                    f.write(str(os.getpid()))
                free = shutil.disk_usage(self.staging).free
                if free < self.need_bytes:
                    raise DestinationError(
                        f"{self.path} has {free / 2 ** 20:.1f} MiB free; the run's files need about "
                        f"{self.need_bytes / 2 ** 20:.0f} MiB")
            except OSError as exc:
                self.discard()
                if exc.errno == errno.ENOSPC:
                    raise DestinationError(f"{self.path} has no room left (No space left on device); the "
                                           f"run's files need about {self.need_bytes / 2 ** 20:.0f} MiB") from exc
                raise DestinationError(f"{self.path} cannot be written ({exc.strerror or exc}); expected "
                                       "a folder this user can create and write") from exc
            except BaseException:
                self.discard()
                raise
        return self

    def _create(self):
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise DestinationError(f"{self.path} is a symbolic link to {os.readlink(self.path)}, "
                                   "which does not exist")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DestinationError(f"{self.path} exists and is not a folder")
        if os.path.isdir(self.path) and not self.fresh:
            return
        parent, missing = os.path.dirname(os.path.abspath(self.path)), []
        while not os.path.isdir(parent):
            if os.path.lexists(parent):
                raise DestinationError(f"{self.path} cannot be created: {parent} is a file, not a folder")
            missing.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        base = self.path
        for k in range(1, 1000):
            try:
                os.mkdir(self.path)
                break
            except FileExistsError:
                if not self.fresh:  # made by someone else just now: use it as an existing folder
                    self.created = missing
                    return
                self.path = f"{base}-{k + 1}"
        self.created = [os.path.abspath(self.path)] + missing  # deepest first

    def previous_run(self):
        """The files of a previous run in the folder: results, and the figures it names."""
        names = [n for n in RUN_FILES + KNOWN_FIGURES if os.path.lexists(os.path.join(self.path, n))]
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            with open(os.path.join(self.path, "results.json"), encoding="utf-8") as f:
                figures = json.loads(f.read(2 ** 24)).get("figures", {})
            names += [n for n in figures.values() if isinstance(n, str) and n not in names
                      and os.path.basename(n) == n and not n.startswith(".")
                      and os.path.lexists(os.path.join(self.path, n))]
        return names

    def _remove_stale(self):
        """Staging folders a killed run left behind (its process is gone), and the temporary
        files of run outputs that runs of earlier versions, which wrote in place, left."""
        temporary = tuple(f".{n}." for n in RUN_FILES + KNOWN_FIGURES)
        for entry in os.listdir(self.path):
            path = os.path.join(self.path, entry)
            if entry.startswith(STAGING_PREFIX) and os.path.isdir(path) and _stale(path):
                shutil.rmtree(path, ignore_errors=True)
            elif entry.startswith(temporary) and entry.endswith(".tmp") and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    # ------------------------------------------------------------ during the run

    def file(self, name):
        """The path to write ``name`` to (in the staging folder, moved into place at the end)."""
        self.prepare()
        if name not in self.names:
            self.names.append(name)
        return os.path.join(self.staging, name)

    # ------------------------------------------------------------ at the end

    def commit(self):
        """Move the staged files into the folder, all in one step with signals held."""
        with _signals_held():
            old = [n for n in dict.fromkeys(self.previous_run() + self.names)
                   if os.path.lexists(os.path.join(self.path, n))]
            if old and not self.overwrite:
                raise DestinationError(f"{self.path}: another run wrote {', '.join(old)} "
                                       "while this one computed; expected --overwrite to replace them")
            backup = tempfile.mkdtemp(dir=self.staging, prefix=BACKUP_PREFIX)
            moved, placed = [], []
            try:
                for n in old:
                    os.replace(os.path.join(self.path, n), os.path.join(backup, n))
                    moved.append(n)
                for n in self.names:
                    if os.path.lexists(os.path.join(self.staging, n)):
                        os.replace(os.path.join(self.staging, n), os.path.join(self.path, n))
                        placed.append(n)
            except BaseException:  # put everything back as it was
                for n in placed:
                    with contextlib.suppress(OSError):
                        os.replace(os.path.join(self.path, n), os.path.join(self.staging, n))
                for n in moved:
                    with contextlib.suppress(OSError):
                        os.replace(os.path.join(backup, n), os.path.join(self.path, n))
                raise
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging, self.created = None, []

    def discard(self):
        """Remove what this run added: its staging folder and the folders it created, if empty."""
        with _signals_held():
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
            for folder in self.created:
                with contextlib.suppress(OSError):  # not empty: someone else's files are there
                    os.rmdir(folder)
            self.created = []

    def _name_final(self, exc):
        """An OSError about a staged file names the file it was to become."""
        if isinstance(exc, OSError) and self.staging and isinstance(exc.filename, str) \
                and exc.filename.startswith(self.staging + os.sep):
            exc.filename = os.path.join(self.path, os.path.basename(exc.filename))

    def __enter__(self):
        return self.prepare()

    def __exit__(self, kind, value, tb):
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self._name_final(value)
            self.discard()
        return False
