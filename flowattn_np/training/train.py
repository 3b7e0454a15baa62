"""Training: one step, seeded minibatches, the ``fit`` loop, evaluation.

Read in this order:

* ``train_step(net, optimizer, X, y)``: one step of gradient descent (forward, the
  hand-written backward, the update);
* ``minibatches``: the seeded order of the rows;
* ``fit``: epochs of ``train_step`` over ``minibatches``, with a progress bar (one plain
  line per epoch when standard error is not a terminal: ``progress.progress_bar``), a guard
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

from flowattn_np import validate
from flowattn_np.backend import (
    Workspace,
    asarray,
    check_on_backend,
    get_array_module,
    get_backend,
    quiet_errors,
    to_float,
    to_numpy,
)
from flowattn_np.training.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from flowattn_np.training.files import prove_writable
from flowattn_np.training.optim import SGD, make_optimizer
from flowattn_np.training.progress import PlainProgress, progress_bar
from flowattn_np.random import RNG, host_rng
from flowattn_np.threads import compute as _package_compute

__all__ = ["FitConfig", "History", "NonFiniteGuard", "NonFiniteLossError", "evaluate", "fit",
           "gather_batch", "load_checkpoint", "minibatches", "restore_optimizer", "save_checkpoint",
           "train_step"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the parameters were kept at their last finite state."""


def train_step(net, optimizer, X, y, before_update=None):
    """One step of minibatch gradient descent on the batch ``(X, y)``.

    The batch-mean cross-entropy and its gradients (hand-written backward pass), then the
    optimiser's in-place update of ``net.params``.

    Parameters
    ----------
    net : Network
        Its ``params`` are updated in place.
    optimizer : Optimizer
        Holds the same ``params``.
    X : array
        The batch's inputs.
    y : array of int
        The batch's labels.
    before_update : callable, optional
        ``before_update(loss, logits)`` runs between the gradients and the update (``fit``
        counts correct predictions there and stops on a NaN loss before it reaches the
        parameters).

    Returns
    -------
    array, shape ()
        The loss on the device: reading it (``float``) is a host synchronisation.
    """
    loss, grads, logits = net.loss_and_grads(X, y)
    if before_update is not None:
        before_update(loss, logits)
    optimizer.step(grads)
    return loss


def minibatches(n, batch_size, rng=None, shuffle=True, drop_last=False, on_device=False):
    """Index arrays covering ``range(n)`` in batches (slices when not shuffled).

    The order is a permutation drawn on the host, so the same seed gives the same batches on
    every backend.

    Parameters
    ----------
    n : int
        Number of rows.
    batch_size : int
        Rows per batch.
    rng : int or numpy.random.Generator, optional
        Seed or generator of the permutation.
    shuffle : bool
        Permute the rows.
    drop_last : bool
        Drop a last, smaller batch.
    on_device : bool
        Move the permutation to the active backend once; the batches are views of it (no
        host-device copy per batch).

    Yields
    ------
    array of int or slice
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
    r"""The rows ``idx`` of ``(X, y)``, plus $\sigma\varepsilon$ with $\varepsilon\sim\mathcal N(0,1)$ if ``noise`` $=\sigma>0$.

    The batch is gathered (and noised) in place into buffers of ``workspace``: no fresh
    arrays per step. It is valid until the next call with the same workspace.

    Parameters
    ----------
    X : array
        All inputs.
    y : array of int
        All labels.
    idx : array of int or slice
        The batch's rows.
    workspace : Workspace
        Owner of the reused buffers.
    noise : float
        $\sigma$.
    noise_rng : RNG, optional
        Source of $\varepsilon$.

    Returns
    -------
    X_batch : array
    y_batch : array
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


