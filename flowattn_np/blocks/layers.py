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
* ``"mlp"``:     the MLP oracle ``C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2)``
  (linear model; ``softmax(M(Z) Z^T)`` with a token-wise MLP ``M`` for the quadratic
  model), evaluated at the input of the B sub-step and held fixed during it. With Lie
  splitting and Euler for A this is the GPT-2 block: attention + residual, then an
  MLP sub-layer + residual that sees the attention's output (module ``mlp``).

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

from flowattn_np.equations.attention import (
    cross_attention_forward,
    cross_attention_vjp,
    self_attention_sum_forward,
    self_attention_sum_vjp,
)
from flowattn_np.backend import check_same_backend, get_array_module
from flowattn_np.equations.integrators import RKCache, get_integrator, rk_backward, rk_forward
from flowattn_np.equations.exact_b import quadratic_B_exact_forward, quadratic_B_exact_vjp
from flowattn_np.equations.mlp import (
    MLP_PARAM_NAMES,
    check_activation,
    init_mlp_param,
    mlp_oracle,
    mlp_oracle_vjp,
    mlp_param_shapes,
    mlp_token_oracle,
    mlp_token_oracle_vjp,
)
from flowattn_np.equations.models import phi_grad, theta_from_phi
from flowattn_np.equations.ops import softmax, softmax_vjp, softmax_vjp_heads, sum_leading, swap_last
from flowattn_np.equations.sphere import (
    SphereBCache,
    centre,
    check_nonzero_rows,
    linear_B_exact_sphere_forward,
    linear_B_exact_sphere_vjp,
    project,
    project_vjp,
    retract_to,
    retract_to_vjp,
)
from flowattn_np.validate import (
    check_array,
    check_count,
    check_same_dtype,
    check_shape,
    check_step,
    linear_inputs,
    quadratic_phi_inputs,
)

MODELS = ("linear", "quadratic", "memory")
SCHEMES = ("lie", "strang")
B_FLOWS = ("exact", "euler")
TARGETS = ("labels", "none", "learned", "mlp")
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
    "mlp": "MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2) at the B sub-step (label-free)",
}


