"""Central finite differences, to check any hand-derived gradient.

    >>> import numpy as np, flowattn_np as fa
    >>> rng = np.random.default_rng(0)
    >>> Z, theta = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    >>> C = fa.one_hot(np.array([0, 1, 2, 3]), 5)
    >>> r = fa.gradcheck(lambda Z: fa.linear_loss(Z, theta, C), Z, fa.linear_grad_Z(Z, theta, C))
    >>> r.passed
    True

Use float64: in float32 the differences are dominated by round-off.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from flowattn_np.backend import get_array_module, to_float


def numerical_gradient(f, x, eps=1e-6):
    r"""Gradient of the scalar function $f$ at $x$ by central differences.

    $$
    g_i=\frac{f(x+\varepsilon e_i)-f(x-\varepsilon e_i)}{2\varepsilon}
    $$

    One entry at a time ($2\,\text{x.size}$ calls of $f$); ``x`` is not modified. An
    integer ``x`` is differentiated as float64 (a step of ``eps`` would round to 0).

    Parameters
    ----------
    f : callable
        Scalar function of an array.
    x : array
        Where to differentiate.
    eps : float
        Step $\varepsilon$.

    Returns
    -------
    array
        $g$, of the shape of ``x``.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < float("inf"):
        raise ValueError(f"eps: expected a positive finite step, got {eps!r}")
    xp = get_array_module(x)
    x = x.astype(xp.float64) if x.dtype.kind not in "fc" else x.copy()
    g = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i].copy()
        flat[i] = old + eps
        fp = to_float(f(x))
        flat[i] = old - eps
        fm = to_float(f(x))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


@dataclass(frozen=True)
class GradcheckResult:
    r"""Outcome of a gradient check, with ``.passed``.

    $$
    \text{rel\_error}=\frac{\lVert g-g_{\text{fd}}\rVert}{\max(\lVert g\rVert,\lVert g_{\text{fd}}\rVert,\text{floor})},
    $$

    the 2-norm over all entries.
    """

    passed: bool
    rel_error: float
    max_abs_error: float
    rtol: float
    numerical: object
    analytic: object

    def __str__(self):
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gradcheck {verdict}: relative error {self.rel_error:.2e} "
            f"(tolerance {self.rtol:.0e}), max abs error {self.max_abs_error:.2e}"
        )


def gradcheck(f, x, grad, eps=1e-6, rtol=1e-6, floor=1e-12):
    """Compare an analytic gradient of a scalar function with central finite differences.

    Parameters
    ----------
    f : callable
        Scalar function of an array.
    x : array
        Where to check.
    grad : array or callable
        The analytic gradient at ``x`` (of x's shape), or ``grad(x)``.
    eps : float
        Finite-difference step.
    rtol : float
        Largest relative error that passes.
    floor : float
        Smallest norm in the denominator of the relative error.

    Returns
    -------
    GradcheckResult
    """
    xp = get_array_module(x)
    if callable(grad):
        grad = grad(x)
    if tuple(grad.shape) != tuple(x.shape):
        raise ValueError(
            f"grad: expected the shape of x {tuple(x.shape)}, got {tuple(grad.shape)}"
        )
    num = numerical_gradient(f, x, eps)
    diff = to_float(xp.linalg.norm((grad - num).ravel()))
    scale = max(to_float(xp.linalg.norm(grad.ravel())), to_float(xp.linalg.norm(num.ravel())), floor)
    rel = diff / scale
    max_abs = to_float(xp.abs(grad - num).max()) if x.size else 0.0
    return GradcheckResult(rel <= rtol, rel, max_abs, rtol, num, grad)


def check_vjp(fun, x, out_bar, vjp, eps=1e-6, rtol=1e-6):
    r"""Check a vector-Jacobian product: ``vjp`` must equal $\nabla_x\langle\bar y, \text{fun}(x)\rangle$.

    Parameters
    ----------
    fun : callable
        Maps an array to an array.
    x : array
        Where to check.
    out_bar : array
        $\bar y$, of the shape of ``fun(x)``.
    vjp : array or callable
        The VJP at ``x`` to check.
    eps : float
        Finite-difference step.
    rtol : float
        Largest relative error that passes.

    Returns
    -------
    GradcheckResult
    """
    return gradcheck(lambda y: (out_bar * fun(y)).sum(), x, vjp, eps=eps, rtol=rtol)
