"""Optimisers, train_step, fit, evaluation and checkpoints."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.experiments.data import make_blobs, make_xor
from flowattn_np.training.optim import SGD, Adam, Cosine, StepDecay, make_optimizer
from flowattn_np.backend import Workspace
from flowattn_np.training.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from flowattn_np.random import RNG, host_rng
from flowattn_np.training.train import (
    FitConfig,
    NonFiniteLossError,
    evaluate,
    fit,
    gather_batch,
    minibatches,
    train_step,
)


def _net(L=1, targets="learned", learn_h=True, p=2, m=3, seed=0, **kw):
    cfg = fa.NetworkConfig(n_inputs=p, n_classes=m, layers=L,
                           block=fa.BlockConfig(targets=targets, learn_h=learn_h, h=0.5), **kw)
    return fa.Network(cfg, seed=seed)


def test_minibatches_cover_every_row_once_in_a_seeded_order():
    a = list(minibatches(10, 3, rng=7))
    b = list(minibatches(10, 3, rng=7))
    c = list(minibatches(10, 3, rng=8))
    assert [len(i) for i in a] == [3, 3, 3, 1]
    assert sorted(np.concatenate(a).tolist()) == list(range(10))
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, c))
    assert [len(range(10)[s]) for s in minibatches(10, 4, shuffle=False, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        list(minibatches(10, 0))


def test_fit_reaches_ninety_five_percent_on_blobs(backend):
    X, y = make_blobs(900, classes=3, seed=0)
    Xt, yt = make_blobs(600, classes=3, seed=1)
    net = _net(L=0, targets="none", learn_h=False)
    hist = fit(net, X, y, epochs=20, batch_size=64, lr=0.1, X_val=Xt, y_val=yt, progress=False)
    assert len(hist) == 20
    assert hist.epochs[-1]["val_accuracy"] >= 0.95
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert set(hist.epochs[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                   "lr", "seconds", "samples_per_s", "h"}


def test_learned_oracle_blocks_beat_multinomial_regression_on_xor():
    # XOR is symmetric under z -> -z and a linear score through the origin is odd,
    # so L = 0 stays at chance; a learned-oracle block adds a nonlinearity.
    X, y = make_xor(2000, seed=0)
    Xt, yt = make_xor(1000, seed=1)
    acc = {}
    for L in (0, 1):
        net = _net(L=L, m=2, learn_h=True)
        fit(net, X, y, epochs=60, batch_size=64, lr=0.1, progress=False)
        acc[L] = evaluate(net, Xt, yt)["accuracy"]
    assert acc[0] < 0.6
    assert acc[1] > acc[0] + 0.1


def test_same_seed_gives_bitwise_identical_parameters(backend):
    X, y = make_blobs(300, classes=3, seed=2)
    runs = []
    for _ in range(2):
        net = _net(L=2, seed=3)
        fit(net, X, y, epochs=2, batch_size=32, lr=0.05, seed=11, noise=0.1, progress=False)
        runs.append(net.params)
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert np.array_equal(fa.to_numpy(runs[0][k]), fa.to_numpy(runs[1][k])), k
    net = _net(L=2, seed=3)
    fit(net, X, y, epochs=2, batch_size=32, lr=0.05, seed=12, noise=0.1, progress=False)
    assert not np.array_equal(fa.to_numpy(net.params["theta"]), fa.to_numpy(runs[0]["theta"]))


def test_nan_in_the_data_stops_fit_with_an_error_naming_X(backend):
    X, y = make_blobs(100, seed=0)
    X[17, 1] = np.nan
    net = _net()
    before = {k: np.array(fa.to_numpy(v)) for k, v in net.params.items()}
    for data in (X, fa.asarray(X)):  # host data, and data already on the backend
        with pytest.raises(ValueError, match=r"X: expected finite values, found 1 NaN"):
            fit(net, data, fa.asarray(y) if data is not X else y, epochs=1, progress=False)
    assert all(np.array_equal(before[k], fa.to_numpy(net.params[k])) for k in before)


@pytest.mark.parametrize("check_every", [1, 3])
def test_non_finite_loss_stops_fit_and_keeps_the_last_finite_parameters(check_every, backend):
    X, y = make_blobs(200, seed=0)
    X[150, 0] = np.inf  # reaches the loss only at the batch that holds row 150
    net = _net(L=1)
    host = lambda params: {k: np.array(fa.to_numpy(v)) for k, v in params.items()}  # copies  # noqa: E731
    states = [host(net.params)]  # initial, then after each step

    class Spy(SGD):
        def step(self, grads):
            super().step(grads)
            states.append(host(self.params))

    opt = Spy(net.params, lr=0.01)
    with pytest.raises(NonFiniteLossError, match="non-finite") as err:
        fit(net, X, y, epochs=1, batch_size=10, optimizer=opt, seed=0, progress=False,
            check_inputs=False, check_every=check_every)
    assert "restored" in str(err.value)
    finite = [i for i, s in enumerate(states) if all(np.isfinite(v).all() for v in s.values())]
    final = host(net.params)
    kept = [i for i, s in enumerate(states) if all(np.array_equal(s[k], final[k]) for k in s)]
    assert kept, "the parameters are not any state the optimiser produced"
    assert kept[-1] in finite
    if check_every == 1:  # checked before every update: nothing after the last good step
        assert kept[-1] == len(states) - 1
    else:  # restored to the last check, a multiple of check_every steps
        assert kept[-1] % check_every == 0


def test_fit_rejects_labels_of_the_wrong_length(backend):
    X, y = make_blobs(50, seed=0)
    with pytest.raises(ValueError, match=r"y: expected shape \(50\) \(a class for each row of X\)"):
        fit(_net(), X, y[:40], epochs=1, progress=False)


def test_checkpoint_round_trip_restores_identical_predictions(tmp_path, backend):
    X, y = make_blobs(200, seed=0)
    net = _net(L=2, targets="learned", tied=False)
    opt = SGD(net.params, lr=0.05, momentum=0.9)
    hist = fit(net, X, y, epochs=2, batch_size=32, optimizer=opt, progress=False)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, net, opt, hist, extra={"note": "test"})
    # the reference is computed where the network lives (on the device for cupy) ...
    ref_logits = fa.to_numpy(net.logits(fa.asarray(X)))
    with fa.use_backend("numpy"):  # ... and a checkpoint saved on either backend loads on NumPy
        loaded = load_checkpoint(path)
        assert loaded.config == net.config
        logits = fa.to_numpy(loaded.logits(np.asarray(X)))
        # a GPU rounds differently from the CPU: equal up to float32 round-off, not bit for bit
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
        top2 = np.sort(ref_logits, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3  # rows whose arg-max round-off cannot flip
        assert clear.mean() > 0.9
        assert np.array_equal(fa.to_numpy(loaded.predict(np.asarray(X)))[clear], ref_logits.argmax(1)[clear])
        assert loaded.checkpoint_meta["history"]["epochs"][-1]["epoch"] == 2
        assert loaded.checkpoint_meta["extra"] == {"note": "test"}
    loaded = load_checkpoint(path)
    opt2 = restore_optimizer(SGD(loaded.params, lr=0.05, momentum=0.9), loaded)
    assert opt2.t == opt.t
    for k in opt.velocity:
        assert np.array_equal(fa.to_numpy(opt2.velocity[k]), fa.to_numpy(opt.velocity[k]))


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    X, y = make_blobs(100, seed=0)
    net = _net(L=1)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, net)
    before = path.read_bytes()
    fit(net, X, y, epochs=1, progress=False)

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, net)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_loading_a_missing_or_foreign_file_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a flowattn_np checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.npz")


def test_fit_writes_a_checkpoint_every_epoch(tmp_path, backend):
    X, y = make_blobs(100, seed=0)
    net = _net(L=1)
    fit(net, X, y, epochs=2, progress=False, checkpoint=tmp_path / "run.npz")
    assert load_checkpoint(tmp_path / "run.npz").checkpoint_meta["history"]["epochs"][-1]["epoch"] == 2


def test_sgd_momentum_and_weight_decay_follow_their_formulas():
    p = {"w": np.array([1.0, -2.0]), "h": np.array(0.5)}
    g = {"w": np.array([0.5, 0.5]), "h": np.array(1.0)}
    opt = SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step(g)
    v1 = g["w"] + 0.01 * np.array([1.0, -2.0])
    np.testing.assert_allclose(p["w"], np.array([1.0, -2.0]) - 0.1 * v1)
    np.testing.assert_allclose(p["h"], 0.5 - 0.1 * 1.0)  # no weight decay on step sizes
    w1 = p["w"].copy()
    opt.step(g)
    v2 = 0.9 * v1 + g["w"] + 0.01 * w1
    np.testing.assert_allclose(p["w"], w1 - 0.1 * v2)


def test_adam_first_step_moves_each_entry_by_lr():
    p = {"w": np.array([1.0, -2.0, 3.0])}
    opt = Adam(p, lr=0.01)
    opt.step({"w": np.array([0.3, -5.0, 1e-3])})
    np.testing.assert_allclose(p["w"], [0.99, -1.99, 2.99], rtol=1e-6)


def test_schedules_and_bad_optimiser_settings():
    cos = Cosine(total=100, warmup=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(100) == pytest.approx(0.0)
    assert StepDecay(every=5, gamma=0.5)(12) == 0.25
    p = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, momentum=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("lbfgs", p)


def test_float32_training_keeps_float32_parameters(backend):
    X, y = make_blobs(100, seed=0)
    net = _net(L=2)
    fit(net, X.astype(np.float64), y, epochs=1, progress=False,
        optimizer=Adam(net.params, lr=1e-2))
    assert all(v.dtype == np.float32 for v in net.params.values())
    loss, grads, logits = net.loss_and_grads(fa.asarray(X), fa.asarray(y))
    assert loss.dtype == np.float32 and logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert math.isfinite(float(fa.to_numpy(loss)))


# ---------------------------------------------------------------- the pieces of fit


def _reference_fit(net, X, y, epochs, batch_size, lr, seed, noise):
    """The training loop written out plainly: what fit must compute, number for number."""
    order_rng, noise_rng = host_rng(seed), RNG(seed + 1)
    opt = SGD(net.params, lr=lr, momentum=0.9)
    X = X.astype(np.float32)
    for _ in range(epochs):
        order = order_rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            X_batch = X[idx]
            eps = noise_rng.normal(X_batch.shape, X_batch.dtype)
            eps *= noise
            X_batch += eps
            _, grads, _ = net.loss_and_grads(X_batch, y[idx])
            opt.step(grads)


def test_fit_computes_exactly_what_a_plain_loop_computes():
    X, y = make_blobs(250, classes=3, seed=4)  # 250 rows: a short last batch
    nets = [_net(L=2, seed=5) for _ in range(2)]
    fit(nets[0], X, y, epochs=2, batch_size=32, lr=0.05, seed=9, noise=0.2, progress=False)
    _reference_fit(nets[1], X, y, epochs=2, batch_size=32, lr=0.05, seed=9, noise=0.2)
    for k in nets[0].params:
        assert np.array_equal(nets[0].params[k], nets[1].params[k]), k
    assert not np.array_equal(nets[0].params["theta"], _net(L=2, seed=5).params["theta"])  # it trained


def test_train_step_is_loss_and_grads_then_one_update_and_returns_the_device_loss(backend):
    X, y = (fa.asarray(a) for a in make_blobs(64, classes=3, seed=1))
    X = X.astype("float32")
    a, b = _net(L=1, seed=2), _net(L=1, seed=2)
    opt_a, opt_b = SGD(a.params, lr=0.1), SGD(b.params, lr=0.1)
    seen = []
    loss = train_step(a, opt_a, X, y, before_update=lambda loss, logits: seen.append(
        {k: fa.to_numpy(v).copy() for k, v in a.params.items()}))
    expected, grads, _ = b.loss_and_grads(X, y)
    opt_b.step(grads)
    assert fa.get_array_module(loss) is fa.array_module() and loss.ndim == 0  # not a Python float
    assert float(fa.to_numpy(loss)) == float(fa.to_numpy(expected))
    for k in a.params:
        assert np.array_equal(fa.to_numpy(a.params[k]), fa.to_numpy(b.params[k])), k
    # the hook ran before the update: it saw the initial parameters
    assert all(np.array_equal(seen[0][k], fa.to_numpy(_net(L=1, seed=2).params[k])) for k in seen[0])


def test_fit_config_gives_the_same_run_as_the_keywords():
    X, y = make_blobs(120, seed=3)
    a, b = _net(L=1, seed=1), _net(L=1, seed=1)
    ha = fit(a, X, y, epochs=2, batch_size=16, lr=0.05, seed=4, noise=0.1, progress=False)
    hb = fit(b, X, y, config=FitConfig(epochs=2, batch_size=16, lr=0.05, seed=4, noise=0.1, progress=False))
    assert ha.column("train_loss") == hb.column("train_loss")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    with pytest.raises(ValueError, match="config: .*not both.*epochs"):
        fit(b, X, y, epochs=3, config=FitConfig(progress=False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        FitConfig().epochs = 2
    with pytest.raises(ValueError, match="check_every"):
        FitConfig(check_every=0)


def test_minibatches_on_device_are_the_same_order_on_the_active_backend(backend):
    host = list(minibatches(10, 4, rng=3))
    device = list(minibatches(10, 4, rng=3, on_device=True))
    assert all(fa.get_array_module(d) is fa.array_module() for d in device)
    assert all(np.array_equal(h, fa.to_numpy(d)) for h, d in zip(host, device))


def test_gather_batch_reuses_one_buffer_and_adds_the_seeded_noise():
    X, y = make_blobs(20, seed=0)
    ws = Workspace()
    idx = np.array([3, 1, 4])
    first, y_first = gather_batch(X, y, idx, ws)
    np.testing.assert_array_equal(first, X[idx])
    np.testing.assert_array_equal(y_first, y[idx])
    second, _ = gather_batch(X, y, np.array([0, 2, 5]), ws, noise=0.5, noise_rng=RNG(1))
    assert second is first  # the same buffer, overwritten
    np.testing.assert_allclose(second, X[[0, 2, 5]] + 0.5 * RNG(1).normal((3, 2), X.dtype), rtol=1e-6)


def test_a_checkpoint_in_the_version_1_format_loads(tmp_path):
    """A file laid out as the format documents (written here with plain numpy.savez, as
    checkpoints have always been) loads: the format stays readable across refactors."""
    net = _net(L=1, targets="learned")
    opt = SGD(net.params, lr=0.05, momentum=0.9)
    X, y = make_blobs(64, seed=0)
    fit(net, X, y, epochs=1, batch_size=16, optimizer=opt, progress=False)
    meta = {"version": 1, "config": net.config.to_dict(), "extra": {"note": "old"},
            "optimizer": {"class": "SGD", "lr": 0.05, "t": opt.t}, "history": {"epochs": []}}
    arrays = {f"param/{k}": v for k, v in net.params.items()}
    arrays.update({f"opt/velocity/{k}": v for k, v in opt.velocity.items()})
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **arrays)
    loaded = load_checkpoint(tmp_path / "old.npz")
    assert loaded.config == net.config and loaded.checkpoint_meta["extra"] == {"note": "old"}
    for k in net.params:
        assert np.array_equal(loaded.params[k], net.params[k]), k
    opt2 = restore_optimizer(SGD(loaded.params, lr=0.05, momentum=0.9), loaded)
    assert opt2.t == opt.t
    assert all(np.array_equal(opt2.velocity[k], opt.velocity[k]) for k in opt.velocity)
    # and save_checkpoint writes that same layout
    save_checkpoint(tmp_path / "new.npz", net, opt)
    with np.load(tmp_path / "new.npz") as f:
        assert set(f.files) == set(arrays)
        assert json.loads(f["__meta__"].tobytes())["version"] == 1
