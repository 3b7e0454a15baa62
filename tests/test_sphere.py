"""Normalisation as a sphere constraint: projections, retractions, spherical flows.

* Every VJP against central differences in float64 (relative error < 1e-6), with
  property tests over shapes 1..8.
* Rows stay on the manifold to 1e-12 (and LayerNorm rows keep mean 0 to 1e-12).
* Dissipation on the sphere: the loss never increases along the projected flow, and
  dl/dt = -|P_Z grad_Z l|^2 to the accuracy of the difference quotient.
* The post-norm identity R(z - h v) = R(z - h' P_z v), h' = h / (1 - h z.v / r^2).
* The exact spherical B step against fine-step RK4 (1e-10); degenerate rows finite.
* The Jacobian of each retraction at a point of its manifold is the tangent projection.
* Measured orders on the sphere: Lie ~1, Strang ~2 with RK4 + retraction for A and
  exact B; both ~1 with Euler for A.
* float32 in, float32 out; zero rows and other bad input give errors naming the argument.
"""

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import flowattn_np as fa
from flowattn_np.equations import sphere
from flowattn_np.equations.integrators import integrate, rk_step
from helpers import assert_round_off, host

HYP = settings(max_examples=30, deadline=None, database=None)
FD_TOL = 1e-6
ON_MANIFOLD = 1e-12

shapes = st.fixed_dictionaries(dict(
    n=st.integers(1, 8), d=st.integers(1, 8), m=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1)))


def case(n, d, m, seed, soft=True):
    """(Z, V, theta, C, Y_bar): a random point, direction, parameters, targets, cotangent."""
    rng = np.random.default_rng(seed)
    C = scipy.special.softmax(2 * rng.normal(size=(n, m)), axis=-1) if soft else \
        np.eye(m)[rng.integers(m, size=n)]
    return (rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(m, d)), C,
            rng.normal(size=(n, d)))


def assert_vjp(fun, x, out_bar, vjp):
    """vjp == grad_x <out_bar, fun(x)> to 1e-6 relative. The floor of 0.1 on the scale turns
    the test absolute (1e-7) for gradients that vanish (d = 1, where the tangent space is
    {0}; t = 0), where the differences' round-off on a sum of up to 64 O(1) terms is ~1e-8."""
    result = fa.gradcheck(lambda y: (out_bar * fun(y)).sum(), x, vjp, rtol=FD_TOL, floor=0.1)
    assert result.passed, str(result)


def spd(rng, d):
    phi = np.tril(rng.normal(size=(d, d))) * 0.5
    phi[np.diag_indices(d)] = np.abs(phi[np.diag_indices(d)]) + 0.3
    phi /= np.sqrt(d)
    return phi @ phi.T


# ---------------------------------------------------------------- 1. VJPs vs finite differences


@HYP
@given(shapes)
def test_tangent_project_vjp_matches_finite_differences(s):
    Z, V, _, _, Y_bar = case(**s)
    Z_bar, V_bar = sphere.tangent_project_vjp(Z, V, Y_bar)
    assert_vjp(lambda z: fa.tangent_project(z, V), Z, Y_bar, Z_bar)
    assert_vjp(lambda v: fa.tangent_project(Z, v), V, Y_bar, V_bar)


@HYP
@given(shapes, st.floats(0.3, 5.0))
def test_retract_vjp_matches_finite_differences(s, r):
    Z, _, _, _, Y_bar = case(**s)
    assert_vjp(lambda z: fa.retract(z, r), Z, Y_bar, fa.retract_vjp(Z, Y_bar, r))
    assert_vjp(fa.retract, Z, Y_bar, fa.retract_vjp(Z, Y_bar))


@HYP
@given(shapes.filter(lambda s: s["d"] >= 2))
def test_layer_retract_and_projection_vjps_match_finite_differences(s):
    Z, V, _, _, Y_bar = case(**s)
    assert_vjp(fa.layer_retract, Z, Y_bar, fa.layer_retract_vjp(Z, Y_bar))
    Z_bar, V_bar = sphere.layer_tangent_project_vjp(Z, V, Y_bar)
    assert_vjp(lambda z: fa.layer_tangent_project(z, V), Z, Y_bar, Z_bar)
    assert_vjp(lambda v: fa.layer_tangent_project(Z, v), V, Y_bar, V_bar)


