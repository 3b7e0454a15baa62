"""The MLP alone as a classifier: the control for the MLP-oracle networks."""

from __future__ import annotations

from dataclasses import dataclass

from flowattn_np.equations.ops import mean_cross_entropy, one_hot, softmax
from flowattn_np.random import host_rng
from flowattn_np.validate import check_array, check_class_indices, check_shape
from flowattn_np.equations.mlp import check_activation, init_mlp_params, mlp_logits, mlp_logits_vjp


# ---------------------------------------------------------------- the MLP alone, as a classifier

@dataclass(frozen=True)
class MLPClassifierConfig:
    """The MLP alone as a classifier (the control for the MLP-oracle networks).

    n_inputs: p features per row; n_classes: m; hidden: k units; activation: 'gelu'
    (tanh form) or 'relu'; dtype: 'float32' or 'float64'.
    """

    n_inputs: int
    n_classes: int = 10
    hidden: int = 64
    activation: str = "gelu"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("n_inputs", "n_classes", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        check_activation(self.activation)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")

    def describe(self):
        """One line naming the classifier."""
        return (f"MLP alone: softmax({self.activation}(X W1^T + b1) W2^T + b2), "
                f"k = {self.hidden} hidden units (no attention)")


class MLPClassifier:
    """softmax(MLP(X)) trained on the batch-mean cross-entropy; the interface of a Network
    that ``fit`` and ``evaluate`` use (params, loss_and_grads, forward, predictions, ...).

    logits = act(X W1^T + b1) W2^T + b2; X: (n, p), labels y: (n,) integers.
    """

    def __init__(self, config, seed=0, params=None):
        self.config = config
        self.params = dict(params) if params is not None else init_mlp_params(
            config.n_inputs, config.hidden, config.n_classes, host_rng(seed), config.dtype)

    def check_input(self, X, name="X"):
        """Validate a batch X: (n, p) rows, floating, finite, p = n_inputs; returned in the
        classifier's dtype."""
        check_array(name, X, ndim=2)
        if X.shape[-1] != self.config.n_inputs or X.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one row of {self.config.n_inputs} features "
                             f"(n_inputs), got shape {tuple(X.shape)}")
        return X.astype(self.config.dtype, copy=False)

    def check_labels(self, y, rows, name="y"):
        """Validate integer labels: one class in [0, m) for each of the ``rows`` of X. Returns y."""
        check_class_indices(name, y, self.config.n_classes)
        check_shape(name, y, tuple(rows), "a class for each row of X")
        return y

    def target_matrix(self, y, dtype, check=True):
        """One-hot targets C (n, m) from integer labels y (n,); ``check=False`` skips the range check."""
        return one_hot(y, self.config.n_classes, dtype, check=check)

    def forward(self, X, y=None, C=None, workspace=None, check=True):
        """Logits of a batch and the MLP's cache: (logits (n, m), MLPCache). Labels are not used;
        ``check=False`` skips the input check (a device sync on CuPy)."""
        if check:
            X = self.check_input(X)
        p = self.params
        return mlp_logits(X, p["W1"], p["b1"], p["W2"], p["b2"], self.config.activation)

    def loss_from_logits(self, logits, C):
        """Batch-mean cross-entropy -(1/n) <C, log softmax(logits)> (0-d array)."""
        return mean_cross_entropy(logits, C)

    def loss_and_grads(self, X, y):
        """(loss, grads, logits): d loss / d logits = (softmax(logits) - C) / n, then mlp_logits_vjp."""
        C = self.target_matrix(y, X.dtype, check=False)
        logits, cache = self.forward(X, check=False)
        G = softmax(logits)
        G -= C
        G /= X.shape[0]
        return self.loss_from_logits(logits, C), mlp_logits_vjp(G, cache)[1], logits

    def loss(self, X, y):
        """Batch-mean cross-entropy (0-d array)."""
        return self.loss_from_logits(self.forward(X)[0], self.target_matrix(y, X.dtype))

    def predictions(self, logits):
        """Arg-max classes (n,)."""
        return logits.argmax(axis=-1)

    def predict(self, X, y=None):
        """Class predictions (n,); no labels needed."""
        return self.predictions(self.forward(X)[0])

    def step_sizes(self):
        """{}: no blocks, no step size."""
        return {}

    def describe(self):
        """One line naming the classifier."""
        return self.config.describe()


__all__ = ["MLPClassifier", "MLPClassifierConfig"]
