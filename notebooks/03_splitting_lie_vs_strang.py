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
# # 3. Splitting the flow: Lie vs Strang, and why a transformer block is first order
#
# The gradient flow $\dot Z = C\theta - \mathrm{CA}(Z,\theta)$ (eq. 6) has two parts: a
# nonlinear attention part and a label part that is trivial to solve. Splitting the flow
# into these two parts and alternating them gives discrete blocks; with one Euler step
# for the attention part, the Lie splitting is exactly the transformer block of eq. (8):
# attention + residual, then a linear map + residual. This notebook draws the split steps,
# **measures** the order of accuracy of Lie and Strang splitting against a fine reference
# solution, and shows that a single Euler step for attention makes both first order.

# %%
import numpy as np
import matplotlib.pyplot as plt

import flowattn_np as fa
from flowattn_np import BlockConfig, make_block, method_color

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## Two sub-flows
#
# * **A** (attention): $\dot Z = -\mathrm{CA}(Z, \theta)$, nonlinear, integrated by an
#   explicit one-step method (Euler, Heun or RK4);
# * **B** (label forcing): $\dot Z = C\theta$, constant in $Z$, solved exactly:
#   $Z(t) = Z + t\,C\theta$.
#
# One step of size $h$:
#
# * Lie–Trotter: $B(h)\circ A(h)$ (`fa.lie_step`), first order;
# * Strang: $A(h/2)\circ B(h)\circ A(h/2)$ (`fa.strang_step`), second order when its
#   sub-flows are at least second-order accurate.
#
# In the plane (the toy problem of notebook 1, target class 0) with a deliberately large
# step, each split step is a zig-zag: an attention move, then a label move.

# %%
angles = np.deg2rad([90, 210, 330])
theta2 = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
c2 = fa.one_hot(np.array([0]), 3)
z0 = np.array([[2.5, -2.0]])

def step_A(Z, t, method="rk4"):
    return fa.rk_step(fa.linear_field(theta2), Z, t, method)

def step_B(Z, t):
    return fa.linear_B_exact(Z, theta2, c2, t)

h, L = 0.5, 6
exact = np.concatenate(fa.integrate(fa.linear_field(theta2, c2), z0, h * L, 600,
                                    method="rk4", return_path=True))
lie_pts, strang_pts = [z0], [z0]
for _ in range(L):
    a = step_A(lie_pts[-1], h)
    lie_pts += [a, step_B(a, h)]                  # A(h), then B(h)
    a1 = step_A(strang_pts[-1], h / 2)
    b = step_B(a1, h)
    strang_pts += [a1, b, step_A(b, h / 2)]       # A(h/2), B(h), A(h/2)
assert np.allclose(lie_pts[-1], fa.lie_step(step_A, step_B, lie_pts[-3], h))
assert np.allclose(strang_pts[-1], fa.strang_step(step_A, step_B, strang_pts[-4], h))
lie_pts, strang_pts = np.concatenate(lie_pts), np.concatenate(strang_pts)

# %%
fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
for k, p in enumerate(theta2):
    ax.annotate("", xy=p, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=f"C{k}", lw=2))
    ax.text(*(1.2 * p), rf"$\theta_{k}$", color=f"C{k}", fontsize=12, ha="center")
ax.plot(exact[:, 0], exact[:, 1], color=method_color("full flow"), lw=2.5, alpha=0.4, label="full flow (6)")
ax.plot(lie_pts[:, 0], lie_pts[:, 1], "o-", color=method_color("lie"), ms=4, lw=1, label="Lie: A(h), B(h)")
ax.plot(strang_pts[:, 0], strang_pts[:, 1], "s--", color=method_color("strang"), ms=3, lw=1,
        label="Strang: A(h/2), B(h), A(h/2)")
for pts, every, color in [(lie_pts, 2, method_color("lie")), (strang_pts, 3, method_color("strang"))]:
    ax.plot(pts[::every, 0], pts[::every, 1], "o", ms=8, mfc="none", color=color)
ax.plot(*exact[-1], "k*", ms=14)
ax.set(xlim=(-2.9, 3.1), ylim=(-2.6, 2.6), aspect="equal", xlabel="$z_1$", ylabel="$z_2$",
       title=f"split steps, h = {h}, {L} steps\n(big circles: after each full step; star: exact)")
ax.legend(loc="lower left");

# %% [markdown]
# ## The block of eq. (8)
#
# With one **Euler** step for A, the Lie step is
#
# $$Z_{l+\frac12} = Z_l - h\,\mathrm{CA}(Z_l, \theta), \qquad Z_{l+1} = Z_{l+\frac12} + h\,C\theta . \tag{8}$$
#
# `make_block(BlockConfig(...))` builds it (and its Strang / Heun / RK4 variants) with a
# hand-derived backward pass; `targets="labels"` says the block uses the true labels $C$
# (the theory). Here on a small problem: $n = 4$ rows in $\mathbb{R}^3$, $m = 5$ classes.

