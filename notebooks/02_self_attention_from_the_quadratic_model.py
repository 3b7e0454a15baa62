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
# # 2. Self-attention from the quadratic model
#
# Replace the linear model by a quadratic one, $N = Z\theta Z^\top$: now every token scores
# every *other token*, and the targets say which token each token should pick. The
# gradient of the cross-entropy in the features becomes **self-attention plus its adjoint**
# (eq. 9 of Actor, Gruber & Cyr, arXiv 2509.04653). This notebook checks that formula,
# then trains $\theta = \phi\phi^\top$ on a synthetic retrieval task whose answer is a
# hidden matrix $\theta^\ast$, and shows that training recovers $\theta^\ast$ and turns the
# attention maps into the target maps.

# %%
import numpy as np
import matplotlib.pyplot as plt

import flowattn_np as fa
from flowattn_np import (
    BlockConfig, Network, NetworkConfig, make_retrieval, random_spd, SGD, Adam, Cosine,
    evaluate, fit,
)

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The quadratic model
#
# $Z \in \mathbb{R}^{n\times d}$ are $n$ tokens, $\theta = \phi\phi^\top$ is symmetric
# positive (semi-)definite with a lower-triangular factor $\phi$, and
# $N = Z\theta Z^\top \in \mathbb{R}^{n\times n}$: entry $(i, j)$ is how much token $i$
# likes token $j$. The targets $C$ are $n\times n$ (row $i$: which token $i$ should pick),
# and the loss is again the point-wise cross-entropy (3), $\ell = -\langle C, \log\sigma(Z\theta Z^\top)\rangle$.
# In transformer language $Q = K = V = Z\phi$ with output projection $\phi^\top$.

# %%
n, d = 6, 3
Z = rng.normal(size=(n, d))
phi = np.tril(rng.normal(size=(d, d)))
theta = fa.theta_from_phi(phi)                      # phi phi^T: symmetric
C = fa.one_hot(rng.integers(0, n, size=n), n)       # each token picks a token

N = fa.quadratic_logits(Z, theta)                   # Z theta Z^T, n x n
P = fa.softmax(N)                                   # the attention matrix
print("loss l(Z) =", float(fa.quadratic_loss(Z, theta, C)))

# %% [markdown]
# ## Self-attention and its adjoint
#
# $$\mathrm{SA}(Z,\theta) = \sigma(Z\theta Z^\top)\,Z\theta, \qquad
#   \mathrm{SA}^\ast(Z,\theta) = \sigma(Z\theta Z^\top)^\top Z\theta .$$
#
# $\mathrm{SA}$ is ordinary self-attention: token $i$ *reads* from the tokens it attends to
# (row $i$ of $P$). $\mathrm{SA}^\ast$ uses the same matrix transposed: token $j$ collects
# from the tokens that attend *to it* (column $j$ of $P$).

# %%
SA = fa.self_attention(Z, theta)
SA_adj = fa.self_attention_adjoint(Z, theta)
assert np.allclose(SA, P @ Z @ theta)
assert np.allclose(SA_adj, P.T @ Z @ theta)

fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
im = axes[0].imshow(P, cmap="viridis", vmin=0, vmax=1)
axes[0].set(title=r"$P = \sigma(Z\theta Z^\top)$: rows sum to 1", xlabel="key token j", ylabel="query token i")
axes[1].imshow(P.T, cmap="viridis", vmin=0, vmax=1)
axes[1].set(title=r"$P^\top$ used by SA$^\ast$", xlabel="token i", ylabel="token j")
axes[2].bar(range(n), P.sum(axis=0), color="C1")
axes[2].axhline(1, color="k", ls="--", lw=1)
fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8, label="attention weight")
axes[2].set(title="column sums of P: attention each token receives", xlabel="token j", ylabel="column sum");

# %% [markdown]
# ## The gradient (eq. 9)
#
# With $G = \sigma(N) - C$ and $dN = dZ\,\theta Z^\top + Z\theta\,dZ^\top$:
#
# $$d\ell = \langle G, dN\rangle = \langle G Z\theta, dZ\rangle + \langle G^\top Z\theta, dZ\rangle
#   \quad(\theta \text{ symmetric}),$$
#
# $$\nabla_Z\ell = (G + G^\top) Z\theta = \mathrm{SA}(Z,\theta) + \mathrm{SA}^\ast(Z,\theta) - (C + C^\top) Z\theta . \tag{9}$$
#
# The gradient flow $\dot Z = (C + C^\top)Z\theta - \mathrm{SA} - \mathrm{SA}^\ast$ is a
# self-attention layer plus a label term: the quadratic counterpart of eq. (6).

