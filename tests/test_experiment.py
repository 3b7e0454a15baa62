"""The reproduction command on the REAL Fashion-MNIST: never skipped.

CI installs Debian's dataset-fashion-mnist; on a developer machine the loader
downloads the data from the official mirror.
"""

import json
import math
import os
import re

import pytest

import flowattn_np as fa
from flowattn_np import cli
from flowattn_np.experiments.common import ReproduceConfig
from flowattn_np.experiments.reproduce import SCHEMA, markdown_table, reproduce

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run through the command line, shared by the schema tests."""
    out = tmp_path_factory.mktemp("quick")
    code = cli.main(["reproduce", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


@pytest.fixture(scope="module")
def quick_run_device(tmp_path_factory):
    """The same --quick run with --backend cupy: on the GPU where CuPy has one, else on
    the strict CuPy stand-in (which enforces CuPy's rules and counts transfers)."""
    import contextlib

    import strict_device
    from conftest import CUPY

    out = tmp_path_factory.mktemp("quick_cupy")
    with contextlib.nullcontext() if CUPY else strict_device.installed():
        code = cli.main(["reproduce", "--quick", "--backend", "cupy", "--out", str(out),
                         "--no-progress"])
    assert code == 0
    with open(out / "results.json") as f:
        return json.load(f), CUPY


def test_quick_run_on_the_device_sees_the_same_noisy_test_images(quick_run, quick_run_device):
    """The test noise is drawn on the host from seeded NumPy generators, so NumPy and CuPy
    runs evaluate on the same noisy images: part 1 (trained without noise) then agrees up
    to round-off. (Training noise is drawn on the device and differs, see docs/gpu.md.)"""
    _, host = quick_run
    device, real_gpu = quick_run_device
    assert device["backend"] == "cupy" and host["backend"] == "numpy"
    rtol = 1e-3 if real_gpu else 1e-6  # a GPU rounds differently; the stand-in computes like NumPy
    for k, v in host["part1"]["by_noise"].items():
        d = device["part1"]["by_noise"][k]
        np_loss, dev_loss = v["loss"]["values"], d["loss"]["values"]
        assert dev_loss == pytest.approx(np_loss, rel=rtol), k
        assert d["accuracy"]["values"] == pytest.approx(v["accuracy"]["values"], abs=0.005), k
    assert set(device["part3"]["settings"]) == set(host["part3"]["settings"])


def test_quick_run_writes_results_table_and_figures(quick_run):
    out, res = quick_run
    assert sorted(os.listdir(out)) == ["accuracy_vs_layers.png", "figure1.png", "results.json",
                                       "results.md", "robustness_part3.png", "training_curves.png"]
    for name in res["figures"].values():
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "## Part 2. Feature discovery with the true labels (an oracle computation)\n" in table
    assert "not a classifier's test accuracy" in table
    headings = [line for line in table.splitlines() if line.startswith("#")]
    # plain text: no shouting capitals, no ASCII or TeX mathematics (the text under a heading has it)
    assert not [h for h in headings if re.search(r"\b(TRUE|NOT|ONLY)\b|\^|_hat|\$|theta|lam_max", h)], headings
    assert "Label-free" in table and "learned oracle" in table


def test_results_json_has_the_documented_schema(quick_run):
    _, res = quick_run
    assert res["schema"] == SCHEMA
    assert {"version", "command", "backend", "started", "seconds", "machine", "config", "data",
            "part1", "part2", "part3", "checks", "figures"} <= set(res)
    assert res["data"]["n_train"] == 4000 and res["data"]["n_test"] == 1000
    machine = res["machine"]  # the CPUs the run could use, beside the machine's count
    assert 1 <= machine["cpus_usable"]["available"] <= machine["cpus"] == os.cpu_count()
    assert res["data"]["source"]
    noise = ["0", "0.5", "1"]
    p1 = res["part1"]
    assert list(p1["by_noise"]) == noise
    for k in noise:
        acc = p1["by_noise"][k]["accuracy"]
        assert set(acc) == {"mean", "std", "range", "values"} and len(acc["values"]) == 2
        assert 0.1 < acc["mean"] <= 1
    p2 = res["part2"]
    assert p2["targets"] == "true labels (oracle computation)"
    assert p2["h"] == pytest.approx(p2["h_units"] / p2["lam_max"])
    for scheme in ("lie", "strang"):
        for k in noise:
            r = p2["schemes"][scheme][k]
            assert len(r["loss"]) == len(r["accuracy"]) == 4  # L = 0..3 in a quick run
    p3 = res["part3"]
    assert set(p3["settings"]) == {"clean", "noise-augmented"}
    assert p3["settings"]["noise-augmented"]["train_noise"] == 0.5
    rows = p3["settings"]["clean"]["rows"]
    assert [(r["variant"], r["layers"]) for r in rows] == [
        ("baseline", 0), ("attention", 1), ("attention", 2), ("oracle", 1), ("oracle", 2),
        ("memory", 1), ("memory", 2)]
    for r in rows:
        assert set(r["accuracy"]) == set(noise)
        if r["layers"]:
            assert len(r["h"]["values"]) == 2 and r["h"]["sign"] in ("positive", "negative", "mixed")
            assert all(math.isfinite(v) for v in r["h"]["values"])
    for r in rows:  # every model of part 3 on the noise curve to sigma = 2 and two unseen corruptions
        assert list(r["robustness"]) == ["noise", "occlusion", "blur"]
        assert len(r["robustness"]["noise"]) >= 7 and max(map(float, r["robustness"]["noise"])) == 2
        assert r["robustness"]["noise"]["1"] == r["accuracy"]["1"]  # the table's noise is the curve's
        assert r["epochs"]["rule"] == ["fixed", "fixed"]
    comparisons = res["checks"]["part3_comparisons"]
    assert len(comparisons) == 2 * (len(rows) - 1)
    for c in comparisons:
        for v in c["by_condition"].values():
            assert (v["claim"] is not None) == (abs(v["mean"]) > 2 * v["spread"])


def test_feature_discovery_with_true_labels_lowers_the_loss_at_every_block(quick_run):
    _, res = quick_run
    for k, r in res["part2"]["schemes"]["lie"].items():
        assert all(b < a for a, b in zip(r["loss"], r["loss"][1:])), k
    assert all(v["loss_strictly_decreasing"] for v in res["checks"]["part2_lie_monotone"].values())


def test_the_table_is_the_markdown_of_the_json(quick_run):
    out, res = quick_run
    assert markdown_table(res) == (out / "results.md").read_text()


def test_reproduce_from_python_on_a_tiny_budget(tmp_path):
    cfg = ReproduceConfig.quick_run(layers=(1,), max_layers=2, seeds=1, variants=("oracle",),
                                    train_size=1000, test_size=500, noise=(0.0, 1.0))
    res = reproduce(cfg, out=str(tmp_path), progress=False, figures=False, log=lambda m: None)
    assert res["figures"] == {}
    assert list(res["part1"]["by_noise"]) == ["0", "1"]
    assert [r["variant"] for r in res["part3"]["settings"]["clean"]["rows"]] == ["baseline", "oracle"]
    assert os.path.exists(tmp_path / "results.json")


def test_cli_version_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and fa.__version__ in capsys.readouterr().out
    assert cli.main([]) == 0
    assert "reproduce" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--backend", "tensorflow"])
    assert e.value.code == 2 and "invalid choice: 'tensorflow'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--noise", "0,-1"])
    assert "finite numbers >= 0" in capsys.readouterr().err


