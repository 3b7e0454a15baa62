"""Network(threads=k): a batch cut along its first axis, the parts run in host threads, the
losses and gradients recombined by row weights, equal to one thread's results."""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np import network as network_module
from flowattn_np.layers import BlockConfig
from flowattn_np.network import Network, NetworkConfig
from flowattn_np.optim import SGD
from test_network import GRAD_CASES, make_data, net_of, randomise

TOL = 1e-12

CASES = {**GRAD_CASES,
         "quadratic-none-fused": (BlockConfig(model="quadratic", targets="none", h=0.2), True, "identity"),
         "quadratic-learned-fused-untied": (BlockConfig(model="quadratic", targets="learned", h=0.2,
                                                        learn_h=True), False, "linear"),
         "quadratic-mlp": (BlockConfig(model="quadratic", targets="mlp", mlp_hidden=5, h=0.2), True, "identity"),
         "linear-normalised": (BlockConfig(targets="labels", h=0.3, norm="sphere"), True, "linear")}


@pytest.fixture
def small_parts(monkeypatch):
    """Split every batch, however small, so that the tests' tiny batches take the threads."""
    monkeypatch.setattr(network_module, "THREAD_MIN_PART", 1)


def _pair(case, threads):
    block, tied, encoding = CASES[case]
    one = randomise(net_of(block, tied=tied, encoding=encoding))
    many = Network(one.config, params=dict(one.params), threads=threads)
    return one, many


def _close(a, b):
    return np.abs(a - b).max() <= TOL * max(np.abs(b).max(), 1.0)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_threads_give_one_threads_loss_gradients_and_logits(case, threads, small_parts):
    one, many = _pair(case, threads)
    X, y = make_data(one.config)
    assert len(many.batch_parts(X)) == min(threads, X.shape[0]) >= 2
    loss_1, grads_1, logits_1 = one.loss_and_grads(X, y)
    loss_k, grads_k, logits_k = many.loss_and_grads(X, y)
    assert abs(float(loss_k) - float(loss_1)) <= TOL * abs(float(loss_1))
    assert set(grads_k) == set(grads_1)
    for name in grads_1:
        assert grads_k[name].dtype == grads_1[name].dtype
        assert _close(grads_k[name], grads_1[name]), (name, np.abs(grads_k[name] - grads_1[name]).max())
    assert logits_k.shape == logits_1.shape and _close(logits_k, logits_1)


def test_uneven_parts_are_weighted_by_their_rows(small_parts):
    """Three sequences in two parts (2 + 1): an unweighted mean of the parts would differ."""
    cfg = NetworkConfig(n_inputs=4, layers=2, block=BlockConfig(model="quadratic", targets="none", h=0.2))
    one = randomise(Network(cfg, seed=3))
    many = Network(cfg, params=dict(one.params), threads=2)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3, 5, 4)), rng.integers(0, 5, (3, 5))
    assert [(p.start, p.stop) for p in many.batch_parts(X)] == [(0, 2), (2, 3)]
    loss_1, grads_1, _ = one.loss_and_grads(X, y)
    loss_k, grads_k, _ = many.loss_and_grads(X, y)
    assert abs(float(loss_k) - float(loss_1)) <= TOL * abs(float(loss_1))
    assert _close(grads_k["phi"], grads_1["phi"])


def test_float32_stays_float32(small_parts):
    block, tied, encoding = CASES["quadratic-none-fused"]
    net = net_of(block, tied=tied, encoding=encoding, dtype="float32")
    net = Network(net.config, params=net.params, threads=2)
    X, y = make_data(net.config, dtype="float32")
    loss, grads, logits = net.loss_and_grads(X, y)
    assert loss.dtype == logits.dtype == np.float32
    assert {str(g.dtype) for g in grads.values()} == {"float32"}


def test_training_with_threads_follows_one_thread(small_parts):
    one, many = _pair("quadratic-learned-fused-untied", 2)
    X, y = make_data(one.config)
    opts = [SGD(net.params, lr=0.05, momentum=0.9) for net in (one, many)]
    for _ in range(5):
        for net, opt in zip((one, many), opts):
            opt.step(net.loss_and_grads(X, y)[1])
    for name in one.params:
        assert _close(many.params[name], one.params[name]), name


def test_small_batches_and_one_thread_are_not_split():
    cfg = NetworkConfig(n_inputs=8, layers=1, block=BlockConfig(model="quadratic", targets="none"))
    X = np.zeros((32, 16, 8))
    assert Network(cfg, threads=4).batch_parts(X) == [slice(0, 32)]  # work 4096 x 16: too small
    big = np.zeros((16, 64, 64))  # work 65536 x 64: two parts of the minimum size
    assert Network(cfg, threads=4).batch_parts(big) == [slice(0, 8), slice(8, 16)]
    assert Network(cfg, threads=1).batch_parts(big) == [slice(0, 16)]
    linear = NetworkConfig(n_inputs=784, layers=1)  # 10 classes
    assert len(Network(linear, threads=2).batch_parts(np.zeros((256, 784)))) == 1
    assert len(Network(linear, threads=2).batch_parts(np.zeros((1024, 784)))) == 2


def test_a_single_sequence_is_not_cut_between_its_tokens(small_parts):
    """Tokens of one sequence attend to each other: (n, p) input to the quadratic model runs whole."""
    cfg = NetworkConfig(n_inputs=4, layers=1, block=BlockConfig(model="quadratic", targets="none", h=0.2))
    one = randomise(Network(cfg, seed=2))
    many = Network(cfg, params=dict(one.params), threads=2)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 6, 6)
    assert many.batch_parts(X) == [slice(0, 6)]
    assert float(many.loss_and_grads(X, y)[0]) == float(one.loss_and_grads(X, y)[0])


def test_device_batches_are_not_split(backend, small_parts):
    cfg = NetworkConfig(n_inputs=4, layers=1, block=BlockConfig(model="quadratic", targets="none"))
    net = Network(cfg, threads=2)
    X = fa.asarray(np.zeros((4, 3, 4)))
    assert len(net.batch_parts(X)) == (2 if backend == "numpy" else 1)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (True, TypeError)])
def test_bad_thread_counts_are_refused_by_name(bad, error):
    cfg = NetworkConfig(n_inputs=4, layers=1)
    with pytest.raises(error, match="^threads: expected a whole number"):
        Network(cfg, threads=bad)
