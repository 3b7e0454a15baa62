r"""The transformer block of eq. (8), fused: one update for the attention and label steps.

For the linear model with Lie splitting, one Euler step for the attention sub-flow A and
the exact B sub-flow (B is constant in $Z$, so exact and Euler agree), the block is

$$
Z_{\text{out}}=Z+h\,\big(C-\sigma(Z\theta^\top)\big)\,\theta ,
$$

which shares the product with $\theta$ between the two sub-steps. A label source
evaluated at the block's input whose scores are $ZW^\top+b$ (``fused_keys``: the learned
oracle) shares one product with the attention scores $Z\theta^\top$. This implements the
interface of the readable ``CrossAttentionBlock`` (whose ``forward`` runs
``flows.lie_step``) and is registered for the configurations ``supports`` accepts;
tests/test_fast_path.py proves both equal, forward and backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.backend import get_array_module
from flowattn_np.blocks.layers import CrossAttentionBlock, require_labels
from flowattn_np.equations.ops import softmax, softmax_vjp_heads


def supports(config):
    """Whether a BlockConfig is eq. (8)'s block: linear, Lie, one Euler step for A, flat,
    with targets given, none, or evaluated once at the block's input."""
    return (config.model == "linear" and config.scheme == "lie" and config.integrator == "euler"
            and not config.normalised and config.targets in ("labels", "none", "learned"))


class Eq8Cache(NamedTuple):
    r"""Cache of the fused eq. (8) block: input $Z$, $\theta$, targets $C$, $P=\sigma(Z\theta^\top)$, $R=C-P$, the step $h$, and the keys $[W;\theta]$ of oracle and attention (learned targets) or None."""

    Z: Any
    theta: Any
    C: Any
    P: Any
    R: Any
    h: Any
    keys: Any


class FusedCrossAttentionBlock(CrossAttentionBlock):
    """eq. (8) in one update: the interface (and input checks) of ``CrossAttentionBlock``."""

    fast = True

    def forward(self, Z, params, C=None, out=None, check=True):
        r"""$Z+h(C-\sigma(Z\theta^\top))\theta$ of $Z$ (n, d), $\theta$ (m, d), $C$ (n, m); ``out``: a buffer for the output."""
        if check:
            self.check_inputs(Z, params, C)
        cfg = self.config
        xp = get_array_module(Z)
        theta = params["theta"]
        h = cfg.step_size(params)
        m = theta.shape[0]
        keys = None
        if cfg.targets == "learned":
            keys = xp.concatenate([params["W"], theta])  # keys of oracle and attention: 2m x d
            S = Z @ keys.T
            S[:, :m] += params["b"]
            C = softmax(S[:, :m], cfg.heads)
            P = softmax(S[:, m:], cfg.heads)
        else:
            if cfg.uses_labels:
                require_labels(C)
            P = softmax(Z @ theta.T, cfg.heads)
        R = -P if cfg.targets == "none" else C - P
        # h scales the n x m factor, not the n x d product: 1/d of the work
        out = xp.matmul(h * R, theta, out=out)
        out += Z
        return out, Eq8Cache(Z, theta, C, P, R, h, keys)

    def backward(self, Z_bar, cache, out=None):
        r"""VJP of $Z+hR\theta$, $R=C-P$, $P=\sigma(Z\theta^\top)$, $C=\sigma(ZW^\top+b)$:

        $$
        G=\bar Z\theta^\top,\ \bar h=\langle G,R\rangle,\ \bar R=hG,\
        \bar\theta=hR^\top\bar Z+\bar S_P^\top Z,\ \bar S_P=\sigma'(P)^\top(-\bar R),\
        \bar S_C=\sigma'(C)^\top\bar R,\ \bar W=\bar S_C^\top Z,\ \bar b=\mathbf 1^\top\bar S_C,\
        \bar Z_{\text{in}}=\bar Z+\bar S_CW+\bar S_P\theta
        $$

        ``out``: a buffer for the input gradient; must not be ``Z_bar``.
        """
        cfg = self.config
        xp = get_array_module(Z_bar)
        Z, theta, C, P, R, h, keys = cache
        G = Z_bar @ theta.T
        R_bar = h * G
        grads = {"theta": h * (R.T @ Z_bar)}
        if cfg.learn_h:
            grads["h"] = (G * R).sum().reshape(())
        SP_bar = softmax_vjp_heads(P, -R_bar, cfg.heads)
        if keys is None:
            Z_in_bar = xp.matmul(SP_bar, theta, out=out)
            grads["theta"] += SP_bar.T @ Z
        else:
            m = theta.shape[0]
            S_bar = xp.concatenate([softmax_vjp_heads(C, R_bar, cfg.heads), SP_bar], axis=1)
            Z_in_bar = xp.matmul(S_bar, keys, out=out)
            keys_bar = S_bar.T @ Z  # [W_bar; theta_bar part]: one product for both
            grads["W"] = keys_bar[:m]
            grads["theta"] += keys_bar[m:]
            grads["b"] = S_bar[:, :m].sum(axis=0)
        Z_in_bar += Z_bar
        return Z_in_bar, grads
