"""Numerics of flowattn_np.equations.ops: stable softmax / log-softmax / LSE, cross-entropy, one-hot.

Backend-aware tests take ``xp`` and run once per backend; comparisons are made on the
host through ``fa.to_numpy``.
"""

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from flowattn_np.equations.ops import mean_cross_entropy_and_grad, softmax_vjp_heads

HYP = settings(max_examples=30, deadline=None, database=None)
DTYPES = ["float32", "float64"]
EXTREME = [[-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]]


def host(a):
    return np.asarray(fa.to_numpy(a))


def rtol_for(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


# ---------------------------------------------------------------- stability at +-1e4


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_extreme_logits_is_finite_and_rows_sum_to_one(xp, dtype):
    S = xp.asarray(EXTREME, dtype=dtype)
    P = fa.softmax(S)
    assert P.dtype == S.dtype
    P = host(P)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=rtol_for(dtype))
    np.testing.assert_allclose(P, [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], atol=rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_of_extreme_logits_is_zero_or_minus_log2_at_the_max(xp, dtype):
    S = xp.asarray(EXTREME, dtype=dtype)
    L = fa.log_softmax(S)
    assert L.dtype == S.dtype
    L = host(L)
    assert np.isfinite(L).all()
    # float32 spacing at 1e4 is ~1e-3, so LSE = 1e4 + log 2 is only that accurate
    tol = 2e-3 if dtype == "float32" else 1e-12
    assert abs(L[0, 1]) <= tol
    assert abs(L[1, 0] + math.log(2)) <= tol and abs(L[1, 1] + math.log(2)) <= tol
    np.testing.assert_allclose(L[0, 0], -2e4, rtol=1e-6)
    np.testing.assert_allclose(L[1, 2], -2e4 - math.log(2), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_of_extreme_logits_equals_the_max_plus_log_count(xp, dtype):
    S = xp.asarray(EXTREME, dtype=dtype)
    lse = fa.logsumexp(S)
    assert lse.dtype == S.dtype and lse.shape == (2,)
    np.testing.assert_allclose(host(lse), [1e4, 1e4 + math.log(2)], rtol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_extreme_logits_is_finite_and_exact(xp, dtype):
    S = xp.asarray(EXTREME, dtype=dtype)
    C = xp.asarray([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    ce = fa.cross_entropy(S, C)
    assert ce.dtype == S.dtype
    tol = 2e-3 if dtype == "float32" else 1e-12
    assert np.isfinite(float(host(ce)))
    assert abs(float(host(ce)) - math.log(2)) <= tol
    # a label on the losing class costs the full logit gap
    C_bad = xp.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    ce_bad = float(host(fa.cross_entropy(S, C_bad)))
    np.testing.assert_allclose(ce_bad, 2e4 + 2e4 + math.log(2), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_row_with_logit_gap_1001_is_finite(xp, dtype):
    S = xp.asarray([[-1000.0, 1.0]], dtype=dtype)
    P = host(fa.softmax(S))
    L = host(fa.log_softmax(S))
    lse = host(fa.logsumexp(S))
    C = xp.asarray([[1.0, 0.0]], dtype=dtype)
    ce = float(host(fa.cross_entropy(S, C)))
    assert np.isfinite(P).all() and np.isfinite(L).all() and np.isfinite(lse).all()
    np.testing.assert_allclose(P, [[0.0, 1.0]], atol=1e-30)
    np.testing.assert_allclose(L, [[-1001.0, 0.0]], atol=1e-4 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(lse, [1.0], rtol=1e-7)
    np.testing.assert_allclose(ce, 1001.0, rtol=1e-6)


# ---------------------------------------------------------------- correctness


def test_softmax_matches_scipy_on_moderate_logits(xp, rng):
    S = rng.normal(size=(3, 4, 7)) * 3
    P = fa.softmax(xp.asarray(S))
    np.testing.assert_allclose(host(P), scipy.special.softmax(S, axis=-1), rtol=1e-13, atol=1e-16)


def test_log_softmax_and_logsumexp_match_scipy(xp, rng):
    S = rng.normal(size=(5, 6)) * 4
    np.testing.assert_allclose(host(fa.log_softmax(xp.asarray(S))),
                               scipy.special.log_softmax(S, axis=-1), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(host(fa.logsumexp(xp.asarray(S))),
                               scipy.special.logsumexp(S, axis=-1), rtol=1e-13)


@HYP
@given(n=st.integers(1, 8), m=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       shift=st.floats(-1e3, 1e3))
def test_softmax_is_invariant_to_a_constant_shift_of_each_row(n, m, seed, shift):
    S = np.random.default_rng(seed).normal(size=(n, m)) * 5
    np.testing.assert_allclose(fa.softmax(S + shift), fa.softmax(S), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(fa.softmax(S).sum(axis=-1), 1.0, rtol=1e-13)


def test_softmax_with_heads_normalises_each_heads_columns(xp, rng):
    S = rng.normal(size=(4, 5)) * 3
    P = host(fa.softmax(xp.asarray(S), heads=(2, 3)))
    np.testing.assert_allclose(P[:, :2].sum(axis=1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(P[:, 2:].sum(axis=1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(P[:, :2], scipy.special.softmax(S[:, :2], axis=1), rtol=1e-13)
    np.testing.assert_allclose(P[:, 2:], scipy.special.softmax(S[:, 2:], axis=1), rtol=1e-13)
    # and it is not the plain softmax over all five columns
    assert not np.allclose(P, scipy.special.softmax(S, axis=1))


def test_logsumexp_and_log_softmax_with_heads_work_per_head(xp, rng):
    S = rng.normal(size=(2, 3, 5))
    lse = host(fa.logsumexp(xp.asarray(S), heads=(2, 3)))
    assert lse.shape == (2, 3, 2)
    np.testing.assert_allclose(lse[..., 0], scipy.special.logsumexp(S[..., :2], axis=-1), rtol=1e-13)
    np.testing.assert_allclose(lse[..., 1], scipy.special.logsumexp(S[..., 2:], axis=-1), rtol=1e-13)
    L = host(fa.log_softmax(xp.asarray(S), heads=(2, 3)))
    np.testing.assert_allclose(np.exp(L[..., :2]).sum(-1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(np.exp(L[..., 2:]).sum(-1), 1.0, rtol=1e-13)


def test_softmax_writes_into_out_when_given(rng):
    S = rng.normal(size=(3, 4))
    out = np.empty_like(S)
    res = fa.softmax(S, out=out)
    assert res is out
    np.testing.assert_allclose(out, scipy.special.softmax(S, axis=1), rtol=1e-13)


def test_cross_entropy_equals_minus_label_logit_product_plus_sum_of_lse(xp, rng):
    """Eq. (3): l = -<C, N> + sum_i LSE(N)_i, which uses C 1 = 1 (soft labels too)."""
    N = rng.normal(size=(6, 4)) * 2
    C = scipy.special.softmax(rng.normal(size=(6, 4)), axis=1)
    ce = float(host(fa.cross_entropy(xp.asarray(N), xp.asarray(C))))
    expected = -(C * N).sum() + scipy.special.logsumexp(N, axis=1).sum()
    np.testing.assert_allclose(ce, expected, rtol=1e-13)


def test_cross_entropy_with_heads_is_the_sum_of_the_heads_cross_entropies(rng):
    N = rng.normal(size=(5, 5))
    C = np.hstack([fa.one_hot(rng.integers(3, size=5), 3), fa.one_hot(rng.integers(2, size=5), 2)])
    total = fa.cross_entropy(N, C, heads=(3, 2))
    parts = fa.cross_entropy(N[:, :3], C[:, :3]) + fa.cross_entropy(N[:, 3:], C[:, 3:])
    np.testing.assert_allclose(total, parts, rtol=1e-13)


def test_mean_cross_entropy_divides_by_the_number_of_rows(xp, rng):
    N = rng.normal(size=(2, 3, 4))
    C = scipy.special.softmax(rng.normal(size=(2, 3, 4)), axis=-1)
    Nx, Cx = xp.asarray(N), xp.asarray(C)
    total = float(host(fa.cross_entropy(Nx, Cx)))
    mean = float(host(fa.mean_cross_entropy(Nx, Cx)))
    np.testing.assert_allclose(mean, total / 6, rtol=1e-14)
    assert mean > 0


@pytest.mark.parametrize("heads", [None, (3, 2)])
def test_mean_cross_entropy_and_grad_is_the_loss_and_its_gradient(heads, rng):
    """One log-softmax gives mean_cross_entropy and (sigma(N) - C) / rows; the gradient
    matches central differences, per head too."""
    N = rng.normal(size=(4, 5)) * 3
    C = fa.softmax(rng.normal(size=(4, 5)), heads)
    loss, G = mean_cross_entropy_and_grad(N, C, heads)
    assert float(loss) == pytest.approx(float(fa.mean_cross_entropy(N, C, heads)), rel=1e-14)
    r = fa.gradcheck(lambda X: float(fa.mean_cross_entropy(X, C, heads)), N, G)
    assert r.rel_error < 1e-8, str(r)


def test_one_hot_puts_a_single_one_at_each_label(xp):
    y = xp.asarray([2, 0, 3, 3, 1])
    C = fa.one_hot(y, 4)
    assert C.shape == (5, 4) and C.dtype == np.float64
    Ch = host(C)
    np.testing.assert_array_equal(Ch.sum(axis=1), 1.0)
    np.testing.assert_array_equal(Ch.argmax(axis=1), [2, 0, 3, 3, 1])
    assert set(np.unique(Ch)) == {0.0, 1.0}
    assert fa.one_hot(y, 6, dtype="float32").dtype == np.float32
    assert fa.one_hot(y, 6).shape == (5, 6)


def test_cross_entropy_of_one_hot_labels_is_minus_log_prob_of_the_label(rng):
    N = rng.normal(size=(4, 3))
    y = np.array([0, 2, 1, 1])
    expected = -scipy.special.log_softmax(N, axis=1)[np.arange(4), y].sum()
    np.testing.assert_allclose(fa.cross_entropy(N, fa.one_hot(y, 3)), expected, rtol=1e-13)


# ---------------------------------------------------------------- softmax VJP


@HYP
@given(n=st.integers(1, 6), m=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_softmax_vjp_matches_central_differences(n, m, seed):
    rng = np.random.default_rng(seed)
    S, P_bar = rng.normal(size=(n, m)) * 2, rng.normal(size=(n, m))
    vjp = fa.softmax_vjp(fa.softmax(S), P_bar)
    r = fa.check_vjp(fa.softmax, S, P_bar, vjp)
    assert r.rel_error < 1e-6, str(r)


def test_softmax_vjp_with_heads_matches_central_differences(rng):
    heads = (2, 3)
    S, P_bar = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    vjp = softmax_vjp_heads(fa.softmax(S, heads), P_bar, heads)
    r = fa.check_vjp(lambda x: fa.softmax(x, heads), S, P_bar, vjp)
    assert r.rel_error < 1e-6, str(r)


def test_softmax_vjp_on_backend_matches_formula(xp, rng):
    S, P_bar = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    P = scipy.special.softmax(S, axis=1)
    expected = P * (P_bar - (P * P_bar).sum(axis=1, keepdims=True))
    got = fa.softmax_vjp(xp.asarray(P), xp.asarray(P_bar))
    np.testing.assert_allclose(host(got), expected, rtol=1e-13, atol=1e-16)


# ---------------------------------------------------------------- dtype, no in-place change


OPS_FLOAT32 = {
    "softmax": lambda S, C: fa.softmax(S),
    "softmax_heads": lambda S, C: fa.softmax(S, heads=(1, 2)),
    "log_softmax": lambda S, C: fa.log_softmax(S),
    "log_softmax_heads": lambda S, C: fa.log_softmax(S, heads=(2, 1)),
    "logsumexp": lambda S, C: fa.logsumexp(S),
    "cross_entropy": lambda S, C: fa.cross_entropy(S, C),
    "mean_cross_entropy": lambda S, C: fa.mean_cross_entropy(S, C),
    "softmax_vjp": lambda S, C: fa.softmax_vjp(fa.softmax(S), C),
}


@pytest.mark.parametrize("name", sorted(OPS_FLOAT32))
def test_ops_keep_float32(xp, rng, name):
    S = xp.asarray(rng.normal(size=(4, 3)), dtype="float32")
    C = xp.asarray(scipy.special.softmax(rng.normal(size=(4, 3)), axis=1), dtype="float32")
    out = OPS_FLOAT32[name](S, C)
    assert out.dtype == np.float32, f"{name} returned {out.dtype}"
    assert np.isfinite(host(out)).all()


@pytest.mark.parametrize("name", sorted(OPS_FLOAT32))
def test_ops_do_not_modify_their_inputs(rng, name):
    S = rng.normal(size=(4, 3))
    C = scipy.special.softmax(rng.normal(size=(4, 3)), axis=1)
    S0, C0 = S.copy(), C.copy()
    OPS_FLOAT32[name](S, C)
    np.testing.assert_array_equal(S, S0)
    np.testing.assert_array_equal(C, C0)


# ---------------------------------------------------------------- shifts of symmetric scores


def _symmetric_scores(xp, dtype, scale, rng):
    """Z theta Z^T from matrix products: symmetric up to round-off, as the attention
    scores and the quadratic head's logits are."""
    Z = rng.normal(size=(3, 7, 4))
    phi = rng.normal(size=(4, 4))
    theta = phi @ phi.T
    S = (scale * (Z @ theta)) @ np.swapaxes(Z, -1, -2)
    return xp.asarray(S.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["moderate", "logits1e4"])
def test_softmax_shifted_by_symmetric_row_max_equals_the_row_max_shift(xp, rng, dtype, scale):
    from flowattn_np.equations.ops import symmetric_row_max

    S = _symmetric_scores(xp, dtype, scale, rng)
    shift = symmetric_row_max(S)
    assert shift.shape == (3, 7, 1)
    assert np.abs(host(shift)[..., 0] - host(S).max(axis=-1)).max() <= 1e-5 * np.abs(host(S)).max()
    P = host(fa.softmax(S, shift=shift))
    assert np.isfinite(P).all() and P.dtype == np.dtype(dtype)
    np.testing.assert_allclose(P, host(fa.softmax(S)), rtol=rtol_for(dtype), atol=rtol_for(dtype))


def test_softmax_shift_is_used(rng):
    """A shift that is not the row maximum (here zero) overflows at logits of 1e4: the
    shift given is the one applied."""
    S = np.array([[1e4, 0.0], [0.0, 1.0]])
    with np.errstate(over="ignore", invalid="ignore"):
        P = fa.softmax(S, shift=np.zeros((2, 1)))
    assert not np.isfinite(P[0]).all()
    np.testing.assert_allclose(P[1], scipy.special.softmax(S[1]), rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["moderate", "logits1e4"])
def test_label_cross_entropy_with_symmetric_shift_equals_the_plain_one(xp, rng, dtype, scale):
    from flowattn_np.equations.ops import label_cross_entropy_and_grad, symmetric_row_max

    S = _symmetric_scores(xp, dtype, scale, rng)
    y = xp.asarray(rng.integers(0, 7, (3, 7)))
    loss, G = label_cross_entropy_and_grad(S, y, shift=symmetric_row_max(S))
    loss_ref, G_ref = label_cross_entropy_and_grad(S, y)
    assert np.isfinite(float(host(loss))) and G.dtype == np.dtype(dtype)
    tol = rtol_for(dtype)
    assert abs(float(host(loss)) - float(host(loss_ref))) <= tol * max(abs(float(host(loss_ref))), 1.0)
    np.testing.assert_allclose(host(G), host(G_ref), rtol=tol, atol=tol)


def test_row_sums_equal_sums_along_the_last_axis(xp, rng):
    from flowattn_np.equations.ops import row_sums

    A = rng.normal(size=(2, 5, 9))
    np.testing.assert_allclose(host(row_sums(xp.asarray(A))), A.sum(axis=-1), rtol=1e-13)
    assert row_sums(xp.asarray(A.astype("float32"))).dtype == np.float32
