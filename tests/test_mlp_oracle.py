"""Tests for the MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2) (flowattn_np.equations.mlp).

* The hand-derived VJPs of the oracle and of the plain MLP equal central finite
  differences in float64 (relative error below 1e-6) for Z and every parameter, with
  both activations, one or several heads, and leading batch axes; a property test
  draws every size from 1 to 8 (hidden width too).
* The activations: GELU (tanh form) within 5e-4 of the exact x Phi(x); both
  derivatives equal finite differences; no overflow at +-1e4.
* What the oracle is: W2 = 0, b2 = 0 gives uniform targets (per head); a ReLU whose
  first layer is the identity, on a positive input, gives the linear oracle
  softmax(Z W^T + b) (this pins the order of the composition).
* float32 in, float32 out (forward and every gradient), on every installed backend;
  bad input raises an error that names the argument.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.equations.mlp import check_mlp_inputs, init_mlp_params

from helpers import assert_round_off, host

RTOL = 1e-6
# Central differences with step 1e-6 carry round-off of about 1e-16 / 1e-6 = 1e-10 per entry
# on an O(1) objective (up to about 1e-9 over a whole gradient), so a gradient whose norm is
# below 1e-3 cannot be checked to 1e-6 relative: the error is measured relative to at least
# this norm (hypothesis found such shapes: one row, a nearly saturated softmax).
FLOOR = 1e-3
ACTS = ("gelu", "relu")


def make_mlp(rng, d, k, m, scale=0.9):
    """Random MLP weights (all non-zero, biases included) as a dict of float64 arrays."""
    return {"W1": scale * rng.normal(size=(k, d)), "b1": 0.5 * rng.normal(size=k),
            "W2": scale * rng.normal(size=(m, k)), "b2": 0.5 * rng.normal(size=m)}


def oracle_of(Z, p, activation, heads=None):
    return fa.mlp_oracle(Z, p["W1"], p["b1"], p["W2"], p["b2"], activation, heads)


def assert_vjp_matches_fd(Z, p, activation, heads=None, plain=False, seed=1):
    """Z_bar and every parameter gradient of the oracle (or the plain MLP) against central
    differences of <C_bar, C_hat(Z)>, one input at a time."""
    rng = np.random.default_rng(seed)

    def forward(Z, p):
        if plain:
            return fa.mlp_logits(Z, p["W1"], p["b1"], p["W2"], p["b2"], activation)
        return oracle_of(Z, p, activation, heads)

    out, cache = forward(Z, p)
    out_bar = rng.normal(size=out.shape)
    vjp = fa.mlp_logits_vjp if plain else fa.mlp_oracle_vjp
    Z_bar, grads = vjp(out_bar, cache)
    assert set(grads) == {"W1", "b1", "W2", "b2"}
    r = fa.gradcheck(lambda Zx: (out_bar * forward(Zx, p)[0]).sum(), Z, Z_bar, rtol=RTOL, floor=FLOOR)
    assert r.passed, f"Z ({activation}): {r}"
    for name in grads:
        def f(x, name=name):
            return forward(Z, {**p, name: x})[0]
        r = fa.gradcheck(lambda x, f=f: (out_bar * f(x)).sum(), p[name], grads[name], rtol=RTOL,
                         floor=FLOOR)
        assert r.passed, f"{name} ({activation}): {r}"


def relu_safe(Z, p, margin=1e-3):
    """True when no pre-activation is within ``margin`` of ReLU's kink (where central
    differences straddle the kink and measure a one-sided slope)."""
    A = Z @ p["W1"].T + p["b1"]
    return bool(np.abs(A).min() > margin)


# ---------------------------------------------------------------- activations

def test_gelu_is_the_tanh_form_within_5e_4_of_the_exact_gelu():
    x = np.linspace(-8, 8, 16001)
    exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    err = np.abs(fa.gelu(x) - exact)
    assert err.max() < 5e-4
    assert err.max() > 1e-4  # it IS the approximation, not the erf form
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert_round_off(fa.gelu(x), tanh_form, tol=1e-15)


@pytest.mark.parametrize("activation", ACTS)
def test_activation_derivative_matches_finite_differences(activation):
    f, df = fa.ACTIVATIONS[activation]
    x = np.linspace(-6, 6, 1201) + 1e-3  # off the grid point 0, ReLU's kink
    eps = 1e-6
    fd = (f(x + eps) - f(x - eps)) / (2 * eps)
    assert np.abs(df(x) - fd).max() < 1e-8


def test_relu_derivative_is_zero_at_the_kink():
    """The convention the docs state: relu'(0) = 0 (a subgradient; the kink itself)."""
    np.testing.assert_array_equal(fa.relu_grad(np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 1.0])
    assert fa.gelu_grad(np.array([0.0]))[0] == 0.5


