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
# # Assignment 2: the cross-attention block
#
# In assignment 1 you found that the feature gradient of the linear model's cross-entropy
# is $\nabla_Z\ell = \mathrm{CA}(Z,\theta) - C\theta$. Walking $Z$ downhill gives the
# gradient flow $\dot Z = C\theta - \mathrm{CA}(Z,\theta)$ (eq. 6). Split it into the
# attention sub-flow A, $\dot Z = -\mathrm{CA}(Z,\theta)$, and the label sub-flow B,
# $\dot Z = C\theta$, and take one Euler step of each (Lie splitting): that is the block of
# eq. (8),
#
# $$Z_{1/2} = Z - h\,\mathrm{CA}(Z,\theta), \qquad Z_{\text{out}} = Z_{1/2} + h\,C\theta,$$
#
# a cross-attention layer with a residual connection followed by a linear map with a
# residual connection. You will write its forward pass, derive and write its backward pass
# by hand (for $Z$, $\theta$ and the step $h$), stack it into a small network, and train
# that network on a problem the package generates.
#
# As in assignment 1: plain NumPy, keep float32 float32, never change an input in place,
# and read the test messages: they name the mistake. You may use `fa.softmax`,
# `fa.logsumexp` and `fa.softmax_vjp` (you wrote the first two in assignment 1), but not
# the package's blocks or networks, which the tests use as the reference.

# %%
import numpy as np

import flowattn_np as fa
from flowattn_np import checks, make_blobs

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. Forward (3 points)
#
# Write `block_forward(Z, theta, C, h)`: it returns $Z_{\text{out}}$ of eq. (8) and a
# `cache` (any tuple you like) holding what the backward pass will need. `h` is a Python
# float (or a 0-d array). Shapes: `Z` $n \times d$, `theta` $m \times d$, `C` $n \times m$.

# %% nbgrader={"grade": false, "grade_id": "block_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_forward(Z, theta, C, h):
    """One block of eq. (8): Z - h CA(Z, theta) + h C theta. Returns (Z_out, cache)."""
    ### BEGIN SOLUTION
    P = fa.softmax(Z @ theta.T)
    R = C - P
    Z_out = Z + h * (R @ theta)
    cache = (Z, theta, P, R, h)
    return Z_out, cache
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_block_forward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def forward_only(Z, theta, C, h):
    return block_forward(Z, theta, C, h)[0]


print(checks.check_function(forward_only, checks.reference_ca_block, checks.make_block_inputs, exercise="ca_block"))
### BEGIN HIDDEN TESTS
print(checks.check_function(forward_only, checks.reference_ca_block, lambda r: checks.make_block_inputs(r, n=8, m=3, d=5), exercise="ca_block", seeds=(5, 6)))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Backward (9 points)
#
# Given the gradient $\bar Z = \partial L/\partial Z_{\text{out}}$ of some downstream loss
# $L$ (the upstream gradient), the backward pass returns $\bar Z_{\text{in}} = \partial L/\partial Z$,
# $\bar\theta$ and $\bar h$. Write
# the block as $Z_{\text{out}} = Z + h R\theta$ with $R = C - P$, $P = \sigma(S)$,
# $S = Z\theta^T$. Derive, from $dL = \langle \bar Z, dZ_{\text{out}}\rangle$:
#
# * $\bar h = \langle \bar Z, R\theta\rangle$,
# * $\bar P = -h\,\bar Z\theta^T$ and the softmax VJP
#   $\bar S = P \odot (\bar P - \mathrm{rowsum}(P\odot\bar P))$ (this is `fa.softmax_vjp(P, P_bar)`),
# * $\bar Z_{\text{in}}$: the residual path plus the path through the attention weights,
# * $\bar\theta$: $\theta$ is both the **values** (in $R\theta$) and the **keys** (in $S$).
#
# Write `block_backward(Z_bar, cache)` returning `(Z_bar_in, theta_bar, h_bar)` (the names the
# test messages use).

# %% nbgrader={"grade": false, "grade_id": "block_backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_backward(Z_bar, cache):
    """VJP of block_forward: (Z_bar_in, theta_bar, h_bar) for the upstream gradient Z_bar."""
    ### BEGIN SOLUTION
    Z, theta, P, R, h = cache
    G = Z_bar @ theta.T
    h_bar = (G * R).sum()
    S_bar = fa.softmax_vjp(P, -h * G)
    Z_bar_in = Z_bar + S_bar @ theta
    theta_bar = h * (R.T @ Z_bar) + S_bar.T @ Z
    return Z_bar_in, theta_bar, h_bar
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_block_backward_Z", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def student_vjp(Z_bar, Z, theta, C, h):
    return block_backward(Z_bar, block_forward(Z, theta, C, h)[1])


