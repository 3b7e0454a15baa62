"""A deep network of split-flow blocks with a multinomial-regression head.

    Z_0 = E(X)                     identity, or a learned linear map X E^T
    Z_l = block(Z_{l-1})           l = 1..L  (blocks/split.py; eq. 8 or 10)
    logits = Z_L theta^T           linear model (classes), or Z_L theta Z_L^T (quadratic)
    loss = mean cross-entropy      over rows (images, or tokens)

Tied (the paper's form): one theta for every block AND the head, so each block is a
step of the gradient flow of the head's own cross-entropy. Untied (a variant): each
block l has its own parameters ``block{l}.*``. L = 0 is plain multinomial regression.

``forward`` returns (logits, cache); ``backward`` pushes the gradient of the loss back
through the head, every block and the encoding, by hand.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from flowattn_np.backend import (
    Workspace,
    array_module,
    arrays_description,
    backend_of,
    check_on_backend,
    check_same_backend,
    get_array_module,
    on_host,
)
from flowattn_np import threads as thread_policy, validate
from flowattn_np.blocks.config import TARGET_TITLES, BlockConfig, require_labels
from flowattn_np.blocks.implementations import make_block, network_pass
from flowattn_np.blocks.network_pass import (
    block_params,
    encode,
    head_heads,
    target_matrix,
)
from flowattn_np.blocks.params import block_param_shapes, init_block_param
from flowattn_np.random import host_rng
from flowattn_np.equations.sphere import check_nonzero_rows
from flowattn_np.equations.ops import (
    head_slices,
    mean_cross_entropy,
)

ENCODINGS = ("identity", "linear")


@dataclass(frozen=True)
class NetworkConfig:
    r"""Architecture of a `Network`.

    Parameters
    ----------
    n_inputs : int
        Input features $p$ per row (784 for Fashion-MNIST images).
    n_classes : int
        Classes $m$ of the linear head (ignored by the quadratic model, whose targets are
        tokens).
    layers : int
        Number of blocks $L$ (0 = multinomial regression).
    block : BlockConfig
        Every block's configuration; its ``model`` also picks the head: ``"linear"`` and
        ``"memory"`` give $Z\theta^\top$, ``"quadratic"`` gives $Z\theta Z^\top$.
    tied : bool
        One set of block weights shared by all blocks (and $\theta$ shared with the head),
        as in the paper; False gives per-block weights (a variant).
    encoding : str
        ``"identity"`` ($Z_0=X$, $d=p$) or ``"linear"`` ($Z_0=XE^\top$, $E$ of shape (d, p)).
    d : int, optional
        Latent width for the linear encoding.
    dtype : str
        ``"float32"`` (fast path) or ``"float64"`` (gradient checks).
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
        for name, low in (("n_inputs", 1), ("n_classes", 1), ("layers", 0)):
            object.__setattr__(self, name, validate.check_count(name, getattr(self, name), low))
        if self.d is not None:
            object.__setattr__(self, "d", validate.check_count("d", self.d, 1))
        if not isinstance(self.tied, bool):
            raise TypeError(f"tied: expected True or False, got {self.tied!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding: expected 'identity' or 'linear', got {self.encoding!r}")
        if self.encoding == "identity" and self.d not in (None, self.n_inputs):
            raise ValueError(f"d: the identity encoding keeps d = n_inputs = {self.n_inputs}")
        if self.encoding == "linear" and self.d is None:
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
        """Latent width $d$ of the features $Z$."""
        return self.n_inputs if self.encoding == "identity" else int(self.d)

    @property
    def normalises_input(self):
        """Whether Z_0 is normalised: the blocks keep their rows on a manifold (L >= 1)."""
        return bool(self.layers) and self.block.normalised

    @property
    def head_model(self):
        r"""The head's model: ``"linear"`` ($Z\theta^\top$) or ``"quadratic"`` ($Z\theta Z^\top$)."""
        return "quadratic" if self.block.model == "quadratic" else "linear"

    @property
    def head_block(self):
        """The BlockConfig of the head: the model's theta (or phi) alone."""
        return self.block.replace(model=self.head_model, targets="none", learn_h=False, slots=0,
                                  mlp_hidden=0)

    def param_count(self):
        """Number of parameter arrays (arithmetic only: nothing is built)."""
        d, m = self.width, self.n_classes
        count = (self.encoding == "linear") + len(block_param_shapes(self.head_block, d, m))
        if self.layers:
            per_block = block_param_shapes(self.block, d, m, with_theta=not self.tied
                                           and self.block.model != "memory")
            count += len(per_block) * (1 if self.tied else self.layers)
        return count

    def param_layout(self):
        """Every parameter as name -> (BlockConfig it belongs to, its name there, shape), in
        the order ``Network.init_params`` draws them; the encoding E has BlockConfig None."""
        d, m = self.width, self.n_classes
        layout = {"E": (None, "E", (d, self.n_inputs))} if self.encoding == "linear" else {}
        for k, shape in block_param_shapes(self.head_block, d, m).items():
            layout[k] = (self.head_block, k, shape)
        if self.layers:
            shares_theta = self.block.model != "memory"
            blocks = [""] if self.tied else [f"block{layer}." for layer in range(self.layers)]
            for prefix in blocks:
                own = block_param_shapes(self.block, d, m, with_theta=bool(prefix) and shares_theta)
                layout.update({prefix + k: (self.block, k, shape) for k, shape in own.items()})
        return layout

    def param_shapes(self):
        """Name -> shape of every parameter (arithmetic only: nothing is built)."""
        return {k: shape for k, (_, _, shape) in self.param_layout().items()}

    def check_param_shapes(self, shapes, source="params"):
        """Raise a ValueError naming the parameter unless ``shapes`` (name -> shape) has
        exactly this configuration's parameters and shapes. ``source`` names where they
        come from (an argument or a file). The counts are compared first (arithmetic), so
        a configuration that declares far more parameters than ``shapes`` holds is refused
        before its names are listed."""
        if self.param_count() > 2 * len(shapes) + 64:  # listing the names would cost more
            raise ValueError(f"{source}: the configuration ({self.describe()}) has "
                             f"{self.param_count()} parameter arrays, got {len(shapes)}")
        expected = self.param_shapes()
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        if missing:
            raise ValueError(f"{source}: lacks parameters {missing} for its configuration")
        if extra:
            raise ValueError(f"{source}: has parameters {extra} that its configuration lacks")
        for name, shape in expected.items():
            if tuple(shapes[name]) != tuple(shape):
                raise ValueError(f"{source}: parameter {name!r} has shape {tuple(shapes[name])}, "
                                 f"expected {tuple(shape)} for its configuration")

    def replace(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self):
        """One line: the architecture and the source of the block targets."""
        form = "tied weights (the paper's form)" if self.tied else "untied per-block weights (a variant)"
        if self.layers == 0:
            return "multinomial regression (L = 0): logits = " + (
                "Z theta Z^T" if self.head_model == "quadratic" else "Z theta^T")
        norm = ""
        if self.normalises_input:
            norm = ("; Z_0 = R(encoding) on the sphere |z| = sqrt(d) (RMS normalisation)"
                    if self.block.norm == "sphere" else
                    "; Z_0 = R(encoding) on the LayerNorm manifold {mean 0, |z| = sqrt(d)}")
        return f"L = {self.layers} x {self.block.describe()}; {form}{norm}"

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


