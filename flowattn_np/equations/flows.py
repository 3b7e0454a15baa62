"""Gradient flows of the point-wise cross-entropy, their splitting, and the integrators.

Linear model (eq. 6):    dZ/dt = C theta - CA(Z, theta)
    A (attention):       dZ/dt = -CA(Z, theta)         (nonlinear: explicit one-step method)
    B (label forcing):   dZ/dt = C theta               (exact: Z + t C theta)
Quadratic model:         dZ/dt = (C + C^T) Z theta - SA(Z, theta) - SA*(Z, theta)
    A:                   dZ/dt = -(SA + SA*)(Z)
    B:                   dZ/dt = M Z theta, M = C + C^T (exact: eigenbases of M, theta,
                         or the Taylor series of exp(t theta (x) M) to the unit roundoff)

Splittings of one step of size h: Lie-Trotter ``B(h) o A(h)`` (first order) and
Strang ``A(h/2) o B(h) o A(h/2)`` (second order with sub-flows of order >= 2).

Integrators are explicit Runge-Kutta methods given by their Butcher tableau, each
declaring its order; ``rk_forward``/``rk_backward`` step and differentiate any of
them, which is how the blocks (``blocks.split``) get their backward passes.
"""

from __future__ import annotations


from flowattn_np import validate
from flowattn_np.equations.attention import cross_attention_forward, self_attention_sum_forward
from flowattn_np.equations.ops import swap_last

# ---------------------------------------------------------------- vector fields
#
# ``linear_field`` / ``quadratic_field`` check theta and C once and return the vector
# field as a plain function of Z that trusts its input: the form to hand to
# ``integrate`` or ``rk_step``, which call it thousands of times. ``linear_flow`` and
# friends check everything on every call: the form for a single evaluation.


def _linear_rhs(theta, C, heads):
    """Unchecked Z -> C theta - CA(Z, theta), or Z -> -CA(Z, theta) when C is None."""
    if C is None:
        return lambda Z: -cross_attention_forward(Z, theta, heads)[0]
    C_theta = C @ theta
    return lambda Z: C_theta - cross_attention_forward(Z, theta, heads)[0]


def linear_field(theta, C=None, heads=None):
    r"""The vector field of the linear gradient flow (eq. 6), its arguments checked once.

    $$
    f(Z)=C\theta-\operatorname{CA}(Z,\theta)\qquad\big(f(Z)=-\operatorname{CA}(Z,\theta)\text{ when } C \text{ is None}\big)
    $$

    Parameters
    ----------
    theta : array, shape (m, d)
        One row per class.
    C : array, shape (n, m), optional
        Targets; None for the attention part alone.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    callable
        $f$, which trusts its argument $Z$ of shape (n, d).
    """
    heads = validate.linear_inputs(None, theta, C, heads)
    return _linear_rhs(theta, C, heads)


def linear_flow(Z, theta, C, heads=None):
    r"""Right-hand side of the gradient flow of the linear model (eq. 6).

    $$
    \frac{dZ}{dt}=-\nabla_Z\ell=C\theta-\operatorname{CA}(Z,\theta)
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
    array, shape (n, d)
        $dZ/dt$.
    """
    heads = validate.linear_inputs(Z, theta, C, heads)
    return _linear_rhs(theta, C, heads)(Z)


def linear_flow_A(Z, theta, heads=None):
    r"""Attention part A of the linear flow (eq. 6): $-\operatorname{CA}(Z,\theta)=-\sigma(Z\theta^\top)\,\theta$.

    Parameters
    ----------
    Z : array, shape (n, d)
        Features.
    theta : array, shape (m, d)
        One row per class.
    heads : tuple of int, optional
        Class counts per head.

    Returns
    -------
    array, shape (n, d)
        $dZ/dt$ of the A sub-flow.
    """
    heads = validate.linear_inputs(Z, theta, None, heads)
    return _linear_rhs(theta, None, heads)(Z)


def linear_flow_B(Z, theta, C, heads=None):
    r"""Label part B of the linear flow (eq. 6): $C\theta$, constant in $Z$.

    Parameters
    ----------
    Z : array, shape (n, d)
        Features (only their shape matters).
    theta : array, shape (m, d)
        One row per class.
    C : array, shape (n, m)
        Targets; with ``heads``, one distribution per head in each row.
    heads : tuple of int, optional
        Class counts per head (multi-head labels).

    Returns
    -------
    array, shape (n, d)
        $dZ/dt$ of the B sub-flow.
    """
    validate.linear_inputs(Z, theta, C, heads)
    return C @ theta


