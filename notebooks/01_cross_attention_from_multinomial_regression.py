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
# # 1. Cross-attention from multinomial regression
#
# Take a multinomial regression with **fixed** parameters $\theta$ and turn the usual
# question around: instead of training $\theta$, ask which *features* $Z$ the model likes
# best, and walk $Z$ downhill on the cross-entropy. The gradient you have to follow is
# exactly **cross-attention** of the features to the rows of $\theta$. This notebook
# derives that gradient (eq. 4 of Actor, Gruber & Cyr, *Deriving Transformer Architectures
# as Implicit Multinomial Regression*, arXiv 2509.04653), checks it against finite
# differences, states the optimality condition (eq. 5), and draws the gradient flow
# (eq. 6) in the plane, where the cross-entropy visibly falls along every trajectory
# (eq. 7).

# %%
import numpy as np
import matplotlib.pyplot as plt

import flowattn_np as fa
from flowattn_np import method_color

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)  # every random draw below comes from this seed

# %% [markdown]
# ## The linear model and its point-wise cross-entropy (eqs. 1–3)
#
# * features $Z \in \mathbb{R}^{n\times d}$: one row per sample (or token),
# * parameters $\theta \in \mathbb{R}^{m\times d}$: one row per class,
# * logits $N = Z\theta^\top \in \mathbb{R}^{n\times m}$,
# * targets $C \in \mathbb{R}^{n\times m}$, rows are probability distributions (one-hot
#   in the paper), $\sigma$ the **row-wise** softmax.
#
# The point-wise cross-entropy (3) is
#
# $$\ell(Z) = -\langle C, \log\sigma(Z\theta^\top)\rangle
#           = -\langle C, Z\theta^\top\rangle + \sum_i \mathrm{LSE}(Z\theta^\top)_i ,$$
#
# where the second form uses $C\mathbf{1} = \mathbf{1}$. It is a sum over rows, so lowering
# it row by row lowers the global cross-entropy (2) greedily. Training minimises over
# $\theta$; here $\theta$ stays fixed and we minimise over $Z$.
# `fa.linear_loss` returns the **sum** over rows.

# %%
n, d, m = 6, 4, 3
Z = rng.normal(size=(n, d))
theta = rng.normal(size=(m, d))
y = rng.integers(0, m, size=n)
C = fa.one_hot(y, m)                       # float64 one-hot targets, n x m

N = fa.linear_logits(Z, theta)             # N = Z theta^T
loss = fa.linear_loss(Z, theta, C)         # eq. (3), summed over the n rows
loss_lse = -(C * N).sum() + fa.logsumexp(N).sum()
print(f"l(Z) = {float(loss):.6f}    LSE form: {float(loss_lse):.6f}")
assert np.isclose(loss, loss_lse)

# %%
P = fa.softmax(N)
fig, axes = plt.subplots(1, 3, figsize=(10, 3), layout="constrained")
for ax, M, title in [(axes[0], P, r"model $\sigma(Z\theta^\top)$"), (axes[1], C, "targets $C$")]:
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=title, xlabel="class k", ylabel="row i", xticks=range(m))
fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8, label="probability (model) / target value")
axes[2].barh(range(n), -(C * fa.log_softmax(N)).sum(axis=1), color="C1")
axes[2].invert_yaxis()
axes[2].set(title="point-wise loss of each row", xlabel=r"$-\log \sigma(N)_{i, y_i}$", ylabel="row i");

# %% [markdown]
# ## Its gradient is cross-attention (eq. 4)
#
# Perturb the features by $dZ$ and follow the change through the model:
#
# 1. logits: $dN = dZ\,\theta^\top$;
# 2. the linear term: $d\big(-\langle C, N\rangle\big) = -\langle C, dZ\,\theta^\top\rangle = -\langle C\theta, dZ\rangle$;
# 3. the log-sum-exp: $\partial\,\mathrm{LSE}(N)_i / \partial N_{ik} = \sigma(N)_{ik}$, so
#    $d\sum_i \mathrm{LSE}(N)_i = \langle \sigma(N), dN\rangle = \langle \sigma(Z\theta^\top)\,\theta, dZ\rangle$;
# 4. together $d\ell = \langle (\sigma(Z\theta^\top) - C)\,\theta,\ dZ\rangle$, that is
#
# $$\nabla_Z \ell = \underbrace{\sigma(Z\theta^\top)\,\theta}_{\mathrm{CA}(Z,\,\theta)} - C\theta. \tag{4}$$
#
# $\mathrm{CA}$ is **cross-attention** with queries $Z$ and keys = values = $\theta$: each
# row scores every class prototype, normalises the scores with a softmax, and returns the
# weighted average of the prototypes. The residual $G = \sigma(N) - C$ pushed back through
# the model gives every gradient in the package.

