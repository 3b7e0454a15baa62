"""The exact quadratic B step evaluated two ways: in eigenbases and by the truncated,
substepped Taylor series (exact_b.quadratic_B_exact_forward, method="eigh" / "taylor").
Both must be e^{t theta (x) M} Z to the working precision, with exact gradients."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from flowattn_np.equations import exact_b

METHODS = ["taylor", "eigh"]


def problem(seed, lead=(2,), n=5, d=3, scale=1.0, dtype="float64"):
    """Tokens, a positive semi-definite theta = phi phi^T and M = C + C^T of softmax rows."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=lead + (n, d))
    phi = np.tril(rng.normal(size=(d, d))) / np.sqrt(d)
    C = scipy.special.softmax(2 * rng.normal(size=lead + (n, n)), axis=-1)
    M = C + np.swapaxes(C, -1, -2)
    return Z.astype(dtype), (scale * phi @ phi.T).astype(dtype), M.astype(dtype)


def kron_reference(Z, theta, M, t):
    """vec Z(t) = expm(t theta (x) M) vec Z, column-major vec, one sequence at a time."""
    out = np.empty_like(Z)
    for b in np.ndindex(Z.shape[:-2]):
        z = scipy.linalg.expm(t * np.kron(theta, M[b])) @ Z[b].ravel(order="F")
        out[b] = z.reshape(Z.shape[-2:], order="F")
    return out


def solve(Z, theta, M, t, method):
    return exact_b.quadratic_B_exact_forward(Z, theta, M, t, method=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", [0.0, 0.05, 0.4, 1.3, -0.9])
def test_both_methods_are_the_kronecker_matrix_exponential(method, t):
    Z, theta, M = problem(0)
    assert exact_b.kronecker_norm_bound(theta, M, t) <= exact_b.TAYLOR_MAX_NORM
    got, cache = solve(Z, theta, M, t, method)
    ref = kron_reference(Z, theta, M, t)
    # scipy's expm of the 15 x 15 Kronecker generator is itself good to a few 1e-13 here
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-12 * np.abs(ref).max())
    expected = exact_b.QuadraticBTaylorCache if method == "taylor" else exact_b.QuadraticBCache
    assert isinstance(cache, expected)


def test_taylor_is_exact_up_to_its_largest_generator():
    """At the largest norm the series takes (about 4), in both signs (alternating terms),
    it matches the eigenbasis method to 1e-13 (scipy's expm of the Kronecker generator is
    itself only good to about 2e-13 there: against a 40-digit mpmath expm the series was
    off by 3e-16, the eigenbases by 3e-15, scipy by 2e-13)."""
    Z, theta, M = problem(1, scale=3.0)
    t = 0.999 * exact_b.TAYLOR_MAX_NORM / exact_b.kronecker_norm_bound(theta, M, 1.0)
    for sign in (1, -1):
        got, cache = solve(Z, theta, M, sign * t, "taylor")
        assert isinstance(cache, exact_b.QuadraticBTaylorCache) and len(cache.thetas) > 20
        ref = solve(Z, theta, M, sign * t, "eigh")[0]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
        ref = kron_reference(Z, theta, M, sign * t)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def _vjp_objective(Z, theta, M, t, U, method):
    return float((U * solve(Z, theta, M, t, method)[0]).sum())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", [0.3, 1.2])
def test_each_method_s_vjp_matches_central_differences(method, t):
    """Gradients in Z, theta (symmetric perturbations), M (symmetric) and t, float64."""
    Z, theta, M = problem(2, scale=2.0)
    U = np.random.default_rng(3).normal(size=Z.shape)
    _, cache = solve(Z, theta, M, t, method)
    Z_bar, theta_bar, M_bar, t_bar = exact_b.quadratic_B_exact_vjp(U, cache)
    f = lambda **kw: _vjp_objective(**{"Z": Z, "theta": theta, "M": M, "t": t, "U": U,  # noqa: E731
                                       "method": method, **kw})
    assert fa.gradcheck(lambda x: f(Z=x), Z, Z_bar).rel_error < 1e-8
    half = lambda A: (A + np.swapaxes(A, -1, -2)) / 2  # noqa: E731  (symmetric arguments)
    r = fa.gradcheck(lambda x: f(theta=half(x)), theta, half(theta_bar))
    assert r.rel_error < 1e-8, r
    r = fa.gradcheck(lambda x: f(M=half(x)), M, half(M_bar))
    assert r.rel_error < 1e-8, r
    num = (f(t=t + 1e-6) - f(t=t - 1e-6)) / 2e-6
    assert abs(float(t_bar) - num) <= 1e-8 * max(1.0, abs(num))


def test_the_two_methods_give_the_same_gradients():
    Z, theta, M = problem(4, lead=(3,), n=6, d=4, scale=1.5)
    U = np.random.default_rng(5).normal(size=Z.shape)
    out = {m: exact_b.quadratic_B_exact_vjp(U, solve(Z, theta, M, 0.7, m)[1]) for m in METHODS}
    sym = lambda A: A + np.swapaxes(A, -1, -2)  # noqa: E731  (only M's symmetric part acts)
    for a, b, what in zip(out["taylor"], out["eigh"], ["Z", "theta", "M", "t"]):
        if what == "M":
            a, b = sym(a), sym(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max(), err_msg=what)


