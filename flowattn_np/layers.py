"""Transformer blocks from splitting the gradient flow, with hand-derived backward passes.

One block advances the features by one step ``h`` of the split flow of ``flows``:

    Lie (eq. 8, 10):  A(h) then B(h)             A: attention sub-flow
    Strang:           A(h/2), B(h), A(h/2)       B: label sub-flow

With one Euler step for A and B this is exactly the paper's block, e.g. for the
linear model (eq. 8):

    Z_half = Z_l - h CA(Z_l, theta)              # cross-attention + residual
    Z_l+1  = Z_half + h C theta                  # linear map of keys/values + residual

The targets ``C`` used inside a block come from an explicit source
(``BlockConfig.targets``):

* ``"labels"``:  the true labels (the theory, "feature discovery"; at test time an
  oracle computation, never a classifier's test accuracy),
* ``"none"``:    no B sub-flow, attention only,
* ``"learned"``: a learned oracle ``C_hat(Z) = softmax(Z W^T + b)`` (linear model) or
  ``softmax(Z W Z^T)`` (quadratic model), evaluated once at the block's input and held
  fixed for the block (so the B sub-flow stays linear and exactly solvable).

``BlockConfig.norm`` ('sphere' or 'layer') keeps the rows on a manifold (sphere.py):
post-norm, every sub-step is a step of the projected sub-flow followed by the retraction
R (the Riemannian reading; the linear B sub-step is the exact rotation on the manifold);
pre-norm, Z + S(R(Z)) - R(Z) for each flat sub-step S (the GPT-2 layout, a variant that
is not a flow on the manifold).

Every block has ``forward(Z, params, C=None) -> (Z_out, cache)`` and
``backward(Z_out_bar, cache) -> (Z_bar, grads)`` with ``grads`` keyed like ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .attention import (
    cross_attention_forward,
    cross_attention_vjp,
    self_attention_sum_forward,
    self_attention_sum_vjp,
)
from .backend import get_array_module
from .flows import (
    QuadraticBCache,
    RKCache,
    get_integrator,
    quadratic_B_exact_forward,
    quadratic_B_exact_vjp,
    rk_backward,
    rk_forward,
)
from .models import phi_grad, theta_from_phi
from .ops import softmax, softmax_vjp, softmax_vjp_heads, sum_leading, swap_last
from .sphere import (
    SphereBCache,
    centre,
    linear_B_exact_sphere_forward,
    linear_B_exact_sphere_vjp,
    project,
    project_vjp,
    retract_to,
    retract_to_vjp,
)
from .validate import check_step

MODELS = ("linear", "quadratic", "memory")
SCHEMES = ("lie", "strang")
B_FLOWS = ("exact", "euler")
TARGETS = ("labels", "none", "learned")
NORMS = ("none", "sphere", "layer")
NORM_PLACES = ("post", "pre")

NORM_TITLES = {
    ("sphere", "post"): "post-norm on the sphere |z| = sqrt(d): R(Z + step), a flow on the sphere",
    ("layer", "post"): "post-norm on the LayerNorm manifold {mean 0, |z| = sqrt(d)}: R(Z + step), "
                       "a flow on that manifold",
    ("sphere", "pre"): "pre-norm on the sphere: Z + step(R(Z)), a variant that is NOT a flow on the sphere",
    ("layer", "pre"): "pre-norm LayerNorm: Z + step(R(Z)), a variant that is NOT a flow on the manifold",
}

TARGET_TITLES = {
    "labels": "true labels C (the theory: feature discovery; an oracle computation at test time)",
    "none": "no targets (attention sub-flow only)",
    "learned": "learned oracle C_hat(Z) (label-free)",
}


@dataclass(frozen=True)
class BlockConfig:
    """What one block computes.

    model:      'linear' (cross-attention block, eq. 8), 'quadratic' (self-attention
                block, eq. 10) or 'memory' (Z + h softmax(Z K^T) V with s learned
                key/value slots: beyond the theory).
    scheme:     'lie' (A(h) then B(h)) or 'strang' (A(h/2) B(h) A(h/2)).
    integrator: one-step method for the A sub-flow: 'euler' (the transformer block),
                'heun' (order 2) or 'rk4' (order 4).
    b_flow:     'exact' or 'euler' for the B sub-flow of the quadratic model. The
                linear model's flat B sub-flow Z + t C theta is exact in one Euler step,
                so only 'exact' is accepted there, except in a post-norm block, where
                'exact' is the rotation on the manifold and 'euler' its Euler step + R.
                A post-norm quadratic block takes 'euler' (no exact form on a manifold).
    targets:    source of C: 'labels', 'none' or 'learned' (see the module docstring).
    h:          the step (its initial value when learn_h).
    learn_h:    whether h is a trained parameter.
    heads:      class counts per head (linear model): one softmax per head.
    slots:      number of key/value slots s of a 'memory' block.
    norm:       'none' (flat blocks), 'sphere' (rows held on |z| = sqrt(d): RMS
                normalisation) or 'layer' (LayerNorm: mean 0, |z| = sqrt(d)).
    norm_place: 'post': every sub-step is a step of the projected field followed by the
                retraction R (the Riemannian reading; the linear B sub-step is the exact
                rotation on the manifold); 'pre': Z + step(R(Z)), the GPT-2 layout, a
                variant that is not a flow on the manifold.
    """

    model: str = "linear"
    scheme: str = "lie"
    integrator: str = "euler"
    b_flow: str = "exact"
    targets: str = "labels"
    h: float = 0.1
    learn_h: bool = False
    heads: tuple | None = None
    slots: int = 0
    norm: str = "none"
    norm_place: str = "post"

    def __post_init__(self):
        for field, allowed in (("model", MODELS), ("scheme", SCHEMES), ("b_flow", B_FLOWS),
                               ("targets", TARGETS), ("norm", NORMS), ("norm_place", NORM_PLACES)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{field}: expected one of {', '.join(map(repr, allowed))}, "
                    f"got {getattr(self, field)!r}"
                )
        get_integrator(self.integrator)
        # a Python float: a NumPy float64 step would upcast float32 features
        object.__setattr__(self, "h", check_step("h", self.h))
        self._check_b_flow()
        if self.model == "memory":
            if self.targets != "none":
                raise ValueError("targets: a 'memory' block has no label sub-flow; use targets='none'")
            if int(self.slots) < 1:
                raise ValueError(f"slots: a 'memory' block needs slots >= 1, got {self.slots}")
        if self.heads is not None:
            if self.model != "linear":
                raise ValueError("heads: multi-head labels are defined for the linear model only")
            object.__setattr__(self, "heads", tuple(int(s) for s in self.heads))

    def _check_b_flow(self):
        """b_flow is a choice only where the two B sub-steps differ."""
        post = self.norm != "none" and self.norm_place == "post"
        if self.model == "memory" and self.b_flow != "exact":
            raise ValueError(f"b_flow: a 'memory' block has no B sub-flow, got b_flow={self.b_flow!r}")
        if self.model == "linear" and self.b_flow != "exact" and not post:
            raise ValueError("b_flow: the flat linear B sub-flow Z + t C theta is exact in one Euler "
                             "step; b_flow='euler' differs only in a post-norm block (norm='sphere' "
                             f"or 'layer'), got b_flow={self.b_flow!r}")
        if self.model == "quadratic" and post and self.targets != "none" and self.b_flow == "exact":
            raise ValueError("b_flow: the quadratic B sub-flow has no exact solution on the manifold; "
                             "a post-norm quadratic block takes b_flow='euler' (an Euler step, then R)")

    def replace(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def step_size(self, params):
        """The step h of a block: the trained params['h'] when learn_h, else the fixed h."""
        return params["h"] if self.learn_h else self.h

    @property
    def uses_labels(self):
        """Whether the block needs the true labels C (targets='labels')."""
        return self.targets == "labels"

    @property
    def normalised(self):
        """Whether the block keeps its rows on a manifold (norm != 'none')."""
        return self.norm != "none"

    def describe(self):
        """One line naming the block, its scheme, integrators, the source of C and the normalisation."""
        norm = f"; normalisation: {NORM_TITLES[self.norm, self.norm_place]}" if self.normalised else ""
        if self.model == "memory":
            return (f"key/value memory block Z + h softmax(Z K^T) V, s = {self.slots} slots "
                    f"(beyond the theory), h {'learned' if self.learn_h else f'= {self.h:g}'}{norm}")
        kind = "cross-attention (linear model)" if self.model == "linear" else \
            "self-attention (quadratic model)"
        step = "learned h" if self.learn_h else f"h = {self.h:g}"
        b = "" if self.targets == "none" else f", B {self.b_flow}"
        if self.normalised and self.norm_place == "post" and self.targets != "none":
            b = ", B exact (a rotation on the manifold)" if self.b_flow == "exact" else ", B euler + R"
        return (f"{kind} block, {self.scheme.capitalize()} splitting, A by {self.integrator}{b}, "
                f"{step}; targets: {TARGET_TITLES[self.targets]}{norm}")


def require_labels(value, name="C", subject="this block uses"):
    """Raise a ValueError naming ``name`` when a block that uses the true labels gets none."""
    if value is None:
        raise ValueError(
            f"{name}: {subject} the true labels (targets='labels': an oracle computation); "
            f"pass {name}, or configure targets='learned' or 'none' for a label-free block"
        )


def _step_schedule(config):
    """The sub-steps of one block as (sub-flow, fraction of h)."""
    if config.targets == "none":
        return (("A", 1.0),) if config.scheme == "lie" else (("A", 0.5), ("A", 0.5))
    if config.scheme == "lie":
        return (("A", 1.0), ("B", 1.0))
    return (("A", 0.5), ("B", 1.0), ("A", 0.5))


# ---------------------------------------------------------------- caches
# What each forward keeps for its backward, as named tuples a student can print.


class SubStep(NamedTuple):
    """One sub-step of a split block: its fraction of h and its cache (an RKCache for
    the A sub-flow, a B cache for the label sub-flow)."""

    fraction: float
    cache: Any


class SplitCache(NamedTuple):
    """Cache of SplitBlock.forward: params, theta, the targets C, the oracle's cache
    (targets='learned', else None) and the sub-steps in the order they ran."""

    params: dict
    theta: Any
    C: Any
    oracle_cache: Any
    steps: tuple


class Eq8Cache(NamedTuple):
    """Cache of the fused eq. (8) block: input Z, theta, targets C, P = sigma(Z theta^T),
    R = C - P, the step h, and keys = [W; theta] of oracle and attention (learned
    targets) or None."""

    Z: Any
    theta: Any
    C: Any
    P: Any
    R: Any
    h: Any
    keys: Any


class CrossAttentionCache(NamedTuple):
    """Cache of the linear A field at a stage Y: theta and P = sigma(Y theta^T)."""

    Y: Any
    theta: Any
    P: Any


class SelfAttentionCache(NamedTuple):
    """Cache of the quadratic A field at a stage Y: theta, P = sigma(Y theta Y^T), Y theta."""

    Y: Any
    theta: Any
    P: Any
    Y_theta: Any


class LinearBCache(NamedTuple):
    """Cache of the linear B sub-flow Z + t C theta."""

    theta: Any
    C: Any
    C_theta: Any
    t: Any


class QuadraticBEulerCache(NamedTuple):
    """Cache of one Euler step Z + t M Z theta of the quadratic B sub-flow, M = C + C^T."""

    Z: Any
    theta: Any
    M: Any
    MZ_theta: Any
    t: Any


class OracleCache(NamedTuple):
    """Cache of a learned oracle: its input Z, its output C_hat, and Z W (quadratic) or None."""

    Z: Any
    C: Any
    ZW: Any


class MemoryCache(NamedTuple):
    """Cache of the memory block: input Z, P = softmax(Z K^T), the step h, the params."""

    Z: Any
    P: Any
    h: Any
    params: dict


class RiemannianRKCache(NamedTuple):
    """Cache of a post-norm A sub-step R(Phi(Z)), Phi an RK step of the projected field
    P_Y f(Y): the RKCache of Phi and its end point U = Phi(Z) before the retraction."""

    rk: Any
    U: Any


class ProjectedFieldCache(NamedTuple):
    """Cache of the projected field P_Y f(Y) at a stage Y: Y, f(Y) and the field's cache."""

    Y: Any
    F: Any
    inner: Any


