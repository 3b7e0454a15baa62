"""How many threads the package's computations use: one policy for the whole package.

By default the package parallelises its own work (``Network`` cuts a large enough batch
into parts that run in host threads, one per usable CPU) and runs BLAS at **one thread
inside its own computations**, through threadpoolctl. BLAS threads (OpenBLAS's) spin
while they wait and fight any other process for the cores, so on a machine shared by
other jobs they cost far more than they gain; host threads that block instead of
spinning do not. A user's own NumPy code outside the package keeps its BLAS threads:
the limit is entered around the package's entry points (`Network` forward, backward,
loss and gradients; ``fit``, ``evaluate``, ``reproduce``) and lifted when they return.

One setting overrides the default, in order of precedence:

* an explicit argument (``Network(threads=k)``; ``--threads`` on the command line),
* ``flowattn_np.set_threads(k)``,
* the environment variable ``FLOWATTN_THREADS`` (read at every use),
* the default: the CPUs this process may use (`available_cpus`).

A setting is a whole number k >= 1 (k host threads share a batch, BLAS at one thread), or
``"off"``: the package runs in the calling thread and leaves BLAS's own threads as they
are (what plain NumPy code does). On CuPy the policy never threads device work: a batch on
the device runs whole (``backend.on_host``).

The CPUs a process may use are the smallest of ``os.cpu_count()``, the affinity mask
(``os.sched_getaffinity``) and the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), as in a container or a JupyterHub server
whose quota is below the host's cores.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from dataclasses import dataclass

ENV_VAR = "FLOWATTN_THREADS"
OFF = "off"

_state = {"setting": None}  # what set_threads chose: None (not set), an int, or OFF


# ---------------------------------------------------------------- CPUs a process may use

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(mount, path):
    """mount/path and every folder above it up to mount (deepest first): a quota set on a
    parent cgroup limits its children too; inside a container the process's path is often
    not below the mount, whose root is then the container's own cgroup."""
    parts = [p for p in path.strip("/").split("/") if p and p not in (".", "..")]
    return [os.path.join(mount, *parts[:k]) for k in range(len(parts), -1, -1)]


def _quota_v2(folder):
    text = _read(os.path.join(folder, "cpu.max"))  # "max 100000" or "<quota> <period>"
    if not text:
        return None
    fields = text.split()
    try:
        if fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100000
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder):
    quota, period = _read(os.path.join(folder, "cpu.cfs_quota_us")), _read(os.path.join(folder, "cpu.cfs_period_us"))
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1: no quota


