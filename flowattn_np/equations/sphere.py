"""Normalisation as a sphere constraint: the Riemannian gradient flows and their pieces.

Rows ``z`` of ``Z`` (the last axis; ``Z`` is n x d, or (..., n, d) for the quadratic
model) are held on the sphere ``|z| = r`` (RMS normalisation; ``r = sqrt(d)`` gives
every coordinate unit mean square), or on the LayerNorm manifold
``{mean(z) = 0, |z| = sqrt(d)}``.

    tangent projection      P_z v = v - (z.v / |z|^2) z
    Riemannian flow         dZ/dt = -P_Z(grad_Z l)          (stays on the sphere)
    dissipation             dl/dt = -|P_Z grad_Z l|^2 <= 0
    retraction              R(z) = r z / |z|                (the normalisation layer)

A normalised ("post-norm") block is a step of a sub-flow followed by ``R``. The flows
are split like the flat ones: A = -P_Z(attention part), B = P_Z(label part); the
linear model's B sub-flow is solved exactly (a rotation toward ``c = (C theta)_row``).

The public functions without a ``_forward`` or ``_vjp`` suffix validate their inputs;
the ``*_forward`` and ``*_vjp`` ones trust them (they are the blocks' hot path).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flowattn_np import validate
from flowattn_np.backend import get_array_module
from flowattn_np.equations.flows import (
    linear_flow,
    linear_flow_A,
    linear_flow_B,
    quadratic_flow,
    quadratic_flow_A,
    quadratic_flow_B,
)

MANIFOLDS = ("sphere", "layer")

# ---------------------------------------------------------------- checks


def check_radius(r, d):
    """The sphere's radius: ``sqrt(d)`` when r is None, else a positive finite float."""
    if r is None:
        return math.sqrt(d)
    r = validate.check_step("r", r)
    if r <= 0:
        raise ValueError(f"r: expected a positive radius, got {r}")
    return r


def check_manifold(manifold):
    """One of MANIFOLDS ('sphere', 'layer'); returns it."""
    if manifold not in MANIFOLDS:
        raise ValueError(f"manifold: expected one of {', '.join(MANIFOLDS)}, got {manifold!r}")
    return manifold


def check_nonzero_rows(name, Z, centred=False, what="retract"):
    """Rows of Z (last axis) with |z| > 0 (|z - mean z| > 0 when ``centred``)."""
    xp = get_array_module(Z)
    U = Z - Z.mean(axis=-1, keepdims=True) if centred else Z
    bad = int((xp.sqrt((U * U).sum(axis=-1)) == 0).sum()) if Z.size else 0
    if bad:
        row = "|z - mean(z)| = 0 (constant rows)" if centred else "|z| = 0"
        raise ValueError(
            f"{name}: {what} needs rows of nonzero length; found {bad} rows with {row}, "
            f"which have no direction to normalise"
        )


def _rows(name, Z, centred=False, what="retract"):
    validate.check_array(name, Z, min_ndim=1)
    check_nonzero_rows(name, Z, centred, what)
    return Z


def _pair(Z, V, what):
    validate.check_array("V", V, min_ndim=1)
    _rows("Z", Z, what=what)
    validate.check_shape("V", V, Z.shape, "one vector per row of Z")
    validate.check_same_dtype(Z=Z, V=V)


def rowdot(A, B):
    """Row-wise inner products a.b over the last axis, kept as a column: (..., 1)."""
    return (A * B).sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- tangent projections


def tangent_project(Z, V):
    """Tangent projection of the sphere, row by row: P_z v = v - (z.v / |z|^2) z.

    Z, V: (..., d), rows of Z nonzero. Returns (..., d), each row orthogonal to z.
    """
    _pair(Z, V, "tangent_project")
    return tangent_project_forward(Z, V)


def tangent_project_forward(Z, V):
    """P_Z V without input checks (trusts nonzero rows)."""
    return V - (rowdot(Z, V) / rowdot(Z, Z)) * Z


