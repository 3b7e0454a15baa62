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

from flowattn_np import validate
from flowattn_np.backend import get_array_module


def swap_last(A):
    r"""Transpose of the last two axes: $A^\top$ for a matrix, and for each matrix of a stack.

    Parameters
    ----------
    A : array, shape (..., p, q)
        A matrix or a stack of matrices.

    Returns
    -------
    array, shape (..., q, p)
        A view.
    """
    return A.swapaxes(-1, -2)


def sum_leading(A):
    """Sum a stack over its leading axes: the parameter gradient of a batch.

    Parameters
    ----------
    A : array, shape (..., p, q)
        A matrix (returned as it is) or a stack of matrices.

    Returns
    -------
    array, shape (p, q)
    """
    return A if A.ndim == 2 else A.reshape((-1,) + A.shape[-2:]).sum(axis=0)


def matmul_rows(A, W, out=None):
    """$AW$ for a stack $A$ and one matrix $W$, as one 2-D product over all rows.

    A product sharing a weight: the rows of every matrix in the stack go to BLAS in one GEMM
    instead of one small product per matrix.

    Parameters
    ----------
    A : array, shape (..., k)
        A stack of rows.
    W : array, shape (k, q)
        The shared matrix.
    out : array, optional
        A buffer for the result.

    Returns
    -------
    array, shape (..., q)
    """
    xp = get_array_module(A)
    rows = A.reshape(-1, A.shape[-1])
    if out is None:
        return (rows @ W).reshape(A.shape[:-1] + (W.shape[-1],))
    xp.matmul(rows, W, out=out.reshape(-1, W.shape[-1]))
    return out


def gram_sum(A, B):
    r"""$\sum_sA_s^\top B_s$ over a stack, as one 2-D product: the gradient of a weight shared by every matrix of a batch.

    Parameters
    ----------
    A : array, shape (..., n, p)
        A stack of matrices.
    B : array, shape (..., n, q)
        A stack of matrices.

    Returns
    -------
    array, shape (p, q)
    """
    return A.reshape(-1, A.shape[-1]).T @ B.reshape(-1, B.shape[-1])


def head_slices(m, heads):
    r"""Column slices of the heads; one slice over all $m$ columns when ``heads`` is None.

    Parameters
    ----------
    m : int
        Number of columns.
    heads : tuple of int or None
        Class counts $(m_1,\dots,m_H)$ summing to $m$.

    Returns
    -------
    tuple of slice
    """
    if heads is None:
        return (slice(0, m),)
    heads = validate.check_heads("heads", heads, m)  # a few Python ints: no pass over data
    out, start = [], 0
    for size in heads:
        out.append(slice(start, start + size))
        start += size
    return tuple(out)


def _softmax_rows(S, out, shift=None):
    # max shift: exp never overflows, and the largest entry of each row is exp(0) = 1
    xp = get_array_module(S)
    if S.ndim < 2:  # one row (0-d: one logit): row_sums would be 0-d, so go through a (1, m) view
        flat = lambda A: A.reshape(1, -1)  # noqa: E731
        out[...] = _softmax_rows(flat(S), xp.empty_like(flat(S)),
                                 None if shift is None else flat(xp.asarray(shift))).reshape(S.shape)
        return out
    xp.subtract(S, S.max(axis=-1, keepdims=True) if shift is None else shift, out=out)
    xp.exp(out, out=out)
    inverse = row_sums(out)
    out *= xp.reciprocal(inverse, out=inverse)[..., None]  # a product pass: cheaper than dividing
    return out


def symmetric_row_max(S):
    r"""Row maxima of a symmetric $S$, read as its column maxima (NumPy reduces across rows
    at about half the cost of along each short row).

    For an $S$ symmetric only up to round-off ($Z\theta Z^\top$ from a matrix product) the
    result is within round-off of the row maxima: good as softmax's shift.

    Parameters
    ----------
    S : array, shape (..., m, m)
        A symmetric matrix (or a stack of them).

    Returns
    -------
    array, shape (..., m, 1)
    """
    return swap_last(S.max(axis=-2, keepdims=True))


def row_sums(A):
    r"""$\sum_j A_{ij}$ of every row, as a product with a vector of ones (a BLAS
    matrix-vector product; NumPy's reduction over a short last axis costs about five
    times as much for rows of 16 to 128 entries).

    Parameters
    ----------
    A : array, shape (..., m)

    Returns
    -------
    array, shape (...)
    """
    xp = get_array_module(A)
    return A @ xp.ones(A.shape[-1], dtype=A.dtype)