def test_activations_at_large_arguments_stay_finite_in_float32():
    x = np.array([-1e4, -60.0, 0.0, 60.0, 1e4], dtype=np.float32)
    for f, df in fa.ACTIVATIONS.values():
        y, g = f(x), df(x)
        assert y.dtype == g.dtype == np.float32
        assert np.isfinite(y).all() and np.isfinite(g).all()
        np.testing.assert_allclose(y[[0, -1]], [0.0, 1e4])
        np.testing.assert_allclose(g[[0, -1]], [0.0, 1.0])


# ---------------------------------------------------------------- finite differences

@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("heads", [None, (2, 3)])
def test_oracle_vjp_matches_finite_differences(activation, heads):
    rng = np.random.default_rng(3)
    Z, p = rng.normal(size=(6, 4)), make_mlp(rng, 4, 7, 5)
    assert relu_safe(Z, p)
    assert_vjp_matches_fd(Z, p, activation, heads)


@pytest.mark.parametrize("activation", ACTS)
def test_plain_mlp_vjp_matches_finite_differences(activation):
    rng = np.random.default_rng(4)
    Z, p = rng.normal(size=(5, 3)), make_mlp(rng, 3, 6, 4)
    assert relu_safe(Z, p)
    assert_vjp_matches_fd(Z, p, activation, plain=True)


@pytest.mark.parametrize("activation", ACTS)
def test_oracle_vjp_with_leading_batch_axes(activation):
    """Z: (B, n, d), applied token by token; the parameter gradients sum over B and n."""
    rng = np.random.default_rng(5)
    Z, p = rng.normal(size=(2, 3, 4)), make_mlp(rng, 4, 5, 3)
    assert relu_safe(Z, p)
    assert_vjp_matches_fd(Z, p, activation)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), d=st.integers(1, 8), k=st.integers(1, 8), m=st.integers(1, 8),
       activation=st.sampled_from(ACTS), split=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_oracle_vjp_property_over_shapes(n, d, k, m, activation, split, seed):
    rng = np.random.default_rng(seed)
    Z, p = rng.normal(size=(n, d)), make_mlp(rng, d, k, m)
    assume(activation == "gelu" or relu_safe(Z, p))
    heads = (1, m - 1) if split and m > 1 else None
    assert_vjp_matches_fd(Z, p, activation, heads, seed=seed + 1)


# ---------------------------------------------------------------- what the oracle is

@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("heads", [None, (3, 1, 4)])
def test_zero_output_layer_gives_uniform_targets(xp, activation, heads):
    rng = np.random.default_rng(6)
    m = 8
    Z = xp.asarray(rng.normal(size=(5, 4)))
    W1, b1 = xp.asarray(rng.normal(size=(6, 4))), xp.asarray(rng.normal(size=6))
    C, _ = fa.mlp_oracle(Z, W1, b1, xp.zeros((m, 6)), xp.zeros(m), activation, heads)
    sizes = heads or (m,)
    expected = np.concatenate([np.full(s, 1.0 / s) for s in sizes])
    assert_round_off(C, np.broadcast_to(expected, (5, m)), tol=1e-15)


