"""Order of accuracy of the split blocks, MEASURED, and dissipation block to block.

L blocks with step h = T / L approximate the full gradient flow (eq. 6 for the linear
model, its quadratic analogue) on [0, T]. Against a fine RK4 reference of the SAME
full flow, with the true labels C held fixed (targets='labels'):

* A sub-flow by RK4 (exact-ish), exact B:   Lie error ~ h,  Strang error ~ h^2;
* A sub-flow by one Euler step, exact B:    both first order (docs/math.md section 3.8: a point
  worth showing students).

The order is the least-squares slope of log(error) against log(h) over 4 step sizes.
The problems are small (n = 4, d = 3, m = 5; a batch of 2 sequences for the quadratic
model) with O(1) theta, so the splitting error is far above round-off, and the step
sizes are in the asymptotic regime (the measured slopes are within 0.03 of 1 and 2).

Dissipation (eq. 7): with the true labels and a small h the point-wise cross-entropy
never increases from block to block.
"""

import numpy as np
import pytest

import flowattn_np as fa
from flowattn_np.equations.integrators import integrate
from flowattn_np.equations.flows import linear_flow, quadratic_flow
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.implementations import readable_block

N, D, M, BATCH = 4, 3, 5, 2
REF_STEPS = 4000  # RK4 with h = T/4000: error ~1e-14, far below the splitting errors

# (T, scale of theta / phi, the four block counts L) per model
SETUP = {"linear": (1.0, 1.0, (8, 16, 32, 64)),
         "quadratic": (0.5, 0.7, (16, 32, 64, 128))}


def make_problem(model, seed=0, scale=1.0):
    """(Z0, params, C, full vector field) with one-hot true labels."""
    rng = np.random.default_rng(seed)
    if model == "linear":
        Z0 = rng.normal(size=(N, D))
        theta = scale * rng.normal(size=(M, D))
        C = fa.one_hot(rng.integers(0, M, size=N), M)
        return Z0, {"theta": theta}, C, lambda Z: linear_flow(Z, theta, C)
    Z0 = rng.normal(size=(BATCH, N, D))
    phi = np.tril(scale * rng.normal(size=(D, D)))
    theta = fa.theta_from_phi(phi)
    C = np.stack([fa.one_hot(rng.integers(0, N, size=N), N) for _ in range(BATCH)])
    return Z0, {"phi": phi}, C, lambda Z: quadratic_flow(Z, theta, C)


def run_blocks(config, Z0, params, C, L):
    block = readable_block(config)
    Z = Z0
    for _ in range(L):
        Z, _ = block.forward(Z, params, C)
    return Z


def slope(hs, errors):
    """Least-squares slope of log(error) against log(h)."""
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


@pytest.fixture(scope="module")
def reference():
    """Fine RK4 solutions of the full flows (computed once per module)."""
    out = {}
    for model, (T, scale, _) in SETUP.items():
        Z0, params, C, field = make_problem(model, scale=scale)
        out[model] = (Z0, params, C, integrate(field, Z0, T, steps=REF_STEPS, method="rk4"))
    return out


def measured_order(reference, model, scheme, integrator):
    T, _, Ls = SETUP[model]
    Z0, params, C, Z_ref = reference[model]
    hs, errors = [], []
    for L in Ls:
        config = BlockConfig(model=model, scheme=scheme, integrator=integrator, b_flow="exact",
                             targets="labels", h=T / L)
        errors.append(float(np.linalg.norm(run_blocks(config, Z0, params, C, L) - Z_ref)))
        hs.append(T / L)
    return slope(hs, errors), errors


# ---------------------------------------------------------------- order of accuracy

@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_lie_is_first_order(reference, model):
    p, errors = measured_order(reference, model, "lie", "rk4")
    assert min(errors) > 1e-8, "errors must be far above round-off for a meaningful slope"
    assert abs(p - 1) < 0.2, f"Lie slope {p:.3f}, errors {errors}"


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_strang_is_second_order(reference, model):
    p, errors = measured_order(reference, model, "strang", "rk4")
    assert min(errors) > 1e-8, "errors must be far above round-off for a meaningful slope"
    assert abs(p - 2) < 0.2, f"Strang slope {p:.3f}, errors {errors}"


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_strang_is_more_accurate_than_lie_at_equal_step(reference, model):
    _, lie = measured_order(reference, model, "lie", "rk4")
    _, strang = measured_order(reference, model, "strang", "rk4")
    assert all(s < 0.1 * e for s, e in zip(strang, lie))


