"""The MLP oracle in normalised blocks: BlockConfig(targets="mlp", norm=..., norm_place=...).

* Where the oracle is evaluated: at the input of the B sub-step as that sub-step sees it.
  Pre-norm, on the normalised input R(Z) (GPT-2's mlp(ln_2(x))), so the Lie/Euler
  pre-LayerNorm block is x + attn(ln_1(x)), then x + mlp(ln_2(x)), line by line.
  Post-norm, on the current on-manifold Z; with the linear model's exact B that Z also
  enters the rotation, so the B sub-step's VJP adds the oracle's C_bar -> Z_bar path.
* The hand-derived backward equals central finite differences in float64 (relative error
  below 1e-6) for Z and every parameter (theta or phi, W1, b1, W2, b2, h): both manifolds,
  both placements, Lie and Strang, fixed and learned h, both activations, every B
  sub-step the placement accepts, multi-head; and networks of L = 3 such blocks.
* Post-norm rows stay on the manifold.
"""

import itertools

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.implementations import readable_block
from helpers import assert_round_off
from test_mlp_blocks import assert_block_backward_matches_fd, assert_mlp_network_matches_fd, make_problem
from test_norm_blocks import PLACES, b_sub_steps


def block_cases():
    cases = []
    for (norm, place), model, scheme, learn_h in itertools.product(
            PLACES, ("linear", "quadratic"), ("lie", "strang"), (False, True)):
        for b_flow in b_sub_steps(model, place):
            cases.append(BlockConfig(model=model, targets="mlp", mlp_hidden=4, b_flow=b_flow,
                                     scheme=scheme, integrator="euler" if scheme == "lie" else "rk4",
                                     activation="gelu" if learn_h else "relu", h=0.3,
                                     learn_h=learn_h, norm=norm, norm_place=place))
    for (norm, place) in PLACES:  # multi-head labels, one softmax per head
        cases.append(BlockConfig(targets="mlp", mlp_hidden=3, heads=(2, 3), scheme="strang",
                                 integrator="heun", h=0.3, learn_h=True, norm=norm, norm_place=place))
    return cases


def _id(c):
    return "-".join(str(v) for v in (c.model, c.norm_place, c.norm, c.scheme, c.integrator, c.b_flow,
                                     c.activation, "learned-h" if c.learn_h else "fixed-h",
                                     "heads" if c.heads else ""))


CASES = block_cases()


@pytest.mark.parametrize("config", CASES, ids=[_id(c) for c in CASES])
def test_normalised_mlp_block_backward_matches_central_differences(config):
    assert_block_backward_matches_fd(config)


NET_CASES = {
    "post-sphere-exact-lie-tied": (BlockConfig(targets="mlp", mlp_hidden=4, norm="sphere", h=0.3,
                                               learn_h=True), True, "linear"),
    "post-layer-euler-strang-untied": (BlockConfig(targets="mlp", mlp_hidden=4, norm="layer",
                                                   b_flow="euler", scheme="strang", activation="relu",
                                                   h=0.3, learn_h=True), False, "identity"),
    "pre-layer-lie-untied": (BlockConfig(targets="mlp", mlp_hidden=4, norm="layer", norm_place="pre",
                                         h=0.3, learn_h=True), False, "linear"),
    "pre-sphere-strang-tied-heads": (BlockConfig(targets="mlp", mlp_hidden=4, heads=(2, 3), norm="sphere",
                                                 norm_place="pre", scheme="strang", h=0.3),
                                     True, "identity"),
    "quadratic-post-sphere-tied": (BlockConfig(model="quadratic", targets="mlp", mlp_hidden=4, norm="sphere",
                                               b_flow="euler", h=0.2, learn_h=True), True, "identity"),
    "quadratic-pre-layer-untied": (BlockConfig(model="quadratic", targets="mlp", mlp_hidden=4, norm="layer",
                                               norm_place="pre", scheme="strang", h=0.2, learn_h=True),
                                   False, "linear"),
}


@pytest.mark.parametrize("case", list(NET_CASES))
def test_network_of_normalised_mlp_blocks_matches_central_differences(case):
    assert_mlp_network_matches_fd(*NET_CASES[case])


# ---------------------------------------------------------------- where the oracle is evaluated


def _gelu_mlp(X, p):
    A = X @ p["W1"].T + p["b1"]
    H = 0.5 * A * (1 + np.tanh(np.sqrt(2 / np.pi) * (A + 0.044715 * A ** 3)))
    Y = H @ p["W2"].T + p["b2"]
    E = np.exp(Y - Y.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def _softmax(S):
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def test_pre_layernorm_lie_euler_mlp_block_is_the_gpt2_block():
    cfg = BlockConfig(targets="mlp", mlp_hidden=6, norm="layer", norm_place="pre", h=0.3)
    x, p = make_problem(cfg)
    theta, h = p["theta"], 0.3

    def ln(v):  # LayerNorm without its affine parameters: mean 0, |z| = sqrt(d)
        u = v - v.mean(axis=-1, keepdims=True)
        return np.sqrt(v.shape[-1]) * u / np.linalg.norm(u, axis=-1, keepdims=True)

    x = x + -h * _softmax(ln(x) @ theta.T) @ theta       # x = x + attn(ln_1(x))
    x = x + h * _gelu_mlp(ln(x), p) @ theta              # x = x + mlp(ln_2(x))
    out, _ = readable_block(cfg).forward(make_problem(cfg)[0], p)
    assert_round_off(out, x, theta)


def test_post_sphere_mlp_block_rotates_toward_the_oracle_at_the_on_sphere_input():
    cfg = BlockConfig(targets="mlp", mlp_hidden=5, norm="sphere", h=0.3)
    Z, p = make_problem(cfg)
    Z = fa.retract(Z)
    theta = p["theta"]
    A = fa.retract(Z + 0.3 * fa.linear_flow_A_sphere(Z, theta))   # A: projected Euler step, then R
    expected = fa.linear_B_exact_sphere(A, theta, _gelu_mlp(A, p), 0.3)  # C_hat at that point
    out, _ = readable_block(cfg).forward(Z, p)
    assert_round_off(out, expected, Z)
    assert np.abs(np.linalg.norm(out, axis=-1) - np.sqrt(Z.shape[-1])).max() < 1e-12
