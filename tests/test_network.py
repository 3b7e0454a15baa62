"""Tests for flowattn_np.blocks.network: the whole network of L split-flow blocks.

* ``Network.loss_and_grads`` equals central finite differences of ``Network.loss`` for
  every entry of ``net.params`` (float64), over tied / untied weights, identity /
  linear encodings, every source of targets, memory blocks, the quadratic model and
  multi-head labels, with L = 3 blocks, on every backend (NumPy and the strict CuPy
  stand-in included).
* L = 0 is exactly multinomial regression.
* Seeds, features, dtypes, missing labels and config serialisation.

Sizes are tiny (p = 4 inputs, m = 5 classes, 6 rows; 2 sequences of 4 tokens for the
quadratic model) so the finite-difference checks take well under a second each.
"""

import json

import numpy as np
import pytest

import flowattn_np as fa
from helpers import network_data
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig

P, M, ROWS, LAYERS = 4, 5, 6, 3
SEQS, TOKENS, P_QUAD = 2, 4, 3
RTOL = 1e-6
EPS = 1e-5  # central-difference step: round-off ~1e-16/EPS stays far below RTOL even for the
            # smallest per-block gradients (~1e-3) of an untied network


# ---------------------------------------------------------------- helpers

def make_data(config, seed=0, dtype=None):
    """(X, y) matching ``config``: rows of classes, sequences of tokens, or multi-head labels."""
    return network_data(config, ROWS, SEQS, TOKENS, seed=seed, dtype=dtype)


def randomise(net, seed=1, scale=0.4):
    """Perturb every parameter (init gives b = 0, phi = c I) so no gradient term vanishes."""
    rng = np.random.default_rng(seed)
    for name, value in list(net.params.items()):
        if name == "h" or name.endswith(".h"):
            continue
        host = fa.to_numpy(value) + scale * rng.normal(size=value.shape)
        if _is_lower(name):
            host = np.tril(host)
        net.params[name] = fa.asarray(host, dtype=value.dtype)
    return net


def _is_lower(name):
    return name.split(".")[-1] == "phi"


def assert_network_grads_match_fd(net, X, y):
    loss, grads, logits = net.loss_and_grads(X, y)
    assert set(grads) == set(net.params), f"{sorted(grads)} != {sorted(net.params)}"
    np.testing.assert_allclose(float(loss), float(net.loss(X, y)), rtol=1e-14)
    failures = []
    for name in list(net.params):
        original = net.params[name]
        lower = _is_lower(name)

        def f(x, name=name, lower=lower):
            net.params[name] = fa.get_array_module(x).tril(x) if lower else x
            return net.loss(X, y)

        try:
            r = fa.gradcheck(f, original.copy(), grads[name], eps=EPS)
        finally:
            net.params[name] = original
        if lower:
            g = fa.to_numpy(grads[name])
            assert np.array_equal(g, np.tril(g)), name
        if not r.rel_error < RTOL:
            failures.append(f"{name}: {r}")
    assert not failures, f"{net.describe()}:\n" + "\n".join(failures)
    # the checks restored every parameter: the loss is unchanged
    assert float(net.loss(X, y)) == float(loss)


def net_of(block, tied=True, encoding="identity", layers=LAYERS, dtype="float64", seed=0):
    quadratic = block.model == "quadratic"
    p = P_QUAD if quadratic else P
    d = None if encoding == "identity" else 3
    m = sum(block.heads) if block.heads else M
    cfg = NetworkConfig(n_inputs=p, n_classes=m, layers=layers, block=block, tied=tied,
                        encoding=encoding, d=d, dtype=dtype)
    return Network(cfg, seed=seed)


# ---------------------------------------------------------------- gradients

