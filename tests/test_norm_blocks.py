"""Normalised blocks and networks: BlockConfig(norm='sphere' | 'layer', norm_place='post' | 'pre').

* The hand-derived backward of every normalised block configuration (model x scheme x
  integrator x B sub-step x every registered label source, learned h, the memory block, multi-head, both
  manifolds and both placements) equals central finite differences in float64, for Z
  and every parameter; so do networks of L = 3 normalised blocks, tied and untied.
* Post-norm blocks ARE the Riemannian splitting of the equations (sphere.py), to
  round-off, and keep their rows on the manifold to 1e-12 however many blocks run;
  pre-norm blocks are not a flow on the manifold (their stream leaves it).
* The network normalises its encoding when the blocks do, and says so in describe().
"""

import itertools
import math

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.implementations import readable_block
from helpers import assert_round_off
from test_blocks import assert_backward_matches_fd, make_problem, source_fields, sources_for
from test_network import assert_network_grads_match_fd, make_data, net_of, randomise

PLACES = (("sphere", "post"), ("layer", "post"), ("sphere", "pre"), ("layer", "pre"))
ON_MANIFOLD = 1e-12


def b_sub_steps(model, place):
    """The B sub-steps a normalised block accepts (post: linear exact = the rotation on the
    manifold, euler = Euler + R; quadratic only Euler + R. Pre: the flat choices)."""
    if place == "post":
        return ("exact", "euler") if model == "linear" else ("euler",)
    return ("exact",) if model == "linear" else ("exact", "euler")


def block_cases():
    cases = []
    for (norm, place), model in itertools.product(PLACES, ("linear", "quadratic")):
        for scheme, integrator, targets in itertools.product(
                ("lie", "strang"), ("euler", "heun", "rk4"), sources_for(model)):
            for b_flow in b_sub_steps(model, place):
                cases.append(BlockConfig(model=model, scheme=scheme, integrator=integrator,
                                         b_flow=b_flow, learn_h=True, h=0.3,
                                         norm=norm, norm_place=place, **source_fields(targets)))
    for (norm, place), learn_h in itertools.product(PLACES, (False, True)):
        cases.append(BlockConfig(model="memory", targets="none", slots=3, h=0.3, learn_h=learn_h,
                                 norm=norm, norm_place=place))
        cases += [BlockConfig(heads=(2, 3), scheme="strang", integrator="rk4", h=0.3, learn_h=learn_h,
                              norm=norm, norm_place=place, **source_fields(t))
                  for t in sources_for("linear", with_B=True)]
    return cases


def _id(c):
    return "-".join(str(v) for v in (c.model, c.norm, c.norm_place, c.scheme, c.integrator,
                                     c.targets, c.b_flow, "learned-h" if c.learn_h else "fixed-h",
                                     "heads" if c.heads else ""))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("config", block_cases(), ids=_id)
def test_normalised_block_backward_matches_central_differences(config):
    assert_backward_matches_fd(config)


@pytest.mark.parametrize("norm, place", PLACES)
@pytest.mark.parametrize("targets", sources_for("linear", with_B=True))
def test_normalised_block_backward_for_negative_h(norm, place, targets):
    assert_backward_matches_fd(BlockConfig(h=-0.4, learn_h=True, scheme="strang", integrator="heun",
                                           norm=norm, norm_place=place, **source_fields(targets)))


