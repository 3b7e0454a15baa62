"""Gradient flows (eqs. 6-10): vector fields, dissipation (eq. 7), exact B sub-flows,
and the explicit Runge-Kutta integrators with their declared and measured orders."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special

import flowattn_np as fa
from flowattn_np.equations import flows
from flowattn_np.equations import exact_b, integrators
from helpers import assert_round_off, host



def soft(rng, shape):
    return scipy.special.softmax(rng.normal(size=shape) * 2, axis=-1)


def onehot(rng, n, m):
    return np.eye(m)[rng.integers(m, size=n)]


def spd(rng, d):
    phi = np.tril(rng.normal(size=(d, d))) * 0.5
    phi[np.diag_indices(d)] = np.abs(phi[np.diag_indices(d)]) + 0.3
    phi /= np.sqrt(d)
    return phi @ phi.T


def linear_problem(seed, n=5, d=4, m=6, kind="onehot"):
    rng = np.random.default_rng(seed)
    C = onehot(rng, n, m) if kind == "onehot" else soft(rng, (n, m))
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)), C


def quadratic_problem(seed, n=5, d=3, lead=(), kind="soft"):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=lead + (n, d))
    if kind == "soft":
        C = soft(rng, lead + (n, n))
    else:
        C = np.eye(n)[rng.integers(n, size=lead + (n,))]
    return Z, spd(rng, d), C


# ---------------------------------------------------------------- vector fields


@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_linear_flow_is_minus_the_gradient_and_the_sum_of_its_sub_flows(xp, kind):
    Z, theta, C = (xp.asarray(a) for a in linear_problem(1, kind=kind))
    F = fa.linear_flow(Z, theta, C)
    A, B = fa.linear_flow_A(Z, theta), fa.linear_flow_B(Z, theta, C)
    assert_round_off(F, -fa.linear_grad_Z(Z, theta, C), A, B)
    assert_round_off(F, A + B, A, B)
    assert_round_off(A, -fa.cross_attention(Z, theta), A)
    assert_round_off(B, C @ theta, B)


def test_linear_flow_with_heads_is_minus_the_multi_head_gradient(rng):
    Z, theta = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    C = np.hstack([onehot(rng, 4, 2), soft(rng, (4, 3))])
    F = fa.linear_flow(Z, theta, C, heads=(2, 3))
    assert_round_off(F, -fa.linear_grad_Z(Z, theta, C, heads=(2, 3)), F, C @ theta)
    assert_round_off(fa.linear_flow_A(Z, theta, heads=(2, 3)) + C @ theta, F, F, C @ theta)


@pytest.mark.parametrize("lead", [(), (2,)])
@pytest.mark.parametrize("kind", ["onehot", "soft"])
def test_quadratic_flow_is_minus_the_gradient_and_the_sum_of_its_sub_flows(xp, lead, kind):
    Z, theta, C = (xp.asarray(a) for a in quadratic_problem(2, lead=lead, kind=kind))
    F = fa.quadratic_flow(Z, theta, C)
    A, B = fa.quadratic_flow_A(Z, theta), fa.quadratic_flow_B(Z, theta, C)
    assert_round_off(F, -fa.quadratic_grad_Z(Z, theta, C), A, B)
    assert_round_off(F, A + B, A, B)
    SA = fa.self_attention(Z, theta) + fa.self_attention_adjoint(Z, theta)
    assert_round_off(A, -SA, SA)
    assert_round_off(B, (C + C.swapaxes(-1, -2)) @ Z @ theta, B)


# ---------------------------------------------------------------- dissipation (eq. 7)


def _linear(seed, kind):
    Z0, theta, C = linear_problem(seed, kind=kind)
    return (Z0, lambda Z: fa.linear_flow(Z, theta, C), lambda Z: float(fa.linear_loss(Z, theta, C)),
            lambda Z: fa.linear_grad_Z(Z, theta, C))


def _quadratic(seed, kind):
    Z0, theta, C = quadratic_problem(seed, kind=kind)
    return (Z0, lambda Z: fa.quadratic_flow(Z, theta, C),
            lambda Z: float(fa.quadratic_loss(Z, theta, C)), lambda Z: fa.quadratic_grad_Z(Z, theta, C))


PROBLEMS = {"linear": _linear, "quadratic": _quadratic}


@pytest.mark.parametrize("model", sorted(PROBLEMS))
@pytest.mark.parametrize("kind", ["onehot", "soft"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_never_increases_along_the_gradient_flow(model, kind, seed):
    Z0, f, loss, _ = PROBLEMS[model](seed, kind)
    path = fa.integrate(f, Z0, 1.0, 100, "rk4", return_path=True)
    assert len(path) == 101 and path[0] is Z0
    ls = np.array([loss(Z) for Z in path])
    steps = np.diff(ls)
    assert np.all(steps <= 1e-13 * np.abs(ls[:-1])), f"loss rose by {steps.max():.3e}"
    assert ls[-1] < ls[0] - 1e-3  # and it really decreased


@pytest.mark.parametrize("model", sorted(PROBLEMS))
@pytest.mark.parametrize("kind", ["onehot", "soft"])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_decreases_at_the_rate_minus_squared_gradient_norm(model, kind, seed):
    """Eq. (7): d/dt l(Z(t)) = -||grad_Z l||_F^2, measured by a central difference in t."""
    Z0, f, loss, grad = PROBLEMS[model](seed, kind)
    dt = 1e-3
    for Z in fa.integrate(f, Z0, 0.5, 5, "rk4", return_path=True):
        rate = (loss(fa.rk_step(f, Z, dt, "rk4")) - loss(fa.rk_step(f, Z, -dt, "rk4"))) / (2 * dt)
        expected = -float((grad(Z) ** 2).sum())
        assert expected < 0
        assert abs(rate - expected) <= 1e-5 * abs(expected), (rate, expected)


# ---------------------------------------------------------------- exact B sub-flows


def kron_reference(Z, theta, C, t):
    """vec(dZ/dt) = (theta (x) M) vec(Z) in column-major vec, M = C + C^T."""
    M = C + C.T
    z = scipy.linalg.expm(t * np.kron(theta, M)) @ Z.ravel(order="F")
    return z.reshape(Z.shape, order="F")


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, -0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_B_exact_matches_the_kronecker_matrix_exponential(seed, t):
    Z, theta, C = quadratic_problem(seed, n=5, d=3)
    ref = kron_reference(Z, theta, C, t)
    got = fa.quadratic_B_exact(Z, theta, C, t)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_quadratic_B_exact_with_a_batch_axis_solves_each_sequence(xp):
    Z, theta, C = quadratic_problem(4, n=4, d=3, lead=(3,))
    got = host(fa.quadratic_B_exact(xp.asarray(Z), xp.asarray(theta), xp.asarray(C), 0.6))
    for b in range(3):
        ref = kron_reference(Z[b], theta, C[b], 0.6)
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_quadratic_B_exact_is_not_expm_M_times_Z_times_expm_theta():
    Z, theta, C = quadratic_problem(5, n=5, d=3)
    t = 0.8
    wrong = scipy.linalg.expm(t * (C + C.T)) @ Z @ scipy.linalg.expm(t * theta)
    got = fa.quadratic_B_exact(Z, theta, C, t)
    assert np.abs(got - wrong).max() > 1e-3 * np.abs(got).max()
    assert np.abs(got - wrong).max() > 1e6 * 1e-10


def test_quadratic_B_exact_is_the_limit_of_rk4_integration_of_the_B_flow():
    Z, theta, C = quadratic_problem(6, n=4, d=3)
    t = 0.9
    exact = fa.quadratic_B_exact(Z, theta, C, t)
    f = lambda Y: fa.quadratic_flow_B(Y, theta, C)  # noqa: E731
    errs = [np.abs(fa.integrate(f, Z, t, s, "rk4") - exact).max() for s in (5, 10, 20, 200)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] <= 1e-10 * np.abs(exact).max()


def test_quadratic_B_exact_at_time_zero_is_the_identity_and_composes_as_a_flow():
    Z, theta, C = quadratic_problem(7)
    np.testing.assert_allclose(fa.quadratic_B_exact(Z, theta, C, 0.0), Z, rtol=0, atol=1e-14)
    two = fa.quadratic_B_exact(fa.quadratic_B_exact(Z, theta, C, 0.4), theta, C, 0.5)
    np.testing.assert_allclose(two, fa.quadratic_B_exact(Z, theta, C, 0.9), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("t", [0.0, 0.25, -1.5])
def test_linear_B_exact_is_Z_plus_t_C_theta(xp, t):
    Z, theta, C = (xp.asarray(a) for a in linear_problem(3, kind="soft"))
    out = fa.linear_B_exact(Z, theta, C, t)
    assert_round_off(out, Z + t * (C @ theta), Z, C @ theta)
    # the B flow is constant in Z, so any integrator is exact on it
    f = lambda Y: fa.linear_flow_B(Y, theta, C)  # noqa: E731
    assert_round_off(fa.integrate(f, Z, t, 3, "euler"), out, Z, C @ theta)


# ---------------------------------------------------------------- integrators


def test_integrators_declare_their_order():
    orders = {name: rk.order for name, rk in fa.INTEGRATORS.items()}
    assert orders == {"euler": 1, "heun": 2, "rk2": 2, "rk4": 4}
    for rk in fa.INTEGRATORS.values():
        assert len(rk.a) == rk.stages
        np.testing.assert_allclose(sum(rk.b), 1.0, rtol=1e-15)  # consistency


_rng = np.random.default_rng(2024)
ORDER_Z0, ORDER_THETA = _rng.normal(size=(4, 3)), _rng.normal(size=(5, 3))
ORDER_STEPS = (16, 32, 64, 128)


def _order_field(Z):
    return fa.linear_flow_A(Z, ORDER_THETA)


@pytest.fixture(scope="module")
def order_reference():
    return fa.integrate(_order_field, ORDER_Z0, 1.0, 2048, "rk4")


def measured_order(method, reference):
    errs = [np.abs(fa.integrate(_order_field, ORDER_Z0, 1.0, s, method) - reference).max()
            for s in ORDER_STEPS]
    assert min(errs) > 1e-13, "errors hit round-off: the slope would be meaningless"
    return -np.polyfit(np.log(ORDER_STEPS), np.log(errs), 1)[0]


@pytest.mark.parametrize("method", sorted(fa.INTEGRATORS))
def test_integrator_global_error_falls_at_its_declared_order(method, order_reference):
    slope = measured_order(method, order_reference)
    assert abs(slope - fa.INTEGRATORS[method].order) < 0.2, f"{method}: measured order {slope:.3f}"


def test_order_measurement_rejects_a_method_that_overstates_its_order(order_reference):
    liar = fa.Integrator("heun_claiming_4", 4, integrators.HEUN.a, integrators.HEUN.b)
    slope = measured_order(liar, order_reference)
    assert abs(slope - liar.order) > 0.2 and abs(slope - 2) < 0.2


@pytest.mark.parametrize("steps", [0, -3])
def test_integrate_rejects_fewer_than_one_step_naming_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        fa.integrate(lambda Z: -Z, np.ones((2, 2)), 1.0, steps)


def test_integrate_rejects_a_non_integer_number_of_steps():
    with pytest.raises(ValueError, match="steps"):
        fa.integrate(lambda Z: -Z, np.ones((2, 2)), 1.0, 2.5)


@pytest.mark.parametrize("bad", ["rk5", "RK4x", None])
def test_unknown_integrator_names_raise_listing_the_known_ones(bad):
    with pytest.raises(ValueError) as exc:
        fa.integrate(lambda Z: -Z, np.ones((2, 2)), 1.0, 2, bad)
    for name in ("euler", "heun", "rk2", "rk4"):
        assert name in str(exc.value)
    with pytest.raises(ValueError, match="rk4"):
        fa.rk_step(lambda Z: -Z, np.ones((2, 2)), 0.1, bad)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_rk_step_matches_the_exponential_on_a_scalar_linear_ode(method):
    """dz/dt = -z: one step multiplies by the Taylor polynomial of exp(-h) of the method's order."""
    h, order = 0.1, fa.INTEGRATORS[method].order
    taylor = sum((-h) ** k / math.factorial(k) for k in range(order + 1))
    z = fa.rk_step(lambda Z: -Z, np.ones((1, 1)), h, method)
    np.testing.assert_allclose(z, taylor, rtol=1e-15)


