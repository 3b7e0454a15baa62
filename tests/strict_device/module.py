"""The stand-in's module namespace: what ``import cupy`` gives while it is installed.

Only the functions in ``FUNCTIONS`` (and ``linalg``, ``random``, ``cuda``) exist: a
CuPy function the package calls must be added here deliberately, after checking its
name and signature against CuPy's documentation (README.md keeps that list).
"""

from __future__ import annotations

import time
import types

import numpy as np

from .array import forward, ndarray, wrap
from .counters import COUNTS

# module-level functions forwarded to NumPy on the device arrays (each exists in CuPy
# under the same name with the arguments the package uses; see README.md)
FUNCTIONS = [
    "abs", "absolute", "add", "subtract", "multiply", "divide", "true_divide", "negative",
    "exp", "expm1", "log", "log1p", "sqrt", "square", "tanh", "maximum", "minimum", "sign",
    "isfinite", "isnan", "isinf", "where", "clip", "tril", "triu", "eye", "identity",
    "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "full", "full_like",
    "arange", "linspace", "concatenate", "stack", "einsum", "matmul", "dot", "vdot", "outer",
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "all", "any",
    "transpose", "swapaxes", "reshape", "broadcast_to", "diag", "trace", "cumsum",
    "logical_not", "logical_and", "logical_or", "equal", "not_equal", "less", "greater",
    "allclose", "array_equal", "sort", "argsort", "prod", "exp2", "power", "reciprocal",
]

CONSTANTS = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool_",
             "dtype", "newaxis", "inf", "nan", "pi", "e", "iinfo", "finfo", "result_type",
             "promote_types", "can_cast"]


