"""What a run leaves behind, and what it prints where nobody watches.

* nothing left behind: a failed ``reproduce`` (data missing, an exception mid-run after
  some figures were written, Ctrl-C) leaves no ``runs/reproduce-*`` folder; a folder the
  user named stays, with only what it held before;
* without matplotlib the numbers still land: results.json and results.md, and one line
  saying the figures were skipped and how to get them;
* progress off a terminal: plain lines, one per epoch or part, no carriage returns.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest

from flowattn_np import cli
from flowattn_np.experiments import reproduce as driver
from flowattn_np.experiments import plotting
from flowattn_np.training.files import RunFolder, write_text
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.progress import PlainProgress, progress_bar
from flowattn_np.training.train import fit
from helpers import offline_without_data

# a small real run: one seed, one depth, one epoch on a subset
SMALL = ["--quick", "--seeds", "1", "--layers", "1", "--max-layers", "2"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder: the default output goes to runs/ here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWATTN_BACKEND", raising=False)
    return tmp_path


# ---------------------------------------------------------------- RunFolder


def test_run_folder_is_created_on_the_first_write_only(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "a")
    assert not (tmp_path / "runs").exists()
    with folder:
        write_text(folder.file("x.txt"), "x")
    assert (tmp_path / "runs" / "a" / "x.txt").read_text() == "x"


def test_a_failed_run_removes_the_folders_it_created(tmp_path):
    with pytest.raises(RuntimeError), RunFolder(tmp_path / "runs" / "a") as folder:
        write_text(folder.file("x.txt"), "x")
        raise RuntimeError("mid-run")
    assert os.listdir(tmp_path) == []


def test_a_failed_run_keeps_a_folder_that_existed_and_what_was_in_it(tmp_path):
    (tmp_path / "mine.txt").write_text("the user's")
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), RunFolder(tmp_path, overwrite=True) as folder:
        write_text(folder.file("results.json"), "new")
        write_text(folder.file("figure1.png"), "new")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["mine.txt", "results.json"]
    assert (tmp_path / "mine.txt").read_text() == "the user's"
    assert (tmp_path / "results.json").read_text() == "{}"  # not replaced, so not removed


def test_a_failed_run_leaves_a_shared_parent_that_is_not_empty(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier").mkdir()
    with pytest.raises(RuntimeError), RunFolder(tmp_path / "runs" / "now") as folder:
        folder.file("results.json")
        raise RuntimeError
    assert os.listdir(tmp_path / "runs") == ["earlier"]


# ---------------------------------------------------------------- reproduce fails: nothing left


def test_missing_data_leaves_no_run_folder(workdir, monkeypatch, capsys):
    offline_without_data(monkeypatch, workdir)
    assert cli.main(["reproduce", *SMALL, "--no-progress"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


@pytest.mark.realdata
def test_an_exception_after_some_figures_were_written_removes_them_and_the_folder(workdir, monkeypatch, capsys):
    drawn = []

    def broken(*args, **kwargs):  # the last figure fails: figure1.png and accuracy_vs_layers.png
        folder = next((workdir / "runs").iterdir())  # are written, staged until the run ends
        staging = [p for p in folder.iterdir() if p.name.startswith(".flowattn-run-")]
        assert [p.name for p in folder.iterdir()] == [staging[0].name]
        drawn.extend(sorted(p.name for p in staging[0].iterdir() if p.suffix == ".png"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(plotting, "training_curves", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["reproduce", *SMALL, "--no-progress"])
    assert drawn == ["accuracy_vs_layers.png", "figure1.png"]
    assert not (workdir / "runs").exists()


@pytest.mark.realdata
def test_ctrl_c_mid_run_leaves_nothing_in_a_named_folder_but_what_was_there(workdir, monkeypatch, capsys):
    out = workdir / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "part3_label_free", interrupted)
    assert cli.main(["reproduce", *SMALL, "--no-progress", "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(workdir)) == ["mine"]


# ---------------------------------------------------------------- without matplotlib


@pytest.mark.realdata
def test_without_matplotlib_the_numbers_still_land(workdir, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    with pytest.raises(ImportError):
        import matplotlib.pyplot  # noqa: F401
    out = workdir / "out"
    assert cli.main(["reproduce", *SMALL, "--no-progress", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["results.json", "results.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["figures"] == {} and results["part3"]["settings"]
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "figures skipped" in line]
    assert len(skipped) == 1 and 'pip install "flowattn-np[plot]"' in skipped[0]


def test_without_matplotlib_the_library_says_so_before_computing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert not plotting.matplotlib_available()
    said = []

    def stop_at_the_data(**kwargs):
        raise RuntimeError("no data needed for this test")

    import flowattn_np.experiments.data as data

    monkeypatch.setattr(data, "load_fashion_mnist", stop_at_the_data)
    with pytest.raises(RuntimeError, match="no data needed"):
        driver.reproduce(out=str(tmp_path / "o"), log=said.append)
    assert said == [driver.FIGURES_SKIPPED]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- progress off a terminal


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_a_plain_line_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    bar = progress_bar(10, "task", True)
    assert not isinstance(bar, PlainProgress)
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, "task", True), PlainProgress)


def test_no_progress_prints_nothing_anywhere(monkeypatch):
    for stream in (io.StringIO(), FakeTerminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        with progress_bar(10, "task", False) as bar:
            bar.update(10)
        assert stream.getvalue() == ""


def test_fit_off_a_terminal_prints_one_plain_line_per_epoch(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 8)), rng.integers(0, 3, 300)
    net = Network(NetworkConfig(n_inputs=8, n_classes=3, layers=1), seed=0)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    fit(net, X, y, epochs=3, batch_size=32, lr=0.05, log_every=2, desc="train")
    text = err.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["train 1/3", "train 2/3", "train 3/3"]
    assert all("10/10 batch" in line and "loss" in line and "acc" in line for line in lines)


@pytest.mark.realdata
def test_reproduce_off_a_terminal_writes_a_bounded_log_without_redraws(workdir, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["reproduce", *SMALL, "--no-figures", "--out", str(workdir / "o")]) == 0
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    # 1 fit in part 1, part 2 once, 2 settings x (L = 0 + 3 variants) fits in part 3, 4 log lines
    assert len(lines) == 1 + 1 + 8 + 4, lines
    assert sum(line.startswith("part 3, ") for line in lines) == 8
    assert all(len(line) < 200 for line in lines)
