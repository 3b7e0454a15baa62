"""benchmarks/bench_shared.py: a tiny run prints the machine and the slowdown table for
each setting; bad options are one argparse error line before any job runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_shared.py")


def _run(*argv, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("FLOWATTN_THREADS", None)
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_tiny_run_prints_the_machine_and_both_settings():
    proc = _run("--rows", "256", "--epochs", "1", "--rounds", "1", "--busy", "1", "--pause", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "machine: nproc" in out and "usable CPUs:" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-2:]}
    assert set(rows) == {"package", "blas"}
    assert rows["package"][1] == "1"  # batch 256 of the linear network runs whole: one thread
    assert "beside 1 busy" in out and "x fair, k=1" in out


@pytest.mark.parametrize("argv, flag", [(["--busy", "0"], "--busy"), (["--busy", "a"], "--busy"),
                                        (["--settings", "mkl"], "--settings"), (["--rounds", "0"], "--rounds"),
                                        (["--pause", "-1"], "--pause"), (["--model", "cnn"], "--model")])
def test_bad_options_are_one_error_line(argv, flag):
    proc = _run(*argv, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and errors[0].startswith(f"bench_shared.py: error: argument {flag}")
    assert "round" not in proc.stdout