@_package_compute  # BLAS at the thread policy's count for the whole pass
def evaluate(net, X, y, batch_size=2048, check=True):
    """Mean cross-entropy and accuracy of ``net`` on ``(X, y)``, as Python floats.

    For a network whose blocks use the true labels (``targets="labels"``) this is an oracle
    computation: the labels enter the features before the prediction.

    Parameters
    ----------
    net : Network
        The model.
    X : array
        Inputs.
    y : array of int
        Labels.
    batch_size : int
        Rows per forward pass.
    check : bool
        Validate ``X`` and ``y`` once first (`Network.check_input`, `Network.check_labels`);
        False for data already validated, as `fit` does every epoch. The batches run
        unchecked.

    Returns
    -------
    loss : float
    accuracy : float
    """
    X, y = asarray(X), asarray(y)
    if check:
        X = net.check_input(X)
        y = net.check_labels(y, X.shape[:-1])
    n = X.shape[0]
    loss_sum, correct = 0.0, 0.0
    for start in range(0, n, batch_size):
        X_batch, y_batch = X[start:start + batch_size], y[start:start + batch_size]
        C = net.target_matrix(y_batch, X_batch.dtype, check=False)
        logits, _ = net.forward(X_batch, C=C, check=False)
        loss_sum = loss_sum + net.loss_from_logits(logits, C) * X_batch.shape[0]
        correct = correct + _accuracy_sum(net, logits, y_batch)
    per_row = y[:1].size
    return {"loss": to_float(loss_sum) / n, "accuracy": to_float(correct) / (n * per_row)}


@dataclass
class History:
    """Per-epoch records of `fit`: a list of dicts with ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``, ``samples_per_s`` and ``h``.
    """

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
    r"""Options of the `fit` loop (the keyword arguments of `fit` of the same names).

    Parameters
    ----------
    epochs : int
        Passes over the data.
    batch_size : int
        Rows per step.
    lr : float
        Learning rate of the default optimiser, SGD(lr, momentum 0.9).
    seed : int
        Seeds the minibatch order (and, as seed + 1, the noise).
    noise : float
        $\sigma>0$ adds seeded Gaussian noise $\sigma\varepsilon$ to every training batch.
    progress : bool
        Show a progress bar.
    log_every : int
        Steps between the bar's loss/accuracy updates.
    check_every : int, optional
        Steps between NaN/inf checks of the loss (None: every step on NumPy, every
        ``log_every`` steps on CuPy, where a check is a device synchronisation).
    checkpoint : str, optional
        A path written atomically after every epoch.
    desc : str
        The progress bar's label.
    check_inputs : bool
        Validate ``X`` (finite, floating).
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
        for name, low in (("epochs", 0), ("batch_size", 1), ("log_every", 1)):
            object.__setattr__(self, name, validate.check_count(name, getattr(self, name), low))
        if self.check_every is not None:
            object.__setattr__(self, "check_every", validate.check_count("check_every",
                                                                       self.check_every, 1))
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise: expected a finite sigma >= 0, got {self.noise}")

    def steps_between_checks(self):
        """check_every, or its backend-dependent default."""
        if self.check_every is not None:
            return int(self.check_every)
        return 1 if get_backend() == "numpy" else int(self.log_every)


class NonFiniteGuard:
    """Stops training on a NaN/inf loss, with the parameters at their last finite snapshot.

    ``check(loss)`` runs before each update. Every ``every`` steps the parameters are
    copied (a snapshot) and the losses since are summed on the device (NaN/inf
    propagate) and read once at the end of the window (one host sync per ``every``
    steps). On a bad sum the parameters go back to the latest finite snapshot: this
    window's if all its entries are finite, else the previous window's (an update
    before this window overflowed while the loss was still finite). ``end_epoch`` also
    catches a last update that overflowed, whose loss no step computed.
    """

    def __init__(self, params, every):
        self.params, self.every = params, int(every)
        self.step, self.epoch = 0, 0
        self.pending = 0.0
        # (step, copy of the parameters) of this window and of the last window that passed
        self.snapshot, self.previous = None, None

    def check(self, loss):
        """Record the loss of step ``self.step``; raise NonFiniteLossError if it is bad."""
        if self.step % self.every == 0:  # a new window: keep the state its first loss measures
            self._take_snapshot()
            self.pending = 0.0
        self.pending = self.pending + loss
        if (self.step + 1) % self.every == 0:
            self.verify(self.pending)
        self.step += 1

    def _take_snapshot(self):
        # the last window passed, so its snapshot becomes the fallback; buffers are reused
        self.previous, reuse = self.snapshot, self.previous
        if reuse is None:
            copy = {k: v.copy() for k, v in self.params.items()}
        else:
            copy = reuse[1]
            for k, v in self.params.items():
                copy[k][...] = v
        self.snapshot = (self.step, copy)

    def verify(self, value, what="the training loss"):
        """Raise NonFiniteLossError (parameters restored) if ``value`` is NaN or inf."""
        if math.isfinite(to_float(value)):
            return
        restored = self.restore()
        raise NonFiniteLossError(
            f"fit: {what} became non-finite ({to_float(value)}) at epoch {self.epoch + 1}, "
            f"step {self.step + 1}; the parameters were restored to {restored}. Check the "
            "inputs for NaN/inf (fit validates X unless check_inputs=False) or lower the "
            "learning rate.")

    def restore(self):
        """Put the latest finite snapshot back into the parameters (in place); say which.

        This window's snapshot, unless an update before it overflowed: then the one before.
        """
        candidates = [c for c in (self.snapshot, self.previous) if c is not None]
        if not candidates:
            return "their values (no step had run)"
        xp = get_array_module(*self.params.values())
        step, copy = next((c for c in candidates
                           if all(bool(xp.isfinite(v).all()) for v in c[1].values())), candidates[0])
        for k, v in copy.items():
            self.params[k][...] = v
        return f"their values before step {step + 1}"

    def end_epoch(self, loss_sum):
        """After an epoch: check the losses since the last window closed (``loss_sum`` of
        the epoch holds them) and that the last update left the parameters finite.
        Returns the epoch's loss sum as a float: one host read for both checks."""
        xp = get_array_module(*self.params.values())
        finite = sum(xp.isfinite(v).all() for v in self.params.values())
        loss, finite = to_numpy(xp.stack([xp.asarray(loss_sum).astype("float64"),
                                          xp.asarray(finite).astype("float64")])).tolist()
        self.verify(loss)
        if finite != len(self.params):
            self.verify(float("nan"), "a parameter (the last update overflowed)")
        return loss


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