@pytest.mark.parametrize("method", METHODS)
def test_float32_stays_float32_and_agrees_with_float64(method):
    Z, theta, M = problem(6, lead=(4,), n=16, d=8, scale=1.5)
    Z32, theta32, M32 = (a.astype("float32") for a in (Z, theta, M))
    U = np.random.default_rng(7).normal(size=Z.shape)
    ref, ref_cache = solve(Z, theta, M, 0.2, "eigh")
    ref_grads = exact_b.quadratic_B_exact_vjp(U, ref_cache)
    got, cache = solve(Z32, theta32, M32, 0.2, method)
    grads = exact_b.quadratic_B_exact_vjp(U.astype("float32"), cache)
    assert got.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
    for a, b in zip(grads[:2], ref_grads[:2]):
        assert np.abs(a - b).max() <= 2e-5 * np.abs(b).max()


def test_auto_takes_taylor_on_the_host_and_falls_back_to_eigh_for_a_large_generator():
    Z, theta, M = problem(8)
    assert isinstance(solve(Z, theta, M, 0.1, "auto")[1], exact_b.QuadraticBTaylorCache)
    t = 1.01 * exact_b.TAYLOR_MAX_NORM / exact_b.kronecker_norm_bound(theta, M, 1.0)
    got, cache = solve(Z, theta, M, t, "taylor")  # beyond the series' range: the eigenbases
    assert isinstance(cache, exact_b.QuadraticBCache)
    np.testing.assert_allclose(got, kron_reference(Z, theta, M, t), rtol=0, atol=1e-11 * np.abs(got).max())


def test_auto_weighs_the_cost_and_an_explicit_taylor_is_obeyed():
    """n = 16 tokens of d = 64 features: in float64 the cost model prefers the eigenbases
    (9-10 terms of 6 (n^2 d + n d^2) against an eigh of 16 x 16), in float32 the series
    (5 terms, and NumPy's eigh would upcast)."""
    assert not exact_b.taylor_is_cheaper(10, 128, 64, np.dtype("float64"))
    assert exact_b.taylor_is_cheaper(5, 128, 64, np.dtype("float32"))
    Z, theta, M = problem(11, n=16, d=64)
    t = 0.1 / exact_b.kronecker_norm_bound(theta, M, 1.0)
    m = exact_b.taylor_terms(0.1, np.dtype("float64"))
    assert not exact_b.taylor_is_cheaper(m, 16, 64, np.dtype("float64"))
    assert isinstance(solve(Z, theta, M, t, "auto")[1], exact_b.QuadraticBCache)
    assert isinstance(solve(Z, theta, M, t, "taylor")[1], exact_b.QuadraticBTaylorCache)
    Z32, theta32, M32 = (a.astype("float32") for a in (Z, theta, M))
    assert isinstance(solve(Z32, theta32, M32, t, "auto")[1], exact_b.QuadraticBTaylorCache)


def test_a_device_array_takes_the_eigenbases(backend):
    """On a device the Taylor plan would read the norm back (a sync): auto takes eigh."""
    Z, theta, M = problem(9)
    _, cache = solve(*(fa.asarray(a) for a in (Z, theta, M)), 0.1, "auto")
    expected = exact_b.QuadraticBTaylorCache if backend == "numpy" else exact_b.QuadraticBCache
    assert isinstance(cache, expected)


def test_unknown_method_is_refused_by_name():
    Z, theta, M = problem(10)
    with pytest.raises(ValueError, match="method.*'taylor'"):
        solve(Z, theta, M, 0.1, "pade")


@pytest.mark.parametrize("dtype,u", [("float32", 2.0 ** -24), ("float64", 2.0 ** -53)])
@pytest.mark.parametrize("rho", [0.0, 1e-6, 0.1, 0.5, 0.99, 2.7, 4.0])
def test_taylor_terms_keep_the_remainder_below_the_unit_roundoff_and_no_more(dtype, u, rho):
    m = exact_b.taylor_terms(rho, np.dtype(dtype))
    assert 1 <= m <= exact_b.TAYLOR_MAX_TERMS
    tail = lambda m: sum(rho ** k / math.factorial(k) for k in range(m + 1, m + 80))  # noqa: E731
    assert tail(m) <= u
    assert m == 1 or tail(m - 1) > u / 2  # the bound is tight: one term fewer is not enough


@pytest.mark.parametrize("rho", [4.01, 1e300, math.inf, math.nan])
def test_taylor_terms_give_up_beyond_the_largest_generator(rho):
    assert exact_b.taylor_terms(rho, np.dtype("float64")) is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), n=st.integers(1, 7), d=st.integers(1, 5),
       t=st.floats(-2.0, 2.0, allow_subnormal=False))  # a subnormal t underflows rho to 0: harmless
def test_the_norm_bound_is_at_least_the_generator_s_spectral_norm(seed, n, d, t):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(3, n, n))
    M = A + np.swapaxes(A, -1, -2)  # symmetric, of either sign
    B = rng.normal(size=(d, d))
    theta = B + B.T
    rho = exact_b.kronecker_norm_bound(theta, M, t)
    true = abs(t) * max(np.abs(np.linalg.eigvalsh(np.kron(theta, Mb))).max() for Mb in M)
    assert rho >= true * (1 - 1e-12)
