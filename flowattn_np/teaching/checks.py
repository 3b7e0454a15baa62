"""Checkers that teach: compare a student's function with a reference, and name the mistake.

A gradient checker that only prints a relative error leaves the student to guess what
is wrong. These checkers say *where* the arrays differ (row, column, expected, got)
and *which* mistake explains the difference, naming the equation and the term:

    >>> import numpy as np, flowattn_np as fa
    >>> from flowattn_np import checks
    >>> def grad_Z(Z, theta, C):                      # the sign of C theta is flipped
    ...     return (fa.softmax(Z @ theta.T) + C) @ theta
    >>> r = checks.check_function(grad_Z, fa.linear_grad_Z, checks.linear_inputs,
    ...                           exercise="linear_grad_Z", raise_on_failure=False)
    >>> r.diagnoses
    ('sign of - C theta flipped',)

``check_function`` compares with a reference implementation, ``check_gradient`` with
central finite differences of a loss (and with a reference in float32, where finite
differences drown in round-off). Both run on several input sets, in float64 and
float32 (float32 in must stay float32 out), watch for inputs changed in place, and
raise ``CheckFailure`` (an AssertionError, so a notebook test cell fails) with the
whole story in its message.

The catalogue ``EXERCISES`` holds, per exercise (an ``Exercise``):

* ``mistakes``: what is not a combination of terms (overflow, underflow, a wrong
  axis, ...). Each either *produces* the wrong answer it stands for (``make(*inputs)``;
  the student's output is compared with it, NaN and inf positions included) or
  *detects* it from the outputs (``detect(got, expected, inputs, tol)``).
* ``terms(*inputs)``: the reference as a sum of named ``Term`` s (eq. (4): CA(Z, theta)
  and - C theta), each with variants (the softmax over the other axis, ...); a tuple of
  such lists for a function returning a tuple. A wrong answer is fitted, by least
  squares over every input set, as a combination of the terms and variants; the
  sparsest fit that reproduces it within the check's tolerance on EVERY input set, with
  coefficients that are the equation's times -1, 2, 1/2, 1/n, n, ..., is reported in
  the equation's words (a missing term, a flipped sign, a step h/2, an average where
  the equation sums). No exact fit, or two different ones: nothing is said.
* ``allowed``: names of ``flowattn_np`` functions the student may call (the *building
  blocks*, e.g. ``("softmax",)``). While the student's function runs, a call from the
  student's code into any other function of the package (``fa.linear_grad_Z``,
  ``checks.reference_*``, the fast paths, a block's ``forward``), however it was
  reached (an alias, ``from flowattn_np import ...``, a module attribute), fails the
  check with a message naming what was called (``ReferenceCalled``). Calls made by
  the package itself (inside ``fa.softmax``, say) and the checker's reference are not
  watched. Modules in ``FREE_MODULES`` and names in ``FREE_NAMES`` are always allowed.
  Without an exercise, only the reference functions passed to the check and
  ``checks.reference_*`` are out of reach. ``guard=False`` turns it off (teachers).
* ``logits(*inputs)``: the logits, so that "missing max-shift" is said only where
  they are large enough to overflow; ``stress(rng)``: input sets at logit scale 300
  (overflow only, underflow only, both) that ``check_function`` adds by default;
  ``reference`` and ``inputs``: what ``uses=`` checks a dependency against;
  ``arguments``: the notebook's names of the arguments, for the messages (a test cell's
  wrapper may name them otherwise).

A function that uses another of the student's functions names it in ``uses``:
``check_function(cross_entropy, fa.linear_loss, checks.linear_inputs,
exercise="cross_entropy", uses={"logsumexp": logsumexp})``. Each dependency is checked
first against its own exercise (a value ``(function, exercise name)`` names another
exercise than the key); when the check fails and a dependency fails too, the message
says "This uses your `logsumexp`, which fails its own test above" with that test's message.

The student's function runs in a worker thread, stopped after ``timeout`` seconds
(``TIMEOUT`` by default) with a message instead of a hang. This is a teaching (host)
module: it computes with NumPy directly.
"""

from __future__ import annotations

import ctypes
import inspect
import itertools
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from flowattn_np.equations import attention
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.implementations import readable_block
from flowattn_np.equations import ops
from flowattn_np.equations.attention import self_attention, self_attention_adjoint
from flowattn_np.equations.flows import linear_B_exact, linear_flow_A
from flowattn_np.equations.integrators import rk_step
from flowattn_np.teaching.gradient_check import numerical_gradient
from flowattn_np.equations.mlp import gelu, gelu_grad
from flowattn_np.equations.models import (
    linear_grad_theta,
    linear_grad_Z,
    linear_loss,
    quadratic_grad_phi,
    quadratic_grad_Z,
)
from flowattn_np.equations.sphere import retract_vjp

TOLERANCES = {"float64": 1e-7, "float32": 2e-4}
"""Largest allowed |got - expected|, relative to max |expected|, per dtype."""

FD_TOLERANCE = 1e-6
"""Largest allowed relative error (2-norm) of a gradient against central differences."""

TIMEOUT = 30.0
"""Seconds one call of a student's function may take before the check stops it."""

LARGE_LOGIT_SCALE = 300.0
"""Logit scale of the stress input sets: exp overflows or underflows without a row max-shift."""


class CheckFailure(AssertionError):
    """A student's function disagrees with the reference; the message says where and why."""


class ReferenceCalled(CheckFailure):
    """A student's function called a function of the package that holds the exercise's answer."""


class StudentTimeout(CheckFailure):
    """A student's function did not return within the check's timeout."""


@dataclass(frozen=True)
class Mistake:
    """A common mistake: its name, what to tell the student, and how to recognise it.

    make(*inputs) returns the output the mistake produces; detect(got, expected,
    inputs, tol) -> bool recognises it from the outputs. Give one of the two.
    """

    name: str
    message: str
    make: Callable | None = None
    detect: Callable | None = None


@dataclass(frozen=True)
class Term:
    """A named term of an exercise's reference: its value, its coefficient in the equation,
    its usual wrong variants ({words: value}, e.g. "with the softmax over the columns"),
    and whether it carries the step h (so that 1/2 reads "a step h/2")."""

    name: str
    coefficient: float
    value: object
    variants: dict = field(default_factory=dict)
    step: bool = False


@dataclass(frozen=True)
class Exercise:
    """An exercise of the catalogue: the function's name, its equation, its mistakes, its
    terms, the package functions a student may call, how to check it on its own, and the
    notebook's names of its arguments (used in messages in place of a test wrapper's)."""

    function: str
    equation: str
    mistakes: tuple = ()
    outputs: tuple = ()
    allowed: tuple = ()
    terms: Callable | None = None
    logits: Callable | None = None
    stress: Callable | None = None
    reference: Callable | None = None
    inputs: Callable | None = None
    arguments: tuple = ()


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: passed, the message shown to the student, diagnosed mistakes."""

    passed: bool
    message: str
    diagnoses: tuple = ()
    where: dict = field(default_factory=dict)

    def __str__(self):
        return self.message

    def __bool__(self):
        return self.passed


# ---------------------------------------------------------------- generic detectors


def _swap(a):
    return np.swapaxes(a, -1, -2) if np.ndim(a) >= 2 else a


def _finite_scale(expected):
    finite = np.abs(expected[np.isfinite(expected)])
    return max(float(finite.max(initial=0.0)), 1e-30)


def _differences(got, expected, tol):
    """Boolean array: where got and expected differ (equal NaN / inf positions agree)."""
    scale = _finite_scale(expected)
    with np.errstate(invalid="ignore"):
        same_special = (np.isnan(got) & np.isnan(expected)) | (np.isinf(expected) & (got == expected))
        near = np.abs(got - expected) <= tol * scale
    return ~(near | same_special)


def _close(got, expected, tol):
    """|got - expected| <= tol * max |expected| everywhere (NaN / inf only where expected has them)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return False
    return not _differences(got, expected, tol).any()


def _is_flipped_sign(got, expected, inputs, tol):
    return _close(got, -np.asarray(expected), tol) and np.abs(expected).max(initial=0) > 0


def _is_transposed(got, expected, inputs, tol):
    expected = np.asarray(expected)
    return expected.ndim >= 2 and not _close(got, expected, tol) and _close(_swap(got), expected, tol)


def _overflowed(got, expected, inputs, tol):
    return bool(np.all(np.isfinite(expected)) and not np.all(np.isfinite(got)))


FLIPPED_SIGN = Mistake(
    "flipped sign",
    "your result is the exact negative of the expected one: one sign is flipped for the "
    "whole expression (a gradient points uphill: grad l, not -grad l).",
    detect=_is_flipped_sign)
MISSING_TRANSPOSE = Mistake(
    "missing transpose",
    "your result is the transpose of the expected one: a transpose is missing (or one too "
    "many); check which side each factor multiplies from and the shapes it must have.",
    detect=_is_transposed)
MISSING_MAX_SHIFT = Mistake(
    "missing max-shift (overflow at large logits)",
    "your result has inf or NaN where the expected one is finite, at logits large enough for exp to "
    "overflow (exp(710) = inf in float64, exp(89) in float32). Subtract each row's maximum before exp "
    "(the max-shift): sigma(S - c 1^T) = sigma(S), and LSE(S) = c + LSE(S - c 1^T) with c = max_k S_ik.",
    detect=_overflowed)
UPCAST = Mistake(
    "float32 upcast",
    "float32 in must stay float32 out. An upcast to float64 comes from a NumPy float64 scalar "
    "(np.float64(0.5) * X), an array made with the default dtype (np.zeros(n), np.eye(m)) or "
    "astype(float): use Python floats and dtype=X.dtype.")
GENERIC = (FLIPPED_SIGN, MISSING_TRANSPOSE, MISSING_MAX_SHIFT)


def in_place_message(name):
    """The diagnosis for an input changed in place."""
    return (f"your function changed its argument `{name}` "
            f"(e.g. `{name} -= ...`, `{name} /= ...` or `out=` into it), so the caller's array is "
            f"modified. Compute into a new array instead: `{name} = {name} - ...`.")


