"""The two multinomial-regression models and the gradients of their cross-entropy.

Linear model ``N = Z theta^T`` (eqs. 4-8) and quadratic model ``N = Z theta Z^T``
with ``theta = phi phi^T`` (eqs. 9-10). With the residual ``G = sigma(N) - C``,
``dl = <G, dN>``: every gradient is ``G`` pushed back through the model.

Losses here are the POINT-WISE cross-entropy of eq. (3) summed over all rows
(not averaged); divide by the number of rows for a batch mean.
"""

from __future__ import annotations

from . import validate
from .backend import get_array_module
from .ops import cross_entropy, softmax, sum_leading, swap_last

# ---------------------------------------------------------------- linear model


def linear_logits(Z, theta):
    """Logits of the linear model N = Z theta^T. Z: n x d, theta: m x d -> n x m."""
    validate.linear_inputs(Z, theta)
    return Z @ theta.T


def linear_loss(Z, theta, C, heads=None):
    """Point-wise cross-entropy of the linear model, summed over rows (eqs. 1-3).

    l(Z) = -<C, log sigma(Z theta^T)> = -<C, Z theta^T> + sum_i LSE(Z theta^T)_i.
    Z: n x d, theta: m x d, C: n x m (rows are distributions). Returns a 0-d array.
    """
    heads = validate.linear_inputs(Z, theta, C, heads)
    return cross_entropy(Z @ theta.T, C, heads, check=False)


def _linear_residual(Z, theta, C, heads=None):
    """Unchecked residual G = sigma(Z theta^T) - C and P = sigma(Z theta^T)."""
    P = softmax(Z @ theta.T, heads)
    return P - C, P


def linear_grad_Z(Z, theta, C, heads=None):
    r"""Feature gradient of the linear model's cross-entropy (eq. 4).

    $$
    \nabla_Z\ell=\operatorname{CA}(Z,\theta)-C\theta=\big(\sigma(Z\theta^\top)-C\big)\,\theta
    $$

    Parameters
    ----------
    Z : array, shape (n, d)
        Features, one row per token.
    theta : array, shape (m, d)
        The fixed regression: one row per class, the keys and values of the attention.
    C : array, shape (n, m)
        Targets, each row a distribution over the classes.
    heads : tuple of int, optional
        Class counts $(m_1,\dots,m_H)$ summing to $m$: a softmax per block of columns.

    Returns
    -------
    array, shape (n, d)
        The gradient $\nabla_Z\ell$.
    """
    heads = validate.linear_inputs(Z, theta, C, heads)
    return _linear_residual(Z, theta, C, heads)[0] @ theta


def linear_grad_theta(Z, theta, C, heads=None):
    """Parameter gradient grad_theta l = G^T Z = (sigma(Z theta^T) - C)^T Z. Returns m x d."""
    heads = validate.linear_inputs(Z, theta, C, heads)
    return _linear_residual(Z, theta, C, heads)[0].T @ Z


# ---------------------------------------------------------------- quadratic model


def theta_from_phi(phi, check=True):
    """theta = phi phi^T: symmetric positive (semi-)definite from its factor phi (d x d).

    ``check=False`` skips the validation of phi (finite, square, floating), for callers
    on the training path whose phi was validated once.
    """
    if check:
        validate.check_array("phi", phi, ndim=2)
        validate.check_shape("phi", phi, (phi.shape[0],) * 2, "a square d x d factor")
    return phi @ phi.T


def phi_grad(theta_bar, phi):
    """Gradient in the factor phi from the gradient theta_bar in theta = phi phi^T.

        phi_bar = tril((theta_bar + theta_bar^T) phi)

    theta_bar: d x d over all matrices (need not be symmetric); phi: d x d
    lower-triangular, so only its lower triangle is a parameter. Returns d x d.
    """
    xp = get_array_module(phi)
    return xp.tril((theta_bar + theta_bar.T) @ phi)


def quadratic_logits(Z, theta):
    """Logits of the quadratic model N = Z theta Z^T. Z: (..., n, d) -> (..., n, n)."""
    validate.quadratic_inputs(Z, theta, symmetric=False)  # the logits need no symmetry
    return Z @ theta @ swap_last(Z)


def quadratic_loss(Z, theta, C):
    """Point-wise cross-entropy of the quadratic model, summed over rows (eq. 3).

    l(Z) = -<C, log sigma(Z theta Z^T)>. Z: (..., n, d), theta: d x d symmetric,
    C: (..., n, n) with distribution rows. Returns a 0-d array.
    """
    validate.quadratic_inputs(Z, theta, C)
    return cross_entropy(Z @ theta @ swap_last(Z), C, check=False)