class PostNormCache(NamedTuple):
    """Cache of a post-norm Euler sub-step R(Z + P_Z(S(Z) - Z)) of a flat step S: the
    cache of S, the input Z, the flat increment D = S(Z) - Z and U before the retraction."""

    inner: Any
    Z: Any
    D: Any
    U: Any


class PreNormCache(NamedTuple):
    """Cache of a pre-norm sub-step Z + S(R(Z)) - R(Z): the cache of S and the input Z."""

    inner: Any
    Z: Any


class SphereLinearBCache(NamedTuple):
    """Cache of the linear B sub-step on the manifold (the exact rotation toward c = (C theta)_row):
    the sphere module's SphereBCache, theta and the targets C."""

    sphere: SphereBCache
    theta: Any
    C: Any


# ---------------------------------------------------------------- normalised sub-steps
# A flat sub-step S (``step(Z) -> (S(Z), cache)``, ``step_vjp(S_bar, cache) -> (Z_bar, *rest)``)
# becomes a normalised one. Post: R(Z + P_Z(S(Z) - Z)), the projected Euler step then the
# retraction R; pre: Z + S(R(Z)) - R(Z). The target source, the model and the integrator
# stay with S, so every combination of them composes with either placement.


def post_norm_forward(step, Z, manifold):
    """R(Z + P_Z(S(Z) - Z)): a projected Euler step of S, then the retraction."""
    S, inner = step(Z)
    D = S - Z
    U = Z + project(Z, D, manifold)
    return retract_to(U, manifold), PostNormCache(inner, Z, D, U)


