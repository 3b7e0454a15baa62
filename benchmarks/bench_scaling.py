#!/usr/bin/env python
"""Time and peak memory of one training step of the Fashion-MNIST network against the
batch size (at L = 4) and against the number of blocks L (at batch 256).

Time: median wall-clock seconds of one SGD step (``loss_and_grads`` + SGD(momentum 0.9)),
each configuration timed in a fresh process (the same allocator state for all of them).
Memory: ``tracemalloc`` (NumPy reports its array allocations to it) peak during one
``net.loss_and_grads(X, y)`` call, counted from before the network's first step (so the
training buffers it keeps from step to step are included) minus params and batch.
Cached activations: the arrays held in the cache returned by ``net.forward`` (walked
recursively through tuples, lists and dicts; each buffer counted once; parameters and
the input batch excluded). The script fits peak memory linearly in L and in the batch
size, prints R^2, the increment per layer / per row next to the cached bytes per block /
per row, and whether anything other than the cached activations grows with L.

Run ``python benchmarks/bench_scaling.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    ForeignLoad,
    environment,
    load_note,
    make_network,
    minor_faults,
    print_environment,
    random_batch,
    run_worker,
    wait_for_quiet,
    summary,
    time_calls,
    write_json,
)

from flowattn_np.training.optim import SGD  # noqa: E402

MiB = 2.0 ** 20


def walk_arrays(obj):
    """Every ndarray inside nested tuples / lists / dicts."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from walk_arrays(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from walk_arrays(o)


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def cached_bytes(cache, exclude):
    """Bytes of the distinct buffers in ``cache`` that are not among ``exclude``
    (parameters, input batch): the activations a forward pass keeps for backward."""
    skip = {id(_root(a)) for a in exclude}
    seen, total = set(), 0
    for a in walk_arrays(cache):
        r = _root(a)
        if id(r) in skip or id(r) in seen:
            continue
        seen.add(id(r))
        total += r.nbytes
    return total


def scaled_lr(lr, layers):
    """The rate at L = 4, scaled by 4 / L for deeper networks: a tied network of L blocks
    with a learned h takes L steps of the flow, and at L = 16 the L = 4 rate diverges
    (loss 2.33 -> NaN within 45 steps at lr = 0.01)."""
    return lr * min(1.0, 4.0 / layers)


def time_step(batch, layers, steps, warmup, lr, seed=0):
    """Step times (s), minor page faults per step, and the loss before and after, in this
    process."""
    X, y = random_batch(batch, seed=seed)
    net = make_network(layers)
    opt = SGD(net.params, lr=scaled_lr(lr, layers), momentum=0.9)
    loss_start = float(net.loss(X, y))

    def step():
        _, grads, _ = net.loss_and_grads(X, y)
        opt.step(grads)

    time_calls(step, 0, warmup=warmup)
    f0 = minor_faults()
    times = time_calls(step, steps)
    return {"times": times, "faults_per_step": (minor_faults() - f0) / steps,
            "loss_start": loss_start, "loss_after": float(net.loss(X, y))}