def _quadratic_residual(Z, theta, C):
    """Unchecked G = sigma(Z theta Z^T) - C; returns (G, Y = Z theta)."""
    Y = Z @ theta
    return softmax(Y @ swap_last(Z)) - C, Y


def quadratic_grad_Z(Z, theta, C):
    """Feature gradient (eq. 9), theta symmetric:

        grad_Z l = SA(Z, theta) + SA*(Z, theta) - (C + C^T) Z theta = (G + G^T) Z theta.

    Returns (..., n, d).
    """
    validate.quadratic_inputs(Z, theta, C)
    G, Y = _quadratic_residual(Z, theta, C)
    return (G + swap_last(G)) @ Y


def quadratic_grad_theta(Z, theta, C):
    """Gradient for the symmetric parameter: grad_theta l = sym(Z^T G Z), sym(A) = (A + A^T)/2.

    (The gradient over all d x d matrices is Z^T G Z; on symmetric matrices only
    its symmetric part acts.) Summed over a batch of sequences. Returns d x d.
    """
    validate.quadratic_inputs(Z, theta, C)
    G, _ = _quadratic_residual(Z, theta, C)
    A = sum_leading(swap_last(Z) @ G @ Z)
    return 0.5 * (A + A.T)


def quadratic_grad_phi(Z, phi, C):
    """Gradient through the Cholesky factor: grad_phi l = tril((Z^T G Z + Z^T G^T Z) phi).

    theta = phi phi^T; only the lower triangle of phi is a parameter, so the
    gradient is kept lower-triangular. Z: (..., n, d), phi: d x d. Returns d x d.
    """
    validate.quadratic_phi_inputs(Z, phi, C)
    G, _ = _quadratic_residual(Z, theta_from_phi(phi, check=False), C)
    return phi_grad(sum_leading(swap_last(Z) @ G @ Z), phi)


# ---------------------------------------------------------------- model classes


class LinearModel:
    """Multinomial regression N = Z theta^T with its parameter theta (m x d)."""

    def __init__(self, theta, heads=None):
        validate.check_array("theta", theta, ndim=2)
        self.theta = theta
        self.heads = validate.check_heads("heads", heads, theta.shape[0])

    def logits(self, Z):
        """Logits Z theta^T (n x m)."""
        return linear_logits(Z, self.theta)

    def loss(self, Z, C):
        """Point-wise cross-entropy, summed over rows (eq. 3)."""
        return linear_loss(Z, self.theta, C, self.heads)

    def grad_Z(self, Z, C):
        """Feature gradient CA(Z, theta) - C theta (eq. 4)."""
        return linear_grad_Z(Z, self.theta, C, self.heads)

    def grad_theta(self, Z, C):
        """Parameter gradient (sigma(Z theta^T) - C)^T Z."""
        return linear_grad_theta(Z, self.theta, C, self.heads)

    def predict(self, Z):
        """Predicted class of each row: argmax of Z theta^T."""
        return (Z @ self.theta.T).argmax(axis=-1)


class QuadraticModel:
    """Quadratic model N = Z theta Z^T, theta = phi phi^T, phi lower-triangular (d x d)."""

    def __init__(self, phi):
        validate.check_array("phi", phi, ndim=2)
        self.phi = get_array_module(phi).tril(phi)

    @property
    def theta(self):
        """theta = phi phi^T (d x d, symmetric positive semi-definite)."""
        return theta_from_phi(self.phi, check=False)  # phi was checked by __init__

    def logits(self, Z):
        """Logits Z theta Z^T ((..., n, n))."""
        return quadratic_logits(Z, self.theta)

    def loss(self, Z, C):
        """Point-wise cross-entropy, summed over rows (eq. 3)."""
        return quadratic_loss(Z, self.theta, C)

    def grad_Z(self, Z, C):
        """Feature gradient SA + SA* - (C + C^T) Z theta (eq. 9)."""
        return quadratic_grad_Z(Z, self.theta, C)

    def grad_phi(self, Z, C):
        """Gradient with respect to the lower-triangular factor phi."""
        return quadratic_grad_phi(Z, self.phi, C)

    def predict(self, Z):
        """For each token, the token it scores highest: argmax_j (Z theta Z^T)_ij."""
        return self.logits(Z).argmax(axis=-1)