@HYP
@given(shapes, st.floats(-1.0, 2.0), st.sampled_from([None, 1.7]))
def test_exact_spherical_B_vjp_matches_finite_differences(s, t, r):
    Z, _, theta, C, Y_bar = case(**s)
    if r is not None:
        Z = fa.retract(Z, r)
    F = C @ theta
    fwd = sphere.linear_B_exact_sphere_forward
    Y, cache = fwd(Z, F, t)
    assert_round_off(Y, fa.linear_B_exact_sphere(Z, theta, C, t, r), Y)
    Z_bar, F_bar, t_bar = sphere.linear_B_exact_sphere_vjp(Y_bar, cache)
    assert_vjp(lambda z: fwd(z, F, t)[0], Z, Y_bar, Z_bar)
    assert_vjp(lambda f: fwd(Z, f, t)[0], F, Y_bar, F_bar)
    assert_vjp(lambda tt: fwd(Z, F, float(tt[0]))[0], np.array([t]), Y_bar, np.array([float(t_bar)]))


def test_exact_spherical_B_vjp_at_a_zero_forcing_row_is_its_first_order_limit(rng):
    Z, F, Y_bar = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    F[1] = 0.0
    fwd = sphere.linear_B_exact_sphere_forward
    _, cache = fwd(Z, F, 0.8)
    Z_bar, F_bar, _ = sphere.linear_B_exact_sphere_vjp(Y_bar, cache)
    assert np.isfinite(Z_bar).all() and np.isfinite(F_bar).all()
    assert_vjp(lambda f: fwd(Z, f, 0.8)[0], F, Y_bar, F_bar)
    assert_vjp(lambda z: fwd(z, F, 0.8)[0], Z, Y_bar, Z_bar)


# ---------------------------------------------------------------- 2. the spherical flows


@HYP
@given(shapes)
def test_linear_flow_sphere_is_minus_the_projected_finite_difference_gradient(s):
    Z, _, theta, C, _ = case(**s)
    grad = fa.numerical_gradient(lambda z: fa.linear_loss(z, theta, C), Z)
    expected = -fa.tangent_project(Z, grad)
    F = fa.linear_flow_sphere(Z, theta, C)
    err = np.linalg.norm(F - expected) / max(np.linalg.norm(expected), 1e-12)
    assert err < FD_TOL or np.abs(F - expected).max() < 1e-9


@pytest.mark.parametrize("manifold", ["sphere", "layer"])
def test_linear_flows_on_the_manifold_are_tangent_and_sum_to_the_full_flow(xp, rng, manifold):
    Z, _, theta, C, _ = (xp.asarray(a) for a in case(6, 5, 4, 1))
    if manifold == "layer":
        Z = fa.layer_retract(Z)
    A = fa.linear_flow_A_sphere(Z, theta, manifold=manifold)
    B = fa.linear_flow_B_sphere(Z, theta, C, manifold=manifold)
    F = fa.linear_flow_sphere(Z, theta, C, manifold=manifold)
    assert_round_off(F, A + B, A, B)
    assert_round_off((F * Z).sum(axis=-1), 0 * F[:, 0], F * Z)
    if manifold == "layer":
        assert_round_off(F.mean(axis=-1), 0 * F[:, 0], F)
        assert_round_off(F, fa.layer_tangent_project(Z, fa.linear_flow(Z, theta, C)), F)
    else:
        assert_round_off(F, fa.tangent_project(Z, fa.linear_flow(Z, theta, C)), F)
        assert_round_off(A, -fa.tangent_project(Z, fa.cross_attention(Z, theta)), A)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_quadratic_flows_on_the_sphere_project_the_flat_ones(xp, lead):
    rng = np.random.default_rng(3)
    Z = xp.asarray(rng.normal(size=lead + (5, 3)))
    theta = xp.asarray(spd(rng, 3))
    C = xp.asarray(scipy.special.softmax(rng.normal(size=lead + (5, 5)), axis=-1))
    A = fa.quadratic_flow_A_sphere(Z, theta)
    B = fa.quadratic_flow_B_sphere(Z, theta, C)
    F = fa.quadratic_flow_sphere(Z, theta, C)
    assert_round_off(F, A + B, A, B)
    assert_round_off(F, fa.tangent_project(Z, fa.quadratic_flow(Z, theta, C)), F)
    assert_round_off(A, fa.tangent_project(Z, fa.quadratic_flow_A(Z, theta)), A)
    assert_round_off((F * Z).sum(axis=-1), 0 * F[..., 0], F * Z)