def softmax(S, heads=None, out=None, shift=None):
    r"""Row-wise softmax, max-shifted so that no exponential overflows.

    $$
    \sigma(S)_{ij}=\frac{e^{S_{ij}}}{\sum_ke^{S_{ik}}}
    $$

    Parameters
    ----------
    S : array, shape (..., m)
        Logits; a 1-D S is one row, a 0-d S one logit (its softmax is 1).
    heads : tuple of int, optional
        Class counts per head: the softmax is taken within each head's columns.
    out : array, optional
        A buffer for the result.
    shift : array, shape (..., 1), optional
        Without heads: the row maxima when the caller has them more cheaply (for a
        symmetric $S$, its column maxima, `symmetric_row_max`); a value within round-off
        of the row maximum keeps exp from overflowing.

    Returns
    -------
    array, shape (..., m)
        $\sigma(S)$, in the dtype of ``S``.
    """
    xp = get_array_module(S)
    if out is None:
        out = xp.empty_like(S)
    if heads is None:
        return _softmax_rows(S, out, shift)
    for sl in head_slices(S.shape[-1], heads):
        out[..., sl] = _softmax_rows(S[..., sl], xp.empty_like(S[..., sl]))
    return out


def logsumexp(S, heads=None):
    r"""Row-wise log-sum-exp, max-shifted.

    $$
    \operatorname{LSE}(S)_i=\max_kS_{ik}+\log\textstyle\sum_ke^{S_{ik}-\max_kS_{ik}}
    $$

    Parameters
    ----------
    S : array, shape (..., m)
        Logits.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    array, shape (...) or (..., H)
        One value per row (per head with ``heads``).
    """
    xp = get_array_module(S)
    if S.ndim == 0:  # one logit: LSE(s) = s
        return logsumexp(S.reshape(1), heads)
    parts = []
    for sl in head_slices(S.shape[-1], heads):
        Sh = S[..., sl]
        mx = Sh.max(axis=-1, keepdims=True)
        parts.append((mx + xp.log(xp.exp(Sh - mx).sum(axis=-1, keepdims=True)))[..., 0])
    return parts[0] if heads is None else xp.stack(parts, axis=-1)


def log_softmax(S, heads=None):
    r"""Row-wise $\log\sigma(S)=S-\operatorname{LSE}(S)$, max-shifted.

    Parameters
    ----------
    S : array, shape (..., m)
        Logits.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    array, shape (..., m)
    """
    xp = get_array_module(S)
    if S.ndim == 0:  # one logit: log sigma(s) = 0 (NaN for a NaN logit)
        return S - logsumexp(S)
    if heads is None:
        return S - logsumexp(S)[..., None]
    out = xp.empty_like(S)
    for sl in head_slices(S.shape[-1], heads):
        out[..., sl] = S[..., sl] - logsumexp(S[..., sl])[..., None]
    return out


def one_hot(y, m, dtype="float64", check=True):
    """One-hot rows: $C_{ik}=1$ if $y_i=k$, else $0$.

    Parameters
    ----------
    y : array of int, shape (n,)
        Labels in $[0, m)$.
    m : int
        Number of classes.
    dtype : str or dtype
        Floating dtype of the result.
    check : bool
        Check that the labels lie in $[0,m)$ (a pass over ``y``: a device synchronisation on
        CuPy); False for labels validated once before a loop.

    Returns
    -------
    array, shape (n, m)
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
    """Validate the inputs of the cross-entropy, with an error naming the argument.

    Finite floating arrays of one shape and dtype; the rows of $C$ (per head) probability
    distributions.

    Parameters
    ----------
    logits : array, shape (..., m)
        $N$.
    C : array, shape (..., m)
        Targets.
    heads : tuple of int, optional
        Class counts per head.
    """
    validate.check_same_backend(logits=logits, C=C)
    validate.check_array("logits", logits, min_ndim=1)
    validate.check_array("C", C)
    validate.check_shape("C", C, logits.shape, "the targets have the logits' shape")
    validate.check_same_dtype(logits=logits, C=C)
    if _rows(logits) == 0:
        raise ValueError(f"logits: expected at least one row, got shape {tuple(logits.shape)}")
    validate.check_labels("C", C, validate.check_heads("heads", heads, logits.shape[-1]))


def cross_entropy(logits, C, heads=None, check=True):
    r"""Point-wise cross-entropy (eq. 3), summed over all rows.

    $$
    \ell=-\langle C,\log\sigma(N)\rangle
    $$

    Parameters
    ----------
    logits : array, shape (..., m)
        $N$.
    C : array, shape (..., m)
        Targets, each row a distribution.
    heads : tuple of int, optional
        Class counts per head.
    check : bool
        Validate the inputs first (this reads the data: a host synchronisation on CuPy);
        False on a path whose inputs were validated once.

    Returns
    -------
    array, shape ()
        $\ell$, a 0-d array.
    """
    if check:
        check_cross_entropy_inputs(logits, C, heads)
    return -(C * log_softmax(logits, heads)).sum()


def mean_cross_entropy(logits, C, heads=None, check=True):
    """Batch mean of the cross-entropy: `cross_entropy` divided by the number of rows.

    Parameters
    ----------
    logits : array, shape (..., m)
        $N$.
    C : array, shape (..., m)
        Targets.
    heads : tuple of int, optional
        Class counts per head.
    check : bool
        Validate the inputs first (this reads the data: a host synchronisation on CuPy);
        False on a path whose inputs were validated once.

    Returns
    -------
    array, shape ()
    """
    return cross_entropy(logits, C, heads, check) / _rows(logits)


def mean_cross_entropy_and_grad(logits, C, heads=None):
    r"""`mean_cross_entropy` and its gradient in the logits, from one log-softmax.

    $$
    \text{loss}=-\frac{\langle C,\log\sigma(N)\rangle}{\text{rows}},\qquad
    \frac{\partial\,\text{loss}}{\partial N}=\frac{\sigma(N)-C}{\text{rows}}
    $$

    Parameters
    ----------
    logits : array, shape (..., m)
        $N$.
    C : array, shape (..., m)
        Targets.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    loss : array, shape ()
    gradient : array, shape (..., m)
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


