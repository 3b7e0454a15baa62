"""Hostile or broken checkpoint files cost neither memory nor time: each is refused with a
ValueError (or TypeError) naming the file or the parameter, before anything is built."""

import io
import os
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.training.checkpoint import META_KEY, load_arrays, load_checkpoint, save_arrays, save_checkpoint
from flowattn_np.training.optim import SGD


def _small_checkpoint(path, **config):
    net = fa.Network(fa.NetworkConfig(**{"n_inputs": 2, "n_classes": 3, **config}))
    save_checkpoint(path, net)
    return net


def _rewrite(path, change_meta=None, change_arrays=None):
    arrays, meta = load_arrays(path)
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    save_arrays(path, arrays, meta)


def _refused_cheaply(path, match):
    """load_checkpoint(path) raises ValueError matching ``match``, fast and in little memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match):
            load_checkpoint(path)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MB"
    assert seconds < 1.0, f"{seconds:.2f} s"


def test_a_600_byte_checkpoint_declaring_100000_untied_layers_is_refused_before_building(tmp_path):
    path = tmp_path / "inflated.npz"
    _small_checkpoint(path)
    _rewrite(path, lambda meta: meta["config"].update(layers=100_000, tied=False))
    assert os.path.getsize(path) < 1000
    _refused_cheaply(path, rf"path: {path}: the configuration .* has 100001 parameter arrays, got 1")


def test_a_configuration_of_enormous_width_is_refused_from_the_stored_shapes(tmp_path):
    path = tmp_path / "wide.npz"
    _small_checkpoint(path, encoding="linear", d=2)
    _rewrite(path, lambda meta: meta["config"].update(n_inputs=10 ** 9, d=10 ** 6))
    _refused_cheaply(path, r"parameter 'E' has shape \(2, 2\), expected \(1000000, 1000000000\)")


def _forged_npz(path, declared_shape):
    """An .npz whose one member's header declares ``declared_shape`` but stores 8 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": declared_shape})
    meta = io.BytesIO()
    np.lib.format.write_array(meta, np.frombuffer(b'{"version": 1}', dtype=np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("param/theta.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(8))
        z.writestr(META_KEY + ".npy", meta.getvalue())


def test_an_array_header_declaring_more_than_the_file_holds_is_refused_unread(tmp_path):
    path = tmp_path / "forged.npz"
    _forged_npz(path, (50_000, 50_000))  # 20 GB declared
    _refused_cheaply(path, r"member 'param/theta.npy' declares shape \(50000, 50000\)")


def test_parameters_of_the_wrong_shape_are_refused_naming_the_parameter(tmp_path):
    path = tmp_path / "c.npz"
    _small_checkpoint(path, layers=1, block=fa.BlockConfig(targets="learned"))
    _rewrite(path, change_arrays=lambda a: a.update({"param/W": np.zeros((3, 5), np.float32)}))
    with pytest.raises(ValueError, match=r"parameter 'W' has shape \(3, 5\), expected \(3, 2\)"):
        load_checkpoint(path)


def test_parameters_of_another_dtype_or_not_finite_are_refused_naming_the_parameter(tmp_path):
    path = tmp_path / "c.npz"
    _small_checkpoint(path)
    _rewrite(path, change_arrays=lambda a: a.update({"param/theta": np.zeros((3, 2))}))
    with pytest.raises(TypeError, match=r"\['theta'\]: expected dtype float32"):
        load_checkpoint(path)
    _rewrite(path, change_arrays=lambda a: a.update({"param/theta": np.full((3, 2), np.nan, np.float32)}))
    with pytest.raises(ValueError, match=r"\['theta'\]: expected finite values"):
        load_checkpoint(path)


def test_extra_arrays_and_optimiser_state_of_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3))
    opt = SGD(net.params, lr=0.1)
    opt.step({"theta": np.ones((3, 2), np.float32)})
    save_checkpoint(path, net, opt)
    assert load_checkpoint(path).checkpoint_optimizer_state["velocity/theta"].shape == (3, 2)
    _rewrite(path, change_arrays=lambda a: a.update({"opt/velocity/theta": np.zeros((9, 9), np.float32)}))
    with pytest.raises(ValueError, match="unexpected array 'opt/velocity/theta' of shape"):
        load_checkpoint(path)
    _rewrite(path, change_arrays=lambda a: a.update({"param/theta2": np.zeros((3, 2), np.float32)}))
    with pytest.raises(ValueError, match=r"has parameters \['theta2'\] that its configuration lacks"):
        load_checkpoint(path)


def _with_raw_meta(path, raw):
    arrays, _ = load_arrays(path)
    arrays[META_KEY] = np.frombuffer(raw, dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("raw, match", [
    (b"{not json", "the checkpoint metadata is not JSON"),
    (b'{"version": 1, "config": "\xff\xfe"}', "the checkpoint metadata is not UTF-8"),
    (b"[1, 2]", "the checkpoint metadata is not a JSON object"),
    (b'{"config": {}}', "the checkpoint metadata lacks the key 'version'"),
    (b'{"version": 1}', "the checkpoint metadata lacks the key 'config'"),
    (b'{"version": 1, "config": {"n_inputs": 2}}', "the checkpoint's configuration lacks the key 'block'"),
    (b'{"version": 1, "config": {"block": {}}}', "the checkpoint's configuration is not valid: .*n_inputs"),
    (b'{"version": 1, "config": {"n_inputs": 2, "block": {"colour": 1}}}',
     "the checkpoint's configuration is not valid: .*colour"),
    (b'{"version": 1, "config": {"n_inputs": 2.5, "block": {}}}',
     "the checkpoint's configuration is not valid: n_inputs: expected a whole number"),
    (b'{"version": 1, "config": [2]}', "the checkpoint's configuration is not valid"),
])
def test_bad_metadata_raises_a_value_error_naming_the_file(tmp_path, raw, match):
    path = tmp_path / "c.npz"
    _small_checkpoint(path)
    _with_raw_meta(path, raw)
    with pytest.raises(ValueError, match=f"path: {path}: {match}"):
        load_checkpoint(path)


def _refused_within(path, seconds=5.0):
    """load_checkpoint(path) in a thread: the error it raised (it must finish in time)."""
    result = {}

    def run():
        try:
            load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load_checkpoint({path}) hangs"
    return result.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_given_as_a_checkpoint_is_refused_instead_of_hanging(tmp_path):
    path = tmp_path / "pipe.npz"
    os.mkfifo(path)
    try:
        error = _refused_within(path)
    finally:
        # unblock a reader the code under test may have left waiting
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert isinstance(error, ValueError) and "not a regular file" in str(error)
    assert str(path) in str(error)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_a_device_or_folder_given_as_a_checkpoint_is_refused(path, tmp_path):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    for target in (path, tmp_path):
        error = _refused_within(target)
        assert isinstance(error, ValueError) and "not a regular file" in str(error)


def test_a_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no checkpoint at"):
        load_checkpoint(tmp_path / "absent.npz")


def test_not_an_npz_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"hello")
    with pytest.raises(ValueError, match=f"path: {path} is not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [[[0.0, 0.0]] * 3, 1.5, np.array([["a", "b"]] * 3, dtype=object)])
def test_saving_a_parameter_that_is_not_an_array_fails_before_replacing_the_previous_file(tmp_path, bad):
    path = tmp_path / "c.npz"
    net = _small_checkpoint(path)
    before = path.read_bytes()
    net.params["theta"] = bad
    with pytest.raises(TypeError, match=r"net.params\['theta'\]"):
        save_checkpoint(path, net)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary file left behind
    assert load_checkpoint(path).params.keys() == {"theta"}


def test_save_arrays_refuses_a_value_that_is_not_a_numeric_array(tmp_path):
    path = tmp_path / "a.npz"
    save_arrays(path, {"x": np.zeros(2)}, {})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"arrays\['y'\]: expected a NumPy or CuPy array"):
        save_arrays(path, {"x": np.zeros(2), "y": [1, 2]}, {})
    with pytest.raises(TypeError, match=r"arrays\['y'\]: expected a numeric array"):
        save_arrays(path, {"y": np.array([None])}, {})
    assert path.read_bytes() == before


def test_a_good_checkpoint_still_round_trips(tmp_path):
    path = tmp_path / "c.npz"
    net = _small_checkpoint(path, layers=2, tied=False, block=fa.BlockConfig(targets="learned"))
    loaded = load_checkpoint(path)
    assert loaded.params.keys() == net.params.keys()
    for k in net.params:
        np.testing.assert_array_equal(loaded.params[k], net.params[k])


# ---------------------------------------------------------------- every error names the file


def test_metadata_nested_100000_deep_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "c.npz"
    _small_checkpoint(path)
    _with_raw_meta(path, b'{"version": 1, "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    _refused_cheaply(path, f"path: {path}: the checkpoint metadata nests deeper than 32 levels")
    _small_checkpoint(path)
    _with_raw_meta(path, b'{"version": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}")  # under the recursion limit
    with pytest.raises(ValueError, match="nests deeper than 32 levels"):
        load_checkpoint(path)


def test_a_symlink_loop_is_refused_naming_the_file(tmp_path):
    (tmp_path / "a.npz").symlink_to(tmp_path / "b.npz")
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=f"path: {tmp_path / 'a.npz'} cannot be read as a checkpoint: "
                                         "Too many levels of symbolic links"):
        load_checkpoint(tmp_path / "a.npz")


def test_a_duplicated_zip_member_is_refused_instead_of_loading_the_last_copy(tmp_path):
    path = tmp_path / "c.npz"
    _small_checkpoint(path)
    second = io.BytesIO()
    np.lib.format.write_array(second, np.ones((3, 2), np.float32))
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as z:
        z.writestr("param/theta.npy", second.getvalue())
    with pytest.raises(ValueError, match=rf"path: {path}: members \['param/theta.npy'\] appear more than once"):
        load_checkpoint(path)


def _trained(opt_class, **config):
    net = fa.Network(fa.NetworkConfig(**{"n_inputs": 2, "n_classes": 3, **config}))
    opt = opt_class(net.params, lr=0.1)
    opt.step({k: np.ones_like(v) for k, v in net.params.items()})
    return net, opt


def test_restore_optimizer_refuses_another_kind_another_shape_and_a_bad_step_count(tmp_path):
    from flowattn_np.training.checkpoint import restore_optimizer
    from flowattn_np.training.optim import Adam

    path = tmp_path / "c.npz"
    save_checkpoint(path, *_trained(Adam))
    loaded = load_checkpoint(path)
    sgd = SGD(loaded.params, lr=0.1)
    with pytest.raises(ValueError, match=f"optimizer: {path} holds the state of 'Adam', got a SGD"):
        restore_optimizer(sgd, loaded)
    assert sgd.velocity == {} and sgd.t == 0  # unchanged
    other = fa.Network(fa.NetworkConfig(n_inputs=5, n_classes=3))  # a differently shaped network
    with pytest.raises(ValueError, match=r"holds 'm/theta' of shape \(3, 2\).*'theta' is \(3, 5\)"):
        restore_optimizer(Adam(other.params, lr=0.1), loaded)
    assert restore_optimizer(Adam(loaded.params, lr=0.1), loaded).t == 1
    _rewrite(path, lambda meta: meta["optimizer"].update(t="many"))
    with pytest.raises(ValueError, match=f"path: {path}: the optimiser's step count t is 'many'"):
        restore_optimizer(Adam(loaded.params, lr=0.1), load_checkpoint(path))
    save_checkpoint(path, loaded)  # no optimiser state at all
    with pytest.raises(ValueError, match=f"path: {path} holds no optimiser state"):
        restore_optimizer(Adam(loaded.params, lr=0.1), load_checkpoint(path))


def test_save_checkpoint_onto_a_symlink_writes_its_target_with_the_umask_mode(tmp_path):
    (tmp_path / "best.npz").symlink_to("epoch3.npz")
    old = os.umask(0o022)
    try:
        _small_checkpoint(tmp_path / "best.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "best.npz").is_symlink() and (tmp_path / "epoch3.npz").is_file()
    assert oct((tmp_path / "epoch3.npz").stat().st_mode & 0o777) == oct(0o644)
    assert load_checkpoint(tmp_path / "best.npz").params.keys() == {"theta"}


def test_fit_proves_its_checkpoint_path_before_training_and_a_full_disk_names_it(tmp_path, monkeypatch):
    import flowattn_np.training.checkpoint as checkpoint
    from flowattn_np.experiments.data import make_blobs
    from flowattn_np.training.train import fit

    (tmp_path / "a-file").write_text("x")
    X, y = make_blobs(64, seed=0)
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3))
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(OSError, match=f"cannot write a file here .*'{tmp_path / 'a-file' / 'c.npz'}'"):
        fit(net, X, y, epochs=1, progress=False, checkpoint=tmp_path / "a-file" / "c.npz")
    assert all(np.array_equal(net.params[k], before[k]) for k in before)  # refused before any step

    def full(f, **arrays):
        f.write(b"PK")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.numpy, "savez", full)
    with pytest.raises(OSError, match=f"No space left on device: '{tmp_path / 'c.npz'}'"):
        fit(net, X, y, epochs=1, progress=False, checkpoint=tmp_path / "c.npz")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]
