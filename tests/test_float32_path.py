"""No float64 temporaries in the float32 path.

A float32 network must stay float32 end to end: one float64 scalar or array anywhere in
the forward pass (a NumPy float64 step size, a float64 one-hot, a float64 constant)
silently upcasts everything after it, doubling memory traffic and halving BLAS speed.

For float32 networks of every kind (linear model with targets learned / none / labels,
Lie / Strang splitting, Euler / Heun / RK4, tied / untied weights, learned or fixed h,
the linear encoding, memory blocks, the quadratic model, multi-head labels):

* every floating array (and NumPy scalar) in the cache returned by
  ``net.forward(X, C=...)``, walked recursively through tuples, lists and dicts, is float32;
* the loss, the logits and every gradient from ``net.loss_and_grads`` are float32;
* an optimiser step (SGD with momentum / Nesterov / weight decay, Adam) keeps float32
  parameters and float32 optimiser state;
* ``fit`` on float64 input data with a float32 network keeps float32 parameters.

Sizes are tiny: the whole file runs in a few seconds.
"""

import numpy as np
import pytest

from helpers import network_data
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.optim import SGD, Adam
from flowattn_np.training.train import fit

P, M, ROWS, LAYERS = 6, 5, 7, 2
SEQS, TOKENS, P_QUAD = 2, 4, 3
F32 = np.dtype("float32")


# ---------------------------------------------------------------- helpers

