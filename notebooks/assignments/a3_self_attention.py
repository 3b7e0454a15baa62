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
# # Assignment 3: self-attention from the quadratic model
#
# Replace the linear model's logits $Z\theta^T$ by a **quadratic** form in the features,
# $N = Z\theta Z^T$, with $\theta = \phi\phi^T$ symmetric ($d \times d$) and
# $\phi$ lower-triangular (a Cholesky factor). Now each token (row of $Z$) scores every
# other token, and the targets $C$ ($n \times n$) say which token each token should pick.
# The feature gradient of the cross-entropy is **self-attention** plus its adjoint (eq. 9):
#
# $$\nabla_Z\ell = \mathrm{SA}(Z,\theta) + \mathrm{SA}^*(Z,\theta) - (C + C^T) Z\theta,\qquad
# \mathrm{SA} = \sigma(Z\theta Z^T)\,Z\theta,\quad \mathrm{SA}^* = \sigma(Z\theta Z^T)^T Z\theta.$$
#
# You will write SA, SA*, this gradient, and the gradient in $\phi$, then use the last one
# to recover a hidden $\theta^*$ from which token each token retrieves.
#
# Every function takes a **batch** of sequences: `Z` has shape `(..., n, d)` (for example
# `(B, n, d)`) and `C` shape `(..., n, n)`; transpose only the last two axes
# (`A.swapaxes(-1, -2)`, not `A.T`). Plain NumPy; you may use `fa.softmax`. As before, keep
# float32 float32 and do not change inputs in place.

# %%
import numpy as np

import flowattn_np as fa
from flowattn_np import checks, make_retrieval

np.set_printoptions(precision=4, suppress=True)


def sa_inputs(rng):
    """Random (Z (2, 5, 3), theta (3, 3) symmetric positive definite)."""
    return checks.make_quadratic_inputs(rng)[:2]


def large_score_inputs(rng):
    """As sa_inputs, with scores Z theta Z^T of a few hundred: exp overflows without the max-shift."""
    Z, theta = sa_inputs(rng)
    return 10.0 * Z, theta


# %% [markdown]
# ## 1. Self-attention and its adjoint (5 points)
#
# In transformer terms $Q = K = V = Z\phi$ and the output projection is $\phi^T$: the scores
# are $Z\phi(Z\phi)^T = Z\theta Z^T$. Write `SA(Z, theta)` and `SA_adjoint(Z, theta)`.

# %% nbgrader={"grade": false, "grade_id": "self_attention", "locked": false, "schema_version": 3, "solution": true, "task": false}
def SA(Z, theta):
    """Self-attention sigma(Z theta Z^T) Z theta (eq. 9). Z: (..., n, d), theta: d x d. Returns (..., n, d)."""
    ### BEGIN SOLUTION
    Y = Z @ theta
    return fa.softmax(Y @ Z.swapaxes(-1, -2)) @ Y
    ### END SOLUTION