GRAD_CASES = {
    # linear model, learned oracle, learned h: tied / untied x identity / linear encoding
    **{f"linear-learned-{'tied' if t else 'untied'}-{e}":
       (BlockConfig(model="linear", targets="learned", learn_h=True, h=0.3), t, e)
       for t in (True, False) for e in ("identity", "linear")},
    "linear-labels-tied-strang-rk4": (BlockConfig(targets="labels", scheme="strang",
                                                  integrator="rk4", h=0.3, learn_h=True),
                                      True, "identity"),
    "linear-labels-untied-lie-euler": (BlockConfig(targets="labels", h=0.3), False, "linear"),
    "linear-none-tied": (BlockConfig(targets="none", scheme="strang", integrator="heun",
                                     h=0.3, learn_h=True), True, "linear"),
    "linear-none-untied": (BlockConfig(targets="none", h=0.3, learn_h=True), False, "identity"),
    "memory-tied": (BlockConfig(model="memory", targets="none", slots=3, h=0.3, learn_h=True),
                    True, "identity"),
    "memory-untied-fixed-h": (BlockConfig(model="memory", targets="none", slots=3, h=0.3),
                              False, "linear"),
    "quadratic-labels-tied-exact": (BlockConfig(model="quadratic", targets="labels", h=0.2,
                                                learn_h=True), True, "identity"),
    "quadratic-labels-untied-strang-euler-B": (
        BlockConfig(model="quadratic", targets="labels", scheme="strang", integrator="heun",
                    b_flow="euler", h=0.2, learn_h=True), False, "linear"),
    "quadratic-none-tied": (BlockConfig(model="quadratic", targets="none", h=0.2, learn_h=True),
                            True, "linear"),
    "quadratic-learned-tied": (BlockConfig(model="quadratic", targets="learned", scheme="strang",
                                           integrator="rk4", h=0.2, learn_h=True),
                               True, "identity"),
    "quadratic-learned-untied": (BlockConfig(model="quadratic", targets="learned", h=0.2,
                                             learn_h=True), False, "linear"),
    "multihead-labels-tied": (BlockConfig(targets="labels", heads=(2, 3), h=0.3, learn_h=True),
                              True, "identity"),
    "multihead-labels-untied-strang": (BlockConfig(targets="labels", heads=(2, 3),
                                                   scheme="strang", integrator="rk4", h=0.3),
                                       False, "linear"),
    "multihead-learned-tied": (BlockConfig(targets="learned", heads=(2, 3), h=0.3,
                                           learn_h=True), True, "identity"),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_network_gradients_match_central_differences(case, backend):
    block, tied, encoding = GRAD_CASES[case]
    net = randomise(net_of(block, tied=tied, encoding=encoding))
    X, y = make_data(net.config)
    assert_network_grads_match_fd(net, X, y)


def test_untied_network_has_per_block_parameters():
    net = net_of(BlockConfig(targets="learned", learn_h=True), tied=False)
    for layer in range(LAYERS):
        assert {f"block{layer}.{k}" for k in ("theta", "W", "b", "h")} <= set(net.params)
    tied = net_of(BlockConfig(targets="learned", learn_h=True), tied=True)
    assert set(tied.params) == {"theta", "W", "b", "h"}


def test_tied_blocks_share_the_head_theta():
    """Tied (the paper's form): perturbing the one theta moves blocks and head together."""
    net = randomise(net_of(BlockConfig(targets="labels", h=0.3)))
    X, y = make_data(net.config)
    _, grads, _ = net.loss_and_grads(X, y)
    zero = randomise(net_of(BlockConfig(targets="labels", h=0.3), layers=0))
    zero.params["theta"] = net.params["theta"]
    _, head_only, _ = zero.loss_and_grads(X, y)
    assert np.abs(grads["theta"] - head_only["theta"]).max() > 1e-3


# ---------------------------------------------------------------- L = 0

def test_zero_layers_is_multinomial_regression(xp):
    net = randomise(Network(NetworkConfig(n_inputs=P, n_classes=M, layers=0, dtype="float64")))
    X, y = make_data(net.config)
    theta = net.params["theta"]
    C = fa.one_hot(y, M, "float64")
    loss, grads, logits = net.loss_and_grads(X, y)
    assert set(grads) == {"theta"}
    np.testing.assert_array_equal(fa.to_numpy(logits), fa.to_numpy(X @ theta.T))
    np.testing.assert_allclose(float(loss), float(fa.linear_loss(X, theta, C)) / ROWS, rtol=1e-14)
    np.testing.assert_allclose(fa.to_numpy(grads["theta"]),
                               fa.to_numpy(fa.linear_grad_theta(X, theta, C)) / ROWS,
                               rtol=1e-13, atol=1e-15)


def test_zero_layers_quadratic_is_the_quadratic_model():
    cfg = NetworkConfig(n_inputs=P_QUAD, layers=0, block=BlockConfig(model="quadratic"),
                        dtype="float64")
    net = randomise(Network(cfg))
    X, y = make_data(cfg)
    phi = net.params["phi"]
    theta = fa.theta_from_phi(phi)
    C = np.stack([fa.one_hot(row, TOKENS) for row in y])
    loss, grads, logits = net.loss_and_grads(X, y)
    np.testing.assert_allclose(logits, fa.quadratic_logits(X, theta), rtol=1e-14)
    np.testing.assert_allclose(float(loss), float(fa.quadratic_loss(X, theta, C)) / (SEQS * TOKENS),
                               rtol=1e-13)
    np.testing.assert_allclose(grads["phi"], fa.quadratic_grad_phi(X, phi, C) / (SEQS * TOKENS),
                               rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- seeds, features

@pytest.mark.parametrize("block", [BlockConfig(targets="learned", learn_h=True),
                                   BlockConfig(model="quadratic", targets="learned"),
                                   BlockConfig(model="memory", targets="none", slots=3)],
                         ids=["linear", "quadratic", "memory"])
def test_same_seed_same_params_different_seed_different(block):
    a, b = net_of(block, tied=False, encoding="linear", seed=7), net_of(block, tied=False,
                                                                        encoding="linear", seed=7)
    c = net_of(block, tied=False, encoding="linear", seed=8)
    assert set(a.params) == set(b.params) == set(c.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # b (zeros), phi (I / d^(1/4)) and h (the config's value) are deterministic at init
    random_keys = [k for k in a.params if k.split(".")[-1] not in ("b", "phi", "h")]
    assert random_keys
    for k in random_keys:
        assert not np.array_equal(a.params[k], c.params[k]), k


@pytest.mark.parametrize("encoding", ["identity", "linear"])
@pytest.mark.parametrize("targets", ["labels", "none", "learned"])
def test_features_are_the_block_iterates(xp, encoding, targets):
    net = randomise(net_of(BlockConfig(targets=targets, h=0.3), encoding=encoding))
    X, y = make_data(net.config)
    feats = net.features(X, y)
    assert len(feats) == LAYERS + 1
    Z0 = X if encoding == "identity" else X @ net.params["E"].T
    np.testing.assert_array_equal(fa.to_numpy(feats[0]), fa.to_numpy(Z0))
    np.testing.assert_allclose(fa.to_numpy(feats[-1] @ net.params["theta"].T),
                               fa.to_numpy(net.logits(X, y)), rtol=1e-13, atol=1e-13)
    C = fa.one_hot(y, M, "float64") if targets == "labels" else None
    for prev, nxt in zip(feats, feats[1:]):
        np.testing.assert_allclose(fa.to_numpy(net.block.forward(prev, net.params, C)[0]),
                                   fa.to_numpy(nxt), rtol=1e-14, atol=1e-14)


def test_multihead_predict_is_argmax_per_head():
    net = randomise(net_of(BlockConfig(targets="learned", heads=(2, 3))))
    X, y = make_data(net.config)
    logits = net.logits(X)
    pred = net.predict(X)
    assert pred.shape == (ROWS, 2)
    np.testing.assert_array_equal(pred[:, 0], logits[:, :2].argmax(axis=1))
    np.testing.assert_array_equal(pred[:, 1], logits[:, 2:].argmax(axis=1))


def test_step_sizes_report_learned_h_with_its_sign():
    tied = net_of(BlockConfig(targets="none", h=-0.25, learn_h=True))
    assert tied.step_sizes() == {"h": -0.25}
    untied = net_of(BlockConfig(targets="none", h=0.5, learn_h=True), tied=False)
    assert untied.step_sizes() == {f"block{layer}.h": 0.5 for layer in range(LAYERS)}
    assert net_of(BlockConfig(targets="none", h=0.5)).step_sizes() == {}


# ---------------------------------------------------------------- dtypes, errors, config

FLOAT32_CASES = {
    "linear-learned-untied": (BlockConfig(targets="learned", learn_h=True), False, "linear"),
    "linear-labels-strang": (BlockConfig(targets="labels", scheme="strang", integrator="rk4",
                                         learn_h=True), True, "identity"),
    "quadratic-labels-exact": (BlockConfig(model="quadratic", targets="labels", learn_h=True),
                               True, "linear"),
    "quadratic-learned": (BlockConfig(model="quadratic", targets="learned", learn_h=True,
                                      scheme="strang"), False, "identity"),
    "memory": (BlockConfig(model="memory", targets="none", slots=3, learn_h=True), True,
               "identity"),
    "multihead": (BlockConfig(targets="labels", heads=(2, 3), learn_h=True), True, "identity"),
}


@pytest.mark.parametrize("case", list(FLOAT32_CASES))
def test_float32_network_keeps_float32(xp, case):
    block, tied, encoding = FLOAT32_CASES[case]
    net = randomise(net_of(block, tied=tied, encoding=encoding, dtype="float32"))
    assert all(v.dtype == np.float32 for v in net.params.values())
    X, y = make_data(net.config)
    loss, grads, logits = net.loss_and_grads(X, y)
    assert loss.dtype == np.float32
    assert logits.dtype == np.float32
    assert net.loss(X, y).dtype == np.float32
    for k, g in grads.items():
        assert g.dtype == np.float32, f"grad {k} is {g.dtype}"
        assert g.shape == net.params[k].shape, k
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_forward_without_y_for_label_blocks_raises_naming_y(model):
    net = net_of(BlockConfig(model=model, targets="labels"))
    X, _ = make_data(net.config)
    with pytest.raises(ValueError, match=r"\by\b"):
        net.forward(X)
    with pytest.raises(ValueError, match=r"\by\b"):
        net.features(X)
    with pytest.raises(ValueError, match=r"\by\b"):
        net.predict(X)


@pytest.mark.parametrize("targets", ["none", "learned"])
def test_label_free_network_runs_without_y(targets):
    net = net_of(BlockConfig(targets=targets))
    X, _ = make_data(net.config)
    assert net.forward(X)[0].shape == (ROWS, M)


@pytest.mark.parametrize("config", [
    NetworkConfig(n_inputs=P, n_classes=M, layers=3, dtype="float64"),
    NetworkConfig(n_inputs=P, n_classes=5, layers=2, tied=False, encoding="linear", d=3,
                  block=BlockConfig(targets="learned", scheme="strang", integrator="rk4",
                                    h=-0.25, learn_h=True, heads=(2, 3))),
    NetworkConfig(n_inputs=P_QUAD, layers=1, block=BlockConfig(model="quadratic",
                                                               b_flow="euler")),
    NetworkConfig(n_inputs=P, n_classes=M, layers=4,
                  block=BlockConfig(model="memory", targets="none", slots=3)),
], ids=["default", "multihead-untied", "quadratic", "memory"])
def test_network_config_round_trips_through_dict_and_json(config):
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert NetworkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_network_config_rejects_heads_not_summing_to_classes():
    with pytest.raises(ValueError, match="heads"):
        NetworkConfig(n_inputs=P, n_classes=6, block=BlockConfig(heads=(2, 3)))


def test_reused_training_buffers_never_leak_between_calls():
    """loss_and_grads reuses buffers from step to step; results must not depend on it."""
    rng = np.random.default_rng(5)
    cfg = fa.NetworkConfig(n_inputs=6, n_classes=3, layers=3, dtype="float64",
                           block=fa.BlockConfig(targets="learned", learn_h=True, h=0.3))
    net = fa.Network(cfg, seed=1)
    XA, yA = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    XB, yB = rng.normal(size=(8, 6)), rng.integers(0, 3, 8)
    feats = [z.copy() for z in net.features(XA)]
    kept = net.features(XA)
    lossA, gradsA, logitsA = net.loss_and_grads(XA, yA)
    gradsA = {k: v.copy() for k, v in gradsA.items()}
    net.loss_and_grads(XB, yB)
    lossA2, gradsA2, logitsA2 = net.loss_and_grads(XA, yA)
    assert lossA == lossA2 and np.array_equal(logitsA, logitsA2)
    for k in gradsA:
        assert np.array_equal(gradsA[k], gradsA2[k]), k
    for a, b in zip(feats, kept):  # arrays handed to the caller are never training buffers
        assert np.array_equal(a, b)
    fresh = fa.Network(cfg, seed=1)
    loss_f, grads_f, _ = fresh.loss_and_grads(XA, yA)
    assert loss_f == lossA and all(np.array_equal(grads_f[k], gradsA[k]) for k in gradsA)