def test_integrate_and_exact_sub_flows_do_not_modify_their_inputs():
    Z0, theta, C = linear_problem(8)
    copies = [a.copy() for a in (Z0, theta, C)]
    fa.integrate(lambda Z: fa.linear_flow(Z, theta, C), Z0, 1.0, 4, "rk4")
    fa.rk_step(lambda Z: fa.linear_flow(Z, theta, C), Z0, 0.1, "heun")
    fa.linear_B_exact(Z0, theta, C, 0.5)
    for a, a0 in zip((Z0, theta, C), copies):
        np.testing.assert_array_equal(a, a0)
    Zq, thq, Cq = quadratic_problem(8)
    copies = [a.copy() for a in (Zq, thq, Cq)]
    fa.quadratic_B_exact(Zq, thq, Cq, 0.5)
    fa.quadratic_flow(Zq, thq, Cq)
    for a, a0 in zip((Zq, thq, Cq), copies):
        np.testing.assert_array_equal(a, a0)


# ---------------------------------------------------------------- float32


def _f32(xp):
    Z, theta, C = linear_problem(9)
    Zq, thq, Cq = quadratic_problem(9)
    return [xp.asarray(a, dtype="float32") for a in (Z, theta, C, Zq, thq, Cq)]


FLOW_FLOAT32 = {
    "linear_flow": lambda Z, t, C, Zq, q, Cq: fa.linear_flow(Z, t, C),
    "linear_flow_A": lambda Z, t, C, Zq, q, Cq: fa.linear_flow_A(Z, t),
    "linear_flow_B": lambda Z, t, C, Zq, q, Cq: fa.linear_flow_B(Z, t, C),
    "linear_B_exact": lambda Z, t, C, Zq, q, Cq: fa.linear_B_exact(Z, t, C, 0.3),
    "quadratic_flow": lambda Z, t, C, Zq, q, Cq: fa.quadratic_flow(Zq, q, Cq),
    "quadratic_flow_A": lambda Z, t, C, Zq, q, Cq: fa.quadratic_flow_A(Zq, q),
    "quadratic_flow_B": lambda Z, t, C, Zq, q, Cq: fa.quadratic_flow_B(Zq, q, Cq),
    "quadratic_B_exact": lambda Z, t, C, Zq, q, Cq: fa.quadratic_B_exact(Zq, q, Cq, 0.3),
    "rk_step_euler": lambda Z, t, C, Zq, q, Cq: fa.rk_step(lambda Y: fa.linear_flow(Y, t, C), Z, 0.1, "euler"),
    "rk_step_heun": lambda Z, t, C, Zq, q, Cq: fa.rk_step(lambda Y: fa.linear_flow(Y, t, C), Z, 0.1, "heun"),
    "rk_step_rk4": lambda Z, t, C, Zq, q, Cq: fa.rk_step(lambda Y: fa.quadratic_flow(Y, q, Cq), Zq, 0.1),
    "integrate": lambda Z, t, C, Zq, q, Cq: fa.integrate(lambda Y: fa.linear_flow(Y, t, C), Z, 1.0, 3),
}


