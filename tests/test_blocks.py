"""Tests for the split-flow blocks of flowattn_np.layers.

* The hand-derived ``backward`` of every block configuration (model x scheme x
  integrator x b_flow x label source x learn_h, plus the memory block and the multi-head
  linear block) equals central finite differences in float64, for the input Z and
  for every parameter. The label sources are those of the registry
  (``sources.SOURCES``), the test-only temperature oracle of tests/toy_label_source.py
  included: it shares theta with the block, so its gradient must add to theta's.
* The blocks are the paper's equations: eq. (8) for the linear model, eq. (10) for
  the quadratic model, the identity at h = 0.
* Configuration errors name the offending field; forward keeps its inputs intact;
  float32 stays float32 through forward and backward.

Sizes are tiny (n = 4 tokens, d = 3 features, m = 5 classes, a batch of 2 sequences
for the quadratic model) so the full matrix of finite-difference checks runs in
seconds. Every test that takes the ``backend`` or ``xp`` fixture, the finite-difference
checks included (float64), runs on NumPy and on the strict CuPy stand-in (and on a GPU
where CuPy has one).
"""

import itertools

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.backend import to_float
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.implementations import readable_block
from flowattn_np.blocks.memory import MemoryBlock
from flowattn_np.blocks.params import init_block_params
from flowattn_np.blocks.params import block_param_shapes
from flowattn_np.blocks.self_attention import SelfAttentionBlock
from flowattn_np.blocks.sources import SOURCES

N, D, M, BATCH, SLOTS = 4, 3, 5, 2, 3
H = 0.3  # a non-trivial step: large enough that every sub-step matters
RTOL = 1e-6

MODELS = ("linear", "quadratic")
SCHEMES = ("lie", "strang")
INTEGRATORS = ("euler", "heun", "rk4")
B_FLOWS = ("exact", "euler")
SETTINGS = {"mlp": {"mlp_hidden": 3}}  # sources whose configuration needs more than the name


def source_fields(name):
    """The BlockConfig fields that select the label source ``name``."""
    return {"targets": name, **SETTINGS.get(name, {})}


def sources_for(model, with_B=False):
    """The registered label sources defined for ``model`` (with a B sub-flow, if asked)."""
    return [name for name, source in SOURCES.items()
            if model in source.models and (source.where != "none" or not with_B)]


def _b_flows(model):
    """Only the quadratic model has a choice of B sub-flow (the linear one is exact)."""
    return B_FLOWS if model == "quadratic" else ("exact",)


# ---------------------------------------------------------------- helpers

def _softmax_np(S, heads=None):
    return fa.softmax(np.asarray(S, dtype=float), heads)


def make_problem(config, seed=0, dtype=np.float64, m=M):
    """Random (Z, params, C) for ``config`` on the host, every parameter non-trivial.

    Every parameter ``block_param_shapes`` lists (the model's, the label source's) is
    drawn at random, so that no term of the backward pass is multiplied by zero (init
    gives b = 0 and phi = I / d^(1/4)); phi is lower-triangular, h the configured step.
    """
    rng = np.random.default_rng(seed)
    m = sum(config.heads) if config.heads else m
    Z = rng.normal(size=(BATCH, N, D) if config.model == "quadratic" else (N, D))
    params = {}
    for name, shape in block_param_shapes(config, D, m).items():
        value = np.asarray(config.h) if name == "h" else 0.8 * rng.normal(size=shape)
        params[name] = np.tril(value) if name == "phi" else value
    C = None
    if config.uses_labels:
        C = _softmax_np(rng.normal(size=(BATCH, N, N) if config.model == "quadratic" else (N, m)),
                        None if config.model == "quadratic" else config.heads)
    cast = lambda a: None if a is None else np.asarray(a, dtype=dtype)  # noqa: E731
    return cast(Z), {k: cast(v) for k, v in params.items()}, cast(C)


def to_backend(Z, params, C):
    return (fa.asarray(Z), {k: fa.asarray(v) for k, v in params.items()},
            None if C is None else fa.asarray(C))