def _float_leaves(obj, path="cache"):
    """(path, dtype) of every floating array or NumPy floating scalar inside obj
    (tuples, lists and dicts walked recursively; other objects are not entered)."""
    if isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            yield from _float_leaves(o, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, o in obj.items():
            yield from _float_leaves(o, f"{path}[{k!r}]")
    elif isinstance(obj, np.generic) or (hasattr(obj, "dtype") and hasattr(obj, "shape")):
        dt = np.dtype(obj.dtype)
        if dt.kind in "fc":
            yield path, dt


def _not_float32(obj, path):
    return [f"{p}: {dt}" for p, dt in _float_leaves(obj, path) if dt != F32]


def _config(block, tied=True, encoding="identity", layers=LAYERS):
    quadratic = block.model == "quadratic"
    p = P_QUAD if quadratic else P
    m = sum(block.heads) if block.heads else M
    return NetworkConfig(n_inputs=p, n_classes=m, layers=layers, block=block, tied=tied,
                         encoding=encoding, d=None if encoding == "identity" else 4,
                         dtype="float32")


def _data(config, seed=0, dtype="float32"):
    return network_data(config, ROWS, SEQS, TOKENS, seed=seed, dtype=dtype, uniform=True)


# ---------------------------------------------------------------- the cases

CASES = {}
for targets in ("learned", "none", "labels"):
    for scheme in ("lie", "strang"):
        for integrator in ("euler", "heun", "rk4"):
            for tied in (True, False):
                learn_h = tied  # both learned and fixed step sizes, across the grid
                CASES[f"linear-{targets}-{scheme}-{integrator}-{'tied' if tied else 'untied'}"] = (
                    BlockConfig(model="linear", targets=targets, scheme=scheme, integrator=integrator,
                                learn_h=learn_h, h=0.3), tied, "identity")
CASES.update({
    "linear-learned-linear-encoding": (BlockConfig(targets="learned", learn_h=True), True, "linear"),
    "linear-labels-untied-linear-encoding-strang": (
        BlockConfig(targets="labels", scheme="strang"), False, "linear"),
    "memory-tied-learned-h": (BlockConfig(model="memory", targets="none", slots=3, learn_h=True),
                              True, "identity"),
    "memory-untied-fixed-h": (BlockConfig(model="memory", targets="none", slots=3), False, "linear"),
    "quadratic-labels-exact": (BlockConfig(model="quadratic", targets="labels", learn_h=True),
                               True, "identity"),
    "quadratic-labels-strang-heun-b-euler": (
        BlockConfig(model="quadratic", targets="labels", scheme="strang", integrator="heun",
                    b_flow="euler"), False, "identity"),
    "quadratic-none-rk4": (BlockConfig(model="quadratic", targets="none", integrator="rk4",
                                       learn_h=True), True, "identity"),
    "quadratic-learned": (BlockConfig(model="quadratic", targets="learned", learn_h=True),
                          True, "identity"),
    "quadratic-learned-untied-linear-encoding": (
        BlockConfig(model="quadratic", targets="learned"), False, "linear"),
    "multihead-labels": (BlockConfig(targets="labels", heads=(2, 3), learn_h=True), True, "identity"),
    "multihead-learned-untied-strang": (BlockConfig(targets="learned", heads=(2, 3), scheme="strang",
                                                    integrator="heun"), False, "identity"),
    "multihead-none-rk4": (BlockConfig(targets="none", heads=(2, 3), integrator="rk4"),
                           True, "linear"),
})
CASES["no-blocks"] = (BlockConfig(), True, "identity")  # L = 0 below


def _net(name):
    block, tied, encoding = CASES[name]
    cfg = _config(block, tied, encoding, layers=0 if name == "no-blocks" else LAYERS)
    return Network(cfg, seed=0)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_cache_gradients_loss_and_logits_are_float32(name):
    net = _net(name)
    assert not _not_float32(net.params, "params")
    X, y = _data(net.config)
    C = net.target_matrix(y, X.dtype)
    logits, cache = net.forward(X, C=C)
    bad = _not_float32(cache, "cache") + _not_float32(logits, "logits") + _not_float32(C, "C")
    assert not bad, f"{name}: float64 in the float32 forward pass:\n" + "\n".join(bad)

    loss, grads, logits = net.loss_and_grads(X, y)
    assert set(grads) == set(net.params)
    bad = (_not_float32(loss, "loss") + _not_float32(logits, "logits")
           + _not_float32(grads, "grads"))
    assert not bad, f"{name}: float64 in loss_and_grads:\n" + "\n".join(bad)
    assert loss.dtype == F32 and logits.dtype == F32
    for k, g in grads.items():
        assert g.shape == net.params[k].shape, k
    # the loss alone too (evaluation path)
    assert net.loss(X, y).dtype == F32


@pytest.mark.parametrize("make_opt", [
    lambda p: SGD(p, lr=0.1, momentum=0.9),
    lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: SGD(p, lr=0.1, momentum=0.0),
    lambda p: Adam(p, lr=1e-3),
    lambda p: Adam(p, lr=1e-3, weight_decay=1e-3),
], ids=["sgd-momentum", "sgd-nesterov-wd", "sgd-plain", "adam", "adam-wd"])
@pytest.mark.parametrize("name", ["linear-learned-lie-euler-tied", "linear-labels-strang-rk4-untied",
                                  "quadratic-learned", "memory-tied-learned-h", "multihead-labels"])
def test_optimizer_step_keeps_float32_params_and_state(make_opt, name):
    net = _net(name)
    X, y = _data(net.config)
    ids = {k: id(v) for k, v in net.params.items()}
    opt = make_opt(net.params)
    for _ in range(3):
        opt.step(net.loss_and_grads(X, y)[1])
    bad = _not_float32(net.params, "params") + _not_float32(opt.state(), "optimizer state")
    assert not bad, "\n".join(bad)
    # updated in place: tied weights stay the same arrays
    assert {k: id(v) for k, v in net.params.items()} == ids


@pytest.mark.parametrize("name", ["linear-learned-lie-euler-tied", "quadratic-labels-exact",
                                  "multihead-learned-untied-strang"])
def test_fit_on_float64_data_keeps_float32_params(name):
    net = _net(name)
    X, y = _data(net.config, dtype="float64")
    assert X.dtype == np.float64
    X_val, y_val = _data(net.config, seed=1, dtype="float64")
    hist = fit(net, X, y, epochs=2, batch_size=3, lr=0.05, X_val=X_val, y_val=y_val,
               progress=False)
    assert len(hist) == 2
    assert not _not_float32(net.params, "params")
    assert all(np.isfinite(hist.column("train_loss")))


def test_fashion_network_step_is_float32_on_every_backend(backend):
    """The benchmarked network (benchmarks/bench_train_step.py), small, on each backend."""
    cfg = NetworkConfig(n_inputs=20, n_classes=10, layers=4,
                        block=BlockConfig(model="linear", scheme="lie", integrator="euler",
                                          targets="learned", learn_h=True, h=0.1),
                        tied=True, dtype="float32")
    net = Network(cfg, seed=0)
    X, y = _data(cfg)
    logits, cache = net.forward(X, C=net.target_matrix(y, X.dtype))
    assert not _not_float32(cache, "cache")
    opt = SGD(net.params, lr=0.1, momentum=0.9)
    loss, grads, logits = net.loss_and_grads(X, y)
    opt.step(grads)
    bad = (_not_float32(loss, "loss") + _not_float32(logits, "logits") + _not_float32(grads, "grads")
           + _not_float32(net.params, "params") + _not_float32(opt.state(), "velocity"))
    assert not bad, "\n".join(bad)


def test_walker_finds_float64():
    """The walker itself: a float64 array or NumPy float64 scalar anywhere is reported."""
    cache = ("x", [np.zeros(2, np.float32), {"h": np.float64(0.1)}], (np.zeros((1, 1)),), 0.5, 3)
    bad = _not_float32(cache, "c")
    assert bad == ["c[1][1]['h']: float64", "c[2][0]: float64"]