# ---------------------------------------------------------------- 3. staying on the manifold


def sphere_lie_step(theta, C, r, method="rk4"):
    """One Lie step on the sphere: A by ``method`` followed by R, then B exact."""
    def step_A(Z, t):
        return fa.retract(rk_step(lambda Y: fa.linear_flow_A_sphere(Y, theta), Z, t, method), r)

    def step_B(Z, t):
        return fa.linear_B_exact_sphere(Z, theta, C, t, r)
    return step_A, step_B


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_rows_stay_on_the_sphere_through_many_split_steps(rng, method):
    r = math.sqrt(6)
    Z = fa.retract(rng.normal(size=(7, 6)), r)
    theta, C = 2 * rng.normal(size=(4, 6)), np.eye(4)[rng.integers(4, size=7)]
    step_A, step_B = sphere_lie_step(theta, C, r, method)
    for _ in range(40):
        Z = fa.strang_step(step_A, step_B, Z, 0.3)
        assert np.abs(np.linalg.norm(Z, axis=1) - r).max() < ON_MANIFOLD


def test_retractions_land_on_their_manifolds(rng):
    Z = 50 * rng.normal(size=(20, 9)) + 3
    assert np.abs(np.linalg.norm(fa.retract(Z), axis=1) - 3.0).max() < ON_MANIFOLD
    assert np.abs(np.linalg.norm(fa.retract(Z, 0.5), axis=1) - 0.5).max() < ON_MANIFOLD
    Y = fa.layer_retract(Z)
    assert np.abs(Y.mean(axis=1)).max() < ON_MANIFOLD
    assert np.abs(np.linalg.norm(Y, axis=1) - 3.0).max() < ON_MANIFOLD
    assert_round_off(fa.retract(fa.retract(Z)), fa.retract(Z), fa.retract(Z))
    assert_round_off(fa.layer_retract(Y), Y, Y)


def test_exact_spherical_B_keeps_each_rows_length(rng):
    Z, theta = rng.normal(size=(6, 5)) * rng.random(size=(6, 1)) * 4, rng.normal(size=(3, 5))
    C = np.eye(3)[rng.integers(3, size=6)]
    Y = fa.linear_B_exact_sphere(Z, theta, C, 1.3)
    assert np.abs(np.linalg.norm(Y, axis=1) - np.linalg.norm(Z, axis=1)).max() < ON_MANIFOLD


# ---------------------------------------------------------------- 4. dissipation on the sphere


def test_loss_never_increases_along_the_spherical_flow(rng):
    r = 2.0
    Z = fa.retract(rng.normal(size=(8, 5)), r)
    theta, C = 1.5 * rng.normal(size=(4, 5)), np.eye(4)[rng.integers(4, size=8)]
    path = [Z]
    for _ in range(200):
        path.append(fa.retract(rk_step(lambda Y: fa.linear_flow_sphere(Y, theta, C), path[-1], 0.01), r))
    losses = np.array([float(fa.linear_loss(Y, theta, C)) for Y in path])
    assert (np.diff(losses) <= 1e-13 * losses[0]).all()
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_dl_dt_is_minus_the_squared_riemannian_gradient(rng, model):
    if model == "linear":
        Z = fa.retract(rng.normal(size=(6, 4)), 1.5)
        theta, C = rng.normal(size=(3, 4)), np.eye(3)[rng.integers(3, size=6)]
        loss, grad, flow = fa.linear_loss, fa.linear_grad_Z, fa.linear_flow_sphere
    else:
        Z = fa.retract(rng.normal(size=(2, 5, 3)), 1.5)
        theta, C = spd(rng, 3), np.eye(5)[rng.integers(5, size=(2, 5))]
        loss, grad, flow = fa.quadratic_loss, fa.quadratic_grad_Z, fa.quadratic_flow_sphere
    delta = 1e-4
    ends = [integrate(lambda Y: flow(Y, theta, C), Z, s * delta, 4, "rk4") for s in (1, -1)]
    rate = (float(loss(ends[0], theta, C)) - float(loss(ends[1], theta, C))) / (2 * delta)
    expected = -float((fa.tangent_project(Z, grad(Z, theta, C)) ** 2).sum())
    # the central quotient is accurate to O(delta^2) plus round-off of l / delta
    assert expected < 0
    assert abs(rate - expected) <= 1e-6 * abs(expected)


