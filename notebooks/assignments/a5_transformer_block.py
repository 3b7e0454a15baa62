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
# # Assignment 5: from the flow to a transformer block
#
# The block of assignment 2 adds $hC\theta$, a step driven by the **labels** $C$, which a
# network does not have at test time. Put a small MLP in their place: the **MLP oracle**
#
# $$\hat C(Z) = \sigma\big(\mathrm{gelu}(ZW_1^T + b_1)\,W_2^T + b_2\big),$$
#
# with $W_1 \in \mathbb{R}^{k\times d}$, $b_1 \in \mathbb{R}^k$, $W_2 \in \mathbb{R}^{m\times k}$,
# $b_2 \in \mathbb{R}^m$ and a softmax per row: a distribution over the $m$ classes for each
# row of $Z$. One Lie step of the split flow, with an Euler step for the attention sub-flow A
# and the label sub-flow B driven by the oracle, is then
#
# $$Z_{1/2} = Z - h\,\mathrm{CA}(Z,\theta), \qquad Z_{\text{out}} = Z_{1/2} + h\,\hat C(Z_{1/2})\,\theta:$$
#
# an attention sub-layer and an MLP sub-layer, each with a residual connection: the two lines
# of a GPT-2 block, `x = x + attn(x)` and `x = x + mlp(x)`. In this assignment you write, in
# plain NumPy:
#
# 1. the activation GELU (tanh form) and its derivative,
# 2. the MLP oracle's forward pass and its hand-derived backward pass,
# 3. the Lie block with the oracle inside, and its backward pass, checked against central
#    finite differences,
#
# then train a small network of such blocks and compare it with the MLP alone.
#
# As before: plain NumPy, keep float32 float32, never change an input in place, and read the
# test messages. You may use `fa.softmax`, `fa.logsumexp`, `fa.softmax_vjp` and
# `fa.cross_attention` (assignments 1 and 2), but not the package's MLP (`fa.gelu`,
# `fa.mlp_oracle`, ...) or blocks, which the tests use as the reference.

# %%
import numpy as np

import flowattn_np as fa
from flowattn_np import checks, make_blobs

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. GELU and its derivative (3 points)
#
# GPT-2 and BERT use the tanh approximation of GELU,
#
# $$\mathrm{gelu}(x) = \tfrac{x}{2}\big(1 + \tanh u\big), \qquad u = \sqrt{2/\pi}\,\big(x + 0.044715\,x^3\big).$$
#
# Write `gelu(x)` and its derivative `gelu_grad(x)`, entry by entry, for an array of any
# shape. (Use Python floats for the constants, so that float32 stays float32.)

# %% nbgrader={"grade": false, "grade_id": "gelu", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gelu(x):
    """GELU, tanh form, entry by entry. Same shape and dtype as x."""
    ### BEGIN SOLUTION
    u = 0.7978845608028654 * (x + 0.044715 * x ** 3)
    return 0.5 * x * (1.0 + np.tanh(u))
    ### END SOLUTION


def gelu_grad(x):
    """The derivative gelu'(x), entry by entry. Same shape and dtype as x."""
    ### BEGIN SOLUTION
    t = np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))
    du = 0.7978845608028654 * (1.0 + 3 * 0.044715 * x * x)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_gelu", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
print(checks.check_function(gelu, fa.gelu, checks.make_activation_inputs, exercise="gelu"))

# %% nbgrader={"grade": true, "grade_id": "test_gelu_grad", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def gelu_sum(x):  # its gradient is gelu'(x), entry by entry
    return fa.gelu(x).sum()


print(checks.check_function(gelu_grad, fa.gelu_grad, checks.make_activation_inputs, exercise="gelu_grad"))
print(checks.check_gradient(gelu_grad, gelu_sum, checks.make_activation_inputs, reference_grad=fa.gelu_grad,
                            exercise="gelu_grad", seeds=(3,)))