def label_cross_entropy_and_grad(logits, y, out=None, shift=None):
    r"""`mean_cross_entropy_and_grad` for integer targets, without building the one-hot $C$.

    $$
    \text{loss}=\operatorname{mean}_i\big(\operatorname{LSE}(N_i)-N_{i,y_i}\big),\qquad
    \frac{\partial\,\text{loss}}{\partial N}=\frac{\sigma(N)-\operatorname{onehot}(y)}{\text{rows}}
    $$

    One max-shifted exponential pass gives both.

    Parameters
    ----------
    logits : array, shape (..., m)
        $N$.
    y : array of int, shape (...)
        Labels in $[0,m)$.
    out : array, optional
        A buffer for the gradient.
    shift : array, shape (..., 1), optional
        The row maxima when the caller has them more cheaply (see `softmax`).

    Returns
    -------
    loss : array, shape ()
    gradient : array, shape (..., m)
    """
    xp = get_array_module(logits)
    m = logits.shape[-1]
    S, labels = logits.reshape(-1, m), y.reshape(-1)
    rows = S.shape[0]
    pick = (xp.arange(rows), labels)
    G = xp.empty_like(S) if out is None else out.reshape(-1, m)
    xp.subtract(S, S.max(axis=1, keepdims=True) if shift is None else shift.reshape(-1, 1), out=G)
    picked = G[pick]  # N_iy - max_i
    xp.exp(G, out=G)
    s = row_sums(G)
    loss = (xp.log(s) - picked).sum() / rows
    G *= (1.0 / (s * rows))[:, None]  # sigma / rows in one pass over G
    G[pick] -= 1.0 / rows
    return loss, G.reshape(logits.shape)


def softmax_vjp(P, P_bar, out=None):
    r"""Vector-Jacobian product of the row-wise softmax $P=\sigma(S)$.

    $$
    \bar S=P\odot\big(\bar P-\operatorname{rowsum}(P\odot\bar P)\big)
    $$

    For a softmax taken per head, `softmax_vjp_heads` applies this within each head's columns.

    Parameters
    ----------
    P : array, shape (..., m)
        $\sigma(S)$.
    P_bar : array, shape (..., m)
        Upstream gradient $\bar P$.
    out : array, optional
        A buffer for the result.

    Returns
    -------
    array, shape (..., m)
        $\bar S$.
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
    r"""`softmax_vjp` within each head's columns (the plain one when ``heads`` is None).

    Parameters
    ----------
    P : array, shape (..., m)
        $\sigma(S)$, per head.
    P_bar : array, shape (..., m)
        Upstream gradient.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    array, shape (..., m)
    """
    if heads is None:
        return softmax_vjp(P, P_bar)
    xp = get_array_module(P)
    out = xp.empty_like(P)
    for sl in head_slices(P.shape[-1], heads):
        out[..., sl] = softmax_vjp(P[..., sl], P_bar[..., sl])
    return out

