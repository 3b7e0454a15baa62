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
# # 7. From the flow to a transformer block
#
# A GPT-2 block is two lines:
#
# ```python
# x = x + attn(ln_1(x))      # attention sub-layer with a residual connection
# x = x + mlp(ln_2(x))       # MLP sub-layer with a residual connection
# ```
#
# Notebooks 1–3 derived the first line: the gradient of the cross-entropy of a multinomial
# regression over the features is cross-attention, and one Euler step of the gradient flow
# is "attention + residual". The paper's block (eq. 8) then adds $hC\theta$, a term driven by
# the **labels** $C$. Its conclusion proposes the missing piece: let an MLP provide the
# labels. This notebook puts an MLP oracle $\hat C(Z)=\sigma(\mathrm{gelu}(ZW_1^\top+b_1)W_2^\top+b_2)$
# in place of $C$, writes the GPT-2 block line by line beside the equation that produces
# each line, checks numerically that the two are the same function, trains a small
# network of such blocks on Fashion-MNIST, and follows one image through the blocks.

# %%
import math
import time

import numpy as np
import matplotlib.pyplot as plt

import flowattn_np as fa
from flowattn_np import (
    BlockConfig, Network, NetworkConfig, make_block, method_color, CLASS_NAMES, add_noise,
    load_fashion_mnist, MLPClassifier, MLPClassifierConfig, Adam, Cosine, evaluate, fit,
)

t_start = time.perf_counter()
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. The block, line by line
#
# One Lie step of the split flow with Euler for the attention sub-flow A and the MLP
# oracle evaluated where the label sub-flow B starts (`BlockConfig(targets="mlp")`):
#
# | GPT-2 | here | where it comes from |
# |---|---|---|
# | `a = attn(x)` | $-h\,\mathrm{CA}(Z,\theta)=-h\,\sigma(Z\theta^\top)\,\theta$ | the gradient of $\ell$ in $Z$ (eq. 4): cross-attention, queries $Z$, keys = values = $\theta$ |
# | `x = x + a` | $Z_{1/2}=Z-h\,\mathrm{CA}(Z,\theta)$ | the residual is the Euler step of the A sub-flow $\dot Z=-\mathrm{CA}$ |
# | `m = mlp(x)` | $h\,\hat C(Z_{1/2})\,\theta$, $\hat C=\sigma(\mathrm{gelu}(Z_{1/2}W_1^\top+b_1)W_2^\top+b_2)$ | the label sub-flow B, $\dot Z=C\theta$, with the MLP oracle in place of the labels |
# | `x = x + m` | $Z_{l+1}=Z_{1/2}+h\,\hat C(Z_{1/2})\,\theta$ | the residual is the exact step of B with $\hat C$ held fixed |
# | `ln_1`, `ln_2` | the retraction $R(z)=r\,z/\lVert z\rVert$ onto a sphere | normalisation read as a constraint of the features to a sphere (the paper's discussion; section 3 below) |
#
# The MLP sees the output of the attention sub-layer, as in GPT-2, because the oracle is
# evaluated where the B sub-step needs it. Below, a GPT-2 style block is written with
# GPT-2's names (`c_fc`, `c_proj`) in plain NumPy, its weights are taken from the flow's
# parameters, and it is compared with the package's block.