def _checked_data(net, X, y, names, check_inputs):
    """(X, y) on the active backend, X in the network's dtype; validated unless told not to."""
    X, y = asarray(X), asarray(y)
    if check_inputs:  # one pass over the data here, none per step
        X = net.check_input(X, names[0])
        return X, net.check_labels(y, X.shape[:-1], names[1])
    if y.shape[:1] != X.shape[:1] or X.shape[0] == 0:
        raise ValueError(f"{names[1]}: expected one label per row of {names[0]} (at least one), "
                         f"got {y.shape[:1]} labels for {X.shape[:1]} rows")
    return X.astype(net.config.dtype, copy=False), y


def _prepare_data(net, X, y, X_val, y_val, check_inputs):
    """Validate and move the data to the active backend once, in the network's dtype."""
    _check_fit_backends(net, X=X, y=y, X_val=X_val, y_val=y_val)
    X, y = _checked_data(net, X, y, ("X", "y"), check_inputs)
    if X_val is not None:
        if y_val is None:
            raise ValueError("y_val: expected one label per row of X_val, got None")
        X_val, y_val = _checked_data(net, X_val, y_val, ("X_val", "y_val"), check_inputs)
    return X, y, X_val, y_val


def _optimizer_for(net, optimizer, lr):
    """``optimizer`` itself, one built from a name ('sgd': momentum 0.9, or 'adam') with
    ``lr``, or SGD(lr, momentum 0.9) for None."""
    if optimizer is None:
        return SGD(net.params, lr=lr, momentum=0.9)
    if isinstance(optimizer, str):
        return make_optimizer(optimizer.lower(), net.params, lr=lr)
    if not callable(getattr(optimizer, "step", None)) or not hasattr(optimizer, "params"):
        raise TypeError(f"optimizer: expected 'sgd', 'adam', None or an optimiser built on "
                        f"net.params (e.g. SGD(net.params, lr=0.1)), got {type(optimizer).__name__}")
    if any(optimizer.params.get(k) is not v for k, v in net.params.items()):
        raise ValueError("optimizer: it updates other arrays than net.params (another "
                         "network's?); build it on net.params (e.g. SGD(net.params, lr=0.1))")
    return optimizer


