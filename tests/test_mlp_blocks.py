"""Blocks and networks with the MLP oracle (``BlockConfig(targets="mlp")``).

* The hand-derived backward of a block with the MLP oracle equals central finite
  differences in float64 (relative error below 1e-6) for Z and every parameter, in
  every scheme (Lie, Strang), with fixed and learned h, both activations, one or two
  heads (linear model), both B sub-flows (quadratic model), and A by Euler or RK4.
* A network of L = 3 such blocks, tied and untied, identity and linear encodings,
  multi-head and quadratic, has the gradients of central differences.
* Where the oracle is evaluated: at the input of the B sub-step. The Lie/Euler block is
  Z_half = Z - h CA(Z, theta), Z_out = Z_half + h C_hat(Z_half) theta (the GPT-2 order:
  the MLP sees the attention's output); the Strang block evaluates it after A(h/2).
* The token MLP of the quadratic model reduces to the one-layer oracle softmax(Z W Z^T).
* Configuration errors name the field; float32 stays float32; no labels are needed.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.implementations import readable_block
from flowattn_np.blocks.params import init_block_params
from flowattn_np.equations.mlp import mlp_token_oracle
from flowattn_np.blocks.network import Network, NetworkConfig

from helpers import assert_round_off, network_data
from test_network import assert_network_grads_match_fd, randomise

N, D, M, K, BATCH = 4, 3, 5, 6, 2
H = 0.3
RTOL = 1e-6


def make_problem(config, seed=0):
    """Random float64 (Z, params) for a block with the MLP oracle, every parameter non-zero."""
    rng = np.random.default_rng(seed)
    k = config.mlp_hidden
    if config.model == "linear":
        m = sum(config.heads) if config.heads else M
        Z = rng.normal(size=(N, D))
        params = {"theta": 0.8 * rng.normal(size=(m, D))}
        out = m
    else:
        Z = rng.normal(size=(BATCH, N, D))
        params = {"phi": np.tril(0.7 * rng.normal(size=(D, D)))}
        out = D
    params.update(W1=0.8 * rng.normal(size=(k, D)), b1=0.5 * rng.normal(size=k),
                  W2=0.8 * rng.normal(size=(out, k)), b2=0.5 * rng.normal(size=out))
    if config.learn_h:
        params["h"] = np.asarray(config.h)
    return Z, params


def assert_block_backward_matches_fd(config, seed=0):
    """FD check of Z and every parameter for the objective <U, block(Z)>."""
    block = readable_block(config)
    Z, params = make_problem(config, seed)
    U = np.random.default_rng(seed + 100).normal(size=Z.shape)

    def objective(Z_, params_):
        return float((U * block.forward(Z_, params_)[0]).sum())

    _, cache = block.forward(Z, params)
    back = block.backward(U.copy(), cache)
    Z_bar, grads = back.Z, back.params
    assert set(grads) == set(params)
    failures = []
    r = fa.gradcheck(lambda Z_: objective(Z_, params), Z, Z_bar)
    if not r.rel_error < RTOL:
        failures.append(f"Z: {r}")
    for name, value in params.items():
        lower = name == "phi"

        def f(p, name=name, lower=lower):
            return objective(Z, {**params, name: np.tril(p) if lower else p})

        r = fa.gradcheck(f, value, grads[name])
        if not r.rel_error < RTOL:
            failures.append(f"{name}: {r}")
    assert not failures, f"{config.describe()}:\n" + "\n".join(failures)


# ---------------------------------------------------------------- block gradients

LINEAR_CASES = [(scheme, integrator, learn_h, act, heads)
                for scheme, integrator in (("lie", "euler"), ("strang", "euler"), ("strang", "rk4"),
                                           ("lie", "heun"))
                for learn_h in (True, False) for act in ("gelu", "relu") for heads in (None, (2, 3))]


@pytest.mark.parametrize("scheme, integrator, learn_h, activation, heads", LINEAR_CASES)
def test_linear_mlp_block_backward_matches_central_differences(scheme, integrator, learn_h,
                                                               activation, heads):
    config = BlockConfig(model="linear", scheme=scheme, integrator=integrator, targets="mlp",
                         mlp_hidden=K, activation=activation, heads=heads, h=H, learn_h=learn_h)
    assert_block_backward_matches_fd(config)


QUADRATIC_CASES = [(scheme, b_flow, learn_h, act)
                   for scheme in ("lie", "strang") for b_flow in ("exact", "euler")
                   for learn_h in (True, False) for act in ("gelu", "relu")]


@pytest.mark.parametrize("scheme, b_flow, learn_h, activation", QUADRATIC_CASES)
def test_quadratic_mlp_block_backward_matches_central_differences(scheme, b_flow, learn_h, activation):
    config = BlockConfig(model="quadratic", scheme=scheme, b_flow=b_flow, targets="mlp",
                         mlp_hidden=K, activation=activation, h=0.2, learn_h=learn_h)
    assert_block_backward_matches_fd(config)


# ---------------------------------------------------------------- where the oracle is evaluated

def _oracle(Z, p, act="gelu"):
    return fa.mlp_oracle(Z, p["W1"], p["b1"], p["W2"], p["b2"], act)[0]


def test_lie_euler_block_is_attention_then_mlp_on_its_output(xp):
    """Z_half = Z - h CA(Z, theta); Z_out = Z_half + h C_hat(Z_half) theta: GPT-2's order."""
    config = BlockConfig(targets="mlp", mlp_hidden=K, h=H)
    Z, p = make_problem(config, seed=3)
    Z, p = fa.asarray(Z), {k: fa.asarray(v) for k, v in p.items()}
    theta = p["theta"]
    Z_half = Z - H * fa.cross_attention(Z, theta)
    expected = Z_half + H * _oracle(Z_half, p) @ theta
    out, _ = readable_block(config).forward(Z, p)
    assert_round_off(out, expected, Z, tol=1e-13)
    # the oracle at the block input (the parallel layout) is a different block
    parallel = Z_half + H * _oracle(Z, p) @ theta
    assert float(np.abs(fa.to_numpy(out - parallel)).max()) > 1e-3


