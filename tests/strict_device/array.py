"""The stand-in's array type: a device array that holds a private NumPy array.

It follows CuPy's rules where NumPy would be lenient:

* ``ndarray`` is not a subclass of ``numpy.ndarray`` (a subclass would slip through
  ``numpy.asarray`` unnoticed);
* a NumPy array as an operand, a function argument or an ``out=`` raises
  ``TypeError``, as CuPy's kernels do ("Unsupported type <class 'numpy.ndarray'>");
* ``__array__`` (``numpy.asarray``, ``numpy.testing``, ``matplotlib``) raises
  ``TypeError`` with CuPy's message, and NumPy functions and ufuncs called on a
  device array raise too (stricter than CuPy, which dispatches some of them to
  itself: the package must call ``xp.<function>``, never ``numpy.<function>``);
* reductions and single-element indexing return 0-d device arrays, never scalars;
* reading a value on the host (``float``, ``int``, ``bool``, ``.item()``,
  ``.get()``, ``.tolist()``, printing, a boolean mask index, ``nonzero``) is a
  device-to-host read and is counted; ``cupy.asarray`` of host data, a host index
  array and a host value assigned into a device array are counted host-to-device
  copies (CuPy accepts the last two and copies them implicitly).

Floating-point warnings are silenced inside every operation: a GPU raises none.
"""

from __future__ import annotations

import numpy as np

from .counters import COUNTS


def implicit_conversion_error():
    return TypeError(
        "Implicit conversion to a NumPy array is not allowed. "
        "Please use `.get()` to construct a NumPy array explicitly."
    )


def host_operand_error(obj):
    return TypeError(f"Unsupported type {type(obj)}")


class ndarray:
    """A device array of the strict stand-in (see the module docstring)."""

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, shape, dtype=float, order="C"):
        # cupy.ndarray(shape, dtype) allocates an uninitialised device array
        self._a = np.empty(shape, dtype=dtype, order=order)

    # -- what NumPy must never do with a device array --------------------------
    def __array__(self, *args, **kwargs):
        raise implicit_conversion_error()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(
            f"numpy.{ufunc.__name__} was called on a device array of the strict CuPy "
            "stand-in: compute code must take its functions from xp (the backend), "
            "not from numpy"
        )

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"numpy.{func.__name__} was called on a device array of the strict CuPy "
            "stand-in: use xp.{0}, or move the array to the host with .get() / "
            "flowattn_np.to_numpy first".format(func.__name__)
        )

    # -- metadata (no transfer) ------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: wrap(self._a.T))
    mT = property(lambda self: wrap(np.swapaxes(self._a, -1, -2)))

    @property
    def device(self):
        from .module import Device

        return Device(0)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    # -- explicit and implicit reads (device to host) --------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """Copy to the host: the explicit way out (counted)."""
        COUNTS.read("get")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("out: expected a numpy.ndarray")
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def item(self, *args):
        COUNTS.read("item")
        return self._a.item(*args)

    def tolist(self):
        COUNTS.read("tolist")
        return self._a.tolist()

    def __float__(self):
        COUNTS.read("float")
        return float(self._a)

    def __int__(self):
        COUNTS.read("int")
        return int(self._a)

    def __index__(self):
        if self._a.dtype.kind not in "iub" or self._a.ndim:
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        COUNTS.read("index")
        return int(self._a)

    def __complex__(self):
        COUNTS.read("complex")
        return complex(self._a)

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        COUNTS.read("bool")
        return bool(self._a)

    def __repr__(self):
        COUNTS.read("repr")
        return "strict_device." + repr(self._a)

    def __str__(self):
        COUNTS.read("str")
        return str(self._a)

    def __format__(self, spec):
        COUNTS.read("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def set(self, arr, stream=None):
        """Copy host data in (counted)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("Shape or dtype mismatch")
        COUNTS.write("set")
        self._a[...] = arr

    # -- copies on the device --------------------------------------------------
    def __copy__(self):
        return wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return wrap(self._a.copy())

    def __reduce__(self):  # pickling goes through the host, as CuPy's does
        return (_from_host, (self.get(),))

    # -- indexing ----------------------------------------------------------------
    def __getitem__(self, key):
        return wrap(call(self._a.__getitem__, index_key(key)))

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            COUNTS.write("setitem with a host value")
        elif isinstance(value, (list, tuple)):
            COUNTS.write("setitem with a host sequence")
            value = np.asarray(value)
        else:
            value = operand(value)
        call(self._a.__setitem__, index_key(key), value)


def _from_host(a):
    COUNTS.write("unpickle")
    return wrap(np.array(a))


def index_key(key):
    """Unwrap an index; host index arrays are implicit copies, boolean masks a sync."""
    if isinstance(key, tuple):
        return tuple(index_key(k) for k in key)
    if isinstance(key, ndarray):
        if key.dtype.kind == "b":
            COUNTS.read("boolean mask index (its size is read on the host)")
        return key._a
    if isinstance(key, (np.ndarray, list)):
        COUNTS.write("host index array")
        key = np.asarray(key)
        if key.dtype.kind == "b":
            COUNTS.read("boolean mask index (its size is read on the host)")
        return key
    return key


def operand(x):
    """Unwrap a kernel argument: device arrays and scalars pass, NumPy arrays raise."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise host_operand_error(x)
    return x


def unwrap_args(args):
    """Unwrap positional or keyword arguments, lists and tuples of arrays included."""
    out = []
    for a in args:
        if isinstance(a, (list, tuple)) and any(isinstance(x, (ndarray, np.ndarray)) for x in a):
            out.append(type(a)(operand(x) for x in a))
        else:
            out.append(operand(a))
    return out


def wrap(r):
    """Wrap a NumPy result: arrays and scalars become device arrays (scalars 0-d)."""
    if isinstance(r, np.ndarray):
        obj = object.__new__(ndarray)
        obj._a = r
        return obj
    if isinstance(r, np.generic):
        obj = object.__new__(ndarray)
        obj._a = np.asarray(r)
        return obj
    if isinstance(r, tuple):
        return tuple(wrap(x) for x in r)
    if isinstance(r, list):
        return [wrap(x) for x in r]
    return r


def call(fn, *args, **kwargs):
    """Run a NumPy function on unwrapped arguments with FP warnings off (a GPU raises none)."""
    with np.errstate(all="ignore"):
        return fn(*args, **kwargs)


def forward(fn):
    """A device function from a NumPy one: unwrap every argument, wrap the result."""
    def device_fn(*args, **kwargs):
        out = kwargs.get("out")
        if out is not None and not isinstance(out, ndarray):
            raise TypeError(f"out: expected a cupy.ndarray, got {type(out)}")
        args = unwrap_args(args)
        kwargs = dict(zip(kwargs, unwrap_args(kwargs.values())))
        result = call(fn, *args, **kwargs)
        if out is not None and result is out._a:
            return out
        return wrap(result)

    device_fn.__name__ = getattr(fn, "__name__", "function")
    return device_fn


# -- operators and forwarded methods, attached once --------------------------

_BINARY = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift", "lt", "le", "eq", "ne", "gt", "ge"]
_REFLECTED = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"]
_INPLACE = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
            "lshift", "rshift", "matmul"]
