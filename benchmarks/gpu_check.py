#!/usr/bin/env python
"""The GPU check: one command for the first machine with a CUDA GPU and CuPy.

    python benchmarks/gpu_check.py [--out DIR]

Runs, within a time budget (8 minutes by default), with no network:

1. the real-CuPy tests (``pytest -m cupy``: the test suite's cases on the GPU);
2. notebook 5 (``notebooks/05_going_to_the_gpu.py``), whose second half runs on the GPU;
3. a training step of the Fashion-MNIST network (linear model, learned-oracle blocks,
   L = 4, float32, SGD with momentum) at batch 256 and 4096 on NumPy and on CuPy, the
   median over timed steps (CuPy synchronised before each clock reading) and the speed-up;
4. the device memory CuPy's pool holds after those steps, per batch size.

It writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` and says for every step
whether it passed, failed or was skipped, and why. Exit status 1 if a step failed.

``--stand-in`` runs the same steps on the strict CuPy stand-in of ``tests/strict_device``
(no GPU needed, tiny sizes): the test suite does so, so the script is proven before any
device sees it. A stand-in report is marked as such: its timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import ROOT, cpu_model, fashion_config, git_state, random_batch, usable_cpus  # noqa: E402

import flowattn_np as fa  # noqa: E402
from flowattn_np import backend  # noqa: E402
from flowattn_np.blocks.network import Network  # noqa: E402
from flowattn_np.training.optim import SGD  # noqa: E402

NOTEBOOK = os.path.join(ROOT, "notebooks", "05_going_to_the_gpu.py")
TESTS = os.path.join(ROOT, "tests")
SIZES = {"device": (256, 4096), "stand-in": (16, 64)}
STEPS = {"device": (3, 20), "stand-in": (1, 3)}  # warm-up, timed


class Check:
    """The report: one record per step, written as JSON and Markdown."""

    def __init__(self, stand_in, budget):
        self.stand_in = stand_in
        self.deadline = time.perf_counter() + budget
        self.steps = []

    def left(self):
        return self.deadline - time.perf_counter()

    def add(self, name, status, seconds=0.0, why=None, **figures):
        rec = {"step": name, "status": status, "seconds": round(seconds, 2), "why": why, **figures}
        self.steps.append(rec)
        print(f"[{status}] {name} ({seconds:.1f} s)" + (f": {why}" if why else ""), flush=True)
        return rec

    @contextlib.contextmanager
    def step(self, name, needs_s=0):
        """Run a step's body; a raised exception marks it failed, a missing budget skips it."""
        out = {"status": "ok", "why": None, "figures": {}, "skip": False}
        if self.left() < needs_s:
            out["skip"] = True
            self.add(name, "skipped", why=f"the time budget has {self.left():.0f} s left, the step needs ~{needs_s} s")
            yield out
            return
        t0 = time.perf_counter()
        try:
            yield out
        except Exception as exc:  # a failed step is reported, the others still run
            out["status"], out["why"] = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        self.add(name, out["status"], time.perf_counter() - t0, out["why"], **out["figures"])


# ---------------------------------------------------------------- the device