### BEGIN HIDDEN TESTS
print(checks.check_function(gelu_grad, fa.gelu_grad, lambda r: (r.standard_normal((2, 3, 5)),), exercise="gelu_grad", seeds=(51,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The MLP oracle (9 points)
#
# Write `oracle_forward(Z, W1, b1, W2, b2)`: it returns $\hat C(Z)$ ($n \times m$) and a
# `cache` (any tuple you like) holding what the backward pass needs, with
# $A = ZW_1^T + b_1$, $H = \mathrm{gelu}(A)$, $Y = HW_2^T + b_2$, $\hat C = \sigma(Y)$
# (your `gelu`; `fa.softmax` for $\sigma$).

# %% nbgrader={"grade": false, "grade_id": "oracle_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def oracle_forward(Z, W1, b1, W2, b2):
    """The MLP oracle sigma(gelu(Z W1^T + b1) W2^T + b2). Returns (C_hat (n, m), cache)."""
    ### BEGIN SOLUTION
    A = Z @ W1.T + b1
    H = gelu(A)
    C_hat = fa.softmax(H @ W2.T + b2)
    return C_hat, (Z, W1, W2, A, H, C_hat)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_oracle_forward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def oracle_only(Z, W1, b1, W2, b2):
    return oracle_forward(Z, W1, b1, W2, b2)[0]


print(checks.check_function(oracle_only, checks.reference_mlp_oracle, checks.make_mlp_inputs, exercise="mlp_oracle",
                            uses={"gelu": gelu}))
# logits of a few hundred: the softmax must stay finite
print(checks.check_function(oracle_only, checks.reference_mlp_oracle, lambda r: checks.make_mlp_inputs(r, scale=300.0),
                            exercise="mlp_oracle"))
### BEGIN HIDDEN TESTS
print(checks.check_function(oracle_only, checks.reference_mlp_oracle, lambda r: checks.make_mlp_inputs(r, n=8, d=5, k=3, m=6), exercise="mlp_oracle", seeds=(52,)))
### END HIDDEN TESTS

# %% [markdown]
# Given the upstream gradient $\bar C = \partial L/\partial \hat C$ of some loss $L$, derive
# the backward pass from $dL = \langle \bar C, d\hat C\rangle$, one line of the forward pass
# at a time, from the last to the first:
#
# * through the softmax: $\bar Y$ from $\bar C$ (`fa.softmax_vjp(C_hat, C_bar)` computes it),
# * through $Y = HW_2^T + b_2$: $\bar W_2$, $\bar b_2$ and $\bar H$,
# * through $H = \mathrm{gelu}(A)$: $\bar A$,
# * through $A = ZW_1^T + b_1$: $\bar W_1$, $\bar b_1$ and $\bar Z$.
#
# A bias is added to every row, so its gradient sums over the rows. Write
# `oracle_backward(C_bar, cache)` returning `(Z_bar, W1_bar, b1_bar, W2_bar, b2_bar)`, each
# of the shape of what it is the gradient of.

# %% nbgrader={"grade": false, "grade_id": "oracle_backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def oracle_backward(C_bar, cache):
    """VJP of oracle_forward for the upstream C_bar: (Z_bar, W1_bar, b1_bar, W2_bar, b2_bar)."""
    ### BEGIN SOLUTION
    Z, W1, W2, A, H, C_hat = cache
    Y_bar = fa.softmax_vjp(C_hat, C_bar)
    A_bar = (Y_bar @ W2) * gelu_grad(A)
    return A_bar @ W1, A_bar.T @ Z, A_bar.sum(axis=0), Y_bar.T @ H, Y_bar.sum(axis=0)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_oracle_backward_Z", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def student_oracle_vjp(C_bar, Z, W1, b1, W2, b2):
    return oracle_backward(C_bar, oracle_forward(Z, W1, b1, W2, b2)[1])


def oracle_pairing(C_bar, Z, W1, b1, W2, b2):  # L = <C_bar, C_hat(Z)>: its gradients are the VJP
    return (C_bar * checks.reference_mlp_oracle(Z, W1, b1, W2, b2)).sum()


uses = {"gelu_grad": gelu_grad, "oracle_forward": (oracle_only, "mlp_oracle")}
print(checks.check_function(student_oracle_vjp, checks.reference_mlp_oracle_vjp, checks.make_mlp_vjp_inputs,
                            exercise="mlp_oracle_vjp", output=0, uses=uses))
print(checks.check_gradient(student_oracle_vjp, oracle_pairing, checks.make_mlp_vjp_inputs, wrt=1, output=0,
                            reference_grad=checks.reference_mlp_oracle_vjp, exercise="mlp_oracle_vjp", seeds=(3,)))

# %% nbgrader={"grade": true, "grade_id": "test_oracle_backward_weights", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
for output in (1, 2, 3, 4):  # W1_bar, b1_bar, W2_bar, b2_bar
    print(checks.check_function(student_oracle_vjp, checks.reference_mlp_oracle_vjp, checks.make_mlp_vjp_inputs,
                                exercise="mlp_oracle_vjp", output=output, uses=uses if output == 1 else None))
print(checks.check_gradient(student_oracle_vjp, oracle_pairing, checks.make_mlp_vjp_inputs, wrt=2, output=1,
                            reference_grad=checks.reference_mlp_oracle_vjp, exercise="mlp_oracle_vjp", seeds=(4,)))
### BEGIN HIDDEN TESTS
for output, wrt in ((2, 3), (3, 4), (4, 5)):
    print(checks.check_gradient(student_oracle_vjp, oracle_pairing, lambda r: checks.make_mlp_vjp_inputs(r, n=7, d=2, k=5, m=3), wrt=wrt, output=output, reference_grad=checks.reference_mlp_oracle_vjp, exercise="mlp_oracle_vjp", seeds=(53,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The block (9 points)
#
# Write `block_forward(Z, theta, h, W1, b1, W2, b2)`: one Lie step with the oracle inside,
#
# $$Z_{1/2} = Z - h\,\sigma(Z\theta^T)\,\theta, \qquad Z_{\text{out}} = Z_{1/2} + h\,\hat C(Z_{1/2})\,\theta,$$
#
# returning `(Z_out, cache)` (use your `oracle_forward`). `theta` is $m \times d$, `h` a
# 0-d array.

# %% nbgrader={"grade": false, "grade_id": "block_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_forward(Z, theta, h, W1, b1, W2, b2):
    """Lie block: Z_half = Z - h CA(Z, theta), Z_out = Z_half + h C_hat(Z_half) theta. Returns (Z_out, cache)."""
    ### BEGIN SOLUTION
    P = fa.softmax(Z @ theta.T)
    Z_half = Z - h * (P @ theta)
    C_hat, oracle_cache = oracle_forward(Z_half, W1, b1, W2, b2)
    Z_out = Z_half + h * (C_hat @ theta)
    return Z_out, (Z, theta, h, P, C_hat, oracle_cache)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_block_forward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def forward_only(Z, theta, h, W1, b1, W2, b2):
    return block_forward(Z, theta, h, W1, b1, W2, b2)[0]


print(checks.check_function(forward_only, checks.reference_mlp_block, checks.make_mlp_block_inputs, exercise="mlp_block",
                            uses={"oracle_forward": (oracle_only, "mlp_oracle")}))
### BEGIN HIDDEN TESTS
print(checks.check_function(forward_only, checks.reference_mlp_block, lambda r: checks.make_mlp_block_inputs(r, n=7, d=4, k=3, m=2), exercise="mlp_block", seeds=(54,)))
### END HIDDEN TESTS

# %% [markdown]
# The backward pass, for the upstream gradient $\bar Z = \partial L/\partial Z_{\text{out}}$:
# $\hat C$ depends on $Z_{1/2}$, so the gradient $U$ that reaches $Z_{1/2}$ is $\bar Z$
# (the residual) **plus** the oracle's $\bar Z$ for $\bar C = h\,\bar Z\theta^T$; then the
# attention sub-step is the block of assignment 2 with $C = 0$, for the upstream $U$.
# $\theta$ enters three times (the oracle's values $\hat C\theta$, the attention's values
# and its keys), and $h$ twice. Write `block_backward(Z_bar, cache)` returning
# `(Z_bar_in, theta_bar, h_bar, W1_bar, b1_bar, W2_bar, b2_bar)` (use your
# `oracle_backward`).

# %% nbgrader={"grade": false, "grade_id": "block_backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_backward(Z_bar, cache):
    """VJP of block_forward: (Z_bar_in, theta_bar, h_bar, W1_bar, b1_bar, W2_bar, b2_bar)."""
    ### BEGIN SOLUTION
    Z, theta, h, P, C_hat, oracle_cache = cache
    Z_half_bar, W1_bar, b1_bar, W2_bar, b2_bar = oracle_backward(h * (Z_bar @ theta.T), oracle_cache)
    U = Z_bar + Z_half_bar
    S_bar = fa.softmax_vjp(P, -h * (U @ theta.T))
    Z_bar_in = U + S_bar @ theta
    theta_bar = h * (C_hat.T @ Z_bar) - h * (P.T @ U) + S_bar.T @ Z
    h_bar = (Z_bar * (C_hat @ theta)).sum() - (U * (P @ theta)).sum()
    return Z_bar_in, theta_bar, h_bar, W1_bar, b1_bar, W2_bar, b2_bar
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_block_backward_Z", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def student_block_vjp(Z_bar, Z, theta, h, W1, b1, W2, b2):
    return block_backward(Z_bar, block_forward(Z, theta, h, W1, b1, W2, b2)[1])


def block_pairing(Z_bar, Z, theta, h, W1, b1, W2, b2):  # L = <Z_bar, Z_out>: its gradients are the VJP
    return (Z_bar * checks.reference_mlp_block(Z, theta, h, W1, b1, W2, b2)).sum()


# against central differences in float64, and the reference in float32
uses = {"oracle_backward": (student_oracle_vjp, "mlp_oracle_vjp"), "block_forward": (forward_only, "mlp_block")}
print(checks.check_gradient(student_block_vjp, block_pairing, checks.make_mlp_block_vjp_inputs, wrt=1, output=0,
                            reference_grad=checks.reference_mlp_block_vjp, exercise="mlp_block_vjp", uses=uses))

# %% nbgrader={"grade": true, "grade_id": "test_block_backward_params", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# theta_bar, h_bar, W1_bar, b1_bar, W2_bar, b2_bar: the inputs 2 to 7 of block_pairing
for wrt in range(2, 8):
    print(checks.check_gradient(student_block_vjp, block_pairing, checks.make_mlp_block_vjp_inputs, wrt=wrt,
                                output=wrt - 1, reference_grad=checks.reference_mlp_block_vjp,
                                exercise="mlp_block_vjp", seeds=(wrt,), uses=uses if wrt == 2 else None))
### BEGIN HIDDEN TESTS
for output in range(7):
    print(checks.check_function(student_block_vjp, checks.reference_mlp_block_vjp, lambda r: checks.make_mlp_block_vjp_inputs(r, n=6, d=2, k=4, m=3), exercise="mlp_block_vjp", output=output, seeds=(55,)))
### END HIDDEN TESTS

# %% [markdown]
# ## 4. A network of blocks against the MLP alone (3 points)
#
# Stack $L$ blocks with **tied** weights (one $\theta$, one $h$ and one oracle for every
# block) and read the classes off with the head $Z_L\theta^T$. No block sees a label: the
# oracle supplies the targets. The cell below writes the network's mean cross-entropy and
# its gradients with your `block_forward` and `block_backward`, trains it with Adam on four
# overlapping Gaussian clusters in the plane, and trains **the same MLP alone**,
# $\sigma(\mathrm{gelu}(XW_1^T + b_1)W_2^T + b_2)$, the same way (with the package's MLP).
# Run it and look at the numbers.

# %%
X, y = make_blobs(n=600, classes=4, spread=1.0, seed=0)
X_val, y_val = make_blobs(n=2000, classes=4, spread=1.0, seed=1)
MLP = ("W1", "b1", "W2", "b2")


def network_loss_and_grads(X, y, params, L):
    """Mean cross-entropy of Z_L theta^T after L tied blocks with the MLP oracle, and its gradients."""
    theta, C = params["theta"], np.eye(params["theta"].shape[0], dtype=X.dtype)[y]
    Z, caches = X, []
    for _ in range(L):
        Z, cache = block_forward(Z, theta, params["h"], *(params[k] for k in MLP))
        caches.append(cache)
    logits = Z @ theta.T
    loss = (fa.logsumexp(logits) - (C * logits).sum(axis=1)).mean()
    G = (fa.softmax(logits) - C) / X.shape[0]
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    grads["theta"] += G.T @ Z
    Z_bar = G @ theta
    for cache in reversed(caches):
        Z_bar, *block_grads = block_backward(Z_bar, cache)
        for name, g in zip(("theta", "h") + MLP, block_grads):
            grads[name] += g
    return loss, grads


def mlp_alone_loss_and_grads(X, y, params):
    """Mean cross-entropy of the MLP alone, softmax(MLP(X)), and its gradients (the package's MLP)."""
    logits, cache = fa.mlp_logits(X, *(params[k] for k in MLP))
    C = np.eye(logits.shape[1], dtype=X.dtype)[y]
    loss = (fa.logsumexp(logits) - (C * logits).sum(axis=1)).mean()
    return loss, fa.mlp_logits_vjp((fa.softmax(logits) - C) / X.shape[0], cache)[1]


def init(seed, d=2, k=16, m=4, blocks=True, dtype=X.dtype):
    r = np.random.default_rng(seed)
    params = {"W1": r.standard_normal((k, d)) / d ** 0.5, "b1": np.zeros(k),
              "W2": r.standard_normal((m, k)) / k ** 0.5, "b2": np.zeros(m)}
    if blocks:
        params.update(theta=0.5 * r.standard_normal((m, d)), h=np.asarray(0.1))
    return {name: value.astype(dtype) for name, value in params.items()}


def train(loss_and_grads, params, steps=150, lr=0.03):
    opt = fa.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(params)
        opt.step(grads)
        losses.append(float(loss))
    return losses


def network_accuracy(params, L, X, y):
    Z = X
    for _ in range(L):
        Z = block_forward(Z, params["theta"], params["h"], *(params[k] for k in MLP))[0]
    return float(((Z @ params["theta"].T).argmax(axis=1) == y).mean())


L = 2
net = init(0)
net_losses = train(lambda p: network_loss_and_grads(X, y, p, L), net)
alone = init(0, blocks=False)
alone_losses = train(lambda p: mlp_alone_loss_and_grads(X, y, p), alone)
net_acc = network_accuracy(net, L, X_val, y_val)
alone_acc = float((fa.mlp_logits(X_val, *(alone[k] for k in MLP))[0].argmax(axis=1) == y_val).mean())
print(f"network of {L} blocks: training loss {net_losses[0]:.3f} -> {net_losses[-1]:.3f}, "
      f"validation accuracy {net_acc:.3f}, learned h = {float(net['h']):+.3f}")
print(f"MLP alone:           training loss {alone_losses[0]:.3f} -> {alone_losses[-1]:.3f}, "
      f"validation accuracy {alone_acc:.3f}")

# %% nbgrader={"grade": true, "grade_id": "test_training", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# points for training only with gradients that agree with central differences of the loss
def make_network_inputs(r):
    Xs, ys = make_blobs(n=12, classes=4, spread=1.0, seed=int(r.integers(1000)), dtype="float64")
    p = init(int(r.integers(1000)), k=5, dtype="float64")
    return (Xs, ys, p["theta"], np.asarray(0.4), *(p[k] for k in MLP))


def student_network_grads(X, y, theta, h, W1, b1, W2, b2):
    grads = network_loss_and_grads(X, y, {"theta": theta, "h": h, "W1": W1, "b1": b1, "W2": W2, "b2": b2}, 2)[1]
    return tuple(grads[name] for name in ("theta", "h") + MLP)


def reference_network_loss(X, y, theta, h, W1, b1, W2, b2):
    Z = checks.reference_mlp_block(checks.reference_mlp_block(X, theta, h, W1, b1, W2, b2), theta, h, W1, b1, W2, b2)
    C = np.eye(theta.shape[0])[y]
    return (fa.logsumexp(Z @ theta.T) - (C * (Z @ theta.T)).sum(axis=1)).mean()


for wrt in range(2, 8):  # theta, h, W1, b1, W2, b2
    checks.check_gradient(student_network_grads, reference_network_loss, make_network_inputs, wrt=wrt, output=wrt - 2,
                          dtypes=("float64",), seeds=(6,), exercise="mlp_network",
                          uses={"block_backward": (student_block_vjp, "mlp_block_vjp")} if wrt == 2 else None)
assert net_losses[-1] < 0.5 * net_losses[0], "the training loss should at least halve"
assert net_acc > 0.8, f"validation accuracy {net_acc:.3f}: expected above 0.8"
assert net["theta"].dtype == np.float32 and net["h"].dtype == np.float32
### BEGIN HIDDEN TESTS
assert net_acc > alone_acc - 0.05, "the network should classify about as well as the MLP it contains"
### END HIDDEN TESTS

# %% [markdown]
# **Question 4 (written, 4 points).** Compare the network of blocks with the MLP alone:
# (a) count the parameters of each and compare their validation accuracies; (b) the oracle
# inside every block is itself a classifier of the features: what does each MLP sub-layer
# do to the features (which rows of $\theta$ does $h\,\hat C\theta$ add?), and what does
# the attention sub-layer add that the MLP alone does not have? (c) What experiment would
# tell whether the attention steps help beyond the MLP they contain?

# %% [markdown] nbgrader={"grade": true, "grade_id": "compare_with_mlp", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# (a) The MLP alone has $kd + k + mk + m = 32 + 16 + 64 + 4 = 116$ parameters; the network
# adds $\theta$ ($md = 8$) and $h$: 125. On these overlapping clusters both reach about the
# same validation accuracy (the Bayes error of the clusters bounds both).
# (b) $h\,\hat C(Z_{1/2})\theta$ adds to each row a mixture of the class rows of $\theta$
# weighted by the oracle's probabilities: it pulls the features towards the classes the
# oracle names, right or wrong, so the head reads off (a sharpened version of) the oracle's
# decision. The attention sub-layer $-h\,\sigma(Z\theta^T)\theta$ depends on no learned
# weights beyond $\theta$: it moves each row away from (or, with $h < 0$, towards) the class
# rows it already attends to; it adds no new capacity, only a data-dependent step in the
# head's own geometry. A label-free block is at most as good as its oracle.
# (c) Train the same MLP alone and the network on the same data and budget over several
# seeds, widths and depths (and noisy inputs), and compare the accuracies with their spread:
# a gain is real only if it exceeds the seed-to-seed variation.
