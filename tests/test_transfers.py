"""The transfer budget of the GPU path, counted by the strict CuPy stand-in.

* A training step (``train.train_step``: ``loss_and_grads`` + the optimiser's ``step``)
  moves nothing between host and device, for every block configuration and both
  optimisers.
* ``fit`` reads from the device at most what docs/gpu.md states: per logging interval
  the NaN check and the progress-bar figures, per epoch the epoch's record, the
  validation figures and the learned step sizes; it copies the data to the device
  once and each epoch's shuffled order once (noise is drawn on the device).

These run on the stand-in only: NumPy has no device, and real CuPy has no counters.
"""

import itertools
import math

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.experiments.data import make_blobs
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.optim import SGD, Adam
from flowattn_np.random import RNG
from flowattn_np.training.train import fit, train_step
from helpers import network_data

STRICT = pytest.mark.parametrize("backend", [pytest.param("strict", marks=pytest.mark.strict)],
                                 indirect=True)

SPLIT = [BlockConfig(model=m, scheme=s, integrator=i, b_flow=b, targets=t, learn_h=lh, h=0.2)
         for m, s, i, b, t, lh in itertools.product(
             ("linear", "quadratic"), ("lie", "strang"), ("euler", "heun", "rk4"),
             ("exact", "euler"), ("labels", "none", "learned"), (True, False))
         if not (m == "linear" and b == "euler")]  # the linear B sub-flow has one form
OTHER = [BlockConfig(model="memory", targets="none", slots=3, learn_h=True, h=0.2),
         BlockConfig(model="memory", targets="none", slots=3, h=0.2),
         BlockConfig(targets="learned", heads=(2, 3), learn_h=True, h=0.2),
         BlockConfig(targets="labels", heads=(2, 3), scheme="strang", integrator="rk4", h=0.2)]
# the MLP oracle (targets='mlp'): both schemes, both activations, multi-head and quadratic
MLP = [BlockConfig(targets="mlp", mlp_hidden=4, activation=act, scheme=s, learn_h=True, h=0.2)
       for act in ("gelu", "relu") for s in ("lie", "strang")] + [
       BlockConfig(targets="mlp", mlp_hidden=4, heads=(2, 3), h=0.2),
       BlockConfig(model="quadratic", targets="mlp", mlp_hidden=4, learn_h=True, h=0.2)]
# the MLP oracle in normalised blocks: post-norm rotation (linear, exact B) and Euler + R
# (quadratic), pre-norm LayerNorm (the GPT-2 layout)
NORM_MLP = [BlockConfig(targets="mlp", mlp_hidden=4, norm="sphere", learn_h=True, h=0.2),
            BlockConfig(targets="mlp", mlp_hidden=4, norm="layer", norm_place="pre", scheme="strang",
                        activation="relu", learn_h=True, h=0.2),
            BlockConfig(model="quadratic", targets="mlp", mlp_hidden=4, norm="layer", b_flow="euler",
                        h=0.2)]
CONFIGS = SPLIT + OTHER + MLP + NORM_MLP


def _id(c):
    return "-".join(str(getattr(c, f)) for f in ("model", "scheme", "integrator", "b_flow", "targets"))\
        + ("-learn_h" if c.learn_h else "") + ("-heads" if c.heads else "") \
        + (f"-{c.activation}" if c.targets == "mlp" else "") \
        + (f"-{c.norm_place}-{c.norm}" if c.normalised else "")


def _network(block, tied):
    p = 3 if block.model == "quadratic" else 4
    m = sum(block.heads) if block.heads else 5
    cfg = NetworkConfig(n_inputs=p, n_classes=m, layers=2, block=block, tied=tied,
                        encoding="identity" if tied else "linear", d=None if tied else 3)
    net = Network(cfg, seed=0)
    X, y = network_data(cfg, rows=8, seqs=2, tokens=4)
    return net, X, y


