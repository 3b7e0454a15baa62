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
# # 6. Normalisation as a sphere constraint
#
# The derivation of notebooks 1–3 leaves one piece of a transformer out: the
# normalisation layer. Read RMS normalisation $R(z) = r\,z/|z|$ as a **constraint**: the
# features live on the sphere $|z| = r$. Minimising the cross-entropy over features on
# that sphere gives the *projected* (Riemannian) gradient flow
#
# $$\dot Z = -P_Z\,\nabla_Z \ell, \qquad P_z v = v - \frac{z\cdot v}{|z|^2}\,z
# \quad\text{(row by row)},$$
#
# and a "residual + normalise" block is one step of it followed by the retraction $R$.
# This notebook draws that flow on the unit sphere in $\mathbb R^3$, compares the
# retraction with the exact geodesic, checks the post-norm identity live, and measures
# the orders of the Lie and Strang splittings on the sphere.

# %%
import numpy as np
import matplotlib.pyplot as plt
from matplotlib import cm, colors

import flowattn_np as fa
from flowattn_np import method_color

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## A toy on the unit sphere
#
# Four classes whose directions $\theta_k$ are the vertices of a regular tetrahedron
# (length 3, so logits reach $\pm 3$), and twelve features drawn at random on the unit
# sphere, three of each class. `fa.retract(Z, r)` is the normalisation layer
# $R(z) = r z / |z|$; here $r = 1$ (the package's default is $r = \sqrt d$, which gives
# every coordinate unit mean square).

# %%
r = 1.0
tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
theta = 3.0 * tetra                                         # m = 4 classes in R^3
m, d = theta.shape
rng = np.random.default_rng(6)
y = np.repeat(np.arange(m), 3)
Z0 = fa.retract(rng.normal(size=(len(y), d)), r)            # 12 features on the sphere
C = fa.one_hot(y, m)
print("row lengths:", np.linalg.norm(Z0, axis=1))

# %% [markdown]
# ## The projected flow and its dissipation
#
# `fa.linear_flow_sphere(Z, theta, C)` is $P_Z(C\theta - \mathrm{CA}(Z,\theta))$: the flat
# field of eq. (6) with its radial part removed. Its velocity is tangent, so the exact
# flow stays on the sphere; a numerical step leaves it by $O(h^2)$, and the retraction
# after each RK4 step puts it back. Along the flow the loss falls at the rate
# $\frac{d\ell}{dt} = -|P_Z\nabla_Z\ell|^2$ (dissipation on the sphere).

# %%
def sphere_path(Z, T, steps, flow):
    """RK4 steps of dZ/dt = flow(Z), each followed by the retraction; returns all states."""
    path = [Z]
    for _ in range(steps):
        path.append(fa.retract(fa.rk_step(flow, path[-1], T / steps, "rk4"), r))
    return np.stack(path)

T, steps = 3.0, 300
ts = np.linspace(0, T, steps + 1)
path = sphere_path(Z0, T, steps, lambda Z: fa.linear_flow_sphere(Z, theta, C))
row_loss = np.stack([-(C * fa.log_softmax(Z @ theta.T)).sum(axis=1) for Z in path])   # (time, row)
total = row_loss.sum(axis=1)
print(f"loss {total[0]:.3f} -> {total[-1]:.3f}; largest |  |z| - 1  | on the path: "
      f"{np.abs(np.linalg.norm(path, axis=2) - r).max():.1e}")
assert np.all(np.diff(total) <= 1e-12)                      # never increases

rate = np.gradient(total, ts)                               # dl/dt by differences
speed = np.array([(fa.tangent_project(Z, fa.linear_grad_Z(Z, theta, C)) ** 2).sum() for Z in path])
print(f"dl/dt vs -|P grad|^2 at t = 1: {rate[100]:.5f} vs {-speed[100]:.5f}")

# %%
def draw_sphere(ax):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 40), np.linspace(0, np.pi, 20))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                      color="0.85", lw=0.4)
    for k, t in enumerate(tetra):
        ax.scatter(*t, marker="*", s=220, color=f"C{k}", edgecolor="k", zorder=5)
        ax.text(*(1.25 * t), rf"$\theta_{k}$", color=f"C{k}", fontsize=12)
    ax.set(xlabel="$z_1$", ylabel="$z_2$", zlabel="$z_3$", box_aspect=(1, 1, 1),
           xticks=[-1, 0, 1], yticks=[-1, 0, 1], zticks=[-1, 0, 1])