NETWORK_CASES = {
    f"{model}-{targets}-{norm}-{place}-{'tied' if tied else 'untied'}-{encoding}":
        (BlockConfig(model=model, targets=targets, slots=3 if model == "memory" else 0,
                     b_flow="euler" if model == "quadratic" else "exact", scheme=scheme,
                     integrator=integrator, h=0.3, learn_h=True, norm=norm, norm_place=place),
         tied, encoding)
    for (model, targets, scheme, integrator), (norm, place), tied, encoding in [
        (("linear", "learned", "lie", "euler"), ("sphere", "post"), True, "linear"),
        (("linear", "learned", "lie", "euler"), ("sphere", "post"), False, "identity"),
        (("linear", "labels", "strang", "rk4"), ("layer", "post"), True, "identity"),
        (("linear", "labels", "lie", "euler"), ("layer", "post"), False, "linear"),
        (("linear", "none", "strang", "heun"), ("sphere", "pre"), True, "linear"),
        (("linear", "learned", "lie", "euler"), ("sphere", "pre"), False, "identity"),
        (("linear", "learned", "lie", "rk4"), ("layer", "pre"), True, "linear"),
        (("memory", "none", "lie", "euler"), ("sphere", "post"), True, "linear"),
        (("memory", "none", "lie", "euler"), ("layer", "pre"), False, "identity"),
        (("quadratic", "labels", "lie", "euler"), ("sphere", "post"), True, "linear"),
        (("quadratic", "learned", "strang", "heun"), ("layer", "post"), False, "identity"),
        (("quadratic", "none", "lie", "euler"), ("sphere", "pre"), True, "identity"),
    ]
}


@pytest.mark.parametrize("case", list(NETWORK_CASES))
def test_normalised_network_gradients_match_central_differences(case):
    block, tied, encoding = NETWORK_CASES[case]
    net = randomise(net_of(block, tied=tied, encoding=encoding))
    X, y = make_data(net.config)
    assert_network_grads_match_fd(net, X, y)


# ---------------------------------------------------------------- the blocks are the equations


def test_post_sphere_lie_euler_block_is_the_riemannian_splitting(rng):
    d = 4
    Z = fa.retract(rng.normal(size=(6, d)))
    theta, C = rng.normal(size=(3, d)), np.eye(3)[rng.integers(3, size=6)]
    block = readable_block(BlockConfig(targets="labels", h=0.3, norm="sphere"))
    out, _ = block.forward(Z, {"theta": theta}, C)
    A = fa.retract(Z + 0.3 * fa.linear_flow_A_sphere(Z, theta))          # Euler on the sphere, then R
    expected = fa.linear_B_exact_sphere(A, theta, C, 0.3)                 # the exact rotation
    assert_round_off(out, expected, Z)


def test_post_sphere_strang_rk4_block_is_the_riemannian_strang_step(rng):
    Z = fa.retract(rng.normal(size=(5, 3)))
    theta, C = rng.normal(size=(4, 3)), np.eye(4)[rng.integers(4, size=5)]
    block = readable_block(BlockConfig(targets="labels", h=0.2, scheme="strang", integrator="rk4", norm="sphere"))

    def step_A(Y, t):
        return fa.retract(fa.rk_step(lambda V: fa.linear_flow_A_sphere(V, theta), Y, t, "rk4"))

    def step_B(Y, t):
        return fa.linear_B_exact_sphere(Y, theta, C, t)
    assert_round_off(block.forward(Z, {"theta": theta}, C)[0], fa.strang_step(step_A, step_B, Z, 0.2), Z)


def test_post_layer_linear_block_rotates_on_the_layer_manifold(rng):
    Z = fa.layer_retract(rng.normal(size=(5, 4)))
    theta, C = rng.normal(size=(3, 4)), np.eye(3)[rng.integers(3, size=5)]
    block = readable_block(BlockConfig(targets="labels", h=0.3, norm="layer"))
    out, _ = block.forward(Z, {"theta": theta}, C)
    A = fa.layer_retract(Z + 0.3 * fa.linear_flow_A_sphere(Z, theta, manifold="layer"))
    expected = fa.linear_B_exact_sphere(A, theta - theta.mean(axis=1, keepdims=True), C, 0.3)
    assert_round_off(out, expected, Z)


