"""Counters of host-device traffic for the strict CuPy stand-in.

``COUNTS.reads`` counts device-to-host reads (``float``, ``int``, ``bool``,
``.item()``, ``.get()``, ``asnumpy``, printing, ...); ``COUNTS.writes`` counts
host-to-device copies (``cupy.asarray`` of host data, host index arrays, host values
assigned into device arrays). Each event also records where in the package or the
tests it happened, so a failed transfer budget says which line read the device.
"""

from __future__ import annotations

import contextlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


_HELPERS = ("to_numpy", "to_float")  # flowattn_np.backend's movers: name their caller instead


def _call_site():
    """'file:line' of the first frame outside this folder and the backend's movers (the
    code that caused the transfer)."""
    frame = sys._getframe(2)
    while frame is not None and (
            os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE
            or (frame.f_code.co_name in _HELPERS and frame.f_code.co_filename.endswith("backend.py"))):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} ({frame.f_code.co_name})"


class Counts:
    """Device-to-host reads and host-to-device copies since the last reset."""

    def __init__(self):
        self._windows = []
        self.reset()

    def reset(self):
        self.reads = 0
        self.writes = 0
        self.events = []

    def _record(self, kind, what):
        event = (kind, what, _call_site())
        for c in [self] + self._windows:
            if kind == "read":
                c.reads += 1
            else:
                c.writes += 1
            c.events.append(event)

    def read(self, what):
        """Record one device-to-host read."""
        self._record("read", what)

    def write(self, what):
        """Record one host-to-device copy."""
        self._record("write", what)

    def describe(self, kind=None):
        """One line per event (optionally only 'read' or 'write' events)."""
        return "\n".join(f"{k}: {what} at {site}" for k, what, site in self.events
                         if kind is None or k == kind) or "(none)"

    @contextlib.contextmanager
    def window(self):
        """Count what happens inside the block: ``with COUNTS.window() as w: ...; w.reads``."""
        w = Counts()
        self._windows.append(w)
        try:
            yield w
        finally:
            self._windows.remove(w)


COUNTS = Counts()