def _overflow_possible(ex, args):
    """Whether exp of the logits (the exercise's, or else the largest input) overflows in their dtype."""
    arrays = [a for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    if not arrays:
        return False
    with np.errstate(all="ignore"):
        logits = np.asarray(ex.logits(*args)) if ex is not None and ex.logits is not None else arrays[0]
        big = logits[np.isfinite(logits)].max(initial=0.0) if logits.size else 0.0  # exp(-x) underflows
    return bool(big > math.log(np.finfo(arrays[0].dtype).max))


# ---------------------------------------------------------------- inputs


def make_linear_inputs(rng, n=5, m=4, d=3, scale=1.0):
    """Random (Z (n, d), theta (m, d), C (n, m) one-hot) for the linear model."""
    Z = scale * rng.standard_normal((n, d))
    theta = rng.standard_normal((m, d))
    C = np.eye(m)[rng.integers(0, m, size=n)]
    return Z, theta, C


def make_quadratic_inputs(rng, batch=2, n=5, d=3):
    """Random (Z (batch, n, d), theta (d, d) SPD, C (batch, n, n) one-hot) for the quadratic model."""
    Z = rng.standard_normal((batch, n, d))
    phi = np.tril(rng.standard_normal((d, d))) + 2.0 * np.eye(d)
    C = np.eye(n)[rng.integers(0, n, size=(batch, n))]
    return Z, phi @ phi.T / d, C


def make_quadratic_phi_inputs(rng, batch=2, n=5, d=3):
    """Random (Z, phi lower-triangular, C) for gradients in the Cholesky factor phi."""
    Z = rng.standard_normal((batch, n, d))
    phi = (np.tril(rng.standard_normal((d, d))) + 2.0 * np.eye(d)) / d ** 0.5
    C = np.eye(n)[rng.integers(0, n, size=(batch, n))]
    return Z, phi, C


def make_logits_inputs(rng, n=4, m=5, scale=3.0):
    """Random logits S (n, m); scale=1e4 tests the max-shift."""
    return (scale * rng.standard_normal((n, m)),)


def make_large_logits(rng, n=4, m=5, scale=LARGE_LOGIT_SCALE):
    """Three logit matrices S (n, m) at ``scale``: [overflow only, underflow only, both].

    Overflow only: every logit near 3 scale (exp(900) = inf), rows spread little.
    Underflow only: each row's maximum is 0 and the others lie 0.25 to 4 scale below it
    (exp underflows to 0, nothing overflows). Both: rows centred from +4 scale to -4 scale,
    so a shift by the global maximum underflows whole rows. A stable softmax, log-sum-exp
    and cross-entropy are exact on all three.
    """
    over = scale * (3.0 + 0.02 * rng.standard_normal((n, m)))
    under = -4.0 * scale * rng.uniform(0.25, 1.0, size=(n, m))
    under[np.arange(n), rng.integers(0, m, size=n)] = 0.0
    mixed = scale * (rng.standard_normal((n, m)) + 4.0 * np.linspace(1.0, -1.0, n)[:, None])
    return [over, under, mixed]


def make_large_logit_inputs(rng, n=4, m=5, scale=LARGE_LOGIT_SCALE):
    """The ``make_large_logits`` regimes as input sets (S,) of softmax and log-sum-exp."""
    return [(S,) for S in make_large_logits(rng, n, m, scale)]


def make_large_linear_inputs(rng, n=4, m=5, scale=LARGE_LOGIT_SCALE):
    """(Z, theta, C) whose logits Z theta^T are the ``make_large_logits`` regimes (theta orthogonal)."""
    theta = np.linalg.qr(rng.standard_normal((m, m)))[0]
    C = np.eye(m)[rng.integers(0, m, size=n)]
    return [(S @ theta, theta, C) for S in make_large_logits(rng, n, m, scale)]


def _input_sets(make_inputs, seeds, dtypes, student_fn, reference_fn):
    """The input tuples to check on, after checking the arguments of a check."""
    for name, fn in (("student_fn", student_fn), ("reference_fn", reference_fn)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a function, got {type(fn).__name__}")
    bad = [d for d in dtypes if d not in TOLERANCES]
    if bad or not dtypes:
        raise ValueError(f"dtypes: expected some of {', '.join(TOLERANCES)}, got {tuple(dtypes)}")
    if callable(make_inputs):
        sets = [tuple(make_inputs(np.random.default_rng(s))) for s in seeds]
    elif isinstance(make_inputs, (list, tuple)):
        sets = [tuple(args) for args in make_inputs]
    else:
        raise TypeError("make_inputs: expected a function rng -> tuple of inputs, or a list of input tuples, "
                        f"got {type(make_inputs).__name__}")
    if not sets:
        raise ValueError("make_inputs/seeds: no input sets to check on")
    return sets


def _check_number(name, value, allow_none=True):
    """Refuse a tolerance, step or timeout that is not a positive finite number, naming it."""
    if value is None and allow_none:
        return value
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _cast(args, dtype):
    return tuple(a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                 for a in args)


# ---------------------------------------------------------------- the reference guard


FREE_MODULES = frozenset({"flowattn_np", "backend", "data", "random", "progress", "validate", "gradient_check",
                          "optim", "plotting", "files", "checkpoint", "coursework"})
"""Modules of flowattn_np whose functions a student may call in any exercise (none computes an answer)."""

FREE_NAMES = ("one_hot",)
"""Functions of flowattn_np a student may call in any exercise."""

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # flowattn_np/


def _codes(obj):
    """The code objects of a function, or of every method of a class."""
    if inspect.isclass(obj):
        return {c for v in vars(obj).values() for c in _codes(getattr(v, "__func__", v))}
    if isinstance(obj, property):
        return set().union(*(_codes(f) for f in (obj.fget, obj.fset) if f is not None))
    code = getattr(inspect.unwrap(obj) if callable(obj) else obj, "__code__", None)
    return {code} if code is not None else set()


def _resolve(name):
    """A building block's name (``"softmax"``, ``"ops.row_sums"``) -> the package's object."""
    import flowattn_np

    obj = flowattn_np
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ValueError(f"allowed: flowattn_np has no {name!r}")
    return obj


_PUBLIC_NAMES = {}
_PUBLIC_CLASSES = {}


def _called_name(frame):
    """How a student reaches the function of this frame: flowattn_np.name, checks.name or module.qualname."""
    if not _PUBLIC_NAMES:
        import flowattn_np

        for prefix, module in (("checks", sys.modules[__name__]), ("flowattn_np", flowattn_np)):
            for name, obj in vars(module).items():
                own = module is flowattn_np or getattr(obj, "__module__", None) == __name__
                if own and not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                    if module is flowattn_np and inspect.isclass(obj):
                        _PUBLIC_CLASSES[name] = obj
                    for code in _codes(obj):
                        _PUBLIC_NAMES[code] = f"{prefix}.{name}" + (
                            f".{code.co_name}" if inspect.isclass(obj) else "")
    code = frame.f_code
    if code in _PUBLIC_NAMES:
        return _PUBLIC_NAMES[code]
    # a method a public class inherits (SplitBlock.forward of fa.CrossAttentionBlock): the
    # public class of the object it runs on, as the student wrote it
    owner = frame.f_locals.get("self") if code.co_varnames[:1] == ("self",) else None
    public = [c.__name__ for c in type(owner).__mro__ if _PUBLIC_CLASSES.get(c.__name__) is c]
    if owner is not None and public:
        return f"flowattn_np.{public[0]}.{code.co_name}"
    return f"{frame.f_globals.get('__name__', '?')}.{code.co_qualname}"


class _Guard:
    """The profile hook that keeps the package's answers out of a student's function."""

    def __init__(self, ex, who, forbidden=()):
        names = tuple(ex.allowed) if ex is not None else ()
        self.allowed = set().union(*(_codes(_resolve(n)) for n in names + FREE_NAMES))
        references = [f for n, f in globals().items() if n.startswith("reference_") and callable(f)]
        self.forbidden = set().union(*(_codes(f) for f in (*forbidden, *references) if callable(f))) - self.allowed
        self.restrict = ex is not None
        blocks = ", ".join(f"fa.{n}" for n in names)
        self.ask = f"write it from {blocks} and NumPy" if blocks else "write it in plain NumPy"
        self.who, self.called = who, None

    def _forbidden(self, frame):
        code = frame.f_code
        if code in self.forbidden:
            return True
        if not self.restrict or code in self.allowed:
            return False
        module = frame.f_globals.get("__name__", "")
        short = module.rpartition(".")[2]
        if short in FREE_MODULES:
            return False
        if module == __name__:  # the input makers and the checkers are free; the references are not
            top = code.co_qualname.split(".")[0]
            return top.startswith(("reference_", "_", "<"))
        return True

    def hook(self, frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            return
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename.startswith(_PACKAGE_DIR):
            return  # the package's own calls (inside an allowed building block) are not watched
        if self._forbidden(frame):
            self.called = _called_name(frame)
            raise ReferenceCalled(self.message())

    def message(self):
        return (f"your {self.who} called {self.called}, which computes (part of) the reference of this "
                f"exercise, so it is out of reach while your function is checked; {self.ask}")


class _Stopped(BaseException):
    """Raised inside a student's function that ran past its timeout, to end its thread."""


# The student's function is called from code outside the package, so that a package function
# passed as the student's own (grad_Z = fa.linear_grad_Z) is seen by the guard like any call.
_OUTSIDE = {}
exec(compile("def call(fn, args):\n    return fn(*args)\n", "<your function>", "exec"), _OUTSIDE)


def _stop(worker):
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Stopped))


def call_student(fn, args, guard=None, timeout=None):
    """``fn(*args)`` in a worker thread, under the guard's profile hook, stopped after ``timeout`` s.

    Raises ReferenceCalled if the guard saw a forbidden call (even one the student's code
    caught), StudentTimeout past the timeout, and whatever ``fn`` raised.
    """
    box, done = {}, threading.Event()

    def work():
        if guard is not None:
            sys.setprofile(guard.hook)
        try:
            with np.errstate(all="ignore"):
                box["value"] = _OUTSIDE["call"](fn, args)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            sys.setprofile(None)
            done.set()

    worker = threading.Thread(target=work, name="flowattn_np check", daemon=True)
    try:  # an Event, not join: a join interrupted by Ctrl-C can mark a running thread as stopped
        worker.start()
        done.wait(timeout)
    finally:  # also on KeyboardInterrupt: the student's code must not run on behind the notebook
        if worker.ident is not None and not done.is_set():
            _stop(worker)
            done.wait(1.0)
    if isinstance(box.get("error"), _Stopped) or "value" not in box and "error" not in box:
        raise StudentTimeout(f"your {guard.who if guard else 'function'} did not return within {timeout:g} s "
                             "(an endless loop? a loop whose condition never changes?); it was stopped.")
    if guard is not None and guard.called is not None:
        raise ReferenceCalled(guard.message())
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------- reports


def _coords(index, ndim):
    if ndim == 0:
        return "the (scalar) value"
    if ndim == 1:
        return f"entry {index[0]}"
    names = ["row", "column"]
    lead = ", ".join(f"index {i}" for i in index[:-2])
    rc = f"row {index[-2]}, column {index[-1]}"
    return f"{'sequence ' + lead + ', ' if lead else ''}{rc}" if ndim > 2 else \
        f"{names[0]} {index[0]}, {names[1]} {index[1]}"


def where_they_differ(got, expected, tol):
    """Where got and expected differ most: (text, dict with index, expected, got, count)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    bad = _differences(got, expected, tol)
    with np.errstate(invalid="ignore"):
        diff = np.where(bad, np.abs(got - expected), -1.0)
    diff = np.where(bad & np.isnan(diff), np.inf, diff)
    index = np.unravel_index(int(np.argmax(diff)), expected.shape) if expected.ndim else ()
    index = tuple(int(i) for i in index)
    e, g = float(expected[index]), float(got[index])
    text = (f"{int(bad.sum())} of {expected.size} entries differ; the largest difference is at "
            f"{_coords(index, expected.ndim)}: expected {e:.6g}, got {g:.6g}")
    return text, {"index": index, "expected": e, "got": g, "count": int(bad.sum())}


def _describe_inputs(names, args):
    parts = []
    for name, a in zip(names, args):
        parts.append(f"{name} {tuple(a.shape)}" if isinstance(a, np.ndarray) else f"{name}={a!r}")
    return ", ".join(parts)


def _param_names(fn, count):
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        names = []
    names = names[:count]
    return names + [f"argument {i + 1}" for i in range(len(names), count)]


NON_FINITE = ("underflow", MISSING_MAX_SHIFT.name)
"""Mistakes named so are about inf and NaN; others are not diagnosed from a non-finite output."""


def _diagnose(got, expected, args, tol, mistakes, overflow_possible):
    """The mistakes whose output matches the student's (only those that change the answer)."""
    found = []
    with np.errstate(all="ignore"):
        for mk in mistakes:
            if any(mk.name == f.name for f in found):
                continue
            if mk.detect is not None:
                if mk is MISSING_MAX_SHIFT and (found or not overflow_possible):
                    continue  # said only where the logits overflow, and when nothing else explains the result
                if mk.detect(got, expected, args, tol):
                    found.append(mk)
                continue
            wrong = np.asarray(mk.make(*args), dtype=np.float64)
            if _close(wrong, expected, tol):
                continue  # on these inputs the mistake gives the right answer
            if not mk.name.startswith(NON_FINITE) and not np.all(np.isfinite(wrong)):
                continue  # NaN from an unrelated mistake says nothing about this one
            if _close(got, wrong, tol):
                found.append(mk)
    return found


def _not_an_array(got, expected):
    """What the student returned, if it is not a real NumPy array (or a number for a scalar)."""
    if isinstance(got, (list, tuple, dict, set, str)):
        return f"a {type(got).__name__}"
    if np.ndim(expected) == 0 and isinstance(got, (int, float, np.number)) and not isinstance(got, (bool, complex)):
        return None if not np.iscomplexobj(got) else "a complex number"
    if not isinstance(got, (np.ndarray, np.generic)):
        return f"a {type(got).__name__}"
    if got.dtype.kind == "c":
        return f"a complex array ({got.dtype})"
    if got.dtype.kind not in "fiub":
        return f"an array of dtype {got.dtype}"
    return None


# ---------------------------------------------------------------- diagnosis by terms


def _ratios(counts):
    """(value, words) of the coefficient ratios a fit may report, count-based ones included."""
    out = [(1.0, ""), (-1.0, "sign flipped"), (2.0, "doubled"), (-2.0, "doubled and its sign flipped"),
           (0.5, "halved"), (-0.5, "halved and its sign flipped")]
    for what, c in counts.items():
        if c > 1:
            out += [(1.0 / c, f"divided by the {what} {c} (an average where the equation sums)"),
                    (float(c), f"multiplied by the {what} {c} (a sum where the equation averages)")]
    return out


def _nice(r, counts):
    """The ratio r as one value with the words for it (several readings joined), or None."""
    hits = [(v, w) for v, w in _ratios(counts) if abs(r - v) <= 1e-6 * max(1.0, abs(v))]
    if not hits:
        return None
    return hits[0][0], " or ".join(dict.fromkeys(w for _, w in hits))


def _counts(args):
    """{what: count} a term may be divided by: rows of the first array input, and its batch."""
    first = next((a for a in args if isinstance(a, np.ndarray) and a.ndim >= 2), None)
    if first is None:
        return {}
    counts = {"number of rows": first.shape[-2]}
    if first.ndim > 2:
        counts["batch size"] = int(np.prod(first.shape[:-2]))
    return counts


def _columns(terms):
    """[(term index, variant or None)]: every term and every variant of it, a column of the fit."""
    return [(i, v) for i, t in enumerate(terms) for v in (None, *t.variants)]


def _value(terms, col):
    t = terms[col[0]]
    return np.asarray(t.value if col[1] is None else t.variants[col[1]], dtype=np.float64)


def _design(terms_per_set, outputs):
    """The fit's matrix (one column per term/variant), target and row ranges, each set scaled to 1."""
    cols = _columns(terms_per_set[0])
    blocks, rhs, ranges, start = [], [], [], 0
    for terms, out in zip(terms_per_set, outputs):
        ref = sum(t.coefficient * np.asarray(t.value, dtype=np.float64) for t in terms)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != np.shape(ref) or not np.all(np.isfinite(out)) or _columns(terms) != cols:
            return None
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
        blocks.append(np.stack([_value(terms, c).ravel() for c in cols], axis=1) / scale)
        rhs.append(out.ravel() / scale)
        ranges.append(slice(start, start + out.size))
        start += out.size
    return cols, np.concatenate(blocks), np.concatenate(rhs), ranges


def _distinct(A, tol):
    """Column indices, dropping a column equal to an earlier one or zero (they cannot be told apart)."""
    keep = []
    for j in range(A.shape[1]):
        if np.abs(A[:, j]).max(initial=0.0) > tol and not any(
                np.abs(A[:, j] - A[:, k]).max(initial=0.0) <= tol for k in keep):
            keep.append(j)
    return keep


def _exact_fits(A, b, ranges, subsets, refs, counts, tol):
    """[(subset, ratios, words)] of the subsets whose nice-coefficient fit is exact on every set."""
    found = []
    for subset in subsets:
        coef = np.linalg.lstsq(A[:, subset], b, rcond=None)[0]
        nice = [_nice(c / refs[j], counts) for c, j in zip(coef, subset)]
        if any(n is None for n in nice):
            continue
        fitted = A[:, subset] @ np.array([v * refs[j] for (v, _), j in zip(nice, subset)])
        if all(np.abs(fitted[r] - b[r]).max(initial=0.0) <= tol for r in ranges):
            found.append((subset, [v for v, _ in nice], [w for _, w in nice]))
    return found


def fit_terms(terms_per_set, outputs, tol, counts=None):
    """The sparsest combination of the terms (and variants) that equals ``outputs`` on every set.

    terms_per_set: for each input set, the list of ``Term``; outputs: the student's
    output on each set; tol: relative to max |reference| of each set. Returns
    (words, names, combination) describing how the fit differs from the equation, or
    None when no fit is exact, two different fits are, or the fit is the equation itself.
    """
    design = _design(terms_per_set, outputs)
    if design is None:
        return None
    cols, A, b, ranges = design
    terms = terms_per_set[0]
    refs = [terms[i].coefficient or 1.0 for i, _ in cols]
    keep = _distinct(A, tol)
    n_ref = sum(1 for t in terms if t.coefficient)
    for size in range(1, min(len(keep), n_ref + 2) + 1):
        if A.shape[0] < size + 2:
            break
        fits = _exact_fits(A, b, ranges, itertools.combinations(keep, size), refs, counts or {}, tol)
        readings = {_describe_fit(terms, cols, fit) for fit in fits}
        readings.discard(None)
        if len(readings) == 1:
            return readings.pop()
        if fits:
            return None  # ambiguous (or the equation itself): say nothing
    return None


def _signed(coefficient, name):
    mag = abs(coefficient)
    factor = "" if mag == 1 else (f"{mag:g} " if mag >= 1 else f"(1/{1 / mag:g}) ")
    return f"{'-' if coefficient < 0 else '+'} {factor}{name}"


def _combination(parts):
    text = " ".join(_signed(c, n) for c, n in parts)
    return text[2:] if text.startswith("+ ") else text


def _describe_fit(terms, cols, fit):
    """(words, names, combination) of one exact fit, or None if it is the equation itself."""
    subset, ratios, words = fit
    chosen = {cols[j]: (r, w) for j, r, w in zip(subset, ratios, words)}
    ref_cols = {(i, None) for i, t in enumerate(terms) if t.coefficient}
    if len(terms) > 1 and set(chosen) == ref_cols and len(set(words)) == 1 and words[0]:
        parts = [(r * terms[i].coefficient, terms[i].name) for (i, _), (r, _) in chosen.items()]
        return f"the whole result is {words[0]}", (f"whole result {words[0]}",), _combination(parts)
    lines, names, parts = [], [], []
    for i, t in enumerate(terms):
        ref = _signed(t.coefficient, t.name).removeprefix("+ ") if t.coefficient else t.name
        uses = [(v, *chosen[(i, v)]) for v in (None, *t.variants) if (i, v) in chosen]
        for v, r, w in uses:
            c = r * (t.coefficient or 1.0)
            parts.append((c, t.name if v is None else f"[{t.name} {v}]"))
            if not t.coefficient:
                lines.append(f"an extra term {_signed(c, t.name)}")
                names.append(f"extra {t.name}")
                continue
            what = ref if v is None else f"{ref}, computed {v},"
            if w and t.step and abs(r) == 0.5:
                w = w.replace("halved", "taken with a step h/2 instead of h")
            if v is not None and not any(u[0] is None for u in uses):
                lines.append(f"{ref} is computed {v}" + (f" and {w}" if w else ""))
                names.append(f"{t.name} {v}" + (f", {w}" if w else ""))
            elif v is not None:
                lines.append(f"an extra term {_signed(c, t.name)} {v}")
                names.append(f"extra {t.name} {v}")
            elif w == "sign flipped":
                lines.append(f"the sign of the term {what} is flipped")
                names.append(f"sign of {ref} flipped")
            elif w:
                lines.append(f"the term {what} is {w}")
                names.append(f"{ref} {w}")
        if t.coefficient and not uses:
            lines.append(f"the term {ref} is missing")
            names.append(f"missing {ref}")
    if not lines:
        return None
    return "; ".join(lines), tuple(names), _combination(parts)


def _term_diagnosis(ex, index, student_fn, sets, tol, guard, timeout):
    """The term fit of the student's output ``index`` (None: the whole output) on the float64 sets."""
    if ex is None or ex.terms is None:
        return None
    outputs, terms_per_set = [], []
    for args in sets:
        try:
            got = call_student(student_fn, args, guard, timeout)
        except Exception:
            return None
        terms = ex.terms(*args)
        if index is not None or isinstance(terms, tuple):
            if not isinstance(got, tuple) or not isinstance(terms, tuple):
                return None
            got, terms = got[index], terms[index]
        outputs.append(got)
        terms_per_set.append(terms)
    counts = [_counts(a) for a in sets]
    with np.errstate(all="ignore"):
        return fit_terms(terms_per_set, outputs, tol, counts[0] if all(c == counts[0] for c in counts) else {})


# ---------------------------------------------------------------- the checks


class _NotFinite(Exception):
    """The reference (a loss for finite differences) is not finite: nothing to compare with."""


def _compare_one(who, name, got, expected, args, tol, dtype, mistakes, overflow_possible):
    """None if got matches expected, else (problem text, diagnoses, where)."""
    if got is None:
        return f"`{name}` is None: did you forget `return`?", [], {}
    kind = _not_an_array(got, expected)
    if kind is not None:
        part = "" if name == "the result" else f" as `{name}`"
        return f"your {who} returned {kind}{part}; return a NumPy array (of real floats)", [], {}
    got_arr, expected = np.asarray(got), np.asarray(expected)
    if got_arr.shape != expected.shape:
        problem = f"`{name}` has shape {got_arr.shape}, expected {expected.shape}"
        found = [MISSING_TRANSPOSE] if got_arr.shape == _swap(expected).shape and \
            _close(_swap(got_arr), expected, tol) else []
        return problem, found, {}
    if dtype == "float32" and got_arr.dtype != np.float32 and not isinstance(got, float):
        return f"`{name}` is {got_arr.dtype} for float32 inputs", [UPCAST], {}
    if _close(got_arr, expected, tol):
        return None
    text, where = where_they_differ(got_arr, expected, tol)
    if name != "the result":
        text = f"`{name}`: {text}"
    return text, _diagnose(got_arr, expected, args, tol, mistakes, overflow_possible), where


def _call(fn, *args):
    with np.errstate(all="ignore"):
        return fn(*args)


def _failure(title, context, problem, found, where, raise_on_failure, term=None, deps=(), hint=True,
             kind=CheckFailure):
    lines = [f"{title}: wrong {context}"]
    for name, dep in deps:
        lines.append(f"  This uses your `{name}`, which fails its own test above:")
        lines += ["    " + line for line in dep.message.splitlines()]
    lines.append(f"  {problem}.")
    names = [mk.name for mk in found]
    for mk in found:
        lines.append(f"  Diagnosis - {mk.name}: {mk.message}")
    if term is not None:
        words, term_names, combination = term
        lines.append(f"  Diagnosis by terms - on every input set your result is exactly {combination}: {words}.")
        names += term_names
    if hint and not found and term is None:
        lines.append("  (No common mistake of this exercise matches; compare your steps with the equation.)")
    result = CheckResult(False, "\n".join(lines), tuple(names), where)
    if raise_on_failure:
        raise kind(result.message)
    return result


def _lookup(exercise):
    if exercise is None or isinstance(exercise, Exercise):
        return exercise
    try:
        return EXERCISES[exercise]
    except KeyError:
        raise ValueError(f"exercise: unknown exercise {exercise!r}; known: {', '.join(sorted(EXERCISES))}") \
            from None


def _narrow(mistakes, index):
    """Mistakes of a tuple-valued function, narrowed to its output ``index``."""
    return tuple(mk if mk.make is None else
                 Mistake(mk.name, mk.message, make=lambda *a, _m=mk.make: _m(*a)[index]) for mk in mistakes)


def _outputs(ex, output, got, expected):
    """[(name, got, expected, index)] to compare: every element of a tuple result, or one."""
    names = ex.outputs if ex else ()
    if output is not None:  # expected is that output already
        name = names[output] if output < len(names) else f"output {output}"
        return [(name, got[output] if isinstance(got, tuple) else got, expected, output)]
    if names:
        if not isinstance(got, tuple) or len(got) != len(names):
            return None
        return [(n, g, e, i) for i, (n, g, e) in enumerate(zip(names, got, expected))]
    return [("the result", got, expected, None)]


def _mutated(names, args, saved):
    for name, a, s in zip(names, args, saved):
        if s is not None and not np.array_equal(a, s, equal_nan=True):
            return name
    return None


@dataclass(frozen=True)
class _Check:
    """What one check needs beyond the input sets."""

    title: str
    who: str
    ex: Exercise | None
    mistakes: tuple
    names: list
    own_names: list
    guard: _Guard | None
    timeout: float | None
    raise_on_failure: bool
    deps: tuple = ()


def _one_set(ck, student_fn, expected_fn, args, args64, dtype, tol, output, sets64):
    """None if the student's function is right on this set, else the failure's arguments."""
    saved = [a.copy() if isinstance(a, np.ndarray) else None for a in args]
    try:
        got = call_student(student_fn, args, ck.guard, ck.timeout)
    except (ReferenceCalled, StudentTimeout) as exc:
        return str(exc).rstrip("."), [], {}, None, False, type(exc)
    name = _mutated(ck.own_names, args, saved)
    if name is not None:
        mk = Mistake("in-place mutation of an input", in_place_message(name))
        return f"the input `{name}` was modified", [mk], {}, None, True, CheckFailure
    try:
        expected = _call(expected_fn, args, args64, dtype)
    except _NotFinite as exc:
        return str(exc), [], {}, None, False, CheckFailure
    pairs = _outputs(ck.ex, output, got, expected)
    if pairs is None:
        return (f"expected a tuple ({', '.join(ck.ex.outputs)}), got {type(got).__name__}", [], {}, None, True,
                CheckFailure)
    overflow = _overflow_possible(ck.ex, args)
    for oname, g, e, i in pairs:
        res = _compare_one(ck.who, oname, g, e, args, tol, dtype, ck.mistakes if i is None else
                           _narrow(ck.mistakes, i), overflow)
        if res is not None:
            term = None
            if dtype == "float64" and not res[1] and res[2]:
                term = _term_diagnosis(ck.ex, i, student_fn, sets64, tol, ck.guard, ck.timeout)
            return (*res, term, True, CheckFailure)
    return None


def _run(student_fn, expected_fn, input_sets, *, ck, dtypes, tols, output, what, notes=None):
    """The shared loop of check_function and check_gradient."""
    sets64 = [_cast(a, "float64") for a in input_sets]
    for dtype in dtypes:
        for k, args64 in enumerate(input_sets):
            args = _cast(args64, dtype)
            note = notes[k] if notes else ""
            context = f"on input set {k + 1} of {len(input_sets)} ({dtype}; {_describe_inputs(ck.names, args)}{note})"
            res = _one_set(ck, student_fn, expected_fn, args, args64, dtype, tols[dtype], output, sets64)
            if res is not None:
                problem, found, where, term, hint, kind = res
                return _failure(ck.title, context, problem, found, where, ck.raise_on_failure, term, ck.deps, hint,
                                kind)
    part = "" if output is None or not (ck.ex and output < len(ck.ex.outputs)) else f" {ck.ex.outputs[output]}"
    sets = f"{len(input_sets)} input set{'s' if len(input_sets) > 1 else ''}"
    return CheckResult(True, f"{ck.title}:{part} passed {what} on {sets} ({', '.join(dtypes)})")


def _failing_uses(uses, guard, timeout):
    """[(name, failed CheckResult)] of the student's functions this check uses that fail their own check."""
    if uses is None:
        return ()
    if not isinstance(uses, dict):
        raise TypeError(f"uses: expected a dict {{name: function or (function, exercise)}}, got {type(uses).__name__}")
    failing = []
    for name, spec in uses.items():
        fn, exercise = spec if isinstance(spec, tuple) else (spec, name)
        dep = _lookup(exercise)
        if dep.reference is None or dep.inputs is None:
            raise ValueError(f"uses: exercise {exercise!r} has no reference and inputs to check `{name}` against")
        r = check_function(fn, dep.reference, dep.inputs, exercise=dep, raise_on_failure=False,
                           guard=guard, timeout=timeout)
        if not r.passed:
            failing.append((name, r))
    return tuple(failing)


def _setup(student_fn, ex, mistakes, count, forbidden, guard, timeout, uses, raise_on_failure):
    """The _Check of one call of check_function / check_gradient, its arguments checked."""
    timeout = _check_number("timeout", TIMEOUT if timeout is None else timeout)
    who = ex.function if ex else getattr(student_fn, "__name__", "function")
    title = f"{who} ({ex.equation})" if ex and ex.equation else who
    return _Check(title=title, who=who, ex=ex, mistakes=tuple(mistakes) + (ex.mistakes if ex else ()) + GENERIC,
                  names=list(ex.arguments) if ex and len(ex.arguments) == count else _param_names(student_fn, count),
                  own_names=_param_names(student_fn, count), guard=_Guard(ex, who, forbidden) if guard else None,
                  timeout=timeout, raise_on_failure=raise_on_failure, deps=_failing_uses(uses, guard, timeout))


def check_function(student_fn, reference_fn, make_inputs, exercise=None, mistakes=(), seeds=(0, 1, 2),
                   dtypes=("float64", "float32"), tol=None, output=None, raise_on_failure=True, uses=None,
                   guard=True, timeout=None, stress=True):
    """Compare ``student_fn(*inputs)`` with ``reference_fn(*inputs)`` on several input sets.

    make_inputs: a function rng -> tuple of inputs (called with default_rng(seed) for
    each seed), or a list of input tuples. Float inputs are cast to each dtype; the
    outputs must match to TOLERANCES[dtype] (or ``tol``) relative to max |expected|
    and keep the dtype. exercise: a name in EXERCISES (or an Exercise) giving the
    equation, the mistakes and terms to diagnose, the building blocks the student may
    call, and (``stress``) the large-logit input sets added to yours; ``mistakes`` adds
    more. output: for a function returning a tuple, check only that element. uses:
    {name: function or (function, exercise)} of the student's functions this one calls,
    checked first. guard: keep the package's answers out of reach; timeout: seconds per
    call (TIMEOUT). Raises CheckFailure saying where the arrays differ and which
    mistakes explain it (or returns the failed CheckResult when raise_on_failure is
    False); returns a passed CheckResult.
    """
    ex = _lookup(exercise)
    tol = _check_number("tol", tol)
    sets = _input_sets(make_inputs, seeds, dtypes, student_fn, reference_fn)
    notes = [""] * len(sets)
    if stress and ex is not None and ex.stress is not None:
        extra = ex.stress(np.random.default_rng(seeds[0] if seeds else 0))
        sets += [tuple(a) for a in extra]
        notes += [f"; logits at scale {LARGE_LOGIT_SCALE:g}, regime {r}" for r in ("overflow", "underflow", "both")]
    ck = _setup(student_fn, ex, mistakes, len(sets[0]), (reference_fn,), guard, timeout, uses, raise_on_failure)

    def expected(args, args64, dtype):
        out = reference_fn(*args)
        return out if output is None else out[output]

    return _run(student_fn, expected, sets, ck=ck, dtypes=dtypes, tols={d: tol or TOLERANCES[d] for d in dtypes},
                output=output, what="against the reference", notes=notes)


def _float_wrt(sets, wrt):
    """The input sets with their argument ``wrt`` as float64 when it is an integer (finite differences)."""
    out = []
    for args in sets:
        if not 0 <= wrt < len(args):
            raise ValueError(f"wrt: expected an argument number from 0 to {len(args) - 1}, got {wrt!r}")
        a = args[wrt]
        if isinstance(a, (int, np.integer)) or (isinstance(a, np.ndarray) and a.dtype.kind in "iub"):
            a = np.asarray(a, dtype=np.float64)
        out.append(args[:wrt] + (a,) + args[wrt + 1:])
    return out


def _fd_gradient(loss_fn, args64, wrt, eps):
    """Central differences of loss_fn in its argument wrt, refusing a loss that is not finite."""
    value = _call(loss_fn, *args64)
    if not np.all(np.isfinite(value)):
        raise _NotFinite(f"the loss is {float(np.asarray(value).ravel()[0])} at these inputs, so finite "
                         "differences cannot check the gradient (the loss must be finite there)")
    rest = list(args64)

    def f(x):
        rest[wrt] = x
        return loss_fn(*rest)

    with np.errstate(all="ignore"):
        g = numerical_gradient(f, args64[wrt], eps)
    if not np.all(np.isfinite(g)):
        raise _NotFinite(f"the loss is not finite within eps = {eps:g} of these inputs (finite differences "
                         "give nan or inf), so they cannot check the gradient")
    return g


def check_gradient(student_grad, loss_fn, make_inputs, wrt=0, reference_grad=None, exercise=None,
                   mistakes=(), seeds=(0, 1, 2), dtypes=("float64", "float32"), eps=1e-6, output=None,
                   raise_on_failure=True, tol=None, uses=None, guard=True, timeout=None):
    """Compare ``student_grad(*inputs)`` with central differences of the scalar
    ``loss_fn(*inputs)`` in its argument number ``wrt``.

    In float64 the reference is the finite-difference gradient (max error <= ``tol``,
    FD_TOLERANCE by default, x max |gradient|); an integer argument ``wrt`` is taken as
    float64. In float32 it is ``reference_grad`` (finite differences drown in round-off
    there), so float32 is checked only when reference_grad is given. output: for a
    student_grad (and reference_grad) returning a tuple, the element to check. uses,
    guard, timeout and failures are as in ``check_function``.
    """
    ex = _lookup(exercise)
    eps = _check_number("eps", eps, allow_none=False)
    tol = _check_number("tol", tol)
    if reference_grad is None:
        dtypes = tuple(d for d in dtypes if d == "float64")
    sets = _float_wrt(_input_sets(make_inputs, seeds, dtypes, student_grad, loss_fn), wrt)
    ck = _setup(student_grad, ex, mistakes, len(sets[0]), (loss_fn, reference_grad), guard, timeout, uses,
                raise_on_failure)

    def expected(args, args64, dtype):
        if dtype != "float64":
            out = reference_grad(*args)
            return out if output is None else out[output]
        return _fd_gradient(loss_fn, args64, wrt, eps)

    tols = {d: (tol or FD_TOLERANCE) if d == "float64" else (tol or TOLERANCES[d]) for d in dtypes}
    return _run(student_grad, expected, sets, ck=ck, dtypes=dtypes, tols=tols, output=output,
                what="against finite differences")


# ---------------------------------------------------------------- references


def _softmax_cols(S):
    """The mistake 'softmax over the wrong axis': normalised over axis -2 (columns)."""
    return _swap(ops.softmax(_swap(S)))


def reference_ca_block(Z, theta, C, h):
    """Lie block of eq. (8), Euler on A, exact B: Z + h (C - sigma(Z theta^T)) theta (n x d)."""
    block = CrossAttentionBlock(BlockConfig(model="linear", targets="labels", learn_h=True))
    return block.forward(Z, {"theta": theta, "h": np.asarray(h, dtype=Z.dtype)}, C)[0]


def reference_ca_block_vjp(Z_out_bar, Z, theta, C, h):
    """VJP of reference_ca_block for the upstream Z_out_bar: (Z_bar, theta_bar, h_bar)."""
    block = CrossAttentionBlock(BlockConfig(model="linear", targets="labels", learn_h=True))
    _, cache = block.forward(Z, {"theta": theta, "h": np.asarray(h, dtype=Z.dtype)}, C)
    g = block.backward(Z_out_bar, cache)
    return g.Z, g.params["theta"], g.params["h"]


def reference_network(X, y, theta, h, L):
    """Label-free network of L tied attention-only blocks Z - h CA(Z, theta) (eq. (8) with C = 0)
    and the head Z_L theta^T.

    Returns (loss, theta_bar, h_bar): the batch-mean cross-entropy of the labels y and
    its gradients, from flowattn_np.Network. X: n x d, y: (n,) integers, theta: m x d.
    """
    from flowattn_np.blocks.network import Network, NetworkConfig

    cfg = NetworkConfig(n_inputs=X.shape[1], n_classes=theta.shape[0], layers=L, dtype=str(X.dtype),
                        block=BlockConfig(model="linear", targets="none", learn_h=True))
    net = Network(cfg, params={"theta": theta.copy(), "h": np.asarray(h, dtype=X.dtype)})
    loss, grads, _ = net.loss_and_grads(X, y)
    return loss, grads["theta"], grads.get("h", np.zeros((), X.dtype))


def _head_only(X, y, theta, h, L):
    """The network's gradients with theta_bar from the head alone (the tied blocks' part left out)."""
    loss, _, h_bar = reference_network(X, y, theta, h, L)
    Z, C = X, np.eye(theta.shape[0], dtype=X.dtype)[y]
    attention_only = CrossAttentionBlock(BlockConfig(model="linear", targets="none", learn_h=True))
    for _ in range(L):  # label-free blocks: Z + h (0 - sigma(Z theta^T)) theta
        Z = attention_only.forward(Z, {"theta": theta, "h": np.asarray(h, dtype=X.dtype)})[0]
    G = (ops.softmax(Z @ theta.T) - C) / X.shape[0]
    return loss, G.T @ Z, h_bar


def make_sphere_inputs(rng, n=5, d=4):
    """Random (Z (n, d), Y_bar (n, d), r) for the retraction and its VJP."""
    return rng.standard_normal((n, d)), rng.standard_normal((n, d)), float(rng.uniform(0.5, 3.0))


def make_block_inputs(rng, n=5, m=4, d=3):
    """Random (Z, theta, C, h) for one eq. (8) block; h a Python float."""
    Z, theta, C = make_linear_inputs(rng, n, m, d)
    return Z, theta, C, float(rng.uniform(0.1, 0.9))


def make_block_vjp_inputs(rng, n=5, m=4, d=3):
    """Random (Z_out_bar, Z, theta, C, h): an upstream gradient and one block's inputs."""
    Z, theta, C, h = make_block_inputs(rng, n, m, d)
    return (rng.standard_normal(Z.shape), Z, theta, C, h)


def make_network_inputs(rng, n=12, m=3, d=4, L=2):
    """Random (X (n, d), y (n,), theta (m, d), h, L) for the label-free network."""
    return (rng.standard_normal((n, d)), rng.integers(0, m, size=n), rng.standard_normal((m, d)) / 2,
            float(rng.uniform(-0.5, 0.5)), L)


def _ca_block_parts(Z_out_bar, Z, theta, C, h):
    P = ops.softmax(Z @ theta.T)
    R = C - P
    G = Z_out_bar @ theta.T
    S_bar = ops.softmax_vjp(P, -h * G)
    return P, R, G, S_bar


def _attention_step(theta, t):
    return lambda Y: rk_step(lambda X: linear_flow_A(X, theta), Y, t, "rk4")


def reference_lie_step(Z, theta, C, h):
    """One Lie step B(h) o A(h) of the linear flow: A(h) by ONE RK4 step, then the exact B(h),
    Z + h C theta (n x d).

    Not the block of eq. (8), which takes one EULER step for A (``reference_ca_block``): the
    same order of the sub-flows, a more accurate A.
    """
    return linear_B_exact(_attention_step(theta, h)(Z), theta, C, h)


def reference_strang_step(Z, theta, C, h):
    """One Strang step A(h/2) o B(h) o A(h/2) of the linear flow: each A(h/2) by one RK4 step,
    the exact B(h) between them (n x d)."""
    half = _attention_step(theta, 0.5 * h)
    return half(linear_B_exact(half(Z), theta, C, h))


# ---------------------------------------------------------------- the catalogue


def _grad_Z_terms(Z, theta, C):
    return attention.cross_attention(Z, theta), C @ theta


def _quad_terms(Z, theta, C):
    P = ops.softmax(Z @ theta @ _swap(Z))
    Y = Z @ theta
    return P @ Y, _swap(P) @ Y, (C + _swap(C)) @ Y


def _quad_A(Z, phi, C, residual):
    G = residual(Z, phi @ phi.T, C)
    A = Z.swapaxes(-1, -2) @ G @ Z
    return A.reshape((-1,) + A.shape[-2:]).sum(axis=0)


def _residual(Z, theta, C):
    return ops.softmax(Z @ theta @ _swap(Z)) - C


WRONG_AXIS = "softmax over the wrong axis"
WRONG_AXIS_MSG = ("your softmax normalises the columns (axis 0) instead of the rows: each row i "
                  "(one query) must sum to 1 over k, sigma(S)_ij = exp(S_ij) / sum_k exp(S_ik); "
                  "use axis=-1 (with keepdims=True).")
COLUMNS = "with the softmax over the columns instead of the rows"

A2_BLOCKS = ("softmax", "logsumexp", "softmax_vjp")
"""The package functions an a2 student may call (the blocks and networks are the reference)."""

A4_BLOCKS = ("softmax", "cross_attention", "linear_flow_A")
"""The package functions an a4 student may call for the sub-flow steps (the steps are the reference)."""


def make_self_attention_inputs(rng):
    """Random (Z (2, 5, 3), theta (3, 3) SPD) for self-attention."""
    return make_quadratic_inputs(rng)[:2]


def _linear_logits(Z, theta, *_):
    return Z @ _swap(theta)


def _quadratic_logits(Z, theta, *_):
    return Z @ theta @ _swap(Z)


def _linear_grad_Z_terms(Z, theta, C):
    S = Z @ theta.T
    return [Term("CA(Z, theta)", 1.0, ops.softmax(S) @ theta, {COLUMNS: _softmax_cols(S) @ theta}),
            Term("C theta", -1.0, C @ theta)]


def _linear_grad_theta_terms(Z, theta, C):
    # a1 asks the student to derive grad_theta: the terms are named by where they come from,
    # not by their formulas, so that no message states the answer
    S = Z @ theta.T
    return [Term("softmax part", 1.0, ops.softmax(S).T @ Z, {COLUMNS: _softmax_cols(S).T @ Z}),
            Term("label part", -1.0, C.T @ Z)]


def _cross_entropy_terms(Z, theta, C):
    S = Z @ theta.T
    return [Term("<C, Z theta^T>", -1.0, (C * S).sum()),
            Term("sum_i LSE(Z theta^T)_i", 1.0, ops.logsumexp(S).sum(),
                 {"over the columns instead of the rows": ops.logsumexp(S.T).sum()})]


def _ca_block_terms(Z, theta, C, h):
    S = Z @ theta.T
    return [Term("Z", 1.0, Z),  # the residual connection
            Term("h CA(Z, theta)", -1.0, h * (ops.softmax(S) @ theta), {COLUMNS: h * (_softmax_cols(S) @ theta)},
                 step=True),
            Term("h C theta", 1.0, h * (C @ theta), step=True)]


def _ca_block_vjp_terms(Z_out_bar, Z, theta, C, h):
    P, R, _, S_bar = _ca_block_parts(Z_out_bar, Z, theta, C, h)
    return ([Term("Z_out_bar", 1.0, Z_out_bar), Term("S_bar theta", 1.0, S_bar @ theta)],
            [Term("h R^T Z_out_bar", 1.0, h * (R.T @ Z_out_bar), step=True), Term("S_bar^T Z", 1.0, S_bar.T @ Z)],
            [Term("<Z_out_bar, C theta>", 1.0, (Z_out_bar * (C @ theta)).sum()),
             Term("<Z_out_bar, CA(Z, theta)>", -1.0, (Z_out_bar * (P @ theta)).sum())])


def _self_attention_terms(Z, theta):
    return [Term("sigma(Z theta Z^T) Z theta", 1.0, ops.softmax(_quadratic_logits(Z, theta)) @ Z @ theta)]


def _self_attention_adjoint_terms(Z, theta):
    return [Term("sigma(Z theta Z^T)^T Z theta", 1.0, _swap(ops.softmax(_quadratic_logits(Z, theta))) @ Z @ theta)]


def _quadratic_grad_Z_terms(Z, theta, C):
    P, Y = ops.softmax(_quadratic_logits(Z, theta)), Z @ theta
    return [Term("SA(Z, theta)", 1.0, P @ Y), Term("SA*(Z, theta)", 1.0, _swap(P) @ Y),
            Term("C Z theta", -1.0, C @ Y), Term("C^T Z theta", -1.0, _swap(C) @ Y)]


def _lie_step_terms(Z, theta, C, h):
    return [Term("A(h) Z", 1.0, _attention_step(theta, h)(Z), {"with a step h/2": _attention_step(theta, 0.5 * h)(Z)}),
            Term("h C theta", 1.0, h * (C @ theta), step=True)]


def _naive_lse(S):
    return np.log(np.exp(S).sum(-1))


def _global_lse(S):
    c = S.max()
    return c + np.log(np.exp(S - c).sum(-1))


def _global_softmax(S):
    e = np.exp(S - S.max())
    return e / e.sum(-1, keepdims=True)


GLOBAL_MAX = "underflow: shifted by the global maximum"
GLOBAL_MAX_MSG = ("you subtract the maximum of the whole array (S - S.max()), not each row's own: in a row whose "
                  "logits all lie far below the global maximum every exp underflows to 0 (exp(-746) = 0 in "
                  "float64, exp(-104) in float32), so the row sums to 0 and {}. Subtract each row's maximum, "
                  "S.max(axis=-1, keepdims=True).")
LOG_OF_SOFTMAX = "underflow: log of a softmax"
LOG_OF_SOFTMAX_MSG = ("log sigma(S) is -inf where the softmax underflowed to 0 (a logit about 745 below its row's "
                      "maximum in float64, 104 in float32), and 0 * -inf = NaN. Compute log sigma(S) = S - LSE(S) "
                      "with a max-shifted LSE instead of the log of a softmax.")


def _overflow_mistake(make):
    return Mistake(MISSING_MAX_SHIFT.name, MISSING_MAX_SHIFT.message, make=make)


EXERCISES = {
    "softmax": Exercise("softmax", "row-wise softmax sigma(S)_ij = exp(S_ij) / sum_k exp(S_ik), max-shifted", (
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG, make=_softmax_cols),
        Mistake(GLOBAL_MAX, GLOBAL_MAX_MSG.format("0 / 0 = NaN"), make=_global_softmax),
    ), logits=lambda S: S, stress=make_large_logit_inputs, reference=ops.softmax, inputs=make_logits_inputs),
    "logsumexp": Exercise("logsumexp", "LSE(S)_i = c_i + log sum_k exp(S_ik - c_i), c_i = max_k S_ik", (
        Mistake("max not added back", "you return log sum_k exp(S_ik - c_i) without the term + c_i "
                "of LSE(S)_i = c_i + log sum_k exp(S_ik - c_i): the max-shift must be undone.",
                make=lambda S: np.log(np.exp(S - S.max(-1, keepdims=True)).sum(-1))),
        Mistake(WRONG_AXIS, "you sum over the columns (axis 0) instead of over k in each row: "
                "LSE(S)_i = log sum_k exp(S_ik); use axis=-1.",
                make=lambda S: _swap(S).max(-1) + np.log(np.exp(_swap(S) - _swap(S).max(-1, keepdims=True)).sum(-1))
                if S.shape[0] == S.shape[1] else np.full(S.shape[0], np.nan)),
        Mistake(GLOBAL_MAX, GLOBAL_MAX_MSG.format("log 0 = -inf"), make=_global_lse),
        _overflow_mistake(_naive_lse),
    ), logits=lambda S: S, stress=make_large_logit_inputs, reference=ops.logsumexp, inputs=make_logits_inputs),
    "cross_entropy": Exercise("cross_entropy", "eq. (3): l = -<C, log sigma(Z theta^T)>, summed over rows", (
        Mistake("mean instead of sum", "you divide by the number of rows n: the point-wise loss of "
                "eq. (3) is the SUM over rows, l = -sum_i <C_i, log sigma(Z theta^T)_i>.",
                make=lambda Z, th, C: -(C * ops.log_softmax(Z @ th.T)).sum() / Z.shape[0]),
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG,
                make=lambda Z, th, C: -(C * np.log(_softmax_cols(Z @ th.T))).sum()),
        Mistake("missing minus sign", "the cross-entropy is -<C, log sigma(N)>: you dropped the minus "
                "(your loss is negative; log-probabilities are <= 0).",
                make=lambda Z, th, C: (C * ops.log_softmax(Z @ th.T)).sum()),
        Mistake(LOG_OF_SOFTMAX, LOG_OF_SOFTMAX_MSG, make=lambda Z, th, C: -(C * np.log(ops.softmax(Z @ th.T))).sum()),
        Mistake(GLOBAL_MAX, GLOBAL_MAX_MSG.format("log 0 = -inf"),
                make=lambda Z, th, C: -(C * (Z @ th.T)).sum() + _global_lse(Z @ th.T).sum()),
        _overflow_mistake(lambda Z, th, C: -(C * (Z @ th.T)).sum() + _naive_lse(Z @ th.T).sum()),
    ), terms=_cross_entropy_terms, logits=_linear_logits, stress=make_large_linear_inputs, reference=linear_loss,
        inputs=make_linear_inputs),
    "linear_grad_Z": Exercise("grad_Z", "eq. (4): grad_Z l = CA(Z, theta) - C theta = (sigma(Z theta^T) - C) theta", (
        Mistake("missing - C theta", "the term - C theta of eq. (4) is missing: you return only the "
                "cross-attention CA(Z, theta) = sigma(Z theta^T) theta. The derivative of -<C, Z theta^T> "
                "in Z is - C theta.", make=lambda Z, th, C: _grad_Z_terms(Z, th, C)[0]),
        Mistake("sign of - C theta flipped", "the term - C theta of eq. (4) has the wrong sign: you "
                "compute CA(Z, theta) + C theta. The label term enters the loss as -<C, Z theta^T>.",
                make=lambda Z, th, C: sum(_grad_Z_terms(Z, th, C))),
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG + " In eq. (4) CA(Z, theta) = sigma(Z theta^T) theta.",
                make=lambda Z, th, C: (_softmax_cols(Z @ th.T) - C) @ th),
    ), allowed=("softmax",), terms=_linear_grad_Z_terms, logits=_linear_logits, reference=linear_grad_Z,
        inputs=make_linear_inputs),
    # derived by the student from dN = Z dtheta^T: neither the title nor a message gives the formula
    "linear_grad_theta": Exercise("grad_theta", "the gradient of eq. (3) in theta, derived from dN = Z dtheta^T", (
        Mistake("missing - C", "the label part is missing: your result is the derivative of the sum of the "
                "LSE(Z theta^T)_i alone; the loss also has the term -<C, Z theta^T>, whose derivative in theta "
                "you left out.", make=lambda Z, th, C: ops.softmax(Z @ th.T).T @ Z),
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG, make=lambda Z, th, C: (_softmax_cols(Z @ th.T) - C).T @ Z),
    ), allowed=("softmax",), terms=_linear_grad_theta_terms, logits=_linear_logits, reference=linear_grad_theta,
        inputs=make_linear_inputs),
    "ca_block": Exercise("block_forward", "eq. (8): Z_out = Z - h CA(Z, theta) + h C theta", (
        Mistake("sign of the attention term flipped", "eq. (8) SUBTRACTS the attention: Z_half = Z - h CA(Z, "
                "theta) (a descent step; CA is part of the gradient). You add it.",
                make=lambda Z, th, C, h: Z + h * (attention.cross_attention(Z, th) + C @ th)),
        Mistake("missing residual", "the residual connection is missing: eq. (8) is Z_out = Z + h (C theta "
                "- CA(Z, theta)); you return only the update h (C theta - CA(Z, theta)).",
                make=lambda Z, th, C, h: h * (C @ th - attention.cross_attention(Z, th))),
        Mistake("missing label step + h C theta", "the second line of eq. (8), Z_out = Z_half + h C theta "
                "(the B sub-flow), is missing: you return Z_half = Z - h CA(Z, theta).",
                make=lambda Z, th, C, h: Z - h * attention.cross_attention(Z, th)),
    ), allowed=A2_BLOCKS, terms=_ca_block_terms, logits=_linear_logits, reference=reference_ca_block,
        inputs=make_block_inputs),
    "ca_block_vjp": Exercise(
        "block_backward", "VJP of eq. (8): Z_out = Z + h (C - P) theta, P = sigma(Z theta^T)", (
            Mistake("missing residual path in Z_bar", "Z_bar is missing the identity term of the residual "
                    "connection: Z_out = Z + ..., so Z_bar = Z_out_bar + S_bar theta.",
                    make=lambda Zb, Z, th, C, h: _vjp_variant(Zb, Z, th, C, h, residual=False)),
            Mistake("missing softmax VJP in Z_bar", "Z_bar misses the term S_bar theta: P = sigma(Z theta^T) "
                    "depends on Z, so Z_bar = Z_out_bar + S_bar theta with S_bar = softmax VJP of "
                    "P_bar = -h Z_out_bar theta^T.", make=lambda Zb, Z, th, C, h: _vjp_variant(Zb, Z, th, C, h,
                                                                                       z_softmax=False)),
            Mistake("missing softmax VJP in theta_bar", "theta_bar misses S_bar^T Z: the attention weights "
                    "P = sigma(Z theta^T) depend on theta too (theta is the keys AND the values).",
                    make=lambda Zb, Z, th, C, h: _vjp_variant(Zb, Z, th, C, h, th_softmax=False)),
            Mistake("missing value term in theta_bar", "theta_bar misses h (C - P)^T Z_out_bar: theta also "
                    "multiplies as the values in h (C - P) theta.",
                    make=lambda Zb, Z, th, C, h: _vjp_variant(Zb, Z, th, C, h, th_value=False)),
            Mistake("sign of the softmax VJP flipped", "the softmax VJP enters with the wrong sign: P enters "
                    "eq. (8) as - h P theta, so P_bar = -h Z_out_bar theta^T.",
                    make=lambda Zb, Z, th, C, h: _vjp_variant(Zb, Z, th, C, h, sign=-1.0)),
        ), outputs=("Z_bar", "theta_bar", "h_bar"), arguments=("Z_out_bar", "Z", "theta", "C", "h"),
        allowed=A2_BLOCKS, terms=_ca_block_vjp_terms, logits=lambda Zb, Z, th, *_: Z @ _swap(th),
        reference=reference_ca_block_vjp, inputs=make_block_vjp_inputs),
    "network": Exercise(
        "network_loss_and_grads", "mean cross-entropy of Z_L theta^T after L blocks Z + h (0 - sigma(Z theta^T)) theta", (
            Mistake("sum instead of mean", "the network's loss is the batch MEAN of the cross-entropy: divide "
                    "the loss and the head's residual sigma(logits) - C by the number of rows n.",
                    make=lambda X, y, th, h, L: tuple(a * X.shape[0] for a in reference_network(X, y, th, h, L))),
            Mistake("missing the blocks' part of theta_bar", "theta is tied: the same theta is in the head AND "
                    "in every block, so theta_bar adds the head's G^T Z_L and every block's theta_bar.",
                    make=lambda X, y, th, h, L: _head_only(X, y, th, h, L)),
        ), outputs=("loss", "theta_bar", "h_bar"), allowed=A2_BLOCKS, reference=reference_network,
        inputs=make_network_inputs),
    "self_attention": Exercise("SA", "SA(Z, theta) = sigma(Z theta Z^T) Z theta, the first term of eq. (9)", (
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG + " For SA each token's scores over the other tokens sum to 1.",
                make=lambda Z, th: _softmax_cols(Z @ th @ _swap(Z)) @ Z @ th),
        Mistake("missing theta in the values", "the values are Z theta, not Z: SA = sigma(Z theta Z^T) Z theta.",
                make=lambda Z, th: ops.softmax(Z @ th @ _swap(Z)) @ Z),
    ), allowed=("softmax",), terms=_self_attention_terms, logits=_quadratic_logits, reference=self_attention,
        inputs=make_self_attention_inputs),
    "self_attention_adjoint": Exercise("SA_adjoint", "SA*(Z, theta) = sigma(Z theta Z^T)^T Z theta, the second "
                                                     "term of eq. (9)", (
        Mistake("missing transpose in SA*", "you return SA(Z, theta): SA* uses the TRANSPOSED attention "
                "matrix, sigma(Z theta Z^T)^T Z theta (the transpose of the softmax, not a softmax of the "
                "transpose).", make=lambda Z, th: _quad_terms(Z, th, np.zeros(Z.shape[:-1] + Z.shape[-2:-1]))[0]),
        Mistake("softmax of the transpose", "you take sigma((Z theta Z^T)^T): SA* is the transpose of the "
                "row-wise softmax, sigma(Z theta Z^T)^T, whose columns (not rows) sum to 1.",
                make=lambda Z, th: ops.softmax(_swap(Z @ th @ _swap(Z))) @ Z @ th),
    ), allowed=("softmax",), terms=_self_attention_adjoint_terms, logits=_quadratic_logits,
        reference=self_attention_adjoint, inputs=make_self_attention_inputs),
    "quadratic_grad_Z": Exercise(
        "grad_Z", "eq. (9): grad_Z l = SA(Z, theta) + SA*(Z, theta) - (C + C^T) Z theta", (
            Mistake("missing - (C + C^T) Z theta", "the label term - (C + C^T) Z theta of eq. (9) is "
                    "missing: you return SA + SA*.", make=lambda Z, th, C: sum(_quad_terms(Z, th, C)[:2])),
            Mistake("missing C^T in the label term", "the label term of eq. (9) is -(C + C^T) Z theta: Z "
                    "appears twice in Z theta Z^T, so C enters once and transposed once; you have - C Z theta.",
                    make=lambda Z, th, C: sum(_quad_terms(Z, th, C)[:2]) - C @ Z @ th),
            Mistake("missing SA*", "the term SA*(Z, theta) of eq. (9) is missing (Z is both the queries and "
                    "the keys, so the gradient has a transposed attention term).",
                    make=lambda Z, th, C: _quad_terms(Z, th, C)[0] - _quad_terms(Z, th, C)[2]),
            Mistake("sign of (C + C^T) Z theta flipped", "the label term of eq. (9) must be subtracted: "
                    "- (C + C^T) Z theta; you add it.",
                    make=lambda Z, th, C: sum(_quad_terms(Z, th, C))),
        ), allowed=("softmax",), terms=_quadratic_grad_Z_terms, logits=_quadratic_logits, reference=quadratic_grad_Z,
        inputs=make_quadratic_inputs),
    "quadratic_grad_phi": Exercise(
        "grad_phi", "grad_phi l = tril((Z^T G Z + Z^T G^T Z) phi), G = sigma(Z theta Z^T) - C, summed over sequences", (
            Mistake("missing tril", "phi is lower-triangular: only its lower triangle is a parameter, so keep "
                    "the lower triangle of the gradient (np.tril).",
                    make=lambda Z, phi, C: (lambda A: (A + A.T) @ phi)(_quad_A(Z, phi, C, _residual))),
            Mistake("missing transpose G^T", "theta = phi phi^T enters N = Z theta Z^T symmetrically: the "
                    "gradient is (Z^T G Z + Z^T G^T Z) phi; you have 2 Z^T G Z phi.",
                    make=lambda Z, phi, C: np.tril(2 * _quad_A(Z, phi, C, _residual) @ phi)),
            Mistake("missing - C", "G = sigma(Z theta Z^T) - C: the label term is missing.",
                    make=lambda Z, phi, C: (lambda A: np.tril((A + A.T) @ phi))(
                        _quad_A(Z, phi, C, lambda Z, th, C: ops.softmax(Z @ th @ _swap(Z))))),
        ), allowed=("softmax",), reference=quadratic_grad_phi, inputs=make_quadratic_phi_inputs),
    "rk4_attention": Exercise("rk4_attention", "one RK4 step of the attention sub-flow dZ/dt = -CA(Z, theta)", (
        Mistake("sign of the sub-flow flipped", "the attention sub-flow is dZ/dt = -CA(Z, theta) (it descends "
                "the log-sum-exp); you integrate +CA.",
                make=lambda Z, th, t: rk_step(lambda X: -linear_flow_A(X, th), Z, t, "rk4")),
        Mistake("one Euler step", "you take one Euler step Z - t CA(Z, theta); RK4 evaluates the field four "
                "times: k1 = f(Z), k2 = f(Z + t/2 k1), k3 = f(Z + t/2 k2), k4 = f(Z + t k3), "
                "Z + t/6 (k1 + 2 k2 + 2 k3 + k4).",
                make=lambda Z, th, t: Z + t * linear_flow_A(Z, th)),
    ), allowed=A4_BLOCKS),
    "retract": Exercise("retract", "R(z) = r z / |z|, row by row", (
        Mistake("norm over the wrong axis", "|z| is the length of each ROW (one token's features): "
                "np.linalg.norm(Z, axis=-1, keepdims=True), not over the columns.",
                make=lambda Z, r: r * Z / np.sqrt((Z * Z).sum(axis=-2, keepdims=True))),
        Mistake("missing radius r", "R(z) = r z / |z| puts the rows on the sphere of radius r, not 1.",
                make=lambda Z, r: Z / np.sqrt((Z * Z).sum(axis=-1, keepdims=True))),
    )),
    "retract_vjp": Exercise("retract_vjp", "z_bar = (r / |z|) (y_bar - z_hat (z_hat . y_bar)), z_hat = z / |z|", (
        Mistake("missing tangent projection", "you return (r / |z|) y_bar: R(z) does not change when z is "
                "scaled, so the radial part of y_bar must be removed: - z_hat (z_hat . y_bar).",
                make=lambda Z, Yb, r: r * Yb / np.sqrt((Z * Z).sum(axis=-1, keepdims=True))),
        Mistake("missing factor r / |z|", "the projection is right but the factor r / |z| (the derivative "
                "of the scaling) is missing.",
                make=lambda Z, Yb, r: (lambda u: Yb - u * (u * Yb).sum(-1, keepdims=True))(
                    Z / np.sqrt((Z * Z).sum(axis=-1, keepdims=True)))),
    ), reference=retract_vjp, inputs=make_sphere_inputs),
    "lie_step": Exercise("lie_step", "Lie splitting B(h) o A(h), A by one RK4 step: attention first, "
                                    "the order of eq. (8)", (
        Mistake("sub-flows in the wrong order", "you apply B before A: the Lie step (like eq. (8)) takes "
                "the attention sub-flow A first, then the label sub-flow B: B(h) o A(h).",
                make=lambda Z, th, C, h: _attention_step(th, h)(linear_B_exact(Z, th, C, h))),
    ), allowed=A4_BLOCKS, terms=_lie_step_terms, reference=reference_lie_step, inputs=make_block_inputs),
    "strang_step": Exercise("strang_step", "Strang splitting A(h/2) o B(h) o A(h/2)", (
        Mistake("full steps of A", "Strang takes HALF steps of A on either side of a full step of B: "
                "A(h/2) o B(h) o A(h/2); you take A(h) twice.",
                make=lambda Z, th, C, h: _attention_step(th, h)(linear_B_exact(_attention_step(th, h)(Z), th, C, h))),
        Mistake("a Lie step", "you return the Lie step B(h) o A(h): Strang is symmetric, "
                "A(h/2) o B(h) o A(h/2).", make=lambda Z, th, C, h: reference_lie_step(Z, th, C, h)),
    ), allowed=A4_BLOCKS, reference=reference_strang_step, inputs=make_block_inputs),
}
"""Exercise name -> Exercise: the equation, its mistakes and terms, and the building blocks a student may call."""


