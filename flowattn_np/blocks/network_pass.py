"""One pass of a network, as functions of its configuration and parameters.

The pieces (the encoding, the targets, the head and their gradients) and ``BlockByBlock``,
the readable pass that runs the blocks one after the other: the reference that every
fast network pass (``flowattn_np/fast``) equals and whose interface it implements.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.backend import get_array_module
from flowattn_np.equations.models import phi_grad, theta_from_phi
from flowattn_np.equations.ops import (
    mean_cross_entropy,
    mean_cross_entropy_and_grad,
    one_hot,
    sum_leading,
    swap_last,
)
from flowattn_np.equations.sphere import retract_to, retract_to_vjp


class NetworkCache(NamedTuple):
    r"""Cache of `Network.forward`: the input $X$, the last features $Z_L$, the head's $\theta$, and the cache of each block, in order.
    """

    X: Any
    Z: Any
    theta: Any
    block_caches: list
    encoded: Any = None


# ---------------------------------------------------------------- the pieces of a pass
# Functions of the configuration and the parameters (not of a Network), shared by the
# readable pass below and the fast passes of flowattn_np/fast.


def block_params(config, params, layer):
    """The parameter dict block ``layer`` sees: all of ``params`` when tied (shared arrays),
    else its own ``block{layer}.*`` entries without the prefix."""
    if config.tied:
        return params
    prefix = f"block{layer}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def encode(config, params, X):
    r"""$(Z_0, XE^\top$ or None$)$: $Z_0=X$ or $XE^\top$, then the blocks' retraction $R$ when
    they normalise (the second item is the encoding before $R$, None without one)."""
    E_X = X if config.encoding == "identity" else X @ params["E"].T
    if not config.normalises_input:
        return E_X, None
    return retract_to(E_X, config.block.norm), E_X


def encode_vjp(config, X, Z_bar, encoded):
    r"""Gradient of $E$ from $\bar Z_0$ (linear encoding): $\bar E=\bar Z_0^\top X$, through $R$ when used."""
    if encoded is not None:
        Z_bar = retract_to_vjp(encoded, Z_bar, config.block.norm)
    return sum_leading(swap_last(Z_bar) @ X) if X.ndim > 2 else Z_bar.T @ X


def head_theta(config, params):
    r"""The head's $\theta$: ``params["theta"]`` (linear) or $\phi\phi^\top$ (quadratic)."""
    if config.head_model == "linear":
        return params["theta"]
    return theta_from_phi(params["phi"], check=False)  # checked when params were set


def head_logits(config, Z, theta):
    r"""Logits $Z\theta^\top$ (linear) or $Z\theta Z^\top$ (quadratic)."""
    return Z @ theta.T if config.head_model == "linear" else Z @ theta @ swap_last(Z)


def head_backward(config, params, logits_bar, Z, theta, buf=None):
    """Gradients of the head: returns (Z_bar, {"theta" or "phi": ...})."""
    if config.head_model == "linear":
        Z_bar = get_array_module(Z).matmul(logits_bar, theta, out=buf)
        return Z_bar, {"theta": logits_bar.T @ Z}
    # theta symmetric: one product, not two
    Z_bar = (logits_bar + swap_last(logits_bar)) @ (Z @ theta)
    theta_bar = sum_leading(swap_last(Z) @ logits_bar @ Z)
    return Z_bar, {"phi": phi_grad(theta_bar, params["phi"])}


def head_heads(config):
    """The head's softmax groups: the block's heads (linear model), else None."""
    return config.block.heads if config.head_model == "linear" else None


def target_matrix(config, y, dtype):
    r"""One-hot targets $C$ of checked integer labels: (n, m), (n, sum of heads) or (B, n, n)."""
    xp = get_array_module(y)
    if config.head_model == "quadratic":
        B, n = y.shape
        return one_hot(y.reshape(-1), n, dtype, check=False).reshape(B, n, n)
    if config.block.heads is None:
        return one_hot(y, config.n_classes, dtype, check=False)
    return xp.concatenate([one_hot(y[:, i], m, dtype, check=False)
                           for i, m in enumerate(config.block.heads)], axis=1)


class BlockByBlock:
    r"""The readable pass of a network, the reference for every fast one: the encoding,
    the blocks one after the other, the head; the backward in reverse.

    Every network pass has this interface (``fast`` says whether it is a fast path):
    ``forward(params, X, C, workspace) -> (logits, cache)``,
    ``backward(params, logits_bar, cache, workspace) -> grads``,
    ``loss_and_grads(params, X, y, C, workspace) -> (loss, grads, logits)`` and
    ``loss(params, X, y, C)``, with ``C`` the blocks' targets (None unless they use labels).
    """

    fast = False

    def __init__(self, config, block):
        self.config = config
        self.block = block  # the readable block, or a fast one (blocks/implementations.py)

    def forward(self, params, X, C=None, workspace=None):
        """Logits of a checked batch and a NetworkCache."""
        cfg = self.config
        Z, encoded = encode(cfg, params, X)
        xp = get_array_module(Z)
        caches = []
        buffers = workspace is not None and self.block.fills_out
        for layer in range(cfg.layers):
            # buffers only for a block that computes into them (for the others, a copy)
            out = workspace.get(f"Z{layer + 1}", Z.shape, Z.dtype, xp) if buffers else None
            Z, c = self.block.forward(Z, block_params(cfg, params, layer), C, out=out, check=False)
            caches.append(c)
        theta = head_theta(cfg, params)
        return head_logits(cfg, Z, theta), NetworkCache(X, Z, theta, caches, encoded)

    def backward(self, params, logits_bar, cache, workspace=None):
        """Gradients keyed like ``params``; the feature gradients alternate between two buffers."""
        cfg = self.config
        Z = cache.Z
        xp = get_array_module(logits_bar)
        bufs = (None, None) if workspace is None else tuple(
            workspace.get(name, Z.shape, Z.dtype, xp) for name in ("Z_bar_a", "Z_bar_b"))
        Z_bar, grads = head_backward(cfg, params, logits_bar, Z, cache.theta, bufs[0])
        for layer in reversed(range(cfg.layers)):
            out = bufs[1] if Z_bar is bufs[0] else bufs[0]  # never the buffer being read
            g = self.block.backward(Z_bar, cache.block_caches[layer],
                                    out=out if self.block.fills_out else None)  # a Grads
            Z_bar = g.Z
            prefix = "" if cfg.tied else f"block{layer}."
            for k, v in g.params.items():  # tied weights: the gradients of all blocks add up
                grads[prefix + k] = grads[prefix + k] + v if prefix + k in grads else v
        if cfg.encoding == "linear":
            grads["E"] = encode_vjp(cfg, cache.X, Z_bar, cache.encoded)
        return grads

    def loss_and_grads(self, params, X, y, C=None, workspace=None):
        """Mean cross-entropy of the labels y, the gradients and the logits."""
        targets = target_matrix(self.config, y, X.dtype)
        logits, cache = self.forward(params, X, targets if C is not None else None, workspace)
        loss, logits_bar = mean_cross_entropy_and_grad(logits, targets, head_heads(self.config))
        return loss, self.backward(params, logits_bar, cache, workspace), logits

    def loss(self, params, X, y, C=None):
        """Mean cross-entropy of the labels y (a 0-d array)."""
        targets = target_matrix(self.config, y, X.dtype)
        logits = self.forward(params, X, C)[0]
        return mean_cross_entropy(logits, targets, head_heads(self.config), check=False)
