"""The fused self-attention pass equals the readable per-block path.

Training a quadratic network with Lie splitting and an Euler A step runs
``fused_quadratic`` (one 2-D product over the (B*n, d) rows for every shared weight,
(B, n, n) tensors in reused buffers, softmax and its VJP in place, Z theta shared by
forward, backward and head, eigh(theta) once per pass, phi's gradient formed once, no
gradient for the input batch). ``Network(config, fused=False)`` runs the readable blocks
one by one instead (``network_pass.BlockByBlock``). Both are compared here in float64 to 1e-12, forward and
backward, for every quadratic configuration the fused path takes; repeated calls with
the same workspace give bitwise-identical results.
"""

import itertools

import numpy as np
import pytest

from flowattn_np.fast import fused_quadratic
from flowattn_np.fast import gram_softmax
from flowattn_np.equations.exact_b import divided_difference_products
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.network import Network, NetworkConfig

TOL = 1e-12
D, P_IN, SEQS, TOKENS, LAYERS = 4, 5, 3, 6, 3

CASES = [c for c in itertools.product(("none", "learned", "labels"), ("exact", "euler"),
                                      (False, True), (True, False), ("identity", "linear"))
         if not (c[0] == "none" and c[1] == "euler")]  # no B step without targets


def _ids(case):
    return "-".join(("learnh" if v is True else "fixedh") if i == 2 else
                    ("tied" if v else "untied") if i == 3 else str(v) for i, v in enumerate(case))


def _pair(case, dtype="float64"):
    """(fused network, reference network, X, y) with the same parameters; phi perturbed so
    that theta has distinct eigenvalues (the exact B flow's eigenbases)."""
    targets, b_flow, learn_h, tied, encoding = case
    linear = encoding == "linear"
    cfg = NetworkConfig(n_inputs=P_IN if linear else D, d=D if linear else None, encoding=encoding,
                        layers=LAYERS, tied=tied, dtype=dtype,
                        block=BlockConfig(model="quadratic", targets=targets, b_flow=b_flow,
                                          learn_h=learn_h, h=0.3))
    fused, ref = Network(cfg, seed=1), Network(cfg, seed=1, fused=False)
    rng = np.random.default_rng(2)
    for k in fused.params:
        if k.endswith("phi"):
            fused.params[k] = (fused.params[k] + np.tril(rng.normal(0, 0.2, (D, D)))).astype(dtype)
            ref.params[k] = fused.params[k].copy()
    X = rng.normal(size=(SEQS, TOKENS, cfg.n_inputs)).astype(dtype)
    y = rng.integers(0, TOKENS, (SEQS, TOKENS))
    return fused, ref, X, y


def _close(a, b):
    return np.abs(a - b).max() <= TOL * max(np.abs(b).max(), 1.0)


def _softmax_path(monkeypatch, path):
    """Make the fused pass take the Gram softmax ('gram': checked to be taken) or the
    max-shifted one ('shifted', as for large scores or on a device); returns the spy's calls."""
    calls = []

    def spy(S, Z, theta):
        calls.append(path == "gram" and gram_softmax.exp_is_safe(S, Z, theta))
        return calls[-1]

    monkeypatch.setattr(fused_quadratic, "exp_is_safe", spy)
    return calls


