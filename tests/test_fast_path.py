"""Every fast block equals its readable reference, and one place chooses between them.

The readable cross-attention block runs eq. (8) as the paper writes it, ``lie_step`` of
the attention and label sub-steps; the fused eq. (8) block (fast/eq8.py: oracle and
attention scores in one product, the two sub-steps in one update) is registered in
blocks/implementations.py for the configurations it supports. For every registered fast
block and every configuration of the grid it supports, both are compared here, forward
and backward (Z_bar and every parameter gradient), in float64 to 1e-12.
"""

import itertools

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.blocks import implementations
from flowattn_np.blocks.implementations import FAST_BLOCKS, make_block
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.params import init_block_params
from flowattn_np.blocks.sources import SOURCES
from flowattn_np.blocks.network_pass import BlockByBlock
from flowattn_np.fast.eq8 import FusedCrossAttentionBlock
from flowattn_np.fast.fused_quadratic import FusedQuadraticPass

N, D, M = 6, 4, 5
TOL = 1e-12

GRID = [BlockConfig(targets=targets, learn_h=learn_h, heads=heads, h=0.37, scheme=scheme,
                    integrator=integrator)
        for targets, learn_h, heads, scheme, integrator in itertools.product(
            tuple(SOURCES), (False, True), (None, (2, 3)), ("lie", "strang"), ("euler", "heun"))
        if SOURCES[targets].where != "B" and "linear" in SOURCES[targets].models]
CASES = [(path.name, cfg) for path in FAST_BLOCKS for cfg in GRID if path.supports(cfg)]


def _ids(case):
    name, cfg = case
    return f"{name}-{cfg.targets}-{'learnh' if cfg.learn_h else 'fixedh'}-{'heads' if cfg.heads else 'one'}"


def _problem(config, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(N, D))
    params = init_block_params(config, D, M, rng, "float64", scale=0.8)
    # every parameter away from its initial value (a zero bias, tau = 1 would hide a term)
    params = {k: v if k == "h" else v + 0.3 * rng.normal(size=v.shape) for k, v in params.items()}
    C = fa.softmax(rng.normal(size=(N, M)), config.heads) if config.uses_labels else None
    return Z, params, C, rng.normal(size=(N, D))


def _pair(case):
    name, config = case
    fast = next(path for path in FAST_BLOCKS if path.name == name).build(config)
    return config, fast, make_block(config, fast=False)


def _close(a, b):
    scale = max(np.abs(b).max(), 1.0)
    return np.abs(a - b).max() <= TOL * scale


def test_the_grid_reaches_every_fast_block_and_every_source_it_supports():
    assert {name for name, _ in CASES} == {path.name for path in FAST_BLOCKS} >= {"eq8"}
    # a source registered in one file (tests/toy_label_source.py) runs through eq8 too
    assert {cfg.targets for name, cfg in CASES if name == "eq8"} >= {"labels", "none", "learned", "temperature"}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_fast_block_s_forward_equals_its_reference(case):
    config, fast, reference = _pair(case)
    Z, params, C, _ = _problem(config)
    assert fast.fast and not reference.fast
    out_fast = fast.forward(Z, params, C)[0]
    out_ref = reference.forward(Z, params, C)[0]
    assert _close(out_fast, out_ref), np.abs(out_fast - out_ref).max()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_fast_block_s_backward_equals_its_reference(case):
    config, fast, reference = _pair(case)
    Z, params, C, U = _problem(config)
    Z_bar_fast, g_fast = fast.backward(U.copy(), fast.forward(Z, params, C)[1])[:2]
    Z_bar_ref, g_ref = reference.backward(U.copy(), reference.forward(Z, params, C)[1])[:2]
    assert set(g_fast) == set(g_ref) == set(params)
    assert _close(Z_bar_fast, Z_bar_ref), np.abs(Z_bar_fast - Z_bar_ref).max()
    for name in params:
        assert g_fast[name].shape == params[name].shape, name
        assert _close(g_fast[name], g_ref[name]), (name, np.abs(g_fast[name] - g_ref[name]).max())


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "eq8"], ids=_ids)
def test_the_fused_eq8_block_is_lie_step_of_the_public_sub_flows(case):
    """B(h) o A(h) with one Euler step of -CA for A and the exact B sub-flow (eq. 8)."""
    config, fast, _ = _pair(case)
    Z, params, C, _ = _problem(config)
    theta, heads = params["theta"], config.heads
    if config.source.where == "input":  # the oracle, held fixed over the block
        C = config.source.forward(config, Z, params)[0]
        if config.targets == "learned":  # written out once, as the paper's reader would
            assert np.allclose(C, fa.softmax(Z @ params["W"].T + params["b"], heads), rtol=0, atol=1e-15)
    step_A = lambda Y, t: fa.rk_step(fa.linear_field(theta, heads=heads), Y, t, "euler")  # noqa: E731
    step_B = (lambda Y, t: Y) if not config.has_B else (  # noqa: E731
        lambda Y, t: fa.linear_B_exact(Y, theta, C, t, heads))
    expected = fa.lie_step(step_A, step_B, Z, config.h)
    out = fast.forward(Z, params, C if config.uses_labels else None)[0]
    assert _close(out, expected), np.abs(out - expected).max()


