"""Helpers shared by the benchmark scripts: imports, environment report, timers.

Not part of the package: the scripts import ``flowattn_np`` from this checkout when it
is not installed, so ``python benchmarks/<script>.py`` works from a fresh clone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

try:  # an installed flowattn_np, or this checkout's
    import flowattn_np  # noqa: F401
except ImportError:
    sys.path.insert(0, ROOT)
    import flowattn_np  # noqa: F401

import numpy as np

from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig


def fashion_config(layers=4, dtype="float32"):
    """The Fashion-MNIST network of the paper's experiment (tied, learned oracle, learned h)."""
    return NetworkConfig(
        n_inputs=784, n_classes=10, layers=layers,
        block=BlockConfig(model="linear", scheme="lie", integrator="euler", targets="learned",
                          learn_h=True, h=0.1),
        tied=True, dtype=dtype)


def random_batch(n, n_inputs=784, n_classes=10, seed=0):
    """n random float32 rows in [0, 1) and integer labels in [0, n_classes)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_inputs), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n)
    return X, y


def make_network(layers=4, seed=0):
    return Network(fashion_config(layers), seed=seed)


# ---------------------------------------------------------------- environment

def blas_info():
    """What BLAS NumPy uses and with how many threads: threadpoolctl if installed, else
    numpy.show_config(). Returns a dict (JSON-able)."""
    info = {"source": None, "libraries": []}
    try:
        import threadpoolctl

        info["source"] = "threadpoolctl " + threadpoolctl.__version__
        for lib in threadpoolctl.threadpool_info():
            info["libraries"].append({k: lib.get(k) for k in (
                "user_api", "internal_api", "prefix", "version", "num_threads",
                "architecture", "threading_layer", "filepath")})
    except ImportError:
        info["source"] = "numpy.show_config (threadpoolctl not installed: thread count unknown)"
        try:
            cfg = np.show_config(mode="dicts")
            blas = cfg.get("Build Dependencies", {}).get("blas", {})
            info["libraries"].append({"user_api": "blas", "internal_api": blas.get("name"),
                                      "version": blas.get("version"),
                                      "configuration": blas.get("openblas configuration")})
        except Exception as exc:  # very old NumPy
            info["libraries"].append({"error": repr(exc)})
    return info


def numpy_blas_threads():
    """Threads of NumPy's BLAS (threadpoolctl), or None when it cannot be told."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in (lib.get("filepath") or ""):
            return int(lib["num_threads"])
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas":
            return int(lib["num_threads"])
    return None


def limit_blas_threads(n):
    """Limit BLAS threads to n (threadpoolctl); returns the controller to keep, or None."""
    try:
        import threadpoolctl
    except ImportError:
        print(f"warning: threadpoolctl is not installed: cannot set NumPy's BLAS to {n} threads",
              file=sys.stderr)
        return None
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def usable_cpus():
    """The CPUs this process may use (the package's count: affinity mask, cgroup quota)."""
    from flowattn_np.threads import cpu_report

    return cpu_report()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state():
    """Commit of this checkout and whether the package code differs from it (read-only git)."""
    import subprocess

    def run(*cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("git", "rev-parse", "--short", "HEAD")
    if not commit:
        return None
    dirty = run("git", "status", "--porcelain", "--", "flowattn_np")
    if not dirty:
        return commit
    import hashlib

    h = hashlib.sha1()
    pkg = os.path.join(ROOT, "flowattn_np")
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return f"{commit} + uncommitted changes in flowattn_np/ (sources sha1 {h.hexdigest()[:10]})"


def environment():
    """Machine and library facts printed with every benchmark."""
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "flowattn_np": getattr(flowattn_np, "__version__", "?"),
        "git": git_state(),
        "nproc": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "cpu": cpu_model(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "FLOWATTN_"))},
        "blas": blas_info(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def print_environment(env):
    print(f"date {env['date']}  python {env['python']}  numpy {env['numpy']}  "
          f"torch {env['torch'] or 'not installed'}  flowattn_np {env['flowattn_np']} "
          f"(git {env['git'] or '?'})")
    print(f"machine: nproc {env['nproc']}, CPU {env['cpu']}, load average at start "
          + (" ".join(f"{x:.2f}" for x in env["loadavg_at_start"]) if env["loadavg_at_start"] else "?"))
    usable = env.get("cpus_usable")
    if usable:
        print(f"usable CPUs: {usable['available']} (limited by the {usable['limited_by']}; affinity mask "
              f"{usable['affinity']}, cgroup quota {usable['cgroup_quota'] or 'none'})")
    print("environment: " + (" ".join(f"{k}={v}" for k, v in env["env"].items()) or "(no OPENBLAS_/OMP_/MKL_ variables)"))
    print(f"BLAS ({env['blas']['source']}):")
    for lib in env["blas"]["libraries"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in lib.items() if v is not None and k != "filepath")
              + (f"\n    {lib['filepath']}" if lib.get("filepath") else ""))