def test_cli_reports_missing_data_clearly(tmp_path, monkeypatch, capsys):
    from helpers import offline_without_data

    offline_without_data(monkeypatch, tmp_path)
    code = cli.main(["reproduce", "--quick", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_cli_asking_for_cupy_without_cupy_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys

    from conftest import CUPY

    if CUPY:
        pytest.skip("CuPy is usable here; the missing-CuPy path cannot be shown")
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SystemExit) as e:  # refused while parsing, before any data is read
        cli.main(["reproduce", "--quick", "--backend", "cupy", "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'cupy-cuda12x[ctk]'" in err and "cupy-cuda13x" in err
    assert not (tmp_path / "o").exists()


def test_the_schema_table_in_docs_lists_exactly_the_keys_written(quick_run):
    from pathlib import Path
    import re

    _, res = quick_run
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = doc.split("## The `results.json` schema", 1)[1]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", section, re.M):
        documented.update(re.findall(r"`([a-z_0-9]+)`", cell))
    optional = {"part4", "part5"}  # written only when --parts selects them (test_experiment_norm.py, test_mlp_realdata.py)
    assert documented - optional == set(res), (documented ^ set(res))
    for part in ("part1", "part2", "part3"):
        row = next(line for line in section.splitlines() if line.startswith(f"| `{part}`"))
        assert set(re.findall(r"`([a-z_0-9]+)`", row.split("|")[2])) == set(res[part]), part