def device_info(stand_in):
    """(usable, facts dict, reason when not usable)."""
    if stand_in:
        return True, {"name": "strict CuPy stand-in (tests/strict_device): no GPU, NumPy underneath"}, None
    try:
        with fa.use_backend("cupy"):
            pass
    except fa.BackendError as exc:
        return False, {}, str(exc).split(". ")[0]
    import cupy

    facts = {"cupy": cupy.__version__}
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"?")
        facts["name"] = name.decode() if isinstance(name, bytes) else str(name)
        facts["memory_gib"] = round(props.get("totalGlobalMem", 0) / 2 ** 30, 2)
        facts["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        facts["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:  # the facts are a report, not the check
        facts["error"] = repr(exc)
    return True, facts, None


# ---------------------------------------------------------------- 1. the real-CuPy tests

def run_tests(check, args, usable, reason):
    if check.stand_in:
        name = "pytest -m cupy (" + " ".join(os.path.relpath(f, ROOT) for f in args.test_files) + ")"
    else:
        name = "pytest -m cupy"
    if not usable:
        return check.add(name, "skipped", why=f"no usable CuPy/GPU ({reason})")
    if not os.path.isdir(TESTS):
        return check.add(name, "skipped", why=f"no test suite at {TESTS} (run from a clone of the repository)")
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return check.add(name, "skipped", why="pytest is not installed (pip install -e '.[test]')")
    timeout = max(30, min(args.test_timeout, check.left() - 150))
    with check.step(name, needs_s=30) as out:
        if out["skip"]:
            return
        cmd = [sys.executable, "-m", "pytest", "-m", "cupy", "-q", "-rs", "-p", "no:cacheprovider",
               *args.test_files]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pytest took more than {timeout:.0f} s (the budget's share)") from None
        lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else "(no output)"
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
        out["figures"] = {"summary": summary, "counts": counts, "exit_status": proc.returncode}
        if proc.returncode not in (0, 5):  # 5: no test collected
            raise RuntimeError(f"pytest exit {proc.returncode}: {summary}")
        if not counts.get("passed"):
            out["status"] = "ok"
            out["why"] = (f"{summary}; every CuPy case skipped: "
                          + ("the stand-in is not CuPy in a fresh process (the strict cases run in CI)"
                             if check.stand_in else "see pytest -rs"))


# ---------------------------------------------------------------- 2. notebook 5

def run_notebook(check, usable, reason, out_dir):
    name = "notebook 5 (05_going_to_the_gpu)"
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return check.add(name, "skipped", why="matplotlib is not installed (pip install matplotlib)")
    with check.step(name, needs_s=20) as out:
        if out["skip"]:
            return
        import runpy

        import matplotlib.pyplot as plt

        saved, cwd = backend._state["name"], os.getcwd()
        printed = io.StringIO()
        os.chdir(os.path.dirname(NOTEBOOK))
        try:
            with contextlib.redirect_stdout(printed):  # the notebook's output goes to a file
                ns = runpy.run_path(NOTEBOOK, run_name="__notebook__")  # its cells, in order
        finally:
            os.chdir(cwd)
            backend._state["name"] = saved
            plt.close("all")
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "notebook5_output.txt"), "w") as f:
                f.write(printed.getvalue())
        out["figures"] = {"gpu_half_ran": bool(ns.get("HAVE_GPU")), "numpy_ms": ns.get("numpy_ms"),
                          "cupy_ms": ns.get("cupy_ms"), "output": "notebook5_output.txt"}
        if not ns.get("HAVE_GPU"):
            out["why"] = f"ran its NumPy half only: no usable CuPy/GPU ({reason})"


# ---------------------------------------------------------------- 3. training steps, 4. memory

def time_step(batch, warmup, timed, sync):
    """Median seconds of one training step (forward, backward, SGD) on the active backend."""
    net = Network(fashion_config(layers=4), seed=0)
    opt = SGD(net.params, lr=0.01, momentum=0.9)
    X, y = random_batch(batch, seed=0)
    X, y = fa.asarray(X), fa.asarray(y)

    def step():
        opt.step(net.loss_and_grads(X, y)[1])

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    loss = fa.to_numpy(net.loss(X, y)).item()
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss after the timed steps is {loss}")
    return statistics.median(times)


def pool_bytes():
    """Bytes CuPy's memory pool holds, and the device's free / total bytes; None on the stand-in."""
    import cupy

    if not hasattr(cupy, "get_default_memory_pool"):
        return None
    pool = cupy.get_default_memory_pool()
    free, total = cupy.cuda.runtime.memGetInfo()
    return {"pool_used": pool.used_bytes(), "pool_held": pool.total_bytes(), "device_free": free,
            "device_total": total}


def free_pool():
    import cupy

    if hasattr(cupy, "get_default_memory_pool"):
        cupy.get_default_memory_pool().free_all_blocks()


def run_training(check, usable, reason):
    kind = "stand-in" if check.stand_in else "device"
    warmup, timed = STEPS[kind]
    rows = []
    for batch in SIZES[kind]:
        name = f"training step, batch {batch}"
        with check.step(name, needs_s=10) as out:
            if out["skip"]:
                continue
            with fa.use_backend("numpy"):
                numpy_s = time_step(batch, warmup, timed, lambda: None)
            out["figures"] = {"batch": batch, "numpy_ms": numpy_s * 1e3}
            if not usable:
                out["why"] = f"NumPy only: no usable CuPy/GPU ({reason})"
            else:
                with fa.use_backend("cupy"):
                    free_pool()
                    cupy_s = time_step(batch, warmup, timed, backend.synchronize)
                    memory = pool_bytes()
                out["figures"].update(cupy_ms=cupy_s * 1e3, speedup=numpy_s / cupy_s)
                out["figures"]["memory"] = memory
                if memory is None:
                    out["figures"]["memory_why"] = "the stand-in has no device memory to measure"
                if check.stand_in:
                    out["why"] = "stand-in run: its CuPy timings are NumPy's with wrappers and mean nothing"
            rows.append(out["figures"])
    measured = [r for r in rows if r.get("memory")]
    if measured:
        check.add("device memory", "ok", **{f"pool_mib_batch_{r['batch']}": r["memory"]["pool_held"] / 2 ** 20
                                            for r in measured})
    else:
        why = ("the stand-in has no device memory to measure" if check.stand_in and usable
               else f"no usable CuPy/GPU ({reason})" if not usable else "no training step ran on the device")
        check.add("device memory", "skipped", why=why)
    return rows


