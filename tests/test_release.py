"""The release: ``flowattn-np notebooks DIR``, and the sdist and wheel that ``python -m build``
makes. The slow tests build both once, check them (no build warning, ``twine check``, the
wheel's notebooks, the sdist's tests), install the wheel in a new virtual environment
outside the checkout and use it there as a student and a teacher would."""

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import flowattn_np
from flowattn_np import links
from flowattn_np.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ASSIGNMENTS = sorted(p.name for p in (ROOT / "notebooks" / "assignments").glob("*.ipynb"))
SITE_URL = links.mkdocs_urls(ROOT / "mkdocs.yml")["site_url"]
# what the sdist must hold for its tests, docs and notebooks (generated files excepted)
SDIST_TREES = ("tests", "docs", "notebooks", "benchmarks", ".ci", ".github")
SDIST_FILES = ("README.md", "CHANGELOG.md", "LICENSE", "MANIFEST.in", "mkdocs.yml", "setup.py", "pyproject.toml",
               ".readthedocs.yaml", "data/README.md")
CHEAPEST_NOTEBOOK = "02_self_attention_from_the_quadratic_model.ipynb"  # about 3 s


# ------------------------------------------------------------ flowattn-np notebooks DIR


def test_notebooks_command_copies_the_teaching_notebooks(tmp_path, capsys):
    out = tmp_path / "new" / "nbs"
    assert main(["notebooks", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == NOTEBOOKS and len(NOTEBOOKS) == 7
    for name in NOTEBOOKS:
        assert (out / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes()
    assert "Copied 7 notebooks" in capsys.readouterr().out


def test_notebooks_command_keeps_existing_files_unless_overwrite(tmp_path, capsys):
    assert main(["notebooks", str(tmp_path)]) == 0
    mine = tmp_path / NOTEBOOKS[0]
    mine.write_text("my work")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["notebooks", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("usage:")  # argparse's form: usage and one error line
    assert err[1].startswith("flowattn-np notebooks: error: DIR:") and "--overwrite" in err[1]
    assert mine.read_text() == "my work"
    assert main(["notebooks", str(tmp_path), "--overwrite"]) == 0
    assert mine.read_bytes() == (ROOT / "notebooks" / NOTEBOOKS[0]).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_notebooks_command_refuses_a_file_as_dir(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("")
    with pytest.raises(SystemExit):
        main(["notebooks", str(target)])
    assert "error: DIR:" in capsys.readouterr().err and target.read_text() == ""


# ------------------------------------------------------------------ sdist and wheel


def _env(**extra):
    """The environment for a build or the installed package: no source tree on PYTHONPATH, and
    no PYTHONDONTWRITEBYTECODE (with it setuptools warns that it skips byte-compiling)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` of the checkout: the sdist, and the wheel built from that sdist."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, cwd=out, env=_env())
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    (sdist,) = out.glob("flowattn_np-*.tar.gz")
    (wheel,) = out.glob("flowattn_np-*.whl")
    return SimpleNamespace(sdist=sdist, wheel=wheel, log=log)


@pytest.mark.slow
def test_build_gives_no_warning_and_twine_check_passes(dist):
    warned = [line for line in dist.log.splitlines() if re.search("warn", line, re.I)]
    assert not warned, "\n".join(warned)
    pytest.importorskip("twine")
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr


@pytest.mark.slow
def test_wheel_ships_the_package_the_notebooks_and_the_assignments(dist):
    names = zipfile.ZipFile(dist.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"flowattn_np", f"flowattn_np-{flowattn_np.__version__}.dist-info"}
    assert "flowattn_np/blocks/split.py" in names and "flowattn_np/__main__.py" in names
    shipped = {n for n in names if n.startswith(("flowattn_np/notebooks/", "flowattn_np/assignments/"))}
    # the .ipynb only: the jupytext .py sources stay in the repository and the sdist
    assert shipped == ({f"flowattn_np/notebooks/{n}" for n in NOTEBOOKS}
                       | {f"flowattn_np/assignments/{n}" for n in ASSIGNMENTS})
    metadata = zipfile.ZipFile(dist.wheel).read(
        f"flowattn_np-{flowattn_np.__version__}.dist-info/METADATA").decode("utf-8")
    assert "127.0.0.1" not in metadata
    assert f"Project-URL: Documentation, {SITE_URL}" in metadata.splitlines()


@pytest.mark.slow
def test_sdist_holds_what_its_tests_need_and_they_run_from_it(dist, tmp_path):
    with tarfile.open(dist.sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp_path)
    (top,) = {n.split("/")[0] for n in names}
    held = {n.split("/", 1)[1] for n in names if "/" in n}
    wanted = set(SDIST_FILES)
    for tree in SDIST_TREES:
        wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / tree).rglob("*") if p.is_file()
                   and not {"__pycache__", ".ipynb_checkpoints"} & set(p.parts) and p.suffix != ".pyc"}
    assert {"tests/conftest.py", "tests/helpers.py", "tests/strict_device/__init__.py"} <= wanted
    missing = sorted(wanted - held)
    assert not missing, f"the sdist lacks {missing}: add their file types to MANIFEST.in"
    # its tests run from the unpacked sdist, on its own copy of the package (conftest.py,
    # helpers.py and the strict stand-in included)
    unpacked = tmp_path / top
    env = _env(PYTHONPATH=str(unpacked))
    where = subprocess.run([sys.executable, "-c", "import flowattn_np; print(flowattn_np.__file__)"],
                           capture_output=True, text=True, cwd=unpacked, env=env, check=True).stdout
    assert Path(where.strip()).is_relative_to(unpacked)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_packaging.py::test_ci_runs_exactly_the_readme_test_command",
                           "tests/test_release.py::test_notebooks_command_copies_the_teaching_notebooks",
                           "tests/test_ops.py", "-k", "ci_runs or copies or (softmax and strict)"],
                          capture_output=True, text=True, cwd=unpacked, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\b([3-9]|\d\d+) passed", proc.stdout), proc.stdout[-500:]
    assert "strict" in subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "tests/test_ops.py",
         "-k", "softmax and strict"], capture_output=True, text=True, cwd=unpacked, env=env).stdout


_RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
nb.cells.insert(0, nbformat.v4.new_code_cell("import flowattn_np; print(flowattn_np.__file__)"))
NotebookClient(nb, timeout=600, kernel_name="python3").execute()
print(nb.cells[0].outputs[0]["text"].strip())
"""


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment_outside_the_checkout(dist, tmp_path):
    """A new virtual environment, outside the checkout, with the wheel installed: NumPy,
    matplotlib and Jupyter come from this environment's site-packages (nothing downloaded),
    flowattn_np from the wheel, which the probe checks."""
    venv = tmp_path / "venv"
    # without pip of its own (ensurepip takes seconds): this process's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = _env(PATH=str(bindir) + os.pathsep + os.environ.get("PATH", ""), MPLBACKEND="Agg")
    home = tmp_path / "student"  # the working folder: no source tree in sight
    home.mkdir()

    def run(*args, check=True):
        proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=home, env=env)
        assert proc.returncode == 0 or not check, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        return proc

    # --ignore-installed: this environment sees the checkout's own (editable) install
    run(sys.executable, "-m", "pip", "--python", bindir / "python", "install", "-q", "--no-deps",
        "--ignore-installed", dist.wheel)
    probe = run(bindir / "python", "-c", "import flowattn_np, flowattn_np.teaching.course as w; "
                "print(flowattn_np.__file__); print(w.site_url())").stdout.split()
    assert Path(probe[0]).is_relative_to(venv), probe  # the wheel's copy, not the checkout's
    assert probe[1] == SITE_URL  # from the wheel's metadata: there is no mkdocs.yml here
    cli = bindir / "flowattn-np"
    assert run(cli, "--version").stdout.strip() == f"flowattn-np {flowattn_np.__version__}"
    assert "notebooks" in run(cli, "--help").stdout

    run(cli, "notebooks", "nbs")
    assert sorted(p.name for p in (home / "nbs").iterdir()) == NOTEBOOKS
    again = run(cli, "notebooks", "nbs", check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    run(cli, "coursework", "init", "course")
    assert sorted(f"{p.name}.ipynb" for p in (home / "course" / "source").iterdir()) == ASSIGNMENTS
    assert (home / "course" / "nbgrader_config.py").is_file()

    pytest.importorskip("nbclient")
    ran = run(bindir / "python", "-c", _RUN_NOTEBOOK, home / "nbs" / CHEAPEST_NOTEBOOK)
    assert Path(ran.stdout.strip().splitlines()[-1]).is_relative_to(venv)  # the kernel used the wheel too

    rep = run(cli, "reproduce", "--quick", "--out", "run", "--no-progress")
    assert (home / "run" / "results.json").is_file() and "| " in rep.stdout