def linear_B_exact(Z, theta, C, t, heads=None):
    r"""Exact solution of the B sub-flow $dZ/dt=C\theta$ after time $t$ (second line of eq. 8).

    $$
    Z(t)=Z+t\,C\theta
    $$

    Parameters
    ----------
    Z : array, shape (n, d)
        Features at time 0.
    theta : array, shape (m, d)
        One row per class.
    C : array, shape (n, m)
        Targets; with ``heads``, one distribution per head in each row.
    t : float
        Time.
    heads : tuple of int, optional
        Class counts per head (multi-head labels).

    Returns
    -------
    array, shape (n, d)
        $Z(t)$.
    """
    validate.linear_inputs(Z, theta, C, heads)
    t = validate.check_step("t", t)
    return Z + t * (C @ theta)


def _quadratic_rhs(theta, C):
    """Unchecked Z -> M Z theta - (SA + SA*)(Z), M = C + C^T, or -(SA + SA*)(Z) when C is None."""
    if C is None:
        return lambda Z: -self_attention_sum_forward(Z, theta)[0]
    M = C + swap_last(C)
    return lambda Z: M @ Z @ theta - self_attention_sum_forward(Z, theta)[0]


def quadratic_field(theta, C=None):
    r"""The quadratic model's gradient flow, its arguments checked once.

    $$
    f(Z)=MZ\theta-\operatorname{SA}(Z,\theta)-\operatorname{SA}^*(Z,\theta),\qquad M=C+C^\top
    $$

    With ``C`` None, the attention part alone: $f(Z)=-(\operatorname{SA}+\operatorname{SA}^*)(Z,\theta)$.

    Parameters
    ----------
    theta : array, shape (d, d)
        Symmetric.
    C : array, shape (..., n, n), optional
        Targets; None for the attention part alone.

    Returns
    -------
    callable
        $f$, which trusts its argument $Z$ of shape (..., n, d).
    """
    validate.quadratic_inputs(None, theta, C)
    return _quadratic_rhs(theta, C)


def quadratic_flow(Z, theta, C):
    r"""Right-hand side of the gradient flow of the quadratic model.

    $$
    \frac{dZ}{dt}=(C+C^\top)Z\theta-\operatorname{SA}(Z,\theta)-\operatorname{SA}^*(Z,\theta)
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
        $dZ/dt$.
    """
    validate.quadratic_inputs(Z, theta, C)
    return _quadratic_rhs(theta, C)(Z)


def quadratic_flow_A(Z, theta):
    r"""Attention part A of the quadratic flow: $-(\operatorname{SA}+\operatorname{SA}^*)(Z,\theta)$.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens.
    theta : array, shape (d, d)
        Symmetric.

    Returns
    -------
    array, shape (..., n, d)
        $dZ/dt$ of the A sub-flow.
    """
    validate.quadratic_inputs(Z, theta)
    return _quadratic_rhs(theta, None)(Z)


def quadratic_flow_B(Z, theta, C):
    r"""Label part B of the quadratic flow: $MZ\theta$ with $M=C+C^\top$.

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
        $dZ/dt$ of the B sub-flow.
    """
    validate.quadratic_inputs(Z, theta, C)
    return (C + swap_last(C)) @ Z @ theta




def lie_step(step_A, step_B, Z, h):
    r"""Lie-Trotter splitting, first order: $\mathcal B_h\circ\mathcal A_h$ (eq. 8).

    Parameters
    ----------
    step_A, step_B : callable
        Sub-flow steps, ``step_X(Z, t) -> Z``.
    Z : array
        State.
    h : float
        Step size.

    Returns
    -------
    array
        State after the step.
    """
    return step_B(step_A(Z, h), h)


def strang_step(step_A, step_B, Z, h):
    r"""Strang splitting $\mathcal A_{h/2}\circ\mathcal B_h\circ\mathcal A_{h/2}$.

    Second order when both sub-steps are at least second order (exact B, and Heun or RK4
    for A); with one Euler step for A it is first order, like Lie.

    Parameters
    ----------
    step_A, step_B : callable
        Sub-flow steps, ``step_X(Z, t) -> Z``.
    Z : array
        State.
    h : float
        Step size.

    Returns
    -------
    array
        State after the step.
    """
    return step_A(step_B(step_A(Z, 0.5 * h), h), 0.5 * h)