@pytest.mark.parametrize("name", sorted(FLOW_FLOAT32))
def test_flows_keep_float32(xp, name):
    out = FLOW_FLOAT32[name](*_f32(xp))
    assert out.dtype == np.float32, f"{name} returned {out.dtype}"
    assert np.isfinite(host(out)).all()


@pytest.mark.parametrize("name", ["linear_B_exact", "quadratic_B_exact", "integrate"])
def test_a_float64_scalar_step_does_not_upcast_float32_features(name):
    Z, t, C, Zq, q, Cq = _f32(np)
    h = np.float64(0.3)
    out = {
        "linear_B_exact": lambda: fa.linear_B_exact(Z, t, C, h),
        "quadratic_B_exact": lambda: fa.quadratic_B_exact(Zq, q, Cq, h),
        "integrate": lambda: fa.integrate(lambda Y: fa.linear_flow(Y, t, C), Z, h, 2),
    }[name]()
    assert out.dtype == np.float32


# ---------------------------------------------------------------- fields built once


@pytest.mark.parametrize("with_C", [True, False])
def test_linear_field_is_the_checked_flow_without_the_checks(with_C):
    Z, theta, C = linear_problem(7, kind="soft")
    field = fa.linear_field(theta, C if with_C else None)
    expected = fa.linear_flow(Z, theta, C) if with_C else fa.linear_flow_A(Z, theta)
    assert np.array_equal(field(Z), expected)


