r"""The sources of a block's targets $C$, one object each, in one registry.

A source declares its ``name``, a ``title`` for `BlockConfig.describe`, the ``models`` it
is defined for, and ``where`` its $C$ is evaluated:

* ``"given"``: $C$ is passed to the block (the true labels),
* ``"none"``:  there is no $C$ and no B sub-flow (attention only),
* ``"input"``: $C=\hat C(Z)$ once at the block's input, held fixed for the block (the B
  sub-flow stays linear in $Z$ and exactly solvable),
* ``"B"``:     $C=\hat C(Y)$ at the input $Y$ of the B sub-step, held fixed during it.

It also declares its own parameters (``param_shapes``, ``init_param``), its configuration
errors (``check``), and for ``"input"``/``"B"`` sources ``forward(config, Z, params) ->
(C, cache)`` and ``vjp(config, C_bar, cache, params) -> Grads`` (fields Z and params).
``register_source`` adds one; `BlockConfig`, the parameter shapes and ``describe`` read the
registry, so a new source is one object in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from flowattn_np.backend import array_module
from flowattn_np.blocks.protocol import Grads
from flowattn_np.equations.mlp import (
    init_mlp_param,
    mlp_oracle,
    mlp_oracle_vjp,
    mlp_param_shapes,
    mlp_token_oracle,
    mlp_token_oracle_vjp,
)
from flowattn_np.equations.ops import softmax, softmax_vjp, softmax_vjp_heads, sum_leading, swap_last

WHERES = ("given", "none", "input", "B")


class LabelSource:
    """A source of targets with no parameters of its own; subclasses override what they add."""

    name = ""
    title = ""
    models = ("linear", "quadratic")
    where = "none"

    def check(self, config):
        """Configuration errors of this source (ValueError naming the field)."""
        if config.mlp_hidden:
            raise ValueError(f"mlp_hidden: only used with targets='mlp' (targets={self.name!r}); "
                             "leave it 0")

    def describe(self, config):
        """The title, with the settings of this config."""
        return self.title

    def param_shapes(self, config, d, m):
        """Names and shapes of the source's own parameters (d features, m classes)."""
        return {}

    def init_param(self, config, name, shape, d, rng, dtype):
        """Initial value of the source's parameter ``name``; ValueError for a name it has not."""
        own = self.param_shapes(config, d, 1)
        raise ValueError(f"params: {name!r} is not a parameter of a {config.model} block with "
                         f"targets={self.name!r} (its own: {', '.join(own) or 'none'})")

    def fused_keys(self, config):
        """Names of the score parameters when C = softmax(Z W^T + b) or softmax(Z W Z^T), else None."""
        return None

    def forward(self, config, Z, params):
        """C_hat(Z) and its cache; only for sources evaluated by the block ("input", "B")."""
        raise TypeError(f"targets={self.name!r}: the block does not compute C (where={self.where!r})")

    def vjp(self, config, C_bar, cache, params):
        """Grads(Z_bar, param grads) of forward; only for "input" and "B" sources."""
        raise TypeError(f"targets={self.name!r}: the block does not compute C (where={self.where!r})")


class Labels(LabelSource):
    """The true labels C, passed in (the theory: feature discovery)."""

    name = "labels"
    title = "true labels C (the theory: feature discovery; an oracle computation at test time)"
    where = "given"


class NoTargets(LabelSource):
    """No targets: the block is the attention sub-flow alone."""

    name = "none"
    title = "no targets (attention sub-flow only)"
    models = ("linear", "quadratic", "memory")
    where = "none"


class OracleCache(NamedTuple):
    r"""Cache of a learned oracle: its input $Z$, its output $\hat C$, and $ZW$ (quadratic) or None."""

    Z: Any
    C: Any
    ZW: Any


