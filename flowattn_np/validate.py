"""Input checks at the public boundary.

Each check raises a ValueError (TypeError for a non-array) whose message names the
argument and says what was expected. The public equation functions call these once;
the inner functions they hand over to trust their inputs (the training step calls only
those).

Cost: shapes, dtypes and backends are checked from metadata (free). The checks of
values (finite entries, label rows that are distributions, a symmetric theta) are
reduced on the arrays' device and read back together: ONE device-to-host read per
public call on CuPy (a sync), one pass over the data on NumPy. Only when a check fails
are more values read, to say how many entries are wrong.
"""

from __future__ import annotations

from flowattn_np.backend import check_same_backend, get_array_module, quiet_errors, to_numpy


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "ndim")


def _shape_str(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_array(name, a, ndim=None, min_ndim=None, finite=True):
    """A floating array of ``ndim`` dimensions (with finite entries); returns it.

    ``finite=False`` checks only type and shape (no values read), for callers that
    check the values of several arrays together with ``ValueChecks``.
    """
    if not _is_array(a):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(
            f"{name}: expected a floating-point array (float32 or float64), got dtype {a.dtype}"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {_shape_str(a.shape)}")
    if min_ndim is not None and a.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimensions, got shape {_shape_str(a.shape)}"
        )
    if finite:
        ValueChecks().finite(name, a).run()
    return a


class ValueChecks:
    """Checks of array values, reduced on the device and read back in one transfer.

    Each check adds a 0-d device value and a host test of it; ``run()`` stacks the
    values, reads them once and raises the first failure (computing its details, which
    may read more, only then).
    """

    def __init__(self):
        self._items = []

    def add(self, value, fails, message):
        """``fails(v)`` (host float) says whether the check fails; ``message(v)`` words it."""
        self._items.append((value, fails, message))
        return self

    def finite(self, name, a):
        """Every entry of ``a`` is finite (None is skipped)."""
        if a is not None and a.size:
            xp = get_array_module(a)

            def message(_):
                bad = int((~xp.isfinite(a)).sum())
                return f"{name}: expected finite values, found {bad} NaN or inf entries"

            self.add(xp.isfinite(a).all(), lambda v: v == 0, message)
        return self

    def run(self):
        """Read all values at once; raise ValueError for the first failed check."""
        if not self._items:
            return
        xp = get_array_module(self._items[0][0])
        values = to_numpy(xp.stack([xp.asarray(v).astype("float64") for v, _, _ in self._items]))
        for v, (_, fails, message) in zip(values.tolist(), self._items):
            if fails(v):
                raise ValueError(message(v))


def check_shape(name, a, expected, meaning):
    """``a.shape == expected``; ``meaning`` explains the expected shape in words."""
    if tuple(a.shape) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape {_shape_str(expected)} ({meaning}), "
            f"got {_shape_str(a.shape)}"
        )


def check_same_dtype(**named):
    """Raise a TypeError naming each array's dtype when the named arrays (None ignored) mix dtypes."""
    dtypes = {n: a.dtype for n, a in named.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        parts = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"expected arrays of one floating dtype, got {parts}; cast them first")


def _label_tol(dtype):
    return 1e-4 if dtype.itemsize <= 4 else 1e-8


def check_labels(name, C, heads=None, checks=None):
    r"""Rows of $C$ are probability distributions, $C\ge0$ and $C\mathbf 1=\mathbf 1$ (per head), up to round-off.
    """
    xp = get_array_module(C)
    run = checks is None
    checks = ValueChecks() if run else checks
    if C.size:
        checks.add((C < 0).any(), lambda v: v != 0, lambda v: (
            f"{name}: label rows must be probability distributions; "
            f"found {int((C < 0).sum())} negative entries"))
    tol = _label_tol(C.dtype)
    start = 0
    for h, size in enumerate(heads if heads is not None else (C.shape[-1],)):
        s = C[..., start:start + size].sum(axis=-1)
        start += size
        if s.size:
            where = f" of head {h}" if heads is not None else ""
            checks.add(xp.abs(s - 1).max(), lambda v: v > tol, lambda v, where=where: (
                f"{name}: label rows{where} must sum to 1; the worst row is off by "
                f"{v:.3g} (tolerance {tol:g})"))
    if run:
        checks.run()
    return C


def check_symmetric(name, theta, checks=None):
    r"""$\theta=\theta^\top$ up to round-off (the quadratic model's parameter)."""
    if not theta.size:
        return
    xp = get_array_module(theta)
    relative = 1e-5 if theta.dtype.itemsize <= 4 else 1e-12
    # err - tol * max(scale, 1) > 0 fails: one value to read instead of two (inf entries
    # give nan here, silently: the finite check queued before this one reports them)
    with quiet_errors(xp):
        excess = xp.abs(theta - theta.T).max() - relative * xp.maximum(xp.abs(theta).max(), 1.0)
    run = checks is None
    checks = ValueChecks() if run else checks
    checks.add(excess, lambda v: v > 0, lambda v: (
        f"{name}: the quadratic model needs a symmetric theta (theta = phi phi^T); "
        f"max |theta - theta^T| = {float(xp.abs(theta - theta.T).max()):.3g}. "
        "Pass phi and use theta_from_phi(phi)."))
    if run:
        checks.run()