# work per part (see Network.batch_parts) below which a batch is not split: on a 2-core
# Xeon two threads ran the quadratic network's step at (32, 128, 64) 1.8x and at
# (64, 64, 32) 1.3-1.45x as fast as one, at (16, 16, 32) half as fast; the linear one at
# batch 256 and 512 no faster, at 1024 1.1-1.6x
THREAD_MIN_PART = 1 << 21
_POOLS = {}


def _thread_pool(threads):
    """One shared pool of ``threads`` worker threads per size, made on first use."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowattn")
    return _POOLS[threads]


class Network:
    r"""Encoding, $L$ blocks and a multinomial-regression head, with a hand-derived backward.

    $$
    Z_0=E(X),\qquad Z_{l+1}=\text{block}(Z_l),\qquad \text{logits}=Z_L\theta^\top \ \text{ or } \ Z_L\theta Z_L^\top
    $$

    ``params`` is a dict of arrays on the active backend; the ``grads`` of `backward` have
    the same keys. Labels ``y`` are integer class indices, shape (n,); or (n, H) with
    multi-head labels; or (B, n) target-token indices for the quadratic model.

    Parameters
    ----------
    config : NetworkConfig
        The architecture.
    seed : int
        Seed of the initial parameters (drawn on the host: the same on every backend).
    params : dict of array, optional
        Parameters to use instead (checked against the architecture).
    fused : bool
        Whether to run a registered fast path where one computes this configuration (the
        fused eq. (8) block, the fused self-attention pass; ``blocks/implementations.py``);
        False runs the readable pass, block after block.
    threads : int, optional
        Host threads that share a training batch in `loss_and_grads` (see there); 1 runs
        it in the calling thread. Default: the package's thread policy (``threads.py``:
        `set_threads`, ``FLOWATTN_THREADS``, or the CPUs this process may use), read at
        every call.
    """

    def __init__(self, config, seed=0, params=None, fused=True, threads=None):
        if not isinstance(config, NetworkConfig):
            raise TypeError(f"config: expected a NetworkConfig, got {type(config).__name__}")
        self.config = config
        # the one place a pass is chosen: a registered fast path where one supports the
        # configuration, else the readable block-by-block pass (fused=False: always that)
        self.implementation = network_pass(config, fast=bool(fused))
        self.block = make_block(config.block, fast=bool(fused))  # what `features` steps through
        self.fused = self.implementation.fast or self.block.fast  # whether a fast path runs
        if params is None:
            self.params = self.init_params(seed)
        else:
            self.params = self.check_params(params)
        self._threads = None if threads is None else validate.check_count("threads", threads, minimum=1)
        self._workspace = Workspace()  # training buffers, reused from step to step
        self._part_workspaces = []  # one per batch part when threads > 1

    @property
    def threads(self):
        """Host threads that share a large batch: the argument, else the thread policy's."""
        return thread_policy.policy(self._threads).threads

    # -- parameters -----------------------------------------------------------
    def init_params(self, seed=0):
        """Fresh parameters from a seeded host RNG (the same on every backend).

        Names, shapes and order: ``NetworkConfig.param_layout``; each block's draws:
        ``blocks.params.init_block_param``.
        """
        cfg = self.config
        rng = host_rng(seed)  # host draws, moved to the backend: same init everywhere
        xp = array_module()
        d, dt = cfg.width, cfg.dtype
        p = {}
        for name, (block_cfg, key, shape) in cfg.param_layout().items():
            if block_cfg is None:  # the encoding E
                p[name] = xp.asarray(rng.normal(0, 1 / cfg.n_inputs ** 0.5, size=shape), dtype=dt)
            else:
                p[name] = init_block_param(block_cfg, key, shape, d, rng, dt)
        return p

    def check_params(self, params, source="params"):
        """A dict copy of ``params`` after checking names, shapes (``check_param_shapes``),
        dtype (the configuration's) and finiteness, naming the first bad parameter."""
        if not isinstance(params, dict):
            raise TypeError(f"{source}: expected a dict of arrays, got {type(params).__name__}")
        for name, a in params.items():
            validate.check_array(f"{source}[{name!r}]", a)
        self.config.check_param_shapes({k: a.shape for k, a in params.items()}, source)
        for name, a in params.items():
            if a.dtype != self.config.dtype:
                raise TypeError(f"{source}[{name!r}]: expected dtype {self.config.dtype} "
                                f"(the configuration's), got {a.dtype}")
        return dict(params)

    def block_params(self, layer):
        """The parameter dict block ``layer`` sees (shared arrays when tied)."""
        return block_params(self.config, self.params, layer)

    # -- targets --------------------------------------------------------------
    def check_labels(self, y, rows, name="y"):
        """Validate integer labels for the rows of X (``rows`` = X.shape[:-1]): (n,) classes
        in [0, m), (n, H) per head, or (B, n) target tokens in [0, n). Returns y."""
        cfg, rows = self.config, tuple(rows)
        heads = self._heads()
        if cfg.head_model == "quadratic":
            validate.check_class_indices(name, y, rows[-1])
            validate.check_shape(name, y, rows, "a target token for each token of X")
        elif heads is None:
            validate.check_class_indices(name, y, cfg.n_classes)
            validate.check_shape(name, y, rows, "a class for each row of X")
        else:
            validate.check_class_indices(name, y, max(heads))
            validate.check_shape(name, y, rows + (len(heads),), "a class per head for each row")
            for i, size in enumerate(heads):
                validate.check_class_indices(f"{name}[:, {i}]", y[:, i], size)
        return y

    def target_matrix(self, y, dtype, check=True):
        """One-hot targets $C$ from integer labels.

        Parameters
        ----------
        y : array of int
            Labels, shape (n,), (n, H) or (B, n).
        dtype : str or dtype
            Floating dtype of $C$.
        check : bool
            Check the labels' range and shape first; False for labels validated once.

        Returns
        -------
        array
            $C$, shape (n, m), (n, sum of heads) or (B, n, n).
        """
        if check:
            self.check_labels(y, y.shape[:-1] if self._heads() else y.shape)
        return target_matrix(self.config, y, dtype)

    def _block_targets(self, X, y, C, check=True):
        """C for the blocks: given, built from y, or None when they do not use labels."""
        if C is not None or not (self.config.layers and self.config.block.uses_labels):
            return C
        require_labels(y, "y", "this network's blocks use")
        if check:
            self.check_labels(y, X.shape[:-1])
        return self.target_matrix(y, X.dtype, check=False)

    def check_input(self, X, name="X"):
        """Validate a batch X and return it in the network's dtype.

        X: (n, p) rows (or (B, n, p) sequences for the quadratic model), float32 or
        float64, finite, at least one row, p = n_inputs.
        """
        cfg = self.config
        validate.check_array(name, X, ndim=None if cfg.head_model == "quadratic" else 2, min_ndim=2)
        if X.dtype.name not in ("float32", "float64"):
            raise TypeError(f"{name}: expected float32 or float64 (the network computes in "
                            f"{cfg.dtype}), got {X.dtype}")
        if X.shape[-1] != cfg.n_inputs:
            raise ValueError(f"{name}: expected {cfg.n_inputs} features per row (n_inputs), "
                             f"got shape {tuple(X.shape)}")
        if X.size == 0:
            raise ValueError(f"{name}: expected at least one row, got shape {tuple(X.shape)}")
        if cfg.normalises_input and cfg.encoding == "identity":  # Z_0 = R(X) needs a direction
            check_nonzero_rows(name, X, centred=cfg.block.norm == "layer", what="the input normalisation")
        return X.astype(cfg.dtype, copy=False)

    def _check_targets(self, X, C):
        """Validate given block targets C: one distribution per row of X (per head)."""
        validate.check_array("C", C)
        if self.config.head_model == "quadratic":
            shape = X.shape[:-1] + (X.shape[-2],)
        else:
            shape = (X.shape[0], sum(self._heads() or (self.config.n_classes,)))
        validate.check_shape("C", C, shape, "targets for each row of X")
        validate.check_same_dtype(X=X, C=C)
        validate.check_labels("C", C, self._heads())

    def encode(self, X):
        r"""$Z_0=X$ (identity encoding) or $XE^\top$ (linear encoding), followed by the blocks' normalisation $R$ when they use one (so that $Z_0$ lies on their manifold).
        """
        return encode(self.config, self.params, X)[0]

    # -- forward / backward ---------------------------------------------------
    @thread_policy.compute
    def forward(self, X, y=None, C=None, workspace=None, check=True):
        """Logits of a batch.

        Parameters
        ----------
        X : array, shape (n, p)
            Inputs (or (B, n, p) sequences for the quadratic model).
        y : array of int, optional
            Labels; ``y`` or ``C`` is needed if and only if the blocks use the true labels
            (``targets="labels"``).
        C : array, optional
            Targets, instead of ``y``.
        workspace : Workspace, optional
            When training: block outputs go to reused buffers that stay valid until the next
            call with the same workspace.
        check : bool
            Validate ``X``, ``y`` and ``C`` first (``X`` in another floating dtype is cast to the
            network's); False on the training path, whose inputs were validated once.

        Returns
        -------
        logits : array
            Shape (n, m), or (B, n, n) for the quadratic model.
        cache : NetworkCache
            What `backward` needs.
        """
        self.check_inputs_backend(X=X, y=y, C=C)  # types only: no sync, also when check=False
        if check:
            X = self.check_input(X)
            if C is not None:
                self._check_targets(X, C)
        C = self._block_targets(X, y, C, check)
        return self.implementation.forward(self.params, X, C, workspace)

    def check_inputs_backend(self, **inputs):
        """BackendError naming each input that is not on the parameters' backend (types
        only: no device sync)."""
        where = backend_of(self.params["phi" if self.config.head_model == "quadratic" else "theta"])
        check_same_backend(**{f"params[{k!r}]": v for k, v in self.params.items()})
        check_on_backend(where, f"the network's parameters are {arrays_description(where)}", **inputs)

    @thread_policy.compute
    def backward(self, logits_bar, cache, workspace=None):
        r"""Gradients of all parameters for the upstream gradient of the logits.

        Parameters
        ----------
        logits_bar : array
            $\partial\,\text{loss}/\partial\,\text{logits}$, of the logits' shape.
        cache : NetworkCache
            From `forward`.
        workspace : Workspace, optional
            The feature gradients alternate between two reused buffers.

        Returns
        -------
        dict
            Gradients keyed like ``params``.
        """
        return self.implementation.backward(self.params, logits_bar, cache, workspace)

    def _heads(self):
        return head_heads(self.config)

    def loss_from_logits(self, logits, C, check=False):
        r"""Batch-mean cross-entropy $-\frac{1}{\text{rows}}\langle C,\log\sigma(\text{logits})\rangle$, a 0-d array.
        """
        return mean_cross_entropy(logits, C, self._heads(), check=check)

    @thread_policy.compute
    def loss_and_grads(self, X, y):
        r"""Batch-mean cross-entropy, its gradients and the logits: ``(loss, grads, logits)``.

        $$
        \frac{\partial\,\text{loss}}{\partial\,\text{logits}}=\frac{\sigma(\text{logits})-C}{\text{rows}},
        $$

        then `backward`.

        With ``threads`` > 1 on the host, a batch large enough (`batch_parts`) is cut along
        its first axis (rows, or sequences) into parts that run in parallel threads, each
        with its own buffers: NumPy releases the interpreter lock inside BLAS and its
        element-wise loops, so the parts use separate cores. The rows are independent, so
        $\text{loss}=\sum_k\frac{\text{rows}_k}{\text{rows}}\text{loss}_k$ and likewise every
        gradient. BLAS runs at one thread meanwhile (the thread policy, ``threads.py``), so
        the parts' products do not compete for the same cores.
        """
        self.check_inputs_backend(X=X, y=y)
        parts = self.batch_parts(X)
        if len(parts) == 1:
            return self._loss_and_grads(X, y, self._workspace)
        while len(self._part_workspaces) < len(parts):
            self._part_workspaces.append(Workspace())
        pool = _thread_pool(len(parts))
        results = [f.result() for f in [pool.submit(self._loss_and_grads, X[part], y[part], ws)
                                        for part, ws in zip(parts, self._part_workspaces)]]
        xp = get_array_module(X)
        weights = [(part.stop - part.start) / X.shape[0] for part in parts]
        loss = xp.asarray(sum(w * r[0] for w, r in zip(weights, results)))
        grads = {k: sum(w * r[1][k] for w, r in zip(weights, results)) for k in results[0][1]}
        return loss, grads, xp.concatenate([r[2] for r in results])

    def batch_parts(self, X):
        """The slices of X's first axis that `loss_and_grads` runs in parallel: ``threads``
        near-equal parts on the host when each keeps a work of at least ``THREAD_MIN_PART``
        (smaller parts cost more in thread hand-offs than they save), else the whole batch.

        The work is X's size times the logits' width (n tokens for the quadratic model, the
        classes for the linear one), in proportion to the products of a step. The quadratic
        model's tokens attend to each other, so only its sequences are parts: a single
        sequence (n, p) is never cut.
        """
        quadratic = self.config.head_model == "quadratic"
        width = X.shape[-2] if quadratic else self.config.n_classes
        count = min(self.threads, X.shape[0], X.size * width // THREAD_MIN_PART)
        if count < 2 or (quadratic and X.ndim < 3) or not on_host(X):
            return [slice(0, X.shape[0])]
        bounds = [round(k * X.shape[0] / count) for k in range(count + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _loss_and_grads(self, X, y, workspace):
        C = self._block_targets(X, y, None, check=False)  # the blocks' targets, if they use labels
        return self.implementation.loss_and_grads(self.params, X, y, C, workspace)

    @thread_policy.compute
    def loss(self, X, y):
        """Batch-mean cross-entropy (0-d array), computed as loss_and_grads computes it."""
        self.check_inputs_backend(X=X, y=y)
        X = self.check_input(X)
        self.check_labels(y, X.shape[:-1])
        return self.implementation.loss(self.params, X, y, self._block_targets(X, y, None, check=False))

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

    @thread_policy.compute
    def features(self, X, y=None):
        r"""The iterates $[Z_0, Z_1, \dots, Z_L]$ of a batch (for Figure 1)."""
        self.check_inputs_backend(X=X, y=y)
        X = self.check_input(X)
        C = self._block_targets(X, y, None)
        Z = self.encode(X)
        out = [Z]
        for layer in range(self.config.layers):
            Z, _ = self.block.forward(Z, self.block_params(layer), C, check=False)
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
