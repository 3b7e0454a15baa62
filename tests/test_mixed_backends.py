"""Host (NumPy) and device (CuPy) arrays mixed at the public boundary raise BackendError
naming the argument, found from types alone (no device sync), before any computation.

On real CuPy a mixed call would fail deep inside a matrix product with CuPy's bare
TypeError; these run on the device backends (the strict stand-in, or a GPU).
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.backend import BackendError
from flowattn_np.experiments.data import make_blobs
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.implementations import readable_block
from flowattn_np.blocks.params import init_block_params
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.train import fit

DEVICE = pytest.mark.parametrize("backend", [pytest.param("strict", marks=pytest.mark.strict),
                                             pytest.param("cupy", marks=pytest.mark.cupy)],
                                 indirect=True)


def _raises_naming(name, call, counts=None):
    with pytest.raises(BackendError) as info:
        if counts is None:
            call()
        else:
            with counts.window() as w:
                call()
            assert (w.reads, w.writes) == (0, 0), w.describe()  # found without touching the device
    msg = str(info.value)
    named = msg.split(", but ")[0].split(", while ")  # the groups of names, by backend
    assert any(name in group and ("numpy array" in group or "cupy array" in group) for group in named), msg
    return msg


def _net(targets="labels", layers=2):
    cfg = NetworkConfig(n_inputs=2, n_classes=3, layers=layers,
                        block=BlockConfig(targets=targets, learn_h=True, h=0.2))
    return Network(cfg, seed=0)


@DEVICE
def test_network_forward_names_the_host_input(counts):
    net = _net()
    X, y = make_blobs(6, classes=3, seed=0)
    msg = _raises_naming("X", lambda: net.forward(X, fa.asarray(y)), counts)
    assert "the network's parameters are cupy arrays (GPU)" in msg
    _raises_naming("y", lambda: net.forward(fa.asarray(X), y), counts)
    _raises_naming("y", lambda: net.loss_and_grads(fa.asarray(X), y), counts)
    _raises_naming("X", lambda: net.predict(X, fa.asarray(y)), counts)


@DEVICE
def test_network_forward_names_a_parameter_left_on_the_host(counts):
    net = _net()
    net.params["h"] = fa.to_numpy(net.params["h"])
    X, y = (fa.asarray(a) for a in make_blobs(6, classes=3, seed=0))
    msg = _raises_naming("params['h']", lambda: net.forward(X, y), counts)
    assert "params['h'] is a numpy array (host)" in msg


@DEVICE
@pytest.mark.parametrize("block", [BlockConfig(targets="labels"),
                                   BlockConfig(targets="learned", scheme="strang", integrator="heun"),
                                   BlockConfig(model="quadratic", targets="labels"),
                                   BlockConfig(model="memory", targets="none", slots=2)],
                         ids=["eq8", "linear-strang", "quadratic", "memory"])
def test_a_block_names_the_host_argument(block, counts):
    d, m = 3, 4
    params = init_block_params(block, d, m, np.random.default_rng(0), "float64")
    Z = np.random.default_rng(1).normal(size=(2, m, d) if block.model == "quadratic" else (m, d))
    C = None
    if block.targets == "labels":
        C = np.eye(m)[None].repeat(2, 0) if block.model == "quadratic" else np.eye(m)
    b = readable_block(block)
    _raises_naming("Z", lambda: b.forward(Z, params, None if C is None else fa.asarray(C)), counts)
    if C is not None:
        _raises_naming("C", lambda: b.forward(fa.asarray(Z), params, C), counts)
    host_params = {k: fa.to_numpy(v) for k, v in params.items()}
    name = sorted(host_params)[0]
    mixed = {**params, name: host_params[name]}
    _raises_naming(f"params[{name!r}]", lambda: b.forward(fa.asarray(Z), mixed,
                                                          None if C is None else fa.asarray(C)), counts)


@DEVICE
def test_fit_names_a_network_built_on_the_host(counts):
    X, y = make_blobs(64, classes=3, seed=0)
    with fa.use_backend("numpy"):
        net = _net(targets="none")
    msg = _raises_naming("net.params['theta']", lambda: fit(net, X, y, epochs=1, progress=False), counts)
    assert "the active backend is 'cupy'" in msg


@DEVICE
def test_fit_on_numpy_names_device_data(backend):
    X, y = make_blobs(64, classes=3, seed=0)
    Xd, yd = fa.asarray(X), fa.asarray(y)
    with fa.use_backend("numpy"):
        net = _net(targets="none")
        _raises_naming("X", lambda: fit(net, Xd, y, epochs=1, progress=False))
        _raises_naming("y_val", lambda: fit(net, X, y, X_val=X, y_val=yd, epochs=1, progress=False))


@DEVICE
def test_host_data_given_to_fit_on_the_device_is_moved_not_refused(counts):
    X, y = make_blobs(64, classes=3, seed=0)
    net = _net(targets="none")
    with counts.window() as w:
        fit(net, X, y, X_val=X, y_val=y, epochs=1, progress=False, check_inputs=False)
    assert w.writes == 4 + 1  # X, y, X_val, y_val once; the epoch's order
