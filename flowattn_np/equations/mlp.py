"""The MLP oracle: learned targets from a two-layer perceptron, with its hand-derived VJP.

The paper's conclusions propose parameterising the oracle that supplies the labels
by an MLP. Here it is:

    A     = Z W1^T + b1                 pre-activation        (..., k)
    H     = act(A)                      hidden units          (..., k)
    Y     = H W2^T + b2                 oracle logits         (..., m)
    C_hat = sigma(Y)                    targets (one softmax per head with ``heads``)

with ``W1: (k, d)``, ``b1: (k,)``, ``W2: (m, k)``, ``b2: (m,)``. Inside a block the
label sub-flow ``dZ/dt = C_hat theta`` then reads ``Z + h C_hat(Z) theta``: an MLP
sub-layer with a residual connection, which is what makes the block a transformer
block (see docs/math.md, "The MLP oracle").

Activations (``ACTIVATIONS``):

* ``"gelu"``: the **tanh approximation** of GELU used by GPT-2 and BERT,
  ``gelu(x) = x/2 (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``. It is within
  5e-4 of the exact ``x Phi(x)`` everywhere and, unlike the exact form, needs no
  ``erf`` (NumPy has none; CuPy's lives in ``cupyx.scipy.special``), so the same code
  runs on both backends. Derivative:
  ``gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)``, ``t = tanh(u)``.
* ``"relu"``: ``max(x, 0)``, derivative ``1[x > 0]`` (0 at x = 0).

``mlp_logits`` / ``mlp_logits_vjp`` compute the logits ``Y`` and their VJP (also the MLP-alone
classifier of the experiments); ``mlp_oracle`` / ``mlp_oracle_vjp`` add the softmax.
Forward functions return ``(output, MLPCache)``; VJPs take the upstream gradient and
that cache and return ``(Z_bar, grads)`` with grads keyed ``W1, b1, W2, b2``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flowattn_np.backend import array_module, check_same_backend, get_array_module
from flowattn_np.equations.ops import softmax, softmax_vjp, softmax_vjp_heads, swap_last
from flowattn_np.validate import check_array, check_heads, check_same_dtype, check_shape

GELU_C = 0.044715
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # a Python float: keeps float32 arrays float32
MLP_PARAM_NAMES = ("W1", "b1", "W2", "b2")


# ---------------------------------------------------------------- activations

def gelu(x):
    """GELU, tanh approximation: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Same shape."""
    xp = get_array_module(x)
    return 0.5 * x * (1.0 + xp.tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)))


def gelu_grad(x):
    """Derivative of the tanh-form GELU:
    (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u)."""
    xp = get_array_module(x)
    x2 = x * x
    t = xp.tanh(SQRT_2_OVER_PI * x * (1.0 + GELU_C * x2))
    # for |x| large t = +-1 exactly and the second term is 0: no overflow to inf * 0
    return 0.5 * (1.0 + t) + (0.5 * SQRT_2_OVER_PI) * x * (1.0 - t * t) * (1.0 + 3 * GELU_C * x2)


def relu(x):
    """ReLU max(x, 0). Same shape and dtype."""
    xp = get_array_module(x)
    return xp.maximum(x, 0)


def relu_grad(x):
    """Derivative of ReLU, 1[x > 0] (0 at x = 0), in x's dtype."""
    return (x > 0).astype(x.dtype)


ACTIVATIONS = {"gelu": (gelu, gelu_grad), "relu": (relu, relu_grad)}
"""The MLP oracle's activations by name: ``(function, derivative)`` for ``"gelu"`` (tanh form) and ``"relu"``."""


