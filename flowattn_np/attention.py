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

from . import validate
from .ops import softmax, softmax_vjp, softmax_vjp_heads, sum_leading, swap_last


# ---------------------------------------------------------------- cross-attention

def cross_attention(Z, theta, heads=None):
    """Cross-attention CA(Z, theta) = sigma(Z theta^T) theta (eq. 4).

    Queries Z (n x d); keys = values = theta (m x d), one row per class.
    With ``heads`` (class counts per head) the softmax is taken per head and CA is
    the sum of the heads' cross-attentions. Returns n x d.
    """
    heads = validate.linear_inputs(Z, theta, None, heads)
    return cross_attention_forward(Z, theta, heads)[0]


def cross_attention_forward(Z, theta, heads=None):
    """CA(Z, theta) without input checks (it trusts its inputs).

    Returns (CA, P) with P = sigma(Z theta^T), what cross_attention_vjp needs.
    """
    P = softmax(Z @ theta.T, heads)
    return P @ theta, P


def cross_attention_vjp(Z, theta, P, U, heads=None):
    """VJP of CA = P theta, P = sigma(S), S = Z theta^T, for upstream U (n x d).

        P_bar = U theta^T,  S_bar = P * (P_bar - rowsum(P * P_bar))
        Z_bar = S_bar theta,  theta_bar = P^T U + S_bar^T Z

    Trusts its inputs (P from cross_attention_forward). Returns (Z_bar, theta_bar)
    of the shapes of Z and theta.
    """
    S_bar = softmax_vjp_heads(P, U @ theta.T, heads)
    return S_bar @ theta, P.T @ U + S_bar.T @ Z


# ---------------------------------------------------------------- self-attention

def self_attention(Z, theta):
    """Self-attention SA(Z, theta) = sigma(Z theta Z^T) Z theta (eq. 9).

    Z: (..., n, d), theta: d x d symmetric. Q = K = V = Z phi for theta = phi phi^T,
    output projection phi^T. Returns (..., n, d).
    """
    validate.quadratic_inputs(Z, theta)
    P = softmax(Z @ theta @ swap_last(Z))
    return P @ (Z @ theta)


def self_attention_adjoint(Z, theta):
    """Adjoint self-attention SA*(Z, theta) = sigma(Z theta Z^T)^T Z theta (eq. 9).

    The same attention matrix, transposed: token j collects from the queries that
    attend to it. Z: (..., n, d), theta: d x d symmetric. Returns (..., n, d).
    """
    validate.quadratic_inputs(Z, theta)
    P = softmax(Z @ theta @ swap_last(Z))
    return swap_last(P) @ (Z @ theta)


def self_attention_sum_forward(Z, theta):
    """SA + SA* = (P + P^T) Z theta without input checks (it trusts its inputs).

    Returns (SA + SA*, P, Y = Z theta), what self_attention_sum_vjp needs.
    """
    Y = Z @ theta
    P = softmax(Y @ swap_last(Z))
    return (P + swap_last(P)) @ Y, P, Y


def self_attention_sum_vjp(Z, theta, P, Y, U):
    """VJP of F = (P + P^T) Y, Y = Z theta, P = sigma(Z theta Z^T), for upstream U.

        Q = P + P^T,  P_bar = U Y^T + Y U^T,  Y_bar = Q U
        S_bar = P * (P_bar - rowsum(P * P_bar))
        Z_bar = Y_bar theta^T + S_bar Z theta^T + S_bar^T Z theta
        theta_bar = sum_batch(Z^T Y_bar + Z^T S_bar Z)

    theta_bar is the gradient over all d x d matrices (not symmetrised). Trusts its
    inputs (P, Y from self_attention_sum_forward). Returns (Z_bar, theta_bar).
    """
    UYt = U @ swap_last(Y)
    S_bar = softmax_vjp(P, UYt + swap_last(UYt))
    Y_bar = (P + swap_last(P)) @ U
    T = Y_bar + S_bar @ Z  # shared by Z_bar and theta_bar
    Z_bar = T @ theta.T + swap_last(S_bar) @ Y
    return Z_bar, sum_leading(swap_last(Z) @ T)