def post_norm_vjp(step_vjp, Y_bar, cache, manifold):
    """VJP of post_norm_forward: U_bar = R_vjp(Y_bar), then through U = Z + P_Z(S(Z) - Z)."""
    U_bar = retract_to_vjp(cache.U, Y_bar, manifold)
    Zp_bar, D_bar = project_vjp(cache.Z, cache.D, U_bar, manifold)
    Z_bar, *rest = step_vjp(D_bar, cache.inner)
    return (Z_bar + U_bar + Zp_bar - D_bar, *rest)


def pre_norm_forward(step, Z, manifold):
    """Z + S(R(Z)) - R(Z): the sub-step applied to the normalised input, added to the stream."""
    X = retract_to(Z, manifold)
    S, inner = step(X)
    return Z + (S - X), PreNormCache(inner, Z)


def pre_norm_vjp(step_vjp, Y_bar, cache, manifold):
    """VJP of pre_norm_forward: X_bar = S_vjp(Y_bar) - Y_bar, Z_bar = Y_bar + R_vjp(X_bar)."""
    X_bar, *rest = step_vjp(Y_bar, cache.inner)
    return (Y_bar + retract_to_vjp(cache.Z, X_bar - Y_bar, manifold), *rest)


# ---------------------------------------------------------------- blocks


