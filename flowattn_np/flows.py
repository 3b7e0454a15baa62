"""Gradient flows of the point-wise cross-entropy, their splitting, and the integrators.

Linear model (eq. 6):    dZ/dt = C theta - CA(Z, theta)
    A (attention):       dZ/dt = -CA(Z, theta)         (nonlinear: explicit one-step method)
    B (label forcing):   dZ/dt = C theta               (exact: Z + t C theta)
Quadratic model:         dZ/dt = (C + C^T) Z theta - SA(Z, theta) - SA*(Z, theta)
    A:                   dZ/dt = -(SA + SA*)(Z)
    B:                   dZ/dt = M Z theta, M = C + C^T (exact in the eigenbases of M, theta)

Splittings of one step of size h: Lie-Trotter ``B(h) o A(h)`` (first order) and
Strang ``A(h/2) o B(h) o A(h/2)`` (second order with sub-flows of order >= 2).

Integrators are explicit Runge-Kutta methods given by their Butcher tableau, each
declaring its order; ``rk_forward``/``rk_backward`` step and differentiate any of
them, which is how the blocks in ``layers`` get their backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from . import validate
from .attention import cross_attention_forward, self_attention_sum_forward
from .backend import get_array_module
from .ops import matmul_rows, swap_last

# ---------------------------------------------------------------- vector fields
#
# ``linear_field`` / ``quadratic_field`` check theta and C once and return the vector
# field as a plain function of Z that trusts its input: the form to hand to
# ``integrate`` or ``rk_step``, which call it thousands of times. ``linear_flow`` and
# friends check everything on every call: the form for a single evaluation.


def _linear_rhs(theta, C, heads):
    """Unchecked Z -> C theta - CA(Z, theta), or Z -> -CA(Z, theta) when C is None."""
    if C is None:
        return lambda Z: -cross_attention_forward(Z, theta, heads)[0]
    C_theta = C @ theta
    return lambda Z: C_theta - cross_attention_forward(Z, theta, heads)[0]


def linear_field(theta, C=None, heads=None):
    """The vector field of eq. (6), checked once: f(Z) = C theta - CA(Z, theta).

    With C None, the attention part alone: f(Z) = -CA(Z, theta). theta: m x d,
    C: n x m. Returns the function f, which trusts its argument Z (n x d).
    """
    heads = validate.linear_inputs(None, theta, C, heads)
    return _linear_rhs(theta, C, heads)


def linear_flow(Z, theta, C, heads=None):
    """Right-hand side of the gradient flow (eq. 6): C theta - CA(Z, theta). Returns n x d."""
    heads = validate.linear_inputs(Z, theta, C, heads)
    return _linear_rhs(theta, C, heads)(Z)


def linear_flow_A(Z, theta, heads=None):
    """Attention part of eq. (6): -CA(Z, theta) = -sigma(Z theta^T) theta. Returns n x d."""
    heads = validate.linear_inputs(Z, theta, None, heads)
    return _linear_rhs(theta, None, heads)(Z)


def linear_flow_B(Z, theta, C, heads=None):
    """Label part of eq. (6): C theta (constant in Z). Returns n x d.

    ``heads``: C holds one distribution per head in each row (multi-head labels).
    """
    validate.linear_inputs(Z, theta, C, heads)
    return C @ theta


def linear_B_exact(Z, theta, C, t, heads=None):
    """Exact solution of dZ/dt = C theta after time t: Z + t C theta (second line of eq. 8).

    ``heads``: C holds one distribution per head in each row (multi-head labels).
    """
    validate.linear_inputs(Z, theta, C, heads)
    t = validate.check_step("t", t)
    return Z + t * (C @ theta)


def _quadratic_rhs(theta, C):
    """Unchecked Z -> M Z theta - (SA + SA*)(Z), M = C + C^T, or -(SA + SA*)(Z) when C is None."""
    if C is None:
        return lambda Z: -self_attention_sum_forward(Z, theta)[0]
    M = C + swap_last(C)
    return lambda Z: M @ Z @ theta - self_attention_sum_forward(Z, theta)[0]


def quadratic_field(theta, C=None):
    """The quadratic model's gradient flow, checked once: f(Z) = M Z theta - SA - SA*.

    M = C + C^T; with C None, the attention part alone: f(Z) = -(SA + SA*)(Z, theta).
    theta: d x d symmetric, C: (..., n, n). Returns f, which trusts Z ((..., n, d)).
    """
    validate.quadratic_inputs(None, theta, C)
    return _quadratic_rhs(theta, C)


def quadratic_flow(Z, theta, C):
    """Gradient flow of the quadratic model: (C + C^T) Z theta - SA - SA*. Returns (..., n, d)."""
    validate.quadratic_inputs(Z, theta, C)
    return _quadratic_rhs(theta, C)(Z)


def quadratic_flow_A(Z, theta):
    """Attention part of the quadratic flow: -(SA + SA*)(Z, theta). Returns (..., n, d)."""
    validate.quadratic_inputs(Z, theta)
    return _quadratic_rhs(theta, None)(Z)


def quadratic_flow_B(Z, theta, C):
    """Label part of the quadratic flow: M Z theta with M = C + C^T. Returns (..., n, d)."""
    validate.quadratic_inputs(Z, theta, C)
    return (C + swap_last(C)) @ Z @ theta


class QuadraticBCache(NamedTuple):
    """What quadratic_B_exact_vjp needs: the eigenbases M = U diag(lam) U^T and
    theta = V diag(mu) V^T, Zt = U^T Z V, E = exp(t lam mu^T), and the time t."""

    U: Any
    lam: Any
    V: Any
    mu: Any
    Zt: Any
    E: Any
    t: Any


def quadratic_B_exact(Z, theta, C, t):
    """Exact solution of the quadratic B sub-flow dZ/dt = M Z theta, M = C + C^T, after time t.

    (The second line of eq. (10) is one Euler step of this sub-flow: Z + t M Z theta.)

    With M = U diag(lam) U^T and theta = V diag(mu) V^T (eigh),
        Z(t) = U [exp(t lam mu^T) * (U^T Z V)] V^T        (* element-wise).
    This is NOT expm(tM) Z expm(t theta), which solves dZ/dt = M Z + Z theta.
    """
    validate.quadratic_inputs(Z, theta, C)
    t = validate.check_step("t", t)
    return quadratic_B_exact_forward(Z, theta, C + swap_last(C), t)[0]


def quadratic_B_exact_forward(Z, theta, M, t, theta_eigh=None):
    """The exact quadratic B sub-flow for a given M = C + C^T, without input checks.

    ``theta_eigh``: (mu, V) = eigh(theta) when the caller has it (tied weights: once per
    pass for every block). Trusts its inputs. Returns (Z(t), QuadraticBCache) for
    quadratic_B_exact_vjp.
    """
    xp = get_array_module(Z)
    lam, U = xp.linalg.eigh(M)
    mu, V = xp.linalg.eigh(theta) if theta_eigh is None else theta_eigh
    Zt = matmul_rows(swap_last(U) @ Z, V)  # V is shared by every sequence: one product
    E = xp.exp(t * lam[..., :, None] * mu)
    return matmul_rows(U @ (E * Zt), V.T), QuadraticBCache(U, lam, V, mu, Zt, E, t)


def divided_difference_products(A, B, E, c, x):
    """K_ab = sum_r A_ra B_rb D_rab with the divided differences of exp,

        D_rab = (E_ra - E_rb) / (x_a - x_b),  E_ra = exp(c_r x_a),  D_raa = c_r E_ra,

    as matrix products (the Daleckii-Krein sums of the exact B flow's VJP).
    Pairs far apart: ((A * E)^T B - A^T (B * E)) / (x_a - x_b). Near pairs
    (max_r |c_r| |x_a - x_b| <= tol; tol = 3e-3 in float64, 0.1 in float32), where that
    difference cancels: with S = sqrt(E) and the midpoint expansion
    D_rab = c_r S_ra S_rb (1 + (c_r (x_a - x_b))^2 / 24 + O(tol^4)),
        K_ab = [(A S c)^T (B S)]_ab + (x_a - x_b)^2 / 24 [(A S c^3)^T (B S)]_ab.
    Both errors are below 1e-13 (float64) or 1e-6 (float32) of the scale.
    A, B, E: (..., R, k); c: (..., R); x: (..., k). Returns (..., k, k).
    """
    xp = get_array_module(A)
    tol = 3e-3 if A.dtype.itemsize == 8 else 0.1
    dx = x[..., :, None] - x[..., None, :]
    near = xp.abs(dx) * xp.abs(c).max(axis=-1, keepdims=True)[..., None] <= tol
    far = swap_last(A * E) @ B
    far -= swap_last(A) @ (B * E)
    far /= xp.where(near, 1.0, dx)
    S = xp.sqrt(E)
    AS, BS = A * S * c[..., None], B * S
    mid = swap_last(AS) @ BS
    mid += (dx * dx / 24) * (swap_last(AS * (c * c)[..., None]) @ BS)
    return xp.where(near, mid, far)


def quadratic_B_exact_vjp(Z_bar, cache):
    """VJP of the exact quadratic B sub-flow Z(t) = exp(t theta (x) M) Z.

    With Y = U^T Z_bar V, Zt = U^T Z V and the divided differences of exp
    (Daleckii-Krein), for dZ/dt = M Z theta:
        Z_in_bar  = U (E * Y) V^T
        theta_bar = V G^T V^T,  G_ab = sum_i Y_ia Zt_ib D_iab,
                    D_iab = (e^{t lam_i mu_a} - e^{t lam_i mu_b}) / (mu_a - mu_b)
        M_bar     = U H U^T,    H_ij = sum_a Y_ia Zt_ja D'_aij,
                    D'_aij = (e^{t lam_i mu_a} - e^{t lam_j mu_a}) / (lam_i - lam_j)
        t_bar     = sum(Y * E * Zt * lam mu^T)
    At equal eigenvalues the divided differences take their limits (t lam_i e^{t lam_i
    mu_a}, t mu_a e^{t lam_i mu_a}); G and H are matrix products
    (divided_difference_products), accurate for equal and nearly equal eigenvalues.
    Trusts its inputs (the cache of quadratic_B_exact_forward).
    Returns (Z_bar_in, theta_bar, M_bar, t_bar).
    """
    U, lam, V, mu, Zt, E, t = cache
    d = mu.shape[0]
    Y = matmul_rows(swap_last(U) @ Z_bar, V)
    Z_in_bar = matmul_rows(U @ (E * Y), V.T)
    YEZ = Y * E * Zt
    t_bar = ((YEZ * lam[..., :, None]) * mu).sum()
    G = divided_difference_products(Y.reshape(-1, d), Zt.reshape(-1, d), E.reshape(-1, d),
                                    (t * lam).reshape(-1), mu)
    theta_bar = V @ G.T @ V.T
    H = divided_difference_products(swap_last(Y), swap_last(Zt), swap_last(E), t * mu, lam)
    M_bar = U @ H @ swap_last(U)
    return Z_in_bar, theta_bar, M_bar, t_bar


# ---------------------------------------------------------------- integrators


@dataclass(frozen=True)
class Integrator:
    """An explicit Runge-Kutta method: Butcher tableau (a, b) and its declared order.

    Y_i = Z + h sum_{j<i} a_ij k_j,  k_i = f(Y_i),  Z_new = Z + h sum_i b_i k_i.
    """

    name: str
    order: int
    a: tuple
    b: tuple

    @property
    def stages(self):
        """Number of stages s (evaluations of f per step)."""
        return len(self.b)


EULER = Integrator("euler", 1, ((),), (1.0,))
HEUN = Integrator("heun", 2, ((), (1.0,)), (0.5, 0.5))
RK4 = Integrator(
    "rk4", 4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)
)
INTEGRATORS = {"euler": EULER, "heun": HEUN, "rk2": HEUN, "rk4": RK4}
"""The explicit Runge-Kutta methods by name: ``"euler"``, ``"heun"`` (also ``"rk2"``), ``"rk4"``."""


def get_integrator(method):
    """The Integrator named ``method`` ('euler', 'heun' (= 'rk2'), 'rk4'), or one passed in."""
    if isinstance(method, Integrator):
        return method
    try:
        return INTEGRATORS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"integrator: unknown method {method!r}; known: {', '.join(sorted(INTEGRATORS))}"
        ) from None


class RKCache(NamedTuple):
    """What rk_backward needs from one RK step: the method, the step h, the stage
    slopes k_i = f(Y_i), the field's cache of each stage, and incr = sum_i b_i k_i."""

    method: Integrator
    h: Any
    slopes: list
    field_caches: list
    incr: Any


def rk_forward(field, Z, h, method):
    """One explicit RK step of size h for dZ/dt = f(Z); ``field(Y) -> (f(Y), cache)``.

    Returns (Z_new, RKCache) where the cache holds the stages for ``rk_backward``.
    """
    rk = get_integrator(method)
    if not hasattr(h, "shape"):  # a NumPy float64 scalar would upcast float32 features
        h = float(h)
    slopes, field_caches = [], []
    for i in range(rk.stages):
        Y = Z
        for j, a in enumerate(rk.a[i]):
            if a:
                Y = Y + (h * a) * slopes[j]
        k, fc = field(Y)
        slopes.append(k)
        field_caches.append(fc)
    incr = slopes[0] * rk.b[0] if rk.b[0] != 1 else slopes[0]
    for i in range(1, rk.stages):
        incr = incr + rk.b[i] * slopes[i]
    return Z + h * incr, RKCache(rk, h, slopes, field_caches, incr)


def rk_backward(field_vjp, Z_bar, cache):
    """Reverse-mode through one RK step (an RKCache); ``field_vjp(k_bar, fcache) -> (Y_bar, grads)``.

    From Z_new = Z + h sum b_i k_i and Y_i = Z + h sum_{j<i} a_ij k_j, in reverse stage
    order: k_bar_i = h b_i Z_bar + h sum_{l>i} a_li Y_bar_l, Y_bar_i = VJP_f(k_bar_i),
    Z_bar_in = Z_bar + sum_i Y_bar_i, h_bar = <Z_bar, sum b_i k_i> + sum a_li <Y_bar_l, k_i>.
    Returns (Z_bar_in, h_bar (0-d array), grads summed over the stages).
    """
    rk, h, slopes, field_caches, incr = cache
    k_bars = [(h * b) * Z_bar for b in rk.b]
    h_bar = (Z_bar * incr).sum()
    Z_in_bar = Z_bar
    grads = {}
    for i in reversed(range(rk.stages)):
        Y_bar, g = field_vjp(k_bars[i], field_caches[i])
        for name, value in g.items():
            grads[name] = grads[name] + value if name in grads else value
        Z_in_bar = Z_in_bar + Y_bar
        for j, a in enumerate(rk.a[i]):
            if a:
                k_bars[j] = k_bars[j] + (h * a) * Y_bar
                h_bar = h_bar + a * (Y_bar * slopes[j]).sum()
    return Z_in_bar, h_bar, grads


def rk_step(f, Z, h, method="rk4"):
    """One step of size h of dZ/dt = f(Z) with an explicit method (forward only)."""
    return rk_forward(lambda Y: (f(Y), None), Z, h, method)[0]


def integrate(f, Z0, T, steps, method="rk4", return_path=False):
    """Integrate dZ/dt = f(Z) from Z0 over [0, T] with ``steps`` equal steps of ``method``.

    The step is explicit: h = T / steps (no silent default). f is called ``steps`` x
    stages times: pass a field built once by ``linear_field`` / ``quadratic_field``
    (checked once), not a function that checks its inputs on every call. Returns
    Z(T), or the list [Z0, Z1, ..., Z(T)] with ``return_path``.
    """
    if isinstance(steps, bool) or not float(steps).is_integer() or int(steps) < 1:
        raise ValueError(f"steps: expected a positive whole number of steps, got {steps!r}")
    steps = int(steps)
    h = validate.check_step("T", T) / steps
    validate.check_array("Z0", Z0, min_ndim=1)
    method = get_integrator(method)
    path = [Z0]
    Z = Z0
    for _ in range(steps):
        Z = rk_step(f, Z, h, method)
        if return_path:
            path.append(Z)
    return path if return_path else Z


def lie_step(step_A, step_B, Z, h):
    """Lie-Trotter splitting, first order: B(h) o A(h) (eq. 8). step_X(Z, t) -> Z."""
    return step_B(step_A(Z, h), h)


def strang_step(step_A, step_B, Z, h):
    """Strang splitting A(h/2) o B(h) o A(h/2); step_X(Z, t) -> Z.

    Second order when both sub-steps are at least second order (exact B and Heun or
    RK4 for A); with one Euler step for A it is first order, like Lie.
    """
    return step_A(step_B(step_A(Z, 0.5 * h), h), 0.5 * h)

