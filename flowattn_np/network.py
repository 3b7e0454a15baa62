"""A deep network of split-flow blocks with a multinomial-regression head.

    Z_0 = E(X)                     identity, or a learned linear map X E^T
    Z_l = block(Z_{l-1})           l = 1..L  (layers.py; eq. 8 or 10)
    logits = Z_L theta^T           linear model (classes), or Z_L theta Z_L^T (quadratic)
    loss = mean cross-entropy      over rows (images, or tokens)

Tied (the paper's form): one theta for every block AND the head, so each block is a
step of the gradient flow of the head's own cross-entropy. Untied (a variant): each
block l has its own parameters ``block{l}.*``. L = 0 is plain multinomial regression.

``forward`` returns (logits, cache); ``backward`` pushes the gradient of the loss back
through the head, every block and the encoding, by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .backend import Workspace, array_module, get_array_module
from .layers import TARGET_TITLES, BlockConfig, init_block_params, make_block, require_labels
from .models import phi_grad, theta_from_phi
from .random import host_rng
from .ops import (
    head_slices,
    mean_cross_entropy,
    mean_cross_entropy_and_grad,
    one_hot,
    sum_leading,
    swap_last,
)

ENCODINGS = ("identity", "linear")


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a Network.

    n_inputs:  input features p per row (784 for Fashion-MNIST images).
    n_classes: m classes of the linear head (ignored by the quadratic model, whose
               targets are tokens).
    layers:    number of blocks L (0 = multinomial regression).
    block:     BlockConfig of every block; its ``model`` also picks the head:
               'linear' and 'memory' -> Z theta^T, 'quadratic' -> Z theta Z^T.
    tied:      one set of block weights shared by all blocks (and theta shared with
               the head), as in the paper; False gives per-block weights (a variant).
    encoding:  'identity' (Z_0 = X, d = p) or 'linear' (Z_0 = X E^T, E: d x p).
    d:         latent width for the linear encoding.
    dtype:     'float32' (fast path) or 'float64' (gradient checks).
    """

    n_inputs: int
    n_classes: int = 10
    layers: int = 0
    block: BlockConfig = field(default_factory=BlockConfig)
    tied: bool = True
    encoding: str = "identity"
    d: int | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if int(self.n_inputs) < 1:
            raise ValueError(f"n_inputs: expected a positive integer, got {self.n_inputs}")
        if int(self.layers) < 0:
            raise ValueError(f"layers: expected L >= 0, got {self.layers}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding: expected 'identity' or 'linear', got {self.encoding!r}")
        if self.encoding == "identity" and self.d not in (None, self.n_inputs):
            raise ValueError(f"d: the identity encoding keeps d = n_inputs = {self.n_inputs}")
        if self.encoding == "linear" and (self.d is None or int(self.d) < 1):
            raise ValueError("d: the linear encoding needs a positive latent width d")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")
        if isinstance(self.block, dict):
            object.__setattr__(self, "block", BlockConfig(**self.block))
        heads = self.block.heads
        if heads is not None and sum(heads) != self.n_classes:
            raise ValueError(f"block.heads: head sizes {heads} must sum to n_classes {self.n_classes}")

    @property
    def width(self):
        """Latent width d of the features Z."""
        return self.n_inputs if self.encoding == "identity" else int(self.d)

    @property
    def head_model(self):
        """The head's model: 'linear' (Z theta^T) or 'quadratic' (Z theta Z^T)."""
        return "quadratic" if self.block.model == "quadratic" else "linear"

    def replace(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self):
        """One line: the architecture and the source of the block targets."""
        form = "tied weights (the paper's form)" if self.tied else "untied per-block weights (a variant)"
        if self.layers == 0:
            return "multinomial regression (L = 0): logits = " + (
                "Z theta Z^T" if self.head_model == "quadratic" else "Z theta^T")
        return f"L = {self.layers} x {self.block.describe()}; {form}"

    def to_dict(self):
        """A JSON-able dict (checkpoints)."""
        out = {k: getattr(self, k) for k in ("n_inputs", "n_classes", "layers", "tied",
                                             "encoding", "d", "dtype")}
        out["block"] = {k: getattr(self.block, k) for k in self.block.__dataclass_fields__}
        if out["block"]["heads"] is not None:
            out["block"]["heads"] = list(out["block"]["heads"])
        return out

    @classmethod
    def from_dict(cls, d):
        """The inverse of to_dict."""
        d = dict(d)
        block = dict(d.pop("block"))
        if block.get("heads") is not None:
            block["heads"] = tuple(block["heads"])
        return cls(block=BlockConfig(**block), **d)