def _vjp_variant(Z_bar, Z, theta, C, h, residual=True, z_softmax=True, th_softmax=True, th_value=True, sign=1.0):
    """The VJP of the eq. (8) block with one piece left out or one sign flipped (mistakes)."""
    P, R, G, S_bar = _ca_block_parts(Z_bar, Z, theta, C, h)
    S_bar = sign * S_bar
    Z_in = (Z_bar if residual else 0.0) + (S_bar @ theta if z_softmax else 0.0)
    th_bar = (h * (R.T @ Z_bar) if th_value else 0.0) + (S_bar.T @ Z if th_softmax else 0.0)
    return Z_in, th_bar, (G * R).sum()


# ---------------------------------------------------------------- assignment 4: RK4 reference
# (appended for the fifth assignment's branch; uses only the public API above)


def reference_rk4_attention(Z, theta, t):
    """One RK4 step of size t of the attention sub-flow dZ/dt = -CA(Z, theta) (n x d)."""
    return _attention_step(theta, t)(Z)


# ---------------------------------------------------------------- assignment 5: the MLP oracle in a block


def make_activation_inputs(rng, n=4, k=6, scale=3.0):
    """Random pre-activations x (n, k), a few of them far out (|x| of 30) where tanh saturates."""
    x = scale * rng.standard_normal((n, k))
    x.flat[:2] = (30.0, -30.0)
    return (x,)