def SA_adjoint(Z, theta):
    """Adjoint self-attention sigma(Z theta Z^T)^T Z theta (eq. 9). Returns (..., n, d)."""
    ### BEGIN SOLUTION
    Y = Z @ theta
    scores = fa.softmax(Y @ Z.swapaxes(-1, -2))
    return scores.swapaxes(-1, -2) @ Y
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_SA", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(SA, fa.self_attention, sa_inputs, exercise="self_attention"))
print(checks.check_function(SA, fa.self_attention, large_score_inputs, exercise="self_attention"))
### BEGIN HIDDEN TESTS
print(checks.check_function(SA, fa.self_attention, lambda r: checks.make_quadratic_inputs(r, batch=1, n=6, d=4)[:2], exercise="self_attention", seeds=(12,)))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_SA_adjoint", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(SA_adjoint, fa.self_attention_adjoint, sa_inputs, exercise="self_attention_adjoint"))
print(checks.check_function(SA_adjoint, fa.self_attention_adjoint, large_score_inputs, exercise="self_attention_adjoint"))
### BEGIN HIDDEN TESTS
print(checks.check_function(SA_adjoint, fa.self_attention_adjoint, lambda r: checks.make_quadratic_inputs(r, batch=3, n=4, d=2)[:2], exercise="self_attention_adjoint", seeds=(13,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The feature gradient (eq. 9, 5 points)
#
# With $G = \sigma(Z\theta Z^T) - C$ and $d\ell = \langle G, dN\rangle$, and
# $dN = dZ\,\theta Z^T + Z\theta\,dZ^T$, derive $\nabla_Z\ell$ and write `grad_Z(Z, theta, C)`
# with your `SA` and `SA_adjoint` (theta is symmetric).

# %% nbgrader={"grade": false, "grade_id": "grad_Z", "locked": false, "schema_version": 3, "solution": true, "task": false}
def grad_Z(Z, theta, C):
    """Feature gradient of the quadratic model (eq. 9): SA + SA* - (C + C^T) Z theta. Returns (..., n, d)."""
    ### BEGIN SOLUTION
    label_term = (C + C.swapaxes(-1, -2)) @ Z @ theta
    return SA(Z, theta) + SA_adjoint(Z, theta) - label_term
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_grad_Z", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(grad_Z, fa.quadratic_grad_Z, checks.make_quadratic_inputs, exercise="quadratic_grad_Z",
                            uses={"SA": (SA, "self_attention"), "SA_adjoint": (SA_adjoint, "self_attention_adjoint")}))
### BEGIN HIDDEN TESTS
print(checks.check_function(grad_Z, fa.quadratic_grad_Z, lambda r: checks.make_quadratic_inputs(r, batch=1, n=7, d=3), exercise="quadratic_grad_Z", seeds=(14,)))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_grad_Z_finite_differences", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_gradient(grad_Z, fa.quadratic_loss, checks.make_quadratic_inputs, wrt=0,
                            reference_grad=fa.quadratic_grad_Z, exercise="quadratic_grad_Z", seeds=(1,)))

# %% [markdown]
# **Question 2 (written, 2 points).** The linear model's gradient had one attention term;
# this one has two, SA and SA*. Where does SA* come from, and what does the transposed
# attention matrix say about which tokens a token's gradient collects from?

# %% [markdown] nbgrader={"grade": true, "grade_id": "why_SA_adjoint", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# $Z$ enters the logits twice, as the queries ($dZ\,\theta Z^T$) and as the keys
# ($Z\theta\,dZ^T$). The query path gives $G Z\theta$ and the key path gives
# $G^T Z\theta$; their softmax parts are SA and SA*. In SA* row $j$ sums over the *queries*
# $i$ weighted by how much $i$ attends to $j$ (a column of the attention matrix): a token
# collects from the tokens that attend to it, and these weights need not sum to 1.

# %% [markdown]
# ## 3. The gradient in the factor $\phi$ (3 points)
#
# Training keeps $\theta = \phi\phi^T$ positive semi-definite by training the lower-triangular
# $\phi$. With $A = \sum_{\text{sequences}} Z^T G Z$ ($d \times d$), the gradient is
# $\nabla_\phi\ell = \mathrm{tril}\big((A + A^T)\phi\big)$: only the lower triangle of $\phi$
# is a parameter. Write `grad_phi(Z, phi, C)`, summing over all leading (batch) axes.

# %% nbgrader={"grade": false, "grade_id": "grad_phi", "locked": false, "schema_version": 3, "solution": true, "task": false}
def grad_phi(Z, phi, C):
    """Gradient of the quadratic model's cross-entropy in the lower-triangular phi (d x d)."""
    ### BEGIN SOLUTION
    theta = phi @ phi.T
    Zt = Z.swapaxes(-1, -2)
    resid = fa.softmax(Z @ theta @ Zt) - C
    A = (Zt @ resid @ Z).reshape(-1, Z.shape[-1], Z.shape[-1]).sum(axis=0)
    return np.tril((A + A.T) @ phi)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_grad_phi", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def loss_in_phi(Z, phi, C):  # only the lower triangle of phi is a parameter
    L = np.tril(phi)
    return fa.quadratic_loss(Z, L @ L.T, C)