def tangent_project_vjp(Z, V, Y_bar):
    """VJP of Y = P_Z V = V - a z, a = z.v / |z|^2, for upstream Y_bar (trusts its inputs).

        V_bar = P_z y_bar,   Z_bar = -a y_bar - b v + 2 a b z,   b = z.y_bar / |z|^2

    Returns (Z_bar, V_bar).
    """
    s = rowdot(Z, Z)
    a, b = rowdot(Z, V) / s, rowdot(Z, Y_bar) / s
    return 2 * a * b * Z - a * Y_bar - b * V, Y_bar - b * Z


def layer_tangent_project(Z, V):
    """Tangent projection of the LayerNorm manifold {mean(z) = 0, |z| = sqrt(d)}.

    With u = z - mean(z) and v_c = v - mean(v):  P_z v = v_c - (u.v / |u|^2) u, the
    projection onto the complement of span{1, u}; at a point of the manifold (u = z,
    |z|^2 = d) this is v - mean(v) - (z.v / d) z. Z, V: (..., d). Returns (..., d).
    """
    validate.check_array("V", V, min_ndim=1)
    _rows("Z", Z, centred=True, what="layer_tangent_project")
    validate.check_shape("V", V, Z.shape, "one vector per row of Z")
    validate.check_same_dtype(Z=Z, V=V)
    return layer_tangent_project_forward(Z, V)


def centre(A):
    """Rows minus their mean: a - mean(a) over the last axis (its own VJP)."""
    return A - A.mean(axis=-1, keepdims=True)


def layer_tangent_project_forward(Z, V):
    """The LayerNorm tangent projection without input checks."""
    return tangent_project_forward(centre(Z), centre(V))


def layer_tangent_project_vjp(Z, V, Y_bar):
    """VJP of the LayerNorm tangent projection: the sphere's VJP at (u, v_c), centred.

    Returns (Z_bar, V_bar) (trusts its inputs).
    """
    U_bar, Vc_bar = tangent_project_vjp(centre(Z), centre(V), Y_bar)
    return centre(U_bar), centre(Vc_bar)


def project(Z, V, manifold="sphere"):
    """Tangent projection of ``manifold`` ('sphere' or 'layer') without input checks."""
    if manifold == "layer":
        return layer_tangent_project_forward(Z, V)
    return tangent_project_forward(Z, V)


def project_vjp(Z, V, Y_bar, manifold="sphere"):
    """VJP of ``project``: (Z_bar, V_bar) (trusts its inputs)."""
    if manifold == "layer":
        return layer_tangent_project_vjp(Z, V, Y_bar)
    return tangent_project_vjp(Z, V, Y_bar)


# ---------------------------------------------------------------- retractions


def retract(Z, r=None):
    """The normalisation layer as a retraction onto the sphere: R(z) = r z / |z|.

    Z: (..., d) with nonzero rows; r defaults to sqrt(d). Returns (..., d), every row
    of length r. Zero rows raise a ValueError (they have no direction).
    """
    _rows("Z", Z)
    return retract_forward(Z, check_radius(r, Z.shape[-1]))


def retract_forward(Z, r):
    """R(Z) = r Z / |Z| row by row, without input checks (r a Python float)."""
    xp = get_array_module(Z)
    return Z * (r / xp.sqrt(rowdot(Z, Z)))


def retract_vjp(Z, Y_bar, r=None):
    """VJP of R(z) = r z / |z| at Z for upstream Y_bar (trusts its inputs):

        z_bar = (r / |z|) (y_bar - z_hat (z_hat . y_bar)),   z_hat = z / |z|

    (the tangent projection at z, scaled). Z, Y_bar: (..., d). Returns Z_bar.
    """
    xp = get_array_module(Z)
    r = math.sqrt(Z.shape[-1]) if r is None else float(r)
    s = rowdot(Z, Z)
    return (r / xp.sqrt(s)) * (Y_bar - (rowdot(Z, Y_bar) / s) * Z)


