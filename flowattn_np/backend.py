"""The array backend: NumPy by default, CuPy behind one flag.

Every compute module takes its array module ``xp`` from here (``array_module()``
for new arrays, ``get_array_module(*arrays)`` for the module of its inputs), never
from ``numpy`` directly, so the same code runs on a GPU.

Ways to choose the backend, in order of precedence:

* ``with flowattn_np.use_backend("cupy"): ...`` (restores the previous one on exit),
* ``flowattn_np.set_backend("cupy")``,
* the environment variable ``FLOWATTN_BACKEND=cupy`` (read once, on first use).

The backend is the only global state of the package. This module is about arrays
only: seeded random sources live in ``random.py``, files in ``files.py`` and
``checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy

KNOWN_BACKENDS = ("numpy", "cupy")
ENV_VAR = "FLOWATTN_BACKEND"

_CUPY_HELP = (
    "Install the CuPy wheel for your CUDA major version (see `nvidia-smi`): "
    "`pip install 'cupy-cuda12x[ctk]'` (CUDA 12) or `pip install 'cupy-cuda13x[ctk]'` (CUDA 13); "
    "the [ctk] extra brings the CUDA libraries CuPy compiles its kernels with, which a machine "
    "with only the NVIDIA driver lacks (leave it out where the CUDA toolkit is installed). "
    "`pip install 'flowattn-np[gpu]'` installs the CUDA 12 one. CuPy 14 supports CUDA 12 and 13 "
    "only; on CUDA 11 use CuPy 13 (`pip install cupy-cuda11x`). See {gpu_page}. "
    "Use set_backend('numpy') to stay on the CPU."
)


def _cupy_help():
    from flowattn_np.links import page_url

    return _CUPY_HELP.format(gpu_page=page_url("gpu"))


class BackendError(RuntimeError):
    """The requested backend cannot be used here, or arrays of two backends were mixed."""


_state = {"name": None}


def _check_name(name):
    if not isinstance(name, str) or name.lower() not in KNOWN_BACKENDS:
        raise ValueError(
            f"backend: unknown backend {name!r}; known backends are "
            + ", ".join(repr(k) for k in KNOWN_BACKENDS)
        )
    return name.lower()


def _import_cupy():
    """Import CuPy, check that a GPU is visible and that a kernel runs; BackendError otherwise."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        raise BackendError(
            f"backend 'cupy' was requested but CuPy cannot be imported ({exc}). " + _cupy_help()
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendError(
            f"backend 'cupy' was requested but no CUDA GPU is visible ({exc}). " + _cupy_help()
        ) from exc
    if count < 1:
        raise BackendError("backend 'cupy' was requested but no CUDA GPU is visible. " + _cupy_help())
    if _state.get("kernel_ok") is not cupy:
        _launch_probe_kernel(cupy)
        _state["kernel_ok"] = cupy
    return cupy


def _launch_probe_kernel(cupy):
    """Compile and run one tiny element-wise kernel, so that a missing CUDA toolkit (NVRTC)
    fails here with install advice rather than at the first matrix product."""
    try:
        probe = cupy.arange(4, dtype=cupy.float32)
        probe *= 2.0
        cupy.cuda.get_current_stream().synchronize()
    except Exception as exc:
        raise BackendError(
            f"backend 'cupy': CuPy imports and sees a GPU, but a first kernel failed to compile "
            f"or run ({type(exc).__name__}: {exc}). This usually means the CUDA toolkit libraries "
            f"(NVRTC) are missing. " + _cupy_help()
        ) from exc


def cupy_available():
    """True if CuPy imports, sees at least one CUDA GPU and runs a kernel (the 'cupy'
    backend can be used).

    Never raises; ``set_backend("cupy")`` gives the reason (and an install hint) when
    this is False.
    """
    try:
        _import_cupy()
    except BackendError:
        return False
    return True


def _module_for(name):
    return numpy if name == "numpy" else _import_cupy()


def get_backend():
    """Name of the active backend: 'numpy' or 'cupy'."""
    if _state["name"] is None:
        env = os.environ.get(ENV_VAR, "numpy").strip() or "numpy"
        try:
            name = _check_name(env)
        except ValueError as exc:
            raise ValueError(f"environment variable {ENV_VAR}: {exc}") from None
        _module_for(name)
        _state["name"] = name
    return _state["name"]


def set_backend(name):
    """Make ``name`` ('numpy' or 'cupy') the active backend; returns the previous name."""
    name = _check_name(name)
    _module_for(name)  # fail now, with the install hint, not at the first array
    previous = _effective_name()
    _state["name"] = name
    return previous


def _effective_name():
    """The backend in force now (the environment's choice before first use); None if
    that choice is itself unusable, so that restoring it falls back to the default."""
    try:
        return get_backend()
    except (ValueError, BackendError):
        return None


@contextlib.contextmanager
def use_backend(name):
    """Context manager: run the block with backend ``name``; restore the previous one after."""
    name = _check_name(name)
    _module_for(name)
    previous = _state["name"]  # restored as it was, "not chosen yet" included
    _state["name"] = name
    try:
        yield _module_for(name)
    finally:
        _state["name"] = previous


def array_module():
    """The array module (numpy or cupy) of the active backend."""
    return _module_for(get_backend())


