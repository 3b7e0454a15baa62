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
# # Assignment 1: softmax, cross-entropy and the linear model
#
# A multinomial regression with parameters $\theta \in \mathbb{R}^{m \times d}$ (one row per
# class) scores the features $Z \in \mathbb{R}^{n \times d}$ (one row per example) with the
# logits $N = Z\theta^T$. In this assignment you write, in plain NumPy:
#
# 1. a numerically stable row-wise **softmax** and **log-sum-exp**,
# 2. the point-wise **cross-entropy** $\ell(Z) = -\langle C, \log\sigma(Z\theta^T)\rangle$ (eq. 3),
# 3. its gradient in the *features*, $\nabla_Z \ell$ (eq. 4), and see that it is
#    **cross-attention** minus a label term: $\nabla_Z \ell = \mathrm{CA}(Z,\theta) - C\theta$,
# 4. its gradient in the parameters, $\nabla_\theta \ell$.
#
# **How the tests work.** Below each exercise a test cell compares your function with the
# package's reference implementation (and with finite differences) on fixed and random
# inputs, in float64 and float32. When a test fails, read its message: it says where the
# arrays differ (row, column, expected, got) and, for the common mistakes (a flipped sign,
# a missing transpose, a missing term, a softmax over the wrong axis, a missing max-shift,
# an input changed in place), names the mistake, the equation and the term. When a test
# fails and a function of yours that it uses (your `softmax` in `grad_Z`, say) fails its own
# test too, the message says so first: fix that one. Some tests are hidden and run only when
# your work is graded; they test the same thing on other inputs.
#
# **Rules.** Write plain NumPy (`np.exp`, `np.log`, `@`, `.max`, `.sum`, ...). Do not call
# the `flowattn_np` function you are asked to write: the tests use it as the reference, and a
# test whose function calls it fails with a message naming the call.
# Keep float32 inputs float32 (use Python floats, not `np.float64` scalars). Do not change
# your inputs in place.

# %%
import numpy as np

import flowattn_np as fa
from flowattn_np import checks

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A stable softmax (4 points)
#
# The row-wise softmax is $\sigma(S)_{ij} = e^{S_{ij}} / \sum_k e^{S_{ik}}$: each row is a
# probability distribution over the $m$ columns. Computed as written it overflows: in
# float64 $e^{710} = \infty$, in float32 already $e^{89} = \infty$, and then
# $\infty/\infty$ is NaN. Since $\sigma(S - c\,\mathbf{1}^T) = \sigma(S)$ for any column of
# row constants $c$, subtract each row's maximum $c_i = \max_k S_{ik}$ first (the
# **max-shift**): every exponent is then $\le 0$ and the largest entry of each row is
# $e^0 = 1$.
#
# Write `softmax(S)` for an array of shape `(..., m)`, normalising over the **last** axis.

# %% nbgrader={"grade": false, "grade_id": "softmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def softmax(S):
    """Row-wise softmax over the last axis, max-shifted. S: (..., m) -> (..., m), S's dtype."""
    ### BEGIN SOLUTION
    shifted = S - S.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_softmax", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# ordinary logits here; large logits have their own test below
print(checks.check_function(softmax, fa.softmax, checks.make_logits_inputs, exercise="softmax", stress=False))
P = softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
assert np.allclose(P.sum(axis=1), 1.0) and np.allclose(P[1], 1 / 3)
### BEGIN HIDDEN TESTS
print(checks.check_function(softmax, fa.softmax, lambda r: (r.standard_normal((2, 3, 7)),), exercise="softmax", stress=False))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_softmax_large_logits", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# logits of +-1e4 (and of a few hundred, where exp overflows or underflows): the max-shift keeps
# every entry finite, in float64 and float32
print(checks.check_function(softmax, fa.softmax, lambda r: checks.make_logits_inputs(r, scale=1e4),
                            exercise="softmax"))
### BEGIN HIDDEN TESTS
big = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
assert np.all(np.isfinite(softmax(big))) and softmax(big).dtype == np.float32
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Log-sum-exp (2 points)
#
# $\mathrm{LSE}(S)_i = \log\sum_k e^{S_{ik}} = c_i + \log\sum_k e^{S_{ik} - c_i}$ with
# $c_i = \max_k S_{ik}$. Write `logsumexp(S)`: shape `(..., m)` in, `(...)` out (no kept axis).

# %% nbgrader={"grade": false, "grade_id": "logsumexp", "locked": false, "schema_version": 3, "solution": true, "task": false}
def logsumexp(S):
    """Row-wise log-sum-exp, max-shifted. S: (..., m) -> (...)."""
    ### BEGIN SOLUTION
    c = S.max(axis=-1, keepdims=True)
    return (c + np.log(np.exp(S - c).sum(axis=-1, keepdims=True)))[..., 0]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_logsumexp", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(logsumexp, fa.logsumexp, checks.make_logits_inputs, exercise="logsumexp"))