# %%
rng = np.random.default_rng(0)
n, d, m = 4, 3, 5
Z0 = rng.normal(size=(n, d))
theta = rng.normal(size=(m, d))
C = fa.one_hot(rng.integers(0, m, size=n), m)
params = {"theta": theta}

cfg = BlockConfig(scheme="lie", integrator="euler", b_flow="exact", targets="labels", h=0.1)
block = make_block(cfg)
Z1, _ = block.forward(Z0, params, C)
by_hand = (Z0 - 0.1 * fa.cross_attention(Z0, theta)) + 0.1 * C @ theta       # eq. (8), line by line
via_splitting = fa.lie_step(lambda Z, t: fa.rk_step(fa.linear_field(theta), Z, t, "euler"),
                            lambda Z, t: fa.linear_B_exact(Z, theta, C, t), Z0, 0.1)
print(cfg.describe())
assert np.allclose(Z1, by_hand) and np.allclose(Z1, via_splitting)

# %% [markdown]
# ## Measuring the order of accuracy
#
# Run $L$ blocks with $h = T/L$ from $Z_0$ and compare with a fine reference of the
# **full** flow on $[0, T]$ (RK4 with 4000 steps, error far below the splitting errors).
# If $\mathrm{err}(h) \approx K h^p$, then $\log\mathrm{err}$ against $\log h$ is a line of
# slope $p$: the order. We measure it for Lie and Strang, with RK4 for A (A solved almost
# exactly) and with a single Euler step for A (the transformer block).

# %%
T = 1.0
Z_ref = fa.integrate(fa.linear_field(theta, C), Z0, T, 4000, "rk4")
Ls = np.array([8, 16, 32, 64])
hs = T / Ls

def run_blocks(scheme, integrator, L):
    block = make_block(BlockConfig(scheme=scheme, integrator=integrator, b_flow="exact",
                                   targets="labels", h=T / L))
    Z = Z0
    for _ in range(L):
        Z, _ = block.forward(Z, params, C)
    return Z

def order(errors):
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])

errors, slopes = {}, {}
for scheme in ("lie", "strang"):
    for integrator in ("rk4", "euler", "heun"):
        errors[scheme, integrator] = np.array([np.linalg.norm(run_blocks(scheme, integrator, L) - Z_ref)
                                               for L in Ls])
        slopes[scheme, integrator] = order(errors[scheme, integrator])
for key in [("lie", "rk4"), ("strang", "rk4"), ("lie", "euler"), ("strang", "euler")]:
    print(f"{key[0]:>6} with {key[1]:<5} for A: measured order {slopes[key]:.3f}")

# %%
# colour: the scheme (one table for every figure, `fa.plotting.METHOD_COLORS`);
# line style and marker: the integrator of A
A_STYLE = {"rk4": dict(ls="-", marker="o"), "heun": dict(ls="--", marker="s"), "euler": dict(ls=":", marker="^")}
fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
for key in [("lie", "rk4"), ("strang", "rk4"), ("lie", "euler"), ("strang", "euler")]:
    ax.loglog(hs, errors[key], color=method_color(key[0]), ms=6, **A_STYLE[key[1]],
              label=f"{key[0].capitalize()}, A by {key[1]}: slope {slopes[key]:.2f}")
for p, anchor, ls in [(1, errors["lie", "rk4"][0], ":"), (2, errors["strang", "rk4"][0], "-.")]:
    ax.loglog(hs, 1.6 * anchor * (hs / hs[0]) ** p, ls, color="k", lw=1, label=f"reference slope {p}")
ax.set(xlabel="step h = T / L", ylabel=r"$\|Z_L - Z_{\mathrm{ref}}(T)\|_F$",
       title="error of L split blocks against the full flow")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8);

assert abs(slopes["lie", "rk4"] - 1) < 0.2
assert abs(slopes["strang", "rk4"] - 2) < 0.2
assert abs(slopes["lie", "euler"] - 1) < 0.2
assert abs(slopes["strang", "euler"] - 1) < 0.2

# %% [markdown]
# ## The effect of the A-integrator
#
# Strang's symmetry cancels the leading splitting error, but only if each half-step of A
# is itself accurate to second order. One Euler step has a local error $O(h^2)$ per
# half-step, which accumulates to $O(h)$ over $T/h$ blocks: Strang with Euler is first
# order (though with a smaller constant than Lie). Any A-integrator of order $\ge 2$
# (Heun, RK4) restores order 2. Accuracy is not free: the right panel counts the
# attention evaluations (RK stages) spent.

# %%
stages = {"euler": 1, "heun": 2, "rk4": 4}
calls = {(s, i): Ls * stages[i] * (1 if s == "lie" else 2) for (s, i) in errors}
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
for integrator in ("euler", "heun", "rk4"):
    for scheme in ("lie", "strang"):
        key = (scheme, integrator)
        label = f"{scheme.capitalize()}, A by {integrator} (slope {slopes[key]:.2f})"
        style = dict(color=method_color(scheme), **A_STYLE[integrator])
        axes[0].loglog(hs, errors[key], label=label, **style)
        axes[1].loglog(calls[key], errors[key], **style)
