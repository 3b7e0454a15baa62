"""Training: one step, seeded minibatches, the ``fit`` loop, evaluation.

Read in this order:

* ``train_step(net, optimizer, X, y)``: one step of gradient descent (forward, the
  hand-written backward, the update);
* ``minibatches``: the seeded order of the rows;
* ``fit``: epochs of ``train_step`` over ``minibatches``, with a progress bar, a guard
  against a NaN/inf loss, validation and checkpoints; its options are a ``FitConfig``.

Everything stays on the active backend: the data is moved there once, each epoch's
shuffled order once, and the loss and accuracy for the progress bar are summed on the
device and fetched once per logging interval, not per step. Checkpoints are in
``checkpoint.py`` (``save_checkpoint``/``load_checkpoint`` are re-exported here).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from . import validate
from .backend import Workspace, asarray, get_array_module, get_backend, quiet_errors, to_float
from .checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from .optim import SGD
from .random import RNG, host_rng

__all__ = ["FitConfig", "History", "NonFiniteGuard", "NonFiniteLossError", "evaluate", "fit",
           "gather_batch", "load_checkpoint", "minibatches", "restore_optimizer", "save_checkpoint",
           "train_step"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the parameters were kept at their last finite state."""


def train_step(net, optimizer, X, y, before_update=None):
    """One step of minibatch gradient descent on the batch (X, y).

    The batch-mean cross-entropy and its gradients (hand-written backward pass),
    then the optimiser's in-place update of ``net.params``. ``before_update(loss,
    logits)``, if given, runs between the two (``fit`` counts correct predictions
    there and stops on a NaN loss before it reaches the parameters).

    Returns the loss as a 0-d array on the device: reading it (``float``) is a host sync.
    """
    loss, grads, logits = net.loss_and_grads(X, y)
    if before_update is not None:
        before_update(loss, logits)
    optimizer.step(grads)
    return loss