print(checks.check_function(logsumexp, fa.logsumexp, lambda r: checks.make_logits_inputs(r, scale=1e4),
                            exercise="logsumexp"))
### BEGIN HIDDEN TESTS
assert np.isclose(logsumexp(np.array([[1e4, 1e4]]))[0], 1e4 + np.log(2.0))
batched = checks.check_function(logsumexp, fa.logsumexp, lambda r: (r.standard_normal((3, 2, 6)),), exercise="logsumexp", seeds=(4, 5))
print(batched)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The point-wise cross-entropy (eq. 3, 2 points)
#
# With targets $C \in \mathbb{R}^{n \times m}$ whose rows are distributions (one-hot labels,
# or soft labels), the point-wise cross-entropy of the linear model, **summed** over rows, is
#
# $$\ell(Z) = -\langle C, \log\sigma(Z\theta^T)\rangle = -\langle C, Z\theta^T\rangle + \sum_i \mathrm{LSE}(Z\theta^T)_i,$$
#
# where $\langle A, B\rangle = \sum_{ij} A_{ij}B_{ij}$ and the second form uses $C\mathbf{1} = \mathbf{1}$.
# Write `cross_entropy(Z, theta, C)` with your `logsumexp` (never $\log$ of a softmax that
# may have underflowed to 0).

# %% nbgrader={"grade": false, "grade_id": "cross_entropy", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cross_entropy(Z, theta, C):
    """Point-wise cross-entropy -<C, log sigma(Z theta^T)>, summed over rows (a scalar)."""
    ### BEGIN SOLUTION
    logits = Z @ theta.T
    return -(C * logits).sum() + logsumexp(logits).sum()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cross_entropy", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(cross_entropy, fa.linear_loss, checks.make_linear_inputs, exercise="cross_entropy",
                            uses={"logsumexp": logsumexp}))
# logits of a few hundred: log of a softmax that underflowed to 0 is -inf (and 0 * -inf is NaN)
print(checks.check_function(cross_entropy, fa.linear_loss, lambda r: checks.make_linear_inputs(r, scale=300.0),
                            exercise="cross_entropy"))
### BEGIN HIDDEN TESTS
def soft_label_inputs(r):
    Z, theta, _ = checks.make_linear_inputs(r, n=6, m=3, d=2)
    return Z, theta, fa.softmax(r.standard_normal((6, 3)))
print(checks.check_function(cross_entropy, fa.linear_loss, soft_label_inputs, exercise="cross_entropy"))
### END HIDDEN TESTS

# %% [markdown]
# ## 4. The feature gradient is cross-attention (eq. 4)
#
# Now fix $\theta$ and ask how the loss changes with the *features*. With the residual
# $G = \sigma(Z\theta^T) - C$, the differential of the loss is $d\ell = \langle G, dN\rangle$
# for the logits $N = Z\theta^T$.
#
# **Question 4a (written, 3 points).** Derive $\nabla_Z \ell$ from $d\ell = \langle G, dN\rangle$
# and show that it equals $\mathrm{CA}(Z,\theta) - C\theta$, where
# $\mathrm{CA}(Z,\theta) = \sigma(Z\theta^T)\theta$ is cross-attention with queries $Z$ and
# keys = values = $\theta$. Why is the softmax's derivative never needed explicitly here?

# %% [markdown] nbgrader={"grade": true, "grade_id": "derive_grad_Z", "locked": false, "points": 3, "schema_version": 3, "solution": true, "task": false}
# With $N = Z\theta^T$, $dN = dZ\,\theta^T$, so
# $d\ell = \langle G, dZ\,\theta^T\rangle = \mathrm{tr}(G^T dZ\,\theta^T) = \langle G\theta, dZ\rangle$,
# hence $\nabla_Z\ell = G\theta = \sigma(Z\theta^T)\theta - C\theta = \mathrm{CA}(Z,\theta) - C\theta$.
# The softmax's Jacobian is absorbed into $d\ell = \langle G, dN\rangle$: the derivative of
# $\sum_i \mathrm{LSE}(N)_i$ in $N$ is $\sigma(N)$ itself, so only the softmax (not its
# Jacobian) appears, and the label term $-\langle C, N\rangle$ is linear in $N$.

# %% [markdown]
# **Exercise 4b (5 points).** Write `grad_Z(Z, theta, C)` (use your `softmax`).

# %% nbgrader={"grade": false, "grade_id": "grad_Z", "locked": false, "schema_version": 3, "solution": true, "task": false}
def grad_Z(Z, theta, C):
    """Feature gradient of the point-wise cross-entropy (eq. 4): CA(Z, theta) - C theta. Returns n x d."""
    ### BEGIN SOLUTION
    residual = softmax(Z @ theta.T) - C
    return residual @ theta
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_grad_Z", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(grad_Z, fa.linear_grad_Z, checks.make_linear_inputs, exercise="linear_grad_Z",
                            uses={"softmax": softmax}))
