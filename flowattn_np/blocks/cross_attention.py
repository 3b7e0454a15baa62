r"""The block of the linear model $N=Z\theta^\top$: cross-attention and label forcing."""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.blocks.config import check_block_backends, require_labels
from flowattn_np.blocks.params import check_block_params
from flowattn_np.blocks.protocol import Grads
from flowattn_np.blocks.split import SplitBlock
from flowattn_np.equations.attention import cross_attention_forward, cross_attention_vjp
from flowattn_np.equations.sphere import SphereBCache, centre, linear_B_exact_sphere_forward, linear_B_exact_sphere_vjp
from flowattn_np.validate import check_array, linear_inputs


class CrossAttentionCache(NamedTuple):
    r"""Cache of the linear A field at a stage $Y$: $\theta$ and $P=\sigma(Y\theta^\top)$."""

    Y: Any
    theta: Any
    P: Any


class LinearBCache(NamedTuple):
    r"""Cache of the linear B sub-flow $Z+tC\theta$."""

    theta: Any
    C: Any
    C_theta: Any
    t: Any


class SphereLinearBCache(NamedTuple):
    """Cache of the linear B sub-step on the manifold (the exact rotation toward c = (C theta)_row):
    the sphere module's SphereBCache, theta and the targets C."""

    sphere: SphereBCache
    theta: Any
    C: Any


class CrossAttentionBlock(SplitBlock):
    r"""Block of the linear model $N=Z\theta^\top$: cross-attention and label forcing.

    With Lie splitting, one Euler step for A and the exact B (which one Euler step of
    the constant field $C\theta$ equals) this is eq. (8):

    $$
    Z_{l+\frac12}=Z_l-h\operatorname{CA}(Z_l,\theta),\qquad Z_{l+1}=Z_{l+\frac12}+h\,C\theta
    $$

    Params: ``"theta"`` (m, d); ``"h"`` (0-d, if ``learn_h``); those of the label source
    (e.g. ``"W"`` (m, d), ``"b"`` (m,) for ``"learned"``). Shapes: $Z$ (n, d), $C$ (n, m).
    """

    def check_inputs(self, Z, params, C=None):
        """Validate Z (n x d), params (shapes of ``block_param_shapes``) and C (n x m)."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, ndim=2)
        theta = check_block_params(self.config, params, Z, m=None)
        if self.config.uses_labels:
            require_labels(C)
        linear_inputs(Z, theta, C if self.config.uses_labels else None, self.config.heads)

    def theta_of(self, params):
        r"""The model parameter $\theta$, shape (m, d), from the params dict."""
        return params["theta"]

    def param_grads(self, theta_bar, params):
        r"""Parameter gradients from $\bar\theta$: ``{"theta": theta_bar}``."""
        return {"theta": theta_bar}

    def field_A(self, Y, theta):
        r"""A sub-flow field $-\operatorname{CA}(Y,\theta)$; returns ``(-CA, CrossAttentionCache)``."""
        CA, P = cross_attention_forward(Y, theta, self.config.heads)
        return -CA, CrossAttentionCache(Y, theta, P)

    def field_A_vjp(self, k_bar, fcache):
        r"""VJP of the A field $-\operatorname{CA}(Y,\theta)$: returns ``(Y_bar, {"theta": theta_bar})``."""
        Y, theta, P = fcache
        Y_bar, theta_bar = cross_attention_vjp(Y, theta, P, -k_bar, self.config.heads)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        r"""B sub-flow $Z+tC\theta$: exact, and identical to one Euler step (B is constant in $Z$)."""
        C_theta = C @ theta
        return Z + t * C_theta, LinearBCache(theta, C, C_theta, t)

    def B_vjp(self, Z_bar, cache):
        r"""VJP of $Z+tC\theta$: $\bar\theta=tC^\top\bar Z$, $\bar C=t\bar Z\theta^\top$, $\bar t=\langle\bar Z,C\theta\rangle$."""
        theta, C, C_theta, t = cache
        return Grads(Z_bar, {"theta": t * (C.T @ Z_bar)}, (Z_bar * C_theta).sum(), t * (Z_bar @ theta.T))

    def B_manifold_forward(self, Z, theta, C, t):
        """B on the manifold, exactly: each row rotates toward c = (C theta)_row (sphere.py).

        On the LayerNorm manifold the tangent part of c is that of c - mean(c), so the
        same rotation with the centred forcing solves it.
        """
        F = C @ theta
        if self.config.norm == "layer":
            F = centre(F)
        Y, sphere_cache = linear_B_exact_sphere_forward(Z, F, t)
        return Y, SphereLinearBCache(sphere_cache, theta, C)

    def B_manifold_vjp(self, Z_bar, cache):
        r"""VJP of B_manifold_forward: $\bar\theta=C^\top\bar F$, $\bar C=\bar F\theta^\top$."""
        Z_bar, F_bar, t_bar = linear_B_exact_sphere_vjp(Z_bar, cache.sphere)
        if self.config.norm == "layer":
            F_bar = centre(F_bar)
        return Grads(Z_bar, {"theta": cache.C.T @ F_bar}, t_bar, F_bar @ cache.theta.T)