class SplitBlock:
    """The general split-flow block: forward/backward for any scheme, integrator and
    source of targets; subclasses give the model's pieces.

    Subclasses define: ``theta_of(params)``, ``param_grads(theta_bar, params)``,
    ``field_A`` / ``field_A_vjp`` (vector field of the A sub-flow),
    ``B_forward`` / ``B_vjp`` (the B sub-flow over time t) and
    ``oracle`` / ``oracle_vjp`` (the learned targets).
    """

    def __init__(self, config):
        self.config = config

    # -- forward --------------------------------------------------------------
    def forward(self, Z, params, C=None, out=None):
        """Advance Z by one block; returns (Z_out, SplitCache). C is needed iff targets='labels'.

        ``out`` (a buffer for Z_out) is a hint that the fused paths use; this one ignores it.
        """
        cfg = self.config
        theta = self.theta_of(params)
        h = cfg.step_size(params)
        oracle_cache = None
        if cfg.uses_labels:
            require_labels(C)
        elif cfg.targets == "learned":
            C, oracle_cache = self.oracle(Z, params)
        else:
            C = None
        steps = []
        for kind, frac in _step_schedule(cfg):
            Z, c = self.sub_step(kind, Z, theta, C, h * frac)
            steps.append(SubStep(frac, c))
        return Z, SplitCache(params, theta, C, oracle_cache, tuple(steps))

    # -- backward -------------------------------------------------------------
    def backward(self, Z_bar, cache, out=None):
        """VJP of the block: returns (Z_in_bar, grads) with grads keyed like params."""
        cfg = self.config
        xp = get_array_module(Z_bar)
        theta_bar = xp.zeros_like(cache.theta)
        h_bar = 0.0
        C_bar = None
        for step in reversed(cache.steps):
            Z_bar, t_bar, step_theta_bar, step_C_bar = self.sub_step_vjp(Z_bar, step.cache)
            theta_bar = theta_bar + step_theta_bar
            if step_C_bar is not None:
                C_bar = step_C_bar if C_bar is None else C_bar + step_C_bar
            h_bar = h_bar + step.fraction * t_bar
        grads = self.param_grads(theta_bar, cache.params)
        if cfg.learn_h:
            grads["h"] = xp.asarray(h_bar, dtype=Z_bar.dtype).reshape(())
        if cfg.targets == "learned":
            Z_extra, oracle_grads = self.oracle_vjp(C_bar, cache.oracle_cache, cache.params)
            Z_bar = Z_bar + Z_extra
            grads.update(oracle_grads)
        return Z_bar, grads


    # -- sub-steps ------------------------------------------------------------
    def flat_step(self, kind, Z, theta, C, t):
        """The flat sub-step: an RK step of the A field ('A') or the B sub-flow ('B') over time t."""
        if kind == "A":
            return rk_forward(lambda Y: self.field_A(Y, theta), Z, t, self.config.integrator)
        return self.B_forward(Z, theta, C, t)

    def flat_step_vjp(self, Z_bar, cache):
        """VJP of flat_step: (Z_bar, t_bar, theta_bar, C_bar or None)."""
        if isinstance(cache, RKCache):
            Z_bar, t_bar, g = rk_backward(self.field_A_vjp, Z_bar, cache)
            return Z_bar, t_bar, g["theta"], None
        Z_bar, theta_bar, C_bar, t_bar = self.B_vjp(Z_bar, cache)
        return Z_bar, t_bar, theta_bar, C_bar

    def sub_step(self, kind, Z, theta, C, t):
        """One sub-step A(t) or B(t), normalised as the config says; returns (Z_out, cache).

        Post-norm: A is an RK step of the projected field P_Y f_A(Y) followed by R; B is
        the exact rotation on the manifold (linear, b_flow='exact') or a projected Euler
        step followed by R. Pre-norm: Z + S(R(Z)) - R(Z) for the flat sub-step S.
        """
        cfg = self.config
        if not cfg.normalised:
            return self.flat_step(kind, Z, theta, C, t)
        flat = lambda X: self.flat_step(kind, X, theta, C, t)  # noqa: E731
        if cfg.norm_place == "pre":
            return pre_norm_forward(flat, Z, cfg.norm)
        if kind == "A":
            U, rk = rk_forward(lambda Y: self.projected_field_A(Y, theta), Z, t, cfg.integrator)
            return retract_to(U, cfg.norm), RiemannianRKCache(rk, U)
        if cfg.b_flow == "exact":
            return self.B_forward_manifold(Z, theta, C, t)
        return post_norm_forward(flat, Z, cfg.norm)

    def sub_step_vjp(self, Z_bar, cache):
        """VJP of sub_step: (Z_bar, t_bar, theta_bar, C_bar or None), dispatched on the cache."""
        norm = self.config.norm
        if isinstance(cache, PreNormCache):
            return pre_norm_vjp(self.flat_step_vjp, Z_bar, cache, norm)
        if isinstance(cache, PostNormCache):
            return post_norm_vjp(self.flat_step_vjp, Z_bar, cache, norm)
        if isinstance(cache, RiemannianRKCache):
            U_bar = retract_to_vjp(cache.U, Z_bar, norm)
            Z_bar, t_bar, g = rk_backward(self.projected_field_A_vjp, U_bar, cache.rk)
            return Z_bar, t_bar, g["theta"], None
        if isinstance(cache, SphereLinearBCache):
            return self.B_vjp_manifold(Z_bar, cache)
        return self.flat_step_vjp(Z_bar, cache)

    def projected_field_A(self, Y, theta):
        """The A field on the manifold, P_Y f_A(Y); returns (P_Y f_A(Y), ProjectedFieldCache)."""
        F, inner = self.field_A(Y, theta)
        return project(Y, F, self.config.norm), ProjectedFieldCache(Y, F, inner)

    def projected_field_A_vjp(self, k_bar, cache):
        """VJP of P_Y f_A(Y): the projection's VJP, then the field's. Returns (Y_bar, grads)."""
        Y_bar, F_bar = project_vjp(cache.Y, cache.F, k_bar, self.config.norm)
        Y_field_bar, grads = self.field_A_vjp(F_bar, cache.inner)
        return Y_bar + Y_field_bar, grads


