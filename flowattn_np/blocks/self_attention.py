r"""The block of the quadratic model $N=Z\theta Z^\top$: self-attention and label forcing."""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.blocks.config import check_block_backends, require_labels
from flowattn_np.blocks.params import check_block_params
from flowattn_np.blocks.protocol import Grads
from flowattn_np.blocks.split import SplitBlock
from flowattn_np.equations.attention import self_attention_sum_forward, self_attention_sum_vjp
from flowattn_np.equations.exact_b import quadratic_B_exact_forward, quadratic_B_exact_vjp
from flowattn_np.equations.models import phi_grad, theta_from_phi
from flowattn_np.equations.ops import sum_leading, swap_last
from flowattn_np.validate import check_array, quadratic_phi_inputs


class SelfAttentionCache(NamedTuple):
    r"""Cache of the quadratic A field at a stage $Y$: $\theta$, $P=\sigma(Y\theta Y^\top)$ and $Y\theta$."""

    Y: Any
    theta: Any
    P: Any
    Y_theta: Any


class QuadraticBEulerCache(NamedTuple):
    r"""Cache of one Euler step $Z+tMZ\theta$ of the quadratic B sub-flow, $M=C+C^\top$."""

    Z: Any
    theta: Any
    M: Any
    MZ_theta: Any
    t: Any


class SelfAttentionBlock(SplitBlock):
    r"""Block of the quadratic model $N=Z\theta Z^\top$, $\theta=\phi\phi^\top$.

    With Lie splitting, one Euler step for A and ``b_flow="euler"`` (one Euler step of
    the B sub-flow) this is eq. (10):

    $$
    Z_{l+\frac12}=Z_l-h\big(\operatorname{SA}+\operatorname{SA}^*\big)(Z_l,\theta),\qquad
    Z_{l+1}=Z_{l+\frac12}+h\,(C+C^\top)Z_{l+\frac12}\theta
    $$

    The default ``b_flow="exact"`` replaces the second line by the exact B sub-flow
    $dZ/dt=(C+C^\top)Z\theta$ over time $h$ (not eq. (10)). Params: ``"phi"`` (d, d),
    lower-triangular; ``"h"`` (0-d, if ``learn_h``); those of the label source (e.g.
    ``"W"`` (d, d) for ``"learned"``). Shapes: $Z$ (..., n, d), $C$ (..., n, n).
    """

    def check_inputs(self, Z, params, C=None):
        """Validate Z ((..., n, d)), params (phi lower-triangular d x d, ...) and C ((..., n, n))."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, min_ndim=2)
        check_block_params(self.config, params, Z, m=None)
        if self.config.uses_labels:
            require_labels(C)
        quadratic_phi_inputs(Z, params["phi"], C if self.config.uses_labels else None)

    def theta_of(self, params):
        r"""$\theta=\phi\phi^\top$, shape (d, d), from the params dict."""
        return theta_from_phi(params["phi"], check=False)  # checked by check_inputs, or trusted

    def param_grads(self, theta_bar, params):
        r"""$\bar\phi=\operatorname{tril}\big((\bar\theta+\bar\theta^\top)\phi\big)$ from the gradient in $\theta$.
        """
        return {"phi": phi_grad(theta_bar, params["phi"])}

    def field_A(self, Y, theta):
        r"""A sub-flow field $-(\operatorname{SA}+\operatorname{SA}^*)(Y,\theta)$; returns it with a ``SelfAttentionCache``.
        """
        F, P, Y_theta = self_attention_sum_forward(Y, theta)
        return -F, SelfAttentionCache(Y, theta, P, Y_theta)

    def field_A_vjp(self, k_bar, fcache):
        r"""VJP of the A field $-(\operatorname{SA}+\operatorname{SA}^*)(Y,\theta)$: returns ``(Y_bar, {"theta": theta_bar})``.
        """
        Y, theta, P, Y_theta = fcache
        Y_bar, theta_bar = self_attention_sum_vjp(Y, theta, P, Y_theta, -k_bar)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        r"""B sub-flow $dZ/dt=MZ\theta$, $M=C+C^\top$, over time $t$: exact
        (`exact_b.quadratic_B_exact_forward`, ``b_flow="exact"``) or one Euler step $Z+tMZ\theta$."""
        M = C + swap_last(C)
        if self.config.b_flow == "exact":
            return quadratic_B_exact_forward(Z, theta, M, t)
        MZ_theta = M @ Z @ theta
        return Z + t * MZ_theta, QuadraticBEulerCache(Z, theta, M, MZ_theta, t)

    def B_vjp(self, Z_bar, cache):
        r"""VJP of the B sub-step (exact or Euler, as ``b_flow`` says); $\bar C=\bar M+\bar M^\top$."""
        if self.config.b_flow == "exact":
            Z_in_bar, theta_bar, M_bar, t_bar = quadratic_B_exact_vjp(Z_bar, cache)
        else:
            Z, theta, M, MZ_theta, t = cache
            Z_in_bar = Z_bar + t * (swap_last(M) @ Z_bar @ theta.T)
            theta_bar = t * sum_leading(swap_last(M @ Z) @ Z_bar)
            M_bar = t * (Z_bar @ swap_last(Z @ theta))
            t_bar = (Z_bar * MZ_theta).sum()
        return Grads(Z_in_bar, {"theta": theta_bar}, t_bar, M_bar + swap_last(M_bar))
