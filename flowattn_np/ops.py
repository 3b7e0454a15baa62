"""Numerics: stable softmax, log-softmax, log-sum-exp, one-hot, cross-entropy, and the
two array helpers every equation module uses (``swap_last``, ``sum_leading``).

Softmax is row-wise (over the last axis), shifted by the row maximum so that logits
of +-1e4 stay finite in float32 (Blanchard, Higham & Higham 2021). With ``heads``
(a tuple of class counts ``(m_1, ..., m_H)`` summing to the last axis) each head's
block of columns gets its own softmax: the multi-head labels of docs/math.md.

These functions are on the training hot path, so they check only what costs no pass
over the data (head sizes, shapes); ``one_hot``, ``cross_entropy`` and
``mean_cross_entropy`` also check their values unless called with ``check=False`` by
code that validated them already. The dtype of the input is kept (float32 in, float32
out).
"""

from __future__ import annotations

from . import validate
from .backend import get_array_module


def swap_last(A):
    """Transpose of the last two axes, A^T for a matrix (works for stacks of matrices)."""
    return A.swapaxes(-1, -2)


def sum_leading(A):
    """Sum a stack (..., p, q) over its leading axes: parameter gradients of a batch."""
    return A if A.ndim == 2 else A.reshape((-1,) + A.shape[-2:]).sum(axis=0)


def matmul_rows(A, W, out=None):
    """A W for a stack A (..., k) and one matrix W (k, q), as ONE 2-D product over all rows.

    A product sharing a weight: the rows of every matrix in the stack go to BLAS in one
    GEMM instead of one small product per matrix. Returns (..., q) (into ``out`` if given).
    """
    xp = get_array_module(A)
    rows = A.reshape(-1, A.shape[-1])
    if out is None:
        return (rows @ W).reshape(A.shape[:-1] + (W.shape[-1],))
    xp.matmul(rows, W, out=out.reshape(-1, W.shape[-1]))
    return out


def gram_sum(A, B):
    """sum over the stack of A_s^T B_s for stacks A (..., n, p), B (..., n, q), as ONE 2-D
    product (the gradient of a weight shared by every matrix of a batch). Returns p x q."""
    return A.reshape(-1, A.shape[-1]).T @ B.reshape(-1, B.shape[-1])


def head_slices(m, heads):
    """Column slices of the heads; one slice over all m columns when heads is None."""
    if heads is None:
        return (slice(0, m),)
    heads = validate.check_heads("heads", heads, m)  # a few Python ints: no pass over data
    out, start = [], 0
    for size in heads:
        out.append(slice(start, start + size))
        start += size
    return tuple(out)


