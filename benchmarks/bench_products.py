#!/usr/bin/env python
"""The matrix products of one self-attention training step, NumPy's BLAS against PyTorch's.

How much of bench_compare.py's NumPy / PyTorch ratio is the product library? For each
workload, every matrix product the package's step makes (benchmarks/_roofline.py lists
them with their shapes and layouts: NN, NT = A @ B^T, TN = A^T @ B, as the package calls
them) is timed alone as ``np.matmul`` and as ``torch.matmul`` on the same operands, into
a preallocated output. Equal work first: both results agree to the dtype's round-off,
else exit status 1. Each library is timed in its own fresh process, in turn, for
``--rounds`` rounds, with an idle pause between processes.

Printed per distinct product: how many the step makes, the median time of each library
(range of the per-round medians), GFLOP/s, and the NumPy / PyTorch ratio (range over
rounds); per workload, the step's products summed at each library's speed.

Run ``python benchmarks/bench_products.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    ForeignLoad,
    environment,
    limit_blas_threads,
    print_environment,
    run_worker,
    write_json,
)
from _roofline import quadratic_ops  # noqa: E402

SHAPES = ((16, 16, 32), (64, 64, 32), (32, 128, 64))
TOL = {"float32": 1e-5, "float64": 1e-12}  # max|a - b| <= TOL max|b| (the sums have K <= 4096 terms)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES),
                   help="quadratic (B,n,d) shapes, ';'-separated")
    p.add_argument("--targets", default="none", help="comma list: none, learned")
    p.add_argument("--layers", type=int, default=2, help="blocks L")
    p.add_argument("--dtypes", default="float32,float64", help="comma list: float32, float64")
    p.add_argument("--taylor-terms", type=int, default=8,
                   help="terms of the exact B step's series counted for targets 'learned' "
                        "(bench_compare.py prints what the step takes: 4 in float32, 8-9 in float64 "
                        "at its start)")
    p.add_argument("--reps", type=int, default=30, help="timed calls of each product per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of fresh processes, in turn")
    p.add_argument("--pause", type=float, default=2.0, help="idle seconds between processes")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads of NumPy (threadpoolctl) and torch.set_num_threads")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--specs", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    try:
        args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s]
    except ValueError as exc:
        p.error(f"--shapes: expected B,n,d;B,n,d of whole numbers ({exc})")
    args.targets = [t for t in args.targets.split(",") if t]
    args.dtypes = [t for t in args.dtypes.split(",") if t]
    if any(len(s) != 3 or min(s) < 1 for s in args.shapes):
        p.error("--shapes: expected three positive whole numbers B,n,d per shape")
    bad = [t for t in args.targets if t not in ("none", "learned")] \
        + [t for t in args.dtypes if t not in ("float32", "float64")]
    if bad or not args.targets or not args.dtypes:
        p.error(f"--targets / --dtypes: unknown or missing values {bad}")
    if args.layers < 1 or args.taylor_terms < 1 or args.reps < 3 or args.rounds < 1 or args.threads < 1:
        p.error("--layers, --taylor-terms, --rounds and --threads must be >= 1, --reps >= 3")
    return args


# ---------------------------------------------------------------- products

def workloads(args):
    """[(name, dtype, {product key: {"count", "names"}})]; a key is (batch, M, K, N, layout)."""
    out = []
    for (B, n, d) in args.shapes:
        for tg in args.targets:
            ops = quadratic_ops(B, n, d, args.layers, tg, taylor_terms=args.taylor_terms)
            products = OrderedDict()
            for name, batch, M, K, N, layout in ops.products:
                rec = products.setdefault((batch, M, K, N, layout), {"count": 0, "names": []})
                rec["count"] += 1
                if name not in rec["names"]:
                    rec["names"].append(name)
            for dt in args.dtypes:
                out.append((f"quad ({B},{n},{d}) {tg:7s} L={args.layers} {dt}", dt, products))
    return out


def operands(key, dtype, seed=0):
    """(A, B) NumPy operands of a product key, as the package lays them out: a transposed
    operand is a view of a C-contiguous array."""
    batch, M, K, N, layout = key
    rng = np.random.default_rng(seed)
    lead = (batch,) if batch > 1 else ()

    def make(rows, cols, transposed):
        a = rng.standard_normal(lead + ((cols, rows) if transposed else (rows, cols))).astype(dtype)
        return np.swapaxes(a, -1, -2) if transposed else a

    return make(M, K, layout[0] == "T"), make(K, N, layout[1] == "T")


def product_fn(lib, key, dtype):
    """A closure computing the product into a preallocated output, and the output."""
    A, B = operands(key, dtype)
    if lib == "numpy":
        out = np.empty(A.shape[:-1] + B.shape[-1:], dtype=dtype)
        return (lambda: np.matmul(A, B, out=out)), out
    import torch

    def tensor(a):  # the same memory and layout: a transposed view where NumPy's is one
        return torch.from_numpy(a) if a.flags.c_contiguous else torch.from_numpy(np.swapaxes(a, -1, -2)).mT

    At, Bt = tensor(A), tensor(B)
    out = torch.empty(A.shape[:-1] + B.shape[-1:], dtype=At.dtype)
    return (lambda: torch.matmul(At, Bt, out=out)), out


def distinct(work):
    """[(id, key, dtype)] of every distinct product of the workloads, in first-seen order."""
    out = {}
    for _, dt, products in work:
        for key in products:
            out.setdefault(product_id(key, dt), (key, dt))
    return [(pid, key, dt) for pid, (key, dt) in out.items()]


def check_equal(items):
    """max|numpy - torch| / max|torch| of every distinct product; list of failures."""
    fails = []
    for _, key, dt in items:
        fn_np, out_np = product_fn("numpy", key, dt)
        fn_t, out_t = product_fn("torch", key, dt)
        fn_np()
        fn_t()
        ref = out_t.numpy().astype(np.float64)
        err = float(np.abs(out_np.astype(np.float64) - ref).max() / np.abs(ref).max())
        if not err <= TOL[dt]:
            fails.append(f"{dt} product {key}: NumPy and PyTorch differ by {err:.1e} of the largest entry")
    return fails


def worker(args):
    """Time every distinct product of the workloads with one library; JSON on stdout."""
    _limit = limit_blas_threads(args.threads) if args.worker == "numpy" else None  # noqa: F841
    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
    specs = json.loads(args.specs)
    out = {}
    for item in specs["products"]:
        key, dt = tuple(item["key"]), item["dtype"]
        fn, _ = product_fn(args.worker, key, dt)
        for _ in range(3):
            fn()
        times = []
        for _ in range(specs["reps"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[item["id"]] = statistics.median(times)
    print(json.dumps(out))
    return 0


def product_id(key, dt):
    batch, M, K, N, layout = key
    return f"{dt} {batch}x({M},{K})@({K},{N}) {layout}"


def run_rounds(args, items):
    specs = json.dumps({"products": [{"id": pid, "key": list(key), "dtype": dt} for pid, key, dt in items],
                        "reps": args.reps})
    script = os.path.abspath(__file__)
    runs = {"numpy": [], "torch": []}
    order = [lib for _ in range(args.rounds) for lib in runs]
    with ForeignLoad() as load:
        for k, lib in enumerate(order):
            if k:
                time.sleep(args.pause)
            t0 = time.perf_counter()
            runs[lib].append(run_worker(script, ["--worker", lib, "--specs", specs,
                                                 "--threads", str(args.threads)]))
            print(f"  [{k + 1}/{len(order)}] {lib} process: {time.perf_counter() - t0:.1f} s", flush=True)
    return runs, load


def report(work, runs):
    """Print the tables; returns the results dict."""
    results = {}
    for name, dt, products in work:
        print(f"\n{name}: the step's products, ms per call: median over rounds (range of the per-round medians)")
        print(f"  {'batch x (M,K)@(K,N) layout':30s} {'count':>5s} {'NumPy':>20s} {'PyTorch':>20s} "
              f"{'GFLOP/s':>11s} {'NumPy/PyTorch':>17s}  products")
        total = {"numpy": [0.0] * len(runs["numpy"]), "torch": [0.0] * len(runs["torch"])}
        rows = []
        for key, rec in products.items():
            pid = product_id(key, dt)
            per = {lib: [r[pid] for r in runs[lib]] for lib in runs}
            med = {lib: statistics.median(v) for lib, v in per.items()}
            ratios = [a / b for a, b in zip(per["numpy"], per["torch"])]
            for lib in total:
                total[lib] = [t + rec["count"] * v for t, v in zip(total[lib], per[lib])]
            flops = 2.0 * key[0] * key[1] * key[2] * key[3]
            cells = [f"{med[lib] * 1e3:.3f} ({min(per[lib]) * 1e3:.3f}-{max(per[lib]) * 1e3:.3f})"
                     for lib in ("numpy", "torch")]
            gf = "/".join(f"{flops / med[lib] / 1e9:.0f}" for lib in ("numpy", "torch"))
            print(f"  {pid.split(' ', 1)[1]:30s} {rec['count']:5d} {cells[0]:>20s} {cells[1]:>20s} {gf:>11s} "
                  + f"{med['numpy'] / med['torch']:.2f} ({min(ratios):.2f}-{max(ratios):.2f})".rjust(17)
                  + "  " + "; ".join(rec["names"]))
            rows.append({"product": pid, "count": rec["count"], "names": rec["names"],
                         "numpy_ms": [v * 1e3 for v in per["numpy"]], "torch_ms": [v * 1e3 for v in per["torch"]]})
        tot = {lib: statistics.median(v) for lib, v in total.items()}
        ratios = [a / b for a, b in zip(total["numpy"], total["torch"])]
        best = {lib: min(v) for lib, v in total.items()}
        print(f"  all {sum(r['count'] for r in products.values())} products of the step: NumPy "
              f"{tot['numpy'] * 1e3:.2f} ms, PyTorch {tot['torch'] * 1e3:.2f} ms, NumPy / PyTorch "
              f"{tot['numpy'] / tot['torch']:.2f} ({min(ratios):.2f}-{max(ratios):.2f}); fastest rounds "
              f"(a machine that slows down in phases slows both): {best['numpy'] * 1e3:.2f} against "
              f"{best['torch'] * 1e3:.2f} ms, {best['numpy'] / best['torch']:.2f}")
        results[name] = {"products": rows, "sum_ms": {lib: [v * 1e3 for v in total[lib]] for lib in total}}
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    env = environment()
    print_environment(env)
    try:
        import torch
    except ImportError:
        print("error: PyTorch is not installed (pip install torch, or the 'bench' extra)", file=sys.stderr)
        return 2
    print(f"threads: NumPy's BLAS {args.threads} (threadpoolctl); torch.set_num_threads({args.threads}); "
          f"torch {torch.__version__}, MKL {'yes' if torch.backends.mkl.is_available() else 'no'}")
    work = workloads(args)
    items = distinct(work)
    fails = check_equal(items)
    print(f"\nequal-work check before timing: {len(items)} distinct products, NumPy against PyTorch on the "
          f"same operands, max|a - b| <= {TOL['float32']:g} (float32) / {TOL['float64']:g} (float64) "
          "of the largest entry: " + ("all agree" if not fails else f"{len(fails)} disagree"))
    if fails:
        for f in fails:
            print(f"error: {f}", file=sys.stderr)
        return 1
    print(f"\ntiming (each library in its own process, in turn; {args.pause:g} s idle between processes; "
          f"{args.reps} calls of each product, median):")
    runs, load = run_rounds(args, items)
    results = report(work, runs)
    print("  " + load.line())
    if args.json:
        write_json(args.json, {"environment": env, "workloads": results, "foreign_cpu_share": load.share,
                               "args": {k: v for k, v in vars(args).items() if k not in ("worker", "specs")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
