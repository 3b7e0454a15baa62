"""Shared fixtures: every backend-aware test runs once per backend (POT-style).

* ``numpy``: the CPU.
* ``strict``: the strict CuPy stand-in of ``tests/strict_device`` installed as
  ``cupy``, with the package's backend set to ``"cupy"``: CuPy's rules (no NumPy
  arrays in device calls, no implicit conversion to NumPy) enforced and every
  host-device transfer counted, on any machine. Skipped only where real CuPy with a
  GPU is present, because there the ``cupy`` cases run the same tests for real.
* ``cupy``: real CuPy on a GPU (skipped, and reported as skipped, where either is
  missing).

Importing ``toy_label_source`` registers its temperature oracle, so the block tests that
run over the registry of label sources run on a source defined outside the package.
"""

import os

import numpy as np
import pytest

import flowattn_np as fa
import strict_device
import toy_label_source  # noqa: F401  (registers the temperature source for the block tests)
from flowattn_np.backend import cupy_available

os.environ.setdefault("MPLBACKEND", "Agg")

CUPY = cupy_available()
BACKENDS = ["numpy", pytest.param("strict", marks=pytest.mark.strict),
            pytest.param("cupy", marks=pytest.mark.cupy)]


def pytest_configure(config):
    """Ignore CuPy's PerformanceWarning (a RuntimeWarning subclass, which pyproject.toml
    turns into errors): it reports a slow path, not a wrong number."""
    try:
        from cupy._util import PerformanceWarning  # noqa: F401
    except Exception:  # no CuPy, or a broken CUDA install: nothing to filter
        return
    config.addinivalue_line("filterwarnings", "ignore::cupy._util.PerformanceWarning")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Name of the backend under test ('numpy' or 'cupy'); it is active for the whole test.

    The strict cases yield 'cupy': to the package they are CuPy.
    """
    if request.param == "cupy" and not CUPY:
        pytest.skip("CuPy with a CUDA GPU is not available here (the 'strict' cases stand in)")
    if request.param == "strict":
        if CUPY:
            pytest.skip("real CuPy with a GPU is installed: the 'cupy' cases run these tests")
        with strict_device.installed():
            with fa.use_backend("cupy"):
                yield "cupy"
        return
    with fa.use_backend(request.param):
        yield request.param


@pytest.fixture
def xp(backend):
    """The array module of the backend under test."""
    return fa.array_module()


@pytest.fixture
def counts(backend):
    """Transfer counters of the strict stand-in (None on other backends)."""
    if backend == "cupy" and getattr(fa.array_module(), "__strict_standin__", False):
        return strict_device.COUNTS
    return None


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