@pytest.mark.parametrize("path", ["gram", "shifted"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_fused_pass_takes_the_fused_path_and_equals_the_blocks(case, path, monkeypatch):
    calls = _softmax_path(monkeypatch, path)
    fused, ref, X, y = _pair(case)
    assert fused.fused and not ref.fused
    C = fused.target_matrix(y, X.dtype)
    logits, cache = fused.forward(X, C=C)
    assert isinstance(cache, fused_quadratic.FusedQuadraticCache)
    assert _close(logits, ref.forward(X, C=C)[0])
    loss_f, g_f, _ = fused.loss_and_grads(X, y)
    loss_r, g_r, _ = ref.loss_and_grads(X, y)
    assert abs(float(loss_f) - float(loss_r)) <= TOL * abs(float(loss_r))
    assert set(g_f) == set(g_r) == set(fused.params)
    for name in g_r:
        assert g_f[name].shape == g_r[name].shape, name
        assert _close(g_f[name], g_r[name]), (name, np.abs(g_f[name] - g_r[name]).max())
    assert calls and all(calls) == (path == "gram")


@pytest.mark.parametrize("case", [CASES[0], ("learned", "exact", False, True, "linear")], ids=_ids)
def test_scores_of_1e4_take_the_shifted_path_and_stay_finite(case, monkeypatch):
    """Inputs scaled so that the first block's scores pass 1e4: its exponential is not
    safe unshifted; loss and gradients are finite and equal the blocks'."""
    fused, ref, X, y = _pair(case)
    X = 60.0 * X
    seen = []

    def spy(S, Z, theta):
        seen.append((float(np.abs(S).max()), gram_softmax.exp_is_safe(S, Z, theta)))
        return seen[-1][1]

    monkeypatch.setattr(fused_quadratic, "exp_is_safe", spy)
    loss_f, g_f, _ = fused.loss_and_grads(X, y)
    assert seen[0][0] > 1e4 and not seen[0][1]
    loss_r, g_r, _ = ref.loss_and_grads(X, y)
    assert np.isfinite(float(loss_f)) and abs(float(loss_f) - float(loss_r)) <= TOL * abs(float(loss_r))
    for name in g_r:
        assert np.isfinite(g_f[name]).all() and _close(g_f[name], g_r[name]), name


@pytest.mark.parametrize("case", [CASES[0], CASES[-1], ("learned", "exact", True, True, "identity")],
                         ids=_ids)
def test_repeated_calls_with_one_workspace_are_bitwise_identical(case):
    fused, _, X, y = _pair(case, dtype="float32")
    first = fused.loss_and_grads(X, y)
    other = Network(fused.config, seed=5)  # another network's pass in between
    other.loss_and_grads(X + 1, y)
    for _ in range(2):
        again = fused.loss_and_grads(X, y)
        assert again[0].tobytes() == first[0].tobytes()
        assert again[2].tobytes() == first[2].tobytes()
        for name in first[1]:
            assert again[1][name].tobytes() == first[1][name].tobytes(), name
            assert again[1][name] is not first[1][name]  # callers never get a reused buffer


def test_gradients_are_float32_for_a_float32_network():
    fused, _, X, y = _pair(("learned", "exact", True, True, "identity"), dtype="float32")
    loss, grads, logits = fused.loss_and_grads(X, y)
    assert loss.dtype == logits.dtype == np.float32
    assert {str(g.dtype) for g in grads.values()} == {"float32"}


def _direct(A, B, c, x):
    """sum_r A_ra B_rb D_rab with D from its definition, elementwise (exprel at equal x)."""
    E = np.exp(c[:, None] * x[None, :])
    dx = x[:, None] - x[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        D = (E[:, :, None] - E[:, None, :]) / dx
    D = np.where(dx == 0, c[:, None, None] * E[:, :, None], D)
    close = (np.abs(dx) > 0) & (np.abs(c[:, None, None] * dx) < 1e-3)  # cancellation: use exprel
    ex = c[:, None, None] * E[:, None, :] * np.expm1(c[:, None, None] * dx) / np.where(dx == 0, 1, c[:, None, None] * dx)
    D = np.where(close, ex, D)
    return np.einsum("ra,rb,rab->ab", A, B, D)


@pytest.mark.parametrize("spread", [0.0, 1e-9, 1e-4, 0.05, 1.0], ids=lambda s: f"spread{s:g}")
def test_divided_differences_as_products_equal_their_definition(spread):
    rng = np.random.default_rng(0)
    R, k = 20, 5
    A, B = rng.normal(size=(R, k)), rng.normal(size=(R, k))
    c = 0.3 * rng.normal(size=R)
    x = 0.5 + spread * rng.normal(size=k)
    x[1] = x[0]  # an exactly repeated eigenvalue
    E = np.exp(c[:, None] * x[None, :])
    got = divided_difference_products(A, B, E, c, x)
    want = _direct(A, B, c, x)
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


def test_readable_path_for_other_schemes():
    cfg = NetworkConfig(n_inputs=D, layers=1, block=BlockConfig(model="quadratic", scheme="strang"))
    assert not fused_quadratic.supports(cfg) and not Network(cfg).fused


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["moderate", "logits1e4"])
def test_label_cross_entropy_equals_the_one_hot_form(scale):
    from flowattn_np.equations.ops import label_cross_entropy_and_grad, mean_cross_entropy_and_grad, one_hot

    rng = np.random.default_rng(3)
    logits = scale * rng.normal(size=(3, 6, 6))
    y = rng.integers(0, 6, (3, 6))
    C = one_hot(y.reshape(-1), 6).reshape(3, 6, 6)
    loss, G = label_cross_entropy_and_grad(logits, y)
    loss_ref, G_ref = mean_cross_entropy_and_grad(logits, C)
    assert np.isfinite(loss) and abs(float(loss) - float(loss_ref)) <= TOL * max(abs(float(loss_ref)), 1.0)
    assert _close(G, G_ref)