def layer_retract(Z):
    """LayerNorm without gain or bias, as a retraction onto {mean(z) = 0, |z| = sqrt(d)}:

        R(z) = sqrt(d) (z - mean z) / |z - mean z|.

    Z: (..., d); constant rows raise a ValueError. Returns (..., d).
    """
    _rows("Z", Z, centred=True, what="layer_retract")
    return layer_retract_forward(Z)


def layer_retract_forward(Z):
    """LayerNorm retraction without input checks."""
    return retract_forward(centre(Z), math.sqrt(Z.shape[-1]))


def layer_retract_vjp(Z, Y_bar):
    """VJP of the LayerNorm retraction (trusts its inputs). With u = z - mean(z):

        u_bar = (sqrt(d) / |u|) (y_bar - u_hat (u_hat . y_bar)),   z_bar = u_bar - mean(u_bar)

    At a point of the manifold this is the tangent projection v - mean(v) - (z.v / d) z.
    """
    return centre(retract_vjp(centre(Z), Y_bar, math.sqrt(Z.shape[-1])))


def retract_to(Z, manifold="sphere", r=None):
    """Retraction onto ``manifold`` without input checks ('layer' ignores r)."""
    if manifold == "layer":
        return layer_retract_forward(Z)
    return retract_forward(Z, check_radius(r, Z.shape[-1]))


def retract_to_vjp(Z, Y_bar, manifold="sphere", r=None):
    """VJP of ``retract_to`` (trusts its inputs)."""
    if manifold == "layer":
        return layer_retract_vjp(Z, Y_bar)
    return retract_vjp(Z, Y_bar, r)


def post_norm_step_size(Z, V, h, r=None):
    """Per-row step h' that makes the post-norm residual a Riemannian step:

        R(z - h v) = R(z - h' P_z v),   h' = h / (1 - h z.v / r^2),

    for rows on the sphere |z| = r, wherever 1 - h z.v / r^2 > 0 (elsewhere the
    residual step crosses the origin's side and h' is returned as inf or negative).
    Z, V: (..., d). Returns (..., 1).
    """
    _pair(Z, V, "post_norm_step_size")
    h = validate.check_step("h", h)
    r = check_radius(r, Z.shape[-1])
    return h / (1.0 - (h / (r * r)) * rowdot(Z, V))


# ---------------------------------------------------------------- spherical flows


def _flow_inputs(Z, manifold):
    manifold = check_manifold(manifold)
    validate.check_array("Z", Z, min_ndim=2)
    check_nonzero_rows("Z", Z, centred=manifold == "layer", what="a flow on the " + manifold)
    return manifold


def linear_flow_sphere(Z, theta, C, heads=None, manifold="sphere"):
    """Riemannian gradient flow of the linear model on the sphere (eq. 6 projected):

        dZ/dt = P_Z(C theta - CA(Z, theta)) = -P_Z grad_Z l.

    Z: n x d, theta: m x d, C: n x m. ``manifold='layer'`` projects onto the LayerNorm
    manifold's tangent space instead. Returns n x d.
    """
    manifold = _flow_inputs(Z, manifold)
    return project(Z, linear_flow(Z, theta, C, heads), manifold)


def linear_flow_A_sphere(Z, theta, heads=None, manifold="sphere"):
    """Attention part on the sphere: -P_Z CA(Z, theta) = -P_Z sigma(Z theta^T) theta. n x d."""
    manifold = _flow_inputs(Z, manifold)
    return project(Z, linear_flow_A(Z, theta, heads), manifold)


def linear_flow_B_sphere(Z, theta, C, manifold="sphere"):
    """Label part on the sphere: P_Z (C theta). Z: n x d, theta: m x d, C: n x m -> n x d."""
    manifold = _flow_inputs(Z, manifold)
    return project(Z, linear_flow_B(Z, theta, C), manifold)


def quadratic_flow_sphere(Z, theta, C, manifold="sphere"):
    """Riemannian gradient flow of the quadratic model (eq. 9 projected), row by row:

        dZ/dt = P_Z((C + C^T) Z theta - SA(Z, theta) - SA*(Z, theta)).

    Z: (..., n, d), theta: d x d symmetric, C: (..., n, n). Returns (..., n, d).
    """
    manifold = _flow_inputs(Z, manifold)
    return project(Z, quadratic_flow(Z, theta, C), manifold)


