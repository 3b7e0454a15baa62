"""Early stopping in ``reproduce`` (parts 4 and 5) never touches the test set, on small made-up data.

* the validation split is a seeded partition of the training rows;
* ``common.train`` with early stopping runs with a sentinel test set that fails on any
  read, and a poisoned test set (shuffled labels, other images) changes no epoch, no
  validation figure and no parameter: the test set chose nothing;
* the best epoch's parameters are the ones kept, and the epochs each seed used are reported.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.experiments.common import (
    ReproduceConfig,
    RunData,
    label_free_network,
    train,
    train_over_seeds,
    validation_split,
)


class Sentinel:
    """A test set that fails the moment anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test set was read during training (.{name})")

    def __getitem__(self, key):
        raise AssertionError("the test set was read during training (indexed)")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the test set was read during training (converted to an array)")


def blobs(n, seed, d=16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    centres = np.random.default_rng(99).normal(size=(10, d))
    return (centres[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


CFG = ReproduceConfig(seeds=2, max_epochs=6, patience=2, batch_size=32, h_init=0.1, val_fraction=0.25)


def data_with(test_X, test_y):
    X, y = blobs(240, seed=0)
    return RunData(fa.asarray(X), fa.asarray(y), {("noise", "0"): test_X}, test_y, CFG)


def make(seed):
    return label_free_network("oracle", 1, 16, CFG, seed)


def test_the_validation_split_partitions_the_training_rows_only():
    fit_rows, val_rows = (fa.to_numpy(a) for a in validation_split(240, 0.25))
    assert len(val_rows) == 60 and len(fit_rows) == 180
    assert sorted(np.concatenate([fit_rows, val_rows]).tolist()) == list(range(240))
    again = [fa.to_numpy(a) for a in validation_split(240, 0.25)]
    assert np.array_equal(again[0], fit_rows) and np.array_equal(again[1], val_rows)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_early_stopping_runs_with_a_test_set_that_fails_when_read(sigma):
    data = data_with(Sentinel(), Sentinel())
    net = make(0)
    hist, epochs = train(net, data, CFG, seed=0, sigma=sigma, desc="t", progress=False, early=True)
    assert 1 <= epochs["best"] <= epochs["run"] <= CFG.max_epochs == 6
    assert epochs["rule"] in ("patience", "cap") and len(hist["epochs"]) == epochs["run"]
    if epochs["rule"] == "patience":
        assert epochs["run"] - epochs["best"] == CFG.patience


def test_poisoned_test_data_changes_nothing_but_the_test_accuracy():
    Xt, yt = blobs(100, seed=1)
    poisoned_X, poisoned_y = blobs(100, seed=2)
    runs = []
    for X_test, y_test in ((Xt, yt), (poisoned_X, np.roll(poisoned_y, 7))):
        data = data_with(fa.asarray(X_test), fa.asarray(y_test))
        stats, net, hist = train_over_seeds(make, data, CFG, False, 0.0, "t", optimizer="adam", early=True)
        runs.append((stats, fa.to_numpy(net.params["theta"]), hist))
    (clean, theta_a, hist_a), (poisoned, theta_b, hist_b) = runs
    assert clean["epochs"] == poisoned["epochs"] and clean["val_accuracy"] == poisoned["val_accuracy"]
    assert [e["val_loss"] for e in hist_a["epochs"]] == [e["val_loss"] for e in hist_b["epochs"]]
    assert np.array_equal(theta_a, theta_b)
    assert clean["accuracy"]["0"]["values"] != poisoned["accuracy"]["0"]["values"]  # the test set was used: after


def test_the_best_epochs_parameters_are_kept_and_reported():
    data = data_with(Sentinel(), Sentinel())
    net = make(1)
    _, epochs = train(net, data, CFG, seed=1, sigma=0.0, desc="t", progress=False, early=True)
    _, _, X_val, y_val = data.split()
    assert fa.evaluate(net, X_val, y_val)["accuracy"] == epochs["val_accuracy"]


def test_without_early_stopping_all_training_rows_and_the_fixed_epochs_are_used():
    data = data_with(Sentinel(), Sentinel())
    hist, epochs = train(make(0), data, CFG, seed=0, sigma=0.0, desc="t", progress=False)
    assert epochs == {"rule": "fixed", "run": CFG.epochs, "best": CFG.epochs}
    assert data._split is None and all("val_accuracy" not in e for e in hist["epochs"])
