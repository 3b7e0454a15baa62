"""Training: seeded minibatches, ``fit`` with a progress bar, evaluation, checkpoints.

``fit`` keeps everything on the active backend: the data is moved there once, each
epoch's shuffled order once, and the loss and accuracy for the progress bar are
summed on the device and fetched once per logging interval, not per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from . import validate
from .backend import (
    RNG,
    Workspace,
    asarray,
    get_array_module,
    get_backend,
    host_rng,
    load_arrays,
    quiet_errors,
    save_arrays,
    to_float,
)
from .network import Network, NetworkConfig
from .optim import SGD

CHECKPOINT_VERSION = 1


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the parameters were kept at their last finite state."""


def minibatches(n, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield host index arrays (slices when not shuffled) covering range(n) in batches.

    The order is a permutation drawn from ``rng`` (a seed or a NumPy Generator), so
    the same seed gives the same batches on every backend.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if not shuffle:  # plain slices: no index array needed
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            yield slice(start, min(start + batch_size, n))
        return
    gen = rng if hasattr(rng, "permutation") else host_rng(rng)
    order = gen.permutation(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


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
        Xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        C = net.target_matrix(yb, Xb.dtype)
        logits, _ = net.forward(Xb, C=C)
        loss_sum = loss_sum + net.loss_from_logits(logits, C) * Xb.shape[0]
        correct = correct + _accuracy_sum(net, logits, yb)
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


def fit(net, X, y, epochs=5, batch_size=256, optimizer=None, lr=0.1, X_val=None, y_val=None,
        seed=0, noise=0.0, progress=True, log_every=25, check_every=None, checkpoint=None,
        desc="train", check_inputs=True):
    """Train ``net`` by minibatch gradient descent on the batch-mean cross-entropy.

    X: (N, p) (or (N, n, p) for the quadratic model), y: integer labels. ``optimizer``
    defaults to SGD(lr, momentum 0.9). ``noise`` > 0 adds seeded Gaussian noise
    sigma * eps to every training batch (noise augmentation). The loss is checked
    for NaN/inf every ``check_every`` steps (every step on NumPy, every logging
    interval on CuPy, where a check is a device sync); on a non-finite loss the
    parameters are restored to their last finite state and NonFiniteLossError is
    raised. ``checkpoint`` (a path) is written atomically after every epoch.
    Returns a History.
    """
    if check_inputs:
        validate.check_array("X", X, min_ndim=2)
        if X_val is not None:
            validate.check_array("X_val", X_val, min_ndim=2)
    if int(epochs) < 0:
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise: expected a finite sigma >= 0, got {noise}")
    X, y = asarray(X, dtype=net.config.dtype), asarray(y)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y: expected {X.shape[0]} labels (one per row of X), got {y.shape[0]}")
    if X_val is not None:
        if y_val is None or len(y_val) != len(X_val):
            raise ValueError("y_val: expected one label per row of X_val")
        X_val, y_val = asarray(X_val, dtype=net.config.dtype), asarray(y_val)  # moved once
    if optimizer is None:
        optimizer = SGD(net.params, lr=lr, momentum=0.9)
    if check_every is None:
        check_every = 1 if get_backend() == "numpy" else max(1, int(log_every))
    n = X.shape[0]
    xp = get_array_module(X)
    workspace = Workspace()
    order_rng, noise_rng = host_rng(seed), (RNG(seed + 1) if noise else None)
    steps_per_epoch = math.ceil(n / batch_size)
    history = History()
    per_row = y[:1].size
    snapshot = _snapshot(net.params) if check_every > 1 else None
    step = 0
    for epoch in range(int(epochs)):
        t0 = time.perf_counter()
        order = asarray(order_rng.permutation(n))  # one host-to-device copy per epoch
        loss_sum = correct = pending = 0.0
        seen = 0
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=False)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            shape = (idx.shape[0],) + X.shape[1:]
            # gathered (and noised) in place into reused buffers: no fresh batch arrays
            Xb = xp.take(X, idx, axis=0, out=workspace.get("X_batch", shape, X.dtype, xp))
            yb = y[idx]
            if noise:
                eps = noise_rng.normal(shape, X.dtype, out=workspace.get("noise", shape, X.dtype, xp))
                eps *= noise
                Xb += eps
            with quiet_errors():  # non-finite values are detected below, with a clear error
                loss, grads, logits = net.loss_and_grads(Xb, yb)
            if check_every == 1:
                if not math.isfinite(to_float(loss)):
                    bar.close()
                    raise _non_finite(loss, epoch, step, restored="the values before this step")
            else:
                pending = pending + loss  # summed on the device; NaN/inf propagate
                if (step + 1) % check_every == 0:
                    if not math.isfinite(to_float(pending)):
                        bar.close()
                        _restore(net.params, snapshot)
                        raise _non_finite(pending, epoch, step,
                                          restored=f"their values {check_every} steps earlier")
                    pending = 0.0
            optimizer.step(grads)
            if check_every > 1 and (step + 1) % check_every == 0:
                snapshot = _snapshot(net.params)
            bs = Xb.shape[0]
            loss_sum = loss_sum + loss * bs
            correct = correct + _accuracy_sum(net, logits, yb)
            seen += bs
            step += 1
            bar.update(1)
            if progress and (step % log_every == 0):
                bar.set_postfix(loss=f"{to_float(loss_sum) / seen:.4f}",
                                acc=f"{to_float(correct) / (seen * per_row):.3f}",
                                rows_per_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")
        bar.close()
        record = {
            "epoch": epoch + 1,
            "train_loss": to_float(loss_sum) / n,
            "train_accuracy": to_float(correct) / (n * per_row),
            "lr": optimizer.current_lr,
        }
        if not math.isfinite(record["train_loss"]):
            _restore(net.params, snapshot)
            raise _non_finite(loss_sum, epoch, step, restored="their last checked values")
        if X_val is not None:
            val = evaluate(net, X_val, y_val)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        record["seconds"] = time.perf_counter() - t0
        record["samples_per_s"] = n / max(record["seconds"], 1e-9)
        record["h"] = net.step_sizes()
        history.epochs.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, net, optimizer, history)
    return history


def _snapshot(params):
    return {k: v.copy() for k, v in params.items()}


def _restore(params, snapshot):
    if snapshot is None:
        return
    for k, v in snapshot.items():
        params[k][...] = v


def _non_finite(value, epoch, step, restored):
    return NonFiniteLossError(
        f"fit: the training loss became non-finite ({to_float(value)}) at epoch {epoch + 1}, "
        f"step {step + 1}; the parameters were restored to {restored}. Check the inputs for "
        "NaN/inf (fit validates X unless check_inputs=False) or lower the learning rate."
    )


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, net, optimizer=None, history=None, extra=None):
    """Save all parameters, the configuration (and optimiser state, history) to one .npz.

    Written atomically (temporary file, then rename): an interrupted save leaves the
    previous checkpoint intact. Arrays are copied to the host, so a checkpoint saved
    on CuPy loads on NumPy.
    """
    arrays = {f"param/{k}": v for k, v in net.params.items()}
    meta = {"version": CHECKPOINT_VERSION, "config": net.config.to_dict(), "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state()
        meta["optimizer"] = {"class": type(optimizer).__name__, "lr": optimizer.lr, "t": state.pop("t")}
        arrays.update({f"opt/{k}": v for k, v in state.items()})
    if history is not None:
        meta["history"] = history.to_dict()
    save_arrays(path, arrays, meta)


def load_checkpoint(path, optimizer=None):
    """Load a Network (on the active backend) from ``save_checkpoint``'s file.

    With ``optimizer`` (built on the returned network's params afterwards, or any
    optimiser of the same class), use ``restore_optimizer`` instead. The saved
    history and extra data are on ``net.checkpoint_meta``.
    """
    arrays, meta = load_arrays(path)
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"path: {path} has checkpoint version {meta.get('version')}, "
                         f"expected {CHECKPOINT_VERSION}")
    config = NetworkConfig.from_dict(meta["config"])
    params = {k[len("param/"):]: asarray(v) for k, v in arrays.items() if k.startswith("param/")}
    net = Network(config, params=params)
    missing = set(net.init_params(0)) - set(params)
    if missing:
        raise ValueError(f"path: {path} lacks parameters {sorted(missing)} for its configuration")
    net.checkpoint_meta = meta
    net.checkpoint_optimizer_state = {k[len("opt/"):]: asarray(v) for k, v in arrays.items()
                                      if k.startswith("opt/")}
    return net


def restore_optimizer(optimizer, net):
    """Put the optimiser state saved with ``net``'s checkpoint into ``optimizer``."""
    state = dict(getattr(net, "checkpoint_optimizer_state", {}))
    state["t"] = net.checkpoint_meta.get("optimizer", {}).get("t", 0)
    optimizer.load_state(state)
    return optimizer
