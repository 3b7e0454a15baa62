"""The quadratic B sub-flow dZ/dt = M Z theta (M = C + C^T), solved exactly: in the
eigenbases of M and theta, or by the Taylor series of exp(t theta (x) M) to the unit
roundoff; with its VJP."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from flowattn_np import validate
from flowattn_np.backend import get_array_module, on_host
from flowattn_np.equations.ops import gram_sum, matmul_rows, row_sums, swap_last


class QuadraticBCache(NamedTuple):
    r"""What `quadratic_B_exact_vjp` needs from the forward sub-flow.

    The eigenbases $M=U\operatorname{diag}(\lambda)U^\top$ and
    $\theta=V\operatorname{diag}(\mu)V^\top$, $\tilde Z=U^\top ZV$,
    $E=\exp(t\lambda\mu^\top)$ and the time $t$.
    """

    U: Any
    lam: Any
    V: Any
    mu: Any
    Zt: Any
    E: Any
    t: Any


def quadratic_B_exact(Z, theta, C, t):
    r"""Exact solution of the quadratic B sub-flow $dZ/dt=MZ\theta$, $M=C+C^\top$, after time $t$.

    With $M=U\operatorname{diag}(\lambda)U^\top$ and $\theta=V\operatorname{diag}(\mu)V^\top$,

    $$
    Z(t)=U\big[e^{t\lambda\mu^\top}\odot(U^\top ZV)\big]V^\top .
    $$

    This is not $e^{tM}Ze^{t\theta}$, which solves $dZ/dt=MZ+Z\theta$. The second line of
    eq. (10) is one Euler step of this sub-flow, $Z+tMZ\theta$.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens at time 0.
    theta : array, shape (d, d)
        Symmetric.
    C : array, shape (..., n, n)
        Targets.
    t : float
        Time.

    Returns
    -------
    array, shape (..., n, d)
        $Z(t)$.
    """
    validate.quadratic_inputs(Z, theta, C)
    t = validate.check_step("t", t)
    return quadratic_B_exact_forward(Z, theta, C + swap_last(C), t)[0]


def quadratic_B_exact_forward(Z, theta, M, t, theta_eigh=None, method="auto"):
    r"""The exact quadratic B sub-flow for a given $M=C+C^\top$, without input checks.

    Two ways to the same $Z(t)=e^{t\,\theta\otimes M}Z$ (both exact to the working
    precision): ``"eigh"`` in the eigenbases of $M$ and $\theta$
    (`quadratic_B_eigh_forward`), ``"taylor"`` by the truncated Taylor series, matrix
    products only (`quadratic_B_taylor_forward`; its number of terms is read from the
    norm of $t\,\theta\otimes M$, and where that norm is too large for the series,
    `taylor_terms` gives None and the eigenbases are used). ``"auto"``: on the host, the
    series where `taylor_is_cheaper` says so (NumPy's ``eigh`` runs in double precision
    whatever the input, and the norm costs no transfer); the eigenbases on a device, where
    reading that norm would synchronise.

    Parameters
    ----------
    Z : array, shape (..., n, d)
        Tokens (trusted: not checked).
    theta : array, shape (d, d)
        Symmetric.
    M : array, shape (..., n, n)
        Symmetric.
    t : float
        Time.
    theta_eigh : tuple of array, optional
        $(\mu, V)$ = ``eigh(theta)`` when the caller has it (tied weights: once per pass
        for every block); used by the eigh method only.
    method : {"auto", "taylor", "eigh"}
        How to evaluate the exponential.

    Returns
    -------
    Z_t : array, shape (..., n, d)
        $Z(t)$.
    cache : QuadraticBCache or QuadraticBTaylorCache
        For `quadratic_B_exact_vjp`.
    """
    if method not in ("auto", "taylor", "eigh"):
        raise ValueError(f"method: expected 'auto', 'taylor' or 'eigh', got {method!r}")
    explicit = method == "taylor"
    if method == "auto":
        method = default_B_method(Z)
    if method == "taylor":
        m = taylor_terms(kronecker_norm_bound(theta, M, t), Z.dtype)
        n, d = Z.shape[-2:]
        if m is not None and (explicit or taylor_is_cheaper(m, n, d, Z.dtype)):
            return quadratic_B_taylor_forward(Z, theta, M, t, m)
    return quadratic_B_eigh_forward(Z, theta, M, t, theta_eigh)


def default_B_method(Z):
    """The exact B step's method for ``method="auto"``: ``"taylor"`` for host arrays (with
    the cost model of `taylor_is_cheaper` and the range of `taylor_terms` deciding each call),
    ``"eigh"`` for device arrays, where choosing the series' terms would read the device.

    Parameters
    ----------
    Z : array
        The tokens (their backend decides).

    Returns
    -------
    str
    """
    return "taylor" if on_host(Z) else "eigh"


def taylor_is_cheaper(m, n, d, dtype):
    r"""Whether $m$ Taylor terms cost less on the host than the eigenbasis method, by a cost model.

    In units of matrix-product FLOPs per sequence: the series takes $6m(n^2d+nd^2)$; the
    eigenbases $16(n^2d+nd^2)+4n^3$ of products plus NumPy's ``eigh`` of $M$, which runs in
    float64 whatever the input at about $\max(22n^3, 3200n^2)$ (LAPACK's reduction to
    tridiagonal form runs far below the product rate for small $n$; doubled for float32
    data, whose products run at twice the float64 rate). The constants were measured on
    the benchmark machine (OpenBLAS, one thread, $n$ 16..256, $d$ 16..128); they decide
    speed only, never the result beyond round-off.

    Parameters
    ----------
    m : int
        Terms of the series.
    n, d : int
        Tokens per sequence and features.
    dtype : dtype
        Of the tokens.

    Returns
    -------
    bool
    """
    products = n * n * d + n * d * d
    eigh = max(22.0 * n ** 3, 3200.0 * n * n) * (2 if dtype.itemsize <= 4 else 1)
    return 6 * m * products <= 16 * products + 4 * n ** 3 + eigh


def quadratic_B_eigh_forward(Z, theta, M, t, theta_eigh=None):
    r"""The exact quadratic B sub-flow in the eigenbases of $M$ and $\theta$.

    $$
    Z(t)=U\big[e^{t\lambda\mu^\top}\odot(U^\top ZV)\big]V^\top,\qquad
    M=U\operatorname{diag}(\lambda)U^\top,\quad\theta=V\operatorname{diag}(\mu)V^\top .
    $$

    Parameters
    ----------
    Z : array, shape (..., n, d)
    theta : array, shape (d, d)
        Symmetric.
    M : array, shape (..., n, n)
        Symmetric.
    t : float
    theta_eigh : tuple of array, optional
        $(\mu, V)$ = ``eigh(theta)`` when the caller has it.

    Returns
    -------
    Z_t : array, shape (..., n, d)
    cache : QuadraticBCache
    """
    xp = get_array_module(Z)
    lam, U = xp.linalg.eigh(M)
    mu, V = xp.linalg.eigh(theta) if theta_eigh is None else theta_eigh
    Zt = matmul_rows(swap_last(U) @ Z, V)  # V is shared by every sequence: one product
    E = xp.exp(t * lam[..., :, None] * mu)
    return matmul_rows(U @ (E * Zt), V.T), QuadraticBCache(U, lam, V, mu, Zt, E, t)


# Largest generator the Taylor method takes: |t| ||theta|| ||M|| <= 4 keeps the rounding of
# the alternating terms (negative eigenvalues) within about e^8 u of the input, as in the
# eigenbasis form, whose exponentials reach e^{rho} before the back-rotation.
TAYLOR_MAX_NORM = 4.0
# At most this many products M X theta; beyond, the eigenbasis method is cheaper.
TAYLOR_MAX_TERMS = 32


def _exp_tail(r, m):
    """An upper bound of sum_{k > m} r^k / k! (r >= 0): the Taylor remainder of exp."""
    term = r ** (m + 1) / math.factorial(m + 1)
    return term / (1.0 - r / (m + 2)) if r < m + 2 else math.inf


def taylor_terms(rho, dtype):
    r"""The fewest Taylor terms $m$ with $\sum_{k>m}\rho^k/k!\le u$, for $\|t\,\theta\otimes M\|_2\le\rho$.

    $u$ is the unit roundoff of ``dtype`` ($2^{-24}$, $2^{-53}$): the truncated series is
    $e^{t\,\theta\otimes M}Z$ to the working precision, relative to $\|Z\|$. None when
    $\rho>$ ``TAYLOR_MAX_NORM`` or $m>$ ``TAYLOR_MAX_TERMS``.

    Parameters
    ----------
    rho : float
        A bound of the norm of the generator times the time.
    dtype : dtype
        float32 or float64.

    Returns
    -------
    int or None
        $m$.
    """
    if not rho <= TAYLOR_MAX_NORM:  # also NaN
        return None
    u = 2.0 ** -24 if dtype.itemsize <= 4 else 2.0 ** -53
    m = 1
    while _exp_tail(rho, m) > u:
        m += 1
    return m if m <= TAYLOR_MAX_TERMS else None


def kronecker_norm_bound(theta, M, t):
    r"""$\rho=|t|\,\|\theta\|_2\max_b\min(\|M_b\|_\infty,\|M_b\|_F)\ge\|t\,\theta\otimes M_b\|_2$ for symmetric $M_b$, $\theta$, as a Python float.

    $\|\theta\|_2$ is the largest $|\mu|$ of the small $d\times d$ matrix; for a symmetric
    $M$, both the largest absolute row sum $\|M\|_\infty$ and the Frobenius norm bound
    $\|M\|_2$. A read of the array's memory: meant for the host.

    Parameters
    ----------
    theta : array, shape (d, d)
        Symmetric.
    M : array, shape (..., n, n)
        Symmetric.
    t : float or array, shape ()
        Time.

    Returns
    -------
    float
        $\rho$.
    """
    xp = get_array_module(theta)
    theta_norm = float(xp.abs(xp.linalg.eigvalsh(theta)).max())
    inf_norm = row_sums(xp.abs(M)).max(axis=-1)
    frobenius = xp.sqrt(xp.einsum("...ij,...ij->...", M, M))  # also >= ||M||_2, often smaller
    return abs(float(t)) * theta_norm * float(xp.minimum(inf_norm, frobenius).max())


class QuadraticBTaylorCache(NamedTuple):
    r"""What `quadratic_B_taylor_vjp` needs: $M$, $\theta$, the scaled weights
    $\theta_k=(t/k)\theta$, the terms $X_0..X_{m-1}$ and the products $R_k=MX_{k-1}$,
    $k=1..m$, and $t$."""

    M: Any
    theta: Any
    thetas: tuple
    X: tuple
    R: tuple
    t: Any


def quadratic_B_taylor_forward(Z, theta, M, t, m):
    r"""The exact quadratic B sub-flow by its Taylor series, truncated after $m$ terms.

    $$
    Z(t)=\sum_{k=0}^{m}X_k,\qquad X_0=Z,\quad X_k=MX_{k-1}\theta_k,\quad \theta_k=\tfrac{t}{k}\theta
    $$

    ($X_k=\frac{t^k}{k!}M^kZ\theta^k$: the series of $e^{t\,\theta\otimes M}Z$), with $m$
    from `taylor_terms`: the remainder is below the unit roundoff. Two products per term:
    $MX$ per sequence and $(MX)\theta_k$ over all rows at once.

    Parameters
    ----------
    Z : array, shape (..., n, d)
    theta : array, shape (d, d)
        Symmetric.
    M : array, shape (..., n, n)
        Symmetric.
    t : float or array, shape ()
    m : int
        Terms.

    Returns
    -------
    Z_t : array, shape (..., n, d)
    cache : QuadraticBTaylorCache
    """
    thetas = tuple(theta * (t / k) for k in range(1, m + 1))
    X, terms, products = Z, [], []
    Z_t = Z.copy()
    for theta_k in thetas:
        terms.append(X)
        products.append(M @ X)
        X = matmul_rows(products[-1], theta_k)
        Z_t += X
    return Z_t, QuadraticBTaylorCache(M, theta, thetas, tuple(terms), tuple(products), t)


def quadratic_B_taylor_vjp(Z_bar, cache, need_t=True):
    r"""Vector-Jacobian product of `quadratic_B_taylor_forward` (of the polynomial it evaluates).

    From $\bar X_m=\bar Z$, for $k=m..1$:

    $$
    T_k=\bar X_k\theta_k,\quad \bar X_{k-1}=\bar Z+MT_k,\quad
    \bar M\mathrel{+}=T_kX_{k-1}^\top,\quad \bar\theta\mathrel{+}=\tfrac{t}{k}\textstyle\sum_bR_k^\top\bar X_k,
    $$

    the input's gradient is $\bar X_0$, and $\bar t=\langle\bar Z\theta,\sum_kR_k\rangle$ (the
    series' derivative in $t$ is $\sum_kMX_{k-1}\theta$).

    Parameters
    ----------
    Z_bar : array, shape (..., n, d)
        Upstream gradient of $Z(t)$.
    cache : QuadraticBTaylorCache
    need_t : bool, optional
        False: `t_bar` is not computed and is None.

    Returns
    -------
    Z_bar_in, theta_bar, M_bar, t_bar
        As `quadratic_B_exact_vjp`.
    """
    xp = get_array_module(Z_bar)
    M, theta, thetas, X, R, t = cache
    t_bar = xp.vdot(matmul_rows(Z_bar, theta).reshape(-1), sum(R).reshape(-1)) if need_t else None
    M_bar = xp.zeros_like(M)
    theta_bar = xp.zeros_like(theta)
    X_bar = Z_bar
    for k in reversed(range(len(thetas))):
        theta_bar += gram_sum(R[k], X_bar) * (t / (k + 1))
        T = matmul_rows(X_bar, thetas[k])
        M_bar += T @ swap_last(X[k])
        X_bar = Z_bar + swap_last(M) @ T
    return X_bar, theta_bar, M_bar, t_bar


def divided_difference_products(A, B, E, c, x):
    r"""$K_{ab}=\sum_rA_{ra}B_{rb}D_{rab}$ with the divided differences of the exponential, as matrix products.

    $$
    D_{rab}=\frac{E_{ra}-E_{rb}}{x_a-x_b},\qquad E_{ra}=e^{c_rx_a},\qquad D_{raa}=c_rE_{ra}
    $$

    (the Daleckii-Krein sums of the exact B flow's VJP). Pairs far apart:
    $\big((A\odot E)^\top B-A^\top(B\odot E)\big)/(x_a-x_b)$. Near pairs
    ($\max_r|c_r|\,|x_a-x_b|\le$ tol; tol $=3\cdot10^{-3}$ in float64, $0.1$ in float32), where
    that difference cancels: with $S=\sqrt E$ and the midpoint expansion
    $D_{rab}=c_rS_{ra}S_{rb}\big(1+(c_r(x_a-x_b))^2/24+O(\text{tol}^4)\big)$,

    $$
    K_{ab}=\big[(A\odot S\odot c)^\top(B\odot S)\big]_{ab}+\frac{(x_a-x_b)^2}{24}\big[(A\odot S\odot c^3)^\top(B\odot S)\big]_{ab}.
    $$

    Both errors are below $10^{-13}$ (float64) or $10^{-6}$ (float32) of the scale.

    Parameters
    ----------
    A : array, shape (..., R, k)
    B : array, shape (..., R, k)
    E : array, shape (..., R, k)
        $e^{c_rx_a}$.
    c : array, shape (..., R)
    x : array, shape (..., k)

    Returns
    -------
    array, shape (..., k, k)
        $K$.
    """
    xp = get_array_module(A)
    tol = 3e-3 if A.dtype.itemsize == 8 else 0.1
    dx = x[..., :, None] - x[..., None, :]
    near = xp.abs(dx) * xp.abs(c).max(axis=-1, keepdims=True)[..., None] <= tol
    far = swap_last(A * E) @ B
    far -= swap_last(A) @ (B * E)
    far /= xp.where(near, 1.0, dx)
    S = xp.sqrt(E)
    AS, BS = A * S * c[..., None], B * S
    mid = swap_last(AS * (c * c)[..., None]) @ BS
    dx *= dx  # dx is not needed any more: (x_a - x_b)^2 / 24 in place, no (k, k) temporaries
    dx *= 1.0 / 24
    mid *= dx
    mid += swap_last(AS) @ BS
    return xp.where(near, mid, far)


def quadratic_B_exact_vjp(Z_bar, cache, need_t=True):
    r"""Vector-Jacobian product of the exact quadratic B sub-flow, by the method its forward took.

    Parameters
    ----------
    Z_bar : array, shape (..., n, d)
        Upstream gradient $\bar Z$ of $Z(t)$.
    cache : QuadraticBCache or QuadraticBTaylorCache
        From `quadratic_B_exact_forward` (trusted).
    need_t : bool, optional
        False for a fixed step: `t_bar` is not computed and is None.

    Returns
    -------
    Z_bar_in : array, shape (..., n, d)
        Gradient in $Z$.
    theta_bar : array, shape (d, d)
        Gradient in $\theta$.
    M_bar : array, shape (..., n, n)
        Gradient in $M$.
    t_bar : array, shape (), or None
        Gradient in $t$.
    """
    if isinstance(cache, QuadraticBTaylorCache):
        return quadratic_B_taylor_vjp(Z_bar, cache, need_t)
    return quadratic_B_eigh_vjp(Z_bar, cache, need_t)


def quadratic_B_eigh_vjp(Z_bar, cache, need_t=True):
    r"""Vector-Jacobian product of `quadratic_B_eigh_forward`, $Z(t)=e^{t\,\theta\otimes M}Z$ in eigenbases.

    With $Y=U^\top\bar ZV$, $\tilde Z=U^\top ZV$, $E=e^{t\lambda\mu^\top}$ and the divided
    differences of the exponential (Daleckii-Krein):

    $$
    \begin{aligned}
    \bar Z_{\text{in}}&=U(E\odot Y)V^\top,\\
    \bar\theta&=VG^\top V^\top, & G_{ab}&=\textstyle\sum_i Y_{ia}\tilde Z_{ib}D_{iab}, &
    D_{iab}&=\frac{e^{t\lambda_i\mu_a}-e^{t\lambda_i\mu_b}}{\mu_a-\mu_b},\\
    \bar M&=UHU^\top, & H_{ij}&=\textstyle\sum_a Y_{ia}\tilde Z_{ja}D'_{aij}, &
    D'_{aij}&=\frac{e^{t\lambda_i\mu_a}-e^{t\lambda_j\mu_a}}{\lambda_i-\lambda_j},\\
    \bar t&=\textstyle\sum Y\odot E\odot\tilde Z\odot\lambda\mu^\top .
    \end{aligned}
    $$

    At equal eigenvalues the divided differences take their limits,
    $D_{iab}\to t\lambda_ie^{t\lambda_i\mu_a}$ and $D'_{aij}\to t\mu_ae^{t\lambda_i\mu_a}$
    (computed with exprel, so nearly equal ones stay accurate); $G$ and $H$ are formed as
    matrix products (`divided_difference_products`).

    Parameters
    ----------
    Z_bar : array, shape (..., n, d)
        Upstream gradient $\bar Z$ of $Z(t)$.
    cache : QuadraticBCache
        From `quadratic_B_eigh_forward` (trusted).
    need_t : bool, optional
        False for a fixed step: `t_bar` is not computed (four passes over (..., n, d)
        arrays saved) and is returned as None.

    Returns
    -------
    Z_bar_in, theta_bar, M_bar, t_bar
        As `quadratic_B_exact_vjp`.
    """
    U, lam, V, mu, Zt, E, t = cache
    d = mu.shape[0]
    Y = matmul_rows(swap_last(U) @ Z_bar, V)
    Z_in_bar = matmul_rows(U @ (E * Y), V.T)
    t_bar = ((Y * E * Zt * lam[..., :, None]) * mu).sum() if need_t else None
    G = divided_difference_products(Y.reshape(-1, d), Zt.reshape(-1, d), E.reshape(-1, d),
                                    (t * lam).reshape(-1), mu)
    theta_bar = V @ G.T @ V.T
    H = divided_difference_products(swap_last(Y), swap_last(Zt), swap_last(E), t * mu, lam)
    M_bar = U @ H @ swap_last(U)
    return Z_in_bar, theta_bar, M_bar, t_bar