fig = plt.figure(figsize=(12, 5), layout="constrained")
ax3 = fig.add_subplot(1, 2, 1, projection="3d")
draw_sphere(ax3)
norm = colors.LogNorm(row_loss.min(), row_loss.max())
for i in range(len(y)):
    ax3.scatter(*path[:, i].T, c=row_loss[:, i], cmap="viridis", norm=norm, s=4)
    ax3.scatter(*path[0, i], marker="o", s=30, facecolor="none", edgecolor=f"C{y[i]}")
fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax3, shrink=0.7,
             label="cross-entropy of the row (log scale)")
ax3.set_title("projected flow on the unit sphere\n(circles: start, colour of the class)")
ax = fig.add_subplot(1, 2, 2)
for k in range(m):
    ax.plot(ts, row_loss[:, y == k].sum(axis=1), color=f"C{k}", label=f"rows of class {k}")
ax.plot(ts, total, "k", lw=2, label="total")
ax.set(xlabel="time t", ylabel="cross-entropy (sum over rows)", yscale="log",
       title="the loss along the flow never increases")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1));

# %% [markdown]
# ## Flat against spherical
#
# The flat flow of eq. (6) lowers the loss further, partly by growing the features: the
# logits $z\cdot\theta_k$ scale with $|z|$. On the sphere that lever is gone. The loss can
# only fall by turning $z$ toward its class direction, and it has a positive floor, since
# every logit is bounded by $r\,|\theta_k|$.

# %%
flat = np.stack(fa.integrate(lambda Z: fa.linear_flow(Z, theta, C), Z0, T, steps, "rk4",
                             return_path=True))
flat_loss = np.array([float(fa.linear_loss(Z, theta, C)) for Z in flat])
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
axes[0].plot(ts, flat_loss, color="C7", label="flat flow (6)")
axes[0].plot(ts, total, color="C9", label="on the sphere")
axes[0].set(xlabel="time t", ylabel="cross-entropy", yscale="log", title="loss")
axes[1].plot(ts, np.linalg.norm(flat, axis=2).mean(axis=1), color="C7", label="flat flow (6)")
axes[1].plot(ts, np.linalg.norm(path, axis=2).mean(axis=1), color="C9", label="on the sphere")
axes[1].set(xlabel="time t", ylabel="mean row length |z|", title="feature length")
for ax in axes:
    ax.grid(alpha=0.3)
axes[1].legend(loc="upper left");

# %% [markdown]
# ## Retraction against the exact geodesic
#
# A normalised block moves along a straight line in the tangent direction and comes back
# to the sphere: $R(z + t v)$. The exact move along the sphere is the geodesic
# $\gamma(t) = \cos(t|v|)\,z + \sin(t|v|)\,v/|v|$ (unit sphere, $v \perp z$). The two leave
# $z$ with the same velocity; the retraction turns by the angle $\arctan(t|v|)$ instead of
# $t|v|$, so they part by $O(t^3)$: a retraction is exact to second order. That is why
# "step + normalise" can stand in for the exact motion on the sphere without costing the
# splitting any order.

# %%
z = Z0[:1]
v = fa.tangent_project(z, fa.linear_flow(z, theta, C[:1]))
speed_v = np.linalg.norm(v)
tt = np.logspace(-3, 0, 25)
geodesic = np.array([np.cos(t * speed_v) * z + np.sin(t * speed_v) * v / speed_v for t in tt])[:, 0]
retracted = np.array([fa.retract(z + t * v, r) for t in tt])[:, 0]
gap = np.linalg.norm(geodesic - retracted, axis=1)
slope = np.polyfit(np.log(tt[:12]), np.log(gap[:12]), 1)[0]
print(f"measured order of the gap: {slope:.2f}")
assert abs(slope - 3) < 0.1

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ax.loglog(tt, gap, "o-", ms=4, color="C4", label=f"|R(z + t v) - geodesic(t)|, slope {slope:.2f}")
ax.loglog(tt, (tt * speed_v) ** 3 / 3, "k:", label="(t|v|)^3 / 3")
ax.set(xlabel="step t", ylabel="distance on the sphere", title="retraction vs exact geodesic")
ax.grid(alpha=0.3, which="both")
ax.legend(loc="upper left");