class CrossAttentionBlock(SplitBlock):
    """Block of the linear model N = Z theta^T (eq. 8): cross-attention + label forcing.

    params: 'theta' (m x d), 'h' (0-d, if learn_h), 'W' (m x d) and 'b' (m,) (if
    targets='learned'). Z: n x d, C: n x m.

    With Lie splitting and Euler for A (the transformer block) ``forward`` takes the
    fused eq. (8) path; ``fused=False`` takes the general SplitBlock path instead (the
    readable reference, to which tests/test_fast_path.py compares the fused one).
    """

    def __init__(self, config, fused=True):
        super().__init__(config)
        self.fused = (fused and config.scheme == "lie" and config.integrator == "euler"
                      and not config.normalised)

    def forward(self, Z, params, C=None, out=None):
        """Advance Z by one block; returns (Z_out, cache). C is needed iff targets='labels'.

        ``out``: a buffer for Z_out (used by the fused eq. (8) path).
        """
        if self.fused:
            return self._eq8_forward(Z, params, C, out)
        return super().forward(Z, params, C)

    def backward(self, Z_bar, cache, out=None):
        """VJP of the block: returns (Z_in_bar, grads) with grads keyed like params.

        ``out``: a buffer for Z_in_bar, which must not be Z_bar (fused path only).
        """
        if isinstance(cache, Eq8Cache):
            return self._eq8_backward(Z_bar, cache, out)
        return super().backward(Z_bar, cache)

    # The fused eq. (8) path is the fast one that training runs. The readable one is
    # SplitBlock.forward / backward (one Euler step of the A field by flows.rk_forward,
    # then B_forward; reached with CrossAttentionBlock(config, fused=False)).
    # tests/test_fast_path.py proves that both agree, forward and backward.
    def _eq8_forward(self, Z, params, C, out=None):
        """The transformer block of eq. (8) in one update: Z + h (C - sigma(Z theta^T)) theta.

        Z_half = Z - h CA(Z, theta) and Z_out = Z_half + h C theta share the product
        with theta (B is constant in Z, so its exact and Euler forms agree); a learned
        oracle's scores Z W^T share one product with the attention scores Z theta^T.
        Fast path: SplitBlock.forward is the readable reference (tests/test_fast_path.py).
        """
        cfg = self.config
        xp = get_array_module(Z)
        theta = params["theta"]
        h = cfg.step_size(params)
        m = theta.shape[0]
        keys = None
        if cfg.targets == "learned":
            keys = xp.concatenate([params["W"], theta])  # keys of oracle and attention: 2m x d
            S = Z @ keys.T
            S[:, :m] += params["b"]
            C = softmax(S[:, :m], cfg.heads)
            P = softmax(S[:, m:], cfg.heads)
        else:
            if cfg.uses_labels:
                require_labels(C)
            P = softmax(Z @ theta.T, cfg.heads)
        R = -P if cfg.targets == "none" else C - P
        # h scales the n x m factor, not the n x d product: 1/d of the work
        out = xp.matmul(h * R, theta, out=out)
        out += Z
        return out, Eq8Cache(Z, theta, C, P, R, h, keys)

    def _eq8_backward(self, Z_bar, cache, out=None):
        """VJP of Z_out = Z + h R theta, R = C - P, P = sigma(Z theta^T), C = sigma(Z W^T + b):

            G = Z_bar theta^T,  h_bar = <G, R>,  R_bar = h G
            theta_bar = h R^T Z_bar + S_P_bar^T Z,  S_P_bar = softmax_vjp(P, -R_bar)
            S_C_bar = softmax_vjp(C, R_bar),  W_bar = S_C_bar^T Z,  b_bar = 1^T S_C_bar
            Z_in_bar = Z_bar + S_C_bar W + S_P_bar theta

        Fast path: SplitBlock.backward is the readable reference (tests/test_fast_path.py).
        """
        cfg = self.config
        xp = get_array_module(Z_bar)
        Z, theta, C, P, R, h, keys = cache
        G = Z_bar @ theta.T
        R_bar = h * G
        grads = {"theta": h * (R.T @ Z_bar)}
        if cfg.learn_h:
            grads["h"] = (G * R).sum().reshape(())
        SP_bar = softmax_vjp_heads(P, -R_bar, cfg.heads)
        if keys is None:
            Z_in_bar = xp.matmul(SP_bar, theta, out=out)
            grads["theta"] += SP_bar.T @ Z
        else:
            m = theta.shape[0]
            S_bar = xp.concatenate([softmax_vjp_heads(C, R_bar, cfg.heads), SP_bar], axis=1)
            Z_in_bar = xp.matmul(S_bar, keys, out=out)
            keys_bar = S_bar.T @ Z  # [W_bar; theta_bar part]: one product for both
            grads["W"] = keys_bar[:m]
            grads["theta"] += keys_bar[m:]
            grads["b"] = S_bar[:, :m].sum(axis=0)
        Z_in_bar += Z_bar
        return Z_in_bar, grads

    def theta_of(self, params):
        """The model parameter theta (m x d) from the params dict."""
        return params["theta"]

    def param_grads(self, theta_bar, params):
        """Parameter gradients from theta_bar: {"theta": theta_bar}."""
        return {"theta": theta_bar}

    def field_A(self, Y, theta):
        """A sub-flow -CA(Y, theta); returns (-CA, CrossAttentionCache)."""
        CA, P = cross_attention_forward(Y, theta, self.config.heads)
        return -CA, CrossAttentionCache(Y, theta, P)

    def field_A_vjp(self, k_bar, fcache):
        """VJP of the A vector field -CA(Y, theta): returns (Y_bar, {"theta": theta_bar})."""
        Y, theta, P = fcache
        Y_bar, theta_bar = cross_attention_vjp(Y, theta, P, -k_bar, self.config.heads)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        """B sub-flow Z + t C theta: exact, and identical to one Euler step (B is constant)."""
        C_theta = C @ theta
        return Z + t * C_theta, LinearBCache(theta, C, C_theta, t)

    def B_vjp(self, Z_bar, cache):
        """VJP of Z + t C theta: returns (Z_bar, theta_bar, C_bar, t_bar)."""
        theta, C, C_theta, t = cache
        return Z_bar, t * (C.T @ Z_bar), t * (Z_bar @ theta.T), (Z_bar * C_theta).sum()

    def B_forward_manifold(self, Z, theta, C, t):
        """B on the manifold, exactly: each row rotates toward c = (C theta)_row (sphere.py).

        On the LayerNorm manifold the tangent part of c is that of c - mean(c), so the
        same rotation with the centred forcing solves it.
        """
        F = C @ theta
        if self.config.norm == "layer":
            F = centre(F)
        Y, sphere_cache = linear_B_exact_sphere_forward(Z, F, t)
        return Y, SphereLinearBCache(sphere_cache, theta, C)

    def B_vjp_manifold(self, Z_bar, cache):
        """VJP of B_forward_manifold: (Z_bar, t_bar, theta_bar = C^T F_bar, C_bar = F_bar theta^T)."""
        Z_bar, F_bar, t_bar = linear_B_exact_sphere_vjp(Z_bar, cache.sphere)
        if self.config.norm == "layer":
            F_bar = centre(F_bar)
        return Z_bar, t_bar, cache.C.T @ F_bar, F_bar @ cache.theta.T

    def oracle(self, Z, params):
        """Learned targets C_hat = softmax(Z W^T + b) (per head); returns (C_hat, OracleCache)."""
        C = softmax(Z @ params["W"].T + params["b"], self.config.heads)
        return C, OracleCache(Z, C, None)

    def oracle_vjp(self, C_bar, oracle_cache, params):
        """VJP of C_hat = softmax(Z W^T + b): returns (Z_bar, {"W": ..., "b": ...})."""
        Z, C, _ = oracle_cache
        S_bar = softmax_vjp_heads(C, C_bar, self.config.heads)
        return S_bar @ params["W"], {"W": S_bar.T @ Z, "b": S_bar.sum(axis=0)}