def quadratic_flow_A_sphere(Z, theta, manifold="sphere"):
    """Attention part on the sphere: -P_Z (SA + SA*)(Z, theta). Returns (..., n, d)."""
    manifold = _flow_inputs(Z, manifold)
    return project(Z, quadratic_flow_A(Z, theta), manifold)


def quadratic_flow_B_sphere(Z, theta, C, manifold="sphere"):
    """Label part on the sphere: P_Z ((C + C^T) Z theta). Returns (..., n, d)."""
    manifold = _flow_inputs(Z, manifold)
    return project(Z, quadratic_flow_B(Z, theta, C), manifold)


# ---------------------------------------------------------------- exact spherical B


def linear_B_exact_sphere(Z, theta, C, t, r=None):
    """Exact solution of the linear model's B sub-flow on the sphere, dz/dt = P_z c, c = (C theta)_row.

    The flow keeps rho = |z| and rotates z toward c in the plane of z and c: with
    c_hat = c / |c| and the angle a between z and c, tan(a(t)/2) = tan(a0/2) exp(-|c| t / rho).
    In closed form, with p = z . c_hat, w = z - p c_hat, s+- = rho +- p and q = exp(-|c| t / rho),

        z(t) = rho [(s+ - q^2 s-) c_hat + 2 q w] / (s+ + q^2 s-),

    where the one of s+, s- that would cancel is computed as |w|^2 / (rho -+ p). Degenerate
    rows need no special case: c = 0, or z parallel or antiparallel to c, give z(t) = z.
    ``r`` (optional) states the sphere's radius: rows off |z| = r raise a ValueError.
    Z: n x d, theta: m x d, C: n x m. Returns n x d.
    """
    validate.linear_inputs(Z, theta, C)
    _rows("Z", Z, what="linear_B_exact_sphere")
    t = validate.check_step("t", t)
    if r is not None:
        check_on_sphere("Z", Z, check_radius(r, Z.shape[-1]))
    return linear_B_exact_sphere_forward(Z, C @ theta, t)[0]


def check_on_sphere(name, Z, r):
    """Rows of Z have length r to round-off (1e-4 relative in float32, 1e-8 in float64)."""
    xp = get_array_module(Z)
    tol = 1e-4 if Z.dtype.itemsize <= 4 else 1e-8
    off = float(xp.abs(xp.sqrt(rowdot(Z, Z)) / r - 1.0).max()) if Z.size else 0.0
    if off > tol:
        raise ValueError(
            f"{name}: expected rows on the sphere |z| = r = {r:g}; the worst row is off by "
            f"{off:.3g} relative (tolerance {tol:g}); retract(Z, r) first, or pass r=None"
        )
    return r


class SphereBCache(NamedTuple):
    """What linear_B_exact_sphere_vjp needs: the inputs Z, F = C theta and t, and per row
    kappa = |F|, c_hat, rho = |z|, p, w, |w|^2, s+, s-, q, the numerator N, D and Y."""

    Z: Any
    F: Any
    t: Any
    kappa: Any
    c_hat: Any
    rho: Any
    p: Any
    w: Any
    w2: Any
    s_plus: Any
    s_minus: Any
    q: Any
    N: Any
    D: Any
    Y: Any