def cgroup_cpu_quota(root="/"):
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when there is none.

    Reads ``/proc/self/cgroup`` to find the cgroup, then cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` under ``/sys/fs/cgroup``, in the cgroup's folder
    and every folder above it (the smallest quota wins). ``root`` prefixes both paths, so
    tests can fake them.
    """
    text = _read(os.path.join(root, "proc/self/cgroup"))
    if not text:
        return None
    mount = os.path.join(root, "sys/fs/cgroup")
    quotas = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: one unified hierarchy
            quotas += [_quota_v2(folder) for folder in _ancestors(mount, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own hierarchy
            for name in (controllers, "cpu,cpuacct", "cpu"):
                base = os.path.join(mount, name)
                if os.path.isdir(base):
                    quotas += [_quota_v1(folder) for folder in _ancestors(base, path)]
                    break
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _affinity():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity mask to read
        return None


def cpu_report(root="/", affinity=None, cpu_count=None):
    """The CPUs this process may use, and where the limit comes from (a JSON-able dict).

    ``os_cpu_count``: the machine's cores; ``affinity``: CPUs in the affinity mask;
    ``cgroup_quota``: the cgroup CPU quota in CPUs (fractional, None without one);
    ``available``: the smallest of the three, the quota rounded up, at least 1; ``limited_by``:
    which one gave it. ``root``, ``affinity`` and ``cpu_count`` fake the sources (tests).
    """
    count = os.cpu_count() if cpu_count is None else cpu_count
    mask = _affinity() if affinity is None else len(affinity)
    quota = cgroup_cpu_quota(root)
    limits = {"os.cpu_count": count, "affinity mask": mask,
              "cgroup quota": None if quota is None else max(1, math.ceil(quota - 1e-9))}
    known = {k: v for k, v in limits.items() if v}
    source = min(known, key=known.get) if known else "unknown"
    return {"os_cpu_count": count, "affinity": mask, "cgroup_quota": quota,
            "available": known.get(source, 1), "limited_by": source}


@functools.lru_cache(maxsize=1)
def _cached_report():
    return cpu_report()


def available_cpus():
    """The CPUs this process may really use: the smallest of the core count, the affinity
    mask and the cgroup CPU quota (rounded up), at least 1. Read once per process."""
    return _cached_report()["available"]


# ---------------------------------------------------------------- the setting

def check_setting(value, name="threads"):
    """A thread setting: a whole number >= 1, or "off". Returns an int or OFF."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == OFF:
            return OFF
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
        raise ValueError(f"{name}: expected a whole number >= 1 or 'off', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name}: expected a whole number >= 1 or 'off', got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name}: expected a whole number >= 1 or 'off', got {value!r}")
    return int(value)


def set_threads(threads):
    """Set the package's thread policy for this process: k (k host threads share a batch,
    BLAS at one thread inside the package), "off" (BLAS's own threads, the package in the
    calling thread) or None (back to ``FLOWATTN_THREADS`` or the default). Returns the
    previous setting."""
    previous = _state["setting"]
    _state["setting"] = None if threads is None else check_setting(threads)
    return previous


@functools.lru_cache(maxsize=8)
def _env_setting(text):
    return check_setting(text, f"environment variable {ENV_VAR}")


@dataclass(frozen=True)
class Policy:
    """The thread policy in force: ``threads`` host threads share a batch; ``blas_threads``
    is BLAS's thread count inside the package's computations (None: left as it is);
    ``source`` says which setting gave it."""

    threads: int
    blas_threads: int | None
    source: str

    def describe(self):
        """One line: the host threads, BLAS's threads inside the package, and the source."""
        if self.blas_threads is None:
            return (f"off ({self.source}): the package computes in the calling thread, "
                    "BLAS keeps its own threads")
        return (f"{self.threads} host thread{'s' * (self.threads != 1)} share a large batch, "
                f"BLAS at {self.blas_threads} thread inside the package ({self.source})")


@functools.lru_cache(maxsize=64)
def _policy_of(setting, source):
    """One Policy object per setting (a step asks for it more than once)."""
    return Policy(1, None, source) if setting == OFF else Policy(setting, 1, source)


def policy(threads=None):
    """The policy in force, given an explicit ``threads`` argument (None: none given).

    Precedence: the argument, then `set_threads`, then ``FLOWATTN_THREADS``, then the CPUs
    this process may use (`available_cpus`)."""
    if threads is not None:
        return _policy_of(check_setting(threads), "argument")
    if _state["setting"] is not None:
        return _policy_of(_state["setting"], "set_threads")
    env = os.environ.get(ENV_VAR)
    if env and env.strip():
        return _policy_of(_env_setting(env.strip()), ENV_VAR)
    return _policy_of(available_cpus(), "default: the CPUs this process may use")


# ---------------------------------------------------------------- BLAS inside the package

_lock = threading.Lock()
_active = {"depth": 0, "saved": ()}


@functools.lru_cache(maxsize=1)
def _blas_controllers():
    """threadpoolctl's controllers of the loaded BLAS libraries, found once: listing the
    loaded libraries (what ``threadpool_limits`` does on every entry) costs about 0.3 ms,
    setting a kept controller's threads a few microseconds."""
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def _set_threads(settings):
    """Set (library controller, threads) pairs, then give up control of the library: a
    process-wide OpenBLAS pool (pthreads) is set only by one controlling thread in
    threadpoolctl >= 3.8, the first to set it, until it lets go; holding on would make
    every other thread's limit, the user's included, a silent no-op."""
    for lib, threads in settings:
        lib.set_num_threads(threads)
        if hasattr(lib, "clear_controlling_thread"):
            lib.clear_controlling_thread()


def _enter(blas):
    with _lock:
        if _active["depth"] == 0:
            saved = [(lib, lib.get_num_threads()) for lib in _blas_controllers()]
            saved = tuple((lib, n) for lib, n in saved if n is not None and n != blas)
            _set_threads((lib, blas) for lib, _ in saved)
            _active["saved"] = saved
        _active["depth"] += 1


def _exit():
    with _lock:
        _active["depth"] -= 1
        if _active["depth"] == 0:
            _set_threads(_active["saved"])
            _active["saved"] = ()


@contextlib.contextmanager
def package_compute():
    """Context: BLAS at the policy's thread count (one) for the block, restored on exit.

    Re-entrant and shared by threads: the outermost block sets the limit and restores what
    was there before; blocks inside it (a ``forward`` inside ``fit``, the batch parts' threads)
    cost a counter. With the policy off it does nothing."""
    blas = policy().blas_threads
    if blas is None:
        yield
        return
    _enter(blas)
    try:
        yield
    finally:
        _exit()


def compute(fn):
    """Decorator: ``fn`` runs inside `package_compute` (the package's entry points)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _active["depth"]:  # inside the package already (fit's steps, a forward in a step)
            return fn(*args, **kwargs)
        blas = policy().blas_threads
        if blas is None:
            return fn(*args, **kwargs)
        _enter(blas)
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()
    return wrapper


def policy_line(backend="numpy"):
    """The policy in one line for a run on ``backend`` (results.json): on CuPy the device
    work is never split between host threads."""
    if backend != "numpy":
        return f"{backend}: each batch runs whole on the device, in the calling thread"
    return policy().describe()


def blas_info():
    """threadpoolctl's description of the BLAS libraries loaded (list of dicts)."""
    from threadpoolctl import threadpool_info

    return [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]


def describe():
    """Lines for ``flowattn-np info``: the policy, the CPUs counted, BLAS and its threads."""
    cpus = _cached_report()
    quota = cpus["cgroup_quota"]
    try:
        line = policy().describe()
    except ValueError as exc:  # an unusable FLOWATTN_THREADS: say so, and report the rest
        line = f"problem: {exc}"
    lines = [f"threads: {line}",
             f"CPUs: {cpus['available']} usable (limited by the {cpus['limited_by']}); os.cpu_count() "
             f"{cpus['os_cpu_count']}, affinity mask {cpus['affinity'] or 'unknown'}, cgroup quota "
             + ("none" if quota is None else f"{quota:g} CPUs")]
    libs = blas_info()
    for lib in libs:
        lines.append(f"BLAS: {lib.get('internal_api')} {lib.get('version') or ''} "
                     f"({lib.get('threading_layer') or 'unknown threading'}), {lib.get('num_threads')} "
                     f"threads outside the package ({lib.get('filepath')})")
    if not libs:
        lines.append("BLAS: none found by threadpoolctl")
    return lines


def check_env():
    """Raise ValueError naming ``FLOWATTN_THREADS`` if it is set to something unusable."""
    policy()


__all__ = ["ENV_VAR", "OFF", "Policy", "available_cpus", "cgroup_cpu_quota", "check_setting", "compute",
           "cpu_report", "describe", "package_compute", "policy", "policy_line", "set_threads"]