# ---------------------------------------------------------------- 5. the post-norm identity


@HYP
@given(shapes, st.floats(-0.5, 0.5), st.floats(0.5, 3.0))
def test_post_norm_residual_is_a_riemannian_step_with_a_per_row_step(s, h, r):
    Z, V, _, _, _ = case(**s)
    Z = fa.retract(Z, r)
    h_row = fa.post_norm_step_size(Z, V, h, r)
    ok = (1.0 - h * (Z * V).sum(axis=1) / r**2) > 0
    left = fa.retract(Z - h * V, r)[ok]
    right = fa.retract(Z - h_row * fa.tangent_project(Z, V), r)[ok]
    assert np.abs(left - right).max(initial=0.0) <= 1e-12 * r


def test_post_norm_step_size_is_h_for_tangent_updates(rng):
    Z = fa.retract(rng.normal(size=(5, 4)))
    V = fa.tangent_project(Z, rng.normal(size=(5, 4)))
    assert_round_off(fa.post_norm_step_size(Z, V, 0.3), np.full((5, 1), 0.3), 0.3)


# ---------------------------------------------------------------- 6. the exact spherical B step


@pytest.mark.parametrize("r", [None, 2.0])
def test_exact_spherical_B_matches_fine_step_rk4(rng, r):
    Z, theta = rng.normal(size=(6, 5)), 1.5 * rng.normal(size=(4, 5))
    if r is not None:
        Z = fa.retract(Z, r)
    C = scipy.special.softmax(rng.normal(size=(6, 4)), axis=-1)
    for t in (0.3, 1.0, -0.4):
        ref = integrate(lambda Y: fa.linear_flow_B_sphere(Y, theta, C), Z, t, 2000, "rk4")
        Y = fa.linear_B_exact_sphere(Z, theta, C, t, r)
        assert np.abs(Y - ref).max() < 1e-10


def test_exact_spherical_B_on_degenerate_rows_is_finite_and_still(rng):
    theta = rng.normal(size=(3, 4))
    C = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    F = C @ theta
    theta_zero = theta.copy()
    theta_zero[2] = 0.0  # rows with class 2 get c = 0
    Z = rng.normal(size=(6, 4))
    Z[0] = 2.0 * F[0]               # parallel to c
    Z[1] = -3.0 * F[1]              # antiparallel to c
    Z[3] = F[3] + 1e-12 * Z[3]      # parallel up to 1e-12
    Z[4] = -F[4] + 1e-12 * Z[4]     # antiparallel up to 1e-12
    Y = fa.linear_B_exact_sphere(Z, theta_zero, C, 2.5)
    assert np.isfinite(Y).all()
    assert_round_off(Y[[0, 1, 2, 5]], Z[[0, 1, 2, 5]], Z, tol=1e-14)
    assert np.abs(np.linalg.norm(Y, axis=1) - np.linalg.norm(Z, axis=1)).max() < ON_MANIFOLD
    _, cache = sphere.linear_B_exact_sphere_forward(Z, C @ theta_zero, 2.5)
    assert all(np.isfinite(g).all() for g in sphere.linear_B_exact_sphere_vjp(np.ones_like(Z), cache))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_spherical_B_near_antiparallel_rows_with_a_long_time(dtype):
    """The unstable fixed point: an exactly antiparallel row stays, even when q = exp(-|c| t / rho)
    underflows; a row 1e-6 off it turns all the way to c; no NaN in forward or backward."""
    c = np.array([[3.0, 0.0, 0.0]] * 3, dtype=dtype)
    Z = np.array([[-2.0, 0.0, 0.0], [-2.0, 1e-6, 0.0], [-2.0, 0.0, 1e-6]], dtype=dtype)
    for t in (5.0, 400.0):
        Y, cache = sphere.linear_B_exact_sphere_forward(Z, c, t)
        grads = sphere.linear_B_exact_sphere_vjp(np.ones_like(Z), cache)
        assert all(np.isfinite(g).all() for g in (Y, *grads))
        assert_round_off(Y[0], Z[0], Z)
        assert np.abs(np.linalg.norm(Y, axis=1) - 2.0).max() < 1e-5
    assert_round_off(Y[1:], np.array([[2.0, 0.0, 0.0]] * 2), Z, tol=1e-6)


