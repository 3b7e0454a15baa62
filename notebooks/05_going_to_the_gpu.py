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
# # 5. Going to the GPU
#
# Every array operation in `flowattn_np` goes through one switch: the **backend**, NumPy
# by default or CuPy on an NVIDIA GPU. The same code, the same seeds and the same
# hand-written backward passes run on both. This notebook shows the three ways to choose
# the backend, how arrays move between host and device, the error you get when CuPy or a
# GPU is missing, and times one training step on NumPy and (where a GPU is present) on
# CuPy. On a machine without a GPU it says so and runs only the NumPy half.

# %%
import os
import subprocess
import sys
import time

import numpy as np
import matplotlib.pyplot as plt

import flowattn_np as fa
from flowattn_np import BlockConfig, Network, NetworkConfig, synchronize, Adam, method_color

print("active backend:", fa.get_backend())

# %% [markdown]
# ## Three ways to choose the backend
#
# In order of precedence:
#
# 1. `with fa.use_backend("cupy"): ...`: for one block of code; the previous backend comes
#    back on exit, even after an exception;
# 2. `fa.set_backend("cupy")`: for the rest of the session (returns the previous name);
# 3. the environment variable `FLOWATTN_BACKEND=cupy`, read once, on first use.
#
# Asking for CuPy where it cannot work raises `fa.BackendError` at once, with the install
# hint, and leaves the active backend unchanged.

# %%
previous = fa.set_backend("numpy")
print("set_backend('numpy'): previous backend was", previous)

try:
    with fa.use_backend("cupy"):
        pass
    HAVE_GPU = True
    print("CuPy and a CUDA GPU are available.")
except fa.BackendError as err:
    HAVE_GPU = False
    print("BackendError:", err)
print("active backend afterwards:", fa.get_backend())
assert fa.get_backend() == "numpy"

# %% [markdown]
# The environment variable is read by a fresh process (here a child Python), so it is the
# way to switch a script or `python -m flowattn_np reproduce` without touching its code.