class SelfAttentionBlock(SplitBlock):
    """Block of the quadratic model N = Z theta Z^T, theta = phi phi^T (eq. 10).

    params: 'phi' (d x d, lower-triangular), 'h' (0-d, if learn_h), 'W' (d x d, if
    targets='learned'). Z: (..., n, d), C: (..., n, n).
    """

    def theta_of(self, params):
        """theta = phi phi^T from the params dict."""
        return theta_from_phi(params["phi"])

    def param_grads(self, theta_bar, params):
        """phi_bar = tril((theta_bar + theta_bar^T) phi) from the gradient in theta."""
        return {"phi": phi_grad(theta_bar, params["phi"])}

    def field_A(self, Y, theta):
        """A sub-flow -(SA + SA*)(Y, theta); returns (-(SA + SA*), SelfAttentionCache)."""
        F, P, Y_theta = self_attention_sum_forward(Y, theta)
        return -F, SelfAttentionCache(Y, theta, P, Y_theta)

    def field_A_vjp(self, k_bar, fcache):
        """VJP of the A vector field -(SA + SA*)(Y, theta): returns (Y_bar, {"theta": theta_bar})."""
        Y, theta, P, Y_theta = fcache
        Y_bar, theta_bar = self_attention_sum_vjp(Y, theta, P, Y_theta, -k_bar)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        """B sub-flow dZ/dt = M Z theta, M = C + C^T: exact (eigenbases) or one Euler step."""
        M = C + swap_last(C)
        if self.config.b_flow == "exact":
            return quadratic_B_exact_forward(Z, theta, M, t)
        MZ_theta = M @ Z @ theta
        return Z + t * MZ_theta, QuadraticBEulerCache(Z, theta, M, MZ_theta, t)

    def B_vjp(self, Z_bar, cache):
        """VJP of the B sub-step (exact or Euler): returns (Z_bar, theta_bar, C_bar, t_bar)."""
        if isinstance(cache, QuadraticBCache):
            Z_in_bar, theta_bar, M_bar, t_bar = quadratic_B_exact_vjp(Z_bar, cache)
        else:
            Z, theta, M, MZ_theta, t = cache
            Z_in_bar = Z_bar + t * (swap_last(M) @ Z_bar @ theta.T)
            theta_bar = t * sum_leading(swap_last(M @ Z) @ Z_bar)
            M_bar = t * (Z_bar @ swap_last(Z @ theta))
            t_bar = (Z_bar * MZ_theta).sum()
        return Z_in_bar, theta_bar, M_bar + swap_last(M_bar), t_bar

    def oracle(self, Z, params):
        """Learned targets C_hat = softmax(Z W Z^T): each token picks a token."""
        ZW = Z @ params["W"]
        C = softmax(ZW @ swap_last(Z))
        return C, OracleCache(Z, C, ZW)

    def oracle_vjp(self, C_bar, oracle_cache, params):
        """VJP of C_hat = softmax(Z W Z^T): returns (Z_bar, {"W": W_bar})."""
        Z, C, ZW = oracle_cache
        S_bar = softmax_vjp(C, C_bar)
        Z_bar = S_bar @ Z @ params["W"].T + swap_last(S_bar) @ ZW
        return Z_bar, {"W": sum_leading(swap_last(Z) @ S_bar @ Z)}