# %%
grad = fa.quadratic_grad_Z(Z, theta, C)
assert np.allclose(grad, SA + SA_adj - (C + C.T) @ Z @ theta)

result = fa.gradcheck(lambda Z: fa.quadratic_loss(Z, theta, C), Z, grad)
print("Z:  ", result)
assert result.passed

# %% [markdown]
# Training needs the gradient in the factor: $\nabla_\phi\ell = \mathrm{tril}\big((Z^\top G Z + Z^\top G^\top Z)\,\phi\big)$,
# kept lower-triangular because only the lower triangle of $\phi$ is a parameter. The finite
# differences therefore perturb $\phi$ through `np.tril`.

# %%
grad_phi = fa.quadratic_grad_phi(Z, phi, C)
result_phi = fa.gradcheck(lambda p: fa.quadratic_loss(Z, fa.theta_from_phi(np.tril(p)), C), phi, grad_phi)
print("phi:", result_phi)
assert result_phi.passed

fig, ax = plt.subplots(figsize=(3.6, 3.6), layout="constrained")
for r, label in [(result, r"$\nabla_Z$ (eq. 9)"), (result_phi, r"$\nabla_\phi$")]:
    ax.plot(r.numerical.ravel(), r.analytic.ravel(), "o", label=label)
lim = 1.1 * max(np.abs(result.analytic).max(), np.abs(result_phi.analytic).max())
ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
ax.set(xlabel="finite differences", ylabel="formula", aspect="equal")
ax.legend();

# %% [markdown]
# ## A retrieval task with a hidden $\theta^\ast$
#
# `make_retrieval` draws sequences of $n = 8$ tokens in $\mathbb{R}^6$ and a hidden SPD
# matrix $\theta^\ast$; the target of token $i$ is the token it scores highest,
# $y_{bi} = \arg\max_j (Z_b\theta^\ast Z_b^\top)_{ij}$. A quadratic model that gets every
# target right must rank tokens like $\theta^\ast$, so training should recover $\theta^\ast$
# up to scale (the arg-max does not see the scale; the cross-entropy keeps sharpening it).
# Many tokens pick themselves (a positive-definite $\theta^\ast$ favours $z_i^\top\theta^\ast z_i$),
# so we also report the accuracy on the tokens whose target is another token.

# %%
d, tokens = 6, 8
theta_star = random_spd(d, seed=1, condition=10.0)    # eigenvalues spread over [1, 10]
X, y, theta_star = make_retrieval(num_seqs=2048, tokens=tokens, d=d, theta_star=theta_star, seed=0)
X_test, y_test, _ = make_retrieval(num_seqs=512, tokens=tokens, d=d, theta_star=theta_star, seed=1)
print("X:", X.shape, X.dtype, "  y:", y.shape, "(target token of every token)")
print(f"share of tokens whose target is themselves: {(y == np.arange(tokens)).mean():.2f}")


# %% [markdown]
# The package's `Network` with `layers=0` and a quadratic block is exactly this model: its
# head computes $Z\theta Z^\top$ with $\theta = \phi\phi^\top$, its labels are token indices
# of shape (B, n), and its loss is the mean over tokens. Its $\phi$ gradient is
# `quadratic_grad_phi` divided by the number of tokens. Its default start is
# $\theta = I/\sqrt d$, which already resembles any well-conditioned SPD matrix; to make
# the comparison honest we start from a random factor instead.

# %%
def cosine(A, B):
    """Cosine similarity of two matrices, flattened."""
    a, b = np.ravel(A).astype(np.float64), np.ravel(B).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

net = Network(NetworkConfig(n_inputs=d, layers=0, block=BlockConfig(model="quadratic")), seed=0)
print(net.describe())
net.params["phi"][...] = np.tril(rng.normal(size=(d, d)) / np.sqrt(d))   # random lower-triangular start
theta_init = fa.theta_from_phi(net.params["phi"]).copy()

loss, grads, _ = net.loss_and_grads(X[:4], y[:4])
C4 = net.target_matrix(y[:4], X.dtype)
assert np.allclose(grads["phi"], fa.quadratic_grad_phi(X[:4], net.params["phi"], C4) / (4 * tokens), atol=1e-6)
print(f"cosine(theta_init, theta*) = {cosine(theta_init, theta_star):.3f}")