def assert_backward_matches_fd(config, seed=0):
    """FD check of Z and every parameter for the objective <U, block(Z)>, on the active backend."""
    block = readable_block(config)
    Z, params, C = to_backend(*make_problem(config, seed))
    xp = fa.array_module()
    U = fa.asarray(np.random.default_rng(seed + 100).normal(size=Z.shape))

    def objective(Z_, params_):
        return to_float((U * block.forward(Z_, params_, C)[0]).sum())

    _, cache = block.forward(Z, params, C)
    back = block.backward(U.copy(), cache)
    Z_bar, grads = back.Z, back.params
    assert set(grads) == set(params), f"grads keys {sorted(grads)} != params keys {sorted(params)}"
    assert (back.C is None) == (C is None), "Grads.C: the gradient in given targets, else None"
    if config.learn_h:
        assert bool(back.t == grads["h"]), "Grads.t is the gradient in h"

    failures = []
    r = fa.gradcheck(lambda Z_: objective(Z_, params), Z, Z_bar)
    if not r.rel_error < RTOL:
        failures.append(f"Z: {r}")
    for name, value in params.items():
        lower = name == "phi"  # a lower-triangular parameter: perturb through tril

        def f(p, name=name, lower=lower):
            return objective(Z, {**params, name: xp.tril(p) if lower else p})

        assert grads[name].shape == value.shape, name
        assert fa.get_array_module(grads[name]) is xp, f"{name}: gradient left the backend"
        if lower:
            g = fa.to_numpy(grads[name])
            assert np.array_equal(g, np.tril(g)), "phi grad must be lower-triangular"
        r = fa.gradcheck(f, value, grads[name])
        if not r.rel_error < RTOL:
            failures.append(f"{name}: {r}")
    assert not failures, f"{config.describe()}:\n" + "\n".join(failures)


# ---------------------------------------------------------------- gradients

ALL_SPLIT_CONFIGS = [(model, scheme, integrator, b_flow, targets, learn_h)
                     for model, scheme, integrator, learn_h in itertools.product(
                         MODELS, SCHEMES, INTEGRATORS, (True, False))
                     for targets in sources_for(model) for b_flow in _b_flows(model)]


@pytest.mark.parametrize("model, scheme, integrator, b_flow, targets, learn_h", ALL_SPLIT_CONFIGS)
def test_block_backward_matches_central_differences(model, scheme, integrator, b_flow, targets,
                                                    learn_h, backend):
    config = BlockConfig(model=model, scheme=scheme, integrator=integrator, b_flow=b_flow,
                         h=H, learn_h=learn_h, **source_fields(targets))
    assert_backward_matches_fd(config)


@pytest.mark.parametrize("learn_h", [True, False])
def test_memory_block_backward_matches_central_differences(learn_h, backend):
    config = BlockConfig(model="memory", targets="none", slots=SLOTS, h=H, learn_h=learn_h)
    assert_backward_matches_fd(config)


@pytest.mark.parametrize("scheme, integrator", [("lie", "euler"), ("strang", "rk4"),
                                                ("strang", "heun")])
@pytest.mark.parametrize("targets", sources_for("linear"))
def test_multihead_linear_block_backward_matches_central_differences(scheme, integrator, targets,
                                                                     backend):
    config = BlockConfig(model="linear", scheme=scheme, integrator=integrator,
                         heads=(2, 3), h=H, learn_h=True, **source_fields(targets))
    assert_backward_matches_fd(config)


@pytest.mark.parametrize("model, targets", [(m, t) for m in MODELS for t in sources_for(m)])
def test_block_backward_matches_central_differences_for_negative_h(model, targets, backend):
    """A learned h may turn negative (a Hopfield-like step); the backward still holds."""
    config = BlockConfig(model=model, scheme="strang", integrator="rk4", h=-H, learn_h=True,
                         **source_fields(targets))
    assert_backward_matches_fd(config)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("targets", sources_for("quadratic", with_B=True))
