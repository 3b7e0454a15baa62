"""The self-attention network's forward and backward, fused: what ``Network`` runs for
quadratic blocks with Lie splitting and one Euler step for A (the transformer block,
eq. 10), and its quadratic head.

The mathematics is that of ``SelfAttentionBlock``, ``exact_b.quadratic_B_exact`` and the
head ``logits = Z theta Z^T``: ``FusedQuadraticPass`` implements the interface of the
readable pass ``network_pass.BlockByBlock`` (which ``Network(config, fused=False)`` runs)
and registers itself for the configurations it supports (``fast/__init__.py``);
tests/test_fused_quadratic.py checks both agree. Per block:

    Y = Z theta,  P = sigma(Y Z^T),  Z_half = Z - h (P + P^T) Y           (A, Euler)
    Z_out = B-step of Z_half with M = C + C^T (exact or Euler; none without targets)

What the arrangement changes:

* products that share a weight run as ONE 2-D product over the (B*n, d) rows:
  Z [theta | W], T theta and every weight gradient sum_b Z_b^T T_b (ops.matmul_rows,
  ops.gram_sum), not B small products;
* Y = Z theta of each block's input is computed once for its forward and backward; the
  head's backward needs no Z_L theta (it is (G + G^T) Z_L theta, one product);
* the (B, n, n) scores, attention matrices and their VJPs live in Workspace buffers
  reused from step to step; softmax and its VJP run in place;
* every score matrix is a Gram matrix (theta = phi phi^T): where its diagonal allows,
  exp(S) is taken without a shift and P + P^T, its VJP and the head's G + G^T come from
  outer sums with no (n, n) transpose (gram_softmax); the backward uses only the
  symmetrised S_bar + S_bar^T, which saves one batched product per block;
* theta = phi phi^T and, for the exact B flow, eigh(theta) once per pass (tied
  weights); theta's gradient is summed over the blocks and the head and turned into
  phi's (tril, symmetrised) once;
* no gradient for the input batch (identity encoding) and none for a fixed h.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flowattn_np.backend import Workspace, get_array_module
from flowattn_np.blocks.network_pass import block_params, encode, head_theta
from flowattn_np.fast.gram_softmax import attention_sum, attention_sum_vjp, exp_is_safe, symmetric_softmax
from flowattn_np.fast.gram_softmax import label_cross_entropy_and_symmetric_grad
from flowattn_np.equations.exact_b import default_B_method, quadratic_B_exact_forward, quadratic_B_exact_vjp
from flowattn_np.equations.models import phi_grad, theta_from_phi
from flowattn_np.equations.ops import (
    gram_sum,
    label_cross_entropy_and_grad,
    matmul_rows,
    softmax,
    softmax_vjp,
    swap_last,
    symmetric_row_max,
)


def supports(config):
    """Whether a NetworkConfig's blocks take this path: quadratic, Lie, Euler for A, flat, with
    targets given, none, or from a source whose scores share the product (``fused_keys``:
    C = softmax(Z W Z^T)). Other configurations run the readable pass (normalised blocks;
    the MLP oracle, evaluated after the attention sub-step; other sources)."""
    b = config.block
    return config.head_model == "quadratic" and b.model == "quadratic" and b.scheme == "lie" \
        and b.integrator == "euler" and not b.normalised \
        and (b.source.where in ("given", "none") or b.fused_keys is not None)


class QuadraticWeights(NamedTuple):
    """One block's weights, prepared once per pass: theta = phi phi^T, the keys
    [theta | W] (or theta) of the shared product, W, (mu, V) = eigh(theta) or None, h,
    and the names under which the gradients of phi, W and h go."""

    theta: Any
    keys: Any
    W: Any
    eig: Any
    h: Any
    names: tuple


class FusedBlockCache(NamedTuple):
    """What a fused block keeps for its backward: input Z, Y = Z theta, Z W (learned
    oracle, else None), P = sigma(Y Z^T) or, where r is not None, E = exp(Y Z^T) with
    sigma = diag(r) E (gram_softmax), Q = P + P^T, F = Q Y, the targets C, the B cache
    (QuadraticBCache, Euler (M, M Z_half, M Z_half theta) with M = C + C^T, or None) and
    Z_half."""

    Z: Any
    Y: Any
    ZW: Any
    P: Any
    r: Any
    Q: Any
    F: Any
    C: Any
    B: Any
    Z_half: Any


class FusedQuadraticCache(NamedTuple):
    """Cache of the fused network pass: X, Z_0, Z_L, the head's theta, the weights of each
    block and each block's cache."""

    X: Any
    Z0: Any
    Z: Any
    theta: Any
    weights: tuple
    blocks: tuple