def pairing(Z_bar, Z, theta, C, h):  # L = <Z_bar, Z_out>: its gradients are the VJP
    return (Z_bar * checks.reference_ca_block(Z, theta, C, h)).sum()


print(checks.check_function(student_vjp, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                            exercise="ca_block_vjp", output=0, uses={"block_forward": (forward_only, "ca_block")}))
print(checks.check_gradient(student_vjp, pairing, checks.make_block_vjp_inputs, wrt=1, output=0,
                            reference_grad=checks.reference_ca_block_vjp, exercise="ca_block_vjp", seeds=(3,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(student_vjp, checks.reference_ca_block_vjp, lambda r: checks.make_block_vjp_inputs(r, n=7, m=2, d=4), exercise="ca_block_vjp", output=0, seeds=(21,)))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_block_backward_theta", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(student_vjp, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                            exercise="ca_block_vjp", output=1, uses={"block_forward": (forward_only, "ca_block")}))
print(checks.check_gradient(student_vjp, pairing, checks.make_block_vjp_inputs, wrt=2, output=1,
                            reference_grad=checks.reference_ca_block_vjp, exercise="ca_block_vjp", seeds=(4,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(student_vjp, checks.reference_ca_block_vjp, lambda r: checks.make_block_vjp_inputs(r, n=3, m=5, d=2), exercise="ca_block_vjp", output=1, seeds=(22,)))
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_block_backward_h", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(student_vjp, checks.reference_ca_block_vjp, checks.make_block_vjp_inputs,
                            exercise="ca_block_vjp", output=2, uses={"block_forward": (forward_only, "ca_block")}))
### BEGIN HIDDEN TESTS
print(checks.check_gradient(lambda Zb, Z, th, C, h: student_vjp(Zb, Z, th, C, float(h))[2], lambda Zb, Z, th, C, h: pairing(Zb, Z, th, C, float(h)), lambda r: (lambda a: a[:4] + (np.array(a[4]),))(checks.make_block_vjp_inputs(r)), wrt=4, dtypes=("float64",), seeds=(23,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. A small network (4 points)
#
# Stack $L$ blocks with **tied** weights (one $\theta$ for every block and the head) and
# read the classes off with the multinomial-regression head:
#
# $$Z_0 = X,\qquad Z_l = Z_{l-1} + h\,(0 - \sigma(Z_{l-1}\theta^T))\,\theta\ (l = 1..L),\qquad
# \text{logits} = Z_L\theta^T,\qquad \text{loss} = \tfrac1n\,\ell.$$
#
# Inside the blocks $C = 0$: at test time we do not know the labels, so the label sub-flow
# B is switched off and each block is attention only (a *label-free* network). The loss is
# the batch **mean** of the cross-entropy of the true labels $y$. Write
# `network_loss_and_grads(X, y, theta, h, L)` returning `(loss, theta_bar, h_bar)`, with
# your `block_forward` and `block_backward`. Remember that $\theta$ is tied.

# %% nbgrader={"grade": false, "grade_id": "network", "locked": false, "schema_version": 3, "solution": true, "task": false}
def network_loss_and_grads(X, y, theta, h, L):
    """Mean cross-entropy of Z_L theta^T after L label-free blocks, and its gradients in theta and h."""
    ### BEGIN SOLUTION
    n, m = X.shape[0], theta.shape[0]
    C = np.eye(m, dtype=X.dtype)[y]
    no_labels = np.zeros_like(C)
    Z, caches = X, []
    for _ in range(L):
        Z, c = block_forward(Z, theta, no_labels, h)
        caches.append(c)
    logits = Z @ theta.T
    loss = (fa.logsumexp(logits) - (C * logits).sum(axis=1)).sum() / n
    G = (fa.softmax(logits) - C) / n
    theta_bar = G.T @ Z
    Z_bar = G @ theta
    h_bar = np.zeros((), dtype=X.dtype)
    for c in reversed(caches):
        Z_bar, th_bar, hb = block_backward(Z_bar, c)
        theta_bar = theta_bar + th_bar
        h_bar = h_bar + hb
    return loss, theta_bar, h_bar
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_network", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# the network uses your block: when one of its tests fails, the message says so
blocks = {"block_forward": (forward_only, "ca_block"), "block_backward": (student_vjp, "ca_block_vjp")}
print(checks.check_function(network_loss_and_grads, checks.reference_network, checks.make_network_inputs,
                            exercise="network", uses=blocks))


def make_large_network_inputs(r):  # features of a few hundred: logits far beyond the range of exp
    X, y, theta, h, L = checks.make_network_inputs(r)
    return 300.0 * X, y, theta, h, L


print(checks.check_function(network_loss_and_grads, checks.reference_network, make_large_network_inputs,
                            exercise="network", seeds=(1,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(network_loss_and_grads, checks.reference_network, lambda r: checks.make_network_inputs(r, n=9, m=4, d=3, L=3), exercise="network", seeds=(31,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Training it (3 points)
#
# The package generates four Gaussian clusters in the plane (`make_blobs`). The cell below
# trains your network ($L = 2$, $d = 2$, $m = 4$) with Adam on the full batch, starting
# from a small $h$, and compares it with plain multinomial regression ($L = 0$) trained the
# same way. It needs only your `network_loss_and_grads`; run it and look at the numbers.

# %%
X, y = make_blobs(n=600, classes=4, spread=0.8, seed=0)
X_val, y_val = make_blobs(n=400, classes=4, spread=0.8, seed=1)


def train(L, epochs=60, lr=0.05, seed=0):
    init = np.random.default_rng(seed)
    params = {"theta": (0.5 * init.standard_normal((4, 2))).astype(X.dtype), "h": np.asarray(0.1, X.dtype)}
    opt = fa.Adam(params, lr=lr)
    losses = []
    for _ in range(epochs):
        loss, theta_bar, h_bar = network_loss_and_grads(X, y, params["theta"], params["h"], L)
        opt.step({"theta": theta_bar, "h": np.asarray(h_bar, X.dtype)})
        losses.append(float(loss))
    return params, losses


def accuracy(params, L, X, y):
    Z = X
    for layer in range(L):
        Z = block_forward(Z, params["theta"], np.zeros((len(X), 4), X.dtype), params["h"])[0]
    return float(((Z @ params["theta"].T).argmax(axis=1) == y).mean())


params0, losses0 = train(L=0)
params2, losses2 = train(L=2)
acc0, acc2 = accuracy(params0, 0, X_val, y_val), accuracy(params2, 2, X_val, y_val)
print(f"L = 0: final training loss {losses0[-1]:.3f}, validation accuracy {acc0:.3f}")
print(f"L = 2: final training loss {losses2[-1]:.3f}, validation accuracy {acc2:.3f}, "
      f"learned h = {float(params2['h']):+.3f}")

# %% nbgrader={"grade": true, "grade_id": "test_training", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# points for training only with gradients that agree with central differences of the loss
def gradient_inputs(r):  # h as a 0-d array: finite differences need an array to perturb
    X, y, theta, h, L = checks.make_network_inputs(r)
    return X, y, theta, np.array(h), L


def network_loss(X, y, theta, h, L):
    return checks.reference_network(X, y, theta, h, L)[0]


for wrt, output in ((2, 1), (3, 2)):  # theta_bar, then h_bar
    print(checks.check_gradient(network_loss_and_grads, network_loss, gradient_inputs, wrt=wrt, output=output,
                                reference_grad=checks.reference_network, exercise="network", seeds=(5,),
                                uses=blocks if wrt == 2 else None))
assert losses2[-1] < 0.5 * losses2[0], "the training loss should at least halve"
assert acc2 > 0.85, f"validation accuracy {acc2:.3f}: expected above 0.85"
assert params2["theta"].dtype == np.float32 and np.asarray(params2["h"]).dtype == np.float32
### BEGIN HIDDEN TESTS
assert losses2[-1] < losses0[-1], "two attention blocks should fit better than none"
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Why is one Euler step a transformer block? (written, 4 points)
#
# **Question 5.** (a) Explain, term by term, why one Euler step of the split flow is a
# transformer block: which part is the attention layer (what are the queries, keys and
# values?), which part is the residual connection, and what plays the role of the
# feed-forward/linear layer? (b) Your trained network learned a step $h$: what is its sign,
# and what does a step of that sign do to the features compared with the gradient-descent
# step of the theory?

# %% [markdown] nbgrader={"grade": true, "grade_id": "why_a_block", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# (a) The A step $Z - h\,\sigma(Z\theta^T)\theta$ is cross-attention with queries $Z$ and
# keys = values = the class rows of $\theta$, scaled by $h$ and added to its input: the
# "$Z +$" is the residual (skip) connection, and it appears because an Euler step is
# $Z + h\,\dot Z$. The B step $Z_{1/2} + h\,C\theta$ is a linear map of the values by the
# targets $C$, again with a residual connection: the position-wise linear layer. Deeper
# networks are more steps of the same flow: depth is time, and tied weights are one
# $\theta$ for the whole trajectory.
# (b) The learned $h$ is negative here: the block then moves each feature *towards* the
# class rows that attend most (like a Hopfield retrieval step), sharpening the clusters
# instead of descending the log-sum-exp as the theory's positive step would.