def test_exact_quadratic_B_backward_at_repeated_eigenvalues(scheme, targets, xp):
    """phi = I / d^(1/4) (the init: theta has one repeated eigenvalue) and one-hot C
    (M = C + C^T with repeated eigenvalues): the divided differences of the exact-B VJP
    must take their limits, and the gradient still matches finite differences."""
    config = BlockConfig(model="quadratic", scheme=scheme, integrator="heun", b_flow="exact",
                         h=H, learn_h=True, **source_fields(targets))
    block = readable_block(config)
    rng = np.random.default_rng(3)
    Z, params, _ = make_problem(config, seed=3)
    params["phi"] = np.eye(D) / D ** 0.25
    C = np.stack([fa.one_hot(np.array([1, 1, 0, 2]), N), fa.one_hot(np.array([3, 0, 0, 3]), N)])
    assert np.allclose(np.linalg.eigvalsh(params["phi"] @ params["phi"].T), 1 / D ** 0.5)
    Z, params, C = to_backend(Z, params, C)
    U = fa.asarray(rng.normal(size=Z.shape))
    _, cache = block.forward(Z, params, C)
    back = block.backward(U, cache)
    Z_bar, grads = back.Z, back.params
    obj = lambda Z_, p_: to_float((U * block.forward(Z_, p_, C)[0]).sum())  # noqa: E731
    assert fa.gradcheck(lambda Z_: obj(Z_, params), Z, Z_bar).rel_error < RTOL
    for name, value in params.items():
        lower = name == "phi"
        r = fa.gradcheck(lambda x: obj(Z, {**params, name: xp.tril(x) if lower else x}), value,
                         grads[name])
        assert r.rel_error < RTOL, f"{name}: {r}"


def test_multihead_block_differs_from_single_softmax():
    """heads=(2, 3) really uses one softmax per head (else the FD check above is vacuous)."""
    Z, params, C = make_problem(BlockConfig(heads=(2, 3)))
    multi = readable_block(BlockConfig(heads=(2, 3), h=H)).forward(Z, params, C)[0]
    # per-head labels sum to 2 over all columns: unchecked, as this comparison means it
    single = readable_block(BlockConfig(h=H)).forward(Z, params, C, check=False)[0]
    assert np.abs(multi - single).max() > 1e-3


def test_multihead_block_is_sum_of_per_head_cross_attentions():
    """Multi-head (docs/math.md section 6): one Euler step = Z - h sum_h (CA(Z, theta_h) - C_h theta_h)."""
    Z, params, C = make_problem(BlockConfig(heads=(2, 3)))
    theta = params["theta"]
    out = readable_block(BlockConfig(heads=(2, 3), h=H)).forward(Z, params, C)[0]
    expected = Z.copy()
    for sl in (slice(0, 2), slice(2, 5)):
        expected -= H * (fa.cross_attention(Z, theta[sl]) - C[:, sl] @ theta[sl])
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("model", MODELS)
def test_labels_block_without_C_raises_naming_C(model):
    config = BlockConfig(model=model, targets="labels")
    Z, params, _ = make_problem(config)
    with pytest.raises(ValueError, match=r"\bC\b"):
        readable_block(config).forward(Z, params, None)


@pytest.mark.parametrize("field", ["model", "scheme", "integrator", "b_flow", "targets"])
def test_block_config_rejects_unknown_names_naming_the_field(field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        BlockConfig(**{field: "no-such-thing"})


@pytest.mark.parametrize("model", ["linear", "memory"])
def test_b_flow_euler_is_rejected_where_it_would_change_nothing(model):
    """The linear B sub-flow Z + t C theta is exact in one Euler step (and the memory
    block has none): b_flow='euler' there would be an option that does nothing."""
    extra = {"targets": "none", "slots": SLOTS} if model == "memory" else {}
    with pytest.raises(ValueError, match=r"^b_flow\b"):
        BlockConfig(model=model, b_flow="euler", **extra)
    assert BlockConfig(model="quadratic", b_flow="euler").b_flow == "euler"


@pytest.mark.parametrize("targets", ["labels", "learned"])
def test_memory_block_rejects_targets_other_than_none(targets):
    with pytest.raises(ValueError, match="targets"):
        BlockConfig(model="memory", targets=targets, slots=SLOTS)


def test_memory_block_needs_slots():
    with pytest.raises(ValueError, match="slots"):
        BlockConfig(model="memory", targets="none", slots=0)


@pytest.mark.parametrize("h", [float("nan"), float("inf")])
def test_block_config_rejects_non_finite_step(h):
    with pytest.raises(ValueError, match="h"):
        BlockConfig(h=h)


# ---------------------------------------------------------------- the paper's equations

@pytest.mark.parametrize("model, scheme, integrator, b_flow, targets",
                         [(m, s, i, b, t) for m, s, i in itertools.product(
                             MODELS, SCHEMES, INTEGRATORS) for t in sources_for(m) for b in _b_flows(m)])
def test_zero_step_block_is_identity(xp, model, scheme, integrator, b_flow, targets):
    config = BlockConfig(model=model, scheme=scheme, integrator=integrator, b_flow=b_flow,
                         h=0.0, learn_h=True, **source_fields(targets))
    Z, params, C = to_backend(*make_problem(config))
    params["h"] = xp.zeros(())  # the learned h, set to zero
    out = readable_block(config).forward(Z, params, C)[0]
    # linear model and Euler B: exactly Z; the exact quadratic B goes through eigh (round-off)
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(Z), rtol=0, atol=1e-13)
    fixed = readable_block(config.replace(learn_h=False)).forward(Z, {k: v for k, v in params.items()
                                                                  if k != "h"}, C)[0]
    np.testing.assert_allclose(fa.to_numpy(fixed), fa.to_numpy(Z), rtol=0, atol=1e-13)


