r"""Softmax of Gram scores: $\sigma(S)$ and $\sigma(S)+\sigma(S)^\top$ for $S=Z\theta Z^\top$
with $\theta=\phi\phi^\top$ positive semidefinite, without a shift and without transposes.

Every score of the self-attention network is such a Gram matrix: the A step's $Z\theta Z^\top$
and the head's logits. Two facts make them cheaper than a general softmax:

* **No shift is needed when the diagonal is moderate.** By Cauchy-Schwarz in the inner
  product $\theta$, $|S_{ij}|\le\sqrt{S_{ii}S_{jj}}\le\max_kS_{kk}$, and $S_{ii}\ge0$. So when
  $\max_kS_{kk}$ (plus a round-off margin) is below $\log(\text{max}/m)-1$, no $e^{S_{ij}}$
  and no row sum overflows, and every row sum is at least $e^{S_{ii}}\approx1$: the plain
  $E=e^{S}$ is as accurate as the max-shifted one and saves two passes over $S$ (the
  maxima and the subtraction). `exp_is_safe` decides; otherwise the caller shifts as usual.
* **E is symmetric**, so with $r_i=1/\sum_jE_{ij}$, $\sigma(S)=\operatorname{diag}(r)E$ and
  $\sigma(S)^\top=E\operatorname{diag}(r)$: their sum is $E\odot(r\mathbf 1^\top+\mathbf 1r^\top)$
  (`attention_sum`), and the VJP that a symmetric $S$ needs, $\bar S+\bar S^\top$, has the
  same outer-sum form (`attention_sum_vjp`). No $(m, m)$ transpose is read.

On a device `exp_is_safe` returns False (deciding reads a number from the device), and the
caller takes the shifted path.
"""

from __future__ import annotations

import math

from flowattn_np.backend import get_array_module, on_host
from flowattn_np.equations.ops import row_sums


def exp_is_safe(S, Z, theta):
    r"""Whether $e^{S}$ of $S=Z\theta Z^\top$ ($\theta$ positive semidefinite) and its row
    sums are finite without a shift, in the dtype of S.

    $$
    \max_kS_{kk}+4(d+2)\,\epsilon\,\operatorname{tr}\theta\,\max_i\lVert z_i\rVert^2
    \le\log\frac{\text{max}}{m}-1
    $$

    The second term bounds the round-off of the computed $\theta$ and $S$ (products of
    length $d$), which may push an entry past $\max_kS_{kk}$.

    Parameters
    ----------
    S : array, shape (..., m, m)
        The computed scores.
    Z : array, shape (..., m, d)
        The tokens.
    theta : array, shape (d, d)
        Symmetric positive semidefinite ($\phi\phi^\top$).

    Returns
    -------
    bool
        False on a device, and whenever the bound does not hold.
    """
    if not on_host(S):
        return False
    xp = get_array_module(S)
    finfo = xp.finfo(S.dtype)
    m, d = S.shape[-1], Z.shape[-1]
    top = float(xp.diagonal(S, axis1=-2, axis2=-1).max())
    norms = float(xp.einsum("...i,...i->...", Z, Z).max())
    slack = 4 * (d + 2) * float(finfo.eps) * float(xp.trace(theta)) * norms
    limit = math.log(float(finfo.max)) - math.log(m) - 1.0
    return math.isfinite(top + slack) and top + slack <= limit


def symmetric_softmax(S):
    r"""$\sigma(S)=\operatorname{diag}(r)\,E$ for a symmetric S that `exp_is_safe` passed, as
    its factors: $E=e^{S}$ (written over S) and $r=1/\operatorname{rowsum}(E)$.

    Parameters
    ----------
    S : array, shape (..., m, m)
        Overwritten with E.

    Returns
    -------
    E : array, shape (..., m, m)
        S itself.
    r : array, shape (..., m)
    """
    xp = get_array_module(S)
    E = xp.exp(S, out=S)
    r = row_sums(E)
    return E, xp.reciprocal(r, out=r)


def outer_sum_product(E, a, out):
    r"""$E\odot(a\mathbf 1^\top+\mathbf 1a^\top)$, entry $E_{ij}(a_i+a_j)$.

    The outer sum is the rank-2 product $[a\;\mathbf 1]\,[\mathbf 1\;a]^\top$: BLAS writes
    it about three times faster than NumPy's broadcast addition (timed alone).

    Parameters
    ----------
    E : array, shape (..., m, m)
    a : array, shape (..., m)
    out : array, shape (..., m, m)
        The result (not E).

    Returns
    -------
    array
        out.
    """
    xp = get_array_module(E)
    left = xp.ones(a.shape + (2,), dtype=a.dtype)  # [a 1], (..., m, 2)
    left[..., 0] = a
    right = xp.ones(a.shape[:-1] + (2,) + a.shape[-1:], dtype=a.dtype)  # [1 a]^T, (..., 2, m)
    right[..., 1, :] = a
    xp.matmul(left, right, out=out)
    out *= E
    return out


