"""The paper's equations (docs/math.md): gradients vs central differences, and the identities
that turn them into cross-/self-attention.

Gradient checks run in float64 (``fa.gradcheck``, rel error < 1e-6); identities hold to
round-off (~1e-12 relative to the size of the terms).
"""

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from helpers import assert_round_off, host

HYP = settings(max_examples=30, deadline=None, database=None)
FD_TOL = 1e-6


def labels(rng, n, m, kind, lead=()):
    """Label rows: 'soft' (softmax of random logits) or 'onehot'."""
    if kind == "soft":
        return scipy.special.softmax(rng.normal(size=lead + (n, m)) * 2, axis=-1)
    y = rng.integers(m, size=lead + (n,))
    return np.eye(m)[y]


def spd(rng, d, scale=1.0):
    """theta = phi phi^T with phi lower-triangular and a safely non-zero diagonal."""
    phi = np.tril(rng.normal(size=(d, d))) * 0.5
    phi[np.diag_indices(d)] = np.abs(phi[np.diag_indices(d)]) + 0.3
    phi *= scale / np.sqrt(d)
    return phi @ phi.T, phi


linear_shapes = st.fixed_dictionaries(dict(
    n=st.integers(1, 8), d=st.integers(1, 8), m=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["soft", "onehot"])))

quadratic_shapes = st.fixed_dictionaries(dict(
    n=st.integers(1, 8), d=st.integers(1, 8), lead=st.sampled_from([(), (1,), (3,)]),
    seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["soft", "onehot"])))


def linear_case(n, d, m, seed, kind):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)), labels(rng, n, m, kind)


def quadratic_case(n, d, lead, seed, kind):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=lead + (n, d))
    theta, phi = spd(rng, d)
    return Z, theta, phi, labels(rng, n, n, kind, lead)


# ---------------------------------------------------------------- 1. gradients vs FD (linear)


@HYP
@given(linear_shapes)
def test_linear_grad_Z_matches_central_differences(case):
    Z, theta, C = linear_case(**case)
    r = fa.gradcheck(lambda X: fa.linear_loss(X, theta, C), Z, fa.linear_grad_Z(Z, theta, C))
    assert r.rel_error < FD_TOL, str(r)


@HYP
@given(linear_shapes)
def test_linear_grad_theta_matches_central_differences(case):
    Z, theta, C = linear_case(**case)
    r = fa.gradcheck(lambda T: fa.linear_loss(Z, T, C), theta, fa.linear_grad_theta(Z, theta, C))
    assert r.rel_error < FD_TOL, str(r)


def test_gradcheck_detects_a_wrong_gradient(rng):
    """The checker itself can fail: a gradient off by 1e-3 in one entry is rejected."""
    Z, theta, C = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), labels(rng, 3, 4, "onehot")
    g = fa.linear_grad_Z(Z, theta, C).copy()
    g[0, 0] += 1e-3
    r = fa.gradcheck(lambda X: fa.linear_loss(X, theta, C), Z, g)
    assert not r.passed and r.rel_error > 1e-5


# ---------------------------------------------------------------- gradients vs FD (quadratic)


@HYP
@given(quadratic_shapes)
def test_quadratic_grad_Z_matches_central_differences(case):
    Z, theta, _, C = quadratic_case(**case)
    g = fa.quadratic_grad_Z(Z, theta, C)
    assert g.shape == Z.shape
    r = fa.gradcheck(lambda X: fa.quadratic_loss(X, theta, C), Z, g)
    assert r.rel_error < FD_TOL, str(r)


@HYP
@given(quadratic_shapes)
def test_quadratic_grad_theta_is_the_gradient_over_symmetric_matrices(case):
    Z, theta, _, C = quadratic_case(**case)
    g = fa.quadratic_grad_theta(Z, theta, C)
    np.testing.assert_array_equal(g, g.T)
    r = fa.gradcheck(lambda A: fa.quadratic_loss(Z, (A + A.T) / 2, C), theta, g)
    assert r.rel_error < FD_TOL, str(r)


@HYP
@given(quadratic_shapes)
def test_quadratic_grad_phi_matches_central_differences_through_the_cholesky_factor(case):
    Z, _, phi, C = quadratic_case(**case)
    g = fa.quadratic_grad_phi(Z, phi, C)
    assert np.all(np.triu(g, 1) == 0), "grad_phi must be lower-triangular"

    def loss(p):
        L = np.tril(p)
        return fa.quadratic_loss(Z, L @ L.T, C)

    r = fa.gradcheck(loss, phi, g)
    assert r.rel_error < FD_TOL, str(r)