@pytest.mark.parametrize("with_C", [True, False])
def test_quadratic_field_is_the_checked_flow_without_the_checks(with_C):
    Z, theta, C = quadratic_problem(8, lead=(2,))
    field = fa.quadratic_field(theta, C if with_C else None)
    expected = fa.quadratic_flow(Z, theta, C) if with_C else fa.quadratic_flow_A(Z, theta)
    assert np.array_equal(field(Z), expected)


def test_fields_check_their_arguments_when_built_naming_them():
    Z, theta, C = linear_problem(9)
    with pytest.raises(ValueError, match=r"^C: label rows"):
        fa.linear_field(theta, 2 * C)
    with pytest.raises(ValueError, match=r"^heads\b"):
        fa.linear_field(theta, C, heads=(2, 2))
    _, theta_q, C_q = quadratic_problem(9)
    theta_q[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"^theta: the quadratic model needs a symmetric theta"):
        fa.quadratic_field(theta_q, C_q)
    with pytest.raises(ValueError, match=r"^C: expected shape"):
        fa.quadratic_field(spd(np.random.default_rng(0), 3), np.ones((4, 5)) / 5)


def test_integrate_with_a_built_field_checks_the_labels_once_not_every_stage(monkeypatch):
    """The point of linear_field: 100 RK4 steps (400 evaluations), one label check."""
    Z, theta, C = linear_problem(10, kind="soft")
    calls = []
    real = flows.validate.check_labels
    monkeypatch.setattr(flows.validate, "check_labels", lambda *a: calls.append(1) or real(*a))
    fa.integrate(fa.linear_field(theta, C), Z, 1.0, 100, "rk4")
    assert len(calls) == 1
    fa.integrate(lambda Y: fa.linear_flow(Y, theta, C), Z, 1.0, 100, "rk4")
    assert len(calls) == 1 + 400  # the per-call form checks at every stage


def test_quadratic_B_exact_vjp_without_t_bar_gives_the_same_other_gradients():
    """need_t=False (a fixed step) skips only t_bar: the other outputs are bitwise the same."""
    rng = np.random.default_rng(4)
    Z, theta, C = rng.normal(size=(2, 5, 3)), spd(rng, 3), soft(rng, (2, 5, 5))
    _, cache = exact_b.quadratic_B_exact_forward(Z, theta, C + np.swapaxes(C, -1, -2), 0.3)
    Z_bar = rng.normal(size=Z.shape)
    full = exact_b.quadratic_B_exact_vjp(Z_bar, cache)
    short = exact_b.quadratic_B_exact_vjp(Z_bar, cache, need_t=False)
    assert short[3] is None and full[3] is not None and np.isfinite(full[3])
    for a, b in zip(full[:3], short[:3]):
        assert np.array_equal(a, b)
