"""The MLP oracle on the REAL Fashion-MNIST (never skipped; CI installs the data).

* On a 2,000-image training subset a network of MLP-oracle blocks trains (the loss falls)
  and its test accuracy is computed from ``predict`` without the labels, then compared.
* ``reproduce --parts 5`` runs part 5 alone, at a tiny size, and writes its table and
  its JSON with every control row.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np import cli
from flowattn_np.experiments.data import load_fashion_mnist
from flowattn_np.experiments.common import ReproduceConfig
from flowattn_np.experiments.part5_mlp_oracle import KINDS
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.training.train import evaluate, fit

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist(progress=False)


def test_mlp_oracle_network_trains_and_predicts_without_labels(fashion):
    X, y = fashion.X_train[:2000], fashion.y_train[:2000]
    X_test, y_test = fashion.X_test[:1000], fashion.y_test[:1000]
    block = BlockConfig(targets="mlp", mlp_hidden=32, activation="gelu", h=0.1, learn_h=True)
    net = Network(NetworkConfig(n_inputs=784, n_classes=10, layers=2, block=block), seed=0)
    loss_before = evaluate(net, X, y)["loss"]
    hist = fit(net, X, y, epochs=3, batch_size=128, optimizer=fa.Adam(net.params, lr=3e-3),
               seed=0, progress=False)
    losses = hist.column("train_loss")
    assert losses[-1] < losses[0]
    assert evaluate(net, X, y)["loss"] < 0.5 * loss_before
    predicted = fa.to_numpy(net.predict(fa.asarray(X_test)))  # no labels passed
    accuracy = float((predicted == y_test).mean())
    assert accuracy > 0.6
    assert accuracy == pytest.approx(evaluate(net, X_test, y_test)["accuracy"], abs=1e-12)
    assert np.isfinite(net.step_sizes()["h"])


def test_default_reproduce_leaves_part_5_behind_its_flag():
    assert ReproduceConfig().parts == (1, 2, 3)
    with pytest.raises(ValueError, match="parts: expected part numbers"):
        ReproduceConfig(parts=(6,))


def test_reproduce_parts_5_alone_writes_the_mlp_table_with_its_controls(tmp_path):
    code = cli.main(["reproduce", "--quick", "--parts", "5", "--out", str(tmp_path), "--no-progress",
                     "--train-size", "400", "--test-size", "200", "--seeds", "2", "--mlp-layers", "1",
                     "--mlp-widths", "4"])
    assert code == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["figures"] == {"part5_accuracy": "part5_accuracy.png",  # parts 1-3 not run: no Figure 1
                              "robustness_part5": "robustness_part5.png"}
    assert (tmp_path / "part5_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "part5" in res and "part1" not in res and "part3" not in res
    p5 = res["part5"]
    for setting in ("clean", "noise-augmented"):
        rows = p5["settings"][setting]["rows"]
        assert [r["kind"] for r in rows] == ["regression", "linear-oracle", "mlp-alone", "mlp-matched",
                                              "mlp-oracle"]
        oracle = rows[-1]
        assert oracle["width"] == 4 and oracle["layers"] == 1 and oracle["h"]["sign"] in (
            "positive", "negative", "mixed")
        assert len(oracle["accuracy"]["0"]["values"]) == 2
        assert abs(rows[3]["params"] - oracle["params"]) < abs(rows[2]["params"] - oracle["params"])
    comparisons = p5["checks"]["comparisons"]
    assert [(c["setting"], c["b"]) for c in comparisons] == [
        (s, b) for s in ("clean", "noise-augmented")
        for b in ("(a) MLP alone, k = 4", "(d) MLP alone, k = 14", "(b) linear-oracle network, L = 1",
                  "(c) multinomial regression")]
    table = (tmp_path / "results.md").read_text()
    for description in KINDS.values():
        assert description in table
    assert "Does attention add to the MLP it contains?" in table
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = doc.split("## The `results.json` schema", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| `part5`"))
    assert set(re.findall(r"`([a-z_0-9]+)`", row.split("|")[2])) == set(p5)