def is_cupy_array(a):
    """True for a CuPy array (without importing CuPy when it is not loaded)."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(a, cupy.ndarray)


def backend_of(a):
    """'cupy' for a CuPy array, 'numpy' for anything else (NumPy arrays, scalars)."""
    return "cupy" if is_cupy_array(a) else "numpy"


def on_host(a):
    """Whether ``a`` is in host memory: where a training step may read a number from it
    for free (to choose a method) or share it between host threads. On a device either
    would synchronise, so device arrays always take the general path."""
    return not is_cupy_array(a)


def get_array_module(*arrays):
    """numpy or cupy, chosen from the arguments (as ``cupy.get_array_module``).

    Arguments that are not arrays (Python scalars, None) are ignored. With no
    array among them, the active backend's module is returned.
    """
    found = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool)):
            continue
        kind = backend_of(a)
        if found is None:
            found = kind
        elif kind != found:
            return check_same_backend(**{f"argument {i}": x for i, x in enumerate(arrays)})
    if found is None:
        return array_module()
    return sys.modules["cupy"] if found == "cupy" else numpy


_WHERE = {"cupy": ("a cupy array (GPU)", "cupy arrays (GPU)"),
          "numpy": ("a numpy array (host)", "numpy arrays (host)")}
_MOVE_HINT = (". Move them to one backend first with flowattn_np.asarray(...) "
              "(to the active backend) or flowattn_np.to_numpy(...).")


def _describe_groups(kinds):
    """'X is a numpy array (host), while W, b are cupy arrays (GPU)': names grouped by backend."""
    groups = {}
    for name, kind in kinds.items():
        groups.setdefault(kind, []).append(name)
    parts = []
    for kind, names in sorted(groups.items(), key=lambda kv: len(kv[1])):  # the odd ones first
        shown = ", ".join(names[:4]) + (f" (and {len(names) - 4} more)" if len(names) > 4 else "")
        one, many = _WHERE[kind]
        parts.append(f"{shown} is {one}" if len(names) == 1 else f"{shown} are {many}")
    return ", while ".join(parts)


def check_same_backend(**named):
    """Return the array module of the named arrays; raise BackendError if they mix backends.

    Only types are inspected (no device sync). The message names the arguments by
    backend, e.g. ``Z is a cupy array (GPU), while theta is a numpy array (host)``.
    """
    kinds = {}
    for name, a in named.items():
        if a is None or isinstance(a, (int, float, bool)):
            continue
        kinds[name] = backend_of(a)
    if len(set(kinds.values())) > 1:
        raise BackendError("arrays from different backends were mixed: " + _describe_groups(kinds)
                           + _MOVE_HINT)
    if "cupy" in kinds.values():
        return sys.modules["cupy"]
    return numpy if kinds else array_module()


def check_on_backend(backend, where, **named):
    """Raise BackendError naming each array of ``named`` that is not on ``backend``
    ('numpy' or 'cupy'); ``where`` ends the message, e.g. "the active backend is 'cupy'".

    Only types are inspected (no device sync); None and Python scalars are ignored.
    """
    off = {name: backend_of(a) for name, a in named.items()
           if a is not None and not isinstance(a, (int, float, bool)) and backend_of(a) != backend}
    if off:
        raise BackendError(f"{_describe_groups(off)}, but {where}" + _MOVE_HINT)


def arrays_description(backend):
    """'cupy arrays (GPU)' or 'numpy arrays (host)', for messages."""
    return _WHERE[backend][1]


def asarray(a, dtype=None):
    """Move ``a`` to the active backend (a no-op for an array already there)."""
    xp = array_module()
    if xp is numpy and is_cupy_array(a):
        a = a.get()
    return xp.asarray(a, dtype=dtype)


def to_numpy(a):
    """A NumPy copy (or view) of ``a`` on the host; works for either backend."""
    if is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def to_float(a):
    """A Python float from a 0-d array of either backend (a device sync on CuPy)."""
    return float(to_numpy(a))


def synchronize():
    """Wait for queued GPU work (a no-op on NumPy); use before reading a wall clock."""
    if get_backend() == "cupy":
        sys.modules["cupy"].cuda.get_current_stream().synchronize()


class Workspace:
    """Named scratch arrays reused from one training step to the next.

    A fresh n x d float array is large enough that the C allocator maps and unmaps
    it on every step, and touching those pages again costs more than the arithmetic
    (measured: ~3100 page faults per Fashion-MNIST step). Reusing one buffer per name
    avoids that. A buffer is valid until the next call that asks for the same name.
    """

    def __init__(self):
        self._arrays = {}

    def get(self, name, shape, dtype, xp):
        """An uninitialised array of ``shape`` and ``dtype`` owned by ``name``."""
        a = self._arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype or get_array_module(a) is not xp:
            a = self._arrays[name] = xp.empty(shape, dtype=dtype)
        return a


def quiet_errors(xp=None):
    """Context manager silencing NumPy's floating-point warnings (a no-op on CuPy).

    For code that detects non-finite values itself and raises a clear error, such
    as ``fit``; elsewhere an overflow warning is a bug worth seeing. ``xp``: the array
    module in use (default: the active backend's).
    """
    if (xp is numpy) if xp is not None else get_backend() == "numpy":
        return numpy.errstate(over="ignore", invalid="ignore", divide="ignore")
    return contextlib.nullcontext()