def _weights(config, params, layer):
    cfg = config.block
    prefix = "" if config.tied else f"block{layer}."
    p = params
    theta = theta_from_phi(p[prefix + "phi"], check=False)
    xp = get_array_module(theta)
    W_name = prefix + cfg.fused_keys[0] if cfg.fused_keys else None  # C = softmax(Z W Z^T)
    W = p[W_name] if W_name else None
    keys = theta if W is None else xp.concatenate([theta, W], axis=1)
    # eigh(theta) once per pass where the exact B step takes the eigenbases
    exact = cfg.has_B and cfg.b_flow == "exact"
    eig = xp.linalg.eigh(theta) if exact and default_B_method(theta) == "eigh" else None
    return QuadraticWeights(theta, keys, W, eig, cfg.step_size(block_params(config, params, layer)),
                            (prefix + "phi", W_name, prefix + "h"))


def forward(config, params, X, C=None, workspace=None):
    """Logits Z_L theta Z_L^T of a batch and a FusedQuadraticCache (see module docstring).

    With a ``workspace`` the block outputs and (B, n, n) tensors are reused buffers, valid
    until the next call with it; the logits are always a fresh array.
    """
    ws = Workspace() if workspace is None else workspace
    Z = encode(config, params, X)[0]
    Z0 = Z
    weights, caches = [], []
    shared = _weights(config, params, 0) if config.tied and config.layers else None
    for layer in range(config.layers):
        w = shared if shared is not None else _weights(config, params, layer)
        Z, c = _block_forward(Z, w, C, config.block, ws, layer)
        weights.append(w)
        caches.append(c)
    theta = shared.theta if shared is not None else head_theta(config, params)
    xp = get_array_module(Z)
    Y = matmul_rows(Z, theta, out=ws.get("Y_head", Z.shape, Z.dtype, xp))
    logits = Y @ swap_last(Z)
    return logits, FusedQuadraticCache(X, Z0, Z, theta, tuple(weights), tuple(caches))


def _buf(ws, name, like, shape=None):
    return ws.get(name, like.shape if shape is None else shape, like.dtype, get_array_module(like))


def _block_forward(Z, w, C, cfg, ws, layer):
    """One block: A by one Euler step, then B (exact or Euler) with C; (Z_out, cache)."""
    xp = get_array_module(Z)
    d, n = Z.shape[-1], Z.shape[-2]
    nn = Z.shape[:-1] + (n,)
    YK = matmul_rows(Z, w.keys, out=_buf(ws, f"YK{layer}", Z, Z.shape[:-1] + (w.keys.shape[1],)))
    Y = YK[..., :d]
    Zt = swap_last(Z)
    S = xp.matmul(Y, Zt, out=_buf(ws, f"P{layer}", Z, nn))  # S = Z theta Z^T, a Gram matrix
    if exp_is_safe(S, Z, w.theta):  # sigma(S) = diag(r) E, E = exp(S) symmetric
        P, r = symmetric_softmax(S)
        Q = attention_sum(P, r, out=_buf(ws, f"Q{layer}", Z, nn))
    else:
        P, r = softmax(S, out=S, shift=symmetric_row_max(S)), None
        Q = xp.add(P, swap_last(P), out=_buf(ws, f"Q{layer}", Z, nn))
    F = xp.matmul(Q, Y, out=_buf(ws, f"F{layer}", Z))
    last = not cfg.has_B
    Z_half = xp.multiply(F, -w.h, out=_buf(ws, f"Z{layer + 1}" if last else f"Zh{layer}", Z))
    Z_half += Z
    ZW, M, Bc, Z_out = None, None, None, Z_half
    if cfg.fused_keys:  # the oracle's scores Z W Z^T from the shared product Z [theta | W]
        ZW = YK[..., d:]
        C = softmax(xp.matmul(ZW, Zt, out=_buf(ws, f"C{layer}", Z, nn)), out=ws.get(f"C{layer}", nn, Z.dtype, xp))
    if not last:
        M = xp.add(C, swap_last(C), out=_buf(ws, f"M{layer}", Z, nn))
        if cfg.b_flow == "exact":
            Z_out, Bc = quadratic_B_exact_forward(Z_half, w.theta, M, w.h, w.eig)
        else:
            MZ = xp.matmul(M, Z_half, out=_buf(ws, f"MZ{layer}", Z))
            MZt = matmul_rows(MZ, w.theta, out=_buf(ws, f"MZt{layer}", Z))
            Z_out = xp.multiply(MZt, w.h, out=_buf(ws, f"Z{layer + 1}", Z))
            Z_out += Z_half
            Bc = (M, MZ, MZt)
    return Z_out, FusedBlockCache(Z, Y, ZW, P, r, Q, F, C, Bc, Z_half)