def minibatches(n, batch_size, rng=None, shuffle=True, drop_last=False, on_device=False):
    """Yield index arrays (slices when not shuffled) covering range(n) in batches.

    The order is a permutation drawn on the host from ``rng`` (a seed or a NumPy
    Generator), so the same seed gives the same batches on every backend. With
    ``on_device`` the permutation is moved to the active backend once and the
    batches are views of it (no host-device copy per batch).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    stop = n - (n % batch_size) if drop_last else n
    if not shuffle:  # plain slices: no index array needed
        for start in range(0, stop, batch_size):
            yield slice(start, min(start + batch_size, n))
        return
    gen = rng if hasattr(rng, "permutation") else host_rng(rng)
    order = gen.permutation(n)
    if on_device:
        order = asarray(order)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def gather_batch(X, y, idx, workspace, noise=0.0, noise_rng=None):
    """The rows ``idx`` of (X, y), plus ``noise * eps`` (eps ~ N(0, 1) from ``noise_rng``) if noise > 0.

    The batch is gathered (and noised) in place into buffers of ``workspace``: no
    fresh batch arrays per step. It is valid until the next call with the same workspace.
    """
    xp = get_array_module(X)
    shape = (idx.shape[0],) + X.shape[1:]
    X_batch = xp.take(X, idx, axis=0, out=workspace.get("X_batch", shape, X.dtype, xp))
    if noise:
        eps = noise_rng.normal(shape, X.dtype, out=workspace.get("noise", shape, X.dtype, xp))
        eps *= noise
        X_batch += eps
    return X_batch, y[idx]


def _accuracy_sum(net, logits, y):
    """Number of correct predictions (per head / per token) in a batch, on the device."""
    return (net.predictions(logits) == y).sum()


def evaluate(net, X, y, batch_size=2048):
    """Mean cross-entropy and accuracy of ``net`` on (X, y), as Python floats.

    For a network whose blocks use the true labels (targets='labels') this is an
    oracle computation: the labels enter the features before the prediction.
    """
    X, y = asarray(X), asarray(y)
    n = X.shape[0]
    loss_sum, correct = 0.0, 0.0
    for start in range(0, n, batch_size):
        X_batch, y_batch = X[start:start + batch_size], y[start:start + batch_size]
        C = net.target_matrix(y_batch, X_batch.dtype)
        logits, _ = net.forward(X_batch, C=C)
        loss_sum = loss_sum + net.loss_from_logits(logits, C) * X_batch.shape[0]
        correct = correct + _accuracy_sum(net, logits, y_batch)
    per_row = y[:1].size
    return {"loss": to_float(loss_sum) / n, "accuracy": to_float(correct) / (n * per_row)}


@dataclass
class History:
    """Per-epoch records of ``fit``: a list of dicts (train_loss, train_accuracy,
    val_loss, val_accuracy, lr, seconds, samples_per_s, h)."""

    epochs: list = field(default_factory=list)

    def __len__(self):
        return len(self.epochs)

    def column(self, key):
        """One field across the epochs, e.g. column("val_accuracy")."""
        return [e.get(key) for e in self.epochs]

    def to_dict(self):
        """A JSON-able dict."""
        return {"epochs": list(self.epochs)}


@dataclass(frozen=True)
class FitConfig:
    """Options of the ``fit`` loop (the keyword arguments of ``fit`` of the same names).

    epochs, batch_size: passes over the data and rows per step.
    lr:           learning rate of the default optimiser, SGD(lr, momentum 0.9).
    seed:         seeds the minibatch order (and, as seed + 1, the noise).
    noise:        sigma > 0 adds seeded Gaussian noise sigma * eps to every training batch.
    progress:     show a progress bar; log_every: steps between its loss/accuracy updates.
    check_every:  steps between NaN/inf checks of the loss (None: every step on NumPy,
                  every ``log_every`` steps on CuPy, where a check is a device sync).
    checkpoint:   a path written atomically after every epoch, or None.
    desc:         the progress bar's label; check_inputs: validate X (finite, floating).
    """

    epochs: int = 5
    batch_size: int = 256
    lr: float = 0.1
    seed: int = 0
    noise: float = 0.0
    progress: bool = True
    log_every: int = 25
    check_every: int | None = None
    checkpoint: str | None = None
    desc: str = "train"
    check_inputs: bool = True

    def __post_init__(self):
        if int(self.epochs) < 0:
            raise ValueError(f"epochs: expected a non-negative integer, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size}")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise: expected a finite sigma >= 0, got {self.noise}")
        if int(self.log_every) < 1:
            raise ValueError(f"log_every: expected a positive integer, got {self.log_every}")
        if self.check_every is not None and int(self.check_every) < 1:
            raise ValueError(f"check_every: expected a positive integer or None, got {self.check_every}")

    def steps_between_checks(self):
        """check_every, or its backend-dependent default."""
        if self.check_every is not None:
            return int(self.check_every)
        return 1 if get_backend() == "numpy" else int(self.log_every)


class NonFiniteGuard:
    """Stops training on a NaN/inf loss, with the parameters at their last finite state.

    ``check(loss)`` runs before each update. With ``every == 1`` each loss is read
    (a host sync) and a bad one stops training before it reaches the parameters. With
    ``every > 1`` the losses are summed on the device (NaN/inf propagate) and read
    every ``every`` steps; on a bad sum the parameters go back to the copy taken at
    the previous check.
    """

    def __init__(self, params, every):
        self.params, self.every = params, int(every)
        self.step, self.epoch = 0, 0
        self.pending, self.snapshot = 0.0, None

    def check(self, loss):
        """Record the loss of step ``self.step``; raise NonFiniteLossError if it is bad."""
        if self.every == 1:
            if not math.isfinite(to_float(loss)):
                raise self.error(loss, "the values before this step")
        else:
            if self.step % self.every == 0:  # the state the last check vouched for
                self.snapshot = {k: v.copy() for k, v in self.params.items()}
            self.pending = self.pending + loss
            if (self.step + 1) % self.every == 0:
                if not math.isfinite(to_float(self.pending)):
                    self.restore()
                    raise self.error(self.pending, f"their values {self.every} steps earlier")
                self.pending = 0.0
        self.step += 1

    def restore(self):
        """Put the last checked copy back into the parameters (in place)."""
        for k, v in (self.snapshot or {}).items():
            self.params[k][...] = v

    def error(self, value, restored):
        """The NonFiniteLossError for a bad ``value``, saying what the parameters are now."""
        return NonFiniteLossError(
            f"fit: the training loss became non-finite ({to_float(value)}) at epoch {self.epoch + 1}, "
            f"step {self.step + 1}; the parameters were restored to {restored}. Check the inputs for "
            "NaN/inf (fit validates X unless check_inputs=False) or lower the learning rate."
        )


class _EpochMeter:
    """Loss and correct predictions summed on the device over one epoch; read rarely."""

    def __init__(self, net):
        self.net = net
        self.loss_sum, self.correct, self.seen, self.per_row = 0.0, 0.0, 0, 1
        self.t0 = time.perf_counter()

    def add(self, loss, logits, y):
        """Add one batch: its mean loss, logits and labels (no host read)."""
        rows = logits.shape[0]
        self.loss_sum = self.loss_sum + loss * rows
        self.correct = self.correct + _accuracy_sum(self.net, logits, y)
        self.seen += rows
        self.per_row = y[:1].size  # labels per row: heads, or tokens per sequence

    def postfix(self):
        """The progress bar's loss, accuracy and speed so far (host reads)."""
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        return {"loss": f"{to_float(self.loss_sum) / self.seen:.4f}",
                "acc": f"{to_float(self.correct) / (self.seen * self.per_row):.3f}",
                "rows_per_s": f"{self.seen / seconds:.0f}"}


def progress_bar(total, desc, enabled):
    """A tqdm bar of ``total`` batches (plain lines when output is not a terminal)."""
    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


