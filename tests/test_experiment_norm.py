"""Part 4 of the reproduction, normalisation as a sphere constraint, on the REAL Fashion-MNIST.

* With the true labels on the sphere (post-norm Lie blocks, h = 1 / lam_max, theta from a
  multinomial regression), the cross-entropy falls at every block and the clean accuracy
  rises from L = 0 to L = 4, on a 2,000-image subset.
* ``reproduce --parts 4`` writes part 4 into results.json and results.md, with its figure.
* Bad ``--parts`` and part 4 settings are rejected, naming the argument.
"""

import json
import os

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np import cli
from flowattn_np.experiments.data import load_fashion_mnist
from flowattn_np.experiments.common import NORMS, ReproduceConfig, lam_max, true_label_network
from flowattn_np.experiments.reproduce import markdown_table, reproduce


@pytest.fixture(scope="module")
def subset():
    """2,000 training images for theta, 2,000 test images for the blocks."""
    ds = load_fashion_mnist(progress=False)
    return ds.X_train[:2000], ds.y_train[:2000], ds.X_test[:2000], ds.y_test[:2000]


@pytest.mark.realdata
def test_true_labels_on_the_sphere_lower_the_loss_at_every_block_and_raise_accuracy(subset):
    X, y, Xt, yt = subset
    base = fa.Network(fa.NetworkConfig(n_inputs=784, n_classes=10, layers=0), seed=0)
    fa.fit(base, X, y, epochs=3, batch_size=128, lr=0.05, progress=False)
    theta = base.params["theta"]
    net = true_label_network(theta, "lie", 1.0 / lam_max(theta), 4, norm="sphere")
    C = fa.one_hot(yt, 10, theta.dtype)
    iterates = net.features(Xt, yt)
    r = np.sqrt(784)
    assert all(np.abs(np.linalg.norm(Z, axis=1) - r).max() < 1e-3 for Z in iterates)  # float32
    losses = [float(fa.mean_cross_entropy(Z @ theta.T, C)) for Z in iterates]
    accuracy = [float(((Z @ theta.T).argmax(axis=1) == yt).mean()) for Z in iterates]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert accuracy[-1] > accuracy[0] + 0.05, accuracy


@pytest.mark.realdata
def test_part4_alone_writes_its_table_json_and_figure(tmp_path):
    cfg = ReproduceConfig.quick_run(parts=(4,), seeds=1, train_size=1000, test_size=500,
                                    norm_variants=("oracle",), norms=("none", "post-sphere", "pre-sphere"))
    res = reproduce(cfg, out=str(tmp_path), progress=False, log=lambda msg: None)
    assert res["parts"] == [1, 4]
    assert "part2" not in res and "part3" not in res and "part1" in res
    p4 = res["part4"]
    assert set(p4) == {"title", "discovery", "label_free"}
    d = p4["discovery"]
    assert d["targets"] == "true labels (oracle computation)"
    assert d["h"] == pytest.approx(d["h_units"] / d["lam_max"])
    for flow in ("flat", "sphere"):
        for k in ("0", "0.5", "1"):
            assert len(d["flows"][flow][k]["loss"]) == cfg.max_layers + 1
    rows = p4["label_free"]["settings"]["noise-augmented"]["rows"]
    assert [(r["variant"], r["norm"]) for r in rows] == [
        ("baseline", "none"), ("oracle", "none"), ("oracle", "post-sphere"), ("oracle", "pre-sphere")]
    assert "NOT a flow on the sphere" in rows[-1]["description"]
    assert all(r["h"]["sign"] in ("positive", "negative", "mixed") for r in rows[1:])
    assert set(res["checks"]["part4"]) >= {"discovery_flat", "discovery_sphere", "comparisons"}
    assert all(r["epochs"]["rule"][0] in ("cap", "patience") and "val_accuracy" in r for r in rows)
    assert sorted(os.listdir(tmp_path)) == ["normalisation.png", "results.json", "results.md",
                                            "robustness_part4.png", "training_curves.png"]
    with open(tmp_path / "normalisation.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "results.md").read_text()
    assert "Part 4. Normalisation as a sphere constraint" in table and "pre-sphere" in table
    with open(tmp_path / "results.json") as f:
        assert markdown_table(json.load(f)) == table


@pytest.mark.parametrize("argv, message", [
    (["--parts", "6"], "--parts: expected part numbers among 1,2,3,4,5"),
    (["--parts", "one"], "--parts: expected comma-separated integers"),
    (["--norm-layers", "0"], "--norm-layers: expected a positive integer"),
])
def test_bad_parts_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowattn-np reproduce: error:") and message in err[-1]


@pytest.mark.parametrize("changes, message", [
    (dict(parts=(0,)), "^parts: expected part numbers"),
    (dict(norms=("post-rms",)), "^norms: expected names among none, post-sphere"),
    (dict(norm_variants=("attention", "bogus")), "^norm_variants: expected names"),
])
def test_reproduce_config_rejects_bad_part4_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        ReproduceConfig(**changes)


def test_every_part4_normalisation_is_a_valid_block():
    for name, (description, fields) in NORMS.items():
        block = fa.BlockConfig(targets="learned", **fields)
        assert block.normalised == (name != "none")
        assert ("not a flow" in description) == (fields.get("norm_place") == "pre")


@pytest.mark.realdata
def test_part4_figure_follows_the_figure_rules(tmp_path):
    """The normalisation figure of a small real run: readable (figure_rules), one colour per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from figure_rules import colour_conflicts, labelled_colours, problems
    from flowattn_np.experiments import plotting

    cfg = ReproduceConfig.quick_run(parts=(4,), seeds=2, train_size=1000, test_size=500, norm_variants=("oracle",))
    res = reproduce(cfg, out=str(tmp_path), progress=False, figures=False, log=lambda msg: None)
    fig = plotting.normalisation(res["part4"])
    found = problems(fig, "normalisation") + colour_conflicts(labelled_colours(fig, "normalisation"))
    plt.close("all")
    assert not found, "\n".join(found)
