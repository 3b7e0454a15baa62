"""The fast path training runs equals the readable reference path.

Training runs the fused eq. (8) block (``CrossAttentionBlock._eq8_forward`` /
``_eq8_backward``: oracle and attention scores in one product, the A and B sub-steps in
one update). The readable version is the general split block (``SplitBlock.forward`` /
``backward``: one Euler step of the A field through ``flows.rk_forward``, then the B
sub-flow), reached with ``CrossAttentionBlock(config, fused=False)``; and, for the
forward pass, ``flows.lie_step`` composed from the public sub-flows.

Both are compared here, forward and backward (Z_bar and every parameter gradient), for
every source of targets, learned and fixed h, one softmax and several heads, in float64.
"""

import itertools

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks.layers import BlockConfig, CrossAttentionBlock, Eq8Cache, SplitCache

N, D, M = 6, 4, 5
TOL = 1e-12

CASES = list(itertools.product(("labels", "none", "learned"), (False, True), (None, (2, 3))))


def _ids(case):
    targets, learn_h, heads = case
    return f"{targets}-{'learnh' if learn_h else 'fixedh'}-{'heads' if heads else 'one-softmax'}"


def _problem(config, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(N, D))
    params = {"theta": 0.8 * rng.normal(size=(M, D))}
    if config.learn_h:
        params["h"] = np.asarray(config.h)
    if config.targets == "learned":
        params["W"] = 0.8 * rng.normal(size=(M, D))
        params["b"] = 0.5 * rng.normal(size=(M,))
    C = fa.softmax(rng.normal(size=(N, M)), config.heads) if config.targets == "labels" else None
    return Z, params, C, rng.normal(size=(N, D))


def _setup(case):
    """(config, fused block, reference block, Z, params, C, upstream U) for one case."""
    targets, learn_h, heads = case
    config = BlockConfig(targets=targets, learn_h=learn_h, heads=heads, h=0.37)
    fused, reference = CrossAttentionBlock(config), CrossAttentionBlock(config, fused=False)
    return (config, fused, reference) + _problem(config)


def _close(a, b):
    scale = max(np.abs(b).max(), 1.0)
    return np.abs(a - b).max() <= TOL * scale


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fused_eq8_forward_equals_the_split_block(case):
    _, fused, reference, Z, params, C, _ = _setup(case)
    out_fused, cache_fused = fused.forward(Z, params, C)
    out_ref, cache_ref = reference.forward(Z, params, C)
    assert isinstance(cache_fused, Eq8Cache) and isinstance(cache_ref, SplitCache)
    assert _close(out_fused, out_ref), np.abs(out_fused - out_ref).max()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fused_eq8_backward_equals_the_split_block(case):
    _, fused, reference, Z, params, C, U = _setup(case)
    Z_bar_fused, g_fused = fused.backward(U.copy(), fused.forward(Z, params, C)[1])
    Z_bar_ref, g_ref = reference.backward(U.copy(), reference.forward(Z, params, C)[1])
    assert set(g_fused) == set(g_ref) == set(params)
    assert _close(Z_bar_fused, Z_bar_ref), np.abs(Z_bar_fused - Z_bar_ref).max()
    for name in params:
        assert g_fused[name].shape == params[name].shape, name
        assert _close(g_fused[name], g_ref[name]), (name, np.abs(g_fused[name] - g_ref[name]).max())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fused_eq8_forward_is_flows_lie_step_of_the_sub_flows(case):
    """B(h) o A(h) with one Euler step of -CA for A and the exact B sub-flow (eq. 8)."""
    targets, _, heads = case
    config, fused, _, Z, params, C, _ = _setup(case)
    theta = params["theta"]
    if targets == "learned":  # the oracle, held fixed over the block
        C = fa.softmax(Z @ params["W"].T + params["b"], heads)
    step_A = lambda Y, t: fa.rk_step(fa.linear_field(theta, heads=heads), Y, t, "euler")  # noqa: E731
    step_B = (lambda Y, t: Y) if targets == "none" else (  # noqa: E731
        lambda Y, t: fa.linear_B_exact(Y, theta, C, t, heads))
    expected = fa.lie_step(step_A, step_B, Z, config.h)
    out = fused.forward(Z, params, C if targets == "labels" else None)[0]
    assert _close(out, expected), np.abs(out - expected).max()


def test_the_switch_selects_the_path():
    config = BlockConfig(targets="labels")
    assert CrossAttentionBlock(config).fused and not CrossAttentionBlock(config, fused=False).fused
    # the fused path exists only for the transformer block (Lie splitting, Euler for A)
    assert not CrossAttentionBlock(config.replace(scheme="strang")).fused
    assert not CrossAttentionBlock(config.replace(integrator="heun")).fused
    assert fa.make_block(config).fused
