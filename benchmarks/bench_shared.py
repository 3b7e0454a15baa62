#!/usr/bin/env python
"""A fixed training job alone and beside busy processes: how the package shares a machine.

The job: ``fit`` of the Fashion-MNIST network (linear model, learned-oracle blocks, tied,
L = 4, float32, batch 256) on random rows of image size for a few epochs, then
``evaluate`` (``--model quadratic``: the label-free self-attention network, L = 2, at
(B, n, d) = (32, 128, 64)). It runs in a fresh process, timed inside it (imports and data
excluded), alone and beside k busy processes (Python spinning in a loop), k = 1 and
the usable CPU count by default, each in turn, for ``--rounds`` rounds, under two settings:

* ``package``: the package's defaults, nothing set (its thread policy: BLAS at one thread
  inside the package, host threads sharing a batch large enough to be split);
* ``blas``: ``FLOWATTN_THREADS=off``, BLAS at its own default threads, as plain NumPy code.

Printed: the job's time alone, its slowdown beside k busy processes (time / time alone of
the same setting in the same round) and against the fair share: the time alone times the
ratio of runnable threads (the job's + k) to usable CPUs, at least 1. Ranges are over rounds.

Run ``python benchmarks/bench_shared.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import environment, fashion_config, load_note, print_environment, random_batch, write_json  # noqa: E402

from flowattn_np.cli import ( # noqa: E402
    _ints as positive_ints,
    _non_negative_float as non_negative_float,
)
from flowattn_np.cli import _positive as positive_int  # noqa: E402  (the command line's own checks)
from flowattn_np.blocks.config import BlockConfig  # noqa: E402
from flowattn_np.blocks.network import Network, NetworkConfig  # noqa: E402
from flowattn_np.threads import ENV_VAR, available_cpus  # noqa: E402
from flowattn_np.training.train import evaluate, fit  # noqa: E402

SETTINGS = {"package": "the package's defaults (nothing set)",
            "blas": f"{ENV_VAR}=off: BLAS at its own default threads"}
# a busy process that ends when the driver does, even if the driver is killed
SPIN = "import os\nparent = {pid}\nwhile os.getppid() == parent: pass"


# ---------------------------------------------------------------- the job (a fresh process)

def job_data(args):
    """(network, X, y, X_test, y_test) of the fixed job; the same in every process."""
    if args.model == "linear":
        X, y = random_batch(args.rows, seed=0)
        Xt, yt = random_batch(max(args.rows // 5, 1), seed=1)
        return Network(fashion_config(layers=4), seed=0), X, y, Xt, yt
    B, n, d = 32, 128, 64
    cfg = NetworkConfig(n_inputs=d, layers=2, block=BlockConfig(model="quadratic", targets="none", h=0.1))
    rng = np.random.default_rng(0)
    rows = max(args.rows // 50, B)  # sequences: a (32, 128, 64) step costs about 5 steps of 256 images
    X = rng.normal(size=(rows, n, d)).astype(np.float32)
    y = rng.integers(0, n, size=(rows, n))
    return Network(cfg, seed=0), X, y, X[:B], y[:B]


def job_threads(net, X, batch):
    """Threads the job keeps runnable: its batch parts, or BLAS's threads when it runs alone
    in one host thread with the policy off."""
    from threadpoolctl import threadpool_info

    parts = len(net.batch_parts(X[:batch]))
    blas = max([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] or [1])
    return parts if os.environ.get(ENV_VAR) != "off" else blas


def worker(args):
    net, X, y, Xt, yt = job_data(args)
    batch = 256 if args.model == "linear" else 32
    threads = job_threads(net, X, batch)
    t0 = time.perf_counter()
    history = fit(net, X, y, epochs=args.epochs, batch_size=batch, lr=0.01, progress=False)
    test = evaluate(net, Xt, yt)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "threads": threads, "loss": float(test["loss"]),
                      "train_loss": history.epochs[-1]["train_loss"]}))
    return 0


# ---------------------------------------------------------------- the driver

def run_job(args, setting, busy):
    """The job in a fresh process beside ``busy`` spinning processes; its JSON."""
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if setting == "blas":
        env[ENV_VAR] = "off"
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(pid=os.getpid())]) for _ in range(busy)]
    try:
        time.sleep(0.3 if busy else 0)  # the spinners are running before the job starts
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model,
                               "--rows", str(args.rows), "--epochs", str(args.epochs)],
                              env=env, capture_output=True, text=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the job ({setting}, {busy} busy) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _settings(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in SETTINGS for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(SETTINGS)}, got {text!r}")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=("linear", "quadratic"), default="linear", help="the job's network")
    p.add_argument("--rows", type=positive_int, default=12000,
                   help="training rows of the job (quadratic: rows / 50 sequences)")
    p.add_argument("--epochs", type=positive_int, default=8, help="epochs of the job")
    p.add_argument("--busy", type=positive_ints, default=None,
                   help="busy process counts to run beside, e.g. 1,2 (default: 1 and the usable CPUs)")
    p.add_argument("--settings", type=_settings, default=list(SETTINGS), help="comma list: package, blas")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds; each runs every case in turn")
    p.add_argument("--pause", type=non_negative_float, default=1.0, help="idle seconds between jobs")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.busy = sorted(set(args.busy or (1, available_cpus())))
    return args


def _range(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(args, runs, cpus):
    """Print the table; returns the JSON-able summary."""
    print(f"\njob time alone, s, and slowdown beside k busy processes: median (range over {args.rounds} rounds); "
          f"fair share = alone x max(1, (job threads + k) / {cpus} CPUs)")
    print(f"  {'setting':9s} {'job threads':>11s} {'alone, s':>18s}" + "".join(
        f" {f'x alone, k={k}':>18s} {f'x fair, k={k}':>18s}" for k in args.busy))
    summary = {}
    for setting in args.settings:
        alone = [r[0]["seconds"] for r in runs[setting]]
        threads = runs[setting][0][0]["threads"]
        rec = {"alone_s": alone, "job_threads": threads, "beside": {}}
        cells = []
        for k in args.busy:
            slow = [r[k]["seconds"] / r[0]["seconds"] for r in runs[setting]]
            fair = max(1.0, (threads + k) / cpus)
            rec["beside"][k] = {"seconds": [r[k]["seconds"] for r in runs[setting]], "x_alone": slow,
                                "fair_share_factor": fair, "x_fair": [s / fair for s in slow]}
            cells.append(f" {_range(slow):>18s} {_range([s / fair for s in slow]):>18s}")
        print(f"  {setting:9s} {threads:11d} {_range(alone):>18s}" + "".join(cells))
        summary[setting] = rec
    return summary


def machine():
    """Print the machine (CPU, usable CPUs, BLAS, load) and return its facts."""
    env = environment()
    print_environment(env)
    print(load_note(env) or "")
    return env


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run_job's finally stops the spinners
    env, cpus = machine(), available_cpus()
    print(f"job: {args.model} network, {args.rows} rows, {args.epochs} epochs, then evaluate; settings: "
          + "; ".join(f"{s} = {SETTINGS[s]}" for s in args.settings)
          + f"; beside k = {', '.join(map(str, args.busy))} busy processes")
    runs = {s: [] for s in args.settings}
    cases = [(s, k) for s in args.settings for k in [0] + args.busy]
    for r in range(args.rounds):
        rec = {s: {} for s in args.settings}
        for setting, k in cases:
            time.sleep(args.pause)
            res = run_job(args, setting, k)
            rec[setting][k] = res
            print(f"  round {r + 1}/{args.rounds}: {setting:8s} beside {k} busy: {res['seconds']:.2f} s "
                  f"(job threads {res['threads']}, test loss {res['loss']:.4f})", flush=True)
        for s in args.settings:
            runs[s].append(rec[s])
    summary = report(args, runs, cpus)
    if args.json:
        write_json(args.json, {"environment": env, "cpus": cpus, "args": vars(args), "results": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