def make_mlp_inputs(rng, n=5, d=3, k=6, m=4, scale=1.0):
    """Random (Z (n, d), W1 (k, d), b1 (k,), W2 (m, k), b2 (m,)) for the MLP oracle.

    scale multiplies W2 and b2: the oracle's logits; scale=300 puts them far beyond exp's range.
    """
    return (rng.standard_normal((n, d)), rng.standard_normal((k, d)) / d ** 0.5, 0.1 * rng.standard_normal(k),
            scale * rng.standard_normal((m, k)) / k ** 0.5, scale * rng.standard_normal(m))


def make_mlp_vjp_inputs(rng, **sizes):
    """Random (C_bar (n, m), Z, W1, b1, W2, b2): an upstream gradient and the oracle's inputs."""
    Z, W1, b1, W2, b2 = make_mlp_inputs(rng, **sizes)
    return (rng.standard_normal((Z.shape[0], W2.shape[0])), Z, W1, b1, W2, b2)


def make_mlp_block_inputs(rng, n=5, d=3, k=6, m=4):
    """Random (Z, theta (m, d), h (0-d array), W1, b1, W2, b2) for a Lie block with the MLP oracle."""
    Z, W1, b1, W2, b2 = make_mlp_inputs(rng, n, d, k, m)
    return Z, rng.standard_normal((m, d)), np.array(rng.uniform(0.1, 0.9)), W1, b1, W2, b2