@dataclass(frozen=True)
class BlockConfig:
    r"""What one block computes.

    Parameters
    ----------
    model : str
        ``"linear"`` (cross-attention block, eq. 8), ``"quadratic"`` (self-attention block,
        eq. 10) or ``"memory"`` ($Z+h\,\sigma(ZK^\top)V$ with $s$ learned key/value slots:
        beyond the theory).
    scheme : str
        ``"lie"`` ($\mathcal A_h$ then $\mathcal B_h$) or ``"strang"``
        ($\mathcal A_{h/2}\mathcal B_h\mathcal A_{h/2}$).
    integrator : str
        One-step method for the A sub-flow: ``"euler"`` (the transformer block), ``"heun"``
        (order 2) or ``"rk4"`` (order 4).
    b_flow : str
        ``"exact"`` or ``"euler"`` for the B sub-flow of the quadratic model. The linear
        model's flat B sub-flow $Z+tC\theta$ is exact in one Euler step, so only ``"exact"``
        is accepted there, except in a post-norm block, where ``"exact"`` is the rotation on
        the manifold and ``"euler"`` its Euler step followed by $R$. A post-norm quadratic
        block takes ``"euler"`` (no exact form on a manifold).
    targets : str
        Source of $C$: ``"labels"``, ``"none"``, ``"learned"`` or ``"mlp"`` (see the module
        docstring).
    h : float
        The step (its initial value when ``learn_h``).
    learn_h : bool
        Whether $h$ is a trained parameter.
    heads : tuple of int, optional
        Class counts per head (linear model): one softmax per head.
    slots : int
        Number of key/value slots $s$ of a ``"memory"`` block.
    norm : str
        ``"none"`` (flat blocks), ``"sphere"`` (rows held on $\lVert z\rVert=\sqrt d$: RMS
        normalisation) or ``"layer"`` (LayerNorm: mean 0, $\lVert z\rVert=\sqrt d$).
    norm_place : str
        ``"post"``: every sub-step is a step of the projected field followed by the
        retraction $R$ (the Riemannian reading; the linear B sub-step is the exact rotation
        on the manifold); ``"pre"``: $Z+\text{step}(R(Z))$, the GPT-2 layout, a variant that
        is not a flow on the manifold.
    mlp_hidden : int
        Hidden width $k$ of the MLP oracle (``targets="mlp"``).
    activation : str
        The MLP oracle's activation, ``"gelu"`` (tanh form) or ``"relu"``.
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
    mlp_hidden: int = 0
    activation: str = "gelu"

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
        object.__setattr__(self, "slots", check_count("slots", self.slots))
        if self.model == "memory":
            if self.targets != "none":
                raise ValueError("targets: a 'memory' block has no label sub-flow; use targets='none'")
            if self.slots < 1:
                raise ValueError(f"slots: a 'memory' block needs slots >= 1, got {self.slots}")
        check_activation(self.activation)
        if self.targets == "mlp" and int(self.mlp_hidden) < 1:
            raise ValueError(f"mlp_hidden: targets='mlp' needs a hidden width >= 1, got {self.mlp_hidden}")
        if self.targets != "mlp" and self.mlp_hidden:
            raise ValueError(f"mlp_hidden: only used with targets='mlp' (targets={self.targets!r}); "
                             "leave it 0")
        if self.heads is not None:
            if self.model != "linear":
                raise ValueError("heads: multi-head labels are defined for the linear model only")
            sizes = tuple(self.heads) if hasattr(self.heads, "__iter__") else ()
            if not sizes:
                raise TypeError(f"heads: expected a tuple of class counts, one per head, "
                                f"got {self.heads!r}")
            object.__setattr__(self, "heads", tuple(check_count("heads", s, minimum=1)
                                                    for s in sizes))

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
        source = TARGET_TITLES[self.targets]
        if self.targets == "mlp":
            source += f", k = {self.mlp_hidden} hidden units, {self.activation}"
        return (f"{kind} block, {self.scheme.capitalize()} splitting, A by {self.integrator}{b}, "
                f"{step}; targets: {source}{norm}")


def check_block_backends(Z, params, C=None):
    """BackendError naming the argument if Z, C and the parameters mix NumPy and CuPy
    arrays (types only: no device sync)."""
    named = {f"params[{k!r}]": v for k, v in params.items()} if isinstance(params, dict) else {}
    check_same_backend(Z=Z, C=C, **named)  # params of the wrong type: check_block_params says so


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


def _add_grads(total, grads):
    """total += grads, key by key (a parameter used twice: its gradients add up)."""
    for k, v in grads.items():
        total[k] = v if k not in total else total[k] + v


# ---------------------------------------------------------------- caches
# What each forward keeps for its backward, as named tuples a student can print.


class SubStep(NamedTuple):
    """One sub-step of a split block: its fraction of h and its cache (an RKCache for
    the A sub-flow, a B cache for the label sub-flow)."""

    fraction: float
    cache: Any


class SplitCache(NamedTuple):
    r"""Cache of `SplitBlock.forward`: params, $\theta$, the targets $C$, the oracle's cache (``targets="learned"``, else None) and the sub-steps in the order they ran.
    """

    params: dict
    theta: Any
    C: Any
    oracle_cache: Any
    steps: tuple


class CrossAttentionCache(NamedTuple):
    r"""Cache of the linear A field at a stage $Y$: $\theta$ and $P=\sigma(Y\theta^\top)$."""

    Y: Any
    theta: Any
    P: Any


class SelfAttentionCache(NamedTuple):
    r"""Cache of the quadratic A field at a stage $Y$: $\theta$, $P=\sigma(Y\theta Y^\top)$ and $Y\theta$."""

    Y: Any
    theta: Any
    P: Any
    Y_theta: Any


class LinearBCache(NamedTuple):
    r"""Cache of the linear B sub-flow $Z+tC\theta$."""

    theta: Any
    C: Any
    C_theta: Any
    t: Any


class QuadraticBEulerCache(NamedTuple):
    r"""Cache of one Euler step $Z+tMZ\theta$ of the quadratic B sub-flow, $M=C+C^\top$."""

    Z: Any
    theta: Any
    M: Any
    MZ_theta: Any
    t: Any


class OracleCache(NamedTuple):
    r"""Cache of a learned oracle: its input $Z$, its output $\hat C$, and $ZW$ (quadratic) or None."""

    Z: Any
    C: Any
    ZW: Any


class MLPBCache(NamedTuple):
    """Cache of a B sub-step with the MLP oracle (targets='mlp'): the B sub-flow's cache
    and the oracle's MLPCache, evaluated at the sub-step's input."""

    B: Any
    oracle: Any


class MemoryCache(NamedTuple):
    r"""Cache of the memory block: input $Z$, $P=\sigma(ZK^\top)$, the step $h$, the params."""

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

    fast = False  # the readable reference (blocks/implementations.py)

    def __init__(self, config):
        self.config = config

    # -- forward --------------------------------------------------------------
    def forward(self, Z, params, C=None, out=None, check=True):
        """Advance $Z$ by one block.

        Parameters
        ----------
        Z : array
            Features.
        params : dict
            The block's parameters (see the class).
        C : array, optional
            Targets; needed if and only if ``targets="labels"``.
        out : array, optional
            A buffer for the output (a hint for the fused paths; this general path ignores it).
        check : bool
            Validate ``Z``, ``params`` and ``C`` first (`check_inputs`); False on the training
            path, whose inputs were validated once.

        Returns
        -------
        Z_out : array
            Of the shape of ``Z``.
        cache
            What `backward` needs.
        """
        if check:
            self.check_inputs(Z, params, C)
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
            Z, c = self.sub_step(kind, Z, theta, C, h * frac, params)
            steps.append(SubStep(frac, c))
        return Z, SplitCache(params, theta, C, oracle_cache, tuple(steps))

    # -- backward -------------------------------------------------------------
    def backward(self, Z_bar, cache, out=None):
        """Vector-Jacobian product of the block.

        Parameters
        ----------
        Z_bar : array
            Upstream gradient, of the shape of the block's output.
        cache
            From `forward`.
        out : array, optional
            A buffer for ``Z_in_bar`` (ignored by this general path).

        Returns
        -------
        Z_in_bar : array
            Gradient in the input $Z$.
        grads : dict
            Gradients keyed like the block's params.
        """
        cfg = self.config
        xp = get_array_module(Z_bar)
        theta_bar = xp.zeros_like(cache.theta)
        h_bar = 0.0
        C_bar = None
        mlp_grads = {}
        for step in reversed(cache.steps):
            Z_bar, t_bar, step_theta_bar, step_C_bar, g = self.sub_step_vjp(Z_bar, step.cache)
            theta_bar = theta_bar + step_theta_bar
            if step_C_bar is not None:
                C_bar = step_C_bar if C_bar is None else C_bar + step_C_bar
            _add_grads(mlp_grads, g)
            h_bar = h_bar + step.fraction * t_bar
        grads = self.param_grads(theta_bar, cache.params)
        grads.update(mlp_grads)
        if cfg.learn_h:
            grads["h"] = xp.asarray(h_bar, dtype=Z_bar.dtype).reshape(())
        if cfg.targets == "learned":
            Z_extra, oracle_grads = self.oracle_vjp(C_bar, cache.oracle_cache, cache.params)
            Z_bar = Z_bar + Z_extra
            grads.update(oracle_grads)
        return Z_bar, grads

    # -- the B sub-step with the MLP oracle -----------------------------------
    def mlp_B_step(self, Z, theta, params, t, B_forward=None):
        """B(t) with C = C_hat(Z), the MLP oracle at the sub-step's input, held fixed during
        it; B_forward is the flat B sub-flow (one Euler step of dZ/dt = C_hat(Z) theta, the
        default) or its exact rotation on the manifold. Returns (Z_out, MLPBCache)."""
        C, oracle_cache = self.mlp_oracle(Z, params)
        Z_out, B_cache = (B_forward or self.B_forward)(Z, theta, C, t)
        return Z_out, MLPBCache(B_cache, oracle_cache)

    def mlp_B_step_vjp(self, Z_out_bar, cache):
        """VJP of mlp_B_step: B's VJP gives C_bar, the oracle's VJP turns it into a second
        gradient at Z and the MLP's grads. Returns (Z_bar, theta_bar, t_bar, mlp_grads)."""
        if isinstance(cache.B, SphereLinearBCache):  # C enters the rotation on the manifold
            Z_bar, t_bar, theta_bar, C_bar = self.B_vjp_manifold(Z_out_bar, cache.B)
        else:
            Z_bar, theta_bar, C_bar, t_bar = self.B_vjp(Z_out_bar, cache.B)
        Z_extra, mlp_grads = self.mlp_oracle_vjp(C_bar, cache.oracle)
        return Z_bar + Z_extra, theta_bar, t_bar, mlp_grads

    # -- sub-steps ------------------------------------------------------------
    def flat_step(self, kind, Z, theta, C, t, params=None):
        """The flat sub-step: an RK step of the A field ('A') or the B sub-flow ('B') over
        time t; with targets='mlp' B evaluates the MLP oracle at this Z (params holds it)."""
        if kind == "A":
            return rk_forward(lambda Y: self.field_A(Y, theta), Z, t, self.config.integrator)
        if self.config.targets == "mlp":
            return self.mlp_B_step(Z, theta, params, t)
        return self.B_forward(Z, theta, C, t)

    def flat_step_vjp(self, Z_bar, cache):
        """VJP of flat_step: (Z_bar, t_bar, theta_bar, C_bar or None, MLP oracle grads or {})."""
        if isinstance(cache, RKCache):
            Z_bar, t_bar, g = rk_backward(self.field_A_vjp, Z_bar, cache)
            return Z_bar, t_bar, g["theta"], None, {}
        if isinstance(cache, MLPBCache):
            Z_bar, theta_bar, t_bar, g = self.mlp_B_step_vjp(Z_bar, cache)
            return Z_bar, t_bar, theta_bar, None, g
        Z_bar, theta_bar, C_bar, t_bar = self.B_vjp(Z_bar, cache)
        return Z_bar, t_bar, theta_bar, C_bar, {}

    def sub_step(self, kind, Z, theta, C, t, params=None):
        """One sub-step A(t) or B(t), normalised as the config says; returns (Z_out, cache).

        Post-norm: A is an RK step of the projected field P_Y f_A(Y) followed by R; B is
        the exact rotation on the manifold (linear, b_flow='exact') or a projected Euler
        step followed by R. Pre-norm: Z + S(R(Z)) - R(Z) for the flat sub-step S. The MLP
        oracle (targets='mlp') is evaluated at the B sub-step's input: R(Z) pre-norm (as
        GPT-2's MLP sees ln_2(x)), the current on-manifold Z post-norm.
        """
        cfg = self.config
        if not cfg.normalised:
            return self.flat_step(kind, Z, theta, C, t, params)
        flat = lambda X: self.flat_step(kind, X, theta, C, t, params)  # noqa: E731
        if cfg.norm_place == "pre":
            return pre_norm_forward(flat, Z, cfg.norm)
        if kind == "A":
            U, rk = rk_forward(lambda Y: self.projected_field_A(Y, theta), Z, t, cfg.integrator)
            return retract_to(U, cfg.norm), RiemannianRKCache(rk, U)
        if cfg.b_flow == "exact" and cfg.targets == "mlp":
            return self.mlp_B_step(Z, theta, params, t, self.B_forward_manifold)
        if cfg.b_flow == "exact":
            return self.B_forward_manifold(Z, theta, C, t)
        return post_norm_forward(flat, Z, cfg.norm)

    def sub_step_vjp(self, Z_bar, cache):
        """VJP of sub_step: (Z_bar, t_bar, theta_bar, C_bar or None, MLP oracle grads or {}),
        dispatched on the cache."""
        norm = self.config.norm
        if isinstance(cache, PreNormCache):
            return pre_norm_vjp(self.flat_step_vjp, Z_bar, cache, norm)
        if isinstance(cache, PostNormCache):
            return post_norm_vjp(self.flat_step_vjp, Z_bar, cache, norm)
        if isinstance(cache, RiemannianRKCache):
            U_bar = retract_to_vjp(cache.U, Z_bar, norm)
            Z_bar, t_bar, g = rk_backward(self.projected_field_A_vjp, U_bar, cache.rk)
            return Z_bar, t_bar, g["theta"], None, {}
        if isinstance(cache, SphereLinearBCache):
            return (*self.B_vjp_manifold(Z_bar, cache), {})
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
    r"""Block of the linear model $N=Z\theta^\top$ (eq. 8): cross-attention and label forcing.

    $$
    Z_{l+\frac12}=Z_l-h\operatorname{CA}(Z_l,\theta),\qquad Z_{l+1}=Z_{l+\frac12}+h\,C\theta
    $$

    Params: ``"theta"`` (m, d); ``"h"`` (0-d, if ``learn_h``); ``"W"`` (m, d) and ``"b"``
    (m,) if ``targets="learned"``; ``"W1"`` (k, d), ``"b1"`` (k,), ``"W2"`` (m, k), ``"b2"``
    (m,) if ``targets="mlp"``. Shapes: $Z$ (n, d), $C$ (n, m).

    This is the readable block; the fused eq. (8) block (fast/eq8.py) computes the same for
    Lie splitting with one Euler step for A, and `make_block` chooses it there.
    """

    def check_inputs(self, Z, params, C=None):
        """Validate Z (n x d), params (shapes of ``block_param_shapes``) and C (n x m)."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, ndim=2)
        theta = check_block_params(self.config, params, Z, m=None)
        if self.config.uses_labels:
            require_labels(C)
        linear_inputs(Z, theta, C if self.config.uses_labels else None, self.config.heads)

    def theta_of(self, params):
        r"""The model parameter $\theta$, shape (m, d), from the params dict."""
        return params["theta"]

    def param_grads(self, theta_bar, params):
        r"""Parameter gradients from $\bar\theta$: ``{"theta": theta_bar}``."""
        return {"theta": theta_bar}

    def field_A(self, Y, theta):
        r"""A sub-flow field $-\operatorname{CA}(Y,\theta)$; returns ``(-CA, CrossAttentionCache)``."""
        CA, P = cross_attention_forward(Y, theta, self.config.heads)
        return -CA, CrossAttentionCache(Y, theta, P)

    def field_A_vjp(self, k_bar, fcache):
        r"""VJP of the A field $-\operatorname{CA}(Y,\theta)$: returns ``(Y_bar, {"theta": theta_bar})``."""
        Y, theta, P = fcache
        Y_bar, theta_bar = cross_attention_vjp(Y, theta, P, -k_bar, self.config.heads)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        r"""B sub-flow $Z+tC\theta$: exact, and identical to one Euler step (B is constant in $Z$)."""
        C_theta = C @ theta
        return Z + t * C_theta, LinearBCache(theta, C, C_theta, t)

    def B_vjp(self, Z_bar, cache):
        r"""VJP of $Z+tC\theta$: returns ``(Z_bar, theta_bar, C_bar, t_bar)``."""
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
        r"""Learned targets $\hat C=\sigma(ZW^\top+b)$ (per head); returns ``(C_hat, OracleCache)``."""
        C = softmax(Z @ params["W"].T + params["b"], self.config.heads)
        return C, OracleCache(Z, C, None)

    def oracle_vjp(self, C_bar, oracle_cache, params):
        r"""VJP of $\hat C=\sigma(ZW^\top+b)$: returns ``(Z_bar, {"W": W_bar, "b": b_bar})``."""
        Z, C, _ = oracle_cache
        S_bar = softmax_vjp_heads(C, C_bar, self.config.heads)
        return S_bar @ params["W"], {"W": S_bar.T @ Z, "b": S_bar.sum(axis=0)}

    def mlp_oracle(self, Z, params):
        """MLP targets C_hat = softmax(act(Z W1^T + b1) W2^T + b2) (per head); (C, MLPCache)."""
        cfg = self.config
        return mlp_oracle(Z, params["W1"], params["b1"], params["W2"], params["b2"],
                          cfg.activation, cfg.heads, check=False)

    def mlp_oracle_vjp(self, C_bar, cache):
        """VJP of the MLP oracle: (Z_bar, {"W1", "b1", "W2", "b2"})."""
        return mlp_oracle_vjp(C_bar, cache)


class SelfAttentionBlock(SplitBlock):
    r"""Block of the quadratic model $N=Z\theta Z^\top$, $\theta=\phi\phi^\top$ (eq. 10).

    $$
    Z_{l+\frac12}=Z_l-h\big(\operatorname{SA}+\operatorname{SA}^*\big)(Z_l,\theta),\qquad
    Z_{l+1}=\text{B sub-flow of } \tfrac{dZ}{dt}=(C+C^\top)Z\theta \text{ over time } h
    $$

    Params: ``"phi"`` (d, d), lower-triangular; ``"h"`` (0-d, if ``learn_h``); ``"W"``
    (d, d) if ``targets="learned"``; ``"W1"`` (k, d), ``"b1"`` (k,), ``"W2"`` (d, k), ``"b2"``
    (d,) if ``targets="mlp"``. Shapes: $Z$ (..., n, d), $C$ (..., n, n).
    """

    def theta_of(self, params):
        r"""$\theta=\phi\phi^\top$, shape (d, d), from the params dict."""
        return theta_from_phi(params["phi"], check=False)  # checked by check_inputs, or trusted

    def check_inputs(self, Z, params, C=None):
        """Validate Z ((..., n, d)), params (phi lower-triangular d x d, ...) and C ((..., n, n))."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, min_ndim=2)
        check_block_params(self.config, params, Z, m=None)
        if self.config.uses_labels:
            require_labels(C)
        quadratic_phi_inputs(Z, params["phi"], C if self.config.uses_labels else None)

    def param_grads(self, theta_bar, params):
        r"""$\bar\phi=\operatorname{tril}\big((\bar\theta+\bar\theta^\top)\phi\big)$ from the gradient in $\theta$.
        """
        return {"phi": phi_grad(theta_bar, params["phi"])}

    def field_A(self, Y, theta):
        r"""A sub-flow field $-(\operatorname{SA}+\operatorname{SA}^*)(Y,\theta)$; returns it with a ``SelfAttentionCache``.
        """
        F, P, Y_theta = self_attention_sum_forward(Y, theta)
        return -F, SelfAttentionCache(Y, theta, P, Y_theta)

    def field_A_vjp(self, k_bar, fcache):
        r"""VJP of the A field $-(\operatorname{SA}+\operatorname{SA}^*)(Y,\theta)$: returns ``(Y_bar, {"theta": theta_bar})``.
        """
        Y, theta, P, Y_theta = fcache
        Y_bar, theta_bar = self_attention_sum_vjp(Y, theta, P, Y_theta, -k_bar)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        r"""B sub-flow $dZ/dt=MZ\theta$, $M=C+C^\top$, over time $t$: exact (`flows.quadratic_B_exact_forward`) or one Euler step."""
        M = C + swap_last(C)
        if self.config.b_flow == "exact":
            return quadratic_B_exact_forward(Z, theta, M, t)
        MZ_theta = M @ Z @ theta
        return Z + t * MZ_theta, QuadraticBEulerCache(Z, theta, M, MZ_theta, t)

    def B_vjp(self, Z_bar, cache):
        """VJP of the B sub-step (exact or Euler): returns ``(Z_bar, theta_bar, C_bar, t_bar)``."""
        if not isinstance(cache, QuadraticBEulerCache):
            Z_in_bar, theta_bar, M_bar, t_bar = quadratic_B_exact_vjp(Z_bar, cache)
        else:
            Z, theta, M, MZ_theta, t = cache
            Z_in_bar = Z_bar + t * (swap_last(M) @ Z_bar @ theta.T)
            theta_bar = t * sum_leading(swap_last(M @ Z) @ Z_bar)
            M_bar = t * (Z_bar @ swap_last(Z @ theta))
            t_bar = (Z_bar * MZ_theta).sum()
        return Z_in_bar, theta_bar, M_bar + swap_last(M_bar), t_bar

    def oracle(self, Z, params):
        r"""Learned targets $\hat C=\sigma(ZWZ^\top)$: each token picks a token."""
        ZW = Z @ params["W"]
        C = softmax(ZW @ swap_last(Z))
        return C, OracleCache(Z, C, ZW)

    def oracle_vjp(self, C_bar, oracle_cache, params):
        r"""VJP of $\hat C=\sigma(ZWZ^\top)$: returns ``(Z_bar, {"W": W_bar})``."""
        Z, C, ZW = oracle_cache
        S_bar = softmax_vjp(C, C_bar)
        Z_bar = S_bar @ Z @ params["W"].T + swap_last(S_bar) @ ZW
        return Z_bar, {"W": sum_leading(swap_last(Z) @ S_bar @ Z)}

    def mlp_oracle(self, Z, params):
        """Token targets C_hat = softmax(M(Z) Z^T), M a token-wise MLP (d -> k -> d)."""
        return mlp_token_oracle(Z, params["W1"], params["b1"], params["W2"], params["b2"],
                                self.config.activation)

    def mlp_oracle_vjp(self, C_bar, cache):
        """VJP of the token MLP oracle: (Z_bar, {"W1", "b1", "W2", "b2"})."""
        return mlp_token_oracle_vjp(C_bar, cache)