def test_zero_step_memory_block_is_identity(xp):
    config = BlockConfig(model="memory", targets="none", slots=SLOTS, h=0.0)
    Z, params, _ = to_backend(*make_problem(config))
    out = readable_block(config).forward(Z, params)[0]
    assert bool((out == Z).all())


def test_linear_lie_euler_block_is_equation_8(xp):
    """Z_l+1 = Z_l - h CA(Z_l, theta) + h C theta (eq. 8)."""
    config = BlockConfig(model="linear", scheme="lie", integrator="euler", b_flow="exact",
                         targets="labels", h=H)
    Z, params, C = to_backend(*make_problem(config))
    theta = params["theta"]
    out = readable_block(config).forward(Z, params, C)[0]
    expected = Z - H * fa.cross_attention(Z, theta) + H * (C @ theta)
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(expected), rtol=1e-14, atol=1e-14)


def test_linear_lie_euler_block_is_one_gradient_descent_step(xp):
    """With C one-hot, eq. (8) is Z - h grad_Z l (eq. 4): a step of the full flow."""
    config = BlockConfig(model="linear", targets="labels", h=H)
    Z, params, _ = to_backend(*make_problem(config))
    C = fa.one_hot(xp.asarray([0, 3, 1, 4]), M)
    out = readable_block(config).forward(Z, params, C)[0]
    expected = Z - H * fa.linear_grad_Z(Z, params["theta"], C)
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(expected), rtol=1e-13, atol=1e-13)


def test_quadratic_lie_euler_block_is_equation_10(xp):
    """Z_half = Z - h (SA + SA*)(Z); Z_out = Z_half + h (C + C^T) Z_half theta (eq. 10)."""
    config = BlockConfig(model="quadratic", scheme="lie", integrator="euler", b_flow="euler",
                         targets="labels", h=H)
    Z, params, C = to_backend(*make_problem(config))
    theta = fa.theta_from_phi(params["phi"])
    out = readable_block(config).forward(Z, params, C)[0]
    Z_half = Z - H * (fa.self_attention(Z, theta) + fa.self_attention_adjoint(Z, theta))
    expected = Z_half + H * ((C + C.swapaxes(-1, -2)) @ Z_half @ theta)
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(expected), rtol=1e-13, atol=1e-13)


def test_quadratic_lie_euler_block_with_exact_B_uses_the_exact_label_flow(xp):
    config = BlockConfig(model="quadratic", scheme="lie", integrator="euler", b_flow="exact",
                         targets="labels", h=H)
    Z, params, C = to_backend(*make_problem(config))
    theta = fa.theta_from_phi(params["phi"])
    out = readable_block(config).forward(Z, params, C)[0]
    Z_half = Z - H * (fa.self_attention(Z, theta) + fa.self_attention_adjoint(Z, theta))
    expected = fa.quadratic_B_exact(Z_half, theta, C, H)
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(expected), rtol=1e-12, atol=1e-12)


def test_quadratic_exact_B_differs_from_its_euler_step():
    """b_flow is honoured: exact and Euler B agree to O(h^2), not exactly."""
    base = BlockConfig(model="quadratic", targets="labels", h=H)
    Z, params, C = make_problem(base)
    exact = readable_block(base.replace(b_flow="exact")).forward(Z, params, C)[0]
    euler = readable_block(base.replace(b_flow="euler")).forward(Z, params, C)[0]
    assert np.abs(exact - euler).max() > 1e-4