def test_one_place_chooses_the_implementation():
    eq8 = BlockConfig(targets="labels")
    assert isinstance(make_block(eq8), FusedCrossAttentionBlock) and isinstance(fa.make_block(eq8),
                                                                                FusedCrossAttentionBlock)
    assert not make_block(eq8, fast=False).fast
    # the fused block exists only for the transformer block (Lie splitting, Euler for A, flat)
    for other in (eq8.replace(scheme="strang"), eq8.replace(integrator="heun"), eq8.replace(norm="sphere"),
                  eq8.replace(targets="mlp", mlp_hidden=3), eq8.replace(model="quadratic")):
        assert not make_block(other).fast, other
    linear = fa.NetworkConfig(n_inputs=D, n_classes=M, layers=2, block=eq8, dtype="float64")
    net = fa.Network(linear)
    assert isinstance(net.implementation, BlockByBlock) and net.block.fast and net.fused
    assert not fa.Network(linear, fused=False).fused
    quadratic = fa.NetworkConfig(n_inputs=D, layers=1, block=BlockConfig(model="quadratic", targets="none"))
    assert isinstance(fa.Network(quadratic).implementation, FusedQuadraticPass)
    assert isinstance(fa.Network(quadratic, fused=False).implementation, BlockByBlock)


def test_a_registered_fast_block_is_taken_where_it_supports_and_names_are_unique(monkeypatch):
    monkeypatch.setattr(implementations, "FAST_BLOCKS", [])
    seen = []

    class Probe(FusedCrossAttentionBlock):
        def __init__(self, config):
            seen.append(config)
            super().__init__(config)

    implementations.register_fast_block("probe", lambda cfg: cfg.scheme == "strang", Probe)
    strang, lie = BlockConfig(scheme="strang"), BlockConfig()
    assert isinstance(implementations.make_block(strang), Probe) and seen == [strang]
    assert not implementations.make_block(lie).fast  # eq8 is not registered in this registry
    with pytest.raises(ValueError, match="probe"):
        implementations.register_fast_block("probe", lambda cfg: True, Probe)


def test_a_network_hands_buffers_only_to_blocks_that_compute_into_them(monkeypatch):
    """The readable block would copy its fresh result into a buffer: it gets none."""
    seen = []
    for fused in (True, False):
        net = fa.Network(fa.NetworkConfig(n_inputs=D, n_classes=M, layers=2, dtype="float64",
                                          block=BlockConfig(targets="labels")), fused=fused)
        block = net.implementation.block  # the block the pass runs
        forward, backward = block.forward, block.backward
        monkeypatch.setattr(block, "forward", lambda *a, out=None, **k: seen.append(("f", fused, out is not None))
                            or forward(*a, out=out, **k))
        monkeypatch.setattr(block, "backward", lambda *a, out=None, **k: seen.append(("b", fused, out is not None))
                            or backward(*a, out=out, **k))
        rng = np.random.default_rng(0)
        net.loss_and_grads(rng.normal(size=(N, D)), rng.integers(0, M, N))
    assert set(seen) == {("f", True, True), ("b", True, True), ("f", False, False), ("b", False, False)}