def check_activation(activation):
    """The activation's name, if known; a ValueError naming the choices otherwise."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}"
        )
    return activation


# ---------------------------------------------------------------- the MLP

class MLPCache(NamedTuple):
    """What the VJP of the MLP (oracle) needs from its forward pass.

    Z: input (..., d); A: pre-activation Z W1^T + b1 (..., k); H: act(A) (..., k);
    W1, W2: the weights; activation: its name; C: the oracle's targets sigma(Y)
    (..., m), None for the plain MLP; heads: class counts per head or None.
    """

    Z: Any
    A: Any
    H: Any
    W1: Any
    W2: Any
    activation: str
    C: Any = None
    heads: tuple | None = None


def mlp_logits(Z, W1, b1, W2, b2, activation="gelu"):
    """Two-layer perceptron Y = act(Z W1^T + b1) W2^T + b2, row-wise.

    Z: (..., d), W1: (k, d), b1: (k,), W2: (m, k), b2: (m,). Returns (Y (..., m), MLPCache).
    Trusts its inputs (the training hot path); ``mlp_oracle`` checks them.
    """
    A = Z @ W1.T
    A += b1
    H = ACTIVATIONS[activation][0](A)
    Y = H @ W2.T
    Y += b2
    return Y, MLPCache(Z, A, H, W1, W2, activation)


def _rows(a):
    """A (..., q) array as (rows, q): the leading axes are a batch of rows."""
    return a.reshape(-1, a.shape[-1])


def mlp_logits_vjp(Y_bar, cache):
    """VJP of Y = act(A) W2^T + b2, A = Z W1^T + b1, for upstream Y_bar (..., m):

        W2_bar = Y_bar^T H,  b2_bar = 1^T Y_bar,  A_bar = (Y_bar W2) * act'(A)
        W1_bar = A_bar^T Z,  b1_bar = 1^T A_bar,  Z_bar = A_bar W1

    (sums over all rows of the leading axes). Returns (Z_bar, {"W1", "b1", "W2", "b2"}).
    """
    A_bar = Y_bar @ cache.W2
    A_bar *= ACTIVATIONS[cache.activation][1](cache.A)
    Y2, A2 = _rows(Y_bar), _rows(A_bar)
    grads = {
        "W1": A2.T @ _rows(cache.Z),
        "b1": A2.sum(axis=0),
        "W2": Y2.T @ _rows(cache.H),
        "b2": Y2.sum(axis=0),
    }
    return A_bar @ cache.W1, grads


# ---------------------------------------------------------------- the oracle

def check_mlp_inputs(Z, W1, b1, W2, b2, activation="gelu", heads=None):
    """Validate the MLP oracle's inputs (shapes, dtypes, backend, finite); returns heads."""
    check_activation(activation)
    check_same_backend(Z=Z, W1=W1, b1=b1, W2=W2, b2=b2)
    check_array("Z", Z, min_ndim=1)
    for name, a, nd in (("W1", W1, 2), ("b1", b1, 1), ("W2", W2, 2), ("b2", b2, 1)):
        check_array(name, a, ndim=nd)
    d, k, m = Z.shape[-1], W1.shape[0], W2.shape[0]
    check_shape("W1", W1, (k, d), "k hidden units x d features, d from the last axis of Z")
    check_shape("b1", b1, (k,), "one bias per hidden unit, k from W1")
    check_shape("W2", W2, (m, k), "m classes x k hidden units, k from W1")
    check_shape("b2", b2, (m,), "one bias per class, m from W2")
    check_same_dtype(Z=Z, W1=W1, b1=b1, W2=W2, b2=b2)
    return check_heads("heads", heads, m)


def mlp_oracle(Z, W1, b1, W2, b2, activation="gelu", heads=None, check=True):
    """The MLP oracle C_hat(Z) = sigma(act(Z W1^T + b1) W2^T + b2).

    Z: (..., d), W1: (k, d), b1: (k,), W2: (m, k), b2: (m,). With ``heads`` (class
    counts per head) the softmax is taken per head. Returns (C_hat (..., m), MLPCache).
    ``check=False`` skips the input checks (they read the arrays: a device sync on CuPy).
    """
    if check:
        heads = check_mlp_inputs(Z, W1, b1, W2, b2, activation, heads)
    Y, cache = mlp_logits(Z, W1, b1, W2, b2, activation)
    C = softmax(Y, heads, out=Y)  # Y is not needed by the VJP: reuse its memory
    return C, cache._replace(C=C, heads=heads)