def test_post_quadratic_block_is_euler_steps_on_the_sphere_then_R(rng):
    Z = fa.retract(rng.normal(size=(2, 4, 3)))
    phi = np.tril(0.7 * rng.normal(size=(3, 3)))
    theta = fa.theta_from_phi(phi)
    C = np.eye(4)[rng.integers(4, size=(2, 4))]
    block = readable_block(BlockConfig(model="quadratic", targets="labels", b_flow="euler", h=0.2, norm="sphere"))
    A = fa.retract(Z + 0.2 * fa.quadratic_flow_A_sphere(Z, theta))
    expected = fa.retract(A + 0.2 * fa.quadratic_flow_B_sphere(A, theta, C))
    assert_round_off(block.forward(Z, {"phi": phi}, C)[0], expected, Z)


def test_pre_norm_block_adds_the_step_of_the_normalised_input(rng):
    Z = 3.0 * rng.normal(size=(5, 4))
    theta, C = rng.normal(size=(3, 4)), np.eye(3)[rng.integers(3, size=5)]
    block = readable_block(BlockConfig(targets="labels", h=0.3, norm="sphere", norm_place="pre"))
    half = Z - 0.3 * fa.cross_attention(fa.retract(Z), theta)            # Z + h f_A(R(Z))
    expected = half + 0.3 * C @ theta                                      # B is constant in Z
    assert_round_off(block.forward(Z, {"theta": theta}, C)[0], expected, Z)


def test_post_norm_memory_block_is_a_projected_step_then_R(rng):
    Z = fa.retract(rng.normal(size=(5, 4)))
    K, V = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    block = readable_block(BlockConfig(model="memory", targets="none", slots=3, h=0.3, norm="sphere"))
    update = fa.softmax(Z @ K.T) @ V
    expected = fa.retract(Z + 0.3 * fa.tangent_project(Z, update))
    assert_round_off(block.forward(Z, {"K": K, "V": V})[0], expected, Z)


# ---------------------------------------------------------------- the manifold


@pytest.mark.parametrize("norm", ["sphere", "layer"])
@pytest.mark.parametrize("model, targets", [("linear", "labels"), ("linear", "learned"),
                                            ("quadratic", "labels"), ("memory", "none")])
def test_post_norm_rows_stay_on_the_manifold_through_many_blocks(norm, model, targets):
    config = BlockConfig(model=model, targets=targets, slots=3 if model == "memory" else 0,
                         b_flow="euler" if model == "quadratic" else "exact", h=0.4,
                         scheme="strang", integrator="rk4", norm=norm)
    Z, params, C = make_problem(config, seed=3)
    r = math.sqrt(Z.shape[-1])
    Z = fa.retract(Z) if norm == "sphere" else fa.layer_retract(Z)
    block = readable_block(config)
    for _ in range(50):
        Z, _ = block.forward(Z, params, C)
        assert np.abs(np.linalg.norm(Z, axis=-1) - r).max() < ON_MANIFOLD
        if norm == "layer":
            assert np.abs(Z.mean(axis=-1)).max() < ON_MANIFOLD


def test_pre_norm_stream_leaves_the_sphere(rng):
    Z = fa.retract(rng.normal(size=(6, 4)))
    theta, C = rng.normal(size=(3, 4)), np.eye(3)[rng.integers(3, size=6)]
    block = readable_block(BlockConfig(targets="labels", h=0.3, norm="sphere", norm_place="pre"))
    for _ in range(10):
        Z, _ = block.forward(Z, {"theta": theta}, C)
    assert np.abs(np.linalg.norm(Z, axis=1) - 2.0).max() > 0.1


def test_post_sphere_true_label_blocks_never_increase_the_loss(rng):
    """Dissipation on the sphere, block by block, for a small step."""
    theta = rng.normal(size=(4, 5))
    C = np.eye(4)[rng.integers(4, size=12)]
    Z = fa.retract(rng.normal(size=(12, 5)))
    block = readable_block(BlockConfig(targets="labels", h=0.05, norm="sphere", scheme="strang", integrator="rk4"))
    losses = [float(fa.linear_loss(Z, theta, C))]
    for _ in range(30):
        Z, _ = block.forward(Z, {"theta": theta}, C)
        losses.append(float(fa.linear_loss(Z, theta, C)))
    assert np.all(np.diff(losses) < 0)


# ---------------------------------------------------------------- networks, config, dtypes


