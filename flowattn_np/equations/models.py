"""The two multinomial-regression models and the gradients of their cross-entropy.

Linear model ``N = Z theta^T`` (eqs. 4-8) and quadratic model ``N = Z theta Z^T``
with ``theta = phi phi^T`` (eqs. 9-10). With the residual ``G = sigma(N) - C``,
``dl = <G, dN>``: every gradient is ``G`` pushed back through the model.

Losses here are the POINT-WISE cross-entropy of eq. (3) summed over all rows
(not averaged); divide by the number of rows for a batch mean.
"""

from __future__ import annotations

from flowattn_np import validate
from flowattn_np.backend import get_array_module
from flowattn_np.equations.ops import cross_entropy, softmax, sum_leading, swap_last

# ---------------------------------------------------------------- linear model


def linear_logits(Z, theta):
    r"""Logits of the linear model, $N=Z\theta^\top$.

    Parameters
    ----------
    Z : array, shape (n, d)
        Features.
    theta : array, shape (m, d)
        One row per class.

    Returns
    -------
    array, shape (n, m)
        $Z\theta^\top$.
    """
    validate.linear_inputs(Z, theta)
    return Z @ theta.T


def linear_loss(Z, theta, C, heads=None):
    r"""Point-wise cross-entropy of the linear model, summed over rows (eqs. 1-3).

    $$
    \ell(Z)=-\langle C,\log\sigma(Z\theta^\top)\rangle
    =-\langle C,Z\theta^\top\rangle+\textstyle\sum_i\operatorname{LSE}(Z\theta^\top)_i
    $$

    Parameters
    ----------
    Z : array, shape (n, d)
        Features.
    theta : array, shape (m, d)
        One row per class.
    C : array, shape (n, m)
        Targets, each row a distribution over the classes.
    heads : tuple of int, optional
        Class counts $(m_1,\dots,m_H)$ summing to $m$: a softmax per block of columns.

    Returns
    -------
    array, shape ()
        $\ell(Z)$, a 0-d array (no host synchronisation).
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
    r"""Parameter gradient of the linear model's cross-entropy.

    $$
    \nabla_\theta\ell=G^\top Z=\big(\sigma(Z\theta^\top)-C\big)^\top Z
    $$

    Parameters
    ----------
    Z : array, shape (n, d)
        Features.
    theta : array, shape (m, d)
        One row per class.
    C : array, shape (n, m)
        Targets.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    array, shape (m, d)
        The gradient $\nabla_\theta\ell$.
    """
    heads = validate.linear_inputs(Z, theta, C, heads)
    return _linear_residual(Z, theta, C, heads)[0].T @ Z


# ---------------------------------------------------------------- quadratic model


def theta_from_phi(phi, check=True):
    r"""The symmetric positive (semi-)definite $\theta=\phi\phi^\top$ from its factor.

    Parameters
    ----------
    phi : array, shape (d, d)
        Lower-triangular factor.
    check : bool
        Validate ``phi`` (finite, square, floating); False for a ``phi`` validated once.

    Returns
    -------
    array, shape (d, d)
        $\phi\phi^\top$.
    """
    if check:
        validate.check_array("phi", phi, ndim=2)
        validate.check_shape("phi", phi, (phi.shape[0],) * 2, "a square d x d factor")
    return phi @ phi.T


def phi_grad(theta_bar, phi):
    r"""Gradient in the factor $\phi$ from the gradient $\bar\theta$ in $\theta=\phi\phi^\top$.

    $$
    \bar\phi=\operatorname{tril}\big((\bar\theta+\bar\theta^\top)\,\phi\big)
    $$

    Parameters
    ----------
    theta_bar : array, shape (d, d)
        Gradient over all matrices (need not be symmetric).
    phi : array, shape (d, d)
        Lower-triangular: only its lower triangle is a parameter.

    Returns
    -------
    array, shape (d, d)
        $\bar\phi$, lower-triangular.
    """
    xp = get_array_module(phi)
    return xp.tril((theta_bar + theta_bar.T) @ phi)


def quadratic_logits(Z, theta):
    r"""Logits of the quadratic model, $N=Z\theta Z^\top$.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens; leading axes are a batch of sequences.
    theta : array, shape (d, d)
        Symmetric.

    Returns
    -------
    array, shape (..., n, n)
        $Z\theta Z^\top$.
    """
    validate.quadratic_inputs(Z, theta, symmetric=False)  # the logits need no symmetry
    return Z @ theta @ swap_last(Z)


def quadratic_loss(Z, theta, C):
    r"""Point-wise cross-entropy of the quadratic model, summed over rows (eq. 3).

    $$
    \ell(Z)=-\langle C,\log\sigma(Z\theta Z^\top)\rangle
    $$

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.
    C : array, shape (..., n, n)
        Targets, each row a distribution over the tokens.

    Returns
    -------
    array, shape ()
        $\ell(Z)$, a 0-d array.
    """
    validate.quadratic_inputs(Z, theta, C)
    return cross_entropy(Z @ theta @ swap_last(Z), C, check=False)


def _quadratic_residual(Z, theta, C):
    """Unchecked G = sigma(Z theta Z^T) - C; returns (G, Y = Z theta)."""
    Y = Z @ theta
    return softmax(Y @ swap_last(Z)) - C, Y


def quadratic_grad_Z(Z, theta, C):
    r"""Feature gradient of the quadratic model's cross-entropy (eq. 9), $\theta$ symmetric.

    $$
    \nabla_Z\ell=\operatorname{SA}(Z,\theta)+\operatorname{SA}^*(Z,\theta)-(C+C^\top)Z\theta
    =(G+G^\top)\,Z\theta
    $$

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.
    C : array, shape (..., n, n)
        Targets.

    Returns
    -------
    array, shape (..., n, d)
        The gradient $\nabla_Z\ell$.
    """
    validate.quadratic_inputs(Z, theta, C)
    G, Y = _quadratic_residual(Z, theta, C)
    return (G + swap_last(G)) @ Y


def quadratic_grad_theta(Z, theta, C):
    r"""Gradient for the symmetric parameter, summed over a batch of sequences.

    $$
    \nabla_\theta\ell=\operatorname{sym}(Z^\top G Z),\qquad \operatorname{sym}(A)=\tfrac12(A+A^\top)
    $$

    The gradient over all $d\times d$ matrices is $Z^\top GZ$; on symmetric matrices only its
    symmetric part acts.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.
    C : array, shape (..., n, n)
        Targets.

    Returns
    -------
    array, shape (d, d)
        $\nabla_\theta\ell$, symmetric.
    """
    validate.quadratic_inputs(Z, theta, C)
    G, _ = _quadratic_residual(Z, theta, C)
    A = sum_leading(swap_last(Z) @ G @ Z)
    return 0.5 * (A + A.T)


def quadratic_grad_phi(Z, phi, C):
    r"""Gradient through the Cholesky factor of $\theta=\phi\phi^\top$.

    $$
    \nabla_\phi\ell=\operatorname{tril}\big((Z^\top GZ+Z^\top G^\top Z)\,\phi\big)
    $$

    Only the lower triangle of $\phi$ is a parameter, so the gradient is lower-triangular.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    phi : array, shape (d, d)
        Lower-triangular factor.
    C : array, shape (..., n, n)
        Targets.

    Returns
    -------
    array, shape (d, d)
        $\nabla_\phi\ell$.
    """
    validate.quadratic_phi_inputs(Z, phi, C)
    G, _ = _quadratic_residual(Z, theta_from_phi(phi, check=False), C)
    return phi_grad(sum_leading(swap_last(Z) @ G @ Z), phi)


# ---------------------------------------------------------------- model classes


class LinearModel:
    r"""Multinomial regression $N=Z\theta^\top$ with its parameter $\theta$.

    Parameters
    ----------
    theta : array, shape (m, d)
        One row per class.
    heads : tuple of int, optional
        Class counts $(m_1,\dots,m_H)$ summing to $m$: a softmax per block of columns.
    """

    def __init__(self, theta, heads=None):
        validate.check_array("theta", theta, ndim=2)
        self.theta = theta
        self.heads = validate.check_heads("heads", heads, theta.shape[0])

    def logits(self, Z):
        r"""Logits $Z\theta^\top$, shape (n, m), of features `Z` of shape (n, d)."""
        return linear_logits(Z, self.theta)

    def loss(self, Z, C):
        r"""Point-wise cross-entropy $-\langle C,\log\sigma(Z\theta^\top)\rangle$ (eq. 3), summed over rows: a 0-d array.
        """
        return linear_loss(Z, self.theta, C, self.heads)

    def grad_Z(self, Z, C):
        r"""Feature gradient $\operatorname{CA}(Z,\theta)-C\theta$ (eq. 4), shape (n, d)."""
        return linear_grad_Z(Z, self.theta, C, self.heads)

    def grad_theta(self, Z, C):
        r"""Parameter gradient $(\sigma(Z\theta^\top)-C)^\top Z$, shape (m, d)."""
        return linear_grad_theta(Z, self.theta, C, self.heads)

    def predict(self, Z):
        r"""Predicted class of each row, $\arg\max_k (Z\theta^\top)_{ik}$: integers, shape (n,)."""
        return (Z @ self.theta.T).argmax(axis=-1)


class QuadraticModel:
    r"""Quadratic model $N=Z\theta Z^\top$ with $\theta=\phi\phi^\top$, $\phi$ lower-triangular.

    Parameters
    ----------
    phi : array, shape (d, d)
        Factor of $\theta$; only its lower triangle is kept.
    """

    def __init__(self, phi):
        validate.check_array("phi", phi, ndim=2)
        self.phi = get_array_module(phi).tril(phi)

    @property
    def theta(self):
        r"""$\theta=\phi\phi^\top$, shape (d, d), symmetric positive semi-definite."""
        return theta_from_phi(self.phi, check=False)  # phi was checked by __init__

    def logits(self, Z):
        r"""Logits $Z\theta Z^\top$, shape (..., n, n), of tokens `Z` of shape (..., n, d)."""
        return quadratic_logits(Z, self.theta)

    def loss(self, Z, C):
        r"""Point-wise cross-entropy $-\langle C,\log\sigma(Z\theta Z^\top)\rangle$ (eq. 3), summed over rows: a 0-d array.
        """
        return quadratic_loss(Z, self.theta, C)

    def grad_Z(self, Z, C):
        r"""Feature gradient $\operatorname{SA}+\operatorname{SA}^*-(C+C^\top)Z\theta$ (eq. 9), shape (..., n, d).
        """
        return quadratic_grad_Z(Z, self.theta, C)

    def grad_phi(self, Z, C):
        r"""Gradient in the lower-triangular factor $\phi$, shape (d, d)."""
        return quadratic_grad_phi(Z, self.phi, C)

    def predict(self, Z):
        r"""For each token the token it scores highest, $\arg\max_j (Z\theta Z^\top)_{ij}$: shape (..., n)."""
        return self.logits(Z).argmax(axis=-1)