# %%
CA = fa.cross_attention(Z, theta)          # sigma(Z theta^T) theta
grad = fa.linear_grad_Z(Z, theta, C)       # eq. (4)
assert np.allclose(CA, fa.softmax(Z @ theta.T) @ theta)
assert np.allclose(grad, CA - C @ theta)
print("grad_Z l =\n", grad)

# %% [markdown]
# Trust, but check: `fa.gradcheck` compares the formula with central finite differences,
# $(\ell(Z + \varepsilon E_{ij}) - \ell(Z - \varepsilon E_{ij}))/2\varepsilon$, entry by entry
# (in float64). The same residual also gives the training gradient
# $\nabla_\theta \ell = (\sigma(Z\theta^\top) - C)^\top Z$.

# %%
result = fa.gradcheck(lambda Z: fa.linear_loss(Z, theta, C), Z, grad)
print(result)
assert result.passed

result_theta = fa.gradcheck(lambda th: fa.linear_loss(Z, th, C), theta, fa.linear_grad_theta(Z, theta, C))
print("theta:", result_theta)
assert result_theta.passed

# %%
fig, ax = plt.subplots(figsize=(3.6, 3.6), layout="constrained")
lim = 1.1 * np.abs(result.analytic).max()
ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
ax.plot(result.numerical.ravel(), result.analytic.ravel(), "o", color="C0")
ax.set(xlabel="finite differences", ylabel=r"eq. (4): CA$(Z,\theta) - C\theta$",
       title=r"all $n \times d$ entries of $\nabla_Z \ell$", aspect="equal");

# %% [markdown]
# ## Optimal features (eq. 5)
#
# The gradient vanishes where
#
# $$\mathrm{CA}(Z, \theta) = C\theta , \tag{5}$$
#
# i.e. where the attention output of every row equals its target mix of prototypes. The
# softmax is strictly positive, so for a **one-hot** target and prototypes in general
# position (5) has no finite solution: the cross-entropy only tends to 0 as the row runs
# off to infinity inside its class's cone. For a **soft** target in the interior of the
# simplex, (5) has a finite solution $z^\ast$ with $\sigma(z^\ast\theta^\top) = c$. We will
# see both below.
#
# ## The gradient flow in the plane (eq. 6)
#
# $$\frac{dZ}{dt} = -\nabla_Z\ell = C\theta - \mathrm{CA}(Z, \theta), \qquad Z(0) = Z_0. \tag{6}$$
#
# The rows do not interact (the linear model has no token-to-token term; that needs the
# quadratic model of notebook 2), so every row follows its own flow
# $\dot z = c\,\theta - \sigma(z\theta^\top)\,\theta$. A toy problem: $d = 2$, $m = 3$
# classes, prototypes of length 2 at 120° from each other. Because rows are independent,
# one call evaluates the field on a whole grid (625 rows), and `fa.integrate` with RK4
# moves 8 starting points (8 rows) at once. `fa.linear_field(theta, C)` checks `theta`
# and `C` once and returns the right-hand side of (6) as a function of $Z$: the form to
# hand to an integrator, which calls it thousands of times.

# %%
angles = np.deg2rad([90, 210, 330])
theta2 = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)   # 3 prototypes in R^2
target = 0                                                           # the class we flow towards

g = np.linspace(-4.5, 4.5, 25)
grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)           # 625 grid points = 625 rows

start = np.deg2rad(np.arange(8) * 45 + 10)
Z0 = 3.0 * np.stack([np.cos(start), np.sin(start)], axis=1)          # 8 starting points
C0 = fa.one_hot(np.full(len(Z0), target), 3)