# %% [markdown]
# ## The post-norm identity, checked live
#
# A post-norm residual block computes $R(z - h v)$ for an update $v$ that need not be
# tangent (here $v$ is the cross-attention $\mathrm{CA}(z, \theta)$). Split $v$ into its
# tangent and radial parts: $z - hv = (1 - h\,z\cdot v/r^2)\,(z - h' P_z v)$ with
#
# $$h' = \frac{h}{1 - h\,z\cdot v / r^2},$$
#
# and $R$ ignores the positive factor. So **residual + normalise is the Riemannian step
# with a per-row step size** $h'$ (`fa.post_norm_step_size`), whenever the denominator
# is positive. The radial part of the update does not go to waste: it sets the step.

# %%
h = 0.2                                        # |CA| <= 3 here, so 1 - h z.v > 0 for every row
V = fa.cross_attention(Z0, theta)
h_row = fa.post_norm_step_size(Z0, V, h, r)
assert np.all(1 - h * (Z0 * V).sum(axis=1) > 0)
left = fa.retract(Z0 - h * V, r)
right = fa.retract(Z0 - h_row * fa.tangent_project(Z0, V), r)
print("per-row steps h':", h_row.ravel())
print(f"max |R(z - h v) - R(z - h' P v)| = {np.abs(left - right).max():.1e}")
assert np.abs(left - right).max() < 1e-12

# %% [markdown]
# ## The exact label step on the sphere
#
# The label part $\dot z = P_z c$, $c = (C\theta)_{\text{row}}$, is constant in the flat
# case; on the sphere it **rotates** $z$ toward $c$ in the plane of $z$ and $c$, with the
# angle $a$ to $c$ obeying $\tan(a(t)/2) = \tan(a_0/2)\,e^{-|c|t/r}$.
# `fa.linear_B_exact_sphere` computes it in a closed form with no special cases: rows
# parallel or antiparallel to $c$, and rows with $c = 0$, stay where they are.

# %%
ref = fa.integrate(lambda Z: fa.linear_flow_B_sphere(Z, theta, C), Z0, 1.0, 2000, "rk4")
exact_B = fa.linear_B_exact_sphere(Z0, theta, C, 1.0, r)
print(f"exact spherical B vs RK4 with 2000 steps: {np.abs(exact_B - ref).max():.1e}")
cos_before = (Z0 * (C @ theta)).sum(1) / np.linalg.norm(C @ theta, axis=1)
cos_after = (exact_B * (C @ theta)).sum(1) / np.linalg.norm(C @ theta, axis=1)
print("cosine to c, before:", cos_before.round(3))
print("cosine to c, after :", cos_after.round(3))

# %% [markdown]
# ## Lie and Strang on the sphere
#
# Split the spherical flow like the flat one: A is $-P_Z\mathrm{CA}$, integrated by RK4
# (or one Euler step) and followed by $R$; B is the exact rotation above. Against a fine
# reference of the full spherical flow, Lie is first order and Strang second order; with
# one Euler step for A both are first order, exactly as in the flat case (notebook 3).

# %%
def split_error(scheme, method, L, T=1.0):
    def step_A(Z, t):
        return fa.retract(fa.rk_step(lambda Y: fa.linear_flow_A_sphere(Y, theta), Z, t, method), r)

    def step_B(Z, t):
        return fa.linear_B_exact_sphere(Z, theta, C, t, r)

    step = {"lie": fa.lie_step, "strang": fa.strang_step}[scheme]
    Z = Z0
    for _ in range(L):
        Z = step(step_A, step_B, Z, T / L)
    return np.abs(Z - Z_ref).max()

Z_ref = sphere_path(Z0, 1.0, 4000, lambda Z: fa.linear_flow_sphere(Z, theta, C))[-1]
Ls = np.array([8, 16, 32, 64])
hs = 1.0 / Ls
fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
styles = {("lie", "rk4"): "o-", ("strang", "rk4"): "s-", ("lie", "euler"): "o--", ("strang", "euler"): "s--"}
for (scheme, method), ls in styles.items():
    colour = method_color(scheme)  # one colour per splitting, as in every figure of the package
    errs = np.array([split_error(scheme, method, L) for L in Ls])
    p = float(np.polyfit(np.log(hs), np.log(errs), 1)[0])
    ax.loglog(hs, errs, ls, color=colour, label=f"{scheme.capitalize()}, A by {method} + R: slope {p:.2f}")
    print(f"{scheme:>6}, A by {method:<5}: measured order {p:.2f}")
    assert abs(p - (2 if (scheme, method) == ("strang", "rk4") else 1)) < 0.2