# %%
def gelu(x):
    """GPT-2's GELU (the tanh approximation)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gpt2_style_block(x, w):
    """x: (n, d) rows. Attention to m learned prototypes, then an MLP, each with a residual."""
    att = softmax(x @ w["keys"].T)                    # (n, m) attention weights
    x = x + w["h"] * (att @ -w["values"])             # x = x + attn(x)
    hidden = gelu(x @ w["c_fc"].T + w["b_fc"])        # (n, k)
    out = softmax(hidden @ w["c_proj"].T + w["b_proj"]) @ w["out"]
    return x + w["h"] * out                           # x = x + mlp(x)


rng = np.random.default_rng(0)
n, d, m, k, h = 6, 8, 5, 16, 0.3
config = BlockConfig(model="linear", targets="mlp", mlp_hidden=k, activation="gelu", h=h)
print(config.describe())
params = {"theta": rng.normal(size=(m, d)), "W1": rng.normal(size=(k, d)) / d ** 0.5,
          "b1": 0.1 * rng.normal(size=k), "W2": rng.normal(size=(m, k)) / k ** 0.5,
          "b2": 0.1 * rng.normal(size=m)}
Z = rng.normal(size=(n, d))

w = {"keys": params["theta"], "values": params["theta"], "h": h,           # attention: K = V = theta
     "c_fc": params["W1"], "b_fc": params["b1"],                            # MLP: first layer
     "c_proj": params["W2"], "b_proj": params["b2"], "out": params["theta"]}  # logits, then theta
Z_gpt2 = gpt2_style_block(Z, w)
Z_flow, _ = make_block(config).forward(Z, params)
print("max |GPT-2 style block - split-flow block| =", np.abs(Z_gpt2 - Z_flow).max())
assert np.abs(Z_gpt2 - Z_flow).max() < 1e-12

# %% [markdown]
# The same function. What the derivation fixes, where GPT-2 learns freely:
#
# * **keys = values = $\theta$**, the rows of the classifier's own head, and the attention
#   output is *subtracted*: the A sub-step descends the log-sum-exp of the head's logits;
# * **the MLP outputs a distribution**: its logits go through a softmax over the $m$ classes
#   (the targets $\hat C$) before $\theta$ maps them back to feature space;
# * **one scalar step $h$** scales both sub-layers; trained end to end, its value and sign are
#   a finding (the package never clamps it);
# * for images each row attends to the $m$ class prototypes (cross-attention, the linear model);
#   for sequences the quadratic model gives self-attention, and the MLP oracle becomes a
#   token-wise MLP $M$ with targets $\sigma(M(Z)Z^\top)$ (`BlockConfig(model="quadratic", targets="mlp")`).
#
# The backward pass of this block is written by hand (docs/backward.md) and checked against
# central differences; here one check, for the gradient in $Z$ and in $W_1$:

# %%
block = make_block(config)
U = rng.normal(size=Z.shape)
_, cache = block.forward(Z, params)
grads = block.backward(U, cache)  # Grads: .Z (input), .params (by name), .t (in h), .C (targets)
print(fa.gradcheck(lambda Zx: (U * block.forward(Zx, params)[0]).sum(), Z, grads.Z))
print(fa.gradcheck(lambda W1: (U * block.forward(Z, {**params, "W1": W1})[0]).sum(),
                   params["W1"], grads.params["W1"]))

# %% [markdown]
# ## 2. A small network trained live
#
# $L = 3$ tied blocks (one $\theta$, one MLP for every block and the head), learned $h$,
# trained on a 6 000-image subset of Fashion-MNIST for 3 epochs with Adam. The MLP oracle is
# a classifier by itself, so the network is compared with **the same MLP alone**,
# $\sigma(\mathrm{MLP}(X))$, trained the same way, and with multinomial regression ($L=0$).
# Every block is label-free: `predict` takes no labels.

# %%
ds = load_fashion_mnist(progress=False)
N_TRAIN, EPOCHS, BATCH, K = 6000, 3, 128, 64
X, y = ds.X_train[:N_TRAIN], ds.y_train[:N_TRAIN]
X_test, y_test = ds.X_test[:2000], ds.y_test[:2000]
tests = {s: add_noise(X_test, s, seed=7) for s in (0.0, 0.5)}


def train(model, seed=0):
    steps = EPOCHS * math.ceil(N_TRAIN / BATCH)
    opt = Adam(model.params, lr=3e-3, schedule=Cosine(steps))
    hist = fit(model, X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=opt, seed=seed, progress=False)
    return model, hist


block_cfg = BlockConfig(targets="mlp", mlp_hidden=K, activation="gelu", h=0.1, learn_h=True)
models = {
    "MLP oracle network, L = 3": Network(NetworkConfig(n_inputs=784, n_classes=10, layers=3,
                                                       block=block_cfg), seed=0),
    "MLP alone (same width)": MLPClassifier(MLPClassifierConfig(784, 10, hidden=K), seed=0),
    "multinomial regression": Network(NetworkConfig(n_inputs=784, n_classes=10, layers=0), seed=0),
}
colours = {name: method_color(key) for name, key in zip(models, ("mlp oracle", "mlp alone", "regression"))}
histories = {}
for name, model in models.items():
    t = time.perf_counter()
    _, histories[name] = train(model)
    acc = {s: 100 * evaluate(model, Xs, y_test)["accuracy"] for s, Xs in tests.items()}
    print(f"{name:28s} test accuracy: clean {acc[0.0]:.1f} %, noise 0.5 {acc[0.5]:.1f} %  "
          f"({time.perf_counter() - t:.1f} s)")
net = models["MLP oracle network, L = 3"]
print("learned h =", net.step_sizes())
predicted = fa.to_numpy(net.predict(fa.asarray(X_test)))   # no labels
print(f"accuracy from predict (labels only used to score): {100 * (predicted == y_test).mean():.1f} %")

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.2), layout="constrained")
for name, hist in histories.items():
    ax.plot(range(1, EPOCHS + 1), hist.column("train_loss"), marker="o", label=name, color=colours[name])
ax.set_xlabel("epoch")
ax.set_ylabel("training cross-entropy")
ax.set_xticks(range(1, EPOCHS + 1))
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
ax.set_title("training curves (6 000 images)");

# %% [markdown]
# Whether the attention steps add anything beyond the MLP they contain is what part 5 of
# `python -m flowattn_np reproduce --parts 5` measures, over widths, depths, noise and seeds
# (docs/results.md). This notebook's run is too small to decide it.
#
# ## 3. One image through the blocks
#
# A noisy test image, block by block: the features $Z_l$ (784 numbers, drawn as an image),
# the update of the attention sub-layer $Z_{l+1/2}-Z_l=-h\,\mathrm{CA}(Z_l,\theta)$, the
# update of the MLP sub-layer $Z_{l+1}-Z_{l+1/2}=h\,\hat C(Z_{l+1/2})\,\theta$, the MLP
# oracle's targets $\hat C(Z_{l+1/2})$ and the head's class probabilities
# $\sigma(Z_{l+1}\theta^\top)$. Both updates are combinations of the rows of $\theta$
# (the class prototypes): the attention one pushes away from the prototypes the image
# already attends to, the MLP one pulls toward the classes the oracle names.

# %%
idx = int(np.flatnonzero(y_test == 6)[0])                       # the first shirt
z0 = fa.asarray(add_noise(X_test[idx:idx + 1], 0.3, seed=3))
theta, p = net.params["theta"], net.block_params(0)
h_learned = float(p["h"])
rows = []
Zl = z0
for layer in range(net.config.layers):
    Z_half = Zl - h_learned * fa.cross_attention(Zl, theta)
    C_hat, _ = fa.mlp_oracle(Z_half, p["W1"], p["b1"], p["W2"], p["b2"], "gelu")
    Z_next = Z_half + h_learned * C_hat @ theta
    rows.append((Zl, Z_half - Zl, Z_next - Z_half, C_hat, fa.softmax(Z_next @ theta.T)))
    Zl = Z_next
assert np.allclose(fa.to_numpy(Zl), fa.to_numpy(net.features(z0)[-1]), atol=1e-5)

fig, axes = plt.subplots(len(rows), 5, figsize=(14, 2.5 * len(rows)), layout="constrained")
for r, (Za, dA, dB, C_hat, probs) in enumerate(rows):
    images = [(Za, f"$Z_{r}$", "gray", None),
              (dA, "attention update $-h\\,CA(Z_{%d},\\theta)$" % r, "RdBu_r", True),
              (dB, "MLP update $h\\,\\hat C\\,\\theta$", "RdBu_r", True)]
    for c, (Zs, title, cmap, centred) in enumerate(images):
        a = fa.to_numpy(Zs).reshape(28, 28)
        lim = np.abs(a).max() if centred else None
        im = axes[r, c].imshow(a, cmap=cmap, vmin=-lim if centred else None, vmax=lim)
        axes[r, c].set_title(title, fontsize=9)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        fig.colorbar(im, ax=axes[r, c], shrink=0.8).set_label("feature value" if c == 0 else "change")
    bars = [(C_hat, "MLP oracle $\\hat C(Z_{%d/2})$" % (2 * r + 1), "C0"),
            (probs, "head $\\sigma(Z_{%d}\\theta^\\top)$" % (r + 1), "C1")]
    for c, (vals, title, colour) in enumerate(bars, start=3):
        axes[r, c].bar(range(10), fa.to_numpy(vals)[0], color=colour)
        axes[r, c].set_ylim(0, 1)
        axes[r, c].set_ylabel("probability")
        axes[r, c].set_xlabel("class")
        axes[r, c].set_title(title, fontsize=9)
        axes[r, c].set_xticks(range(10), [n[:7] for n in CLASS_NAMES], rotation=90, fontsize=7)
fig.suptitle(f"a noisy '{CLASS_NAMES[6]}' (sigma = 0.3) through {len(rows)} blocks, learned h = {h_learned:+.3f}");

# %% [markdown]
# Compare the oracle's bars with the head's: each MLP update pulls the head toward the
# classes the oracle names, right or wrong, while the attention update is small and does
# not depend on any label. A label-free block can only be as good as its oracle, which is
# why the MLP alone is the control that matters.
#
# ## 4. The missing line: normalisation
#
# GPT-2 normalises before each sub-layer (`ln_1`, `ln_2`). In the flow picture
# normalisation is a constraint: the features live on a sphere $\lVert z\rVert=r$, the flow
# is the projected (Riemannian) gradient flow on it, and the normalisation layer is the
# retraction $R(z)=r\,z/\lVert z\rVert$ that brings an Euler step back onto the sphere. A
# *post-norm* block $R(z-hv)$ is then exactly a projected step with a per-row step size,
# while GPT-2's *pre-norm* layout $z+h\,f(R(z))$ is not a flow on the sphere (the residual
# stream keeps its norm). docs/math.md writes these out. The normalisation combines with
# any source of targets: `BlockConfig(targets="mlp", norm="layer", norm_place="pre")`
# evaluates the MLP on the normalised stream, and with Lie splitting and Euler for A it is
# GPT-2's block with `ln_1` and `ln_2` (LayerNorm without its gain and bias), checked below.

# %%
z = fa.to_numpy(z0)[0]
r = math.sqrt(z.size)
print(f"|z_0| = {np.linalg.norm(z):.2f}; after the retraction R(z) = r z / |z|: "
      f"{np.linalg.norm(r * z / np.linalg.norm(z)):.2f} = sqrt(d) = {r:.2f}")


def ln(x):
    """LayerNorm without gain and bias: mean 0 and |x| = sqrt(d) per row (the retraction R)."""
    u = x - x.mean(axis=-1, keepdims=True)
    return math.sqrt(x.shape[-1]) * u / np.linalg.norm(u, axis=-1, keepdims=True)


def gpt2_pre_norm_block(x, w):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), with the weights of the block above."""
    x = x + w["h"] * (softmax(ln(x) @ w["keys"].T) @ -w["values"])
    hidden = gelu(ln(x) @ w["c_fc"].T + w["b_fc"])
    return x + w["h"] * (softmax(hidden @ w["c_proj"].T + w["b_proj"]) @ w["out"])


pre_ln = config.replace(norm="layer", norm_place="pre")
print(pre_ln.describe())
Z_pre, _ = make_block(pre_ln).forward(Z, params)
print("max |GPT-2 pre-LN block - normalised split-flow block| =", np.abs(gpt2_pre_norm_block(Z, w) - Z_pre).max())
assert np.abs(gpt2_pre_norm_block(Z, w) - Z_pre).max() < 1e-12
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
