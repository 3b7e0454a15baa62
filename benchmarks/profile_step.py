#!/usr/bin/env python
"""Where the time of one training step goes: cProfile by function, and the share in BLAS.

The step is a workload of bench_compare.py (default: the quadratic network at
(B, n, d) = (32, 128, 64), label-free, L = 2, float32). Two views:

* cProfile: Python functions by own time (``tottime``) and cumulative time. A product
  written ``a @ b`` is not a function call, so its time shows as the own time of the
  function that wrote it; ``numpy.matmul`` rows are the ``xp.matmul(..., out=)`` calls.
* BLAS share: with py-spy installed (``pip install py-spy``), the step loop is sampled
  with native frames and each sample of the main thread inside ``loss_and_grads`` is
  classed as GEMM (an OpenBLAS ``*gemm*`` frame), LAPACK (``*syev*``, ``*sytrd*``, ...)
  or other (NumPy element-wise loops, Python); samples whose innermost OpenBLAS frame is
  ``exec_blas`` / ``inner_thread`` (a thread waiting for the other) are counted apart. Without py-spy only cProfile is printed.

Run ``python benchmarks/profile_step.py --help``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment, limit_blas_threads, print_environment  # noqa: E402
from bench_compare import make_impl, name_of  # noqa: E402

LAPACK = ("syev", "sytrd", "stedc", "ormtr", "orgtr", "steqr", "sterf", "larf", "lasr", "laed")


def workload(args):
    B, n, d = (int(v) for v in args.shape.split(","))
    w = {"model": "quadratic", "B": B, "n": n, "d": d, "layers": args.layers, "targets": args.targets,
         "dtype": args.dtype, "h": 0.1, "lr": 0.05}
    w["name"] = name_of(w)
    return w


def loop(args):
    step = make_impl("numpy", workload(args), 0)[0]
    for _ in range(3):
        step()
    return step


SYNC = ("exec_blas", "inner_thread", "blas_thread_server", "sched_yield")


def classify(stack):
    """Class of one sampled stack by its innermost OpenBLAS frame (None: not in the step)."""
    frames = stack.split(";")
    if not any("loss_and_grads" in f for f in frames):
        return None
    native = [f.split(" (")[0].lower() for f in frames if "openblas" in f]
    if not native:
        return "outside BLAS (element-wise, Python)"
    if any(k in name for name in native for k in LAPACK):
        return "LAPACK (eigh)"
    leaf = native[-1]
    if any(k in leaf for k in SYNC):
        return "BLAS threads waiting for each other"
    if "gemm" in leaf or "gemv" in leaf:
        return "BLAS GEMM (kernels, packing)"
    return "other BLAS"


def blas_share(args):
    """Sample ``--samples-steps`` steps with py-spy; {class: share} or a reason string."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed (pip install py-spy): BLAS share not measured"
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.txt")
        cmd = [spy, "record", "--native", "--rate", "250", "--format", "raw", "--output", raw, "--",
               sys.executable, os.path.abspath(__file__), "--child", "--shape", args.shape,
               "--targets", args.targets, "--layers", str(args.layers), "--dtype", args.dtype,
               "--steps", str(args.steps), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(raw):
            return f"py-spy failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
        counts = {}
        with open(raw) as f:
            for line in f:
                stack, _, num = line.rstrip().rpartition(" ")
                cls = classify(stack)
                if cls:
                    counts[cls] = counts.get(cls, 0) + int(num)
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} | {"samples": total}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shape", default="32,128,64", help="B,n,d of the quadratic network")
    p.add_argument("--targets", default="none", choices=("none", "learned"))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--steps", type=int, default=20, help="profiled steps")
    p.add_argument("--top", type=int, default=15, help="rows of the cProfile table")
    p.add_argument("--threads", type=int, default=1,
                   help="NumPy BLAS threads (threadpoolctl), as bench_compare.py --threads")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    limiter = limit_blas_threads(args.threads)  # noqa: F841  (kept: the limit lasts while it lives)
    if args.child:
        step = loop(args)
        for _ in range(args.steps):
            step()
        return 0
    print_environment(environment())
    w = workload(args)
    print(f"\nprofile of {args.steps} NumPy steps: {w['name']}")
    step = loop(args)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(args.top)
    text = buf.getvalue()
    print(text[text.find("ncalls") - 2:].rstrip() if "ncalls" in text else text)
    share = blas_share(args)
    print("\nshare of the step's main-thread samples (py-spy --native, 250 Hz):")
    if isinstance(share, str):
        print("  " + share)
    else:
        n = share.pop("samples")
        for k, v in share.items():
            print(f"  {k:32s} {100 * v:5.1f} %")
        print(f"  ({n} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