def make_mlp_block_vjp_inputs(rng, **sizes):
    """Random (Z_bar, Z, theta, h, W1, b1, W2, b2): an upstream gradient and one block's inputs."""
    args = make_mlp_block_inputs(rng, **sizes)
    return (rng.standard_normal(args[0].shape),) + args


def reference_mlp_oracle(Z, W1, b1, W2, b2):
    """The MLP oracle C_hat(Z) = sigma(gelu(Z W1^T + b1) W2^T + b2) (n x m), from flowattn_np.equations.mlp."""
    from flowattn_np.equations.mlp import mlp_oracle

    return mlp_oracle(Z, W1, b1, W2, b2, "gelu")[0]


def reference_mlp_oracle_vjp(C_bar, Z, W1, b1, W2, b2):
    """VJP of reference_mlp_oracle for the upstream C_bar: (Z_bar, W1_bar, b1_bar, W2_bar, b2_bar)."""
    from flowattn_np.equations.mlp import mlp_oracle, mlp_oracle_vjp

    Z_bar, g = mlp_oracle_vjp(C_bar, mlp_oracle(Z, W1, b1, W2, b2, "gelu")[1])
    return Z_bar, g["W1"], g["b1"], g["W2"], g["b2"]


def _mlp_block(k):
    return readable_block(BlockConfig(model="linear", targets="mlp", mlp_hidden=k, activation="gelu",
                                                learn_h=True))