def check_heads(name, heads, m):
    """The head sizes as a tuple of ints, or None; a clear error naming ``name`` unless they are positive whole numbers summing to ``m``.
    """
    if heads is None:
        return None
    try:
        sizes = tuple(heads)
        if not all(float(s) == int(s) for s in sizes):
            raise ValueError
        heads = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: expected a tuple of positive whole numbers (classes per head), got {heads!r}"
        ) from None
    if any(s < 1 for s in heads) or sum(heads) != m:
        raise ValueError(
            f"{name}: expected positive head sizes summing to the number of classes {m}, "
            f"got {heads}"
        )
    return heads


def check_step(name, h):
    """A finite real step size; returned as a Python float.

    (A NumPy float64 scalar would turn float32 features into float64 under NumPy 2's
    promotion rules; a Python float keeps the arrays' dtype.)
    """
    try:
        value = float(h)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(h).__name__}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite step size, got {value}")
    return value


def check_count(name, value, minimum=0):
    """A whole number >= ``minimum`` (an int or NumPy integer, not 2.7 or "3"); returned as int.

    Like NumPy's own sizes, a float is refused even when whole: a count is never measured.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name}: expected a whole number (int), got {value!r}")
    value = int(value.__index__())
    if value < minimum:
        raise ValueError(f"{name}: expected a whole number >= {minimum}, got {value}")
    return value


def check_class_indices(name, y, m, ndim=None):
    """Integer labels with every entry in [0, m) (a pass over y: validate once, not per step)."""
    if not _is_array(y):
        raise TypeError(f"{name}: expected an integer NumPy or CuPy array, got {type(y).__name__}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of class indices, "
                         f"got shape {_shape_str(y.shape)}")
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= m:
            bad = low if low < 0 else high
            raise ValueError(f"{name}: expected class indices in [0, {m}), found {bad}")
    return y


def linear_inputs(Z, theta, C=None, heads=None):
    r"""Validate $(Z,\theta,C)$ of the linear model $N=Z\theta^\top$; returns ``heads``.

    ``Z=None`` checks $\theta$ and $C$ alone (a vector field built once, before $Z$ is known).
    """
    check_same_backend(Z=Z, theta=theta, C=C)
    check_array("theta", theta, ndim=2, finite=False)
    m = theta.shape[0]
    if Z is not None:
        check_array("Z", Z, ndim=2, finite=False)
        check_shape("theta", theta, (m, Z.shape[1]), "m classes x d features, d from Z")
    check_same_dtype(Z=Z, theta=theta)
    heads = check_heads("heads", heads, m)
    checks = ValueChecks().finite("Z", Z).finite("theta", theta)
    if C is not None:
        check_array("C", C, ndim=2, finite=False)
        n = C.shape[0] if Z is None else Z.shape[0]
        check_shape("C", C, (n, m), "n rows of Z x m classes of theta")
        check_same_dtype(**({"theta": theta} if Z is None else {"Z": Z}), C=C)
        check_labels("C", C, heads, checks.finite("C", C))
    checks.run()
    return heads


def quadratic_inputs(Z, theta, C=None, symmetric=True):
    r"""Validate $(Z,\theta,C)$ of the quadratic model $N=Z\theta Z^\top$.

    $Z$ may carry leading batch axes, (..., n, d); $C$ is then (..., n, n). ``Z=None`` checks
    $\theta$ and $C$ alone (a vector field built once, before $Z$ is known).
    """
    check_same_backend(Z=Z, theta=theta, C=C)
    check_array("theta", theta, ndim=2, finite=False)
    if Z is not None:
        check_array("Z", Z, min_ndim=2, finite=False)
        check_shape("theta", theta, (Z.shape[-1],) * 2, "d x d, d from the last axis of Z")
    else:
        check_shape("theta", theta, (theta.shape[0],) * 2, "d x d")
    check_same_dtype(Z=Z, theta=theta)
    checks = ValueChecks().finite("Z", Z).finite("theta", theta)
    if symmetric:
        check_symmetric("theta", theta, checks)
    if C is not None:
        check_array("C", C, min_ndim=2, finite=False)
        lead = C.shape[:-1] if Z is None else Z.shape[:-1]
        check_shape("C", C, tuple(lead) + (lead[-1],), "n x n targets for each sequence in Z")
        check_same_dtype(**({"theta": theta} if Z is None else {"Z": Z}), C=C)
        check_labels("C", C, None, checks.finite("C", C))
    checks.run()


def quadratic_phi_inputs(Z, phi, C=None):
    r"""Validate $(Z,\phi,C)$ with $\theta=\phi\phi^\top$ and $\phi$ lower-triangular."""
    check_same_backend(Z=Z, phi=phi, C=C)
    check_array("phi", phi, ndim=2, finite=False)
    xp = get_array_module(phi)
    checks = ValueChecks().finite("phi", phi)
    if phi.shape[0] == phi.shape[1] and phi.size:
        checks.add((xp.triu(phi, 1) != 0).any(), lambda v: v != 0, lambda v: (
            "phi: expected a lower-triangular (Cholesky) factor; its strictly upper "
            "triangle has nonzero entries (use numpy.tril(phi))"))
    checks.run()
    d = Z.shape[-1] if _is_array(Z) else phi.shape[0]
    check_shape("phi", phi, (d, d), "d x d lower-triangular factor, d from the last axis of Z")
    # phi has theta's shape and dtype: checking it in theta's place checks Z and C
    quadratic_inputs(Z, phi, C, symmetric=False)


__all__ = [
    "check_array", "check_shape", "check_labels", "check_symmetric", "check_step",
    "check_heads", "check_same_dtype", "check_count", "check_class_indices", "linear_inputs",
    "quadratic_inputs", "quadratic_phi_inputs", "ValueChecks",
]