ax.set(xlabel="step h = T / L", ylabel="max error against the reference",
       title="splitting on the sphere: measured orders")
ax.set_xticks(hs, [f"1/{L}" for L in Ls])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.grid(alpha=0.3, which="both")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8);

# %% [markdown]
# ## Pre-norm is a different thing
#
# The GPT-2 layout normalises the *input* of each sub-layer and adds the result to an
# unnormalised residual stream: $Z + h\,f(R(Z))$. The stream keeps its own length, which
# drifts; it is not a flow on the sphere, and the package labels it as a variant to
# compare, not the theory.

# %%
Zpre, Zpost = Z0.copy(), Z0.copy()
lengths = []
for _ in range(20):
    Zpre = Zpre + 0.3 * fa.linear_flow(fa.retract(Zpre, r), theta, C)   # pre-norm
    Zpost = fa.retract(Zpost + 0.3 * fa.linear_flow(Zpost, theta, C), r)  # post-norm
    lengths.append((np.linalg.norm(Zpre, axis=1).mean(), np.linalg.norm(Zpost, axis=1).mean()))
lengths = np.array(lengths)
print("mean row length after 5, 10, 20 blocks, pre-norm :", lengths[[4, 9, 19], 0].round(2))
print("mean row length after 5, 10, 20 blocks, post-norm:", lengths[[4, 9, 19], 1].round(2))

# %% [markdown]
# ## The same steps as transformer blocks
#
# `BlockConfig(norm="sphere")` builds these normalised blocks, with hand-derived backward
# passes, for training (`norm="layer"` for LayerNorm; `norm_place="pre"` for the pre-norm
# variant). The blocks use the radius $r = \sqrt d$; on that sphere a post-norm Lie block
# with Euler for A is exactly the Euler step + retraction, then the exact label rotation.

# %%
rd = np.sqrt(d)
Zs = rd * Z0                                               # the same features on |z| = sqrt(3)
post = fa.make_block(fa.BlockConfig(targets="labels", h=0.2, norm="sphere"))
by_hand = fa.linear_B_exact_sphere(fa.retract(Zs + 0.2 * fa.linear_flow_A_sphere(Zs, theta)), theta, C, 0.2)
print(post.config.describe())
print(fa.make_block(fa.BlockConfig(targets="labels", h=0.2, norm="sphere", norm_place="pre")).config.describe())
gap = np.abs(post.forward(Zs, {'theta': theta}, C)[0] - by_hand).max()
print(f"block vs by hand: {gap:.1e}")
assert gap < 1e-12

# %% [markdown]
# ## Beside normalised transformers (nGPT)
#
# nGPT (Loshchilov, Hsieh, Sun & Ginsburg, *nGPT: Normalized Transformer with
# Representation Learning on the Hypersphere*, 2024) keeps every hidden state on the unit
# sphere, and normalises the embeddings and the weight matrices' rows as well. Its block
# replaces the residual update by $h \leftarrow \mathrm{Norm}(h + \alpha\,(h_A - h))$, with
# learned per-coordinate step sizes $\alpha$ ("eigen learning rates"), and it reports
# reaching the same validation loss in 4 to 20 times fewer training steps. Read with this
# notebook: that update is a retraction of a step, hence (post-norm identity) a
# Riemannian step on the sphere with a per-row step size. What the gradient-flow
# derivation adds is the *direction*: here the step is the projected gradient of a
# cross-entropy, $-P_Z\nabla_Z\ell$, split into an attention part and a label part, so the
# block has a loss it provably lowers for small steps and an order of accuracy one can
# measure. What nGPT adds is everything the derivation leaves fixed: learned step
# sizes per coordinate, normalised parameters, and a real language-modelling workload.
#
# ## What to take away
#
# * Normalisation read as a constraint turns the gradient flow into its projection
#   $-P_Z\nabla_Z\ell$; the loss still never increases, now at the rate
#   $|P_Z\nabla_Z\ell|^2$.
# * A post-norm residual block $R(z - hv)$ is exactly a Riemannian step $R(z - h'P_z v)$
#   with a per-row step size; the retraction agrees with the geodesic to second order.
# * On the sphere the label step is a rotation, solvable exactly; with it and RK4 for
#   attention, Lie is first order and Strang second order, and one Euler step for
#   attention makes both first order.
# * Pre-norm ($Z + hf(R(Z))$) is not a flow on the sphere.
