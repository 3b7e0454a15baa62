"""Packaging and the README: the README's code runs, the version is written once, and CI
runs exactly the README's test command (the built sdist and wheel: tests/test_release.py)."""

import contextlib
import io
import re
import sys
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
