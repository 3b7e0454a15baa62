"""Seeded random sources: one seed gives the same run on NumPy and on CuPy.

* ``host_rng(seed)``: a NumPy Generator on the host, for parameter initialisation and
  the minibatch order. Drawing these on the host makes them identical on every
  backend (a CuPy generator draws different numbers from the same seed).
* ``RNG(seed)``: draws noise on the active backend's device (no host-device copy per
  batch), and permutations on the host.
"""

from __future__ import annotations

import numpy

from flowattn_np.backend import array_module


def host_rng(seed):
    """A seeded NumPy Generator on the host, for initialisation and shuffles.

    Parameters drawn from it are the same on every backend for the same seed.
    """
    return numpy.random.default_rng(seed)


class RNG:
    """A seeded random source for the active backend.

    ``normal`` draws on the backend's device, into a given buffer (no host-device
    copy, no fresh array); ``permutation`` is drawn on the host so that the same seed
    gives the same minibatch order on every backend. CuPy's device stream differs from
    NumPy's: the same seed gives different noise on the two backends.
    """

    def __init__(self, seed):
        self.seed = seed
        self._host = host_rng(seed)
        self._xp = array_module()
        if self._xp is numpy:
            self._device = self._host
        else:
            self._device = self._xp.random.default_rng(int(self._host.integers(2**63)))

    def normal(self, shape, dtype, out=None):
        """Standard normal samples of ``shape`` and ``dtype`` on the backend's device
        (written into ``out``, a contiguous array of that shape and dtype, when given)."""
        return self._device.standard_normal(tuple(shape), dtype=numpy.dtype(dtype), out=out)

    def permutation(self, n):
        """A host (NumPy) permutation of range(n)."""
        return self._host.permutation(n)
