"""Execute every teaching notebook in notebooks/ top to bottom; a cell that raises fails.

Notebooks are discovered by globbing, so a new notebook is picked up automatically.
They are stored without outputs; this is checked too. Each execution's wall time is
printed (``pytest -s``) and recorded as the test property ``seconds``.
"""

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT = 600  # per cell, seconds


def _ids(paths):
    return [p.name for p in paths]


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
