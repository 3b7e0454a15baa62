"""Packaging and the README: the wheel installs in a fresh venv, the README's code runs,
and CI runs exactly the README's test command."""

import contextlib
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_blocks():
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, re.S)]


def test_readme_gives_two_commands_install_and_run_then_install_and_test():
    blocks = _bash_blocks()
    assert len(blocks) == 2
    run, test = blocks
    assert run.startswith("pip install ") and "python -m flowattn_np reproduce" in run
    assert test.startswith("pip install ") and "[test]" in test and test.endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _bash_blocks()[1]
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands[-1] == test_command
    assert "apt-get install -y dataset-fashion-mnist" in ci


def test_readme_tour_runs_as_written():
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    lines = [ln for ln in code.strip().splitlines() if ln.strip()]
    assert len(lines) <= 12  # "a ten-line tour": two imports and ten lines of work
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().startswith("gradcheck passed")


def test_version_is_single_sourced():
    """The version is written once, in flowattn_np/__init__.py: pyproject.toml reads it
    from there (dynamic), and no other packaging file states one."""
    import flowattn_np

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in meta["project"], "pyproject.toml states a version of its own"
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flowattn_np.__version__"}
    assert "version" not in (ROOT / "setup.py").read_text(encoding="utf-8")
    assert re.match(r"^\d+\.\d+\.\d+$", flowattn_np.__version__)
    from importlib.metadata import version

    assert version("flowattn-np") == flowattn_np.__version__


@pytest.mark.slow
def test_built_wheel_installs_in_a_fresh_venv_and_runs_the_cli(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("flowattn_np-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"flowattn_np", next(t for t in top if t.endswith(".dist-info"))}
    assert "flowattn_np/layers.py" in names and "flowattn_np/__main__.py" in names
    assert not any(n.startswith(("tests/", "notebooks/", "data/", "docs/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / "python"
    # without PYTHONPATH: a source tree on it (with the egg-info the wheel build leaves
    # there) would make pip think the package is installed already, and skip the wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, cwd=tmp_path,
                   env=env)
    probe = subprocess.run(
        [str(py), "-c", "import flowattn_np, sys; print(flowattn_np.__file__); print(flowattn_np.__version__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    where, version = probe.stdout.split()
    assert str(venv) in where  # the installed copy, not the source tree
    helped = subprocess.run([str(bindir / "flowattn-np"), "--help"], check=True, capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert "reproduce" in helped.stdout
    ver = subprocess.run([str(py), "-m", "flowattn_np", "--version"], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert ver.stdout.strip() == f"flowattn-np {version}"