def asarray(a, dtype=None, order=None, *, blocking=False):
    """cupy.asarray: a device array is returned as is (or cast on the device); host data
    is copied to the device (a counted host-to-device copy)."""
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return wrap(a._a.astype(dtype))
    COUNTS.write("cupy.asarray of host data")
    return wrap(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """cupy.array: a copy; from host data it is a counted host-to-device copy."""
    if isinstance(obj, ndarray):
        return wrap(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    COUNTS.write("cupy.array of host data")
    return wrap(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def may_share_memory(a, b, max_work=None):
    """cupy.may_share_memory: a host-side bound from the arrays' pointers (no device read)."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, ndarray):
            raise TypeError(f"Unsupported type {type(x)} for argument {name} (a device array is needed)")
    return bool(np.may_share_memory(a._a, b._a))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """cupy.asnumpy: a device array is copied to the host (counted); host input passes."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def take(a, indices, axis=None, out=None):
    """cupy.take(a, indices, axis=None, out=None): CuPy has no ``mode`` (it wraps
    out-of-range indices instead of raising), so neither does the stand-in."""
    return forward(np.take)(a, indices, axis=axis, out=out)


def get_array_module(*args):
    """cupy.get_array_module: this module if any argument is a device array, else numpy."""
    return MODULE if any(isinstance(a, ndarray) for a in args) else np


def _check_out(out, dtype, size):
    # the checks of CuPy's Generator._check_output_array
    if not isinstance(out, ndarray):
        raise TypeError(f"out: expected a cupy.ndarray, got {type(out)}")
    if out.dtype.char != np.dtype(dtype).char:
        raise TypeError(f"Supplied output array has the wrong type. Expected "
                        f"{np.dtype(dtype).name}, got {out.dtype.name}")
    if not (out.flags.c_contiguous or out.flags.f_contiguous):
        raise ValueError("Supplied output array is not contiguous, writable or aligned.")
    if size is not None:
        shape = tuple(size) if isinstance(size, (tuple, list)) else (size,)
        if shape != out.shape:
            raise ValueError("size must match out.shape when used together")


class Generator:
    """cupy.random.Generator: samples on the device. Its stream deliberately differs
    from NumPy's default_rng for the same seed (CuPy's default bit generator is
    XORWOW, not PCG64)."""

    def __init__(self, seed=None):
        self._gen = np.random.Generator(np.random.Philox(seed))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        if out is not None:
            _check_out(out, dtype, size)
            self._gen.standard_normal(out._a.shape, dtype=out.dtype, out=out._a)
            return out
        if np.dtype(dtype).char not in "fd":
            raise TypeError(f"Unsupported dtype {np.dtype(dtype).name} for standard_normal")
        return wrap(np.asarray(self._gen.standard_normal(size if size is not None else (), dtype=dtype)))

    def random(self, size=None, dtype=np.float64, out=None):
        if out is not None:
            _check_out(out, dtype, size)
            self._gen.random(out._a.shape, dtype=out.dtype, out=out._a)
            return out
        return wrap(np.asarray(self._gen.random(size if size is not None else (), dtype=dtype)))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return wrap(np.asarray(self._gen.integers(low, high, size=size if size is not None else (),
                                                  dtype=dtype, endpoint=endpoint)))


def default_rng(seed=None):
    """cupy.random.default_rng(seed): a Generator on the device."""
    if isinstance(seed, ndarray):
        raise TypeError("seed: expected a host integer")
    return Generator(seed)


class RandomState:
    """cupy.random.RandomState (the legacy API): standard_normal(size, dtype), no out=."""

    def __init__(self, seed=None):
        self._gen = np.random.Generator(np.random.Philox(None if seed is None else int(seed) + 1))

    def standard_normal(self, size=None, dtype=float):
        return wrap(np.asarray(self._gen.standard_normal(size if size is not None else (), dtype=dtype)))


class Stream:
    def synchronize(self):
        """Nothing is queued: the stand-in computes eagerly."""


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self):
        """Nothing is queued."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _linalg():
    m = types.ModuleType("cupy.linalg")
    m.eigh = forward(np.linalg.eigh)
    m.eigvalsh = forward(np.linalg.eigvalsh)
    m.norm = forward(np.linalg.norm)
    m.solve = forward(np.linalg.solve)
    m.inv = forward(np.linalg.inv)
    m.cholesky = forward(np.linalg.cholesky)
    return m


def _random():
    m = types.ModuleType("cupy.random")
    m.default_rng = default_rng
    m.Generator = Generator
    m.RandomState = RandomState
    return m


def _cuda():
    m = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.runtimeGetVersion = lambda: 12080
    runtime.driverGetVersion = lambda: 12080
    m.runtime = runtime
    m.get_current_stream = lambda device_id=-1: Stream()
    m.Device = Device
    m.Stream = Stream
    return m


class BenchmarkResult:
    """What cupyx.profiler.benchmark returns: per-repeat CPU and 'GPU' times (seconds)."""

    def __init__(self, name, cpu_times, gpu_times):
        self.name = name
        self.cpu_times = np.asarray(cpu_times)
        self.gpu_times = np.asarray(gpu_times)[None, :]

    def __str__(self):
        return (f"{self.name}: CPU {1e6 * self.cpu_times.mean():.1f} us, "
                f"GPU-0 {1e6 * self.gpu_times.mean():.1f} us (strict stand-in: host timings)")


def benchmark(func, args=(), kwargs=None, n_repeat=10000, name=None, n_warmup=10, max_duration=np.inf,
              devices=None):
    """cupyx.profiler.benchmark with host clocks (the stand-in has no CUDA events). Its
    timings mean nothing, so it runs at most 5 repeats after 1 warm-up call."""
    kwargs = kwargs or {}
    n_repeat, n_warmup = min(n_repeat, 5), min(n_warmup, 1)
    for _ in range(n_warmup):
        func(*args, **kwargs)
    times = []
    for _ in range(n_repeat):
        t0 = time.perf_counter()
        func(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return BenchmarkResult(name or getattr(func, "__name__", "func"), times, times)


def build():
    """The fake ``cupy`` and ``cupyx`` modules, with their submodules, by name."""
    m = types.ModuleType("cupy", "Strict CuPy stand-in for the test suite (no GPU).")
    m.__version__ = "14.0.0+strict"
    m.__strict_standin__ = True
    m.__path__ = []  # a package, so `import cupy.linalg` style imports resolve
    for name in FUNCTIONS:
        setattr(m, name, forward(getattr(np, name)))
    for name in CONSTANTS:
        setattr(m, name, getattr(np, name))
    m.ndarray = ndarray
    m.asarray = asarray
    m.array = array
    m.asnumpy = asnumpy
    m.may_share_memory = may_share_memory
    m.take = take
    m.get_array_module = get_array_module
    m.linalg, m.random, m.cuda = _linalg(), _random(), _cuda()
    cupyx = types.ModuleType("cupyx")
    cupyx.__path__ = []
    cupyx.profiler = types.ModuleType("cupyx.profiler")
    cupyx.profiler.benchmark = benchmark
    cupyx.get_array_module = get_array_module
    mods = {"cupy": m, "cupy.linalg": m.linalg, "cupy.random": m.random, "cupy.cuda": m.cuda,
            "cupy.cuda.runtime": m.cuda.runtime, "cupyx": cupyx, "cupyx.profiler": cupyx.profiler}
    return mods


MODULE = None  # set by install(): the active fake cupy module