def test_exact_spherical_B_turns_rows_toward_c(rng):
    theta, C = rng.normal(size=(3, 4)), np.eye(3)[[0, 1, 2]]
    Z = fa.retract(rng.normal(size=(3, 4)))
    F = C @ theta
    cos = [((fa.linear_B_exact_sphere(Z, theta, C, t) * F).sum(axis=1)
            / (2.0 * np.linalg.norm(F, axis=1))) for t in (0.0, 1.0, 5.0, 200.0)]
    assert (np.diff(np.array(cos), axis=0) > 0).all()
    assert_round_off(cos[-1], np.ones(3), 1.0, tol=1e-9)


# ---------------------------------------------------------------- 7. Jacobians at the manifold


def jacobian(f, z, eps=1e-6):
    return np.stack([(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(z.size)], axis=1)


@pytest.mark.parametrize("d", [2, 3, 7])
def test_layer_retraction_jacobian_on_its_manifold_is_the_tangent_projection(rng, d):
    z = fa.layer_retract(rng.normal(size=(1, d)))[0]
    J = jacobian(lambda x: fa.layer_retract(x[None])[0], z)
    P = np.eye(d) - np.ones((d, d)) / d - np.outer(z, z) / d  # v - mean(v) - (z.v / d) z
    assert np.abs(J - P).max() < 1e-8
    V = rng.normal(size=(4, d))
    assert_round_off(fa.layer_tangent_project(np.tile(z, (4, 1)), V), V @ P.T, V)


def test_sphere_retraction_jacobian_on_the_sphere_is_the_tangent_projection(rng):
    r, d = 2.5, 5
    z = fa.retract(rng.normal(size=(1, d)), r)[0]
    J = jacobian(lambda x: fa.retract(x[None], r)[0], z)
    assert np.abs(J - (np.eye(d) - np.outer(z, z) / r**2)).max() < 1e-8


# ---------------------------------------------------------------- 8. orders of the splittings


N, D, M, T, REF_STEPS = 4, 3, 5, 1.0, 4000
STEPS = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def order_problem():
    rng = np.random.default_rng(0)
    r = math.sqrt(D)
    Z0 = fa.retract(rng.normal(size=(N, D)), r)
    theta, C = rng.normal(size=(M, D)), fa.one_hot(rng.integers(0, M, size=N), M)
    ref = Z0
    for _ in range(REF_STEPS):  # RK4 then R: the reference stays on the sphere
        ref = fa.retract(rk_step(lambda Y: fa.linear_flow_sphere(Y, theta, C), ref, T / REF_STEPS), r)
    return Z0, theta, C, r, ref


def measured_order(problem, scheme, method):
    Z0, theta, C, r, ref = problem
    step = {"lie": fa.lie_step, "strang": fa.strang_step}[scheme]
    step_A, step_B = sphere_lie_step(theta, C, r, method)
    errors = []
    for L in STEPS:
        Z = Z0
        for _ in range(L):
            Z = step(step_A, step_B, Z, T / L)
        errors.append(np.abs(Z - ref).max())
    return float(np.polyfit(np.log(T / np.array(STEPS)), np.log(errors), 1)[0])


@pytest.mark.parametrize("scheme, method, order", [
    ("lie", "rk4", 1), ("strang", "rk4", 2), ("lie", "euler", 1), ("strang", "euler", 1)])
def test_measured_order_of_the_splitting_on_the_sphere(order_problem, scheme, method, order):
    assert abs(measured_order(order_problem, scheme, method) - order) < 0.2


# ---------------------------------------------------------------- 9. dtypes and errors


def test_float32_in_float32_out(rng):
    Z, V, theta, C, Y_bar = (a.astype(np.float32) for a in case(5, 4, 3, 7))
    Zs = fa.retract(Z)
    outs = [fa.tangent_project(Z, V), fa.retract(Z), fa.retract(Z, 2.0), fa.retract_vjp(Z, Y_bar),
            fa.layer_retract(Z), fa.layer_retract_vjp(Z, Y_bar), fa.layer_tangent_project(Z, V),
            fa.linear_flow_sphere(Z, theta, C), fa.linear_flow_A_sphere(Z, theta),
            fa.linear_flow_B_sphere(Z, theta, C), fa.linear_B_exact_sphere(Z, theta, C, 0.5),
            fa.linear_B_exact_sphere(Zs, theta, C, 0.5, r=2.0), fa.post_norm_step_size(Zs, V, 0.1)]
    _, cache = sphere.linear_B_exact_sphere_forward(Z, C @ theta, 0.5)
    outs += list(sphere.linear_B_exact_sphere_vjp(Y_bar, cache))
    outs += list(sphere.tangent_project_vjp(Z, V, Y_bar))
    Zq, thq, Cq = Z[None], (theta.T @ theta + np.eye(4, dtype=np.float32)), np.eye(5, dtype=np.float32)[None]
    outs += [fa.quadratic_flow_sphere(Zq, thq, Cq), fa.quadratic_flow_A_sphere(Zq, thq),
             fa.quadratic_flow_B_sphere(Zq, thq, Cq)]
    assert [str(o.dtype) for o in outs] == ["float32"] * len(outs)
    assert all(np.isfinite(host(o)).all() for o in outs)


def test_zero_rows_raise_an_error_naming_Z(rng):
    Z = rng.normal(size=(4, 3))
    Z[2] = 0.0
    for call in (lambda: fa.retract(Z), lambda: fa.retract(Z, 2.0),
                 lambda: fa.tangent_project(Z, Z),
                 lambda: fa.linear_flow_sphere(Z, rng.normal(size=(2, 3)), np.eye(2)[[0, 1, 0, 1]]),
                 lambda: fa.linear_B_exact_sphere(Z, rng.normal(size=(2, 3)), np.eye(2)[[0, 1, 0, 1]], 1.0)):
        with pytest.raises(ValueError, match=r"^Z: .*\|z\| = 0"):
            call()
    Z[2] = 5.0
    with pytest.raises(ValueError, match=r"^Z: .*constant rows"):
        fa.layer_retract(Z)


def test_bad_arguments_are_named(rng):
    Z = rng.normal(size=(4, 3))
    theta, C = rng.normal(size=(2, 3)), np.eye(2)[[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="^r: expected a positive radius"):
        fa.retract(Z, -1.0)
    with pytest.raises(TypeError, match="^r: expected a real number"):
        fa.retract(Z, "big")
    with pytest.raises(ValueError, match="^V: expected shape"):
        fa.tangent_project(Z, Z[:2])
    with pytest.raises(TypeError, match="^Z: expected a NumPy or CuPy array"):
        fa.retract([[1.0, 2.0]])
    with pytest.raises(ValueError, match="^manifold: expected one of sphere, layer"):
        fa.linear_flow_A_sphere(Z, theta, manifold="torus")
    with pytest.raises(ValueError, match=r"^Z: expected rows on the sphere \|z\| = r"):
        fa.linear_B_exact_sphere(Z, theta, C, 1.0, r=2.0)
    with pytest.raises(ValueError, match="^t: expected a finite step size"):
        fa.linear_B_exact_sphere(Z, theta, C, float("nan"))
    Z[0, 0] = np.inf
    with pytest.raises(ValueError, match="^Z: expected finite values"):
        fa.retract(Z)
