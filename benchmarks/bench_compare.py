#!/usr/bin/env python
"""One training step of flowattn_np against three PyTorch references, with a roofline.

Workloads: the linear (cross-attention) Fashion-MNIST network (batch 256, d = 784, L = 4,
float32) and the quadratic (self-attention) network at (B, n, d) = (16, 16, 32),
(64, 64, 32), (32, 128, 64) with label-free ('none') and learned-oracle targets,
L = 2 and 4, float32 and float64 (tied weights, Lie splitting, Euler A step, exact B
step, h = 0.1 fixed). One step = forward, backward, SGD(momentum 0.9).

References (benchmarks/_torch_refs.py): ``eager`` (idiomatic PyTorch autograd),
``compile`` (the same under torch.compile) and ``fused`` (PyTorch in the package's own
arrangement, hand-written backward). Before any timing, every workload's loss and
gradients from NumPy, eager and fused are compared on the same parameters and batch
(the compiled model is compared with eager in its own process before it is timed); a
disagreement stops the script with exit status 1.

Threads: by default NumPy runs as the package does with no setting (its thread policy:
``Network`` splits a large batch between host threads, one per usable CPU, BLAS at one
thread inside the package) and PyTorch gets as many intra-op threads as there are usable
CPUs; ``--threads`` and ``--numpy-parallel`` fix them instead (diagnostics).

Timing: each implementation in its own fresh process, taken in turn (numpy, eager,
compile, fused, numpy, ...) for ``--rounds`` rounds, with an idle pause between
processes (OpenBLAS threads spin after NumPy's last call and take the cores PyTorch's
threads need). Medians and the range of the per-round medians are reported, ratios per
round as ranges. The roofline (benchmarks/_roofline.py) uses the machine's GEMM peak and
copy bandwidth measured in the same run. Every workload reports its loss before and
after the timed steps: it must be finite and lower (else exit status 1).

Run ``python benchmarks/bench_compare.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    ForeignLoad,
    environment,
    fashion_config,
    limit_blas_threads,
    load_note,
    numpy_blas_threads,
    print_environment,
    random_batch,
    run_worker,
    summary,
    time_calls,
    wait_for_quiet,
    write_json,
)
from _roofline import bound, linear_ops, measure_peaks, quadratic_ops  # noqa: E402

from flowattn_np.equations.exact_b import QuadraticBTaylorCache  # noqa: E402
from flowattn_np.fast.fused_quadratic import forward as fused_forward  # noqa: E402
from flowattn_np.blocks.config import BlockConfig  # noqa: E402
from flowattn_np.blocks.network import Network, NetworkConfig  # noqa: E402
from flowattn_np.training.optim import SGD  # noqa: E402
from flowattn_np.threads import available_cpus, policy  # noqa: E402

SHAPES = ((16, 16, 32), (64, 64, 32), (32, 128, 64))
IMPLS = ("numpy", "eager", "compile", "fused", "blocks")
LABELS = {"numpy": "NumPy (flowattn_np)", "eager": "PyTorch eager", "compile": "torch.compile",
          "fused": "PyTorch, package's arrangement",
          "blocks": "NumPy, per-block path (Network(fused=False), a diagnostic)"}
TOL = {"float32": 1e-4, "float64": 1e-4}  # max|a - b| <= TOL max|b|: float32 round-off scale


# ---------------------------------------------------------------- workloads

def workload_list(args):
    out = []
    if "linear" in args.models:
        out.append({"model": "linear", "batch": 256, "d": 784, "m": 10, "layers": 4,
                    "targets": "learned", "dtype": "float32", "h": 0.1, "lr": 0.01})
    if "quadratic" in args.models:
        for shape, tg, L, dt in itertools.product(args.shapes, args.targets, args.layers, args.dtypes):
            B, n, d = shape
            out.append({"model": "quadratic", "B": B, "n": n, "d": d, "layers": L, "targets": tg,
                        "dtype": dt, "h": 0.1, "lr": args.lr})
    for w in out:
        w["name"] = name_of(w)
        # compiling takes a minute per workload on a small machine: by default only the
        # linear network and the label-free float32 L = 2 quadratic workloads
        w["compile"] = args.compile_scope == "all" or w["model"] == "linear" or (
            w["targets"] == "none" and w["layers"] == 2 and w["dtype"] == "float32")
    return out


def name_of(w):
    if w["model"] == "linear":
        return f"linear n={w['batch']} d={w['d']} L={w['layers']} {w['dtype']}"
    return f"quad ({w['B']},{w['n']},{w['d']}) {w['targets']:7s} L={w['layers']} {w['dtype']}"


def build(w, seed=0, fused=True, threads=None):
    """(network, X, y) of a workload: the NumPy side; PyTorch starts from net.params.
    ``threads``: ``Network(threads=)``; None leaves it to the package's thread policy.

    Quadratic: X ~ N(0, 1) of shape (B, n, d), target tokens uniform in [0, n); phi gets
    a lower-triangular perturbation so theta has distinct eigenvalues (PyTorch's eigh
    backward divides by eigenvalue gaps)."""
    if w["model"] == "linear":
        X, y = random_batch(w["batch"], seed=seed)
        return Network(fashion_config(w["layers"], w["dtype"]), threads=threads), X, y
    B, n, d = w["B"], w["n"], w["d"]
    cfg = NetworkConfig(n_inputs=d, layers=w["layers"], dtype=w["dtype"],
                        block=BlockConfig(model="quadratic", targets=w["targets"], h=w["h"]))
    net = Network(cfg, seed=seed, fused=fused, threads=threads)
    rng = np.random.default_rng(seed + 1)
    phi = net.params["phi"] + np.tril(rng.normal(0, 0.3 * d ** -0.75, (d, d)))
    net.params["phi"][...] = phi.astype(w["dtype"])
    X = rng.normal(size=(B, n, d)).astype(w["dtype"])
    y = rng.integers(0, n, size=(B, n))
    return net, X, y


def taylor_terms_of(w, seed=0):
    """Terms of the exact B step's Taylor series that NumPy's step takes (the most over its
    blocks, at the workload's start), for the roofline count; 0 without a B step or where
    the step takes the eigenbases."""
    if w["model"] != "quadratic" or w["targets"] == "none":
        return 0
    net, X, y = build(w, seed)
    _, cache = fused_forward(net.config, net.params, X)
    return max(len(c.B.thetas) if isinstance(c.B, QuadraticBTaylorCache) else 0 for c in cache.blocks)


def make_impl(impl, w, seed=0, threads=None):
    """(step, loss, loss_and_grads) closures of one implementation of a workload (NumPy's
    network with ``threads`` host threads sharing the batch)."""
    net, X, y = build(w, seed, fused=impl != "blocks", threads=threads)
    if impl in ("numpy", "blocks"):
        opt = SGD(net.params, lr=w["lr"], momentum=0.9)

        def step():
            opt.step(net.loss_and_grads(X, y)[1])

        def lg():
            loss, grads, _ = net.loss_and_grads(X, y)
            return float(loss), {k: np.array(v, dtype=np.float64) for k, v in grads.items()}

        return step, lambda: float(net.loss(X, y)), lg
    import torch
    from _torch_refs import make_reference

    ref = make_reference(impl, w, net.params, w["lr"])
    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y)).long()

    def lg():
        loss, grads = ref.loss_and_grads(Xt, yt)
        return float(loss), {k: v.detach().double().numpy().copy() for k, v in grads.items()}

    return (lambda: ref.step(Xt, yt)), (lambda: ref.eval_loss(Xt, yt)), lg


def compare(a, b, dtype):
    """Max relative differences of loss and each gradient of a vs b; (ok, dict)."""
    la, ga = a
    lb, gb = b
    res = {"loss": abs(la - lb) / max(abs(lb), 1e-30)}
    for k in gb:
        if k not in ga or ga[k].shape != gb[k].shape:
            res[k] = float("inf")
            continue
        scale = np.abs(gb[k]).max()
        res[k] = float(np.abs(ga[k] - gb[k]).max() / scale) if scale > 0 else float(np.abs(ga[k]).max())
    ok = all(np.isfinite(v) and v <= TOL[dtype] for v in res.values())
    return ok, res


# ---------------------------------------------------------------- workers

def worker(args):
    """Time one implementation on every workload in this fresh process; JSON on stdout."""
    split = args.worker in ("numpy", "blocks") and batch_split(args)
    package = args.worker in ("numpy", "blocks") and args.numpy_parallel == "package"
    # package: nothing set, the package's thread policy decides; batch split: each host
    # thread's products on one BLAS thread; blas: one host thread, BLAS at --threads
    if not package and args.worker in ("numpy", "blocks"):
        os.environ["FLOWATTN_THREADS"] = "off"  # the package leaves BLAS as set here
    _limit = (limit_blas_threads(1 if split else args.threads)  # noqa: F841
              if not package and (split or args.threads) else None)
    workloads = json.loads(args.specs)
    if args.worker == "peaks":
        print(json.dumps(measure_peaks(args.gemm_n, args.copy_mib)))
        return 0
    if args.worker not in ("numpy", "blocks"):
        import torch

        torch.set_num_threads(args.torch_threads)
    out = {}
    for w in workloads:
        if args.worker == "compile" and not w["compile"]:
            out[w["name"]] = {"error": "not compiled (--compile-scope light)", "skipped": True}
            continue
        try:
            step, loss_fn, lg = make_impl(args.worker, w, args.seed, numpy_threads(args, args.torch_threads))
            if args.worker == "compile":  # equal work of the compiled model, before timing
                ok, diffs = compare(lg(), make_impl("eager", w, args.seed)[2](), w["dtype"])
                if not ok:
                    out[w["name"]] = {"error": f"torch.compile disagrees with eager: {diffs}",
                                      "disagree": True}
                    continue
            loss0 = loss_fn()
            time_calls(step, 0, warmup=args.warmup)
            times = time_calls(step, args.steps)
            out[w["name"]] = {"times": times, "loss_start": loss0, "loss_after": loss_fn()}
        except Exception as exc:  # torch.compile failing: say why and go on
            if args.worker != "compile":
                raise
            out[w["name"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- checks

def batch_split(args):
    """Whether NumPy is told to use its cores by host threads sharing the batch."""
    return args.numpy_parallel == "batch" and args.torch_threads > 1


def numpy_threads(args, threads):
    """``Network(threads=)`` of the NumPy side: None (the package's policy), T host threads
    (batch), or 1 (BLAS threads)."""
    if args.numpy_parallel == "package":
        return None
    return threads if args.numpy_parallel == "batch" else 1


def check_all(workloads, impls, seed, threads=None):
    """Loss and gradients of NumPy (with ``threads`` sharing the batch) and 'fused' against
    eager, every workload; list of rows."""
    rows = []
    for w in workloads:
        ref = make_impl("eager", w, seed)[2]()
        for impl in [i for i in impls if i in ("numpy", "fused", "blocks")]:
            ok, diffs = compare(make_impl(impl, w, seed, threads if impl != "fused" else None)[2](), ref, w["dtype"])
            rows.append((w["name"], impl, ok, diffs))
    return rows


def print_checks(rows):
    print(f"\nequal-work check before timing (pass: max|a - b| <= {TOL['float32']:g} max|b| for the "
          "loss and each gradient, b = PyTorch eager, same parameters and batch):")
    for name, impl, ok, diffs in rows:
        print(f"  {name:38s} {impl:6s} vs eager: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
              + ("" if ok else "   DISAGREE"))


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="linear,quadratic", help="comma list: linear, quadratic")
    p.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES),
                   help="quadratic (B,n,d) shapes, ';'-separated")
    p.add_argument("--targets", default="none,learned", help="quadratic targets: none, learned")
    p.add_argument("--layers", default="2,4", help="quadratic L values")
    p.add_argument("--dtypes", default="float32,float64", help="quadratic dtypes")
    p.add_argument("--impls", default=",".join(IMPLS[:4]),
                   help="implementations to time (also: blocks = NumPy's per-block path)")
    p.add_argument("--compile-scope", choices=("light", "all"), default="light",
                   help="workloads timed under torch.compile: 'light' = the linear network and the "
                        "label-free float32 L=2 quadratic ones (a compile takes about a minute), or all")
    p.add_argument("--steps", type=int, default=10, help="timed steps per workload per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed block")
    p.add_argument("--rounds", type=int, default=3, help="rounds of fresh processes, in turn")
    p.add_argument("--pause", type=float, default=2.0, help="idle seconds between processes")
    p.add_argument("--lr", type=float, default=0.05, help="quadratic SGD learning rate")
    p.add_argument("--threads", type=int, default=None,
                   help="cores for each implementation: torch.set_num_threads, and for NumPy "
                        "see --numpy-parallel; default: the CPUs this process may use")
    p.add_argument("--numpy-parallel", choices=("package", "batch", "blas"), default="package",
                   help="how NumPy uses its threads: 'package' = the package's defaults, nothing "
                        "set; 'batch' = Network(threads=T), T host threads sharing the batch, each "
                        "with one BLAS thread; 'blas' = one host thread calling BLAS with T threads")
    p.add_argument("--gemm-n", type=int, default=2048, help="square matmul size of the GEMM peak")
    p.add_argument("--copy-mib", type=int, default=256, help="MiB copied for the bandwidth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS until other processes use < 10%% of the CPUs")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--specs", help=argparse.SUPPRESS)
    p.add_argument("--torch-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    try:
        args.models = [m for m in args.models.split(",") if m]
        args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s]
        args.targets = [t for t in args.targets.split(",") if t]
        args.layers = [int(v) for v in args.layers.split(",") if v]
        args.dtypes = [t for t in args.dtypes.split(",") if t]
        args.impls = [i for i in args.impls.split(",") if i]
    except ValueError as exc:
        p.error(f"could not parse a list option: {exc}")
    bad = [i for i in args.impls if i not in IMPLS] + [m for m in args.models if m not in ("linear", "quadratic")] \
        + [t for t in args.targets if t not in ("none", "learned")] \
        + [t for t in args.dtypes if t not in ("float32", "float64")]
    if bad or "numpy" not in args.impls or any(len(s) != 3 for s in args.shapes):
        p.error(f"unknown or missing values {bad}; --impls must include numpy; shapes are B,n,d")
    if args.steps < 3 or args.rounds < 1 or args.warmup < 1:
        p.error("--steps must be >= 3, --rounds >= 1, --warmup >= 1")
    return args


def run_rounds(args, workloads, threads):
    """Every implementation in its own process, in turn, ``rounds`` times; peaks first and last."""
    script = os.path.abspath(__file__)
    common = ["--specs", json.dumps(workloads), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--seed", str(args.seed), "--torch-threads", str(threads),
              "--numpy-parallel", args.numpy_parallel,
              "--gemm-n", str(args.gemm_n), "--copy-mib", str(args.copy_mib)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    runs = {impl: [] for impl in args.impls}
    peaks = []
    order = ["peaks"] + [i for _ in range(args.rounds) for i in args.impls] + ["peaks"]
    with ForeignLoad() as load:
        for k, impl in enumerate(order):
            if k:
                time.sleep(args.pause)
            t0 = time.perf_counter()
            res = run_worker(script, ["--worker", impl] + common)
            print(f"  [{k + 1}/{len(order)}] {impl} process: {time.perf_counter() - t0:.1f} s", flush=True)
            (peaks if impl == "peaks" else runs[impl]).append(res)
    return runs, peaks, load


def report(args, workloads, runs, peaks):
    """Print the tables; returns (results dict, list of failures)."""
    fails, results = [], {}
    # the better of the two measurements: the higher roof gives the stricter fraction
    peak = {k: max(p[k] for p in peaks) for k in peaks[0] if k.startswith(("gemm_float", "bandwidth"))}
    print("\nmachine peaks, measured in this run (first / last of the run): " + "; ".join(
        f"{k.replace('_flops', '').replace('gemm_', 'GEMM ')} "
        + " / ".join(f"{p[k] / 1e9:.1f}" for p in peaks) + (" GB/s" if "band" in k else " GFLOP/s")
        for k in peaks[0] if k.startswith(("gemm_float", "bandwidth"))))
    impls = args.impls
    head = "  {:38s}".format("workload") + "".join(f" {i:>20s}" for i in impls)
    ratio_cols = [i for i in impls if i != "numpy"]
    print(f"\nstep time, ms: median over rounds (range of the {args.rounds} per-round medians); "
          f"{args.steps} steps per round after {args.warmup} warm-up")
    print(head)
    for w in workloads:
        name, rec = w["name"], {}
        cells = []
        for impl in impls:
            rs = [r[name] for r in runs[impl]]
            err = next((r["error"] for r in rs if "error" in r), None)
            if err:
                if not rs[0].get("skipped"):
                    print(f"  {name}: {LABELS[impl]} failed: {err}")
                rec[impl] = {"error": err}
                cells.append(f" {'-' if rs[0].get('skipped') else 'failed':>20s}")
                if rs[0].get("disagree"):
                    fails.append(f"{name}: {err}")
                continue
            meds = [statistics.median(r["times"]) for r in rs]
            allt = [t for r in rs for t in r["times"]]
            s = summary(allt)
            rec[impl] = {"median_ms": s["median"] * 1e3, "round_medians_ms": [m * 1e3 for m in meds],
                         "loss_start": rs[0]["loss_start"], "loss_after": [r["loss_after"] for r in rs]}
            cells.append(" " + f"{s['median'] * 1e3:.3g} ({min(meds) * 1e3:.3g}-{max(meds) * 1e3:.3g})".rjust(20))
            for r in rs:
                if not (np.isfinite(r["loss_after"]) and r["loss_after"] < r["loss_start"]):
                    fails.append(f"{name} {impl}: loss {r['loss_start']:.4g} -> {r['loss_after']:.4g}")
        print(f"  {name:38s}" + "".join(cells))
        results[name] = rec
    print("\nratio NumPy / reference (ratio of medians; range of the per-round ratios), NumPy / eager "
          "of the fastest rounds (each side's fastest per-round median: a machine that slows down in "
          "phases only adds time), roofline fraction of the NumPy step, loss before -> after the timed "
          "steps (NumPy):")
    print("  {:38s}".format("workload") + "".join(f" {'/' + i:>17s}" for i in ratio_cols)
          + f" {'fastest':>8s} {'roofline':>9s} {'loss':>17s}")
    for w in workloads:
        name, rec = w["name"], results[w["name"]]
        npr = rec["numpy"]
        cells, fastest = [], "-"
        for i in ratio_cols:
            if "median_ms" not in rec.get(i, {}):
                cells.append(f" {'-':>17s}")
                continue
            per = [a / b for a, b in zip(npr["round_medians_ms"], rec[i]["round_medians_ms"])]
            best = min(npr["round_medians_ms"]) / min(rec[i]["round_medians_ms"])
            rec[f"ratio_{i}"] = {"of_medians": npr["median_ms"] / rec[i]["median_ms"], "per_round": per,
                                 "of_fastest_rounds": best}
            cells.append(" " + f"{npr['median_ms'] / rec[i]['median_ms']:.2f} ({min(per):.2f}-{max(per):.2f})".rjust(17))
            if i == "eager":
                fastest = f"{best:.2f}"
        ops = (linear_ops(w["batch"], w["d"], w["m"], w["layers"]) if w["model"] == "linear"
               else quadratic_ops(w["B"], w["n"], w["d"], w["layers"], w["targets"],
                                  taylor_terms=taylor_terms_of(w)))
        size = np.dtype(w["dtype"]).itemsize
        flops, nbytes = ops.totals(size)
        t_bound = bound(ops, size, peak[f"gemm_{w['dtype']}_flops"], peak["bandwidth_bytes"])
        frac = t_bound / (npr["median_ms"] / 1e3)
        rec["roofline"] = {"flops": flops, "bytes": nbytes, "bound_ms": t_bound * 1e3, "fraction": frac,
                           "gflops_achieved": flops / npr["median_ms"] * 1e-6}
        la = npr["loss_after"]
        print(f"  {name:38s}" + "".join(cells) + f" {fastest:>8s} {frac:9.3f} {npr['loss_start']:7.4f} -> {max(la):7.4f}")
    print("\nroofline detail (NumPy): FLOPs and bytes counted from the step's operations "
          "(benchmarks/_roofline.py), bound = sum over operations of max(FLOPs/peak, bytes/bandwidth)")
    print(f"  {'workload':38s} {'MFLOP':>9s} {'MB':>8s} {'FLOP/B':>7s} {'bound ms':>9s} {'GFLOP/s':>8s}")
    for w in workloads:
        r = results[w["name"]]["roofline"]
        print(f"  {w['name']:38s} {r['flops'] / 1e6:9.1f} {r['bytes'] / 1e6:8.2f} "
              f"{r['flops'] / r['bytes']:7.1f} {r['bound_ms']:9.3f} {r['gflops_achieved']:8.1f}")
    return {"workloads": results, "peaks": peaks}, fails


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    env = environment()
    threads = args.threads or available_cpus()
    env["threads"] = threads
    env["numpy_parallel"] = args.numpy_parallel
    print_environment(env)
    if args.numpy_parallel == "package":
        numpy_side = f"the package's defaults ({policy().describe()})"
    elif args.numpy_parallel == "batch" and threads > 1:
        numpy_side = f"Network(threads={threads}) sharing each batch, BLAS 1 thread (threadpoolctl)"
    else:
        blas = f"{args.threads} in every worker (threadpoolctl)" if args.threads else numpy_blas_threads() or "unknown"
        numpy_side = f"one host thread, BLAS {blas}"
    print(f"threads: NumPy {numpy_side}; torch.set_num_threads({threads})")
    note = load_note(env)
    if note:
        print(note)
    try:
        import torch

        torch.set_num_threads(threads)
        print(f"torch {torch.__version__}, BLAS {torch.backends.mkl.is_available() and 'MKL' or 'other'}, "
              f"{torch.get_num_threads()} threads")
    except ImportError:
        print("error: PyTorch is not installed (pip install torch, or the 'bench' extra)", file=sys.stderr)
        return 2
    workloads = workload_list(args)
    print(f"\n{len(workloads)} workloads; implementations: " + ", ".join(LABELS[i] for i in args.impls))
    checks = check_all(workloads, args.impls, args.seed, numpy_threads(args, threads))
    print_checks(checks)
    bad = [c for c in checks if not c[2]]
    if bad:
        print(f"error: {len(bad)} equal-work checks failed: the implementations do not compute the "
              "same thing; no timing", file=sys.stderr)
        return 1
    print("\ntiming (each implementation in its own process, in turn; "
          f"{args.pause:g} s idle between processes):")
    runs, peaks, load = run_rounds(args, workloads, threads)
    results, fails = report(args, workloads, runs, peaks)
    print("  " + load.line())
    results.update(environment=env, checks=[{"workload": n, "impl": i, "ok": ok, "diffs": d}
                                             for n, i, ok, d in checks],
                   foreign_cpu_share=load.share, args={k: v for k, v in vars(args).items()
                                                       if k not in ("worker", "specs")})
    if args.json:
        write_json(args.json, results)
    for f in fails:
        print(f"error: {f}", file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