def linear_B_exact_sphere_forward(Z, F, t):
    """The exact spherical B step for forcing rows F = C theta, without input checks.

    Returns (Z(t), SphereBCache). A row exactly antiparallel to c whose q^2 underflows
    (|c| t / rho > 354 in float64) stays where it is, as the flow says.
    """
    xp = get_array_module(Z)
    kappa = xp.sqrt(rowdot(F, F))
    c_hat = F / xp.where(kappa > 0, kappa, 1.0)  # zero rows of F stay zero: z(t) = z
    rho = xp.sqrt(rowdot(Z, Z))
    p = rowdot(Z, c_hat)
    w = Z - p * c_hat
    w2 = rowdot(w, w)
    small = w2 / (rho + xp.abs(p))  # rho -+ p on the side where it would cancel
    s_plus = xp.where(p >= 0, rho + p, small)
    s_minus = xp.where(p >= 0, small, rho - p)
    q = xp.exp(-(t * kappa) / rho)
    D = s_plus + (q * q) * s_minus
    N = (s_plus - (q * q) * s_minus) * c_hat + (2.0 * q) * w
    Y = xp.where(D > 0, (rho / xp.where(D > 0, D, 1.0)) * N, Z)
    return Y, SphereBCache(Z, F, t, kappa, c_hat, rho, p, w, w2, s_plus, s_minus, q, N, D, Y)


def linear_B_exact_sphere_vjp(Y_bar, cache):
    """VJP of the exact spherical B step z(t) = rho N / D (trusts its inputs).

    Reverse through N = (s+ - q^2 s-) c_hat + 2 q w, D = s+ + q^2 s-, the branches of
    s+- (rho +- p, or |w|^2 / (rho + |p|)), q = exp(-kappa t / rho), w = z - p c_hat,
    p = z . c_hat, c_hat = c / kappa, rho = |z| (docs/backward.md, section 13). At a zero
    forcing row the derivative in c is its first-order limit t P_z.
    Returns (Z_bar, F_bar, t_bar (0-d)).
    """
    c = cache
    xp = get_array_module(Y_bar)
    q2 = c.q * c.q
    D = xp.where(c.D > 0, c.D, 1.0)
    Y_in = Y_bar
    Y_bar = xp.where(c.D > 0, Y_bar, 0.0)  # rows left in place (D = 0) pass Y_bar straight back
    gamma = rowdot(c.Y, Y_bar)
    N_bar = (c.rho / D) * Y_bar
    a_bar, D_bar = rowdot(N_bar, c.c_hat), -gamma / D
    sp_bar, sm_bar = D_bar + a_bar, q2 * (D_bar - a_bar)
    q_bar = 2.0 * rowdot(N_bar, c.w) + 2.0 * c.q * c.s_minus * (D_bar - a_bar)
    w_bar = (2.0 * c.q) * N_bar
    pos = c.p >= 0
    small_bar = xp.where(pos, sm_bar, sp_bar)
    den = c.rho + xp.abs(c.p)
    den_bar = -small_bar * (c.w2 / den) / den
    rho_bar = gamma / c.rho + xp.where(pos, sp_bar, sm_bar) + den_bar
    p_bar = xp.where(pos, sp_bar + den_bar, -sm_bar - den_bar)
    w_bar = w_bar + (2.0 * small_bar / den) * c.w
    e_bar = q_bar * c.q  # q = exp(e), e = -kappa t / rho
    rho_bar = rho_bar + e_bar * c.kappa * c.t / (c.rho * c.rho)
    t_bar = -(e_bar * c.kappa / c.rho).sum()
    p_bar = p_bar - rowdot(w_bar, c.c_hat)
    ch_bar = (c.s_plus - q2 * c.s_minus) * N_bar + p_bar * c.Z - c.p * w_bar
    Z_bar = w_bar + p_bar * c.c_hat + (rho_bar / c.rho) * c.Z
    Z_bar = xp.where(c.D > 0, Z_bar, Y_in)
    return Z_bar, forcing_bar(c, ch_bar, -(c.t / c.rho) * e_bar, Y_bar), t_bar


def forcing_bar(c, ch_bar, kappa_bar, Y_bar):
    """F_bar from c_hat_bar and kappa_bar through c_hat = F / kappa, kappa = |F|; at a zero
    row of F, the first-order limit t P_z Y_bar."""
    xp = get_array_module(Y_bar)
    safe = xp.where(c.kappa > 0, c.kappa, 1.0)
    F_bar = (ch_bar - rowdot(c.c_hat, ch_bar) * c.c_hat) / safe + kappa_bar * c.c_hat
    return xp.where(c.kappa > 0, F_bar, c.t * tangent_project_forward(c.Z, Y_bar))