class MemoryBlock:
    r"""Key/value memory block with $s$ learned slots, beyond the theory.

    $$
    Z_{\text{out}}=Z+h\,\sigma(ZK^\top)\,V
    $$

    Keys $K$ and values $V$, each (s, d), are separate parameters, where the gradient flow
    ties both to $\theta$. Params: ``"K"``, ``"V"``, ``"h"`` (if ``learn_h``).
    """

    fast = False

    def __init__(self, config):
        self.config = config

    def forward(self, Z, params, C=None, out=None, check=True):
        r"""$Z+h\,\sigma(ZK^\top)V$, normalised as the config says.

        Post-norm: $R\big(Z+h\,P_Z\,\sigma(ZK^\top)V\big)$; pre-norm: $Z+h\,\sigma(R(Z)K^\top)V$.

        Parameters
        ----------
        Z : array, shape (n, d)
            Features.
        params : dict
            ``"K"``, ``"V"`` (s, d) and ``"h"`` if learned.
        C : array, optional
            Ignored: no label sub-flow.
        out : array, optional
            A buffer for the output (flat block only).
        check : bool
            Validate ``Z``, ``params`` and ``C`` first (`check_inputs`); False on the training
            path, whose inputs were validated once.

        Returns
        -------
        Z_out : array, shape (n, d)
        cache : MemoryCache
        """
        if check:
            self.check_inputs(Z, params, C)
        cfg = self.config
        if not cfg.normalised:
            return self.flat_forward(Z, params, out)
        step = lambda X: self.flat_forward(X, params)  # noqa: E731
        if cfg.norm_place == "pre":
            return pre_norm_forward(step, Z, cfg.norm)
        return post_norm_forward(step, Z, cfg.norm)

    def backward(self, Z_bar, cache, out=None):
        r"""Vector-Jacobian product of the memory block.

        $$
        G=\bar ZV^\top,\quad \bar P=hG,\quad \bar S=P\odot(\bar P-\operatorname{rowsum}(P\odot\bar P)),\quad
        \bar Z_{\text{in}}=\bar Z+\bar SK,\quad \bar K=\bar S^\top Z,\quad \bar V=hP^\top\bar Z,\quad \bar h=\langle G,P\rangle
        $$

        Parameters
        ----------
        Z_bar : array, shape (n, d)
            Upstream gradient.
        cache : MemoryCache
            From `forward`.
        out : array, optional
            A buffer for ``Z_bar_in``; must not be ``Z_bar``.

        Returns
        -------
        Z_bar_in : array, shape (n, d)
        grads : dict
            ``"K"``, ``"V"`` and ``"h"`` if learned.
        """
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


    def check_inputs(self, Z, params, C=None):
        """Validate Z (n x d) and params (K, V: s x d; h when learned)."""
        check_block_backends(Z, params, C)  # first: from types alone, no device sync
        check_array("Z", Z, ndim=2)
        check_block_params(self.config, params, Z, m=None)


