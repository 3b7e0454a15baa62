"""Progress on long work: a live bar on a terminal, one plain line per task elsewhere.

A tqdm bar redraws itself with carriage returns many times a second; written to a file
or a CI log, that is megabytes of noise. ``progress_bar`` gives the bar only when
standard error is a terminal; otherwise a ``PlainProgress`` that prints a single line
when its task (an epoch, a part of the experiment, a download) ends.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

__all__ = ["PlainProgress", "is_terminal", "progress_bar"]


def is_terminal(stream):
    """True if ``stream`` is an interactive terminal (a redirected or captured stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """The tqdm methods the package uses, printing one line, ``desc: n/total unit, postfix, seconds``, at the end."""

    def __init__(self, total, desc, unit, stream):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n, self.postfix, self.t0, self.closed = 0, {}, time.perf_counter(), False

    def update(self, n=1):
        """Count ``n`` more units done."""
        self.n += n

    def set_postfix(self, **values):
        """Remember the latest figures (loss, accuracy, ...) for the final line."""
        self.postfix = values

    def close(self):
        """Print the one line (once)."""
        if self.closed:
            return
        self.closed = True
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}: {done} {self.unit}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{time.perf_counter() - self.t0:.1f} s")
        print(", ".join(parts), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total, desc, enabled=True, unit="batch", **tqdm_options):
    """A progress display for ``total`` units of work, on standard error.

    ``enabled=False``: nothing is shown. On a terminal: a tqdm bar (``tqdm_options`` are
    passed on). Off a terminal (a file, a pipe, a CI log): a PlainProgress, one line at
    the end. Both are context managers with ``update``, ``set_postfix`` and ``close``.
    """
    stream = sys.stderr
    if enabled and not is_terminal(stream):
        return PlainProgress(total, desc, unit, stream)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=stream,
                **tqdm_options)