class MemoryBlock:
    """Key/value memory block Z + h softmax(Z K^T) V with s learned slots.

    Beyond the theory: keys K and values V (s x d) are separate parameters, where the
    gradient flow ties both to theta. params: 'K', 'V', 'h' (if learn_h).
    """

    def __init__(self, config):
        self.config = config

    def forward(self, Z, params, C=None, out=None):
        """Z + h softmax(Z K^T) V, normalised as the config says; returns (Z_out, cache).

        C is ignored (no label sub-flow). Post-norm: R(Z + h P_Z softmax(Z K^T) V);
        pre-norm: Z + h softmax(R(Z) K^T) V. ``out``: a buffer for Z_out (flat block only).
        """
        cfg = self.config
        if not cfg.normalised:
            return self.flat_forward(Z, params, out)
        step = lambda X: self.flat_forward(X, params)  # noqa: E731
        if cfg.norm_place == "pre":
            return pre_norm_forward(step, Z, cfg.norm)
        return post_norm_forward(step, Z, cfg.norm)

    def backward(self, Z_bar, cache, out=None):
        """VJP of the block: returns (Z_in_bar, grads); ``out`` as in flat_backward."""
        if isinstance(cache, PreNormCache):
            return pre_norm_vjp(self.flat_backward, Z_bar, cache, self.config.norm)
        if isinstance(cache, PostNormCache):
            return post_norm_vjp(self.flat_backward, Z_bar, cache, self.config.norm)
        return self.flat_backward(Z_bar, cache, out)

    def flat_forward(self, Z, params, out=None):
        """Z + h softmax(Z K^T) V; returns (Z_out, MemoryCache). ``out``: a buffer for Z_out."""
        xp = get_array_module(Z)
        h = self.config.step_size(params)
        P = softmax(Z @ params["K"].T)
        out = xp.matmul(h * P, params["V"], out=out)
        out += Z
        return out, MemoryCache(Z, P, h, params)

    def flat_backward(self, Z_bar, cache, out=None):
        """G = Z_bar V^T, P_bar = h G, S_bar = softmax_vjp(P, P_bar),
        Z_bar_in = Z_bar + S_bar K, K_bar = S_bar^T Z, V_bar = h P^T Z_bar, h_bar = <G, P>.

        ``out``: a buffer for Z_bar_in, which must not be Z_bar.
        """
        xp = get_array_module(Z_bar)
        Z, P, h, params = cache
        G = Z_bar @ params["V"].T
        S_bar = softmax_vjp(P, h * G)
        grads = {"K": S_bar.T @ Z, "V": h * (P.T @ Z_bar)}
        if self.config.learn_h:
            grads["h"] = (G * P).sum().reshape(())
        Z_in_bar = xp.matmul(S_bar, params["K"], out=out)
        Z_in_bar += Z_bar
        return Z_in_bar, grads


