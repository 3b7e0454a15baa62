# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 4: splitting and normalisation
#
# A transformer block is one step of a **split** gradient flow: the linear model's flow
# $\dot Z = C\theta - \mathrm{CA}(Z,\theta)$ is the sum of the attention sub-flow
# A: $\dot Z = -\mathrm{CA}(Z,\theta)$ and the label sub-flow B: $\dot Z = C\theta$ (solved
# exactly by $Z + tC\theta$). How well does a stack of blocks follow the flow? You will
#
# 1. integrate the A sub-flow with the classical Runge-Kutta method (RK4),
# 2. build one Lie step $B(h)\circ A(h)$ and one Strang step $A(h/2)\circ B(h)\circ A(h/2)$,
# 3. **measure** their orders of accuracy (the slope of the error against $h$ on a log-log
#    scale), and see that Strang with an Euler step for A loses its second order,
# 4. write the normalisation layer as a retraction onto a sphere, $R(z) = r\,z/|z|$, and
#    its vector-Jacobian product (VJP), which is a tangent projection.
#
# Plain NumPy; you may use `fa.cross_attention` and `fa.softmax`. As before, keep float32
# float32, do not change inputs in place, and read the test messages.

# %%
import numpy as np

import flowattn_np as fa
from flowattn_np import checks

np.set_printoptions(precision=4, suppress=True)


def step_inputs(rng):
    """Random (Z, theta, C, h) for one step of the linear flow."""
    return checks.make_block_inputs(rng)


# %% [markdown]
# ## 1. RK4 for the attention sub-flow (3 points)
#
# For $\dot Z = f(Z)$ one RK4 step of size $t$ is
# $k_1 = f(Z)$, $k_2 = f(Z + \tfrac t2 k_1)$, $k_3 = f(Z + \tfrac t2 k_2)$, $k_4 = f(Z + t k_3)$,
# $Z + \tfrac t6 (k_1 + 2k_2 + 2k_3 + k_4)$. Write `rk4_attention(Z, theta, t)` for
# $f(Z) = -\mathrm{CA}(Z,\theta)$.

