#!/usr/bin/env python
"""Time one SGD training step of the Fashion-MNIST network: NumPy vs PyTorch eager (CPU),
achieved GFLOP/s against NumPy's own matmul speed, and optionally CuPy on a GPU.

One step = forward + hand-derived backward (``Network.loss_and_grads``) + SGD update
(momentum 0.9) of

    NetworkConfig(n_inputs=784, n_classes=10, layers=4,
                  block=BlockConfig(model="linear", scheme="lie", integrator="euler",
                                    targets="learned", learn_h=True, h=0.1),
                  tied=True, dtype="float32")

on a batch of random float32 rows in [0, 1) with integer labels. The PyTorch model is
the same network written with eager autograd, from the same initial parameters and the
same batch; the script checks that both give the same loss and gradients (and the same
parameters after two SGD steps) BEFORE timing, and exits 1 if they disagree.

Run ``python benchmarks/bench_train_step.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    MALLOC_TUNED_ENV,
    ForeignLoad,
    environment,
    limit_blas_threads,
    load_note,
    make_network,
    minor_faults,
    ms,
    numpy_blas_threads,
    print_environment,
    random_batch,
    run_worker,
    wait_for_quiet,
    summary,
    time_calls,
    write_json,
)

from flowattn_np.training.optim import SGD  # noqa: E402

RTOL, ATOL_REL = 1e-4, 1e-5  # gradient agreement: |a - b| <= RTOL |b| + ATOL_REL max|b|


# ---------------------------------------------------------------- FLOP count

def matmul_products(n, d, m, layers, k_rows):
    """The matrix products of one forward + backward, as they are in the code.

    Per block (fast/eq8.py, FusedCrossAttentionBlock.forward / backward), with
    keys = [W; theta] (k_rows = 2m rows: the learned oracle's keys and the attention keys):
      forward   S     = Z[n,d] @ keys^T[d,2m]         scores of oracle and attention
                out   = R[n,m] @ theta[m,d]           R = C_hat - P
      backward  G     = Z_bar[n,d] @ theta^T[d,m]
                        R^T[m,n] @ Z_bar[n,d]         theta gradient (h R^T Z_bar)
                Z_in  = S_bar[n,2m] @ keys[2m,d]
                keys_bar = S_bar^T[2m,n] @ Z[n,d]     W and theta gradients
    Head (network.py, forward / backward):
                logits = Z[n,d] @ theta^T[d,m]
                theta_bar = logits_bar^T[m,n] @ Z[n,d]
                Z_bar  = logits_bar[n,m] @ theta[m,d]
    Elementwise work (softmax, residual adds, SGD update) is not counted.

    Returns [(name, M, K, N, count, a_transposed, b_transposed)] for A[M,K] @ B[K,N]:
    *_transposed says the operand is a transposed (Fortran-order) view, as in the code.
    """
    L = layers
    return [
        ("block fwd  Z @ K^T", n, d, k_rows, L, False, True),
        ("block fwd  R @ theta", n, m, d, L, False, False),
        ("block bwd  Z_bar @ theta^T", n, d, m, L, False, True),
        ("block bwd  R^T @ Z_bar", m, n, d, L, True, False),
        ("block bwd  S_bar @ K", n, k_rows, d, L, False, False),
        ("block bwd  S_bar^T @ Z", k_rows, n, d, L, True, False),
        ("head fwd   Z @ theta^T", n, d, m, 1, False, True),
        ("head bwd   logits_bar^T @ Z", m, n, d, 1, True, False),
        ("head bwd   logits_bar @ theta", n, m, d, 1, False, False),
    ]


def flops_of(products):
    return sum(2 * M * K * N * count for _, M, K, N, count, _, _ in products)


def time_matmuls(products, reps, xp=np, sync=None):
    """Median seconds of each product shape timed alone (same dtype and operand layouts):
    ``a @ b`` (a fresh output array, as in the code) and ``matmul(a, b, out=c)`` (into a
    preallocated output: the BLAS compute alone, the reference for the GFLOP/s ratio)."""
    rng = np.random.default_rng(1)
    out = []
    for name, M, K, N, count, at, bt in products:
        A = rng.random((K, M) if at else (M, K), dtype=np.float32)
        B = rng.random((N, K) if bt else (K, N), dtype=np.float32)
        A, B = xp.asarray(A), xp.asarray(B)
        a, b = (A.T if at else A), (B.T if bt else B)
        c = xp.empty((M, N), dtype=np.float32)
        warm = max(5, reps // 10)
        t_new = summary(time_calls(lambda: a @ b, reps, warmup=warm, sync=sync))["median"]
        t_out = summary(time_calls(lambda: xp.matmul(a, b, out=c), reps, warmup=warm, sync=sync))["median"]
        out.append({"product": name, "shape": f"[{M},{K}]@[{K},{N}]", "count": count,
                    "seconds_each": t_out, "gflops_each": 2 * M * K * N / t_out / 1e9,
                    "seconds_each_fresh_output": t_new})
    return out


# ---------------------------------------------------------------- NumPy step

def numpy_step_fn(net, opt, X, y):
    def step():
        loss, grads, _ = net.loss_and_grads(X, y)
        opt.step(grads)
        return loss
    return step


# ---------------------------------------------------------------- PyTorch model

def TorchModel(params, layers, lr, momentum=0.9, dtype=None):
    """The same network in PyTorch eager autograd (CPU), tied weights (_torch_refs.LinearEager):

        Z_0 = X;  Z <- Z + h (softmax(Z W^T + b) - softmax(Z theta^T)) theta   (L blocks)
        logits = Z theta^T;  loss = mean cross-entropy
    """
    import torch
    from _torch_refs import LinearEager

    return LinearEager(params, {"layers": layers}, dtype or torch.float32, lr, momentum)


def _max_rel(a, b):
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def _agree(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= RTOL * np.abs(b) + ATOL_REL * np.abs(b).max()))


def check_against_torch(layers, X, y, lr):
    """Loss, gradients and the parameters after two SGD steps: NumPy vs PyTorch float32
    (and both vs a PyTorch float64 reference, for scale). Returns a dict with 'ok'."""
    import torch

    net = make_network(layers)
    tm = TorchModel(net.params, layers, lr)
    tm64 = TorchModel(net.params, layers, lr, dtype=torch.float64)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    loss_np, grads_np, logits_np = net.loss_and_grads(X, y)
    loss_t, grads_t = tm.loss_and_grads(Xt, yt)
    loss_64, grads_64 = tm64.loss_and_grads(Xt.double(), yt)
    loss_t, loss_64 = loss_t.detach(), loss_64.detach()
    res = {"loss_numpy": float(loss_np), "loss_torch": float(loss_t), "loss_torch_f64": float(loss_64),
           "dtypes_numpy": sorted({str(g.dtype) for g in grads_np.values()} | {str(loss_np.dtype)}),
           "grads": {}, "params_after_2_steps": {}}
    ok = abs(float(loss_np) - float(loss_t)) <= RTOL * abs(float(loss_t)) + 1e-6
    res["loss_rel_diff"] = abs(float(loss_np) - float(loss_t)) / max(abs(float(loss_t)), 1e-30)
    for k in ("theta", "W", "b", "h"):
        g_np, g_t, g_64 = grads_np[k], grads_t[k].numpy(), grads_64[k].numpy()
        agree = _agree(g_np, g_t) and g_np.shape == g_t.shape
        ok &= agree
        res["grads"][k] = {"max_rel_numpy_vs_torch": _max_rel(g_np, g_t),
                           "max_rel_numpy_vs_f64": _max_rel(g_np, g_64),
                           "max_rel_torch_vs_f64": _max_rel(g_t, g_64),
                           "scale": float(np.abs(g_t).max()), "agree": agree}
    # two SGD steps each (momentum matters from the second): the same update rule
    opt = SGD(net.params, lr=lr, momentum=0.9)
    for _ in range(2):
        opt.step(net.loss_and_grads(X, y)[1])
        tm.step(Xt, yt)
    for k in ("theta", "W", "b", "h"):
        p_np, p_t = net.params[k], tm.p[k].detach().numpy()
        agree = _agree(p_np, p_t)
        ok &= agree
        res["params_after_2_steps"][k] = {"max_rel_numpy_vs_torch": _max_rel(p_np, p_t), "agree": agree}
    res["ok"] = bool(ok)
    return res


def print_check(res):
    print(f"\nequal-work check, NumPy vs PyTorch float32 (pass: |a-b| <= {RTOL:g}|b| + "
          f"{ATOL_REL:g} max|b|; float64 PyTorch for scale):")
    print(f"  loss   numpy {res['loss_numpy']:.7f}  torch {res['loss_torch']:.7f}  "
          f"f64 {res['loss_torch_f64']:.7f}  rel diff {res['loss_rel_diff']:.2e}")
    print(f"  {'grad':6s} {'max|g|':>10s} {'np vs torch':>12s} {'np vs f64':>10s} {'torch vs f64':>13s}")
    for k, r in res["grads"].items():
        print(f"  {k:6s} {r['scale']:10.3e} {r['max_rel_numpy_vs_torch']:12.2e} "
              f"{r['max_rel_numpy_vs_f64']:10.2e} {r['max_rel_torch_vs_f64']:13.2e}"
              + ("" if r["agree"] else "   DISAGREE"))
    print("  params after 2 SGD steps (momentum 0.9), max rel diff: " + ", ".join(
        f"{k} {r['max_rel_numpy_vs_torch']:.1e}" + ("" if r["agree"] else " DISAGREE")
        for k, r in res["params_after_2_steps"].items()))
    print(f"  numpy dtypes of loss and gradients: {', '.join(res['dtypes_numpy'])}")
    print("  -> " + ("AGREE: the two steps do the same work" if res["ok"] else
                     "DISAGREE: the NumPy and PyTorch steps differ; timings not comparable"))


# ---------------------------------------------------------------- CuPy

TRANSFER_METHODS = ("get", "item", "tolist", "__float__", "__int__", "__bool__", "__index__",
                    "__complex__", "__array__")


class TransferCounter:
    """Counts device-to-host transfers while active: calls of cupy.ndarray.get / item /
    tolist / __float__ / __int__ / __bool__ / __index__ / __complex__ / __array__ and of
    cupy.asnumpy. CuPy >= 13 has a Python-level ``cupy.ndarray`` whose methods can be
    replaced; where they cannot (an older CuPy), a sys.setprofile hook counts calls of C
    methods by name on cupy arrays instead (``float(x)`` then goes uncounted)."""

    def __init__(self, cupy):
        self.cupy = cupy
        self.counts = {}
        self._saved = []
        self._hook = False

    def _wrap(self, owner, name):
        orig = getattr(owner, name)
        own = name in vars(owner)  # defined on owner itself (else inherited: delete on exit)
        counts = self.counts

        def wrapper(*a, **k):
            counts[name] = counts.get(name, 0) + 1
            return orig(*a, **k)

        setattr(owner, name, wrapper)
        self._saved.append((owner, name, orig, own))

    def __enter__(self):
        cp = self.cupy
        unpatched = []
        for name in TRANSFER_METHODS:
            if not hasattr(cp.ndarray, name):
                continue
            try:
                self._wrap(cp.ndarray, name)
            except (TypeError, AttributeError):
                unpatched.append(name)
        self._wrap(cp, "asnumpy")
        if unpatched:
            names, counts, ndarray = set(unpatched), self.counts, cp.ndarray

            def hook(frame, event, arg):
                if event == "c_call" and getattr(arg, "__name__", None) in names \
                        and isinstance(getattr(arg, "__self__", None), ndarray):
                    counts[arg.__name__] = counts.get(arg.__name__, 0) + 1

            sys.setprofile(hook)
            self._hook = True
        self.unpatched = unpatched
        return self

    def __exit__(self, *exc):
        if self._hook:
            sys.setprofile(None)
        for owner, name, orig, own in reversed(self._saved):
            if own:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)
        return False

    @property
    def total(self):
        return sum(self.counts.values())


def cupy_section(args, numpy_times_by_batch):
    """GPU figures, or None with a clear message where CuPy or a GPU is missing."""
    try:
        import flowattn_np as fa
        from flowattn_np.backend import cupy_available
    except ImportError as exc:
        print(f"\nflowattn_np not importable: GPU figures unmeasured ({exc})")
        return None
    if not cupy_available():
        print("\nCuPy/GPU not available: GPU figures unmeasured")
        return None
    import cupy as cp
    sync = cp.cuda.get_current_stream().synchronize
    out = {"device": cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode(),
           "cupy": cp.__version__, "batches": {}}
    print(f"\nCuPy {cp.__version__} on {out['device']}")
    with fa.use_backend("cupy"):
        for batch in sorted({args.batch, args.gpu_batch}):
            X_host, y_host = random_batch(batch, seed=args.seed)
            X, y = cp.asarray(X_host), cp.asarray(y_host)
            net = make_network(args.layers)
            step = numpy_step_fn(net, SGD(net.params, lr=args.lr, momentum=0.9), X, y)
            times = time_calls(step, args.steps, warmup=args.warmup, sync=sync)
            gpu_ms = None
            try:
                from cupyx.profiler import benchmark

                r = benchmark(step, n_repeat=args.steps, n_warmup=args.warmup)
                gpu_ms = float(np.median(r.gpu_times[0])) * 1e3
            except Exception as exc:  # older CuPy without cupyx.profiler
                print(f"  (cupyx.profiler.benchmark unavailable: {exc})")
            sync()
            with TransferCounter(cp) as tc:
                for _ in range(5):
                    step()
                sync()
            loss = float(net.loss(X, y))
            s = summary(times)
            rec = {"wall_ms_median": s["median"] * 1e3, "wall_ms_min": s["min"] * 1e3,
                   "gpu_ms_median": gpu_ms, "d2h_transfers_per_step": tc.total / 5,
                   "d2h_transfer_calls": dict(tc.counts), "unpatchable": tc.unpatched,
                   "loss_after": loss}
            np_s = numpy_times_by_batch.get(batch)
            if np_s is not None:
                rec["numpy_ms_median"] = np_s * 1e3
                rec["speedup_vs_numpy"] = np_s / s["median"]
            out["batches"][batch] = rec
    print(f"  {'batch':>6s} {'wall ms':>9s} {'gpu ms':>8s} {'numpy ms':>9s} {'speedup':>8s} {'D2H/step':>9s}")
    for batch, r in out["batches"].items():
        print(f"  {batch:6d} {r['wall_ms_median']:9.3f} "
              f"{(r['gpu_ms_median'] or float('nan')):8.3f} {r.get('numpy_ms_median', float('nan')):9.3f} "
              f"{r.get('speedup_vs_numpy', float('nan')):7.1f}x {r['d2h_transfers_per_step']:9.1f}")
    big = out["batches"].get(args.gpu_batch, {})
    if "speedup_vs_numpy" in big:
        print(f"  target CuPy >= 20x NumPy at batch {args.gpu_batch}: {big['speedup_vs_numpy']:.1f}x "
              + ("MET" if big["speedup_vs_numpy"] >= 20 else "MISSED"))
    out["d2h_ok"] = all(r["d2h_transfers_per_step"] == 0 for r in out["batches"].values())
    print("  device-to-host transfers inside the step: "
          + ("0 (OK)" if out["d2h_ok"] else "NONZERO: " + "; ".join(
              f"batch {b}: {r['d2h_transfer_calls']}" for b, r in out["batches"].items())))
    return out


# ---------------------------------------------------------------- timing workers

def worker(args):
    """Time one implementation in this (fresh) process; print JSON on the last line."""
    _limiter = limit_blas_threads(args.threads) if args.threads else None  # noqa: F841
    X, y = random_batch(args.batch, seed=args.seed)
    net = make_network(args.layers)
    if args.worker == "numpy":
        step = numpy_step_fn(net, SGD(net.params, lr=args.lr, momentum=0.9), X, y)
        final_loss = lambda: float(net.loss(X, y))  # noqa: E731
    else:
        import torch

        torch.set_num_threads(args.torch_threads)
        tm = TorchModel(net.params, args.layers, args.lr)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
        step = lambda: tm.step(Xt, yt)  # noqa: E731
        final_loss = lambda: tm.eval_loss(Xt, yt)  # noqa: E731
    loss_start = final_loss()
    time_calls(step, 0, warmup=args.warmup)
    f0 = minor_faults()
    times = time_calls(step, args.steps)
    out = {"times": times, "faults_per_step": (minor_faults() - f0) / args.steps,
           "loss_start": loss_start, "loss_after": final_loss(), "blas_threads": numpy_blas_threads()}
    if args.worker == "numpy" and args.worker_matmuls:
        theta = net.params["theta"]
        m, d = theta.shape
        out["matmuls"] = time_matmuls(matmul_products(args.batch, d, m, args.layers, 2 * m),
                                      args.matmul_reps)
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=60,
                   help="timed steps per implementation, in all rounds together (median reported; >= 30)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps before each timed block")
    p.add_argument("--rounds", type=int, default=3,
                   help="each implementation is timed in this many fresh processes, taken in turn, "
                        "so that a change of machine load hits all of them")
    p.add_argument("--batch", type=int, default=256, help="rows per batch")
    p.add_argument("--layers", type=int, default=4, help="blocks L")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for NumPy's BLAS (needs threadpoolctl) and torch.set_num_threads; "
                        "default: the thread count NumPy's BLAS uses, else os.cpu_count()")
    p.add_argument("--matmul-reps", type=int, default=200, help="repetitions per product shape")
    p.add_argument("--no-malloc-rows", action="store_true",
                   help="skip the diagnostic rows timed with glibc malloc tuned to keep freed "
                        "memory (GLIBC_TUNABLES mmap/trim thresholds raised: no page faults)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="cupy: also time the step on a GPU (and count device-to-host transfers)")
    p.add_argument("--gpu-batch", type=int, default=4096,
                   help="with --backend cupy, also compare CuPy with NumPy at this batch size")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS until other processes use < 10%% of the CPUs")
    p.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    p.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--worker-matmuls", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--steps and --rounds must be >= 1, --warmup >= 0")
    return args


def _worker_args(args, impl, steps, threads, matmuls=False):
    out = ["--worker", impl, "--steps", str(steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--layers", str(args.layers), "--lr", repr(args.lr),
           "--seed", str(args.seed), "--torch-threads", str(threads),
           "--matmul-reps", str(args.matmul_reps)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if matmuls:
        out.append("--worker-matmuls")
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    env = environment()
    blas_threads = numpy_blas_threads()
    threads = args.threads or blas_threads or os.cpu_count()
    _limiter = limit_blas_threads(threads) if args.threads else None  # noqa: F841 (kept alive)
    env["threads"] = threads
    print_environment(env)
    print(f"threads: NumPy BLAS {numpy_blas_threads() or 'unknown'}, torch.set_num_threads({threads})")
    note = load_note(env)
    if note:
        print(note)

    n, L = args.batch, args.layers
    X, y = random_batch(n, seed=args.seed)
    net = make_network(L)
    theta = net.params["theta"]
    m, d = theta.shape
    print(f"\nmodel: {net.describe()}")
    print(f"step: forward + backward + SGD(momentum 0.9), batch {n} x {d} float32, "
          f"{sum(v.size for v in net.params.values())} parameters")
    results = {"environment": env, "args": {k: v for k, v in vars(args).items()
                                             if not k.startswith(("worker", "torch_threads"))},
               "exit_reasons": []}
    status = 0

    have_torch = False
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
            have_torch = True
        except ImportError:
            print("\nPyTorch not installed: PyTorch comparison skipped (pip install torch)")
    if have_torch:
        check = check_against_torch(L, X, y, args.lr)
        results["check"] = check
        print_check(check)
        if not check["ok"]:
            status = 1
            results["exit_reasons"].append("numpy and torch disagree")

    # ---- timing: every implementation in fresh processes, taken in turn, rounds times
    rows = [("NumPy (flowattn_np)", "numpy", None)]
    if have_torch:
        rows.append(("PyTorch eager (CPU)", "torch", None))
    if not args.no_malloc_rows:
        rows.append(("NumPy, malloc tuned*", "numpy", MALLOC_TUNED_ENV))
        if have_torch:
            rows.append(("PyTorch, malloc tuned*", "torch", MALLOC_TUNED_ENV))
    per_round = max(1, -(-args.steps // args.rounds))
    runs = {label: [] for label, _, _ in rows}
    mm = None
    script = os.path.abspath(__file__)
    with ForeignLoad() as load:
        for r in range(args.rounds):
            for label, impl, extra_env in rows:
                want_mm = mm is None and impl == "numpy" and extra_env is None
                res = run_worker(script, _worker_args(args, impl, per_round, threads, want_mm),
                                 extra_env)
                runs[label].append(res)
                if want_mm:
                    mm = res["matmuls"]
    results["foreign_cpu_share"] = load.share
    stats = {}
    for label, impl, extra_env in rows:
        times = [t for res in runs[label] for t in res["times"]]
        s = summary(times)
        faults = float(np.mean([res["faults_per_step"] for res in runs[label]]))
        losses = [res["loss_after"] for res in runs[label]]
        starts = [res["loss_start"] for res in runs[label]]
        stats[label] = (s, faults)
        results.setdefault("timings", {})[label] = {
            "impl": impl, "env": extra_env or {},
            "step_ms": {k: (v * 1e3 if k != "n" else v) for k, v in s.items()},
            "minor_page_faults_per_step": faults, "loss_start": starts, "loss_after_timing": losses}
        if not all(np.isfinite(a) and a < b for a, b in zip(losses, starts)):
            status = 1
            results["exit_reasons"].append(f"{label}: loss {starts} -> {losses} after the timed steps "
                                           "(not finite or not lower): lower --lr")
    s_np, f_np = stats["NumPy (flowattn_np)"]
    results["numpy"] = results["timings"]["NumPy (flowattn_np)"]
    if have_torch:
        s_t, _ = stats["PyTorch eager (CPU)"]
        results["torch"] = results["timings"]["PyTorch eager (CPU)"]
        results["ratio_numpy_over_torch"] = s_np["median"] / s_t["median"]

    # ---- FLOPs and NumPy matmul-only speed for the same shapes
    products = matmul_products(n, d, m, L, 2 * m)  # targets='learned': K = [W; theta], 2m rows
    flops = flops_of(products)
    mm_time = sum(p["seconds_each"] * p["count"] for p in mm)
    step_gflops = flops / s_np["median"] / 1e9
    mm_gflops = flops / mm_time / 1e9
    results["flops_per_step"] = flops
    results["matmuls"] = mm
    results["numpy"]["gflops"] = step_gflops
    results["matmul_only"] = {"ms": mm_time * 1e3, "gflops": mm_gflops}
    results["gflops_ratio"] = step_gflops / mm_gflops

    # ---- report
    print(f"\nstep time, {s_np['n']} steps each in {args.rounds} fresh processes per row "
          f"({args.warmup} warm-up steps each), ms:")
    print(f"  {'':24s} {'median':>8s} {'min':>8s} {'q1':>8s} {'q3':>8s} {'GFLOP/s':>8s} {'faults/step':>11s}")
    for label, (s, faults) in stats.items():
        t = results["timings"][label]
        print(f"  {label:24s} {ms(s['median']):>8s} {ms(s['min']):>8s} {ms(s['q1']):>8s} "
              f"{ms(s['q3']):>8s} {flops / s['median'] / 1e9:8.1f} {faults:11.0f}   loss "
              f"{t['loss_start'][0]:.4f} -> {max(t['loss_after_timing']):.4f}")
    if not args.no_malloc_rows:
        print("  * diagnostic: glibc malloc with mmap/trim thresholds raised "
              f"({MALLOC_TUNED_ENV['GLIBC_TUNABLES']}), so freed temporaries are reused instead of "
              "page-faulted afresh; not how users run")
    print("  " + load.line())
    if have_torch:
        ratio = results["ratio_numpy_over_torch"]
        print(f"  ratio NumPy / PyTorch (median): {ratio:.2f}  "
              f"(target <= 1.0: {'MET' if ratio <= 1.0 else 'MISSED'}; aim 0.8: "
              f"{'MET' if ratio <= 0.8 else 'MISSED'}); by min: {s_np['min'] / s_t['min']:.2f}")
    print(f"\nmatmul FLOPs per step: {flops / 1e6:.1f} MFLOP ((18 L + 6) n m d with n={n}, m={m}, "
          f"d={d}, L={L}); NumPy matmuls alone, same shapes and layouts, in a fresh process (median):")
    print(f"  {'product':30s} {'shape':>18s} {'count':>5s} {'us, out=':>9s} {'GFLOP/s':>8s} "
          f"{'us, a@b':>8s}")
    for p in mm:
        print(f"  {p['product']:30s} {p['shape']:>18s} {p['count']:5d} "
              f"{p['seconds_each'] * 1e6:9.1f} {p['gflops_each']:8.1f} "
              f"{p['seconds_each_fresh_output'] * 1e6:8.1f}")
    mm_fresh = sum(p["seconds_each_fresh_output"] * p["count"] for p in mm)
    results["matmul_only"]["ms_fresh_output"] = mm_fresh * 1e3
    print(f"  sum of matmul times into preallocated outputs {mm_time * 1e3:.3f} ms -> "
          f"{mm_gflops:.1f} GFLOP/s (with fresh outputs, a @ b: {mm_fresh * 1e3:.3f} ms); "
          f"step {step_gflops:.1f} GFLOP/s")
    print(f"  step GFLOP/s / matmul-only GFLOP/s = {results['gflops_ratio']:.2f} "
          f"(target >= 0.5: {'MET' if results['gflops_ratio'] >= 0.5 else 'MISSED'}); "
          f"time outside the matmuls: {(s_np['median'] - mm_time) * 1e3:.3f} ms per step "
          f"({f_np:.0f} minor page faults per step)")

    # ---- GPU
    if args.backend == "cupy":
        from flowattn_np.backend import cupy_available

        gpu = None
        if cupy_available():
            np_by_batch = {n: s_np["median"]}
            if args.gpu_batch != n:  # NumPy at the GPU batch size, in a fresh process too
                wa = _worker_args(args, "numpy", max(5, args.steps // 4), threads)
                wa[wa.index("--batch") + 1] = str(args.gpu_batch)
                np_by_batch[args.gpu_batch] = summary(run_worker(script, wa)["times"])["median"]
            gpu = cupy_section(args, np_by_batch)
        else:
            print("\nCuPy/GPU not available: GPU figures unmeasured")
        results["cupy"] = gpu if gpu is not None else "CuPy/GPU not available: GPU figures unmeasured"
        if gpu is not None and not gpu["d2h_ok"]:
            status = 1
            results["exit_reasons"].append("device-to-host transfers inside the step")

    results["environment"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.json:
        write_json(args.json, results)
    if status:
        print("exit 1: " + "; ".join(results["exit_reasons"]), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