# ---------------------------------------------------------------- multi-head


def _two_head_case(rng, n=4, d=3, kind="onehot"):
    Z, theta = rng.normal(size=(n, d)), rng.normal(size=(5, d))
    C = np.hstack([labels(rng, n, 3, kind), labels(rng, n, 2, kind)])
    return Z, theta, C


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_multi_head_grad_Z_is_the_sum_of_the_heads_cross_attentions(rng, kind):
    Z, theta, C = _two_head_case(rng, kind=kind)
    g = fa.linear_grad_Z(Z, theta, C, heads=(3, 2))
    per_head = sum(fa.cross_attention(Z, theta[s]) - C[:, s] @ theta[s]
                   for s in (slice(0, 3), slice(3, 5)))
    assert_round_off(g, per_head, per_head, C @ theta)
    # one softmax over all five classes is something else
    assert not np.allclose(g, fa.cross_attention(Z, theta) - C @ theta)


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_multi_head_loss_is_the_sum_of_the_heads_losses(rng, kind):
    Z, theta, C = _two_head_case(rng, kind=kind)
    total = fa.linear_loss(Z, theta, C, heads=(3, 2))
    parts = fa.linear_loss(Z, theta[:3], C[:, :3]) + fa.linear_loss(Z, theta[3:], C[:, 3:])
    np.testing.assert_allclose(total, parts, rtol=1e-13)


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_multi_head_gradients_match_central_differences(rng, kind):
    Z, theta, C = _two_head_case(rng, kind=kind)
    h = (3, 2)
    rZ = fa.gradcheck(lambda X: fa.linear_loss(X, theta, C, heads=h), Z, fa.linear_grad_Z(Z, theta, C, h))
    rT = fa.gradcheck(lambda T: fa.linear_loss(Z, T, C, heads=h), theta,
                      fa.linear_grad_theta(Z, theta, C, h))
    assert rZ.rel_error < FD_TOL, str(rZ)
    assert rT.rel_error < FD_TOL, str(rT)


@HYP
@given(n=st.integers(1, 6), d=st.integers(1, 6),
       heads=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**32 - 1))
def test_multi_head_grad_Z_matches_central_differences_for_any_head_split(n, d, heads, seed):
    rng = np.random.default_rng(seed)
    Z, theta = rng.normal(size=(n, d)), rng.normal(size=(sum(heads), d))
    C = np.hstack([labels(rng, n, s, "soft") for s in heads])
    r = fa.gradcheck(lambda X: fa.linear_loss(X, theta, C, heads=heads), Z,
                     fa.linear_grad_Z(Z, theta, C, heads))
    assert r.rel_error < FD_TOL, str(r)


# ---------------------------------------------------------------- 2. identities of docs/math.md


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_linear_grad_Z_is_cross_attention_minus_labels_times_theta(xp, kind):
    """Eq. (4): grad_Z l = CA(Z, theta) - C theta."""
    Z, theta, C = (xp.asarray(a) for a in linear_case(6, 4, 5, 7, kind))
    CA, Ct = fa.cross_attention(Z, theta), C @ theta
    assert_round_off(fa.linear_grad_Z(Z, theta, C), CA - Ct, CA, Ct)


def test_cross_attention_is_softmax_of_scores_times_theta(xp, rng):
    Z, theta = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    naive = scipy.special.softmax(Z @ theta.T, axis=1) @ theta
    assert_round_off(fa.cross_attention(xp.asarray(Z), xp.asarray(theta)), naive, naive)


def test_linear_grad_theta_is_residual_transposed_times_Z(xp):
    Z, theta, C = linear_case(5, 3, 4, 11, "soft")
    G = scipy.special.softmax(Z @ theta.T, axis=1) - C
    got = fa.linear_grad_theta(*(xp.asarray(a) for a in (Z, theta, C)))
    assert_round_off(got, G.T @ Z, G.T @ Z, Z)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_self_attention_is_softmax_of_Z_theta_Zt_times_Z_theta(xp, lead):
    Z, theta, _, _ = quadratic_case(5, 3, lead, 3, "soft")
    P = scipy.special.softmax(Z @ theta @ np.swapaxes(Z, -1, -2), axis=-1)
    SA = P @ Z @ theta
    SA_adj = np.swapaxes(P, -1, -2) @ Z @ theta
    Zx, tx = xp.asarray(Z), xp.asarray(theta)
    assert_round_off(fa.self_attention(Zx, tx), SA, SA)
    assert_round_off(fa.self_attention_adjoint(Zx, tx), SA_adj, SA_adj)
    # the adjoint really is a different operator (the attention matrix is not symmetric)
    assert np.abs(SA - SA_adj).max() > 1e-3