# %% nbgrader={"grade": false, "grade_id": "rk4_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rk4_attention(Z, theta, t):
    """One RK4 step of size t of dZ/dt = -CA(Z, theta). Returns n x d."""
    ### BEGIN SOLUTION
    def f(Y):
        return -fa.cross_attention(Y, theta)

    k1 = f(Z)
    k2 = f(Z + (0.5 * t) * k1)
    k3 = f(Z + (0.5 * t) * k2)
    k4 = f(Z + t * k3)
    return Z + (t / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_rk4_attention", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def rk4_inputs(rng):
    Z, theta, _, h = step_inputs(rng)
    return Z, theta, h


print(checks.check_function(rk4_attention, checks.reference_rk4_attention, rk4_inputs, exercise="rk4_attention"))
### BEGIN HIDDEN TESTS
print(checks.check_function(rk4_attention, checks.reference_rk4_attention, lambda r: checks.make_block_inputs(r, n=3, m=6, d=2)[:2] + (0.05,), exercise="rk4_attention", seeds=(41,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Lie and Strang steps (4 points)
#
# Write `lie_step(Z, theta, C, h)` = $B(h)\circ A(h)$ (attention first, the order of eq. (8), whose
# A is one Euler step) and
# `strang_step(Z, theta, C, h)` = $A(h/2)\circ B(h)\circ A(h/2)$, with RK4 for A (your
# `rk4_attention`) and the exact B step $Z + tC\theta$.

# %% nbgrader={"grade": false, "grade_id": "splitting_steps", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lie_step(Z, theta, C, h):
    """One Lie step B(h) o A(h) of the linear flow: RK4 on A, exact B."""
    ### BEGIN SOLUTION
    return rk4_attention(Z, theta, h) + h * (C @ theta)
    ### END SOLUTION


def strang_step(Z, theta, C, h):
    """One Strang step A(h/2) o B(h) o A(h/2) of the linear flow: RK4 on A, exact B."""
    ### BEGIN SOLUTION
    half = rk4_attention(Z, theta, 0.5 * h)
    return rk4_attention(half + h * (C @ theta), theta, 0.5 * h)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_lie_step", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(lie_step, checks.reference_lie_step, step_inputs, exercise="lie_step"))

# %% nbgrader={"grade": true, "grade_id": "test_strang_step", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(strang_step, checks.reference_strang_step, step_inputs, exercise="strang_step"))
### BEGIN HIDDEN TESTS
print(checks.check_function(strang_step, checks.reference_strang_step, lambda r: checks.make_block_inputs(r, n=2, m=3, d=5), exercise="strang_step", seeds=(42,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Measured orders (5 points)
#
# Integrate from $Z_0$ to $T = 1$ with $N$ equal steps ($h = T/N$) and compare with a
# reference solution of the full flow (RK4 with 1024 steps, far more accurate than any
# split step here). A method of order $p$ has a global error $\approx K h^p$, so on a
# log-log plot the errors fall on a line of slope $p$.
#
# Write `global_errors(step, Ns)`: for each $N$ in `Ns`, the Frobenius norm of
# $Z_N - Z_{\text{ref}}$ after $N$ steps of `step` from `Z0` (with `theta`, `C` below).
# Write `fitted_order(Ns, errors)`: the least-squares slope of $\log(\text{error})$ against
# $\log h$ (`np.polyfit` of degree 1 does it).

# %%
Z0, theta, C = checks.make_linear_inputs(np.random.default_rng(0), n=6, m=4, d=3)
T = 1.0
Z_ref = fa.integrate(lambda Z: fa.linear_flow(Z, theta, C), Z0, T, 1024, "rk4")
Ns = [8, 16, 32, 64]


def strang_step_euler(Z, theta, C, h):
    """Strang splitting with ONE EULER STEP for each half step of A (the transformer-block form)."""
    def a_half(Y):
        return Y - (0.5 * h) * fa.cross_attention(Y, theta)
    return a_half(a_half(Z) + h * (C @ theta))


# %% nbgrader={"grade": false, "grade_id": "orders", "locked": false, "schema_version": 3, "solution": true, "task": false}
def global_errors(step, Ns):
    """||Z_N - Z_ref||_F after N steps of size T / N of ``step`` from Z0, for each N in Ns."""
    ### BEGIN SOLUTION
    errors = []
    for N in Ns:
        Z = Z0
        for _ in range(N):
            Z = step(Z, theta, C, T / N)
        errors.append(np.linalg.norm(Z - Z_ref))
    return np.array(errors)
    ### END SOLUTION


def fitted_order(Ns, errors):
    """Least-squares slope of log(error) against log(h), h = T / N."""
    ### BEGIN SOLUTION
    return np.polyfit(np.log(T / np.asarray(Ns, dtype=float)), np.log(errors), 1)[0]
    ### END SOLUTION


for name, step in [("Lie, RK4 on A", lie_step), ("Strang, RK4 on A", strang_step),
                   ("Strang, Euler on A", strang_step_euler)]:
    errors = global_errors(step, Ns)
    shown = ", ".join(f"{e:.2e}" for e in errors)
    print(f"{name:20s} errors {shown} -> order {fitted_order(Ns, errors):.2f}")

# %% nbgrader={"grade": true, "grade_id": "test_orders", "locked": true, "points": 5, "schema_version": 3, "solution": false, "task": false}
# steps that record what they are given: N calls of size T / N each, from Z0
calls = []


def recording_step(Z, theta, C, h):
    calls.append((h, np.array_equal(Z, Z0)))
    return Z


assert np.allclose(global_errors(recording_step, [2, 4]), np.linalg.norm(Z0 - Z_ref), rtol=1e-12)
assert [h for h, _ in calls] == [T / 2] * 2 + [T / 4] * 4, "N steps of size T / N for each N"
assert all(start for _, start in calls), "every integration starts from Z0 (and the steps do not move it here)"
assert np.allclose(global_errors(lambda Z, theta, C, h: Z_ref + 1.0, Ns), np.sqrt(Z_ref.size), rtol=1e-12), \
    "the error is the Frobenius norm of Z_N - Z_ref"
assert abs(fitted_order([1, 2, 4], [1.0, 0.25, 0.0625]) - 2.0) < 1e-12
lie_order = fitted_order(Ns, global_errors(lie_step, Ns))
strang_order = fitted_order(Ns, global_errors(strang_step, Ns))
assert abs(lie_order - 1) < 0.1, f"Lie splitting should be first order, measured {lie_order:.2f}"
assert abs(strang_order - 2) < 0.1, f"Strang splitting should be second order, measured {strang_order:.2f}"
### BEGIN HIDDEN TESTS
def reference_errors(step):
    def final(N):
        W = Z0.copy()
        for k in range(N):
            W = step(W, theta, C, T / N)
        return W
    return np.array([np.sqrt(((final(N) - Z_ref) ** 2).sum()) for N in Ns])


assert np.allclose(global_errors(checks.reference_lie_step, Ns), reference_errors(checks.reference_lie_step),
                   rtol=1e-8)
assert abs(fitted_order(Ns, global_errors(strang_step_euler, Ns)) - 1) < 0.1
### END HIDDEN TESTS

# %% [markdown]
# **Question 3 (written, 3 points).** Strang splitting is second order only when both
# sub-steps are at least second order. Explain why the Strang step with one Euler step per
# half step of A (the transformer-block form) is first order, and what that says about
# reading a stack of $L$ transformer blocks as an accurate integrator of the flow.

# %% [markdown] nbgrader={"grade": true, "grade_id": "strang_with_euler", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# Splitting adds a local error of order $h^3$ (Strang) or $h^2$ (Lie) per step *if each
# sub-flow is solved exactly*. An Euler step for A has its own local error of order $h^2$
# per step, which the symmetric composition does not cancel, so it dominates: the global
# error is $O(h)$ whatever the splitting. A stack of Euler-step blocks is therefore a
# first-order discretisation of the flow: $L$ blocks follow the trajectory only to $O(1/L)$,
# so deep stacks approximate the flow slowly, and trained blocks (learned $h$) need not
# follow it at all.

# %% [markdown]
# ## 4. Normalisation as a retraction (6 points)
#
# RMS-type normalisation puts each row (one token's features) on the sphere $|z| = r$:
# $R(z) = r\,z/|z|$. Its VJP for an upstream $\bar y$ is
#
# $$\bar z = \frac{r}{|z|}\big(\bar y - \hat z\,(\hat z\cdot\bar y)\big),\qquad \hat z = z/|z|,$$
#
# the tangent projection at $z$, scaled. Write `retract(Z, r)` and `retract_vjp(Z, Y_bar, r)`,
# row by row for `Z` of shape $n \times d$.

# %% nbgrader={"grade": false, "grade_id": "retraction", "locked": false, "schema_version": 3, "solution": true, "task": false}
def retract(Z, r):
    """R(z) = r z / |z| for every row z of Z. Returns n x d."""
    ### BEGIN SOLUTION
    lengths = np.sqrt((Z * Z).sum(axis=-1, keepdims=True))
    return (r / lengths) * Z
    ### END SOLUTION


def retract_vjp(Z, Y_bar, r):
    """VJP of retract at Z for the upstream Y_bar: (r / |z|) (y_bar - z_hat (z_hat . y_bar)) per row."""
    ### BEGIN SOLUTION
    norms = np.sqrt((Z * Z).sum(axis=-1, keepdims=True))
    unit = Z / norms
    return (r / norms) * (Y_bar - unit * (unit * Y_bar).sum(axis=-1, keepdims=True))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_retract", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def retract_inputs(rng):
    Z, _, r = checks.make_sphere_inputs(rng)
    return Z, r


print(checks.check_function(retract, fa.retract, retract_inputs, exercise="retract"))
assert np.allclose(np.linalg.norm(retract(*retract_inputs(np.random.default_rng(5))), axis=1),
                   retract_inputs(np.random.default_rng(5))[1])

# %% nbgrader={"grade": true, "grade_id": "test_retract_vjp", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
def pairing(Z, Y_bar, r):  # <Y_bar, R(Z)>: its gradient in Z is the VJP
    return (Y_bar * fa.retract(Z, r)).sum()


print(checks.check_function(retract_vjp, fa.retract_vjp, checks.make_sphere_inputs, exercise="retract_vjp"))
print(checks.check_gradient(retract_vjp, pairing, checks.make_sphere_inputs, wrt=0, reference_grad=fa.retract_vjp,
                            exercise="retract_vjp", seeds=(6,)))
### BEGIN HIDDEN TESTS
Zh, Ybh, rh = checks.make_sphere_inputs(np.random.default_rng(43), n=7, d=3)
assert np.allclose((retract_vjp(Zh, Ybh, rh) * Zh).sum(axis=1), 0.0, atol=1e-12)  # tangent: orthogonal to z
assert np.allclose(retract_vjp(Zh, 3.0 * Zh, rh), 0.0, atol=1e-12)  # a radial y_bar is projected away
### END HIDDEN TESTS

# %% [markdown]
# **Question 4 (written, 2 points).** Every row of `retract_vjp(Z, Y_bar, r)` is orthogonal
# to the row of `Z`. Why must it be, and what does it mean for the gradient that reaches the
# layers *below* a normalisation layer?

# %% [markdown] nbgrader={"grade": true, "grade_id": "vjp_is_tangent", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# $R(cz) = R(z)$ for every $c > 0$: moving $z$ along itself does not change the output, so
# the derivative of $R$ in the direction $z$ is zero and the VJP has no component along
# $z$. The layers below receive only the tangent part of the upstream gradient, scaled by
# $r/|z|$: the length of the features is invisible to the loss, only their direction is
# trained, and features with large norms get proportionally smaller gradients.
