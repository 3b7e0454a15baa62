"""benchmarks/gpu_check.py, the one command for the first machine with a GPU, runs end to
end here on the strict CuPy stand-in (tiny sizes) and writes its report marked as a
stand-in run; its bad options are one argparse error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               MPLBACKEND="Agg")
    env.pop("FLOWATTN_BACKEND", None)
    return env


@pytest.mark.strict
def test_gpu_check_runs_end_to_end_on_the_stand_in(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, SCRIPT, "--stand-in", "--out", str(out), "--budget", "120",
                           "--test-files", os.path.join(ROOT, "tests", "test_backend.py")],
                          capture_output=True, text=True, timeout=180, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.md", "notebook5_output.txt"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["stand_in"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["pytest -m cupy (tests/test_backend.py)"]["status"] == "ok"
    assert steps["pytest -m cupy (tests/test_backend.py)"]["counts"]["skipped"] >= 1
    notebook = steps["notebook 5 (05_going_to_the_gpu)"]
    assert notebook["status"] == "ok" and notebook["gpu_half_ran"] is True and notebook["cupy_ms"] > 0
    assert "speed-up over NumPy" in (out / "notebook5_output.txt").read_text()
    assert [r["batch"] for r in report["training"]] == [16, 64]
    for r in report["training"]:
        assert r["numpy_ms"] > 0 and r["cupy_ms"] > 0 and r["speedup"] == pytest.approx(r["numpy_ms"] / r["cupy_ms"])
    memory = steps["device memory"]
    assert memory["status"] == "skipped" and "stand-in" in memory["why"]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (STAND-IN RUN") and "| device memory | skipped |" in md
    assert "| 64 |" in md


@pytest.mark.parametrize("argv, flag", [(["--budget", "0"], "--budget"), (["--test-files", "no/such.py"], "--test-files"),
                                        (["--budget", "x"], "--budget")])
def test_gpu_check_bad_options_are_one_error_line(argv, flag, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, *argv, "--out", str(tmp_path / "r")], capture_output=True,
                          text=True, timeout=60, env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("gpu_check.py: error: ") and flag in errors[0]
    assert not (tmp_path / "r").exists()