@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_quadratic_grad_Z_is_self_attention_plus_adjoint_minus_symmetrised_labels(xp, lead, kind):
    """Eq. (9): grad_Z l = SA + SA* - (C + C^T) Z theta."""
    Z, theta, _, C = (xp.asarray(a) for a in quadratic_case(5, 4, lead, 5, kind))
    SA, SAs = fa.self_attention(Z, theta), fa.self_attention_adjoint(Z, theta)
    lab = (C + C.swapaxes(-1, -2)) @ Z @ theta
    assert_round_off(fa.quadratic_grad_Z(Z, theta, C), SA + SAs - lab, SA, SAs, lab)


def test_quadratic_grad_phi_is_tril_of_two_sym_part_times_phi():
    Z, theta, phi, C = quadratic_case(4, 3, (2,), 9, "soft")
    G = scipy.special.softmax(Z @ theta @ np.swapaxes(Z, -1, -2), axis=-1) - C
    A = (np.swapaxes(Z, -1, -2) @ G @ Z).sum(axis=0)
    expected = np.tril((A + A.T) @ phi)
    assert_round_off(fa.quadratic_grad_phi(Z, phi, C), expected, expected)
    assert_round_off(fa.quadratic_grad_theta(Z, theta, C), (A + A.T) / 2, A)


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_quadratic_loss_and_logits_are_the_cross_entropy_of_Z_theta_Zt(kind):
    Z, theta, _, C = quadratic_case(5, 3, (), 2, kind)
    N = Z @ theta @ Z.T
    np.testing.assert_allclose(fa.quadratic_logits(Z, theta), N, rtol=1e-14)
    expected = -(C * scipy.special.log_softmax(N, axis=1)).sum()
    np.testing.assert_allclose(fa.quadratic_loss(Z, theta, C), expected, rtol=1e-12)


def test_theta_from_phi_is_symmetric_positive_definite(rng):
    _, phi = spd(rng, 5)
    theta = fa.theta_from_phi(phi)
    np.testing.assert_allclose(theta, theta.T, rtol=0, atol=1e-15)
    assert np.linalg.eigvalsh(theta).min() > 0


# ---------------------------------------------------------------- optimal features (eq. 5)


def test_linear_gradient_vanishes_where_cross_attention_equals_labels_times_theta(xp, rng):
    """Eq. (5): with C = sigma(Z theta^T), CA(Z, theta) = C theta and grad_Z l = 0."""
    Z, theta = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    C = host(fa.softmax(Z @ theta.T))
    Zx, tx, Cx = xp.asarray(Z), xp.asarray(theta), xp.asarray(C)
    assert_round_off(fa.cross_attention(Zx, tx), C @ theta, C @ theta)
    g = host(fa.linear_grad_Z(Zx, tx, Cx))
    assert np.abs(g).max() <= 1e-12 * np.abs(C @ theta).max()


def test_linear_optimal_features_minimise_the_pointwise_loss_along_random_directions(rng):
    Z, theta = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    C = fa.softmax(Z @ theta.T)
    l0 = float(fa.linear_loss(Z, theta, C))
    for _ in range(10):
        D = rng.normal(size=Z.shape)
        D /= np.linalg.norm(D)
        for s in (1e-3, 1e-2, 1e-1, 1.0, -1e-2, -1.0):
            ls = float(fa.linear_loss(Z + s * D, theta, C))
            assert ls >= l0 - 1e-12 * abs(l0)
        # and strictly above it away from the point (second order in s)
        assert float(fa.linear_loss(Z + 0.5 * D, theta, C)) > l0 + 1e-8


def test_quadratic_gradient_vanishes_and_is_a_minimum_where_softmax_equals_labels(rng):
    Z, theta, _, _ = quadratic_case(5, 3, (), 4, "soft")
    C = fa.softmax(Z @ theta @ Z.T)
    SA, SAs = fa.self_attention(Z, theta), fa.self_attention_adjoint(Z, theta)
    g = fa.quadratic_grad_Z(Z, theta, C)
    assert np.abs(g).max() <= 1e-12 * max(np.abs(SA).max(), np.abs(SAs).max())
    l0 = float(fa.quadratic_loss(Z, theta, C))
    for _ in range(10):
        D = rng.normal(size=Z.shape)
        D /= np.linalg.norm(D)
        for s in (1e-2, 1e-1, 1.0, -1e-1):
            assert float(fa.quadratic_loss(Z + s * D, theta, C)) >= l0 - 1e-12 * abs(l0)