def _train_epoch(net, optimizer, batches, steps, cfg, guard):
    """``train_step`` on every batch of one epoch; returns the epoch's _EpochMeter."""
    meter = _EpochMeter(net)
    with progress_bar(steps, f"{cfg.desc} {guard.epoch + 1}/{cfg.epochs}", cfg.progress) as bar:
        # a live bar shows figures every log_every steps; a plain line only at the end, so
        # it reads the device once per epoch instead (docs/gpu.md counts these reads)
        plain = isinstance(bar, PlainProgress)
        live = cfg.progress and not plain
        for X_batch, y_batch in batches:

            def before_update(loss, logits, y_batch=y_batch):
                guard.check(loss)  # raises before a NaN/inf loss reaches the parameters
                meter.add(loss, logits, y_batch)

            with quiet_errors():  # non-finite values are caught by the guard, with a clear error
                train_step(net, optimizer, X_batch, y_batch, before_update)
            bar.update(1)
            if live and guard.step % cfg.log_every == 0:
                bar.set_postfix(**meter.postfix())
        if plain and meter.seen:
            bar.set_postfix(**meter.postfix())  # the epoch's figures, for the plain line's end
    return meter


def _epoch_record(net, optimizer, meter, guard, X_val, y_val):
    """The History entry of one epoch (reads the device sums once)."""
    n = meter.seen
    loss_sum = guard.end_epoch(meter.loss_sum)  # a bad loss after the last check, or a bad last update
    record = {"epoch": guard.epoch + 1, "train_loss": loss_sum / n,
              "train_accuracy": to_float(meter.correct) / (n * meter.per_row), "lr": optimizer.current_lr}
    if X_val is not None:
        val = evaluate(net, X_val, y_val, check=False)  # validated once, before the first epoch
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


@_package_compute  # entered once per fit: the steps inside pay no thread switch
def fit(net, X, y, epochs=5, batch_size=256, optimizer=None, lr=0.1, X_val=None, y_val=None,
        seed=0, noise=0.0, progress=True, log_every=25, check_every=None, checkpoint=None,
        desc="train", check_inputs=True, config=None):
    """Train ``net`` by minibatch gradient descent on the batch-mean cross-entropy.

    On a NaN/inf loss the parameters are restored to their last finite state and
    `NonFiniteLossError` is raised (`NonFiniteGuard`). The loop's options (``epochs``,
    ``batch_size``, ``lr``, ``seed``, ``noise``, ``progress``, ``log_every``, ``check_every``,
    ``checkpoint``, ``desc``, ``check_inputs``) are keywords, or one `FitConfig` as ``config``:
    see `FitConfig` for each.

    Parameters
    ----------
    net : Network
        Trained in place.
    X : array, shape (N, p)
        Inputs, or (N, n, p) for the quadratic model.
    y : array of int
        Labels.
    optimizer : Optimizer, optional
        SGD(lr, momentum 0.9) by default.
    X_val, y_val : array, optional
        A validation set (both or neither), evaluated after every epoch.

    Returns
    -------
    History
        One record per epoch.
    """
    cfg = _fit_config(config, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, noise=noise,
                      progress=progress, log_every=log_every, check_every=check_every,
                      checkpoint=checkpoint, desc=desc, check_inputs=check_inputs)
    X, y, X_val, y_val = _prepare_data(net, X, y, X_val, y_val, cfg.check_inputs)
    optimizer = _optimizer_for(net, optimizer, cfg.lr)
    if cfg.checkpoint is not None:  # an unwritable checkpoint fails now, not after an epoch
        prove_writable(cfg.checkpoint)
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


def _check_fit_backends(net, **data):
    """fit trains on the active backend: the network's parameters must live there, and the
    data either there or on the host (moved once). Types only: no device sync."""
    active = get_backend()
    check_on_backend(active, f"the active backend is {active!r} (build the network under it, "
                     "or load it with load_checkpoint there)",
                     **{f"net.params[{k!r}]": v for k, v in net.params.items()})
    if active == "numpy":
        check_on_backend("numpy", "the active backend is 'numpy': fit does not copy device data "
                         "to the host silently", **data)