T, steps = 8.0, 800
path = np.stack(fa.integrate(fa.linear_field(theta2, C0), Z0, T, steps,
                             method="rk4", return_path=True))
print("trajectories:", path.shape, "= (time steps + 1, rows, d)")

# %% [markdown]
# For the soft target $c = (0.6, 0.3, 0.1)$ the optimum of (5) is explicit: $\sigma(z\theta^\top) = c$
# means $z\theta^\top = \log c + \text{const}$, and since these prototypes sum to zero the
# constant drops out in a least-squares solve. The flow should end there from every start.

# %%
c_soft = np.array([0.6, 0.3, 0.1])
log_c = np.log(c_soft)
z_star = np.linalg.lstsq(theta2, log_c - log_c.mean(), rcond=None)[0]
print("z* =", z_star, "   sigma(z* theta^T) =", fa.softmax(z_star[None] @ theta2.T)[0])

C_soft = np.tile(c_soft, (len(Z0), 1))
path_soft = np.stack(fa.integrate(fa.linear_field(theta2, C_soft), Z0, 20.0, 1000,
                                  method="rk4", return_path=True))
Z_end = path_soft[-1]
gap = np.abs(fa.cross_attention(Z_end, theta2) - C_soft @ theta2).max()
print(f"after t = 20: max |Z - z*| = {np.abs(Z_end - z_star).max():.1e}, max |CA - C theta| = {gap:.1e}")
assert np.allclose(Z_end, z_star, atol=1e-3)   # every trajectory reaches the optimum ...
assert gap < 1e-3                              # ... where eq. (5) holds


# %%
def draw_flow(ax, c_row, paths, title):
    field = fa.linear_flow(grid, theta2, np.tile(c_row, (len(grid), 1))).reshape(len(g), len(g), 2)
    prob = fa.softmax(grid @ theta2.T)[:, target].reshape(len(g), len(g))
    ax.contourf(g, g, prob, levels=np.linspace(0, 1, 11), cmap="Blues", alpha=0.35)
    ax.streamplot(g, g, field[..., 0], field[..., 1], color="0.45", density=1.1, linewidth=0.7)
    for k, p in enumerate(theta2):
        ax.annotate("", xy=p, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=f"C{k}", lw=2.5))
        ax.text(*(1.2 * p), rf"$\theta_{k}$", color=f"C{k}", fontsize=12, ha="center", va="center")
    for j in range(paths.shape[1]):
        ax.plot(paths[:, j, 0], paths[:, j, 1], color=method_color("full flow"), lw=1.8)
        ax.plot(*paths[0, j], "o", color=method_color("full flow"), ms=4)
    ax.set(xlim=(g[0], g[-1]), ylim=(g[0], g[-1]), aspect="equal", title=title, xlabel="$z_1$", ylabel="$z_2$")

fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
draw_flow(axes[0], C0[0], path, f"one-hot target: class {target} (no finite optimum: creeps outward)")
draw_flow(axes[1], c_soft, path_soft, "soft target c = (0.6, 0.3, 0.1): a finite optimum")
axes[1].plot(*z_star, "*", color="k", ms=16, label=r"$z^\ast$, eq. (5)")
axes[1].legend(loc="lower right")
fig.suptitle(r"gradient flow (6): $\dot z = c\,\theta - \sigma(z\theta^\top)\theta$;"
             r" shading: $\sigma(z\theta^\top)_0$");

# %% [markdown]
# ## The cross-entropy only goes down (eq. 7)
#
# Along the flow, by the chain rule and (6),
#
# $$\frac{d}{dt}\,\ell(Z(t)) = \langle \nabla_Z\ell, \dot Z\rangle = -\|\nabla_Z \ell\|_F^2 \le 0 . \tag{7}$$
#
# We check it on the one-hot trajectories: the per-row loss $\ell_i(t)$, differentiated in
# time with central differences (error $O(\Delta t^2)$), against $-\|\nabla_{z_i}\ell\|^2$.

