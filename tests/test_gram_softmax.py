"""Softmax of Gram scores S = Z theta Z^T (gram_softmax): the unshifted exponential where
it is provably safe, sigma(S) + sigma(S)^T and its VJP without transposes, and the loss
with the symmetrised gradient, against the general max-shifted functions of ops.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowattn_np.fast import gram_softmax as gs
from flowattn_np.equations.ops import label_cross_entropy_and_grad, softmax, softmax_vjp


def _gram(rng, B=3, m=7, d=4, scale=1.0, dtype="float64"):
    """(S, Z, theta) with theta = phi phi^T and S = Z theta Z^T as the network computes it."""
    phi = np.tril(rng.normal(size=(d, d)))
    theta = (phi @ phi.T).astype(dtype)
    Z = (scale * rng.normal(size=(B, m, d))).astype(dtype)
    return (Z @ theta) @ Z.swapaxes(-1, -2), Z, theta


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def test_the_factors_give_the_shifted_softmax_and_its_symmetric_sum(rng):
    S, Z, theta = _gram(rng)
    assert gs.exp_is_safe(S, Z, theta)
    P = softmax(S)
    E, r = gs.symmetric_softmax(S.copy())
    assert _rel(r[..., None] * E, P) < 1e-14
    Q = gs.attention_sum(E, r, np.empty_like(S))
    assert _rel(Q, P + P.swapaxes(-1, -2)) < 1e-14


def test_the_vjp_equals_the_symmetrised_softmax_vjp(rng):
    S, _, _ = _gram(rng)
    W = rng.normal(size=S.shape)
    P_bar = W + W.swapaxes(-1, -2)
    S_hat = softmax_vjp(softmax(S), P_bar)
    E, r = gs.symmetric_softmax(S.copy())
    Q = gs.attention_sum(E, r, np.empty_like(S))
    got = gs.attention_sum_vjp(E, r, Q, P_bar.copy(), np.empty_like(S))
    assert _rel(got, S_hat + S_hat.swapaxes(-1, -2)) < 1e-13


def test_the_vjp_against_central_differences(rng):
    """f(S) = <W, sigma(S) + sigma(S)^T> along a symmetric direction D: f' = <S_bar + S_bar^T, D> / 2."""
    S, _, _ = _gram(rng, B=2, m=5)
    W = rng.normal(size=S.shape)
    D = rng.normal(size=S.shape)
    D = D + D.swapaxes(-1, -2)

    def f(A):
        E, r = gs.symmetric_softmax(A.copy())
        return float((W * gs.attention_sum(E, r, np.empty_like(A))).sum())

    eps = 1e-6
    fd = (f(S + eps * D) - f(S - eps * D)) / (2 * eps)
    E, r = gs.symmetric_softmax(S.copy())
    Q = gs.attention_sum(E, r, np.empty_like(S))
    S_sym = gs.attention_sum_vjp(E, r, Q, W + W.swapaxes(-1, -2), np.empty_like(S))
    assert abs(fd - 0.5 * float((S_sym * D).sum())) <= 1e-8 * max(abs(fd), 1.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_loss_and_the_symmetrised_gradient_equal_the_general_ones(rng, dtype):
    S, Z, theta = _gram(rng, B=4, m=6, dtype=dtype)
    y = rng.integers(0, 6, (4, 6))
    y[0] = np.arange(6)  # every label on the diagonal: O + O^T has 2 there
    assert gs.exp_is_safe(S, Z, theta)
    loss_ref, G = label_cross_entropy_and_grad(S, y)
    loss, G_sym = gs.label_cross_entropy_and_symmetric_grad(S, y, np.empty_like(S), np.empty_like(S))
    assert loss.dtype == G_sym.dtype == np.dtype(dtype)
    tol = 1e-14 if dtype == "float64" else 2e-6
    assert abs(float(loss) - float(loss_ref)) <= tol * abs(float(loss_ref))
    assert _rel(G_sym, G + G.swapaxes(-1, -2)) < tol


def test_exp_is_safe_refuses_large_diagonals_and_depends_on_the_dtype(rng):
    S, Z, theta = _gram(rng, m=16, scale=3.0)
    top = np.diagonal(S, axis1=-2, axis2=-1).max()
    assert 100 < top < 600  # past float32's exp range, inside float64's
    assert gs.exp_is_safe(S, Z, theta)
    assert not gs.exp_is_safe(S.astype("float32"), Z.astype("float32"), theta.astype("float32"))
    S[0, 0, 0] = np.inf
    assert not gs.exp_is_safe(S, Z, theta)


def test_exp_is_safe_counts_round_off_of_a_large_theta(rng):
    """A theta of norm 1e8 whose null space holds every token: S is 0 in exact arithmetic,
    but the round-off of float32 products could reach past exp's range, so it refuses."""
    d = 4
    theta = np.zeros((d, d), "float32")
    theta[0, 0] = 1e8
    Z = rng.normal(size=(2, 5, d)).astype("float32")
    Z[..., 0] = 0.0
    S = (Z @ theta) @ Z.swapaxes(-1, -2)
    assert np.abs(S).max() == 0.0
    assert not gs.exp_is_safe(S, Z, theta)
    assert gs.exp_is_safe(S.astype("float64"), Z.astype("float64"), theta.astype("float64"))


def test_a_device_array_takes_the_shifted_path(backend, xp):
    S, Z, theta = (xp.asarray(a) for a in _gram(np.random.default_rng(0)))
    assert gs.exp_is_safe(S, Z, theta) == (backend == "numpy")


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(-2.0, 1.5), seed=st.integers(0, 2**16), dtype=st.sampled_from(["float32", "float64"]))
def test_where_it_is_safe_the_unshifted_softmax_is_finite_and_accurate(scale, seed, dtype):
    rng = np.random.default_rng(seed)
    S, Z, theta = _gram(rng, B=2, m=12, d=6, scale=10.0 ** scale, dtype=dtype)
    if not gs.exp_is_safe(S, Z, theta):
        assert np.diagonal(S, axis1=-2, axis2=-1).max() > 0.5 * np.log(np.finfo(dtype).max / 12) - 1
        return
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is harmless
        E, r = gs.symmetric_softmax(S.copy())
        Q = gs.attention_sum(E, r, np.empty_like(S))
    P = softmax(S.astype("float64"))
    tol = 1e-12 if dtype == "float64" else 1e-4
    assert E.dtype == Q.dtype == np.dtype(dtype)
    assert np.abs(r[..., None] * E - P).max() <= tol
    assert np.abs(Q - P - P.swapaxes(-1, -2)).max() <= 2 * tol