def test_strang_block_evaluates_the_oracle_after_the_first_half_step(xp):
    config = BlockConfig(targets="mlp", mlp_hidden=K, h=H, scheme="strang", activation="relu")
    Z, p = make_problem(config, seed=4)
    Z, p = fa.asarray(Z), {k: fa.asarray(v) for k, v in p.items()}
    theta = p["theta"]
    Z1 = Z - 0.5 * H * fa.cross_attention(Z, theta)
    Z2 = Z1 + H * _oracle(Z1, p, "relu") @ theta
    expected = Z2 - 0.5 * H * fa.cross_attention(Z2, theta)
    out, _ = readable_block(config).forward(Z, p)
    assert_round_off(out, expected, Z, tol=1e-13)


def test_zero_output_layer_forces_toward_the_mean_prototype():
    """W2 = 0, b2 = 0: C_hat = 1/m everywhere, so B adds h * mean_k theta_k to every row."""
    config = BlockConfig(targets="mlp", mlp_hidden=K, h=H)
    Z, p = make_problem(config, seed=5)
    p.update(W2=np.zeros_like(p["W2"]), b2=np.zeros_like(p["b2"]))
    Z_half = Z - H * fa.cross_attention(Z, p["theta"])
    out, _ = readable_block(config).forward(Z, p)
    assert_round_off(out, Z_half + H * p["theta"].mean(axis=0), Z, tol=1e-14)


def test_token_mlp_with_identity_relu_is_the_one_layer_quadratic_oracle():
    """M(Z) = relu(Z I^T) W2^T = Z W for Z > 0 and W2 = W^T: softmax(M(Z) Z^T) = softmax(Z W Z^T)."""
    rng = np.random.default_rng(6)
    Z = rng.random(size=(BATCH, N, D)) + 0.1
    W = rng.normal(size=(D, D))
    C, _ = mlp_token_oracle(Z, np.eye(D), np.zeros(D), W.T, np.zeros(D), "relu")
    learned = BlockConfig(model="quadratic", targets="learned")
    C_one_layer, _ = learned.source.forward(learned, Z, {"W": W})
    assert_round_off(C, C_one_layer, tol=1e-14)


# ---------------------------------------------------------------- networks of L = 3 blocks