# %%
t = np.linspace(0.0, T, steps + 1)
loss_t = np.stack([-(C0 * fa.log_softmax(Z @ theta2.T)).sum(axis=1) for Z in path])   # (time, row)
grad_sq = np.stack([(fa.linear_grad_Z(Z, theta2, C0) ** 2).sum(axis=1) for Z in path])
dloss_dt = np.gradient(loss_t, t, axis=0)

rel_err = np.abs(dloss_dt[1:-1] + grad_sq[1:-1]).max() / grad_sq.max()
print(f"max |dl/dt + ||grad||^2| / max ||grad||^2 = {rel_err:.1e}")
assert rel_err < 1e-3
assert np.all(np.diff(loss_t, axis=0) <= 1e-12)   # monotone along every trajectory

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
axes[0].semilogy(t, loss_t, color=method_color("full flow"), lw=1.2)
axes[0].set(xlabel="t", ylabel=r"$\ell_i(Z(t))$", title="point-wise loss along the 8 trajectories")
j = int(np.argmax(loss_t[0]))   # the trajectory that starts worst
axes[1].plot(t, dloss_dt[:, j], lw=3, alpha=0.5, label=r"$\frac{d}{dt}\ell$ (finite differences)")
axes[1].plot(t, -grad_sq[:, j], "k--", lw=1.2, label=r"$-\|\nabla_z \ell\|^2$")
axes[1].set(xlabel="t", ylabel=r"rate of change of $\ell_i$", title=f"eq. (7) on trajectory {j}")
axes[1].legend()
for ax in axes:
    ax.grid(alpha=0.3)

# %% [markdown]
# ## One Euler step is already a residual block
#
# An explicit Euler step of (6) with step $h$ reads
# $z_{k+1} = z_k - h\,\mathrm{CA}(z_k,\theta) + h\,c\,\theta$: attention plus a residual
# connection, then a term driven by the labels. Notebook 3 makes this the transformer block
# of eq. (8). The Hessian of $\ell$ in one row is bounded by $\lambda_{\max}(\theta\theta^\top)/2$,
# so any $h < 4/\lambda_{\max}$ is a guaranteed descent step; here $h = 1/\lambda_{\max}$.

# %%
lam_max = np.linalg.eigvalsh(theta2 @ theta2.T).max()
h = 1.0 / lam_max
euler = np.stack(fa.integrate(fa.linear_field(theta2, C0), Z0, 12 * h, 12,
                              method="euler", return_path=True))
euler_loss = [float(fa.linear_loss(Z, theta2, C0)) for Z in euler]
print(f"lam_max = {lam_max:.2f}, h = {h:.3f}; summed loss per step:", np.round(euler_loss, 3))
assert all(b < a for a, b in zip(euler_loss, euler_loss[1:]))

fig, ax = plt.subplots(figsize=(4.8, 4.8), layout="constrained")
for j in range(len(Z0)):
    ax.plot(path[:, j, 0], path[:, j, 1], color=method_color("full flow"), lw=1, alpha=0.6)
    ax.plot(euler[:, j, 0], euler[:, j, 1], "o-", color=method_color("euler"), ms=3, lw=0.6)
ax.plot([], [], color=method_color("full flow"), label="full flow (RK4)")
ax.plot([], [], "o-", color=method_color("euler"), ms=3, label=r"Euler steps, $h = 1/\lambda_{\max}$")
ax.set(aspect="equal", title="discrete steps follow the flow", xlabel="$z_1$", ylabel="$z_2$")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8);

# %% [markdown]
# ## What to take away
#
# * For the linear model $N = Z\theta^\top$, the gradient of the point-wise cross-entropy
#   in the features is $\nabla_Z\ell = \mathrm{CA}(Z,\theta) - C\theta$ (eq. 4):
#   cross-attention with keys = values = $\theta$, minus the target prototypes.
# * Optimal features satisfy $\mathrm{CA}(Z,\theta) = C\theta$ (eq. 5): reachable for soft
#   targets, only approached at infinity for one-hot ones.
# * The gradient flow (6) moves each row independently, and the cross-entropy decreases at
#   the rate $\|\nabla_Z\ell\|^2$ (eq. 7).
# * An Euler step of the flow is "attention + residual + label term": the seed of a
#   transformer block (notebook 3).