def make_block(config):
    """The block for ``config.model``.

    Parameters
    ----------
    config : BlockConfig
        What the block computes.

    Returns
    -------
    CrossAttentionBlock or SelfAttentionBlock or MemoryBlock
    """
    return {"linear": CrossAttentionBlock, "quadratic": SelfAttentionBlock,
            "memory": MemoryBlock}[config.model](config)


def block_param_shapes(config, d, m, with_theta=True):
    """Names and shapes of one block's parameters, in the order they are drawn.

    d: feature width, m: classes (linear model). theta (m x d) or phi (d x d) is left
    out with ``with_theta=False`` (a tied network shares the head's).
    """
    shapes = {}
    if config.model == "linear":
        if with_theta:
            shapes["theta"] = (m, d)
        if config.targets == "learned":
            shapes["W"], shapes["b"] = (m, d), (m,)
        if config.targets == "mlp":
            shapes.update(mlp_param_shapes(d, config.mlp_hidden, m))
    elif config.model == "quadratic":
        if with_theta:
            shapes["phi"] = (d, d)
        if config.targets == "learned":
            shapes["W"] = (d, d)
        if config.targets == "mlp":  # the token MLP maps d -> k -> d
            shapes.update(mlp_param_shapes(d, config.mlp_hidden, d))
    else:
        shapes["K"] = shapes["V"] = (config.slots, d)
    if config.learn_h:
        shapes["h"] = ()
    return shapes