@pytest.mark.parametrize("norm, place", PLACES)
def test_network_normalises_its_encoding_and_describes_it(norm, place):
    block = BlockConfig(targets="learned", h=0.3, norm=norm, norm_place=place)
    net = randomise(net_of(block, encoding="linear"))
    X, _ = make_data(net.config)
    Z0 = net.features(X)[0]
    assert np.abs(np.linalg.norm(Z0, axis=1) - math.sqrt(Z0.shape[1])).max() < ON_MANIFOLD
    text = net.describe()
    assert "Z_0 = R(encoding)" in text
    if place == "pre":
        assert "NOT a flow" in text
    else:
        assert "a flow on" in text and "post-norm" in text
    assert "normalisation" not in net_of(BlockConfig(targets="learned")).describe()


def test_zero_layers_never_normalise(rng):
    net = net_of(BlockConfig(targets="learned", norm="sphere"), layers=0)
    X, _ = make_data(net.config)
    assert_round_off(net.features(X)[0], X, X)


@pytest.mark.parametrize("changes, message", [
    (dict(norm="rms"), "^norm: expected one of"),
    (dict(norm="sphere", norm_place="middle"), "^norm_place: expected one of"),
    (dict(model="quadratic", norm="sphere"), "^b_flow: the quadratic B sub-flow has no exact"),
    (dict(b_flow="euler"), "^b_flow: the flat linear B sub-flow"),
    (dict(b_flow="euler", norm="sphere", norm_place="pre"), "^b_flow: the flat linear B sub-flow"),
])
def test_block_config_rejects_bad_normalisation_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        BlockConfig(targets="labels", **changes)


@pytest.mark.parametrize("norm, place", PLACES)
@pytest.mark.parametrize("model", ["linear", "quadratic", "memory"])
def test_normalised_blocks_keep_float32(xp, norm, place, model):
    config = BlockConfig(model=model, targets="learned" if model != "memory" else "none",
                         slots=3 if model == "memory" else 0, b_flow="euler" if model == "quadratic" else "exact",
                         learn_h=True, h=0.3, scheme="strang", integrator="heun", norm=norm, norm_place=place)
    Z, params, C = make_problem(config, dtype=np.float32)
    Z, params = xp.asarray(Z), {k: xp.asarray(v) for k, v in params.items()}
    block = readable_block(config)
    out, cache = block.forward(Z, params, C)
    back = block.backward(xp.ones_like(out), cache)
    Z_bar, grads = back.Z, back.params
    assert out.dtype == Z_bar.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert bool(xp.isfinite(Z_bar).all())


@pytest.mark.parametrize("norm, message", [("sphere", r"\|z\| = 0"), ("layer", "constant rows")])
def test_normalised_blocks_and_networks_reject_rows_without_a_direction(norm, message):
    config = BlockConfig(targets="learned", h=0.3, norm=norm)
    Z, params, _ = make_problem(config)
    Z[1] = 0.0
    with pytest.raises(ValueError, match=rf"^Z: a normalised block needs rows .*{message}"):
        readable_block(config).forward(Z, params)
    net = net_of(config)
    X, _ = make_data(net.config)
    X[2] = 0.0
    with pytest.raises(ValueError, match=rf"^X: the input normalisation needs rows .*{message}"):
        net.logits(X)


def test_normalised_quadratic_network_takes_the_per_block_path():
    """The fused quadratic pass is for flat blocks; a normalised network must normalise Z_0."""
    block = BlockConfig(model="quadratic", targets="labels", b_flow="euler", h=0.2, norm="sphere")
    net = randomise(net_of(block))
    X, y = make_data(net.config)
    assert not net.fused
    reference = fa.Network(net.config, params=net.params, fused=False)
    assert_round_off(net.logits(X, y), reference.logits(X, y), net.logits(X, y))
    Z0 = net.features(X, y)[0]
    assert np.abs(np.linalg.norm(Z0, axis=-1) - math.sqrt(Z0.shape[-1])).max() < ON_MANIFOLD