def _prepare_data(net, X, y, X_val, y_val, check_inputs):
    """Validate and move the data to the active backend once, in the network's dtype."""
    if check_inputs:
        validate.check_array("X", X, min_ndim=2)
        if X_val is not None:
            validate.check_array("X_val", X_val, min_ndim=2)
    X, y = asarray(X, dtype=net.config.dtype), asarray(y)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y: expected {X.shape[0]} labels (one per row of X), got {y.shape[0]}")
    if X_val is not None:
        if y_val is None or len(y_val) != len(X_val):
            raise ValueError("y_val: expected one label per row of X_val")
        X_val, y_val = asarray(X_val, dtype=net.config.dtype), asarray(y_val)
    return X, y, X_val, y_val


def _train_epoch(net, optimizer, batches, steps, cfg, guard):
    """``train_step`` on every batch of one epoch; returns the epoch's _EpochMeter."""
    meter = _EpochMeter(net)
    with progress_bar(steps, f"{cfg.desc} {guard.epoch + 1}/{cfg.epochs}", cfg.progress) as bar:
        for X_batch, y_batch in batches:

            def before_update(loss, logits, y_batch=y_batch):
                guard.check(loss)  # raises before a NaN/inf loss reaches the parameters
                meter.add(loss, logits, y_batch)

            with quiet_errors():  # non-finite values are caught by the guard, with a clear error
                train_step(net, optimizer, X_batch, y_batch, before_update)
            bar.update(1)
            if cfg.progress and guard.step % cfg.log_every == 0:
                bar.set_postfix(**meter.postfix())
    return meter


def _epoch_record(net, optimizer, meter, guard, X_val, y_val):
    """The History entry of one epoch (reads the device sums once)."""
    n = meter.seen
    record = {"epoch": guard.epoch + 1, "train_loss": to_float(meter.loss_sum) / n,
              "train_accuracy": to_float(meter.correct) / (n * meter.per_row), "lr": optimizer.current_lr}
    if not math.isfinite(record["train_loss"]):  # a bad loss in the steps after the last check
        guard.restore()
        raise guard.error(meter.loss_sum, "their last checked values")
    if X_val is not None:
        val = evaluate(net, X_val, y_val)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    record["seconds"] = time.perf_counter() - meter.t0
    record["samples_per_s"] = n / max(record["seconds"], 1e-9)
    record["h"] = net.step_sizes()
    return record


def _fit_config(config, **options):
    """``config``, or a FitConfig built from ``fit``'s keyword arguments (not both)."""
    if config is None:
        return FitConfig(**options)
    changed = sorted(k for k, v in options.items() if v != getattr(FitConfig, k))
    if changed:
        raise ValueError(f"config: pass the loop options in config or as keywords, not both "
                         f"(also given: {', '.join(changed)})")
    return config


def fit(net, X, y, epochs=5, batch_size=256, optimizer=None, lr=0.1, X_val=None, y_val=None,
        seed=0, noise=0.0, progress=True, log_every=25, check_every=None, checkpoint=None,
        desc="train", check_inputs=True, config=None):
    """Train ``net`` by minibatch gradient descent on the batch-mean cross-entropy.

    X: (N, p) (or (N, n, p) for the quadratic model), y: integer labels. The loop's
    options are the keywords or, instead, a ``FitConfig`` as ``config`` (see there).
    ``optimizer`` defaults to SGD(lr, momentum 0.9). On a NaN/inf loss the parameters
    are restored to their last finite state and NonFiniteLossError is raised
    (``NonFiniteGuard``). Returns a History, one record per epoch.
    """
    cfg = _fit_config(config, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, noise=noise,
                      progress=progress, log_every=log_every, check_every=check_every,
                      checkpoint=checkpoint, desc=desc, check_inputs=check_inputs)
    X, y, X_val, y_val = _prepare_data(net, X, y, X_val, y_val, cfg.check_inputs)
    if optimizer is None:
        optimizer = SGD(net.params, lr=cfg.lr, momentum=0.9)
    guard = NonFiniteGuard(net.params, cfg.steps_between_checks())
    order_rng, noise_rng = host_rng(cfg.seed), (RNG(cfg.seed + 1) if cfg.noise else None)
    workspace, n = Workspace(), X.shape[0]  # the batch buffers, reused from step to step
    history = History()
    for epoch in range(int(cfg.epochs)):
        guard.epoch = epoch
        batches = (gather_batch(X, y, idx, workspace, cfg.noise, noise_rng)
                   for idx in minibatches(n, cfg.batch_size, rng=order_rng, on_device=True))
        meter = _train_epoch(net, optimizer, batches, math.ceil(n / cfg.batch_size), cfg, guard)
        history.epochs.append(_epoch_record(net, optimizer, meter, guard, X_val, y_val))
        if cfg.checkpoint is not None:
            save_checkpoint(cfg.checkpoint, net, optimizer, history)
    return history