# ---------------------------------------------------------------- VJPs of the attention blocks


def test_cross_attention_vjp_matches_central_differences(rng):
    Z, theta, U = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    P = fa.softmax(Z @ theta.T)
    Zb, tb = fa.cross_attention_vjp(Z, theta, P, U)
    rZ = fa.check_vjp(lambda X: fa.cross_attention(X, theta), Z, U, Zb)
    rT = fa.check_vjp(lambda T: fa.cross_attention(Z, T), theta, U, tb)
    assert rZ.rel_error < FD_TOL and rT.rel_error < FD_TOL, (str(rZ), str(rT))


def test_self_attention_sum_vjp_matches_central_differences(rng):
    Z, theta, _, _ = quadratic_case(4, 3, (2,), 8, "soft")
    U = rng.normal(size=Z.shape)
    P = fa.softmax(Z @ theta @ np.swapaxes(Z, -1, -2))
    Zb, tb = fa.self_attention_sum_vjp(Z, theta, P, Z @ theta, U)

    def F(X, T):
        Pm = scipy.special.softmax(X @ T @ np.swapaxes(X, -1, -2), axis=-1)
        return (Pm + np.swapaxes(Pm, -1, -2)) @ X @ T

    rZ = fa.check_vjp(lambda X: F(X, theta), Z, U, Zb)
    rT = fa.check_vjp(lambda T: F(Z, T), theta, U, tb)  # gradient over all d x d matrices
    assert rZ.rel_error < FD_TOL and rT.rel_error < FD_TOL, (str(rZ), str(rT))


def test_model_classes_agree_with_the_functions():
    Z, theta, C = linear_case(4, 3, 5, 1, "soft")
    lm = fa.LinearModel(theta)
    np.testing.assert_array_equal(lm.grad_Z(Z, C), fa.linear_grad_Z(Z, theta, C))
    np.testing.assert_array_equal(lm.predict(Z), (Z @ theta.T).argmax(axis=1))
    Zq, _, phi, Cq = quadratic_case(4, 3, (), 1, "soft")
    qm = fa.QuadraticModel(phi + np.triu(np.ones((3, 3)), 1))  # upper part is dropped
    np.testing.assert_allclose(qm.theta, phi @ phi.T, rtol=1e-14)
    np.testing.assert_allclose(qm.grad_phi(Zq, Cq), fa.quadratic_grad_phi(Zq, phi, Cq), rtol=1e-13)


# ---------------------------------------------------------------- 6. float32 and stability


def _f32_inputs(xp, rng):
    Z = rng.normal(size=(4, 3))
    theta = rng.normal(size=(5, 3))
    C = labels(rng, 4, 5, "soft")
    thq, phi = spd(rng, 3)
    Cq = labels(rng, 4, 4, "soft")
    f = lambda a: xp.asarray(a, dtype="float32")  # noqa: E731
    return dict(Z=f(Z), theta=f(theta), C=f(C), thq=f(thq), phi=f(phi), Cq=f(Cq),
                U=f(rng.normal(size=(4, 3))), P=f(scipy.special.softmax(Z @ theta.T, axis=1)),
                Pq=f(scipy.special.softmax(Z @ thq @ Z.T, axis=1)))


EQ_FLOAT32 = {
    "linear_logits": lambda a: fa.linear_logits(a["Z"], a["theta"]),
    "linear_loss": lambda a: fa.linear_loss(a["Z"], a["theta"], a["C"]),
    "linear_grad_Z": lambda a: fa.linear_grad_Z(a["Z"], a["theta"], a["C"]),
    "linear_grad_theta": lambda a: fa.linear_grad_theta(a["Z"], a["theta"], a["C"]),
    "cross_attention": lambda a: fa.cross_attention(a["Z"], a["theta"]),
    "cross_attention_vjp_Z": lambda a: fa.cross_attention_vjp(a["Z"], a["theta"], a["P"], a["U"])[0],
    "cross_attention_vjp_theta": lambda a: fa.cross_attention_vjp(a["Z"], a["theta"], a["P"], a["U"])[1],
    "theta_from_phi": lambda a: fa.theta_from_phi(a["phi"]),
    "quadratic_logits": lambda a: fa.quadratic_logits(a["Z"], a["thq"]),
    "quadratic_loss": lambda a: fa.quadratic_loss(a["Z"], a["thq"], a["Cq"]),
    "quadratic_grad_Z": lambda a: fa.quadratic_grad_Z(a["Z"], a["thq"], a["Cq"]),
    "quadratic_grad_theta": lambda a: fa.quadratic_grad_theta(a["Z"], a["thq"], a["Cq"]),
    "quadratic_grad_phi": lambda a: fa.quadratic_grad_phi(a["Z"], a["phi"], a["Cq"]),
    "self_attention": lambda a: fa.self_attention(a["Z"], a["thq"]),
    "self_attention_adjoint": lambda a: fa.self_attention_adjoint(a["Z"], a["thq"]),
    "self_attention_sum_vjp_Z": lambda a: fa.self_attention_sum_vjp(
        a["Z"], a["thq"], a["Pq"], a["Z"] @ a["thq"], a["U"])[0],
    "self_attention_sum_vjp_theta": lambda a: fa.self_attention_sum_vjp(
        a["Z"], a["thq"], a["Pq"], a["Z"] @ a["thq"], a["U"])[1],
}


