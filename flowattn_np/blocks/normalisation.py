r"""Normalised sub-steps: a flat sub-step S made into one on the manifold (sphere.py).

Post-norm: $R(Z+P_Z(S(Z)-Z))$, the projected Euler step then the retraction $R$ (for the
A sub-flow, an RK step of the projected field $P_Yf(Y)$ then $R$). Pre-norm:
$Z+S(R(Z))-R(Z)$, the GPT-2 layout. Each wrapper takes and returns a `SubStep`, so the
model, the label source and the integrator stay with S and every combination composes.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

from flowattn_np.blocks.protocol import Grads, SubStep
from flowattn_np.equations.integrators import rk_backward, rk_forward
from flowattn_np.equations.sphere import project, project_vjp, retract_to, retract_to_vjp


class PostNormCache(NamedTuple):
    """Cache of a post-norm sub-step R(Z + P_Z(S(Z) - Z)): the cache of S, the input Z,
    the flat increment D = S(Z) - Z and U before the retraction."""

    inner: Any
    Z: Any
    D: Any
    U: Any


class PreNormCache(NamedTuple):
    """Cache of a pre-norm sub-step Z + S(R(Z)) - R(Z): the cache of S and the input Z."""

    inner: Any
    Z: Any


class RiemannianRKCache(NamedTuple):
    """Cache of a post-norm A sub-step R(Phi(Z)), Phi an RK step of the projected field
    P_Y f(Y): the RKCache of Phi and its end point U = Phi(Z) before the retraction."""

    rk: Any
    U: Any


class ProjectedFieldCache(NamedTuple):
    """Cache of the projected field P_Y f(Y) at a stage Y: Y, f(Y) and the field's cache."""

    Y: Any
    F: Any
    inner: Any


def post_norm_forward(step, manifold, Z, t):
    """R(Z + P_Z(S(Z) - Z)): a projected Euler step of the sub-step S, then the retraction."""
    S, inner = step.forward(Z, t)
    D = S - Z
    U = Z + project(Z, D, manifold)
    return retract_to(U, manifold), PostNormCache(inner, Z, D, U)


def post_norm_vjp(step, manifold, Y_bar, cache):
    """VJP of post_norm_forward: U_bar = R_vjp(Y_bar), then through U = Z + P_Z(S(Z) - Z)."""
    U_bar = retract_to_vjp(cache.U, Y_bar, manifold)
    Zp_bar, D_bar = project_vjp(cache.Z, cache.D, U_bar, manifold)
    g = step.vjp(D_bar, cache.inner)
    return g._replace(Z=g.Z + U_bar + Zp_bar - D_bar)


def pre_norm_forward(step, manifold, Z, t):
    """Z + S(R(Z)) - R(Z): the sub-step applied to the normalised input, added to the stream."""
    X = retract_to(Z, manifold)
    S, inner = step.forward(X, t)
    return Z + (S - X), PreNormCache(inner, Z)


def pre_norm_vjp(step, manifold, Y_bar, cache):
    """VJP of pre_norm_forward: X_bar = S_vjp(Y_bar) - Y_bar, Z_bar = Y_bar + R_vjp(X_bar)."""
    g = step.vjp(Y_bar, cache.inner)
    return g._replace(Z=Y_bar + retract_to_vjp(cache.Z, g.Z - Y_bar, manifold))


def post_norm(step, manifold):
    """The sub-step S as a post-norm one (`post_norm_forward`, `post_norm_vjp`)."""
    return SubStep(partial(post_norm_forward, step, manifold), partial(post_norm_vjp, step, manifold))


def pre_norm(step, manifold):
    """The sub-step S as a pre-norm one (`pre_norm_forward`, `pre_norm_vjp`)."""
    return SubStep(partial(pre_norm_forward, step, manifold), partial(pre_norm_vjp, step, manifold))


def normalised(step, config):
    """The flat sub-step ``step`` placed as ``config`` says: unchanged, post- or pre-norm."""
    if not config.normalised:
        return step
    return (pre_norm if config.norm_place == "pre" else post_norm)(step, config.norm)


def projected_field(field, manifold, Y):
    """The field on the manifold, P_Y f(Y); returns (P_Y f(Y), ProjectedFieldCache)."""
    F, inner = field(Y)
    return project(Y, F, manifold), ProjectedFieldCache(Y, F, inner)


def projected_field_vjp(field_vjp, manifold, k_bar, cache):
    """VJP of P_Y f(Y): the projection's VJP, then the field's. Returns (Y_bar, grads)."""
    Y_bar, F_bar = project_vjp(cache.Y, cache.F, k_bar, manifold)
    Y_field_bar, grads = field_vjp(F_bar, cache.inner)
    return Y_bar + Y_field_bar, grads


def riemannian_rk(field, field_vjp, integrator, manifold):
    """The post-norm A sub-step R(Phi_t(Z)), Phi an RK step of the projected field P_Y f(Y)."""

    def forward(Z, t):
        U, rk = rk_forward(partial(projected_field, field, manifold), Z, t, integrator)
        return retract_to(U, manifold), RiemannianRKCache(rk, U)

    def vjp(Z_bar, cache):
        U_bar = retract_to_vjp(cache.U, Z_bar, manifold)
        Z_bar, t_bar, grads = rk_backward(partial(projected_field_vjp, field_vjp, manifold), U_bar, cache.rk)
        return Grads(Z_bar, grads, t_bar)

    return SubStep(forward, vjp)
