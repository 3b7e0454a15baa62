r"""A label source in one file, to show what adding one takes: the temperature oracle

    C_hat(Z) = softmax(Z theta^T / tau),   tau = exp(s),

with ``s`` a learned 0-d parameter, for the linear model, evaluated once at the block's
input. It reads the block's own ``theta``, so its gradient in theta must ADD to the
attention's: a merge by ``dict.update`` would overwrite one of them.
``tests/conftest.py`` imports this module, which registers the source, so the block
tests that run over ``sources.SOURCES`` run on it too.
"""

from typing import Any, NamedTuple

from flowattn_np.backend import array_module, get_array_module
from flowattn_np.blocks.protocol import Grads
from flowattn_np.blocks.sources import LabelSource, register_source
from flowattn_np.equations.ops import softmax, softmax_vjp_heads


class TemperatureCache(NamedTuple):
    """Input Z, scores S = Z theta^T, 1/tau and the targets C."""

    Z: Any
    S: Any
    inv_tau: Any
    C: Any


class TemperatureOracle(LabelSource):
    """C_hat(Z) = softmax(Z theta^T / exp(s)) (per head), at the block's input."""

    name = "temperature"
    title = "temperature oracle C_hat(Z) = softmax(Z theta^T / exp(s)) (a test source)"
    models = ("linear",)
    where = "input"

    def param_shapes(self, config, d, m):
        return {"s": ()}

    def init_param(self, config, name, shape, d, rng, dtype):
        if name != "s":
            return super().init_param(config, name, shape, d, rng, dtype)
        return array_module().zeros((), dtype=dtype)  # tau = 1

    def forward(self, config, Z, params):
        S = Z @ params["theta"].T
        inv_tau = get_array_module(Z).exp(-params["s"])
        C = softmax(S * inv_tau, config.heads)
        return C, TemperatureCache(Z, S, inv_tau, C)

    def vjp(self, config, C_bar, cache, params):
        """G = softmax_vjp(C, C_bar) in the scaled scores; S_bar = G / tau;
        Z_bar = S_bar theta, theta_bar = S_bar^T Z, s_bar = -<G, S / tau>."""
        G = softmax_vjp_heads(cache.C, C_bar, config.heads)
        S_bar = G * cache.inv_tau
        s_bar = -(S_bar * cache.S).sum().reshape(())
        return Grads(S_bar @ params["theta"], {"theta": S_bar.T @ cache.Z, "s": s_bar})


TEMPERATURE = register_source(TemperatureOracle())