def _mlp_block_params(theta, h, W1, b1, W2, b2):
    return {"theta": theta, "h": np.asarray(h, dtype=theta.dtype), "W1": W1, "b1": b1, "W2": W2, "b2": b2}


def reference_mlp_block(Z, theta, h, W1, b1, W2, b2):
    """Lie block with the MLP oracle: Z_half = Z - h CA(Z, theta), Z_out = Z_half + h C_hat(Z_half) theta."""
    return _mlp_block(W1.shape[0]).forward(Z, _mlp_block_params(theta, h, W1, b1, W2, b2))[0]


MLP_BLOCK_OUTPUTS = ("Z_bar_in", "theta_bar", "h_bar", "W1_bar", "b1_bar", "W2_bar", "b2_bar")


def reference_mlp_block_vjp(Z_bar, Z, theta, h, W1, b1, W2, b2):
    """VJP of reference_mlp_block for the upstream Z_bar: (Z_bar_in, theta_bar, h_bar, W1_bar, b1_bar,
    W2_bar, b2_bar), from the package's block."""
    block = _mlp_block(W1.shape[0])
    _, cache = block.forward(Z, _mlp_block_params(theta, h, W1, b1, W2, b2))
    g = block.backward(Z_bar, cache)
    return (g.Z, *(g.params[k] for k in ("theta", "h", "W1", "b1", "W2", "b2")))