def check_block_params(config, params, Z, m=None):
    """Every parameter ``block_param_shapes`` lists: present, finite, of Z's dtype and the
    right shape (d from Z; m from theta when not given). Returns theta or phi (or None)."""
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    d = Z.shape[-1]
    key = "phi" if config.model == "quadratic" else "theta"
    if m is None:
        theta = params.get(key)
        m = theta.shape[0] if config.model == "linear" and getattr(theta, "ndim", 0) >= 1 else 0
    for name, shape in block_param_shapes(config, d, m).items():
        if name not in params:
            raise ValueError(f"params: missing {name!r} (this block needs "
                             f"{', '.join(block_param_shapes(config, d, m))})")
        label = f"params['{name}']"
        check_array(label, params[name], ndim=len(shape))
        check_shape(label, params[name], shape, f"from d = {d} features" + (
            f" and m = {m} classes" if config.model == "linear" else ""))
        check_same_dtype(Z=Z, **{label: params[name]})
    if config.normalised:  # the retraction needs a direction in every row
        check_nonzero_rows("Z", Z, centred=config.norm == "layer", what="a normalised block")
    return params.get(key)


def init_block_param(config, name, shape, d, rng, dtype, scale=None):
    """Initial value of one block parameter on the active backend (host RNG, then moved).

    theta ~ N(0, scale^2) with scale = 1/sqrt(d) (linear); phi = I / d^(1/4) so that
    theta = I / sqrt(d) (quadratic); W ~ N(0, 1/d) (linear) or N(0, 1/d^2) entries
    (quadratic), b = 0; K, V ~ N(0, 1/d); h = config.h; the MLP oracle's W1, b1, W2, b2
    by ``mlp.init_mlp_param``.
    """
    from flowattn_np.backend import array_module

    xp = array_module()
    if name == "h":
        return xp.asarray(config.h, dtype=dtype)
    if name == "b":
        return xp.zeros(shape, dtype=dtype)
    if name == "phi":
        return xp.eye(d, dtype=dtype) / d ** 0.25
    if name in MLP_PARAM_NAMES:
        return init_mlp_param(name, shape, rng, dtype)
    std = 1.0 / d ** 0.5  # theta (unless scale is given), W of the linear model, K, V
    if name == "theta" and scale is not None:
        std = scale
    elif name == "W" and config.model == "quadratic":
        std = 1.0 / d
    return xp.asarray(rng.normal(0, std, size=shape), dtype=dtype)


def init_block_params(config, d, m, rng, dtype, with_theta=True, scale=None):
    r"""Initial parameters of one block on the active backend (host RNG, then moved).

    $\theta\sim\mathcal N(0,\text{scale}^2)$ with scale $=1/\sqrt d$ (linear);
    $\phi=I/d^{1/4}$ so that $\theta=I/\sqrt d$ (quadratic); $W\sim\mathcal N(0,1/d)$, $b=0$;
    $K,V\sim\mathcal N(0,1/d)$.

    Parameters
    ----------
    config : BlockConfig
        The block.
    d : int
        Feature dimension.
    m : int
        Number of classes.
    rng : numpy.random.Generator
        Host random generator.
    dtype : str or dtype
        Floating dtype of the parameters.
    with_theta : bool
        Include $\theta$ (False when the network ties it to the head).
    scale : float, optional
        Standard deviation of $\theta$; $1/\sqrt d$ by default.

    Returns
    -------
    dict
        The params, keyed as the block expects.
    """
    return {name: init_block_param(config, name, shape, d, rng, dtype, scale)
            for name, shape in block_param_shapes(config, d, m, with_theta).items()}
