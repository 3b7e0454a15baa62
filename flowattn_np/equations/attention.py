"""Cross- and self-attention as they arise from the gradient of the cross-entropy.

Forward and vector-Jacobian products (VJPs) sit side by side. Notation of docs/math.md:
``sigma`` is the row-wise softmax, ``Z`` the features (n x d, or (..., n, d) for a
batch of sequences in the quadratic model), ``theta`` the parameters.

``cross_attention``, ``self_attention`` and ``self_attention_adjoint`` validate their
inputs. The ``*_forward`` functions trust them and return what the matching ``*_vjp``
needs; the ``*_vjp`` functions trust theirs too (they take a forward's outputs, on the
hot path of the blocks and flows).
"""

from __future__ import annotations

from flowattn_np import validate
from flowattn_np.equations.ops import softmax, softmax_vjp, softmax_vjp_heads, sum_leading, swap_last


# ---------------------------------------------------------------- cross-attention

def cross_attention(Z, theta, heads=None):
    r"""Cross-attention of the features to the classes (eq. 4).

    $$
    \operatorname{CA}(Z,\theta)=\sigma(Z\theta^\top)\,\theta
    $$

    Queries $Z$; keys and values $\theta$, one row per class. With ``heads`` the softmax
    is taken per head and $\operatorname{CA}$ is the sum of the heads' cross-attentions.

    Parameters
    ----------
    Z : array, shape (n, d)
        Queries: the features.
    theta : array, shape (m, d)
        Keys and values: one row per class.
    heads : tuple of int, optional
        Class counts $(m_1,\dots,m_H)$ summing to $m$.

    Returns
    -------
    array, shape (n, d)
        $\operatorname{CA}(Z,\theta)$.
    """
    heads = validate.linear_inputs(Z, theta, None, heads)
    return cross_attention_forward(Z, theta, heads)[0]


def cross_attention_forward(Z, theta, heads=None):
    r"""$\operatorname{CA}(Z,\theta)$ without input checks, and what its VJP needs.

    Parameters
    ----------
    Z : array, shape (n, d)
        Queries (trusted: not checked).
    theta : array, shape (m, d)
        Keys and values.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    CA : array, shape (n, d)
        $\sigma(Z\theta^\top)\,\theta$.
    P : array, shape (n, m)
        The attention matrix $P=\sigma(Z\theta^\top)$, for `cross_attention_vjp`.
    """
    P = softmax(Z @ theta.T, heads)
    return P @ theta, P


def cross_attention_vjp(Z, theta, P, U, heads=None):
    r"""Vector-Jacobian product of $\operatorname{CA}=P\theta$, $P=\sigma(S)$, $S=Z\theta^\top$.

    $$
    \bar P=U\theta^\top,\quad
    \bar S=P\odot\big(\bar P-\operatorname{rowsum}(P\odot\bar P)\big),\quad
    \bar Z=\bar S\,\theta,\quad
    \bar\theta=P^\top U+\bar S^\top Z
    $$

    Parameters
    ----------
    Z : array, shape (n, d)
        Queries.
    theta : array, shape (m, d)
        Keys and values.
    P : array, shape (n, m)
        Attention matrix from `cross_attention_forward` (trusted).
    U : array, shape (n, d)
        Upstream gradient $\bar{\operatorname{CA}}$.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    Z_bar : array, shape (n, d)
        Gradient in $Z$.
    theta_bar : array, shape (m, d)
        Gradient in $\theta$.
    """
    S_bar = softmax_vjp_heads(P, U @ theta.T, heads)
    return S_bar @ theta, P.T @ U + S_bar.T @ Z


# ---------------------------------------------------------------- self-attention

def self_attention(Z, theta):
    r"""Self-attention with one symmetric matrix (eq. 9).

    $$
    \operatorname{SA}(Z,\theta)=\sigma(Z\theta Z^\top)\,Z\theta
    $$

    With $\theta=\phi\phi^\top$: queries, keys and values $Z\phi$, output projection
    $\phi^\top$.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens; leading axes are a batch of sequences.
    theta : array, shape (d, d)
        Symmetric.

    Returns
    -------
    array, shape (..., n, d)
        $\operatorname{SA}(Z,\theta)$.
    """
    validate.quadratic_inputs(Z, theta)
    P = softmax(Z @ theta @ swap_last(Z))
    return P @ (Z @ theta)


def self_attention_adjoint(Z, theta):
    r"""Adjoint self-attention (eq. 9): the same attention matrix, transposed.

    $$
    \operatorname{SA}^*(Z,\theta)=\sigma(Z\theta Z^\top)^\top Z\theta
    $$

    Token $j$ collects from the queries that attend to it.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.

    Returns
    -------
    array, shape (..., n, d)
        $\operatorname{SA}^*(Z,\theta)$.
    """
    validate.quadratic_inputs(Z, theta)
    P = softmax(Z @ theta @ swap_last(Z))
    return swap_last(P) @ (Z @ theta)


def self_attention_sum_forward(Z, theta):
    r"""$\operatorname{SA}+\operatorname{SA}^*=(P+P^\top)Z\theta$ without input checks, and what its VJP needs.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens (trusted: not checked).
    theta : array, shape (d, d)
        Symmetric.

    Returns
    -------
    F : array, shape (..., n, d)
        $(P+P^\top)\,Z\theta$.
    P : array, shape (..., n, n)
        $\sigma(Z\theta Z^\top)$.
    Y : array, shape (..., n, d)
        $Z\theta$.
    """
    Y = Z @ theta
    P = softmax(Y @ swap_last(Z))
    return (P + swap_last(P)) @ Y, P, Y


def self_attention_sum_vjp(Z, theta, P, Y, U):
    r"""Vector-Jacobian product of $F=(P+P^\top)Y$, $Y=Z\theta$, $P=\sigma(Z\theta Z^\top)$.

    $$
    \begin{aligned}
    \bar P&=UY^\top+YU^\top, &\bar Y&=(P+P^\top)\,U, &
    \bar S&=P\odot\big(\bar P-\operatorname{rowsum}(P\odot\bar P)\big),\\
    \bar Z&=\bar Y\theta^\top+\bar S Z\theta^\top+\bar S^\top Z\theta, &
    \bar\theta&=\textstyle\sum_{\text{batch}}\big(Z^\top\bar Y+Z^\top\bar S Z\big)
    \end{aligned}
    $$

    $\bar\theta$ is the gradient over all $d\times d$ matrices (not symmetrised).

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.
    P : array, shape (..., n, n)
        From `self_attention_sum_forward` (trusted).
    Y : array, shape (..., n, d)
        From `self_attention_sum_forward` (trusted).
    U : array, shape (..., n, d)
        Upstream gradient $\bar F$.

    Returns
    -------
    Z_bar : array, shape (..., n, d)
        Gradient in $Z$.
    theta_bar : array, shape (d, d)
        Gradient in $\theta$, summed over the batch.
    """
    UYt = U @ swap_last(Y)
    S_bar = softmax_vjp(P, UYt + swap_last(UYt))
    Y_bar = (P + swap_last(P)) @ U
    T = Y_bar + S_bar @ Z  # shared by Z_bar and theta_bar
    Z_bar = T @ theta.T + swap_last(S_bar) @ Y
    return Z_bar, sum_leading(swap_last(Z) @ T)