class Learned(LabelSource):
    r"""Learned oracle: $\hat C=\sigma(ZW^\top+b)$ (linear, per head) or $\sigma(ZWZ^\top)$
    (quadratic), at the block's input."""

    name = "learned"
    title = "learned oracle C_hat(Z) (label-free)"
    where = "input"

    def param_shapes(self, config, d, m):
        """W (m, d) and b (m,) for the linear model; W (d, d) for the quadratic one."""
        return {"W": (m, d), "b": (m,)} if config.model == "linear" else {"W": (d, d)}

    def init_param(self, config, name, shape, d, rng, dtype):
        """b = 0; W ~ N(0, 1/d) entries (linear) or N(0, 1/d^2) (quadratic)."""
        if name not in self.param_shapes(config, d, 1):
            return super().init_param(config, name, shape, d, rng, dtype)
        xp = array_module()
        if name == "b":
            return xp.zeros(shape, dtype=dtype)
        std = 1.0 / d ** 0.5 if config.model == "linear" else 1.0 / d
        return xp.asarray(rng.normal(0, std, size=shape), dtype=dtype)

    def fused_keys(self, config):
        """("W", "b") for softmax(Z W^T + b), ("W",) for softmax(Z W Z^T)."""
        return ("W", "b") if config.model == "linear" else ("W",)

    def forward(self, config, Z, params):
        r"""$\hat C=\sigma(ZW^\top+b)$ (n, m) or $\sigma(ZWZ^\top)$ (..., n, n); returns (C, OracleCache)."""
        if config.model == "linear":
            C = softmax(Z @ params["W"].T + params["b"], config.heads)
            return C, OracleCache(Z, C, None)
        ZW = Z @ params["W"]
        C = softmax(ZW @ swap_last(Z))
        return C, OracleCache(Z, C, ZW)

    def vjp(self, config, C_bar, cache, params):
        r"""With $\bar S$ the softmax VJP: linear $\bar Z=\bar SW$, $\bar W=\bar S^\top Z$,
        $\bar b=1^\top\bar S$; quadratic $\bar Z=\bar SZW^\top+\bar S^\top ZW$, $\bar W=Z^\top\bar SZ$."""
        Z, C, ZW = cache
        W = params["W"]
        if config.model == "linear":
            S_bar = softmax_vjp_heads(C, C_bar, config.heads)
            return Grads(S_bar @ W, {"W": S_bar.T @ Z, "b": S_bar.sum(axis=0)})
        S_bar = softmax_vjp(C, C_bar)
        Z_bar = S_bar @ Z @ W.T + swap_last(S_bar) @ ZW
        return Grads(Z_bar, {"W": sum_leading(swap_last(Z) @ S_bar @ Z)})


class MLPOracle(LabelSource):
    r"""MLP oracle at the B sub-step: $\hat C=\sigma(\operatorname{act}(ZW_1^\top+b_1)W_2^\top+b_2)$
    (linear, per head) or $\sigma(M(Z)Z^\top)$ with a token-wise MLP $M$ (quadratic)."""

    name = "mlp"
    title = "MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2) at the B sub-step (label-free)"
    where = "B"

    def check(self, config):
        """A hidden width mlp_hidden >= 1."""
        if int(config.mlp_hidden) < 1:
            raise ValueError(f"mlp_hidden: targets='mlp' needs a hidden width >= 1, got {config.mlp_hidden}")

    def describe(self, config):
        """The title with the hidden width and activation."""
        return f"{self.title}, k = {config.mlp_hidden} hidden units, {config.activation}"

    def param_shapes(self, config, d, m):
        """W1 (k, d), b1 (k,), W2 (out, k), b2 (out,): out = m (linear) or d (the token MLP)."""
        return mlp_param_shapes(d, config.mlp_hidden, m if config.model == "linear" else d)

    def init_param(self, config, name, shape, d, rng, dtype):
        """W1, W2 ~ N(0, 1/fan_in), b1 = b2 = 0 (`mlp.init_mlp_param`)."""
        if name not in self.param_shapes(config, d, 1):
            return super().init_param(config, name, shape, d, rng, dtype)
        return init_mlp_param(name, shape, rng, dtype)

    def forward(self, config, Z, params):
        """C_hat(Z) and the MLP's cache (module ``mlp``)."""
        W1, b1, W2, b2 = (params[k] for k in ("W1", "b1", "W2", "b2"))
        if config.model == "linear":
            return mlp_oracle(Z, W1, b1, W2, b2, config.activation, config.heads, check=False)
        return mlp_token_oracle(Z, W1, b1, W2, b2, config.activation)

    def vjp(self, config, C_bar, cache, params):
        """Grads(Z_bar, {"W1", "b1", "W2", "b2"}) of the oracle."""
        vjp = mlp_oracle_vjp if config.model == "linear" else mlp_token_oracle_vjp
        return Grads(*vjp(C_bar, cache))


SOURCES = {}
"""The label sources by name (``BlockConfig.targets``)."""


def register_source(source):
    """Add a label source to the registry (once per name); returns it."""
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"source: expected a non-empty str name, got {name!r}")
    if getattr(source, "where", None) not in WHERES:
        raise ValueError(f"source {name!r}: where must be one of {', '.join(map(repr, WHERES))}, "
                         f"got {getattr(source, 'where', None)!r}")
    if SOURCES.get(name, source) is not source:
        raise ValueError(f"source: the name {name!r} is taken by {SOURCES[name]!r}")
    SOURCES[name] = source
    return source


def get_source(name):
    """The registered source ``name``; ValueError listing the registered names."""
    try:
        return SOURCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"targets: expected one of {', '.join(map(repr, SOURCES))}, got {name!r}") from None


class _Titles(Mapping):
    """name -> title of every registered source, read from the registry when asked."""

    def __getitem__(self, name):
        return SOURCES[name].title

    def __iter__(self):
        return iter(SOURCES)

    def __len__(self):
        return len(SOURCES)


TARGET_TITLES = _Titles()
TARGETS = SOURCES.keys()  # a live view: a registered source is a valid name at once

for _source in (Labels(), NoTargets(), Learned(), MLPOracle()):
    register_source(_source)
