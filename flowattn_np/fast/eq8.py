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
from flowattn_np.blocks.config import require_labels
from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.protocol import Grads, add_grads
from flowattn_np.equations.ops import softmax, softmax_vjp_heads


def supports(config):
    """Whether a BlockConfig is eq. (8)'s block: linear, Lie, one Euler step for A, flat, with
    targets given, none, or from a source evaluated once at the block's input."""
    return (config.model == "linear" and config.scheme == "lie" and config.integrator == "euler"
            and not config.normalised and config.source.where in ("given", "none", "input"))


class Eq8Cache(NamedTuple):
    r"""Cache of the fused eq. (8) block: input $Z$, $\theta$, targets $C$, $P=\sigma(Z\theta^\top)$, $R=C-P$, the step $h$, the keys $[W;\theta]$ of oracle and attention (a source with ``fused_keys``) or None, the source's cache (another source at the input) or None, and the params."""

    Z: Any
    theta: Any
    C: Any
    P: Any
    R: Any
    h: Any
    keys: Any
    source: Any
    params: dict


class FusedCrossAttentionBlock(CrossAttentionBlock):
    """eq. (8) in one update: the interface (and input checks) of ``CrossAttentionBlock``."""

    fast = True
    fills_out = True  # computes its output and input gradient into `out` buffers

    def forward(self, Z, params, C=None, out=None, check=True):
        r"""$Z+h(C-\sigma(Z\theta^\top))\theta$ of $Z$ (n, d), $\theta$ (m, d), $C$ (n, m); ``out``: a buffer for the output."""
        if check:
            self.check_inputs(Z, params, C)
        cfg = self.config
        xp = get_array_module(Z)
        theta, h = params["theta"], cfg.step_size(params)
        keys = source_cache = None
        if cfg.fused_keys:  # C = softmax(Z W^T + b): one product for both score matrices
            W, b = cfg.fused_keys
            keys = xp.concatenate([params[W], theta])  # keys of oracle and attention: 2m x d
            S = Z @ keys.T
            m = params[W].shape[0]
            S[:, :m] += params[b]
            C, P = softmax(S[:, :m], cfg.heads), softmax(S[:, m:], cfg.heads)
        else:
            if cfg.source.where == "input":  # C_hat(Z), held fixed over the block
                C, source_cache = cfg.source.forward(cfg, Z, params)
            elif cfg.uses_labels:
                require_labels(C)
            P = softmax(Z @ theta.T, cfg.heads)
        R = -P if not cfg.has_B else C - P
        # h scales the n x m factor, not the n x d product: 1/d of the work
        out = xp.matmul(h * R, theta, out=out)
        out += Z
        return out, Eq8Cache(Z, theta, C, P, R, h, keys, source_cache, params)

    def backward(self, Z_bar, cache, out=None):
        r"""VJP of $Z+hR\theta$, $R=C-P$, $P=\sigma(Z\theta^\top)$, $C=\sigma(ZW^\top+b)$ or $\hat C(Z)$:

        $$
        G=\bar Z\theta^\top,\ \bar h=\langle G,R\rangle,\ \bar C=\bar R=hG,\
        \bar\theta=hR^\top\bar Z+\bar S_P^\top Z,\ \bar S_P=\sigma'(P)^\top(-\bar R),\
        \bar S_C=\sigma'(C)^\top\bar R,\ \bar W=\bar S_C^\top Z,\ \bar b=\mathbf 1^\top\bar S_C,\
        \bar Z_{\text{in}}=\bar Z+\bar S_CW+\bar S_P\theta
        $$

        Returns a ``Grads`` (as the readable block); ``out``: a buffer for the input
        gradient, which must not be ``Z_bar``.
        """
        cfg = self.config
        xp = get_array_module(Z_bar)
        c = cache
        G = Z_bar @ c.theta.T
        R_bar = c.h * G
        grads = {"theta": c.h * (c.R.T @ Z_bar)}
        h_bar = (G * c.R).sum().reshape(())
        if cfg.learn_h:
            grads["h"] = h_bar
        SP_bar = softmax_vjp_heads(c.P, -R_bar, cfg.heads)
        if c.keys is None:
            Z_in_bar = xp.matmul(SP_bar, c.theta, out=out)
            grads["theta"] += SP_bar.T @ c.Z
        else:
            W, b = cfg.fused_keys
            m = c.theta.shape[0]
            S_bar = xp.concatenate([softmax_vjp_heads(c.C, R_bar, cfg.heads), SP_bar], axis=1)
            Z_in_bar = xp.matmul(S_bar, c.keys, out=out)
            keys_bar = S_bar.T @ c.Z  # [W_bar; theta_bar part]: one product for both
            grads["theta"] += keys_bar[m:]
            add_grads(grads, {W: keys_bar[:m], b: S_bar[:, :m].sum(axis=0)})
        Z_in_bar += Z_bar
        C_bar = R_bar if cfg.uses_labels else None
        if c.source is not None:  # C_hat(Z) at the input: its VJP adds to Z_bar and the params
            g = cfg.source.vjp(cfg, R_bar, c.source, c.params)
            Z_in_bar += g.Z
            add_grads(grads, g.params)
        return Grads(Z_in_bar, grads, h_bar, C_bar)
