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

from dataclasses import dataclass

from .backend import get_array_module, to_float


def numerical_gradient(f, x, eps=1e-6):
    """Gradient of the scalar function f at x by central differences.

    g_i = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), one entry at a time (2 x.size
    calls of f). x is not modified. Returns an array of x's shape.
    """
    xp = get_array_module(x)
    x = x.copy()
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
    """Outcome of a gradient check.

    rel_error = ||g - g_fd|| / max(||g||, ||g_fd||, floor), with the 2-norm over all entries.
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
    """Compare an analytic gradient ``grad`` of the scalar function ``f`` at ``x``
    with central finite differences; returns a GradcheckResult (``.passed``).

    ``grad`` is an array of x's shape, or a callable ``grad(x)``.
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
    """Check a vector-Jacobian product: ``vjp`` should equal grad_x <out_bar, fun(x)>.

    fun maps an array to an array; out_bar has fun(x)'s shape. Returns a GradcheckResult.
    """
    return gradcheck(lambda y: (out_bar * fun(y)).sum(), x, vjp, eps=eps, rtol=rtol)
