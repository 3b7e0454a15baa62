"""The teaching notebooks: each is a jupytext py:percent source paired with its .ipynb.

* every ``notebooks/NN_*.py`` has its ``.ipynb`` and the two hold the same cells (type and
  source), so a reviewer can read the .py and a student can open the .ipynb;
* the .ipynb is stored without outputs;
* every notebook runs top to bottom (a cell that raises fails the test). Each execution's
  wall time is printed (``pytest -s``) and recorded as the test property ``seconds``.

Notebooks are discovered by globbing, so a new pair is picked up automatically. After
editing a .py, run ``jupytext --sync notebooks/NN_name.py`` (or ``--to ipynb``).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT = 600  # per cell, seconds


def _ids(paths):
    return [p.name for p in paths]


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def cells_differ(py_path, ipynb_path):
    """The first cell where the paired files disagree, as a message; None when in sync."""
    py_cells = _cells(jupytext.read(py_path))
    nb_cells = _cells(nbformat.read(ipynb_path, as_version=4))
    for i, (a, b) in enumerate(zip(py_cells, nb_cells)):
        if a[0] != b[0]:
            return f"cell {i} differs: a {a[0]} cell in {py_path.name}, a {b[0]} cell in {ipynb_path.name}"
        if a[1] != b[1]:
            lines = zip(a[1].splitlines() + [""], b[1].splitlines() + [""])
            line_a, line_b = next((x, y) for x, y in lines if x != y)
            return f"cell {i} differs: {py_path.name} has {line_a!r}, {ipynb_path.name} has {line_b!r}"
    if len(py_cells) != len(nb_cells):
        return f"{py_path.name} has {len(py_cells)} cells, {ipynb_path.name} has {len(nb_cells)}"
    return None


@pytest.fixture(scope="module")
def kernel_env():
    """The kernel inherits os.environ: make the package importable and plotting headless."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    parts = [str(ROOT)] + [p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    os.environ["MPLBACKEND"] = "Agg"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_every_notebook_has_its_source_and_every_source_its_notebook():
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_source_and_notebook_are_in_sync(source):
    problem = cells_differ(source, source.with_suffix(".ipynb"))
    assert problem is None, f"{problem}; run `jupytext --sync {source.relative_to(ROOT)}`"


def test_sync_check_catches_an_edited_cell(tmp_path):
    """The check above is not vacuous: change one line of a source and it reports the cell."""
    source = SOURCES[0]
    text = source.read_text(encoding="utf-8").replace("import numpy as np", "import numpy as onp", 1)
    edited = tmp_path / source.name
    edited.write_text(text, encoding="utf-8")
    problem = cells_differ(edited, source.with_suffix(".ipynb"))
    assert problem is not None and "differs" in problem


def test_sources_are_linted_like_the_package():
    """Undefined names, unused imports and syntax errors in the notebooks fail like in the code."""
    ruff = pytest.importorskip("ruff")
    del ruff
    paths = ["flowattn_np", "tests", "benchmarks", *map(str, SOURCES)]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *paths],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name}: cell {i} is stored with outputs"
        assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, kernel_env, record_property):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    print(f"\n{path.name}: {seconds:.1f} s")


@pytest.mark.strict
def test_notebook_5_device_half_runs_on_the_strict_cupy_stand_in(kernel_env, monkeypatch, capsys):
    """Without a GPU the notebook runs only its NumPy half; here its code cells run in this
    process with the strict CuPy stand-in installed, so the CuPy half (moving arrays, a
    training step, cupyx.profiler.benchmark, synchronised timing) runs under CuPy's rules."""
    import strict_device
    from conftest import CUPY

    import flowattn_np as fa
    from flowattn_np import backend

    if CUPY:
        pytest.skip("real CuPy with a GPU is installed: test_notebook_runs runs this half for real")
    import matplotlib.pyplot as plt

    path = NOTEBOOK_DIR / "05_going_to_the_gpu.ipynb"
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    monkeypatch.setitem(backend._state, "name", "numpy")  # the notebook calls set_backend
    monkeypatch.chdir(NOTEBOOK_DIR)
    ns = {"__name__": "__notebook__"}
    with strict_device.installed():
        for i, source in enumerate(cells):
            exec(compile(source, f"{path.name}, code cell {i}", "exec"), ns)
        reads = strict_device.COUNTS.reads
    plt.close("all")
    assert ns["HAVE_GPU"] is True, "the device half did not run"
    assert ns["cupy_ms"] > 0 and ns["net_g"].params["theta"].dtype == "float32"
    assert reads > 0  # the notebook's explicit copies to the host were counted
    assert fa.get_backend() == "numpy"