# %%
pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
child_path = os.pathsep.join([pkg_root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
for value in ("numpy", "cupy"):
    env = dict(os.environ, FLOWATTN_BACKEND=value, PYTHONPATH=child_path)
    run = subprocess.run([sys.executable, "-c", "import flowattn_np as fa; print(fa.get_backend())"],
                         env=env, capture_output=True, text=True)
    answer = run.stdout.strip() or run.stderr.strip().splitlines()[-1]
    print(f"FLOWATTN_BACKEND={value}: {answer}")
    if value == "numpy":
        assert answer == "numpy"

# %% [markdown]
# ## Moving arrays
#
# `fa.asarray(a)` moves an array to the active backend (a no-op if it is already there);
# `fa.to_numpy(a)` brings any array back to the host, e.g. for plotting. Every function
# takes its array module from its inputs, and mixing a host array with a device array
# raises a `BackendError` naming both, instead of failing somewhere deep inside.

# %%
rng = np.random.default_rng(0)
host = rng.normal(size=(3, 4)).astype(np.float32)
on_backend = fa.asarray(host)                 # NumPy here; a cupy.ndarray under use_backend("cupy")
back = fa.to_numpy(on_backend)
print(type(on_backend).__module__, type(back).__module__, back.dtype)
assert np.array_equal(back, host)

# %% [markdown]
# ## Timing one training step
#
# The step we time: forward, hand-written backward and an Adam update
# (`net.loss_and_grads` + `opt.step`) of a label-free network with $L = 4$ tied
# learned-oracle blocks (eq. 8 with $\hat C(Z)$), on a batch of 256 random rows of
# Fashion-MNIST size (784 features, 10 classes), in float32.

# %%
BATCH, FEATURES, CLASSES = 256, 784, 10
X_host = rng.random((BATCH, FEATURES), dtype=np.float32)
y_host = rng.integers(0, CLASSES, size=BATCH)

def make_step():
    """A fresh network, optimiser and batch on the ACTIVE backend."""
    block = BlockConfig(model="linear", targets="learned", h=0.1, learn_h=True)
    net = Network(NetworkConfig(n_inputs=FEATURES, n_classes=CLASSES, layers=4, block=block,
                                tied=True, dtype="float32"), seed=0)
    return net, Adam(net.params, lr=1e-3), fa.asarray(X_host), fa.asarray(y_host)

def train_step(net, opt, X, y):
    loss, grads, _ = net.loss_and_grads(X, y)
    opt.step(grads)
    return loss

net, opt, X, y = make_step()
print(net.describe())
first_loss = float(train_step(net, opt, X, y))
for _ in range(3):                            # warm-up
    train_step(net, opt, X, y)
times = []
for _ in range(30):
    t0 = time.perf_counter()
    train_step(net, opt, X, y)
    times.append(time.perf_counter() - t0)
numpy_ms = 1e3 * np.median(times)
print(f"NumPy: {numpy_ms:.2f} ms per step (median of 30), {BATCH / np.median(times):.0f} rows/s; "
      f"dtype {net.params['theta'].dtype}")
assert net.params["theta"].dtype == np.float32 and np.isfinite(first_loss)

# %% [markdown]
# ## On the GPU: synchronise before you read the clock
#
# GPU calls are **asynchronous**: a CuPy operation only *queues* a kernel on the device and
# returns to Python at once. Reading `time.perf_counter()` right after the step measures
# how long it took to *launch* the work, not to do it. So either synchronise the device
# before each clock reading (`fa.synchronize()`, which waits for the
# current CUDA stream), or use `cupyx.profiler.benchmark`, which records CUDA events around
# every repetition and reports the GPU time. Both appear below; the first GPU calls also
# compile and cache kernels, hence the warm-up.

# %%
if not HAVE_GPU:
    print("No usable CuPy/GPU on this machine: skipping the CuPy half (only the NumPy timing above ran).")
else:
    from cupyx.profiler import benchmark

    with fa.use_backend("cupy"):
        net_g, opt_g, X_g, y_g = make_step()
        gpu_first_loss = float(fa.to_numpy(train_step(net_g, opt_g, X_g, y_g)))   # a copy to the host: a sync
        print(f"same seed, same first loss: NumPy {first_loss:.6f}, CuPy {gpu_first_loss:.6f}")
        assert abs(gpu_first_loss - first_loss) < 1e-4 * max(1.0, abs(first_loss))

        result = benchmark(train_step, (net_g, opt_g, X_g, y_g), n_repeat=50, n_warmup=5)
        print(result)
        cupy_ms = 1e3 * float(np.median(result.gpu_times[0]))

        synchronize()                          # wait for the queue to empty ...
        t0 = time.perf_counter()
        for _ in range(50):
            train_step(net_g, opt_g, X_g, y_g)
        synchronize()                          # ... and for the last step to finish
        synced_ms = 1e3 * (time.perf_counter() - t0) / 50
    print(f"CuPy: {cupy_ms:.2f} ms per step (benchmark, GPU time), {synced_ms:.2f} ms (synchronised wall clock)")
    print(f"speed-up over NumPy: {numpy_ms / cupy_ms:.1f}x")

# %% [markdown]
# ## Host and device arrays do not mix
#
# CuPy refuses NumPy arrays in its functions. The package checks where the arrays live at
# its boundary (from their types, without waiting for the GPU) and names the culprit: here
# a NumPy batch handed to a network whose parameters are on the GPU.

# %%
if HAVE_GPU:
    with fa.use_backend("cupy"):
        try:
            net_g.loss_and_grads(X_host, y_g)
        except fa.BackendError as err:
            print("BackendError:", err)
        loss_g, _, _ = net_g.loss_and_grads(fa.asarray(X_host), y_g)   # moved first: fine
else:
    print("No GPU: on one, a NumPy batch given to a network on the GPU raises a BackendError naming X.")

# %%
labels, values = ["NumPy (CPU)"], [numpy_ms]
if HAVE_GPU:
    labels += ["CuPy (GPU)"]
    values += [cupy_ms]
fig, ax = plt.subplots(figsize=(5, 2.2 + 0.4 * len(values)), layout="constrained")
bars = ax.barh(labels, values, color=[method_color("numpy"), method_color("cupy")][:len(values)])
ax.bar_label(bars, fmt="%.2f ms", padding=3)       # each value just right of its bar
ax.set_xlim(0, 1.3 * max(values))                  # room for the value labels inside the axes
ax.set(xlabel="ms per training step (lower is better)", ylabel="backend",
       title="L = 4 learned-oracle blocks,\nbatch 256 x 784, float32");

# %% [markdown]
# ## What to take away
#
# * One switch: `fa.set_backend`, `with fa.use_backend(...)` or `FLOWATTN_BACKEND`; the same
#   code, seeds and backward passes run on NumPy and CuPy.
# * `fa.asarray` / `fa.to_numpy` move arrays; a missing CuPy or GPU raises
#   `fa.BackendError` with the fix, and the active backend stays as it was; a host array
#   handed to a network on the GPU raises a `fa.BackendError` naming it.
# * GPU work is asynchronous: time it with `cupyx.profiler.benchmark` or synchronise before
#   reading the clock, and warm up first.