NET_CASES = {
    "linear-gelu-tied-identity": (BlockConfig(targets="mlp", mlp_hidden=4, h=0.3, learn_h=True),
                                  True, "identity"),
    "linear-relu-untied-linear": (BlockConfig(targets="mlp", mlp_hidden=4, activation="relu", h=0.3,
                                              learn_h=True), False, "linear"),
    "linear-gelu-strang-untied-fixed-h": (BlockConfig(targets="mlp", mlp_hidden=3, scheme="strang",
                                                      h=0.3), False, "identity"),
    "linear-relu-strang-rk4-tied": (BlockConfig(targets="mlp", mlp_hidden=3, scheme="strang",
                                                integrator="rk4", activation="relu", h=0.3,
                                                learn_h=True), True, "linear"),
    "multihead-gelu-tied": (BlockConfig(targets="mlp", mlp_hidden=4, heads=(2, 3), h=0.3, learn_h=True),
                            True, "identity"),
    "multihead-relu-untied-strang": (BlockConfig(targets="mlp", mlp_hidden=4, heads=(2, 3),
                                                 activation="relu", scheme="strang", h=0.3,
                                                 learn_h=True), False, "linear"),
    "quadratic-gelu-tied": (BlockConfig(model="quadratic", targets="mlp", mlp_hidden=4, h=0.2,
                                        learn_h=True), True, "identity"),
    "quadratic-relu-untied-strang-euler-B": (BlockConfig(model="quadratic", targets="mlp",
                                                         mlp_hidden=4, activation="relu",
                                                         scheme="strang", b_flow="euler", h=0.2,
                                                         learn_h=True), False, "linear"),
}


def net_of(block, tied, encoding, layers=3, dtype="float64", seed=0):
    quadratic = block.model == "quadratic"
    p = 3 if quadratic else 4
    m = sum(block.heads) if block.heads else M
    cfg = NetworkConfig(n_inputs=p, n_classes=m, layers=layers, block=block, tied=tied,
                        encoding=encoding, d=None if encoding == "identity" else 3, dtype=dtype)
    return Network(cfg, seed=seed)


def assert_mlp_network_matches_fd(block, tied, encoding):
    """FD check of every parameter of a network of L = 3 blocks with the MLP oracle."""
    net = randomise(net_of(block, tied, encoding))
    X, y = network_data(net.config, rows=6, seqs=2, tokens=4)
    if not tied:
        assert {"block0.W1", "block2.b2"} <= set(net.params)
    assert_network_grads_match_fd(net, X, y)


@pytest.mark.parametrize("case", list(NET_CASES))
def test_network_of_mlp_blocks_matches_central_differences(case):
    assert_mlp_network_matches_fd(*NET_CASES[case])


# ---------------------------------------------------------------- configuration, dtypes, labels

@pytest.mark.parametrize("fields, message", [
    (dict(targets="mlp"), "mlp_hidden: targets='mlp' needs a hidden width >= 1"),
    (dict(targets="learned", mlp_hidden=8), "mlp_hidden: only used with targets='mlp'"),
    (dict(targets="mlp", mlp_hidden=8, activation="swish"), "activation: expected one of"),
    (dict(model="memory", targets="mlp", mlp_hidden=8, slots=2), "targets: a 'memory' block"),
])
def test_bad_mlp_block_configuration_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        BlockConfig(**fields)


def test_describe_names_the_mlp_oracle():
    text = BlockConfig(targets="mlp", mlp_hidden=64, activation="relu").describe()
    assert "MLP oracle" in text and "k = 64" in text and "relu" in text


@pytest.mark.parametrize("model, out", [("linear", M), ("quadratic", D)])
def test_init_gives_mlp_parameters_of_the_documented_shapes(xp, model, out):
    config = BlockConfig(model=model, targets="mlp", mlp_hidden=K)
    p = init_block_params(config, D, M, np.random.default_rng(0), "float32")
    shapes = {k: tuple(v.shape) for k, v in p.items() if k in ("W1", "b1", "W2", "b2")}
    assert shapes == {"W1": (K, D), "b1": (K,), "W2": (out, K), "b2": (out,)}
    assert all(v.dtype == xp.float32 for v in p.values())


@pytest.mark.parametrize("case", ["linear-gelu-tied-identity", "multihead-relu-untied-strang",
                                  "quadratic-gelu-tied"])
def test_float32_network_with_the_mlp_oracle_stays_float32(xp, case):
    block, tied, encoding = NET_CASES[case]
    net = net_of(block, tied, encoding, dtype="float32")
    X, y = network_data(net.config, rows=6, seqs=2, tokens=4)
    loss, grads, logits = net.loss_and_grads(X, y)
    assert loss.dtype == logits.dtype == xp.float32
    assert {k: v.dtype for k, v in grads.items()} == {k: xp.float32 for k in grads}


def test_mlp_network_predicts_without_labels_and_round_trips_its_config(xp):
    cfg = NetworkConfig(n_inputs=4, n_classes=M, layers=2,
                        block=BlockConfig(targets="mlp", mlp_hidden=5, activation="relu", learn_h=True))
    net = Network(cfg, seed=0)
    X, _ = network_data(cfg, rows=6, seqs=2, tokens=4)
    pred = net.predict(X)  # no y: the blocks never read a label
    assert pred.shape == (6,)
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    assert len(net.features(X)) == 3