@pytest.mark.parametrize("model", MODELS)
def test_strang_block_is_half_A_full_B_half_A(model):
    """Strang = A(h/2) B(h) A(h/2), composed from the Lie pieces with targets 'none'."""
    cfg = BlockConfig(model=model, scheme="strang", integrator="heun", b_flow=_b_flows(model)[-1],
                      targets="labels", h=H)
    Z, params, C = make_problem(cfg)
    A_half = readable_block(cfg.replace(scheme="lie", targets="none", h=H / 2))
    Y = A_half.forward(Z, params)[0]
    if model == "linear":
        Y = fa.linear_B_exact(Y, params["theta"], C, H)
    else:
        theta = fa.theta_from_phi(params["phi"])
        Y = Y + H * ((C + C.swapaxes(-1, -2)) @ Y @ theta)
    expected = A_half.forward(Y, params)[0]
    out = readable_block(cfg).forward(Z, params, C)[0]
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_memory_block_is_residual_key_value_attention(xp):
    config = BlockConfig(model="memory", targets="none", slots=SLOTS, h=H)
    Z, params, _ = to_backend(*make_problem(config))
    out = readable_block(config).forward(Z, params)[0]
    expected = Z + H * fa.softmax(Z @ params["K"].T) @ params["V"]
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(expected), rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------- no side effects, dtypes

SMOKE_CONFIGS = [
    BlockConfig(model=model, scheme=scheme, integrator="heun", b_flow=b_flow, h=H, learn_h=learn_h,
                **source_fields(targets))
    for model, scheme, learn_h in itertools.product(MODELS, SCHEMES, (True, False))
    for targets in sources_for(model) for b_flow in _b_flows(model)
] + [BlockConfig(model="memory", targets="none", slots=SLOTS, h=H, learn_h=lh) for lh in (True, False)] \
  + [BlockConfig(model="linear", heads=(2, 3), h=H, learn_h=True, **source_fields(t))
     for t in sources_for("linear")]


def _ids(config):
    return (f"{config.model}-{config.scheme}-{config.b_flow}-{config.targets}-"
            f"{'learnh' if config.learn_h else 'fixedh'}{'-heads' if config.heads else ''}")


@pytest.mark.parametrize("config", SMOKE_CONFIGS, ids=_ids)
def test_forward_and_backward_do_not_modify_inputs(xp, config):
    Z, params, C = to_backend(*make_problem(config))
    snapshot = [Z.copy(), {k: v.copy() for k, v in params.items()}, None if C is None else C.copy()]
    block = readable_block(config)
    out, cache = block.forward(Z, params, C)
    U = xp.ones_like(out)
    U_copy = U.copy()
    block.backward(U, cache)
    assert bool((Z == snapshot[0]).all())
    for k, v in params.items():
        assert bool((v == snapshot[1][k]).all()), k
    if C is not None:
        assert bool((C == snapshot[2]).all())
    assert bool((U == U_copy).all()), "backward modified its upstream gradient"
    assert out is not Z