def measure(batch, layers, steps, warmup, lr, seed=0):
    """Step time (median s; timed in a fresh process, so the malloc state is the same for
    every configuration), peak memory of loss_and_grads (bytes above the baseline), and
    cached-activation bytes (total, and per block) for one configuration."""
    w = run_worker(os.path.abspath(__file__),
                   ["--worker", f"{batch},{layers}", "--steps", str(steps), "--warmup", str(warmup),
                    "--lr", repr(lr)])
    t = summary(w["times"])
    X, y = random_batch(batch, seed=seed)
    net = make_network(layers)

    # cached activations of one forward pass
    C = net.target_matrix(y, X.dtype)
    _, cache = net.forward(X, C=C)
    exclude = list(net.params.values()) + [X]
    total_cache = cached_bytes(cache, exclude)
    block_caches = cache.block_caches
    per_block = [cached_bytes(c, exclude) for c in block_caches]
    del cache, block_caches

    # peak of one loss_and_grads call (fresh network and batch, all traced)
    tracemalloc.start()
    try:
        X2, y2 = random_batch(batch, seed=seed)
        net2 = make_network(layers)
        base_bytes = sum(v.nbytes for v in net2.params.values()) + X2.nbytes + y2.nbytes
        # the baseline is taken BEFORE the first call: the network keeps its training
        # buffers from one step to the next, and they belong to the step's memory
        baseline = tracemalloc.get_traced_memory()[0]
        net2.loss_and_grads(X2, y2)  # first call: allocates the buffers (and lazy imports)
        tracemalloc.reset_peak()
        out = net2.loss_and_grads(X2, y2)
        peak = tracemalloc.get_traced_memory()[1] - baseline
        del out
    finally:
        tracemalloc.stop()
    return {"batch": batch, "layers": layers, "step_ms_median": t["median"] * 1e3,
            "step_ms_min": t["min"] * 1e3, "faults_per_step": w["faults_per_step"], "peak_bytes": peak, "params_plus_batch_bytes": base_bytes,
            "loss_start": w["loss_start"], "loss_after": w["loss_after"],
            "trains": bool(np.isfinite(w["loss_after"]) and w["loss_after"] < w["loss_start"]),
            "cached_bytes": total_cache, "cached_bytes_per_block": per_block,
            "peak_minus_cached": peak - total_cache}