@STRICT
@pytest.mark.parametrize("block", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_a_training_step_moves_nothing_between_host_and_device(block, counts):
    for tied, make_opt in ((True, lambda p: SGD(p, lr=0.01, momentum=0.9)),
                           (False, lambda p: Adam(p, lr=1e-3))):
        net, X, y = _network(block, tied)
        opt = make_opt(net.params)
        train_step(net, opt, X, y)  # the first step allocates buffers and optimiser state
        with counts.window() as w:
            for _ in range(2):
                loss = train_step(net, opt, X, y)
        assert (w.reads, w.writes) == (0, 0), (
            f"{type(opt).__name__}, tied={tied}: a training step transferred data\n{w.describe()}")
        assert math.isfinite(fa.backend.to_float(loss))


def fit_budget(epochs, steps_per_epoch, log_every, progress, validation, learned_h):
    """Device-to-host reads of fit as docs/gpu.md states them (check_every = log_every)."""
    intervals = math.ceil(steps_per_epoch / log_every)
    per_interval = 1 + (2 if progress else 0)  # NaN check; loss and accuracy for the bar
    per_epoch = 2 + (2 if validation else 0) + learned_h  # record; validation; step sizes
    return epochs * (intervals * per_interval + per_epoch)


@STRICT
@pytest.mark.parametrize("progress", [False, True])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_fit_reads_at_most_what_docs_gpu_states(counts, progress, noise):
    X, y = make_blobs(256, classes=3, seed=0)
    Xv, yv = make_blobs(64, classes=3, seed=1)
    net = Network(NetworkConfig(n_inputs=2, n_classes=3, layers=2,
                                block=BlockConfig(targets="learned", learn_h=True, h=0.3)), seed=0)
    X, y, Xv, yv = (fa.asarray(a) for a in (X, y, Xv, yv))  # on the device before fit
    epochs, batch, log_every = 2, 32, 4
    with counts.window() as w:
        fit(net, X, y, epochs=epochs, batch_size=batch, X_val=Xv, y_val=yv, noise=noise,
            progress=progress, log_every=log_every, check_inputs=False, seed=0)
    budget = fit_budget(epochs, 256 // batch, log_every, progress, validation=True, learned_h=1)
    assert w.reads <= budget, f"{w.reads} reads > budget {budget}:\n{w.describe('read')}"
    # one copy per epoch: its shuffled order (noise is drawn on the device)
    assert w.writes == epochs, w.describe("write")


@STRICT
def test_fit_budget_would_catch_a_read_per_step(counts):
    """The budget is tight: one extra device read per step (say a float(loss) for a log
    line) exceeds it. Shown by wrapping the step to read its loss."""
    X, y = make_blobs(256, classes=3, seed=0)
    net = Network(NetworkConfig(n_inputs=2, n_classes=3, layers=1,
                                block=BlockConfig(targets="none", h=0.3)), seed=0)
    X, y = fa.asarray(X), fa.asarray(y)
    original = net.loss_and_grads

    def reading_step(Xb, yb):
        out = original(Xb, yb)
        float(out[0])  # the mistake
        return out

    net.loss_and_grads = reading_step
    with counts.window() as w:
        fit(net, X, y, epochs=1, batch_size=32, progress=False, log_every=4, check_inputs=False)
    assert w.reads > fit_budget(1, 8, 4, False, validation=False, learned_h=0)


@STRICT
def test_fit_copies_host_data_to_the_device_once(counts):
    X, y = make_blobs(128, classes=3, seed=0)
    net = Network(NetworkConfig(n_inputs=2, n_classes=3), seed=0)
    with counts.window() as w:
        fit(net, X, y, epochs=3, batch_size=32, progress=False, check_inputs=False)
    assert w.writes == 2 + 3, w.describe("write")  # X and y once; each epoch's order once


@STRICT
def test_device_noise_is_drawn_into_the_given_buffer(xp, counts):
    rng = RNG(5)
    buf = xp.empty((4, 3), dtype="float32")
    with counts.window() as w:
        out = rng.normal((4, 3), "float32", out=buf)
    assert out is buf and (w.reads, w.writes) == (0, 0)
    a = fa.to_numpy(buf)
    assert a.dtype == np.float32 and np.isfinite(a).all() and a.std() > 0


# ---------------------------------------------------------------- public equation functions

def _linear_args(xp, rng):
    Z, theta = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    C = np.eye(4)[rng.integers(0, 4, size=5)]
    return [fa.asarray(a) for a in (Z, theta, C)]


def _quadratic_args(xp, rng):
    Z = rng.normal(size=(2, 4, 3))
    phi = np.tril(rng.normal(size=(3, 3)))
    C = np.stack([np.eye(4)[rng.integers(0, 4, size=4)] for _ in range(2)])
    return [fa.asarray(a) for a in (Z, phi @ phi.T, C)], fa.asarray(phi)


PUBLIC = {  # function -> (model, how it is called, device reads allowed)
    "cross_attention": ("linear", lambda Z, th, C: fa.cross_attention(Z, th), 1),
    "linear_loss": ("linear", lambda Z, th, C: fa.linear_loss(Z, th, C), 1),
    "linear_grad_Z": ("linear", lambda Z, th, C: fa.linear_grad_Z(Z, th, C), 1),
    "linear_grad_theta": ("linear", lambda Z, th, C: fa.linear_grad_theta(Z, th, C), 1),
    "linear_flow": ("linear", lambda Z, th, C: fa.linear_flow(Z, th, C), 1),
    "linear_B_exact": ("linear", lambda Z, th, C: fa.linear_B_exact(Z, th, C, 0.3), 1),
    "self_attention": ("quadratic", lambda Z, th, C, phi: fa.self_attention(Z, th), 1),
    "quadratic_loss": ("quadratic", lambda Z, th, C, phi: fa.quadratic_loss(Z, th, C), 1),
    "quadratic_grad_Z": ("quadratic", lambda Z, th, C, phi: fa.quadratic_grad_Z(Z, th, C), 1),
    "quadratic_flow": ("quadratic", lambda Z, th, C, phi: fa.quadratic_flow(Z, th, C), 1),
    "quadratic_B_exact": ("quadratic", lambda Z, th, C, phi: fa.quadratic_B_exact(Z, th, C, 0.3), 1),
    "quadratic_grad_phi": ("quadratic", lambda Z, th, C, phi: fa.quadratic_grad_phi(Z, phi, C), 2),
}


@STRICT
@pytest.mark.parametrize("name", list(PUBLIC))
def test_a_public_equation_function_reads_the_device_at_most_once(name, xp, counts):
    """Its input checks (finite values, label rows, symmetry) are reduced on the device and
    read back together; the result stays on the device (docs/gpu.md)."""
    model, call, allowed = PUBLIC[name]
    rng = np.random.default_rng(0)
    if model == "linear":
        args = _linear_args(xp, rng)
    else:
        args, phi = _quadratic_args(xp, rng)
        args = args + [phi]
    with counts.window() as w:
        out = call(*args)
    assert isinstance(out, xp.ndarray)
    assert w.reads <= allowed and w.writes == 0, w.describe()


@STRICT
def test_integrate_with_a_field_built_once_reads_twice_in_all(xp, counts):
    """linear_field checks theta and C when built (one read), integrate checks Z0 (one
    read); the 12 evaluations of RK4 x 3 steps read nothing. A lambda around the public
    linear_flow instead validates at every evaluation (docs/gpu.md)."""
    Z, theta, C = _linear_args(xp, np.random.default_rng(0))
    with counts.window() as built:
        fa.integrate(fa.linear_field(theta, C), Z, 0.3, 3, "rk4")
    with counts.window() as per_call:
        fa.integrate(lambda Y: fa.linear_flow(Y, theta, C), Z, 0.3, 3, "rk4")
    assert (built.reads, built.writes) == (2, 0), built.describe()
    assert (per_call.reads, per_call.writes) == (1 + 3 * 4, 0), per_call.describe()