class NetworkCache(NamedTuple):
    """Cache of Network.forward: the input X, the last features Z_L, the head's theta,
    and the cache of each block (in order)."""

    X: Any
    Z: Any
    theta: Any
    block_caches: list


class Network:
    """Encoding, L blocks and a multinomial-regression head, with a hand-derived backward.

    ``params`` is a dict of arrays on the active backend; ``grads`` from ``backward``
    has the same keys. Labels ``y`` are integer class indices (n,), or (n, H) with
    multi-head labels, or (B, n) target-token indices for the quadratic model.
    """

    def __init__(self, config, seed=0, params=None):
        self.config = config
        self.block = make_block(config.block)
        self.params = self.init_params(seed) if params is None else dict(params)
        self._workspace = Workspace()  # training buffers, reused from step to step

    # -- parameters -----------------------------------------------------------
    def init_params(self, seed=0):
        """Fresh parameters from a seeded host RNG (the same on every backend)."""
        cfg = self.config
        rng = host_rng(seed)  # host draws, moved to the backend: same init everywhere
        xp = array_module()
        d, m, dt = cfg.width, cfg.n_classes, cfg.dtype
        p = {}
        if cfg.encoding == "linear":
            p["E"] = xp.asarray(rng.normal(0, 1 / cfg.n_inputs ** 0.5, size=(d, cfg.n_inputs)), dtype=dt)
        head_cfg = cfg.block.replace(model=cfg.head_model, targets="none", learn_h=False, slots=0)
        p.update(init_block_params(head_cfg, d, m, rng, dt))
        if cfg.layers:
            shares_theta = cfg.block.model != "memory"
            if cfg.tied:
                p.update(init_block_params(cfg.block, d, m, rng, dt, with_theta=False))
            else:
                for layer in range(cfg.layers):
                    for k, v in init_block_params(cfg.block, d, m, rng, dt,
                                                  with_theta=shares_theta).items():
                        p[f"block{layer}.{k}"] = v
        return p

    def block_params(self, layer):
        """The parameter dict block ``layer`` sees (shared arrays when tied)."""
        if self.config.tied:
            return self.params
        prefix = f"block{layer}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    # -- targets --------------------------------------------------------------
    def target_matrix(self, y, dtype):
        """One-hot targets C from integer labels y: (n, m), (n, sum heads) or (B, n, n)."""
        cfg = self.config
        xp = get_array_module(y)
        if cfg.head_model == "quadratic":
            B, n = y.shape
            return one_hot(y.reshape(-1), n, dtype).reshape(B, n, n)
        if cfg.block.heads is None:
            return one_hot(y, cfg.n_classes, dtype)
        return xp.concatenate([one_hot(y[:, i], m, dtype) for i, m in enumerate(cfg.block.heads)],
                              axis=1)

    def _block_targets(self, X, y, C):
        """C for the blocks: given, built from y, or None when they do not use labels."""
        if C is not None or not (self.config.layers and self.config.block.uses_labels):
            return C
        require_labels(y, "y", "this network's blocks use")
        return self.target_matrix(y, X.dtype)

    def encode(self, X):
        """Z_0 = X (identity encoding) or X E^T (linear encoding)."""
        return X if self.config.encoding == "identity" else X @ self.params["E"].T

    # -- forward / backward ---------------------------------------------------
    def forward(self, X, y=None, C=None, workspace=None):
        """Logits of a batch; returns (logits, NetworkCache). y (or C) is needed iff the
        blocks use the true labels (targets='labels').

        With a ``workspace`` (training), block outputs go to reused buffers that stay
        valid until the next call with the same workspace.
        """
        cfg = self.config
        C = self._block_targets(X, y, C)
        Z = self.encode(X)
        xp = get_array_module(Z)
        caches = []
        for layer in range(cfg.layers):
            out = None if workspace is None else workspace.get(f"Z{layer + 1}", Z.shape, Z.dtype, xp)
            Z, c = self.block.forward(Z, self.block_params(layer), C, out=out)
            caches.append(c)
        theta = self._head_theta()
        logits = Z @ theta.T if cfg.head_model == "linear" else Z @ theta @ swap_last(Z)
        return logits, NetworkCache(X, Z, theta, caches)

    def _head_theta(self):
        if self.config.head_model == "linear":
            return self.params["theta"]
        return theta_from_phi(self.params["phi"])

    def _head_backward(self, logits_bar, cache, buf):
        """Gradients of the head: returns (Z_bar, {"theta" or "phi": ...})."""
        Z, theta = cache.Z, cache.theta
        if self.config.head_model == "linear":
            Z_bar = get_array_module(Z).matmul(logits_bar, theta, out=buf)
            return Z_bar, {"theta": logits_bar.T @ Z}
        # theta symmetric: one product, not two
        Z_bar = (logits_bar + swap_last(logits_bar)) @ (Z @ theta)
        theta_bar = sum_leading(swap_last(Z) @ logits_bar @ Z)
        return Z_bar, {"phi": phi_grad(theta_bar, self.params["phi"])}

    def backward(self, logits_bar, cache, workspace=None):
        """Gradients of all parameters for upstream logits_bar = d loss / d logits.

        With a ``workspace``, the feature gradients alternate between two reused buffers.
        """
        cfg = self.config
        X, Z = cache.X, cache.Z
        xp = get_array_module(logits_bar)
        bufs = (None, None) if workspace is None else tuple(
            workspace.get(name, Z.shape, Z.dtype, xp) for name in ("Z_bar_a", "Z_bar_b"))
        Z_bar, grads = self._head_backward(logits_bar, cache, bufs[0])
        for layer in reversed(range(cfg.layers)):
            out = bufs[1] if Z_bar is bufs[0] else bufs[0]  # never the buffer being read
            Z_bar, g = self.block.backward(Z_bar, cache.block_caches[layer], out=out)
            prefix = "" if cfg.tied else f"block{layer}."
            for k, v in g.items():
                name = prefix + k
                if name in grads:
                    grads[name] += v  # tied weights: the gradients of all blocks add up
                else:
                    grads[name] = v
        if cfg.encoding == "linear":
            grads["E"] = sum_leading(swap_last(Z_bar) @ X) if X.ndim > 2 else Z_bar.T @ X
        return grads

    def _heads(self):
        return self.config.block.heads if self.config.head_model == "linear" else None

    def loss_from_logits(self, logits, C):
        """Batch-mean cross-entropy -(1/rows) <C, log sigma(logits)> (0-d array)."""
        return mean_cross_entropy(logits, C, self._heads())

    def loss_and_grads(self, X, y):
        """Batch-mean cross-entropy, its gradients, and the logits: (loss, grads, logits).

        d loss / d logits = (sigma(logits) - C) / rows, then ``backward``.
        """
        C = self.target_matrix(y, X.dtype)
        logits, cache = self.forward(X, C=C, workspace=self._workspace)
        loss, logits_bar = mean_cross_entropy_and_grad(logits, C, self._heads())
        return loss, self.backward(logits_bar, cache, workspace=self._workspace), logits

    def loss(self, X, y):
        """Batch-mean cross-entropy (0-d array)."""
        C = self.target_matrix(y, X.dtype)
        return self.loss_from_logits(self.forward(X, C=C)[0], C)

    def logits(self, X, y=None):
        """Logits of a batch (y only for blocks that use the true labels)."""
        return self.forward(X, y)[0]

    def predictions(self, logits):
        """Arg-max predictions from logits: classes (n,), per head (n, H), or tokens (B, n)."""
        heads = self._heads()
        if heads is None:
            return logits.argmax(axis=-1)
        xp = get_array_module(logits)
        return xp.stack([logits[:, sl].argmax(axis=1) for sl in head_slices(logits.shape[-1], heads)],
                        axis=1)

    def predict(self, X, y=None):
        """Class (or target-token) predictions; y only for blocks that use the true labels."""
        return self.predictions(self.logits(X, y))

    def features(self, X, y=None):
        """The iterates [Z_0, Z_1, ..., Z_L] of a batch (for Figure 1)."""
        C = self._block_targets(X, y, None)
        Z = self.encode(X)
        out = [Z]
        for layer in range(self.config.layers):
            Z, _ = self.block.forward(Z, self.block_params(layer), C)
            out.append(Z)
        return out

    def describe(self):
        """One line: architecture, weights and the source of the block targets."""
        return self.config.describe()

    def step_sizes(self):
        """Learned step sizes as Python floats ({} when h is fixed): report their sign."""
        if not self.config.block.learn_h or not self.config.layers:
            return {}
        return {k: float(v) for k, v in self.params.items() if k == "h" or k.endswith(".h")}


__all__ = ["Network", "NetworkConfig", "TARGET_TITLES"]