def linfit(x, y):
    """Least-squares y = a + b x: (a, b, R^2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (resid ** 2).sum() / ss_tot if ss_tot > 0 else 1.0
    return float(a), float(b), float(r2)


def print_table(rows, key):
    print(f"  {key:>6s} {'step ms':>9s} {'min ms':>8s} {'us/row':>8s} {'faults':>7s} {'peak MiB':>9s} "
          f"{'cached MiB':>11s} {'peak-cached':>12s} {'loss before -> after':>21s}")
    for r in rows:
        print(f"  {r[key]:6d} {r['step_ms_median']:9.3f} {r['step_ms_min']:8.3f} "
              f"{r['step_ms_median'] * 1e3 / r['batch']:8.2f} {r['faults_per_step']:7.0f} "
              f"{r['peak_bytes'] / MiB:9.3f} "
              f"{r['cached_bytes'] / MiB:11.3f} {r['peak_minus_cached'] / MiB:12.3f} "
              f"{r['loss_start']:9.4f} -> {r['loss_after']:8.4f}" + ("" if r["trains"] else "  NOT TRAINING"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", default="64,128,256,512,1024,2048,4096",
                   help="batch sizes for the batch sweep (at --sweep-layers)")
    p.add_argument("--layers", default="1,2,4,8,16", help="L values for the layer sweep (at --sweep-batch)")
    p.add_argument("--sweep-layers", type=int, default=4, help="L of the batch sweep")
    p.add_argument("--sweep-batch", type=int, default=256, help="batch of the layer sweep")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per configuration")
    p.add_argument("--lr", type=float, default=0.01,
                   help="SGD learning rate (momentum 0.9) at L <= 4; scaled by 4/L above")
    p.add_argument("--r2-min", type=float, default=0.999, help="R^2 above which growth is called linear")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS until other processes use < 10%% of the CPUs")
    p.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        batch, layers = (int(v) for v in args.worker.split(","))
        print(json.dumps(time_step(batch, layers, args.steps, args.warmup, args.lr)))
        return 0
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    env = environment()
    print_environment(env)
    note = load_note(env)
    if note:
        print(note)
    batches = [int(b) for b in args.batches.split(",")]
    layer_list = [int(v) for v in args.layers.split(",")]
    results = {"environment": env, "args": vars(args)}
    ok = True

    print(f"\nbatch sweep at L = {args.sweep_layers} (median of {args.steps} steps; peak = tracemalloc "
          "peak of one loss_and_grads above params + batch):")
    with ForeignLoad() as load_b:
        by_batch = [measure(b, args.sweep_layers, args.steps, args.warmup, args.lr) for b in batches]
    print_table(by_batch, "batch")
    a, b, r2 = linfit(batches, [r["peak_bytes"] for r in by_batch])
    _, bc, _ = linfit(batches, [r["cached_bytes"] for r in by_batch])
    _, bt, r2t = linfit(batches, [r["step_ms_median"] for r in by_batch])
    lin_b = r2 >= args.r2_min
    ok &= lin_b
    print(f"  peak memory = {a / MiB:.3f} MiB + {b:.0f} B/row x batch, R^2 = {r2:.5f} "
          f"({'linear' if lin_b else 'NOT linear'}); cached activations {bc:.0f} B/row "
          f"(peak/cached per row = {b / bc:.2f})")
    print(f"  step time = {bt * 1e3:.2f} us/row x batch + const, R^2 = {r2t:.4f}")
    print("  " + load_b.line())
    results["batch_sweep"] = {"rows": by_batch, "peak_intercept_bytes": a, "peak_bytes_per_row": b,
                              "peak_r2": r2, "cached_bytes_per_row": bc, "time_us_per_row": bt * 1e3,
                              "foreign_cpu_share": load_b.share,
                              "time_r2": r2t, "linear": lin_b}

    print(f"\nlayer sweep at batch {args.sweep_batch}:")
    with ForeignLoad() as load_l:
        by_layer = [measure(args.sweep_batch, L, args.steps, args.warmup, args.lr) for L in layer_list]
    print_table(by_layer, "layers")
    a, b, r2 = linfit(layer_list, [r["peak_bytes"] for r in by_layer])
    per_block = by_layer[-1]["cached_bytes_per_block"]
    block_bytes = float(np.median(per_block))
    _, bt, r2t = linfit(layer_list, [r["step_ms_median"] for r in by_layer])
    lin_l = r2 >= args.r2_min
    ok &= lin_l
    rest = [r["peak_minus_cached"] for r in by_layer]
    spread = max(rest) - min(rest)
    const = spread <= 0.25 * block_bytes
    ok &= const
    n, d, m = args.sweep_batch, 784, 10
    print(f"  peak memory = {a / MiB:.3f} MiB + {b / MiB:.3f} MiB/layer x L, R^2 = {r2:.5f} "
          f"({'linear' if lin_l else 'NOT linear'})")
    print(f"  cached activations per block: {block_bytes / MiB:.3f} MiB "
          f"(= 4 bytes x (n d + 3 n m + 2 m d) = {4 * (n * d + 3 * n * m + 2 * m * d) / MiB:.3f} MiB: "
          "Z_out, C_hat, P, R, K); per-layer peak increment / cached per block = "
          f"{b / block_bytes:.2f}")
    print(f"  peak minus cached activations: {', '.join(f'{v / MiB:.3f}' for v in rest)} MiB for "
          f"L = {', '.join(map(str, layer_list))}: spread {spread / MiB:.3f} MiB -> "
          + ("only the cached activations grow with L" if const else
             "SOMETHING OTHER THAN THE CACHED ACTIVATIONS GROWS WITH L"))
    print(f"  step time = {bt:.3f} ms/layer x L + const, R^2 = {r2t:.4f}")
    print("  " + load_l.line())
    results["layer_sweep"] = {"rows": by_layer, "peak_intercept_bytes": a, "peak_bytes_per_layer": b,
                              "peak_r2": r2, "cached_bytes_per_block": block_bytes,
                              "increment_over_cached": b / block_bytes,
                              "peak_minus_cached_spread_bytes": spread,
                              "only_cache_grows": const, "time_ms_per_layer": bt, "time_r2": r2t,
                              "foreign_cpu_share": load_l.share,
                              "linear": lin_l}
    trains = all(r["trains"] for r in by_batch + by_layer)
    ok &= trains
    print("\nevery configuration trains (loss after the timed steps finite and below its start): "
          + ("YES" if trains else "NO"))
    results["ok"] = bool(ok)
    print("\nmemory linear in L and in the batch, nothing but the cache growing with L: "
          + ("YES" if ok else "NO"))
    if args.json:
        write_json(args.json, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