print(checks.check_function(grad_phi, fa.quadratic_grad_phi, checks.make_quadratic_phi_inputs, exercise="quadratic_grad_phi"))
print(checks.check_gradient(grad_phi, loss_in_phi, checks.make_quadratic_phi_inputs, wrt=1,
                            reference_grad=fa.quadratic_grad_phi, exercise="quadratic_grad_phi", seeds=(2,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(grad_phi, fa.quadratic_grad_phi, lambda r: checks.make_quadratic_phi_inputs(r, batch=4, n=3, d=4), exercise="quadratic_grad_phi", seeds=(15,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Recover a hidden $\theta^*$ (4 points)
#
# The package's retrieval task draws sequences of $n = 8$ random tokens in $d = 4$
# dimensions and labels each token with the token it scores highest under a hidden SPD
# matrix: $y_{bi} = \arg\max_j (Z_b\theta^* Z_b^T)_{ij}$. Fit $\phi$ by minimising the
# mean cross-entropy with your `grad_phi` and Adam (`fa.Adam(params, lr)` updates the
# arrays of `params` in place from `opt.step(grads)`), starting from $\phi = I/2$.
# Write `recover_theta(X, y, steps, lr)` returning the fitted $\theta = \phi\phi^T$.

# %%
X, y, theta_star = make_retrieval(num_seqs=256, tokens=8, d=4, seed=0)


def cosine(A, B):
    """Cosine of the angle between two matrices (Frobenius inner product)."""
    return float((A * B).sum() / np.sqrt((A * A).sum() * (B * B).sum()))


# %% nbgrader={"grade": false, "grade_id": "recover_theta", "locked": false, "schema_version": 3, "solution": true, "task": false}
def recover_theta(X, y, steps=300, lr=0.05):
    """Fit theta = phi phi^T to the retrieval labels y by Adam on the mean cross-entropy."""
    ### BEGIN SOLUTION
    B, n, d = X.shape
    C = np.eye(n, dtype=X.dtype)[y]
    params = {"phi": (0.5 * np.eye(d)).astype(X.dtype)}
    opt = fa.Adam(params, lr=lr)
    for _ in range(steps):
        opt.step({"phi": grad_phi(X, params["phi"], C) / (B * n)})
    return params["phi"] @ params["phi"].T
    ### END SOLUTION


theta_fit = recover_theta(X, y)
accuracy = float((fa.quadratic_logits(X, theta_fit).argmax(axis=-1) == y).mean())
print(f"cosine(theta, theta*) = {cosine(theta_fit, theta_star):.4f}, retrieval accuracy {accuracy:.3f}")

# %% nbgrader={"grade": true, "grade_id": "test_recover_theta", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
assert theta_fit.shape == (4, 4) and theta_fit.dtype == np.float32
assert np.allclose(theta_fit, theta_fit.T, atol=1e-6), "theta = phi phi^T is symmetric"
assert accuracy > 0.95, f"retrieval accuracy {accuracy:.3f}: expected above 0.95"
assert cosine(theta_fit, theta_star) > 0.99, "theta should point the way theta* does"
### BEGIN HIDDEN TESTS
X2, y2, star2 = make_retrieval(num_seqs=128, tokens=6, d=3, seed=3)
assert cosine(recover_theta(X2, y2), star2) > 0.98
### END HIDDEN TESTS

# %% [markdown]
# **Question 4 (written, 2 points).** The test compares the *direction* of $\theta$ with
# that of $\theta^*$ (a cosine), not the matrices themselves. Why can the labels never
# determine the scale of $\theta^*$, and what happens to $|\theta|$ if you keep training?

# %% [markdown] nbgrader={"grade": true, "grade_id": "scale_of_theta", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# The labels are argmaxes of $Z\theta^* Z^T$, and $\arg\max$ is unchanged when $\theta^*$ is
# multiplied by any $c > 0$: every $c\,\theta^*$ produces the same labels, so only the
# direction is identifiable. The data are separable by construction, so the cross-entropy
# keeps falling as the scores grow: with more training $|\theta|$ grows without bound
# (the softmax sharpens towards the argmax) while its direction settles.