@pytest.mark.parametrize("name", sorted(EQ_FLOAT32))
def test_equations_keep_float32(xp, rng, name):
    out = EQ_FLOAT32[name](_f32_inputs(xp, rng))
    assert out.dtype == np.float32, f"{name} returned {out.dtype}"
    assert np.isfinite(host(out)).all()


def test_multi_head_linear_gradients_keep_float32(xp, rng):
    Z, theta, C = (xp.asarray(a, dtype="float32") for a in _two_head_case(rng))
    assert fa.linear_grad_Z(Z, theta, C, heads=(3, 2)).dtype == np.float32
    assert fa.linear_grad_theta(Z, theta, C, heads=(3, 2)).dtype == np.float32
    assert fa.linear_loss(Z, theta, C, heads=(3, 2)).dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_attention_and_linear_loss_are_finite_for_features_scaled_by_1e4(xp, rng, dtype):
    Z, theta, C = linear_case(5, 3, 4, 21, "onehot")
    Zx, tx, Cx = (xp.asarray(a, dtype=dtype) for a in (Z * 1e4, theta, C))
    CA = host(fa.cross_attention(Zx, tx))
    assert np.isfinite(CA).all()
    # every row of CA is a convex combination of the rows of theta
    assert np.all(CA <= theta.max(axis=0) + 1e-3) and np.all(CA >= theta.min(axis=0) - 1e-3)
    loss = float(host(fa.linear_loss(Zx, tx, Cx)))
    assert np.isfinite(loss) and loss >= 0
    assert np.isfinite(host(fa.linear_grad_Z(Zx, tx, Cx))).all()


# ---------------------------------------------------------------- inputs are not modified


NO_MUTATION = {
    "linear_loss": (lambda Z, t, C, phi, thq, Cq: fa.linear_loss(Z, t, C)),
    "linear_grad_Z": (lambda Z, t, C, phi, thq, Cq: fa.linear_grad_Z(Z, t, C)),
    "linear_grad_theta": (lambda Z, t, C, phi, thq, Cq: fa.linear_grad_theta(Z, t, C)),
    "cross_attention": (lambda Z, t, C, phi, thq, Cq: fa.cross_attention(Z, t)),
    "quadratic_grad_Z": (lambda Z, t, C, phi, thq, Cq: fa.quadratic_grad_Z(Z, thq, Cq)),
    "quadratic_grad_phi": (lambda Z, t, C, phi, thq, Cq: fa.quadratic_grad_phi(Z, phi, Cq)),
    "quadratic_grad_theta": (lambda Z, t, C, phi, thq, Cq: fa.quadratic_grad_theta(Z, thq, Cq)),
    "self_attention": (lambda Z, t, C, phi, thq, Cq: fa.self_attention(Z, thq)),
}


@pytest.mark.parametrize("name", sorted(NO_MUTATION))
def test_equation_functions_do_not_modify_their_inputs(rng, name):
    Z, theta, C = linear_case(4, 3, 5, 13, "soft")
    thq, phi = spd(rng, 3)
    Cq = labels(rng, 4, 4, "soft")
    args = (Z, theta, C, phi, thq, Cq)
    copies = [a.copy() for a in args]
    NO_MUTATION[name](*args)
    for a, a0 in zip(args, copies):
        np.testing.assert_array_equal(a, a0)


def test_gradcheck_on_backend_arrays(xp, rng):
    Z, theta, C = (xp.asarray(a) for a in linear_case(3, 2, 4, 17, "soft"))
    r = fa.gradcheck(lambda X: fa.linear_loss(X, theta, C), Z, fa.linear_grad_Z(Z, theta, C))
    assert r.passed and r.rel_error < FD_TOL, str(r)