def backward(config, params, logits_bar, cache, workspace=None, symmetrised=False):
    """Gradients of every parameter for upstream logits_bar G (B, n, n), keyed like params
    (``symmetrised``: logits_bar holds G + G^T, which is all the head needs)."""
    ws = Workspace() if workspace is None else workspace
    cfg = config
    Z = cache.Z
    xp = get_array_module(Z)
    bufs = tuple(_buf(ws, name, Z) for name in ("Z_bar_a", "Z_bar_b"))
    # head: logits = Z theta Z^T, theta symmetric: Z_bar = (G + G^T) Z theta and
    # theta_bar ~ Z^T (G + G^T) Z / 2 (phi_grad keeps only the symmetric part)
    G_sym = logits_bar if symmetrised else xp.add(
        logits_bar, swap_last(logits_bar), out=_buf(ws, "b_UY", logits_bar))
    GZ = xp.matmul(G_sym, Z, out=_buf(ws, "b_tmp", Z))
    theta_bars = {"phi": 0.5 * gram_sum(Z, GZ)}
    Z_bar = matmul_rows(GZ, cache.theta, out=bufs[0])
    grads = {}
    for layer in reversed(range(cfg.layers)):
        need_input = layer > 0 or cfg.encoding == "linear"
        out = bufs[1] if Z_bar is bufs[0] else bufs[0]
        Z_bar = _block_backward(Z_bar, cache.blocks[layer], cache.weights[layer], cfg.block, ws,
                                need_input, out, theta_bars, grads)
    for name, theta_bar in theta_bars.items():
        grads[name] = phi_grad(theta_bar, params[name])
    if cfg.encoding == "linear":
        grads["E"] = gram_sum(Z_bar, cache.X)
    return grads


def _add(acc, name, value):
    if name in acc:
        acc[name] += value
    else:
        acc[name] = value


def _block_backward(Z_bar, c, w, cfg, ws, need_input, out, theta_bars, grads):
    """VJP of one fused block; adds to theta_bars and grads; returns Z_in_bar or None."""
    xp = get_array_module(Z_bar)
    phi_name, W_name, h_name = w.names
    h, learn_h = w.h, cfg.learn_h
    C_bar = None
    Z_half_bar = Z_bar
    if c.B is not None:
        Z_half_bar, theta_bar, M_bar, t_bar = _B_vjp(Z_bar, c, w, cfg)
        _add(theta_bars, phi_name, theta_bar)
        if learn_h:
            _add(grads, h_name, t_bar.reshape(()))
        if cfg.fused_keys:
            C_bar = M_bar + swap_last(M_bar)
    if learn_h:
        _add(grads, h_name, -xp.asarray(xp.vdot(Z_half_bar.reshape(-1), c.F.reshape(-1))).reshape(()))
    # A step Z_half = Z - h F, F = Q Y, P = sigma(Y Z^T): the VJP with upstream -h Z_half_bar
    # (Q_bar = -h U with U = Z_half_bar Y^T; the factor -h is applied to T below)
    U = xp.matmul(Z_half_bar, swap_last(c.Y), out=_buf(ws, "b_UY", c.P))
    P_bar = xp.add(U, swap_last(U), out=_buf(ws, "b_Pbar", c.P))
    if c.r is not None:
        S_sym = attention_sum_vjp(c.P, c.r, c.Q, P_bar, tmp=U)
    else:
        S_hat = softmax_vjp(c.P, P_bar, out=P_bar)
        S_sym = xp.add(S_hat, swap_last(S_hat), out=U)
    # S = Z theta Z^T, theta symmetric: Z_bar = S_sym Z theta, theta_bar ~ Z^T S_sym Z / 2
    # (phi_grad keeps only the symmetric part); with F = Q Z theta:
    # Z_in = Z_half_bar - h (Q Z_half_bar + S_sym Z) theta, theta_bar = -h Z^T (Q Z_half_bar + S_sym Z / 2)
    T = xp.matmul(c.Q, Z_half_bar, out=_buf(ws, "b_T", c.Z))
    T2 = xp.matmul(S_sym, c.Z, out=_buf(ws, "b_tmp", c.Z))
    T2 *= 0.5
    T += T2
    _add(theta_bars, phi_name, -h * gram_sum(c.Z, T))
    Z_in = None
    if need_input:
        T += T2
        Z_in = matmul_rows(T, w.theta, out=out)
        Z_in *= -h
        Z_in += Z_half_bar
    if C_bar is not None:  # the learned oracle C = sigma(Z W Z^T), evaluated at the block input
        SC = softmax_vjp(c.C, C_bar, out=C_bar)
        SCZ = xp.matmul(SC, c.Z, out=_buf(ws, "b_tmp", c.Z))
        _add(grads, W_name, gram_sum(c.Z, SCZ))
        if need_input:
            Z_in += matmul_rows(SCZ, w.W.T)
            Z_in += swap_last(SC) @ c.ZW
    return Z_in