# %%
epochs, batch = 30, 128
opt = Adam(net.params, lr=0.03, schedule=Cosine(epochs * int(np.ceil(len(X) / batch))))
history = fit(net, X, y, epochs=epochs, batch_size=batch, optimizer=opt, seed=0, progress=False)

theta_learned = fa.theta_from_phi(net.params["phi"])
test = evaluate(net, X_test, y_test)
pred = net.predict(fa.asarray(X_test))
other = y_test != np.arange(tokens)
cos_sim = cosine(theta_learned, theta_star)
print(f"test accuracy {test['accuracy']:.3f} (on tokens that pick another token: "
      f"{(pred == y_test)[other].mean():.3f}),  test loss {test['loss']:.3f}")
print(f"cosine(theta_learned, theta*) = {cos_sim:.4f}")
assert cos_sim > 0.9

# %%
fig = plt.figure(figsize=(12, 3.4), layout="constrained")
ax0, ax1, ax2, ax3 = fig.subplots(1, 4, width_ratios=[1.3, 1, 1, 1])
ax0.plot(history.column("epoch"), history.column("train_loss"), "o-", ms=3)
ax0.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log", title="training (Adam)")
ax0.grid(alpha=0.3)
mats = [(theta_init, "start (random $\\phi$)"), (theta_learned, "learned $\\theta = \\phi\\phi^\\top$"),
        (theta_star, "hidden $\\theta^\\ast$")]
for ax, (M, title) in zip((ax1, ax2, ax3), mats):
    M = M / np.abs(M).max()                           # compare shapes: the scale is not identifiable
    im = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set(title=f"{title}\ncos to $\\theta^\\ast$ = {cosine(M, theta_star):.3f}", xticks=[], yticks=[])
fig.colorbar(im, ax=[ax1, ax2, ax3], shrink=0.8, label="entry / max |entry|");

# %% [markdown]
# ## Attention maps before and after training
#
# For one test sequence: the attention matrix $\sigma(Z\theta Z^\top)$ at the start, after
# training, and the one-hot target map. Training has made each row put its mass on the
# target token.

# %%
b = 0
Zb = X_test[b].astype(np.float64)
target_map = fa.one_hot(y_test[b], tokens)
before = fa.softmax(fa.quadratic_logits(Zb, theta_init.astype(np.float64)))
after = fa.softmax(fa.quadratic_logits(Zb, theta_learned.astype(np.float64)))

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
for ax, M, title in [(axes[0], before, "before training"), (axes[1], after, "after training"),
                     (axes[2], target_map, "target (one-hot)")]:
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=title, xlabel="key token j", ylabel="query token i")
fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="attention weight")
print(f"mass on the target token: before {(before * target_map).sum(1).mean():.2f}, "
      f"after {(after * target_map).sum(1).mean():.2f}")
assert (after * target_map).sum(1).mean() > (before * target_map).sum(1).mean()

# %% [markdown]
# ## The same training by hand
#
# `fit` hides nothing essential: the loop below trains a fresh factor with plain SGD
# (momentum 0.9) and `quadratic_grad_phi`, divided by the number of tokens in the batch.

# %%
C_train = fa.one_hot(y.reshape(-1), tokens, "float32").reshape(len(X), tokens, tokens)
params = {"phi": np.tril(rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32)}
sgd = SGD(params, lr=0.5, momentum=0.9)
order_rng = np.random.default_rng(0)
for epoch in range(30):
    order = order_rng.permutation(len(X))
    for start in range(0, len(X), batch):
        idx = order[start:start + batch]
        g = fa.quadratic_grad_phi(X[idx], params["phi"], C_train[idx]) / (len(idx) * tokens)
        sgd.step({"phi": g})
cos_hand = cosine(fa.theta_from_phi(params["phi"]), theta_star)
print(f"by hand with SGD: cosine(theta, theta*) = {cos_hand:.4f}")
assert cos_hand > 0.9

# %% [markdown]
# ## What to take away
#
# * For the quadratic model $N = Z\theta Z^\top$ the feature gradient is
#   $\mathrm{SA} + \mathrm{SA}^\ast - (C + C^\top)Z\theta$ (eq. 9): self-attention, its adjoint
#   (the same attention matrix transposed), and a label term.
# * $\theta = \phi\phi^\top$ keeps the model symmetric positive semi-definite; its gradient
#   through the lower-triangular factor is checked by finite differences.
# * Trained on a retrieval task, the model recovers the hidden scoring matrix $\theta^\ast$
#   (cosine similarity close to 1) and its attention maps match the targets.