def test_identity_first_layer_relu_on_positive_input_is_the_linear_oracle(xp):
    """act(Z I^T + 0) = Z for Z > 0, so C_hat = softmax(Z W2^T + b2): the linear oracle with
    W = W2, b = b2. With m != d a wrong order (W1 after W2, or W^T for W) fails."""
    rng = np.random.default_rng(7)
    n, d, m = 6, 4, 5
    Z = xp.asarray(rng.random(size=(n, d)) + 0.1)
    W, b = xp.asarray(rng.normal(size=(m, d))), xp.asarray(rng.normal(size=m))
    C, _ = fa.mlp_oracle(Z, xp.eye(d), xp.zeros(d), W, b, "relu")
    assert_round_off(C, fa.softmax(Z @ W.T + b), tol=1e-14)
    config = BlockConfig(model="linear", targets="learned")
    C_linear, _ = config.source.forward(config, Z, {"W": W, "b": b})
    assert_round_off(C, C_linear, tol=1e-14)


def test_targets_are_distributions_and_finite_at_huge_logits(xp):
    rng = np.random.default_rng(8)
    Z = xp.asarray(rng.normal(size=(7, 3)) * 1e4)
    p = {k: xp.asarray(v * 1e2) for k, v in make_mlp(rng, 3, 5, 4).items()}
    C, cache = oracle_of(Z, p, "gelu")
    Zb, grads = fa.mlp_oracle_vjp(xp.ones_like(C), cache)
    for a in [C, Zb, *grads.values()]:
        assert bool(xp.isfinite(a).all())
    assert_round_off(C.sum(axis=1), np.ones(7), tol=1e-12)


# ---------------------------------------------------------------- dtypes, backends, errors

@pytest.mark.parametrize("activation", ACTS)
def test_float32_in_float32_out(xp, activation):
    rng = np.random.default_rng(9)
    Z = xp.asarray(rng.normal(size=(4, 3)), dtype=xp.float32)
    p = init_mlp_params(3, 6, 5, rng, "float32")
    assert all(v.dtype == xp.float32 for v in p.values())
    p["b2"] += 0.1  # not all-zero: a float64 promotion would show in every output
    C, cache = oracle_of(Z, p, activation, heads=(2, 3))
    assert C.dtype == xp.float32
    Z_bar, grads = fa.mlp_oracle_vjp(xp.ones_like(C), cache)
    assert Z_bar.dtype == xp.float32
    assert {k: v.dtype for k, v in grads.items()} == {k: xp.float32 for k in grads}
    C64, _ = oracle_of(Z.astype(xp.float64), {k: v.astype(xp.float64) for k, v in p.items()},
                       activation, heads=(2, 3))
    assert_round_off(C, C64, tol=1e-6)


def test_cache_is_a_readable_named_tuple():
    rng = np.random.default_rng(10)
    Z, p = rng.normal(size=(3, 2)), make_mlp(rng, 2, 4, 3)
    C, cache = oracle_of(Z, p, "relu", heads=(1, 2))
    assert isinstance(cache, fa.MLPCache)
    assert cache.A.shape == cache.H.shape == (3, 4)
    assert cache.C is C and cache.heads == (1, 2) and cache.activation == "relu"
    np.testing.assert_array_equal(cache.H, np.maximum(cache.A, 0))
    assert "activation='relu'" in repr(cache)


@pytest.mark.parametrize("change, message", [
    (dict(W1=np.zeros((4, 3))), "W1: expected shape (4, 2)"),
    (dict(b1=np.zeros(3)), "b1: expected shape (4)"),
    (dict(W2=np.zeros((3, 5))), "W2: expected shape (3, 4)"),
    (dict(b2=np.zeros(2)), "b2: expected shape (3)"),
    (dict(activation="tanh"), "activation: expected one of 'gelu', 'relu'"),
    (dict(heads=(1, 1)), "heads: expected positive head sizes summing to"),
    (dict(W2=np.zeros((3, 4), dtype=np.float32)), "expected arrays of one floating dtype"),
    (dict(Z=np.full((5, 2), np.nan)), "Z: expected finite values"),
])
def test_bad_input_names_the_argument(change, message):
    args = dict(Z=np.ones((5, 2)), W1=np.ones((4, 2)), b1=np.ones(4), W2=np.ones((3, 4)),
                b2=np.ones(3), activation="gelu", heads=None)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        fa.mlp_oracle(**args)
    with pytest.raises((ValueError, TypeError)):
        check_mlp_inputs(**args)