# ---------------------------------------------------------------- the report

def environment(facts, stand_in):
    cpus = usable_cpus()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "stand_in": stand_in,
            "python": platform.python_version(), "numpy": np.__version__, "flowattn_np": fa.__version__,
            "git": git_state(), "cpu": cpu_model(), "nproc": os.cpu_count(), "cpus_usable": cpus["available"],
            "device": facts}


def markdown(report):
    env = report["environment"]
    lines = ["# GPU check" + (" (STAND-IN RUN: no GPU, the strict CuPy stand-in; timings mean nothing)"
                              if env["stand_in"] else ""), "",
             f"{env['date']}; device: {env['device'].get('name', 'none')}"
             + (f" ({env['device']['memory_gib']} GiB, CuPy {env['device'].get('cupy')}, CUDA runtime "
                f"{env['device'].get('cuda_runtime')})" if "memory_gib" in env["device"] else "")
             + f"; host: {env['cpu']}, {env['cpus_usable']} usable CPUs; NumPy {env['numpy']}, flowattn_np "
             f"{env['flowattn_np']} (git {env['git'] or '?'})", "",
             "| step | status | seconds | note |", "|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s['why'] or ''} |")
    lines += ["", "Training step (linear network, L = 4 learned-oracle blocks, float32, SGD momentum 0.9), "
              "median ms per step:", "", "| batch | NumPy, ms | CuPy, ms | speed-up | CuPy pool after, MiB |",
              "|---|---|---|---|---|"]
    for r in report["training"]:
        mem = r.get("memory")
        lines.append(f"| {r['batch']} | {r['numpy_ms']:.2f} | "
                     + (f"{r['cupy_ms']:.2f} | {r['speedup']:.2f}x | " if "cupy_ms" in r else "- | - | ")
                     + (f"{mem['pool_held'] / 2 ** 20:.1f} |" if mem else f"{r.get('memory_why', 'not measured')} |"))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="report folder (default: runs/gpu-check-<time>)")
    p.add_argument("--stand-in", action="store_true",
                   help="run on the strict CuPy stand-in of tests/strict_device at tiny sizes (no GPU)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds the whole check may take")
    p.add_argument("--test-timeout", type=float, default=300.0, help="seconds for pytest -m cupy at most")
    p.add_argument("--test-files", nargs="*", default=None,
                   help="test files for pytest -m cupy (default: the whole suite)")
    args = p.parse_args(argv)
    if not (args.budget > 0 and args.test_timeout > 0):
        p.error("--budget and --test-timeout: expected positive numbers of seconds")
    args.test_files = [os.path.abspath(f) for f in (args.test_files or [TESTS])]
    missing = [f for f in args.test_files if not os.path.exists(f)]
    if missing:
        p.error(f"--test-files: {', '.join(missing)} not found")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out: {args.out} exists and is not a folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    check = Check(args.stand_in, args.budget)
    out = args.out or os.path.join("runs", time.strftime("gpu-check-%Y%m%d-%H%M%S"))
    stand_in = contextlib.nullcontext()
    if args.stand_in:
        sys.path.insert(0, TESTS)
        import strict_device

        stand_in = strict_device.installed()
    with stand_in:
        usable, facts, reason = device_info(args.stand_in)
        report = {"environment": environment(facts, args.stand_in), "steps": check.steps, "training": []}
        print(f"GPU check on {facts.get('name') or 'a machine without a usable GPU'}"
              + (f" ({reason})" if reason else ""), flush=True)
        run_tests(check, args, usable, reason)
        run_notebook(check, usable, reason, out)
        report["training"] = run_training(check, usable, reason)
    report["seconds"] = round(args.budget - check.left(), 1)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(markdown(report))
    failed = [s["step"] for s in check.steps if s["status"] == "failed"]
    print(f"wrote {os.path.join(out, 'gpu_check.json')} and gpu_check.md in {report['seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