def _B_vjp(Z_bar, c, w, cfg):
    """VJP of the B step: (Z_half_bar, theta_bar, M_bar, t_bar)."""
    if cfg.b_flow == "exact":
        return quadratic_B_exact_vjp(Z_bar, c.B, need_t=cfg.learn_h)
    # Euler: Z_out = Z_half + h M Z_half theta, M and theta symmetric
    M, MZ, MZt = c.B
    h = w.h
    Z_half_bar = matmul_rows(M @ Z_bar, w.theta)
    Z_half_bar *= h
    Z_half_bar += Z_bar
    M_bar = Z_bar @ swap_last(matmul_rows(c.Z_half, w.theta))
    M_bar *= h
    return Z_half_bar, h * gram_sum(MZ, Z_bar), M_bar, (Z_bar * MZt).sum() if cfg.learn_h else None


def loss_and_grads(config, params, X, y, C=None, workspace=None):
    """Mean cross-entropy of integer token labels y (B, n), the gradients and the logits:
    the fused forward, the loss, and the backward from G + G^T (gram_softmax where the
    unshifted exponential is safe, else the max-shifted loss). ``C``: the blocks' targets."""
    workspace = Workspace() if workspace is None else workspace
    logits, cache = forward(config, params, X, C, workspace)
    xp = get_array_module(logits)
    G_sym = workspace.get("logits_bar", logits.shape, logits.dtype, xp)
    if exp_is_safe(logits, cache.Z, cache.theta):
        E = workspace.get("logits_exp", logits.shape, logits.dtype, xp)
        loss, G_sym = label_cross_entropy_and_symmetric_grad(logits, y, E, G_sym)
    else:
        loss, G = label_cross_entropy_and_grad(logits, y, out=G_sym, shift=symmetric_row_max(logits))
        G_sym = xp.add(G, swap_last(G), out=workspace.get("logits_exp", logits.shape, logits.dtype, xp))
    return loss, backward(config, params, G_sym, cache, workspace, symmetrised=True), logits


class FusedQuadraticPass:
    """The self-attention network's pass, fused: the interface of the readable
    ``network_pass.BlockByBlock`` (forward, backward, loss_and_grads, loss), for the
    configurations ``supports`` accepts."""

    fast = True

    def __init__(self, config):
        self.config = config

    def forward(self, params, X, C=None, workspace=None):
        """Logits and a FusedQuadraticCache (see `forward`)."""
        return forward(self.config, params, X, C, workspace)

    def backward(self, params, logits_bar, cache, workspace=None):
        """Gradients keyed like ``params`` (see `backward`)."""
        return backward(self.config, params, logits_bar, cache, workspace)

    def loss_and_grads(self, params, X, y, C=None, workspace=None):
        """(loss, grads, logits) of token labels y (see `loss_and_grads`)."""
        return loss_and_grads(self.config, params, X, y, C, workspace)

    def loss(self, params, X, y, C=None):
        """Mean cross-entropy of token labels y, without the (B, n, n) one-hot targets."""
        logits = forward(self.config, params, X, C)[0]
        return label_cross_entropy_and_grad(logits, y, shift=symmetric_row_max(logits))[0]
