r"""The key/value memory block $Z+h\,\sigma(ZK^\top)V$ with $s$ learned slots (beyond the theory)."""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.backend import get_array_module
from flowattn_np.blocks.config import check_block_backends
from flowattn_np.blocks.normalisation import normalised
from flowattn_np.blocks.params import check_block_params
from flowattn_np.blocks.protocol import Grads, SubStep, add_grads, copy_into
from flowattn_np.equations.ops import softmax, softmax_vjp
from flowattn_np.validate import check_array


class MemoryCache(NamedTuple):
    r"""Cache of the memory step: input $Z$, $P=\sigma(ZK^\top)$, the step $h$, the params."""

    Z: Any
    P: Any
    h: Any
    params: dict


class MemoryBlockCache(NamedTuple):
    """Cache of `MemoryBlock.forward`, flat or normalised alike: the step's cache (a
    MemoryCache, or the normalisation's cache around it: the config says which)."""

    step: Any


class MemoryBlock:
    r"""Key/value memory block with $s$ learned slots, beyond the theory.

    $$
    Z_{\text{out}}=Z+h\,\sigma(ZK^\top)\,V
    $$

    Keys $K$ and values $V$, each (s, d), are separate parameters, where the gradient flow
    ties both to $\theta$. Params: ``"K"``, ``"V"``, ``"h"`` (if ``learn_h``).
    """

    fast = False  # the readable reference (a fast path says True; blocks/implementations.py)
    fills_out = False  # computes fresh arrays: an `out` buffer would only cost a copy

    def __init__(self, config):
        self.config = config

    def forward(self, Z, params, C=None, out=None, check=True):
        r"""$Z+h\,\sigma(ZK^\top)V$, normalised as the config says.

        Post-norm: $R\big(Z+h\,P_Z\,\sigma(ZK^\top)V\big)$; pre-norm: $Z+h\,\sigma(R(Z)K^\top)V$.

        The interface of every block (`SplitBlock.forward`): Z (n, d); params ``"K"``, ``"V"``
        (s, d) and ``"h"`` if learned; C ignored (no label sub-flow); ``out`` a buffer the
        output is written into; ``check`` validates first. Returns (Z_out, cache).
        """
        if check:
            self.check_inputs(Z, params, C)
        Z_out, cache = self.step(params).forward(Z, self.config.step_size(params))
        return copy_into(out, Z_out), MemoryBlockCache(cache)

    def backward(self, Z_bar, cache, out=None):
        r"""Vector-Jacobian product of the memory block.

        $$
        G=\bar ZV^\top,\quad \bar P=hG,\quad \bar S=P\odot(\bar P-\operatorname{rowsum}(P\odot\bar P)),\quad
        \bar Z_{\text{in}}=\bar Z+\bar SK,\quad \bar K=\bar S^\top Z,\quad \bar V=hP^\top\bar Z,\quad \bar h=\langle G,P\rangle
        $$

        The interface of every block (`SplitBlock.backward`): Z_bar (n, d) upstream, the
        MemoryBlockCache of `forward`, ``out`` a buffer for the input gradient (not ``Z_bar``). Returns
        Grads: Z, params (``"K"``, ``"V"``, ``"h"`` if learned) and t (the gradient in h).
        """
        g = self.step(None).vjp(Z_bar, cache.step)
        grads = dict(g.params)
        if self.config.learn_h:
            add_grads(grads, {"h": g.t.reshape(())})
        return Grads(copy_into(out, g.Z), grads, g.t)

    def step(self, params):
        """The memory step as a sub-step over time h, normalised as the config says."""
        return normalised(SubStep(lambda Z, h: self.flat_forward(Z, params, h), self.flat_backward),
                          self.config)

    def flat_forward(self, Z, params, h):
        """Z + h softmax(Z K^T) V; returns (Z_out, MemoryCache)."""
        P = softmax(Z @ params["K"].T)
        return Z + (h * P) @ params["V"], MemoryCache(Z, P, h, params)

    def flat_backward(self, Z_bar, cache):
        """G = Z_bar V^T, S_bar = softmax_vjp(P, h G), Z_bar_in = Z_bar + S_bar K,
        K_bar = S_bar^T Z, V_bar = h P^T Z_bar, h_bar = <G, P>; returns Grads."""
        Z, P, h, params = cache
        G = Z_bar @ params["V"].T
        S_bar = softmax_vjp(P, h * G)
        t_bar = get_array_module(Z_bar).asarray((G * P).sum(), dtype=Z_bar.dtype)
        return Grads(Z_bar + S_bar @ params["K"], {"K": S_bar.T @ Z, "V": h * (P.T @ Z_bar)}, t_bar)

    def check_inputs(self, Z, params, C=None):
        """Validate Z (n x d) and params (K, V: s x d; h when learned)."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, ndim=2)
        check_block_params(self.config, params, Z, m=None)
