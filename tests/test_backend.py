"""The backend flag (numpy / cupy), its error messages, and the rule that compute modules
take their array module from backend.py instead of importing numpy."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np import backend, random
from flowattn_np.backend import BackendError


@pytest.fixture
def numpy_state(monkeypatch):
    """Start from the numpy backend; whatever the test does, the state is restored after."""
    monkeypatch.setitem(backend._state, "name", "numpy")
    return monkeypatch


# ---------------------------------------------------------------- choosing a backend


@pytest.mark.parametrize("bad", ["tensorflow", "torch", "", None, 3])
def test_an_unknown_backend_is_rejected_listing_the_known_ones(numpy_state, bad):
    with pytest.raises(ValueError) as info:
        fa.set_backend(bad)
    msg = str(info.value)
    assert "'numpy'" in msg and "'cupy'" in msg and "backend" in msg
    assert fa.get_backend() == "numpy"  # unchanged


def test_use_backend_with_an_unknown_name_is_rejected_and_changes_nothing(numpy_state):
    with pytest.raises(ValueError, match="'cupy'"):
        with fa.use_backend("jax"):
            pass  # pragma: no cover
    assert fa.get_backend() == "numpy"


def test_backend_names_are_case_insensitive(numpy_state):
    fa.set_backend("NumPy")
    assert fa.get_backend() == "numpy"


def test_set_backend_returns_the_previous_name(numpy_state):
    assert fa.set_backend("numpy") == "numpy"
    assert fa.get_backend() == "numpy"


def test_set_backend_returns_the_effective_previous_name_before_first_use(monkeypatch):
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    previous = fa.set_backend("numpy")
    assert previous == "numpy"
    fa.set_backend(previous)  # the round-trip idiom must work


def test_use_backend_restores_the_previous_backend_after_the_block(numpy_state):
    # a previous state that differs from the block's backend, so that a use_backend that
    # forgets to restore it (and leaves "numpy") fails here
    previous = object()
    numpy_state.setitem(backend._state, "name", previous)
    with fa.use_backend("numpy") as xp:
        assert xp is np and backend._state["name"] == "numpy"
    assert backend._state["name"] is previous


def test_use_backend_restores_the_previous_backend_even_when_the_block_raises(numpy_state):
    numpy_state.setitem(backend._state, "name", None)  # "not chosen yet" must come back too
    with pytest.raises(KeyError):
        with fa.use_backend("numpy"):
            assert backend._state["name"] == "numpy"
            raise KeyError("boom")
    assert backend._state["name"] is None


def test_use_backend_nests(numpy_state):
    """Each block restores what was in force when it began, the outer one included."""
    numpy_state.setitem(backend._state, "name", None)
    with fa.use_backend("numpy"):
        assert backend._state["name"] == "numpy"
        inner_previous = object()  # distinct from anything the inner block sets
        backend._state["name"] = inner_previous
        with fa.use_backend("numpy"):
            assert backend._state["name"] == "numpy"
        assert backend._state["name"] is inner_previous
    assert backend._state["name"] is None


def test_the_environment_variable_chooses_the_backend_on_first_use(monkeypatch):
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.setenv(backend.ENV_VAR, " NUMPY ")
    assert fa.get_backend() == "numpy"
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.setenv(backend.ENV_VAR, "")
    assert fa.get_backend() == "numpy"


def test_a_bogus_environment_variable_is_rejected_naming_it(monkeypatch):
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.setenv("FLOWATTN_BACKEND", "bogus")
    with pytest.raises(ValueError) as info:
        fa.get_backend()
    msg = str(info.value)
    assert "FLOWATTN_BACKEND" in msg and "bogus" in msg and "'numpy'" in msg and "'cupy'" in msg
    assert backend._state["name"] is None  # nothing was cached


# ---------------------------------------------------------------- CuPy missing


@pytest.fixture
def no_cupy(numpy_state):
    numpy_state.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    return numpy_state


def test_requesting_cupy_without_cupy_raises_backend_error_with_install_hint(no_cupy):
    with pytest.raises(BackendError) as info:
        fa.set_backend("cupy")
    msg = str(info.value)
    assert "pip install" in msg and "cupy" in msg
    assert fa.get_backend() == "numpy"  # the failed request changed nothing


def test_cupy_available_is_false_without_cupy_and_changes_nothing(no_cupy):
    assert backend.cupy_available() is False
    assert fa.get_backend() == "numpy"


def test_cupy_available_agrees_with_whether_set_backend_cupy_works(numpy_state):
    try:
        with fa.use_backend("cupy"):
            works = True
    except BackendError:
        works = False
    assert backend.cupy_available() is works


def test_use_backend_cupy_without_cupy_fails_before_the_block(no_cupy):
    ran = []
    with pytest.raises(BackendError, match="pip install"):
        with fa.use_backend("cupy"):
            ran.append(True)  # pragma: no cover
    assert not ran and fa.get_backend() == "numpy"


def test_environment_variable_cupy_without_cupy_raises_backend_error(no_cupy):
    no_cupy.setitem(backend._state, "name", None)
    no_cupy.setenv("FLOWATTN_BACKEND", "cupy")
    with pytest.raises(BackendError, match="pip install"):
        fa.get_backend()


def test_a_failed_cupy_request_is_caught_as_a_runtime_error_naming_the_fix(no_cupy):
    """Callers that guard a GPU path with ``except RuntimeError`` get the install hint."""
    try:
        fa.set_backend("cupy")
    except RuntimeError as exc:  # BackendError must be one, with the readable message
        assert isinstance(exc, BackendError)
        assert "'cupy'" in str(exc) and "pip install" in str(exc)
    else:  # pragma: no cover
        pytest.fail("set_backend('cupy') without CuPy did not raise")
    assert fa.get_backend() == "numpy"


# ---------------------------------------------------------------- mixing backends


def _fake_cupy_for(monkeypatch, *fakes):
    """Make backend_of report the given objects as cupy arrays."""
    real = backend.backend_of
    monkeypatch.setattr(backend, "backend_of",
                        lambda a: "cupy" if any(a is f for f in fakes) else real(a))


def test_check_same_backend_names_both_arguments_when_backends_mix(monkeypatch, rng):
    Z, theta = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    _fake_cupy_for(monkeypatch, Z)
    with pytest.raises(BackendError) as info:
        backend.check_same_backend(Z=Z, theta=theta)
    msg = str(info.value)
    assert "Z is a cupy array" in msg and "theta is a numpy array" in msg
    assert "asarray" in msg or "to_numpy" in msg


def test_a_public_function_fed_mixed_backends_names_the_arguments(monkeypatch, rng):
    Z, theta = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    C = np.eye(4)[[0, 1, 2]]
    _fake_cupy_for(monkeypatch, theta)
    with pytest.raises(BackendError) as info:
        fa.linear_loss(Z, theta, C)
    msg = str(info.value)
    assert "Z" in msg and "theta" in msg and "cupy" in msg


def test_get_array_module_of_mixed_arrays_raises(monkeypatch, rng):
    a, b = rng.normal(size=2), rng.normal(size=2)
    _fake_cupy_for(monkeypatch, b)
    with pytest.raises(BackendError) as info:
        backend.get_array_module(a, 1.0, b)
    assert "argument 0 is a numpy array" in str(info.value)
    assert "argument 2 is a cupy array" in str(info.value)


def test_check_same_backend_ignores_none_and_scalars(rng):
    assert backend.check_same_backend(Z=rng.normal(size=2), C=None, h=0.5) is np


@pytest.mark.cupy
@pytest.mark.skipif(not backend.cupy_available(), reason="CuPy with a CUDA GPU is not available here")
def test_real_numpy_and_cupy_arrays_cannot_be_mixed(rng):
    import cupy

    Z, theta = cupy.asarray(rng.normal(size=(3, 2))), rng.normal(size=(4, 2))
    with pytest.raises(BackendError) as info:
        fa.cross_attention(Z, theta)
    assert "Z is a cupy array" in str(info.value) and "theta is a numpy array" in str(info.value)


# ---------------------------------------------------------------- moving arrays


def test_asarray_and_to_numpy_round_trip(xp, rng):
    a = rng.normal(size=(3, 4))
    dev = fa.asarray(a)
    assert fa.get_array_module(dev) is xp
    back = fa.to_numpy(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    assert fa.asarray(a, dtype="float32").dtype == np.float32
    assert fa.asarray(dev) is dev  # a no-op for an array already on the backend


def test_asarray_moves_to_the_active_backend(xp):
    assert isinstance(fa.asarray([1.0, 2.0]), xp.ndarray)
    assert fa.array_module() is xp


def test_to_float_reads_a_zero_d_array(xp):
    assert backend.to_float(xp.asarray(2.5)) == 2.5


def test_get_array_module_picks_numpy_for_numpy_inputs(rng):
    assert fa.get_array_module(rng.normal(size=3)) is np
    assert fa.get_array_module(None, 2.0, rng.normal(size=3), 1) is np


def test_get_array_module_without_arrays_is_the_active_module(xp):
    assert fa.get_array_module() is xp
    assert fa.get_array_module(None, 1.0) is xp


def test_host_rng_and_RNG_are_reproducible(xp):
    a = random.RNG(7).normal((3,), "float32")
    b = random.RNG(7).normal((3,), "float32")
    assert a.dtype == np.float32 and fa.get_array_module(a) is xp
    np.testing.assert_array_equal(fa.to_numpy(a), fa.to_numpy(b))
    assert not np.array_equal(fa.to_numpy(a), fa.to_numpy(random.RNG(8).normal((3,), "float32")))
    np.testing.assert_array_equal(random.RNG(7).permutation(10), random.RNG(7).permutation(10))
    assert random.host_rng(1).integers(1000) == random.host_rng(1).integers(1000)


# ---------------------------------------------------------------- no direct numpy imports

PACKAGE_DIR = Path(fa.__file__).resolve().parent
# host-side modules: the backend itself, files (data, checkpoints), figures, the host RNG, the CLI,
# the teaching checkers (they compare a student's NumPy with the reference on the host), and the
# corrupted test sets (drawn once per run on the host, like the data, before they go to the backend)
MAY_IMPORT_NUMPY = {"backend.py", "experiments/data.py", "experiments/plotting.py", "cli.py", "__main__.py",
                    "training/checkpoint.py", "random.py", "teaching/checks.py", "experiments/corruptions.py"}


def numpy_imports(source, filename="<string>"):
    """Line numbers of every import of numpy in ``source`` (anywhere, functions included).

    Catches ``import numpy``, ``import numpy.linalg``, ``from numpy import x``,
    ``from numpy.random import y``, ``__import__('numpy')`` and
    ``importlib.import_module('numpy...')``.
    """
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "numpy" for alias in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "numpy":
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            arg = node.args[0].value
            if name in ("__import__", "import_module") and isinstance(arg, str) \
                    and arg.split(".")[0] == "numpy":
                lines.append(node.lineno)
    return lines


def _may_import_numpy(path, root=PACKAGE_DIR):
    """Whether the module at ``path`` (below ``root``, the package) is host-side."""
    return Path(path).relative_to(root).as_posix() in MAY_IMPORT_NUMPY or Path(path).name.startswith("_bench")


def test_the_numpy_import_scan_flags_every_form_of_import():
    flagged = [
        "import numpy as np\n",
        "import os, numpy\n",
        "import numpy.linalg\n",
        "from numpy import linalg\n",
        "from numpy.random import default_rng\n",
        "def f():\n    import numpy as np\n    return np.ones(1)\n",
        "class A:\n    def g(self):\n        from numpy import exp\n",
        "np = __import__('numpy')\n",
        "import importlib\nnp = importlib.import_module('numpy')\n",
    ]
    for src in flagged:
        assert numpy_imports(src), f"not flagged: {src!r}"
    clean = [
        "from .backend import get_array_module\n",
        "import numbers\nimport numpy_financial_not_numpy\n",
        "from . import numpy_compat\n",
        "x = 'import numpy'\n",
    ]
    for src in clean:
        assert not numpy_imports(src), f"wrongly flagged: {src!r}"


def test_the_scan_would_flag_numpy_added_to_a_compute_module(tmp_path):
    ops_src = (PACKAGE_DIR / "equations" / "ops.py").read_text()
    assert not numpy_imports(ops_src)
    fake = tmp_path / "equations" / "ops.py"
    fake.parent.mkdir()
    fake.write_text(ops_src + "\n\ndef _helper():\n    import numpy as np\n    return np\n")
    assert numpy_imports(fake.read_text()) and not _may_import_numpy(fake, tmp_path)


def test_no_compute_module_imports_numpy_directly():
    modules = sorted(PACKAGE_DIR.rglob("*.py"))
    assert any(p.name == "ops.py" for p in modules) and any(p.name == "backend.py" for p in modules)
    offenders = {
        str(p.relative_to(PACKAGE_DIR)): lines
        for p in modules
        if not _may_import_numpy(p) and (lines := numpy_imports(p.read_text(), str(p)))
    }
    assert not offenders, (
        f"compute modules must take xp from backend.py, not import numpy: {offenders}")
    assert numpy_imports((PACKAGE_DIR / "backend.py").read_text())  # the one that does


# ---------------------------------------------------------------- set_backend("cupy") checks a kernel


def test_set_backend_cupy_runs_a_kernel_and_a_failing_one_gives_install_advice(numpy_state):
    """A driver-only machine imports CuPy and sees the GPU, but cannot compile kernels:
    set_backend must fail there, with the [ctk] advice, not at the first matmul."""
    import strict_device

    with strict_device.installed() as cp:
        def no_nvrtc(*args, **kwargs):
            raise RuntimeError("CuPy failed to load libnvrtc.so.12")

        numpy_state.setattr(cp, "arange", no_nvrtc)
        with pytest.raises(BackendError) as info:
            fa.set_backend("cupy")
        msg = str(info.value)
        assert "libnvrtc" in msg and "cupy-cuda12x[ctk]" in msg and "cupy-cuda13x" in msg
        assert fa.get_backend() == "numpy"  # unchanged


def test_set_backend_cupy_succeeds_where_the_probe_kernel_runs(numpy_state):
    import strict_device

    with strict_device.installed():
        assert fa.set_backend("cupy") == "numpy"
        assert fa.get_backend() == "cupy"
        fa.set_backend("numpy")