@pytest.mark.parametrize("config", SMOKE_CONFIGS, ids=_ids)
def test_float32_in_float32_out_and_float32_grads(xp, config):
    Z, params, C = to_backend(*make_problem(config, dtype=np.float32))
    block = readable_block(config)
    out, cache = block.forward(Z, params, C)
    assert out.dtype == np.float32
    back = block.backward(xp.ones_like(out), cache)
    Z_bar, grads = back.Z, back.params
    assert Z_bar.dtype == np.float32
    assert set(grads) == set(params)
    for k, g in grads.items():
        assert g.dtype == np.float32, f"grad {k} is {g.dtype}"
        assert g.shape == params[k].shape, k
    # and float32 agrees with float64 to float32 accuracy
    Z64, params64, C64 = to_backend(*make_problem(config))
    out64 = block.forward(Z64, params64, C64)[0]
    np.testing.assert_allclose(fa.to_numpy(out), fa.to_numpy(out64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [BlockConfig(model="linear", targets="learned", learn_h=True),
                                    BlockConfig(model="quadratic", targets="learned", learn_h=True),
                                    BlockConfig(model="memory", targets="none", slots=SLOTS,
                                                learn_h=True)], ids=_ids)
def test_init_block_params_shapes_dtype_and_zero_bias(xp, config):
    params = init_block_params(config, D, M, np.random.default_rng(0), "float32")
    expected = {"linear": {"theta": (M, D), "W": (M, D), "b": (M,), "h": ()},
                "quadratic": {"phi": (D, D), "W": (D, D), "h": ()},
                "memory": {"K": (SLOTS, D), "V": (SLOTS, D), "h": ()}}[config.model]
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert all(v.dtype == np.float32 for v in params.values())
    assert float(params["h"]) == pytest.approx(config.h)
    if config.model == "quadratic":
        phi = fa.to_numpy(params["phi"])
        assert np.array_equal(phi, np.tril(phi))


@pytest.mark.parametrize("config, cls", [
    (BlockConfig(), CrossAttentionBlock),
    (BlockConfig(model="quadratic"), SelfAttentionBlock),
    (BlockConfig(model="memory", targets="none", slots=2), MemoryBlock),
], ids=["linear", "quadratic", "memory"])
def test_make_block_builds_the_block_of_the_configured_model(config, cls):
    block = readable_block(config)
    assert type(block) is cls and block.config is config


# ---------------------------------------------------------------- the registry of label sources

NET_SOURCE_CASES = [(model, targets, tied) for model in MODELS for targets in sources_for(model)
                    for tied in (True, False)]


@pytest.mark.parametrize("model, targets, tied", NET_SOURCE_CASES)
def test_network_of_every_label_source_matches_central_differences(model, targets, tied):
    """A network of L = 2 blocks with each registered source: forward, backward and
    central differences for every parameter (tied: the sources' theta is the head's)."""
    from test_network import assert_network_grads_match_fd, make_data, net_of, randomise

    block = BlockConfig(model=model, scheme="strang", h=0.3, learn_h=True, **source_fields(targets))
    net = randomise(net_of(block, tied=tied, layers=2))
    assert_network_grads_match_fd(net, *make_data(net.config))


def _temperature_problem():
    config = BlockConfig(targets="temperature", h=H, learn_h=True)
    Z, params, _ = make_problem(config)
    return config, Z, params


def test_a_source_sharing_theta_adds_to_its_gradient(monkeypatch):
    """The temperature oracle reads the block's theta: theta's gradient is the sum of the
    attention's part and the oracle's part, both non-zero. Merged by dict.update instead
    of add_grads, the oracle's part overwrites the other and finite differences refuse it."""
    from flowattn_np.blocks import split

    config, Z, params = _temperature_problem()
    block = readable_block(config)
    U = np.random.default_rng(5).normal(size=Z.shape)
    objective = lambda theta: float((U * block.forward(Z, {**params, "theta": theta})[0]).sum())  # noqa: E731
    back = block.backward(U, block.forward(Z, params)[1])
    assert fa.gradcheck(objective, params["theta"], back.params["theta"]).rel_error < RTOL
    C, cache = config.source.forward(config, Z, params)  # the oracle's own part of theta_bar
    C_bar = np.random.default_rng(6).normal(size=C.shape)
    assert np.abs(config.source.vjp(config, C_bar, cache, params).params["theta"]).max() > 1e-3

    def overwrite(total, grads):  # the trap: a shared parameter's gradient is replaced
        total.update(grads)
        return total

    monkeypatch.setattr(split, "add_grads", overwrite)
    broken = block.backward(U, block.forward(Z, params)[1])
    assert fa.gradcheck(objective, params["theta"], broken.params["theta"]).rel_error > 1e-2


def test_every_source_declares_its_parameters_and_refuses_unknown_names():
    """init_block_params draws exactly the names block_param_shapes lists; a name the
    block does not have is a ValueError naming it, not silent N(0, 1/d) values."""
    rng = np.random.default_rng(0)
    for name, source in SOURCES.items():
        for model in source.models:
            config = BlockConfig(model=model, slots=SLOTS, learn_h=True, **source_fields(name))
            params = init_block_params(config, D, M, rng, "float64")
            shapes = block_param_shapes(config, D, M)
            assert {k: tuple(v.shape) for k, v in params.items()} == shapes, (name, model)
            with pytest.raises(ValueError, match="'no_such_param'"):
                fa.blocks.params.init_block_param(config, "no_such_param", (2,), D, rng, "float64")


def test_an_unknown_source_is_refused_listing_the_registry():
    with pytest.raises(ValueError, match=r"^targets: expected one of .*'learned'.*'temperature'"):
        BlockConfig(targets="no-such-source")
    with pytest.raises(ValueError, match=r"^targets: 'temperature' is defined for the linear model"):
        BlockConfig(model="quadratic", targets="temperature")


def test_describe_and_titles_read_the_registry():
    from flowattn_np.blocks.sources import TARGET_TITLES

    assert set(TARGET_TITLES) == set(SOURCES)
    for name, source in SOURCES.items():
        assert source.title in BlockConfig(model=source.models[0], slots=SLOTS,
                                           **source_fields(name)).describe()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_runs_the_splitting_of_flows(scheme, monkeypatch):
    """The block's forward is flows.lie_step / strang_step of its A and B sub-steps: a spy
    on the splitting sees one call with the block's Z and h, and its result is the output."""
    from flowattn_np.blocks import split

    calls = []
    original = split.SPLITTINGS[scheme]

    def spy(A, B, Z, h):
        calls.append((Z, h))
        return original(A, B, Z, h)

    monkeypatch.setitem(split.SPLITTINGS, scheme, spy)
    config = BlockConfig(targets="learned", scheme=scheme, h=H)
    Z, params, _ = make_problem(config)
    out, cache = readable_block(config).forward(Z, params)
    assert calls[0][0] is Z and calls[0][1] == H  # the step itself
    assert calls[1:] == [(None, 1.0)]  # the schedule of fractions, read off the same function
    assert [e.name for e in cache.tape] == (["A", "B"] if scheme == "lie" else ["A", "B", "A"])
    assert [e.fraction for e in cache.tape] == ([1.0, 1.0] if scheme == "lie" else [0.5, 1.0, 0.5])


@pytest.mark.parametrize("config", [BlockConfig(targets="learned", h=H, learn_h=True),
                                    BlockConfig(model="quadratic", targets="labels", scheme="strang", h=H),
                                    BlockConfig(model="memory", targets="none", slots=SLOTS, h=H)], ids=_ids)
def test_out_buffers_receive_the_output_and_the_input_gradient(xp, config):
    """``out=`` is used, not ignored: forward writes Z_out into it and backward Grads.Z."""
    Z, params, C = to_backend(*make_problem(config))
    block = readable_block(config)
    expected, cache = block.forward(Z, params, C)
    buf = xp.zeros_like(Z)
    out, _ = block.forward(Z, params, C, out=buf)
    assert out is buf and bool((buf == expected).all())
    U = xp.ones_like(Z)
    back, grad_buf = block.backward(U, cache), xp.zeros_like(Z)
    assert block.backward(U, cache, out=grad_buf).Z is grad_buf and bool((grad_buf == back.Z).all())


@pytest.mark.parametrize("config", [
    BlockConfig(targets="labels", scheme="strang", integrator="heun", h=H),
    BlockConfig(targets="labels", heads=(2, 3), h=H),
    BlockConfig(model="quadratic", targets="labels", scheme="strang", b_flow="exact", h=H),
    BlockConfig(model="quadratic", targets="labels", b_flow="euler", h=H),
    BlockConfig(targets="labels", norm="sphere", h=H),
    BlockConfig(targets="labels", norm="layer", b_flow="euler", h=H),
    BlockConfig(model="quadratic", targets="labels", norm="sphere", norm_place="pre", h=H),
], ids=lambda c: f"{c.model}-{c.scheme}-{c.b_flow}-{c.norm}-{c.norm_place}{'-heads' if c.heads else ''}")
def test_grads_t_and_C_are_the_gradients_in_h_and_in_the_given_targets(config):
    """Grads.C is d<U, block(Z)>/dC for given labels, Grads.t the derivative in the step h
    (a fixed h here: the block reports it even when h is not a parameter)."""
    Z, params, C = make_problem(config)
    block = readable_block(config)
    U = np.random.default_rng(7).normal(size=Z.shape)
    back = block.backward(U, block.forward(Z, params, C)[1])
    r = fa.gradcheck(lambda C_: float((U * block.forward(Z, params, C_, check=False)[0]).sum()), C, back.C)
    assert r.rel_error < RTOL, f"C: {r}"
    at = lambda h: float((U * readable_block(config.replace(h=h)).forward(Z, params, C)[0]).sum())  # noqa: E731
    assert fa.gradcheck(lambda h: at(float(h)), np.asarray(H), np.asarray(back.t)).rel_error < RTOL


def test_fused_keys_name_score_parameters_of_the_source():
    """The fused hook: ("W", "b") / ("W",) for the learned oracle, None for the others, and
    always among the source's own parameters."""
    assert BlockConfig(targets="learned").fused_keys == ("W", "b")
    assert BlockConfig(model="quadratic", targets="learned").fused_keys == ("W",)
    for name, source in SOURCES.items():
        for model in source.models:
            config = BlockConfig(model=model, slots=SLOTS, **source_fields(name))
            keys = config.fused_keys
            assert keys is None or set(keys) <= set(source.param_shapes(config, D, M)), name
            assert keys is not None or name != "learned"


@pytest.mark.parametrize("norm", ("none", "sphere"))
def test_each_block_kind_returns_one_cache_type_flat_or_normalised(norm):
    """One cache type per block kind: the backward reads the config, never the cache's type."""
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(5, 4))
    types = {}
    for model, targets in (("linear", "labels"), ("quadratic", "labels"), ("memory", "none")):
        cfg = BlockConfig(model=model, targets=targets, slots=3 if model == "memory" else 0, norm=norm,
                          b_flow="euler" if model == "quadratic" and norm != "none" else "exact")
        params = init_block_params(cfg, 4, 3, rng, "float64")
        C = (fa.softmax(rng.normal(size=(5, 3))) if model == "linear" else
             fa.softmax(rng.normal(size=(5, 5))) if model == "quadratic" else None)
        types[model] = type(readable_block(cfg).forward(Z, params, C)[1]).__name__
    assert types == {"linear": "BlockCache", "quadratic": "BlockCache", "memory": "MemoryBlockCache"}