axes[0].set(xlabel="step h", ylabel="error", title="order: set by the scheme AND the A-integrator")
axes[1].set(xlabel="attention evaluations over [0, T]", ylabel="error", title="error against cost")
for ax in axes:
    ax.grid(alpha=0.3, which="both")
axes[0].legend(fontsize=7);
assert abs(slopes["strang", "heun"] - 2) < 0.2
assert np.all(errors["strang", "rk4"] < 0.1 * errors["lie", "rk4"])

# %% [markdown]
# ## The same for self-attention (eq. 10)
#
# The quadratic model splits the same way: A is $\dot Z = -(\mathrm{SA} + \mathrm{SA}^\ast)(Z)$,
# B is $\dot Z = (C + C^\top) Z\theta$, linear in $Z$ and solved exactly in the eigenbases of
# $C + C^\top$ and $\theta$ (`fa.quadratic_B_exact`). The block of eq. (10) is
# `BlockConfig(model="quadratic")`, and the measured orders are the same.

# %%
B, n_tok = 2, 4
Zq0 = rng.normal(size=(B, n_tok, d))                          # 2 sequences of 4 tokens in R^3
phi = np.tril(0.7 * rng.normal(size=(d, d)))
theta_q = fa.theta_from_phi(phi)
Cq = np.stack([fa.one_hot(rng.integers(0, n_tok, size=n_tok), n_tok) for _ in range(B)])
Tq, Lq = 0.5, np.array([16, 32, 64, 128])
Zq_ref = fa.integrate(fa.quadratic_field(theta_q, Cq), Zq0, Tq, 4000, "rk4")

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
for key in [("lie", "rk4"), ("strang", "rk4"), ("lie", "euler"), ("strang", "euler")]:
    block = make_block(BlockConfig(model="quadratic", scheme=key[0], integrator=key[1], targets="labels"))
    errs = []
    for L in Lq:
        block = make_block(block.config.replace(h=Tq / L))
        Z = Zq0
        for _ in range(L):
            Z, _ = block.forward(Z, {"phi": phi}, Cq)
        errs.append(np.linalg.norm(Z - Zq_ref))
    p = float(np.polyfit(np.log(Tq / Lq), np.log(errs), 1)[0])
    ax.loglog(Tq / Lq, errs, color=method_color(key[0]), **A_STYLE[key[1]],
              label=f"{key[0].capitalize()}, A by {key[1]}: slope {p:.2f}")
    assert abs(p - (2 if key == ("strang", "rk4") else 1)) < 0.2
ax.set(xlabel="step h", ylabel="error", title="self-attention blocks (eq. 10) against the full flow")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8);

# %% [markdown]
# ## Why one Euler step of the split flow IS a transformer block, and why it is first order
#
# Read eq. (8) again with a transformer in mind:
#
# 1. $Z_{l+\frac12} = Z_l - h\,\mathrm{CA}(Z_l,\theta)$ is one **cross-attention** call
#    (queries $Z_l$, keys = values = $\theta$, a scaled output) added to its input: an
#    attention layer with a **residual connection**. The residual connection is not a
#    design choice here: it *is* the explicit Euler method, $Z + h\,f(Z)$.
# 2. $Z_{l+1} = Z_{l+\frac12} + h\,C\theta$ is a **linear map** of the keys/values by the
#    targets, again added to its input: the second residual sub-layer. For the linear model
#    the B sub-flow is constant in $Z$, so its exact solution and its Euler step coincide.
#
# Stacking $L$ blocks with weights tied across blocks (one $\theta$) integrates the gradient
# flow (6) up to time $T = Lh$: depth is time.
#
# **Why first order.** Two errors enter each block, each $O(h^2)$ locally:
#
# * the *splitting* error: A and B do not commute, and $e^{hB}e^{hA} = e^{h(A+B) + \frac{h^2}{2}[B,A] + \dots}$
#   (Baker–Campbell–Hausdorff), so Lie is off by $O(h^2)$ per step; Strang's symmetric
#   arrangement cancels this term, leaving $O(h^3)$;
# * the *integration* error of A: one Euler step is exact only to $O(h^2)$ per step, in
#   Lie and Strang alike.
#
# Over $L = T/h$ blocks, local errors $O(h^2)$ add up to a global error $O(h)$. So the plain
# transformer block (Lie + Euler) is a first-order method, and merely rearranging it into
# Strang form does not help: the Euler step for attention caps the order at 1. Only a
# better attention integrator (Heun, RK4: several attention calls per block) together with
# the symmetric splitting reaches order 2, as measured above.

# %% [markdown]
# ## What to take away
#
# * Splitting the gradient flow into attention (A) and label forcing (B) gives blocks; with
#   one Euler step for A the Lie block is eq. (8): attention + residual, then a linear map
#   + residual.
# * Measured against the full flow: Lie is first order, Strang second order **when A is
#   integrated to at least second order**; with one Euler step for A both are first order.
# * A transformer block is a first-order time step of a gradient flow; the residual
#   connection is the Euler method.
