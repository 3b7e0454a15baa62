"""Every user-facing error not covered elsewhere names its argument and says what was expected."""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.experiments.data import make_blobs
from flowattn_np.training.optim import SGD, Cosine, StepDecay
from flowattn_np.training.checkpoint import load_arrays, load_checkpoint, save_arrays, save_checkpoint
from flowattn_np.training.train import fit


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_inputs=0), "n_inputs"),
    (dict(n_inputs=4, layers=-1), "layers"),
    (dict(n_inputs=4, encoding="conv"), "encoding"),
    (dict(n_inputs=4, encoding="identity", d=3), "d: the identity encoding"),
    (dict(n_inputs=4, encoding="linear"), "d: the linear encoding"),
    (dict(n_inputs=4, dtype="float16"), "dtype"),
    (dict(n_inputs=4, n_classes=5, block=fa.BlockConfig(heads=(2, 2))), "block.heads"),
])
def test_network_config_rejects_bad_settings_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fa.NetworkConfig(**kwargs)


def test_multi_head_labels_are_only_for_the_linear_model():
    with pytest.raises(ValueError, match="heads"):
        fa.BlockConfig(model="quadratic", heads=(2, 3))


def test_fit_rejects_bad_batch_size_epochs_and_noise():
    X, y = make_blobs(20, seed=0)
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3))
    with pytest.raises(ValueError, match="batch_size"):
        fit(net, X, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        fit(net, X, y, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="noise"):
        fit(net, X, y, noise=float("nan"), progress=False)
    with pytest.raises(ValueError, match="y_val"):
        fit(net, X, y, X_val=X, y_val=None, progress=False)
    with pytest.raises(TypeError, match="X: expected a floating-point array"):
        fit(net, X.astype(np.int64), y, progress=False)


def test_optimiser_settings_are_checked():
    p = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="weight_decay"):
        SGD(p, weight_decay=-0.1)
    with pytest.raises(ValueError, match="total"):
        Cosine(total=0)
    with pytest.raises(ValueError, match="every"):
        StepDecay(every=0)


def test_a_checkpoint_of_another_version_or_missing_parameters_is_refused(tmp_path):
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3, layers=1,
                                      block=fa.BlockConfig(targets="learned")))
    path = tmp_path / "c.npz"
    save_checkpoint(path, net)
    arrays, meta = load_arrays(path)
    meta["version"] = 99
    save_arrays(path, arrays, meta)
    with pytest.raises(ValueError, match="checkpoint version 99"):
        load_checkpoint(path)
    meta["version"] = 1
    del arrays["param/W"]
    save_arrays(path, arrays, meta)
    with pytest.raises(ValueError, match=r"lacks parameters \['W'\]"):
        load_checkpoint(path)


def test_gradcheck_refuses_a_gradient_of_the_wrong_shape():
    x = np.zeros(3)
    with pytest.raises(ValueError, match="grad: expected the shape of x"):
        fa.gradcheck(lambda v: (v ** 2).sum(), x, np.zeros(4))


def test_network_forward_with_true_label_blocks_needs_labels_and_names_y():
    net = fa.Network(fa.NetworkConfig(n_inputs=2, n_classes=3, layers=1,
                                      block=fa.BlockConfig(targets="labels")))
    with pytest.raises(ValueError, match="y: this network's blocks use the true labels"):
        net.predict(np.zeros((4, 2), dtype=np.float32))