def attention_sum(E, r, out):
    r"""$Q=\sigma(S)+\sigma(S)^\top=E\odot(r\mathbf 1^\top+\mathbf 1r^\top)$ from the factors of
    `symmetric_softmax`.

    Parameters
    ----------
    E : array, shape (..., m, m)
        $e^S$, symmetric.
    r : array, shape (..., m)
        Reciprocal row sums.
    out : array, shape (..., m, m)

    Returns
    -------
    array
        out, Q.
    """
    return outer_sum_product(E, r, out)


def attention_sum_vjp(E, r, Q, P_bar, tmp):
    r"""$\bar S+\bar S^\top$ for a symmetric upstream $\bar P$ of $P=\sigma(S)$, with
    $\bar S=P\odot(\bar P-s\mathbf 1^\top)$, $s_i=\sum_jP_{ij}\bar P_{ij}$ (the softmax VJP).

    With $P=\operatorname{diag}(r)E$ and E, $\bar P$ symmetric, and $a_i=r_is_i$:

    $$
    \bar S+\bar S^\top=Q\odot\bar P-E\odot(a\mathbf 1^\top+\mathbf 1a^\top)
    $$

    Parameters
    ----------
    E, r, Q : arrays
        From `symmetric_softmax` and `attention_sum`.
    P_bar : array, shape (..., m, m)
        Symmetric; overwritten with the result.
    tmp : array, shape (..., m, m)
        Scratch.

    Returns
    -------
    array
        P_bar, holding $\bar S+\bar S^\top$.
    """
    xp = get_array_module(E)
    a = xp.einsum("...j,...j->...", E, P_bar)
    a *= r
    a *= r
    outer_sum_product(E, a, tmp)
    P_bar *= Q
    P_bar -= tmp
    return P_bar


def label_cross_entropy_and_symmetric_grad(logits, y, E, out):
    r"""Mean cross-entropy of Gram logits N (`exp_is_safe` passed) with integer labels, and
    $G+G^\top$ of its gradient $G=(\sigma(N)-\operatorname{onehot}(y))/\text{rows}$.

    $$
    \text{loss}=\operatorname{mean}_i\big(\log\textstyle\sum_je^{N_{ij}}-N_{i,y_i}\big),\qquad
    G+G^\top=\frac{E\odot(r\mathbf 1^\top+\mathbf 1r^\top)-O-O^\top}{\text{rows}}
    $$

    with $E=e^N$, $r=1/\operatorname{rowsum}(E)$ and O the one-hot matrix of y: the head's
    backward needs only $G+G^\top$ (theta is symmetric).

    Parameters
    ----------
    logits : array, shape (..., m, m)
        N, symmetric.
    y : array of int, shape (..., m)
        Labels in $[0, m)$.
    E, out : arrays, shape (..., m, m)
        Buffers for $e^N$ and for the result.

    Returns
    -------
    loss : array, shape ()
    G_sym : array, shape (..., m, m)
        out.
    """
    xp = get_array_module(logits)
    m = logits.shape[-1]
    N, labels = logits.reshape(-1, m), y.reshape(-1)
    rows = N.shape[0]
    xp.exp(logits, out=E)
    s = row_sums(E).reshape(-1)
    loss = (xp.log(s) - N[xp.arange(rows), labels]).sum() / rows
    r = xp.reciprocal(s, out=s)
    r *= 1.0 / rows
    outer_sum_product(E, r.reshape(logits.shape[:-1]), out)
    # minus O and O^T: entries (i, y_i) and (y_i, i) of each matrix, as flat indices
    # (within one matrix each set is distinct; a diagonal entry gets both, as O + O^T has 2)
    first = xp.arange(0, rows * m, m)  # flat index of each row's first entry
    within = first % (m * m)  # i m for row i of its matrix
    col = first - within + within // m  # flat index of entry (0, i) of that matrix
    flat = out.reshape(-1)
    flat[first + labels] -= 1.0 / rows
    flat[col + labels * m] -= 1.0 / rows
    return loss, out