def make_block(config):
    """The block class for ``config.model``."""
    return {"linear": CrossAttentionBlock, "quadratic": SelfAttentionBlock,
            "memory": MemoryBlock}[config.model](config)


def init_block_params(config, d, m, rng, dtype, with_theta=True, scale=None):
    """Initial parameters of one block on the active backend (host RNG, then moved).

    theta ~ N(0, scale^2) with scale = 1/sqrt(d) (linear); phi = I / d^(1/4) so that
    theta = I / sqrt(d) (quadratic); W ~ N(0, 1/d), b = 0; K, V ~ N(0, 1/d).
    """
    from .backend import array_module

    xp = array_module()
    s = (1.0 / d ** 0.5) if scale is None else scale
    p = {}
    if config.model == "linear":
        if with_theta:
            p["theta"] = xp.asarray(rng.normal(0, s, size=(m, d)), dtype=dtype)
        if config.targets == "learned":
            p["W"] = xp.asarray(rng.normal(0, 1.0 / d ** 0.5, size=(m, d)), dtype=dtype)
            p["b"] = xp.zeros((m,), dtype=dtype)
    elif config.model == "quadratic":
        if with_theta:
            p["phi"] = xp.eye(d, dtype=dtype) / d ** 0.25
        if config.targets == "learned":
            p["W"] = xp.asarray(rng.normal(0, 1.0 / d, size=(d, d)), dtype=dtype)
    else:
        p["K"] = xp.asarray(rng.normal(0, 1.0 / d ** 0.5, size=(config.slots, d)), dtype=dtype)
        p["V"] = xp.asarray(rng.normal(0, 1.0 / d ** 0.5, size=(config.slots, d)), dtype=dtype)
    if config.learn_h:
        p["h"] = xp.asarray(config.h, dtype=dtype)
    return p