def load_note(env):
    """A warning line when the machine was busy at the start (timings then are noisy)."""
    la = env.get("loadavg_at_start")
    if la and env["nproc"] and la[0] > 0.5 * env["nproc"]:
        return (f"note: 1-min load average {la[0]:.2f} on {env['nproc']} CPUs at start: other "
                "processes share this machine, timings may be inflated and noisy")
    return None


# ---------------------------------------------------------------- timing

def time_calls(fn, n, warmup=0, sync=None):
    """Wall-clock seconds of n calls of fn() after ``warmup`` untimed calls (list)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def summary(times):
    """Median, min, quartiles (seconds) of a list of timings."""
    s = sorted(times)
    q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
    return {"median": statistics.median(s), "min": s[0], "q1": q[0], "q3": q[2], "n": len(s)}


class ForeignLoad:
    """Share of the machine's CPU time used by OTHER processes while the block ran
    (/proc/stat busy time minus this process's and its children's CPU time): a noise
    indicator for timings on a shared machine. ``share`` is None where /proc is missing."""

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self.b0, self.o0, self.t0 = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        b1, o1, t1 = self._busy(), self._own(), time.perf_counter()
        self.share = None
        if self.b0 is not None and b1 is not None:
            other = (b1 - self.b0) - (o1 - self.o0)
            self.share = max(0.0, other / ((t1 - self.t0) * (os.cpu_count() or 1)))
        return False

    def line(self):
        if self.share is None:
            return "other processes' CPU use during timing: unknown"
        warn = ("  <- a busy machine: these timings are inflated, run again when it is quiet"
                if self.share > 0.10 else "")
        return f"other processes used {100 * self.share:.0f}% of the CPUs during timing{warn}"


def wait_for_quiet(max_seconds, threshold=0.10, window=2.0):
    """Wait (at most max_seconds) until other processes use < threshold of the CPUs over a
    ``window``-second sample; returns the last measured share (None if unknown)."""
    deadline = time.perf_counter() + max_seconds
    share = None
    while True:
        with ForeignLoad() as fl:
            time.sleep(window)
        share = fl.share
        if share is None or share < threshold or time.perf_counter() >= deadline:
            return share
        print(f"  waiting for a quiet machine: other processes use {100 * share:.0f}% of the CPUs",
              file=sys.stderr)


def minor_faults():
    """Minor page faults of this process so far (0 where getrusage is missing)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


# glibc malloc with large mmap / trim thresholds: freed temporaries stay in the heap and
# are reused, so a step does not page-fault fresh memory (a diagnostic, not a setting the
# package makes). Used in a subprocess's environment only.
MALLOC_TUNED_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:"
                                      "glibc.malloc.trim_threshold=1073741824"}


def run_worker(script, worker_args, extra_env=None):
    """Run ``python script --worker ...`` in a fresh process; return its JSON (last line)."""
    import subprocess

    env = dict(os.environ)
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, script] + list(worker_args), env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker_args} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_json(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
    print(f"figures written to {path}")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def ms(seconds):
    return f"{seconds * 1e3:.3f}"