@pytest.fixture
def registry():
    """The label-source registry, restored in place after the test (views of it stay live)."""
    from flowattn_np.blocks import sources

    saved = dict(sources.SOURCES)
    yield sources
    sources.SOURCES.clear()
    sources.SOURCES.update(saved)


def test_registering_a_source_refuses_a_bad_name_a_bad_place_and_a_taken_name(registry):
    sources = registry

    class Probe(sources.LabelSource):
        name, where, models = "probe", "input", ("linear",)

    with pytest.raises(ValueError, match=r"^source: expected a non-empty str name, got ''"):
        sources.register_source(type("Nameless", (Probe,), {"name": ""})())
    with pytest.raises(ValueError, match=r"^source 'probe': where must be one of 'given', .*got 'later'"):
        sources.register_source(type("Late", (Probe,), {"where": "later"})())
    probe = sources.register_source(Probe())
    assert sources.register_source(probe) is probe  # the same object again: no change
    with pytest.raises(ValueError, match=r"^source: the name 'labels' is taken by"):
        sources.register_source(type("Labels2", (Probe,), {"name": "labels"})())


def test_a_source_may_not_declare_a_parameter_of_the_model(registry):
    """A source's W is its own; declaring 'theta' would collide with the model's."""
    sources = registry

    class Clash(sources.LabelSource):
        name, where, models = "clash", "input", ("linear",)

        def param_shapes(self, config, d, m):
            return {"theta": (m, d)}

    sources.register_source(Clash())
    with pytest.raises(ValueError, match=r"^targets: the source 'clash' declares 'theta', a parameter of the linear"):
        block_param_shapes(BlockConfig(targets="clash"), 4, 3)


def test_the_quadratic_model_has_no_exact_b_step_on_the_manifold():
    block = SelfAttentionBlock(BlockConfig(model="quadratic", targets="labels"))
    with pytest.raises(ValueError, match=r"^b_flow: the quadratic model's B sub-flow has no exact form"):
        block.B_manifold_forward(np.ones((3, 2)), np.eye(2), np.eye(3), 0.1)
