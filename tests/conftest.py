"""Shared fixtures: every backend-aware test runs once per installed backend (POT-style).

On a machine without CuPy or a GPU the cupy cases are skipped (and reported as
skipped); on a GPU machine the same tests run on the device.
"""

import os

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.backend import cupy_available

os.environ.setdefault("MPLBACKEND", "Agg")

CUPY = cupy_available()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.cupy)])
def backend(request):
    """Name of the backend under test; the backend is active for the whole test."""
    if request.param == "cupy" and not CUPY:
        pytest.skip("CuPy with a CUDA GPU is not available here")
    with fa.use_backend(request.param):
        yield request.param


@pytest.fixture
def xp(backend):
    """The array module of the backend under test."""
    return fa.array_module()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