def mlp_oracle_vjp(C_bar, cache):
    """VJP of C_hat = sigma(Y), Y = MLP(Z), for upstream C_bar (..., m):

        Y_bar = C_hat * (C_bar - rowsum(C_hat * C_bar))   (per head), then ``mlp_logits_vjp``.

    Returns (Z_bar, {"W1", "b1", "W2", "b2"}).
    """
    return mlp_logits_vjp(softmax_vjp_heads(cache.C, C_bar, cache.heads), cache)


class TokenOracleCache(NamedTuple):
    """Cache of the token MLP oracle: the MLP's cache (with C = C_hat) and its queries Y = M(Z)."""

    mlp: MLPCache
    Y: Any


def mlp_token_oracle(Z, W1, b1, W2, b2, activation="gelu"):
    """Token targets of the quadratic model from a token-wise MLP: C_hat = sigma(M(Z) Z^T).

    M(Z) = act(Z W1^T + b1) W2^T + b2 maps each token to a query (d -> d); the softmax
    over the tokens says which token each token targets. With M(Z) = Z W it is the
    one-layer oracle sigma(Z W Z^T). Z: (..., n, d), W1: (k, d), b1: (k,), W2: (d, k),
    b2: (d,). Trusts its inputs. Returns (C_hat (..., n, n), TokenOracleCache).
    """
    Y, cache = mlp_logits(Z, W1, b1, W2, b2, activation)
    C = softmax(Y @ swap_last(Z))
    return C, TokenOracleCache(cache._replace(C=C), Y)


def mlp_token_oracle_vjp(C_bar, cache):
    """VJP of C_hat = sigma(S), S = Y Z^T, Y = M(Z), for upstream C_bar (..., n, n):

        S_bar = softmax_vjp(C_hat, C_bar),  Y_bar = S_bar Z,
        Z_bar = S_bar^T Y + (Z_bar of the MLP for Y_bar)     (Z enters S twice)

    Returns (Z_bar, {"W1", "b1", "W2", "b2"}).
    """
    S_bar = softmax_vjp(cache.mlp.C, C_bar)
    Z_bar, grads = mlp_logits_vjp(S_bar @ cache.mlp.Z, cache.mlp)
    Z_bar += swap_last(S_bar) @ cache.Y
    return Z_bar, grads


def mlp_param_shapes(d, k, m):
    """Names and shapes of the MLP's parameters, in the order they are drawn:
    W1 (k, d), b1 (k,), W2 (m, k), b2 (m,)."""
    return {"W1": (k, d), "b1": (k,), "W2": (m, k), "b2": (m,)}


def init_mlp_param(name, shape, rng, dtype="float32"):
    """Initial value of one MLP parameter on the active backend, from a host generator ``rng``.

    W1, W2 ~ N(0, 1/fan_in) with fan_in = shape[1] (unit-variance pre-activations and
    logits for unit-variance inputs); b1 = b2 = 0.
    """
    xp = array_module()
    if name in ("b1", "b2"):
        return xp.zeros(shape, dtype=dtype)
    return xp.asarray(rng.normal(0, 1.0 / shape[1] ** 0.5, size=shape), dtype=dtype)


def init_mlp_params(d, k, m, rng, dtype="float32"):
    """Initial MLP weights {"W1", "b1", "W2", "b2"} (``init_mlp_param`` for each of
    ``mlp_param_shapes``, in that order)."""
    return {name: init_mlp_param(name, shape, rng, dtype) for name, shape in mlp_param_shapes(d, k, m).items()}


__all__ = [
    "ACTIVATIONS", "MLPCache", "MLP_PARAM_NAMES", "check_activation", "check_mlp_inputs", "gelu",
    "gelu_grad", "init_mlp_param", "init_mlp_params", "mlp_logits", "mlp_param_shapes", "mlp_logits_vjp", "mlp_oracle", "mlp_oracle_vjp",
    "mlp_token_oracle", "mlp_token_oracle_vjp", "relu", "relu_grad", "TokenOracleCache",
]
