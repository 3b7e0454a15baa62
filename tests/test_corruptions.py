"""The corruptions of the robustness curves (``flowattn_np.experiments.corruptions``), on small made-up images.

* deterministic for a seed, different for another seed (noise, occlusion);
* the input's shape and dtype kept, the input itself untouched, strength 0 the identity;
* what each does: occlusion zeroes one k x k square per image, blur keeps a flat region flat;
* out-of-range strengths, unknown kinds and non-image inputs refused, naming what was expected.
"""

import math

import numpy as np
import pytest

from flowattn_np.experiments import corruptions
from flowattn_np.experiments.corruptions import corrupt
from flowattn_np.experiments.common import ReproduceConfig

KINDS = ("noise", "occlusion", "blur")
STRENGTH = {"noise": 0.7, "occlusion": 0.4, "blur": 1.3}


def images(dtype="float32", n=6, side=12, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, side * side)).astype(dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shape_and_dtype_are_kept_and_the_input_untouched(kind, dtype):
    X = images(dtype)
    before = X.copy()
    out = corrupt(X, kind, STRENGTH[kind], seed=5)
    assert out.shape == X.shape and out.dtype == X.dtype
    assert out is not X and np.array_equal(X, before)
    assert not np.array_equal(out, X)


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_gives_the_same_images(kind):
    X = images()
    a, b = corrupt(X, kind, STRENGTH[kind], seed=11), corrupt(X, kind, STRENGTH[kind], seed=11)
    assert np.array_equal(a, b)
    if kind != "blur":  # blur draws nothing
        assert not np.array_equal(a, corrupt(X, kind, STRENGTH[kind], seed=12))


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_the_identity(kind):
    X = images("float64")
    assert np.array_equal(corrupt(X, kind, 0.0, seed=3), X)


def test_occlusion_zeroes_one_square_of_the_asked_side_per_image():
    side = 10
    X = np.ones((5, side * side), dtype=np.float32)
    out = corrupt(X, "occlusion", 0.3, seed=0).reshape(5, side, side)
    for img in out:
        rows, cols = np.nonzero(img == 0)
        assert len(rows) == 9  # round(0.3 * 10) = 3: a 3 x 3 square
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
    assert set(np.unique(out)) == {0.0, 1.0}


def test_blur_keeps_a_flat_region_flat_and_smooths_an_edge():
    side = 16
    img = np.zeros((side, side))
    img[:, side // 2:] = 1.0  # a vertical edge
    out = corrupt(img.reshape(1, -1), "blur", 1.0).reshape(side, side)
    centre = out[6:10]  # rows far from the top and bottom: the zero padding does not reach them
    assert np.allclose(centre[:, -4], 1.0, atol=1e-3) and np.allclose(centre[:, 3], 0.0, atol=1e-3)
    assert 0.3 < centre[0, side // 2 - 1] < 0.5 < centre[0, side // 2] < 0.7  # the edge is smoothed
    K = corruptions.blur_matrix(side, 1.0)
    assert np.allclose(K[4:-4].sum(axis=1), 1.0)


def test_a_suite_shares_the_clean_images_and_draws_each_level_once():
    X = images()
    s = corruptions.suite(X, {"noise": (0.0, 0.5, 1.0), "occlusion": (0.0, 0.2), "blur": (0.0, 1.0)})
    assert s[("noise", "0")] is X and s[("occlusion", "0")] is X
    assert np.array_equal(s[("noise", "0.5")], corrupt(X, "noise", 0.5, seed=corruptions.seed_of("noise", 0.5)))
    assert len(s) == 7


@pytest.mark.parametrize("kind, strength, expected", [
    ("noise", -0.1, r"\[0, 10\]"), ("noise", 10.5, r"\[0, 10\]"), ("noise", math.nan, r"\[0, 10\]"),
    ("occlusion", 1.2, r"\[0, 1\]"), ("occlusion", -0.5, r"\[0, 1\]"),
    ("blur", 5.5, r"\[0, 5\]"), ("blur", "wide", r"\[0, 5\]"),
])
def test_out_of_range_strengths_are_refused(kind, strength, expected):
    with pytest.raises(ValueError, match=rf"^strength: {kind} takes .* expected a number in {expected}"):
        corrupt(images(), kind, strength)


def test_bad_kinds_and_inputs_are_refused():
    with pytest.raises(ValueError, match="^kind: expected one of noise, occlusion, blur"):
        corrupt(images(), "rain", 0.5)
    with pytest.raises(ValueError, match="last axis a square number"):
        corrupt(np.zeros((3, 10), np.float32), "blur", 1.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        corrupt(np.zeros((3, 16), np.uint8), "noise", 1.0)
    with pytest.raises(TypeError, match="host NumPy array"):
        corrupt([[0.0] * 16], "noise", 1.0)


@pytest.mark.parametrize("field, value, message", [
    ("occlusion", (0.2, 1.5), r"^occlusion: occlusion takes .* \[0, 1\]"),
    ("blur", (9.0,), r"^blur: blur takes .* \[0, 5\]"),
    ("robust_noise", (0.0, -1.0), r"^robust_noise: noise takes"),
    ("val_fraction", 1.0, r"^val_fraction: expected a fraction in \(0, 1\)"),
    ("max_epochs", 0, r"^max_epochs: expected a positive integer"),
])
def test_reproduce_refuses_bad_robustness_settings_before_any_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        ReproduceConfig(**{field: value})


def test_the_default_curves_have_seven_noise_levels_to_two_and_two_unseen_corruptions():
    levels = ReproduceConfig().levels()
    assert len(levels["noise"]) >= 7 and levels["noise"][0] == 0 and max(levels["noise"]) == 2
    assert set(corruptions.UNSEEN) <= set(levels) and all(len(levels[k]) >= 4 for k in corruptions.UNSEEN)