def make_mlp_network_inputs(rng, n=12, d=2, k=5, m=4):
    """Random (X (n, d), y (n,), theta (m, d), h (0-d), W1, b1, W2, b2) for a network of MLP-oracle blocks."""
    X, W1, b1, W2, b2 = make_mlp_inputs(rng, n, d, k, m)
    return X, rng.integers(0, m, size=n), 0.5 * rng.standard_normal((m, d)), np.array(0.4), W1, b1, W2, b2


def reference_mlp_network(X, y, theta, h, W1, b1, W2, b2, L=2):
    """Gradients (theta_bar, h_bar, W1_bar, b1_bar, W2_bar, b2_bar) of the mean cross-entropy of Z_L theta^T
    after L tied MLP-oracle blocks (reference_mlp_block), from the package's block."""
    block, params = _mlp_block(W1.shape[0]), _mlp_block_params(theta, h, W1, b1, W2, b2)
    Z, caches = X, []
    for _ in range(L):
        Z, cache = block.forward(Z, params)
        caches.append(cache)
    G = (ops.softmax(Z @ theta.T) - np.eye(theta.shape[0], dtype=X.dtype)[y]) / X.shape[0]
    grads = {"theta": G.T @ Z}
    Z_bar = G @ theta
    for cache in reversed(caches):
        g = block.backward(Z_bar, cache)
        Z_bar = g.Z
        for name, value in g.params.items():
            grads[name] = grads.get(name, 0.0) + value
    return tuple(np.asarray(grads[name], dtype=X.dtype) for name in ("theta", "h", "W1", "b1", "W2", "b2"))


