"""Explicit Runge-Kutta integrators, each declaring its order, with a reverse mode:
``rk_forward`` / ``rk_backward`` step and differentiate any of them, which is how the
blocks get the backward pass of their attention sub-step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from flowattn_np import validate


# ---------------------------------------------------------------- integrators


@dataclass(frozen=True)
class Integrator:
    r"""An explicit Runge-Kutta method: Butcher tableau $(a,b)$ and its declared order.

    $$
    Y_i=Z+h\textstyle\sum_{j<i}a_{ij}k_j,\qquad k_i=f(Y_i),\qquad Z_{\text{new}}=Z+h\sum_ib_ik_i
    $$
    """

    name: str
    order: int
    a: tuple
    b: tuple

    @property
    def stages(self):
        """Number of stages $s$: evaluations of $f$ per step."""
        return len(self.b)


EULER = Integrator("euler", 1, ((),), (1.0,))
HEUN = Integrator("heun", 2, ((), (1.0,)), (0.5, 0.5))
RK4 = Integrator(
    "rk4", 4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)
)
INTEGRATORS = {"euler": EULER, "heun": HEUN, "rk2": HEUN, "rk4": RK4}
"""The explicit Runge-Kutta methods by name: ``"euler"``, ``"heun"`` (also ``"rk2"``), ``"rk4"``."""


def get_integrator(method):
    """The `Integrator` named ``method``, or the one passed in.

    Parameters
    ----------
    method : str or Integrator
        ``"euler"``, ``"heun"`` (also ``"rk2"``) or ``"rk4"``.

    Returns
    -------
    Integrator
    """
    if isinstance(method, Integrator):
        return method
    try:
        return INTEGRATORS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"integrator: unknown method {method!r}; known: {', '.join(sorted(INTEGRATORS))}"
        ) from None


class RKCache(NamedTuple):
    r"""What `rk_backward` needs from one Runge-Kutta step.

    The method, the step $h$, the stage slopes $k_i=f(Y_i)$, the field's cache of each
    stage, and the increment $\sum_ib_ik_i$.
    """

    method: Integrator
    h: Any
    slopes: list
    field_caches: list
    incr: Any


def rk_forward(field, Z, h, method):
    """One explicit Runge-Kutta step of size $h$ for $dZ/dt=f(Z)$, keeping the stages.

    Parameters
    ----------
    field : callable
        ``field(Y) -> (f(Y), cache)``.
    Z : array
        State at the start of the step.
    h : float
        Step size.
    method : str or Integrator
        The Runge-Kutta method.

    Returns
    -------
    Z_new : array
        State after the step, of the shape of ``Z``.
    cache : RKCache
        The stages, for `rk_backward`.
    """
    rk = get_integrator(method)
    if not hasattr(h, "shape"):  # a NumPy float64 scalar would upcast float32 features
        h = float(h)
    slopes, field_caches = [], []
    for i in range(rk.stages):
        Y = Z
        for j, a in enumerate(rk.a[i]):
            if a:
                Y = Y + (h * a) * slopes[j]
        k, fc = field(Y)
        slopes.append(k)
        field_caches.append(fc)
    incr = slopes[0] * rk.b[0] if rk.b[0] != 1 else slopes[0]
    for i in range(1, rk.stages):
        incr = incr + rk.b[i] * slopes[i]
    return Z + h * incr, RKCache(rk, h, slopes, field_caches, incr)


def rk_backward(field_vjp, Z_bar, cache):
    r"""Reverse mode through one Runge-Kutta step.

    From $Z_{\text{new}}=Z+h\sum_ib_ik_i$ and $Y_i=Z+h\sum_{j<i}a_{ij}k_j$, in reverse stage order:

    $$
    \bar k_i=hb_i\bar Z+h\textstyle\sum_{l>i}a_{li}\bar Y_l,\quad \bar Y_i=\mathrm{VJP}_f(\bar k_i),\quad
    \bar Z_{\text{in}}=\bar Z+\sum_i\bar Y_i,\quad
    \bar h=\langle\bar Z,\sum_ib_ik_i\rangle+\sum_{l,i}a_{li}\langle\bar Y_l,k_i\rangle
    $$

    Parameters
    ----------
    field_vjp : callable
        ``field_vjp(k_bar, fcache) -> (Y_bar, grads)``.
    Z_bar : array
        Upstream gradient of $Z_{\text{new}}$.
    cache : RKCache
        From `rk_forward`.

    Returns
    -------
    Z_bar_in : array
        Gradient in $Z$.
    h_bar : array, shape ()
        Gradient in $h$.
    grads
        The field's parameter gradients, summed over the stages.
    """
    rk, h, slopes, field_caches, incr = cache
    k_bars = [(h * b) * Z_bar for b in rk.b]
    h_bar = (Z_bar * incr).sum()
    Z_in_bar = Z_bar
    grads = {}
    for i in reversed(range(rk.stages)):
        Y_bar, g = field_vjp(k_bars[i], field_caches[i])
        for name, value in g.items():
            grads[name] = grads[name] + value if name in grads else value
        Z_in_bar = Z_in_bar + Y_bar
        for j, a in enumerate(rk.a[i]):
            if a:
                k_bars[j] = k_bars[j] + (h * a) * Y_bar
                h_bar = h_bar + a * (Y_bar * slopes[j]).sum()
    return Z_in_bar, h_bar, grads


def rk_step(f, Z, h, method="rk4"):
    """One step of size $h$ of $dZ/dt=f(Z)$ with an explicit method (forward only).

    Parameters
    ----------
    f : callable
        The vector field, ``f(Z) -> dZ/dt``.
    Z : array
        State at the start of the step.
    h : float
        Step size.
    method : str or Integrator
        The Runge-Kutta method.

    Returns
    -------
    array
        State after the step, of the shape of ``Z``.
    """
    return rk_forward(lambda Y: (f(Y), None), Z, h, method)[0]


def integrate(f, Z0, T, steps, method="rk4", return_path=False):
    r"""Integrate $dZ/dt=f(Z)$ from $Z_0$ over $[0,T]$ in ``steps`` equal steps of ``method``.

    The step is explicit, $h=T/\text{steps}$ (no silent default). $f$ is called
    steps × stages times: pass a field built once by `linear_field` / `quadratic_field`
    (checked once), not a function that checks its inputs on every call.

    Parameters
    ----------
    f : callable
        The vector field.
    Z0 : array
        Initial state.
    T : float
        Final time.
    steps : int
        Number of steps.
    method : str or Integrator
        The Runge-Kutta method.
    return_path : bool
        Return every iterate, not only the last.

    Returns
    -------
    array or list of array
        $Z(T)$, or $[Z_0, Z_1, \dots, Z(T)]$ with ``return_path``.
    """
    if isinstance(steps, bool) or not float(steps).is_integer() or int(steps) < 1:
        raise ValueError(f"steps: expected a positive whole number of steps, got {steps!r}")
    steps = int(steps)
    h = validate.check_step("T", T) / steps
    validate.check_array("Z0", Z0, min_ndim=1)
    method = get_integrator(method)
    path = [Z0]
    Z = Z0
    for _ in range(steps):
        Z = rk_step(f, Z, h, method)
        if return_path:
            path.append(Z)
    return path if return_path else Z
