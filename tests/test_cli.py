"""The command line refuses every bad option before it reads data or computes anything:
argparse's form (``flowattn-np reproduce: error: --flag: ...``), exit status 2, no traceback,
well under a second, and no run folder left behind."""

import os
import time

import pytest

from flowattn_np import cli
from flowattn_np import backend

BAD_ARGUMENTS = [
    (["--lr", "0"], "--lr: expected a positive finite number, got 0"),
    (["--lr", "-1"], "--lr: expected a positive finite number, got -1"),
    (["--lr", "nan"], "--lr: expected a positive finite number, got nan"),
    (["--train-noise", "nan"], "--train-noise: expected a finite number >= 0, got nan"),
    (["--train-noise", "-0.5"], "--train-noise: expected a finite number >= 0"),
    (["--noise", "inf"], "--noise: expected comma-separated finite numbers >= 0, got 'inf'"),
    (["--noise=0,-1"], "--noise: expected comma-separated finite numbers >= 0, got '0,-1'"),
    (["--noise", ","], "--noise: expected comma-separated numbers >= 0"),
    (["--h-units", "0"], "--h-units: expected a positive finite number, got 0"),
    (["--h-units=-1"], "--h-units: expected a positive finite number, got -1"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--seeds", "two"], "--seeds: expected a positive integer, got two"),
    (["--seed", "-3"], "--seed: expected an integer >= 0, got -3"),
    (["--layers", "0,2"], "--layers: expected positive integers"),
    (["--max-layers", "-1"], "--max-layers: expected a positive integer"),
    (["--data-dir", "/nonexistent/fashion"], "--data-dir: /nonexistent/fashion is not a folder"),
    (["--data-dir", "{tmp}/empty"], "--data-dir: {tmp}/empty lacks train-images-idx3-ubyte.gz"),
    (["--out", "{tmp}/a-file"], "--out: {tmp}/a-file exists and is not a folder"),
    (["--backend", "tensorflow"], "--backend: invalid choice: 'tensorflow'"),
    (["--optimizer", "lbfgs"], "--optimizer: invalid choice: 'lbfgs'"),
    (["--parts", "6"], "--parts: expected part numbers among 1,2,3,4,5, got '6'"),
    (["--parts", "x"], "--parts: expected comma-separated integers, got 'x'"),
    (["--mlp-widths", "0,64"], "--mlp-widths: expected positive integers, got '0,64'"),
    (["--mlp-layers=-1"], "--mlp-layers: expected positive integers, got '-1'"),
    (["--mlp-activation", "tanh"], "--mlp-activation: invalid choice: 'tanh'"),
    (["--train-size", "0"], "--train-size: expected a positive integer, got 0"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder (runs/ would be created here) with an empty dir and a file."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWATTN_BACKEND", raising=False)
    return tmp_path


def _run_bad(argv, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    seconds = time.perf_counter() - start
    return info.value.code, capsys.readouterr().err, seconds


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_reproduce_argument_is_one_error_line_before_any_work(args, message, workdir, capsys):
    args = [a.replace("{tmp}", str(workdir)) for a in args]
    message = message.replace("{tmp}", str(workdir))
    before = sorted(os.listdir(workdir))
    code, err, seconds = _run_bad(["reproduce", "--quick", "--no-progress", *args], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [errors[0]] and errors[0].startswith("flowattn-np reproduce: error: ")
    assert message in errors[0]
    assert "Traceback" not in err
    assert seconds < 1.0, f"took {seconds:.2f} s: validation must come before data and compute"
    assert sorted(os.listdir(workdir)) == before, "a refused run must leave nothing behind"


def test_unknown_backend_in_the_environment_is_an_error_line_for_reproduce(workdir, capsys, monkeypatch):
    monkeypatch.setenv("FLOWATTN_BACKEND", "tensorflow")
    code, err, _ = _run_bad(["reproduce", "--quick"], capsys)
    assert code == 2
    assert "flowattn-np reproduce: error: FLOWATTN_BACKEND: unknown backend 'tensorflow'" in err
    assert not (workdir / "runs").exists()


def test_info_reports_a_bad_backend_variable_and_prints_the_rest(monkeypatch, capsys):
    monkeypatch.setenv("FLOWATTN_BACKEND", "tensorflow")
    # a fresh process: the variable is read on first use, which an earlier test may have had
    monkeypatch.setitem(backend._state, "name", None)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend: problem: " in out and "tensorflow" in out
    assert "Fashion-MNIST:" in out and "CuPy" in out


def test_library_value_errors_reach_the_command_line_as_one_error_line(monkeypatch, capsys):
    from flowattn_np.experiments import reproduce as driver

    def broken(*args, **kwargs):
        raise ValueError("lr: expected a positive finite learning rate, got -1.0")

    monkeypatch.setattr(driver, "reproduce", broken)
    assert cli.main(["reproduce", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowattn-np reproduce: error: lr: expected a positive finite learning rate")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="lr: expected"):
        cli.main(["reproduce", "--quick", "--no-progress", "--debug"])