def _gelu_parts(x):
    t = np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))
    return t, 0.5 * x * (1.0 + t)


def _oracle_variant(Z, W1, b1, W2, b2, act_grad=True, softmax_vjp=True, C_bar=None):
    """The oracle (C_bar None) or its VJP with one piece left out (mistakes of the exercise)."""
    A = Z @ W1.T + b1
    H = _gelu_parts(A)[1]
    C = ops.softmax(H @ W2.T + b2)
    if C_bar is None:
        return C
    Y_bar = ops.softmax_vjp(C, C_bar) if softmax_vjp else C_bar
    A_bar = Y_bar @ W2
    if act_grad:
        from flowattn_np.equations.mlp import gelu_grad

        A_bar = A_bar * gelu_grad(A)
    return A_bar @ W1, A_bar.T @ Z, A_bar.sum(axis=0), Y_bar.T @ H, Y_bar.sum(axis=0)


def _block_variant(Z_bar, Z, theta, h, W1, b1, W2, b2, oracle_path=True, attention_vjp=True, oracle_at_Z=False):
    """The VJP of the MLP-oracle block written out, with one path left out (mistakes of the exercise)."""
    P = ops.softmax(Z @ theta.T)
    Z_half = Z - h * (P @ theta)
    C = _oracle_variant(Z if oracle_at_Z else Z_half, W1, b1, W2, b2)
    Zh_bar, W1_bar, b1_bar, W2_bar, b2_bar = _oracle_variant(Z if oracle_at_Z else Z_half, W1, b1, W2, b2,
                                                             C_bar=h * (Z_bar @ theta.T))
    U = Z_bar + (Zh_bar if oracle_path else 0.0)
    S_bar = ops.softmax_vjp(P, -h * (U @ theta.T))
    Z_in = U + (S_bar @ theta if attention_vjp else 0.0)
    theta_bar = h * (C.T @ Z_bar) - h * (P.T @ U) + (S_bar.T @ Z if attention_vjp else 0.0)
    h_bar = (Z_bar * (C @ theta)).sum() - (U * (P @ theta)).sum()
    return Z_in, theta_bar, np.asarray(h_bar, dtype=Z.dtype), W1_bar, b1_bar, W2_bar, b2_bar


A5_BLOCKS = ("softmax", "logsumexp", "softmax_vjp", "cross_attention")
"""The package functions an a5 student may call (the package's MLP, GELU and blocks are the reference)."""


def _mlp_block_terms(Z, theta, h, W1, b1, W2, b2):
    P = ops.softmax(Z @ theta.T)
    Z_half = Z - h * (P @ theta)
    return [Term("Z", 1.0, Z),  # the residual connections
            Term("h CA(Z, theta)", -1.0, h * (P @ theta), {COLUMNS: h * (_softmax_cols(Z @ theta.T) @ theta)},
                 step=True),
            Term("h C_hat(Z_half) theta", 1.0, h * (_oracle_variant(Z_half, W1, b1, W2, b2) @ theta), step=True)]


def _mlp_block_vjp_terms(Z_bar, Z, theta, h, W1, b1, W2, b2):
    P = ops.softmax(Z @ theta.T)
    Z_half = Z - h * (P @ theta)
    C = _oracle_variant(Z_half, W1, b1, W2, b2)
    oracle = _oracle_variant(Z_half, W1, b1, W2, b2, C_bar=h * (Z_bar @ theta.T))
    U = Z_bar + oracle[0]
    S_bar = ops.softmax_vjp(P, -h * (U @ theta.T))
    own = [[Term(f"the oracle's {name}", 1.0, g)] for name, g in zip(("W1_bar", "b1_bar", "W2_bar", "b2_bar"),
                                                                      oracle[1:])]
    return ([Term("Z_bar", 1.0, Z_bar), Term("the oracle's Z_bar", 1.0, oracle[0]), Term("S_bar theta", 1.0, S_bar @ theta)],
            [Term("h C_hat^T Z_bar", 1.0, h * (C.T @ Z_bar), step=True),
             Term("h P^T U", -1.0, h * (P.T @ U), step=True), Term("S_bar^T Z", 1.0, S_bar.T @ Z)],
            [Term("<Z_bar, C_hat theta>", 1.0, (Z_bar * (C @ theta)).sum()),
             Term("<U, CA(Z, theta)>", -1.0, (U * (P @ theta)).sum())], *own)


EXERCISES["gelu"] = Exercise("gelu", "gelu(x) = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)", (
    Mistake("ReLU instead of GELU", "you compute max(x, 0): the oracle's activation is the tanh form of GELU, "
            "x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).", make=lambda x: np.maximum(x, 0.0)),
), reference=gelu, inputs=make_activation_inputs, arguments=("x",))
EXERCISES["gelu_grad"] = Exercise(
    # a5 asks the student to derive gelu': the title gives the function, not its derivative
    "gelu_grad", "the derivative gelu'(x) of gelu(x) = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)", (
        Mistake("missing the derivative of tanh's argument", "the chain rule through u = sqrt(2/pi) (x + "
                "0.044715 x^3) is missing its factor du/dx: tanh(u) is a function of u, and u of x.",
                make=lambda x: (lambda t: 0.5 * (1 + t) + 0.5 * x * (1 - t * t))(_gelu_parts(x)[0])),
        Mistake("product rule half missing", "gelu(x) = x/2 (1 + tanh(u)) is a product: by the product rule its "
                "derivative has a term from the derivative of x/2 AND one from the derivative of the tanh; you "
                "have only the second.",
                make=lambda x: (lambda t: 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x))(
                    _gelu_parts(x)[0])),
    ), reference=gelu_grad, inputs=make_activation_inputs, arguments=("x",))
EXERCISES["mlp_oracle"] = Exercise(
    "oracle_forward", "C_hat(Z) = sigma(gelu(Z W1^T + b1) W2^T + b2), one softmax per row", (
        Mistake(WRONG_AXIS, WRONG_AXIS_MSG + " Each row of C_hat is one example's distribution over the m classes.",
                make=lambda Z, W1, b1, W2, b2: _softmax_cols(_gelu_parts(Z @ W1.T + b1)[1] @ W2.T + b2)),
        Mistake("missing softmax", "you return the oracle's logits gelu(Z W1^T + b1) W2^T + b2: the targets are "
                "their softmax, a distribution over the classes (rows summing to 1).",
                make=lambda Z, W1, b1, W2, b2: _gelu_parts(Z @ W1.T + b1)[1] @ W2.T + b2),
        Mistake("missing bias", "a bias is missing: the pre-activation is Z W1^T + b1 and the logits "
                "gelu(A) W2^T + b2.", make=lambda Z, W1, b1, W2, b2: _oracle_variant(Z, W1, 0.0 * b1, W2, b2)),
    ), allowed=A5_BLOCKS, reference=reference_mlp_oracle, inputs=make_mlp_inputs, arguments=("Z", "W1", "b1", "W2", "b2"))
EXERCISES["mlp_oracle_vjp"] = Exercise(
    "oracle_backward", "VJP of C_hat = sigma(Y), Y = gelu(A) W2^T + b2, A = Z W1^T + b1", (
        Mistake("missing softmax VJP", "you pass C_bar on as Y_bar: C_hat = sigma(Y), so Y_bar = C_hat * (C_bar - "
                "rowsum(C_hat * C_bar)) (fa.softmax_vjp(C_hat, C_bar)).",
                make=lambda Cb, Z, W1, b1, W2, b2: _oracle_variant(Z, W1, b1, W2, b2, softmax_vjp=False, C_bar=Cb)),
        Mistake("missing activation derivative", "A_bar = (Y_bar W2) * gelu'(A): the gradient through H = gelu(A) "
                "is multiplied entry by entry by the activation's derivative, which is missing.",
                make=lambda Cb, Z, W1, b1, W2, b2: _oracle_variant(Z, W1, b1, W2, b2, act_grad=False, C_bar=Cb)),
    ), outputs=("Z_bar", "W1_bar", "b1_bar", "W2_bar", "b2_bar"), allowed=A5_BLOCKS,
    reference=reference_mlp_oracle_vjp, inputs=make_mlp_vjp_inputs, arguments=("C_bar", "Z", "W1", "b1", "W2", "b2"))
EXERCISES["mlp_block"] = Exercise(
    "block_forward", "Lie block: Z_half = Z - h CA(Z, theta), Z_out = Z_half + h C_hat(Z_half) theta", (
        Mistake("oracle evaluated at Z", "the MLP oracle must see the output of the attention sub-step: "
                "C_hat(Z_half), not C_hat(Z) (B starts where A ended).",
                make=lambda Z, th, h, W1, b1, W2, b2: Z - h * attention.cross_attention(Z, th)
                + h * _oracle_variant(Z, W1, b1, W2, b2) @ th),
        Mistake("sign of the attention term flipped", "the attention sub-step SUBTRACTS: Z_half = Z - h CA(Z, "
                "theta) (a descent step); you add it.",
                make=lambda Z, th, h, W1, b1, W2, b2: (lambda Zh: Zh + h * _oracle_variant(Zh, W1, b1, W2, b2) @ th)(
                    Z + h * attention.cross_attention(Z, th))),
        Mistake("missing residual", "a residual connection is missing: each sub-step adds its update to its "
                "input (Z_half = Z - ..., Z_out = Z_half + ...).",
                make=lambda Z, th, h, W1, b1, W2, b2: (lambda Zh: h * _oracle_variant(Zh, W1, b1, W2, b2) @ th)(
                    Z - h * attention.cross_attention(Z, th))),
    ), allowed=A5_BLOCKS, terms=_mlp_block_terms, logits=_linear_logits, reference=reference_mlp_block,
    inputs=make_mlp_block_inputs, arguments=("Z", "theta", "h", "W1", "b1", "W2", "b2"))
EXERCISES["mlp_block_vjp"] = Exercise(
    "block_backward", "VJP of the Lie block Z_out = Z_half + h C_hat(Z_half) theta, Z_half = Z - h CA(Z, theta)", (
        Mistake("oracle held constant", "C_hat depends on Z_half: the gradient reaching Z_half is Z_bar PLUS the "
                "oracle's Z_bar for C_bar = h Z_bar theta^T; you treat C_hat as fixed labels.",
                make=lambda *a: _block_variant(*a, oracle_path=False)),
        Mistake("missing attention softmax VJP", "P = sigma(Z theta^T) depends on Z and theta: Z_bar_in and "
                "theta_bar need the softmax VJP S_bar of P_bar = -h U theta^T (U the gradient at Z_half).",
                make=lambda *a: _block_variant(*a, attention_vjp=False)),
    ), outputs=MLP_BLOCK_OUTPUTS, allowed=A5_BLOCKS, terms=_mlp_block_vjp_terms, reference=reference_mlp_block_vjp,
    inputs=make_mlp_block_vjp_inputs, arguments=("Z_bar", "Z", "theta", "h", "W1", "b1", "W2", "b2"))
EXERCISES["mlp_network"] = Exercise(
    "network_loss_and_grads", "mean cross-entropy of Z_L theta^T after L tied Lie blocks with the MLP oracle",
    outputs=("theta_bar", "h_bar", "W1_bar", "b1_bar", "W2_bar", "b2_bar"), allowed=A5_BLOCKS,
    reference=reference_mlp_network, inputs=make_mlp_network_inputs, arguments=("X", "y", "theta", "h", "W1", "b1", "W2", "b2"))