def test_forward_leaves_its_inputs_intact():
    rng = np.random.default_rng(11)
    Z, p = rng.normal(size=(4, 3)), make_mlp(rng, 3, 5, 2)
    before = {k: v.copy() for k, v in p.items()}
    Z0 = Z.copy()
    C, cache = oracle_of(Z, p, "gelu")
    fa.mlp_oracle_vjp(np.ones_like(C), cache)
    np.testing.assert_array_equal(Z, Z0)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])


def test_host_rng_initialisation_is_the_same_on_every_backend(xp):
    a = init_mlp_params(3, 4, 2, np.random.default_rng(0), "float64")
    b = init_mlp_params(3, 4, 2, np.random.default_rng(0), "float64")
    for k in a:
        np.testing.assert_array_equal(host(a[k]), host(b[k]))
    assert host(a["W1"]).shape == (4, 3) and host(a["W2"]).shape == (2, 4)
    assert not host(a["b1"]).any() and not host(a["b2"]).any()


# ---------------------------------------------------------------- the MLP alone, as a classifier

def test_mlp_classifier_gradients_match_central_differences():
    from flowattn_np.blocks.mlp_classifier import MLPClassifier, MLPClassifierConfig

    rng = np.random.default_rng(12)
    net = MLPClassifier(MLPClassifierConfig(4, n_classes=3, hidden=5, dtype="float64"), seed=0)
    for k in net.params:  # init has zero biases: make every gradient term non-zero
        net.params[k] = net.params[k] + 0.3 * rng.normal(size=net.params[k].shape)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    loss, grads, logits = net.loss_and_grads(X, y)
    assert float(loss) == pytest.approx(float(net.loss(X, y)), rel=1e-14)
    for name, value in net.params.items():
        def f(x, name=name):
            saved, net.params[name] = net.params[name], x
            try:
                return net.loss(X, y)
            finally:
                net.params[name] = saved
        r = fa.gradcheck(f, value.copy(), grads[name])
        assert r.passed, f"{name}: {r}"


def test_mlp_classifier_trains_with_fit_and_predicts_without_labels(xp):
    from flowattn_np.blocks.mlp_classifier import MLPClassifier, MLPClassifierConfig
    from flowattn_np.training.train import evaluate, fit

    rng = np.random.default_rng(13)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)  # XOR-like: not linearly separable
    net = MLPClassifier(MLPClassifierConfig(5, n_classes=2, hidden=16, activation="relu"), seed=0)
    before = evaluate(net, X, y)["loss"]
    hist = fit(net, X, y, epochs=30, batch_size=50, optimizer=fa.Adam(net.params, lr=0.02),
               progress=False)
    after = evaluate(net, X, y)
    assert after["loss"] < 0.5 * before and after["accuracy"] > 0.9
    assert len(hist) == 30
    pred = net.predict(fa.asarray(X))
    assert pred.shape == (200,)
    assert float((host(pred) == y).mean()) == pytest.approx(after["accuracy"])
    assert {k: v.dtype for k, v in net.params.items()} == {k: xp.float32 for k in net.params}
    assert "MLP alone" in net.describe()


def test_mlp_classifier_names_bad_inputs_before_any_work():
    from flowattn_np.blocks.mlp_classifier import MLPClassifier, MLPClassifierConfig
    from flowattn_np.training.train import evaluate

    net = MLPClassifier(MLPClassifierConfig(4, n_classes=3, hidden=5), seed=0)
    X, y = np.zeros((6, 4), dtype=np.float32), np.zeros(6, dtype=np.int64)
    with pytest.raises(ValueError, match=r"X: expected at least one row of 4 features"):
        evaluate(net, np.zeros((6, 5), dtype=np.float32), y)
    with pytest.raises(ValueError, match=r"^y: "):
        evaluate(net, X, np.full(6, 3))
    with pytest.raises(ValueError, match=r"^y: expected shape \(6\)"):
        evaluate(net, X, np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="hidden: expected a positive integer"):
        MLPClassifierConfig(4, hidden=0)