_UNARY = ["neg", "pos", "abs", "invert"]
# array methods the package and its tests call (forwarded; results stay on the device)
METHODS = ["sum", "max", "min", "mean", "prod", "argmax", "argmin", "all", "any", "reshape",
           "swapaxes", "transpose", "copy", "astype", "ravel", "flatten", "squeeze", "fill",
           "clip", "cumsum", "dot", "std", "var", "take", "repeat", "round", "conj", "view",
           "diagonal", "trace", "sort", "argsort"]


def _binary(name):
    dunder = f"__{name}__"

    def op(self, other):
        if isinstance(other, (list, tuple)):
            raise host_operand_error(other)
        return wrap(call(getattr(self._a, dunder), operand(other)))

    op.__name__ = dunder
    return op


def _inplace(name):
    dunder = f"__i{name}__"

    def op(self, other):
        call(getattr(self._a, dunder), operand(other))
        return self

    op.__name__ = dunder
    return op


def _unary(name):
    dunder = f"__{name}__"

    def op(self):
        return wrap(call(getattr(self._a, dunder)))

    op.__name__ = dunder
    return op


def _method(name):
    def method(self, *args, **kwargs):
        return forward(getattr(self._a, name))(*args, **kwargs)

    method.__name__ = name
    return method


def _nonzero(self):
    COUNTS.read("nonzero (the number of nonzeros is read on the host)")
    return wrap(self._a.nonzero())


for _n in _BINARY:
    setattr(ndarray, f"__{_n}__", _binary(_n))
for _n in _REFLECTED:
    setattr(ndarray, f"__r{_n}__", _binary("r" + _n))
for _n in _INPLACE:
    setattr(ndarray, f"__i{_n}__", _inplace(_n))
for _n in _UNARY:
    setattr(ndarray, f"__{_n}__", _unary(_n))
for _n in METHODS:
    setattr(ndarray, _n, _method(_n))
ndarray.nonzero = _nonzero
del _n

assert not issubclass(ndarray, np.ndarray)