@pytest.mark.parametrize("scheme", ["lie", "strang"])
@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_one_euler_step_for_A_makes_both_schemes_first_order(reference, model, scheme):
    p, errors = measured_order(reference, model, scheme, "euler")
    assert abs(p - 1) < 0.2, f"{scheme} with Euler A: slope {p:.3f}, errors {errors}"


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_heun_for_A_keeps_strang_second_order(reference, model):
    """Any A integrator of order >= 2 suffices for Strang's order 2."""
    p, errors = measured_order(reference, model, "strang", "heun")
    assert abs(p - 2) < 0.2, f"Strang with Heun A: slope {p:.3f}, errors {errors}"


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_lie_and_strang_converge_to_the_same_limit(reference, model):
    """Both schemes (RK4 A, exact B) converge to the full flow: their gap closes like h."""
    T, _, Ls = SETUP[model]
    Z0, params, C, Z_ref = reference[model]
    gaps = []
    for L in (Ls[-1], 4 * Ls[-1]):
        lie, strang = (run_blocks(BlockConfig(model=model, scheme=s, integrator="rk4",
                                              targets="labels", h=T / L), Z0, params, C, L)
                       for s in ("lie", "strang"))
        gaps.append(float(np.linalg.norm(lie - strang)))
    scale = float(np.linalg.norm(Z_ref))
    assert gaps[1] < 0.3 * gaps[0]  # 4x smaller h: the gap shrinks ~4x
    assert gaps[1] < 1e-2 * scale
    np.testing.assert_allclose(strang, Z_ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(lie, Z_ref, rtol=0, atol=1e-2 * scale)


def _merged_strang(model, integrator, Z0, params, C, h, L):
    """A(h/2), B(h), then L-1 Lie blocks (A(h), B(h)), then A(h/2): the merged stack of docs/math.md."""
    half_A = readable_block(BlockConfig(model=model, integrator=integrator, targets="none", h=h / 2))
    Y = half_A.forward(Z0, params)[0]
    if model == "linear":
        Y = fa.linear_B_exact(Y, params["theta"], C, h)
    else:
        Y = fa.quadratic_B_exact(Y, fa.theta_from_phi(params["phi"]), C, h)
    Y = run_blocks(BlockConfig(model=model, integrator=integrator, targets="labels", h=h),
                   Y, params, C, L - 1)
    return half_A.forward(Y, params)[0]


@pytest.mark.parametrize("model", ["linear", "quadratic"])
def test_strang_stack_is_lie_stack_with_half_steps_at_the_ends(reference, model):
    """With (nearly) exact A the inner half-steps merge: RK4 gap ~ h^4; Euler gap ~ h."""
    T, _, Ls = SETUP[model]
    Z0, params, C, _ = reference[model]
    gaps = {"rk4": [], "euler": []}
    hs = [T / L for L in Ls]
    for integrator in gaps:
        for L in Ls:
            strang = run_blocks(BlockConfig(model=model, scheme="strang", integrator=integrator,
                                            targets="labels", h=T / L), Z0, params, C, L)
            merged = _merged_strang(model, integrator, Z0, params, C, T / L, L)
            gaps[integrator].append(float(np.linalg.norm(strang - merged)))
    assert slope(hs, gaps["rk4"]) > 3.5, gaps["rk4"]
    assert abs(slope(hs, gaps["euler"]) - 1) < 0.2, gaps["euler"]


# ---------------------------------------------------------------- dissipation (eq. 7)

def _losses_over_blocks(model, scheme, integrator, b_flow, seed, blocks=20):
    rng = np.random.default_rng(seed)
    if model == "linear":
        Z = 2.0 * rng.normal(size=(N, D))
        theta = rng.normal(size=(M, D))
        C = fa.one_hot(rng.integers(0, M, size=N), M)
        h = 0.5 / np.linalg.eigvalsh(theta @ theta.T).max()  # docs/math.md: units of 1 / lam_max
        params, loss = {"theta": theta}, (lambda Z: float(fa.linear_loss(Z, theta, C)))
    else:
        Z = rng.normal(size=(BATCH, N, D))
        phi = np.tril(rng.normal(size=(D, D)))
        theta = fa.theta_from_phi(phi)
        C = np.stack([fa.one_hot(rng.integers(0, N, size=N), N) for _ in range(BATCH)])
        # the Hessian in Z scales like lam_max(theta) ||Z||^2: a step well inside it
        h = 0.25 / (np.linalg.eigvalsh(theta).max() * max(np.linalg.norm(z, 2) ** 2 for z in Z))
        params, loss = {"phi": phi}, (lambda Z: float(fa.quadratic_loss(Z, theta, C)))
    block = readable_block(BlockConfig(model=model, scheme=scheme, integrator=integrator,
                                   b_flow=b_flow, targets="labels", h=float(h)))
    losses = [loss(Z)]
    for _ in range(blocks):
        Z, _ = block.forward(Z, params, C)
        losses.append(loss(Z))
    return np.array(losses)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integrator", ["euler", "rk4"])
@pytest.mark.parametrize("scheme", ["lie", "strang"])
@pytest.mark.parametrize("model, b_flow", [("linear", "exact"), ("quadratic", "exact"),
                                           ("quadratic", "euler")])
def test_cross_entropy_never_increases_block_to_block(model, b_flow, scheme, integrator, seed):
    losses = _losses_over_blocks(model, scheme, integrator, b_flow, seed)
    steps = np.diff(losses)
    assert np.all(steps <= 1e-12 * np.abs(losses[:-1])), f"loss rose: {losses}"
    assert losses[-1] < 0.95 * losses[0], "the blocks must make real progress"


def test_label_forcing_lowers_cross_entropy_more_than_attention_alone():
    """Contrast: without the label sub-flow (targets='none') a block does not descend the
    cross-entropy of the true labels; the label-forced blocks end far lower."""
    rng = np.random.default_rng(0)
    Z = 2.0 * rng.normal(size=(N, D))
    theta = rng.normal(size=(M, D))
    C = fa.one_hot(rng.integers(0, M, size=N), M)
    h = 0.5 / np.linalg.eigvalsh(theta @ theta.T).max()
    with_labels = run_blocks(BlockConfig(targets="labels", h=h), Z, {"theta": theta}, C, 20)
    without = run_blocks(BlockConfig(targets="none", h=h), Z, {"theta": theta}, None, 20)
    assert fa.linear_loss(with_labels, theta, C) < 0.9 * fa.linear_loss(without, theta, C)