def _softmax_rows(S, out):
    # max shift: exp never overflows, and the largest entry of each row is exp(0) = 1
    xp = get_array_module(S)
    xp.subtract(S, S.max(axis=-1, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def softmax(S, heads=None, out=None):
    """Row-wise softmax sigma(S)_ij = exp(S_ij) / sum_k exp(S_ik), max-shifted.

    S: (..., m). With ``heads`` the softmax is taken within each head's columns.
    Returns an array of S's shape and dtype (written into ``out`` if given).
    """
    xp = get_array_module(S)
    if out is None:
        out = xp.empty_like(S)
    if heads is None:
        return _softmax_rows(S, out)
    for sl in head_slices(S.shape[-1], heads):
        out[..., sl] = _softmax_rows(S[..., sl], xp.empty_like(S[..., sl]))
    return out


def logsumexp(S, heads=None):
    """Row-wise LSE(S)_i = max_k S_ik + log sum_k exp(S_ik - max_k S_ik).

    S: (..., m). Returns (...,) or, with ``heads``, (..., H).
    """
    xp = get_array_module(S)
    parts = []
    for sl in head_slices(S.shape[-1], heads):
        Sh = S[..., sl]
        mx = Sh.max(axis=-1, keepdims=True)
        parts.append((mx + xp.log(xp.exp(Sh - mx).sum(axis=-1, keepdims=True)))[..., 0])
    return parts[0] if heads is None else xp.stack(parts, axis=-1)


def log_softmax(S, heads=None):
    """Row-wise log sigma(S) = S - LSE(S), max-shifted. S: (..., m) -> (..., m)."""
    xp = get_array_module(S)
    if heads is None:
        return S - logsumexp(S)[..., None]
    out = xp.empty_like(S)
    for sl in head_slices(S.shape[-1], heads):
        out[..., sl] = S[..., sl] - logsumexp(S[..., sl])[..., None]
    return out


def one_hot(y, m, dtype="float64", check=True):
    """One-hot rows: C_ik = 1 if y_i == k else 0. y: (n,) integers in [0, m) -> (n, m).

    ``check=False`` skips the range check of y (a pass over y; a device sync on CuPy)
    for labels validated once before a loop.
    """
    if check:
        m = validate.check_count("m", m, minimum=1)
        validate.check_class_indices("y", y, m, ndim=1)
    xp = get_array_module(y)
    C = xp.zeros((y.shape[0], m), dtype=dtype)
    C[xp.arange(y.shape[0]), y] = 1
    return C


def _rows(logits):
    """Number of rows (every axis but the last) of a logits array."""
    rows = 1
    for s in logits.shape[:-1]:
        rows *= s
    return rows


def check_cross_entropy_inputs(logits, C, heads=None):
    """Validate (logits, C) of the cross-entropy: finite floating arrays of one shape and
    dtype, the rows of C (per head) probability distributions."""
    validate.check_same_backend(logits=logits, C=C)
    validate.check_array("logits", logits, min_ndim=1)
    validate.check_array("C", C)
    validate.check_shape("C", C, logits.shape, "the targets have the logits' shape")
    validate.check_same_dtype(logits=logits, C=C)
    if _rows(logits) == 0:
        raise ValueError(f"logits: expected at least one row, got shape {tuple(logits.shape)}")
    validate.check_labels("C", C, validate.check_heads("heads", heads, logits.shape[-1]))


def cross_entropy(logits, C, heads=None, check=True):
    """Point-wise cross-entropy l = -<C, log sigma(N)> (eq. 3), summed over all rows.

    logits N and targets C: same shape (..., m). Returns a 0-d array (no host sync
    with ``check=False``; the checks read the data).
    """
    if check:
        check_cross_entropy_inputs(logits, C, heads)
    return -(C * log_softmax(logits, heads)).sum()


def mean_cross_entropy(logits, C, heads=None, check=True):
    """Batch mean of the cross-entropy: cross_entropy / (number of rows)."""
    return cross_entropy(logits, C, heads, check) / _rows(logits)


def mean_cross_entropy_and_grad(logits, C, heads=None):
    """mean_cross_entropy and its gradient in the logits, from one log-softmax.

        loss = -<C, log sigma(N)> / rows,   dloss/dN = (sigma(N) - C) / rows

    Returns (loss (0-d array), gradient of the logits' shape).
    """
    xp = get_array_module(logits)
    # a shape comparison costs nothing and stops a (n, 1) target broadcasting silently
    validate.check_shape("C", C, logits.shape, "the targets have the logits' shape")
    rows = _rows(logits)
    log_p = log_softmax(logits, heads)
    loss = -(C * log_p).sum() / rows
    G = xp.exp(log_p)  # sigma(N) from its log: no second softmax pass
    G -= C
    G /= rows
    return loss, G


def label_cross_entropy_and_grad(logits, y, out=None):
    """mean_cross_entropy_and_grad for integer targets y, without building the one-hot C.

        loss = mean_i (LSE(N_i) - N_{i, y_i}),   dloss/dN = (sigma(N) - onehot(y)) / rows

    logits: (..., m); y: (...) integers in [0, m). One max-shifted exp pass gives both.
    Returns (loss (0-d array), gradient of the logits' shape, into ``out`` if given).
    """
    xp = get_array_module(logits)
    m = logits.shape[-1]
    S, labels = logits.reshape(-1, m), y.reshape(-1)
    rows = S.shape[0]
    pick = (xp.arange(rows), labels)
    G = xp.empty_like(S) if out is None else out.reshape(-1, m)
    xp.subtract(S, S.max(axis=1, keepdims=True), out=G)
    picked = G[pick]  # N_iy - max_i
    xp.exp(G, out=G)
    s = G.sum(axis=1)
    loss = (xp.log(s) - picked).sum() / rows
    G /= s[:, None]
    G[pick] -= 1
    G /= rows
    return loss, G.reshape(logits.shape)


def softmax_vjp(P, P_bar, out=None):
    """Vector-Jacobian product of the row-wise softmax P = sigma(S).

    S_bar = P * (P_bar - rowsum(P * P_bar)); P, P_bar: (..., m). For a softmax taken
    per head, ops.softmax_vjp_heads applies this within each head's columns. ``out``
    may be P_bar itself (in place, no temporary) or P (through one temporary).
    """
    xp = get_array_module(P)
    if out is None:
        out = xp.empty_like(P)
    elif out.shape != P.shape:
        validate.check_shape("out", out, P.shape, "the shape of P")
    elif xp.may_share_memory(out, P) or (out is not P_bar and xp.may_share_memory(out, P_bar)):
        # out would overwrite an input before it is read: compute apart, then copy
        out[...] = softmax_vjp(P, P_bar)
        return out
    # the row sums first, without a temporary, so that ``out`` may be P_bar itself
    s = xp.einsum("...j,...j->...", P, P_bar)[..., None]
    xp.subtract(P_bar, s, out=out)
    out *= P
    return out


def softmax_vjp_heads(P, P_bar, heads=None):
    """softmax_vjp applied within each head's columns (the plain one when heads is None)."""
    if heads is None:
        return softmax_vjp(P, P_bar)
    xp = get_array_module(P)
    out = xp.empty_like(P)
    for sl in head_slices(P.shape[-1], heads):
        out[..., sl] = softmax_vjp(P[..., sl], P_bar[..., sl])
    return out