### BEGIN HIDDEN TESTS
print(checks.check_function(grad_Z, fa.linear_grad_Z, lambda r: checks.make_linear_inputs(r, n=9, m=6, d=6), exercise="linear_grad_Z", seeds=(7, 8)))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_grad_Z_finite_differences", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# against central finite differences of the package's loss (float64), and the reference in float32
print(checks.check_gradient(grad_Z, fa.linear_loss, checks.make_linear_inputs, wrt=0,
                            reference_grad=fa.linear_grad_Z, exercise="linear_grad_Z", uses={"softmax": softmax}))

# %% [markdown]
# **Exercise 4c (2 points).** Check your `grad_Z` yourself with the package's gradient
# checker `fa.gradcheck(f, x, grad)` (central differences; read its docstring with
# `help(fa.gradcheck)`) on the inputs below, with **your** `cross_entropy` as `f`. Store the
# result in `result`. Then confirm eq. (4) numerically: store in `gap` the largest absolute
# entry of `grad_Z(Z, theta, C) - (fa.cross_attention(Z, theta) - C @ theta)`.

# %% nbgrader={"grade": false, "grade_id": "use_gradcheck", "locked": false, "schema_version": 3, "solution": true, "task": false}
Z, theta, C = checks.make_linear_inputs(np.random.default_rng(42), n=6, m=4, d=3)
### BEGIN SOLUTION
result = fa.gradcheck(lambda Zv: cross_entropy(Zv, theta, C), Z, grad_Z(Z, theta, C))
gap = np.abs(grad_Z(Z, theta, C) - (fa.cross_attention(Z, theta) - C @ theta)).max()
### END SOLUTION
print(result)
print("largest |grad_Z - (CA - C theta)| =", gap)

# %% nbgrader={"grade": true, "grade_id": "test_use_gradcheck", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert isinstance(result, fa.GradcheckResult), "store what fa.gradcheck returns in `result`"
assert result.passed, str(result)
assert result.analytic.shape == Z.shape
assert gap < 1e-12
### BEGIN HIDDEN TESTS
assert np.allclose(result.numerical, fa.linear_grad_Z(Z, theta, C), atol=1e-6)
### END HIDDEN TESTS

# %% [markdown]
# ## 5. The parameter gradient (3 points)
#
# Training the model is the usual direction: $\nabla_\theta \ell$ with $Z$ fixed. From
# $dN = Z\,d\theta^T$ derive it and write `grad_theta(Z, theta, C)` (shape $m \times d$,
# the shape of $\theta$).

# %% nbgrader={"grade": false, "grade_id": "grad_theta", "locked": false, "schema_version": 3, "solution": true, "task": false}
def grad_theta(Z, theta, C):
    """Parameter gradient grad_theta l of the point-wise cross-entropy (to derive). Returns m x d."""
    ### BEGIN SOLUTION
    G = softmax(Z @ theta.T) - C
    return G.T @ Z
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_grad_theta", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(grad_theta, fa.linear_grad_theta, checks.make_linear_inputs, exercise="linear_grad_theta",
                            uses={"softmax": softmax}))
print(checks.check_gradient(grad_theta, fa.linear_loss, checks.make_linear_inputs, wrt=1,
                            reference_grad=fa.linear_grad_theta, exercise="linear_grad_theta", seeds=(3,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(grad_theta, fa.linear_grad_theta, lambda r: checks.make_linear_inputs(r, n=7, m=5, d=5), exercise="linear_grad_theta", seeds=(11,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Optimal features (written, 2 points)
#
# **Question 6.** At a minimiser in $Z$ the gradient vanishes: $\mathrm{CA}(Z,\theta) = C\theta$
# (eq. 5). Read this row by row: what does row $i$ of $\mathrm{CA}(Z,\theta)$ average, and
# what must happen to the attention weights $\sigma(Z\theta^T)_{i\cdot}$ for a one-hot row
# $C_i$? Can this equation hold exactly at a finite $Z$?

# %% [markdown] nbgrader={"grade": true, "grade_id": "optimal_features", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# Row $i$ of $\mathrm{CA}(Z,\theta)$ is the average of the class rows $\theta_k$ weighted by
# the attention $\sigma(Z\theta^T)_{ik}$; $C\theta$ row $i$ is the row $\theta_{y_i}$ of the
# true class. For generic (affinely independent) $\theta$ rows the equality forces the
# weights to equal $C_i$: all attention on the true class. A softmax is never exactly
# one-hot at finite logits, so for one-hot labels the minimum is approached only as
# $|Z| \to \infty$ (the flow runs forever, driving the margin up); with soft labels it can
# be attained at a finite $Z$.
