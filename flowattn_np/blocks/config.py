"""What one block computes (`BlockConfig`) and the checks every block shares.

The source of the targets (``targets``) is looked up in the registry of ``sources``; the
other fields are names from the tuples below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flowattn_np.backend import check_same_backend
from flowattn_np.blocks.sources import TARGET_TITLES, TARGETS, get_source
from flowattn_np.equations.integrators import get_integrator
from flowattn_np.equations.mlp import check_activation
from flowattn_np.validate import check_count, check_step

MODELS = ("linear", "quadratic", "memory")
SCHEMES = ("lie", "strang")
B_FLOWS = ("exact", "euler")
NORMS = ("none", "sphere", "layer")
NORM_PLACES = ("post", "pre")

NORM_TITLES = {
    ("sphere", "post"): "post-norm on the sphere |z| = sqrt(d): R(Z + step), a flow on the sphere",
    ("layer", "post"): "post-norm on the LayerNorm manifold {mean 0, |z| = sqrt(d)}: R(Z + step), "
                       "a flow on that manifold",
    ("sphere", "pre"): "pre-norm on the sphere: Z + step(R(Z)), a variant that is NOT a flow on the sphere",
    ("layer", "pre"): "pre-norm LayerNorm: Z + step(R(Z)), a variant that is NOT a flow on the manifold",
}

__all__ = ["B_FLOWS", "MODELS", "NORMS", "NORM_PLACES", "NORM_TITLES", "SCHEMES", "TARGETS",
           "TARGET_TITLES", "BlockConfig", "check_block_backends", "require_labels"]


@dataclass(frozen=True)
class BlockConfig:
    r"""What one block computes.

    Parameters
    ----------
    model : str
        ``"linear"`` (cross-attention block; eq. (8) with Lie splitting and Euler for A),
        ``"quadratic"`` (self-attention block; eq. (10) with Lie, Euler for A and
        ``b_flow="euler"``) or ``"memory"`` ($Z+h\,\sigma(ZK^\top)V$ with $s$ learned key/value slots:
        beyond the theory).
    scheme : str
        ``"lie"`` ($\mathcal A_h$ then $\mathcal B_h$) or ``"strang"``
        ($\mathcal A_{h/2}\mathcal B_h\mathcal A_{h/2}$).
    integrator : str
        One-step method for the A sub-flow: ``"euler"`` (the transformer block), ``"heun"``
        (order 2) or ``"rk4"`` (order 4).
    b_flow : str
        ``"exact"`` (the exact B sub-flow, the default) or ``"euler"`` (one Euler step of it,
        the second line of eq. (10)) for the B sub-flow of the quadratic model. The linear
        model's flat B sub-flow $Z+tC\theta$ is exact in one Euler step, so only ``"exact"``
        is accepted there, except in a post-norm block, where ``"exact"`` is the rotation on
        the manifold and ``"euler"`` its Euler step followed by $R$. A post-norm quadratic
        block takes ``"euler"`` (no exact form on a manifold).
    targets : str
        Source of $C$, a name in the registry of ``sources``: ``"labels"``, ``"none"``,
        ``"learned"``, ``"mlp"`` or one added by ``register_source``.
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
                               ("targets", tuple(TARGETS)), ("norm", NORMS), ("norm_place", NORM_PLACES)):
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
        source = self.source
        if self.model == "memory" and source.where != "none":
            raise ValueError("targets: a 'memory' block has no label sub-flow; use targets='none'")
        if self.model not in source.models:
            raise ValueError(f"targets: {self.targets!r} is defined for the "
                             f"{' and '.join(source.models)} model, not {self.model!r}")
        if self.model == "memory" and self.slots < 1:
            raise ValueError(f"slots: a 'memory' block needs slots >= 1, got {self.slots}")
        check_activation(self.activation)
        source.check(self)
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
        if self.model == "quadratic" and post and self.has_B and self.b_flow == "exact":
            raise ValueError("b_flow: the quadratic B sub-flow has no exact solution on the manifold; "
                             "a post-norm quadratic block takes b_flow='euler' (an Euler step, then R)")

    def replace(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def step_size(self, params):
        """The step h of a block: the trained params['h'] when learn_h, else the fixed h."""
        return params["h"] if self.learn_h else self.h

    @property
    def source(self):
        """The label source named by ``targets`` (from the registry of ``sources``)."""
        return get_source(self.targets)

    @property
    def fused_keys(self):
        """Names of the source's score parameters when C = softmax(Z W^T + b) (linear) or
        softmax(Z W Z^T) (quadratic), for a fused path to share one product; else None."""
        return self.source.fused_keys(self)

    @property
    def uses_labels(self):
        """Whether the block needs C passed in (a source evaluated "given": the true labels)."""
        return self.source.where == "given"

    @property
    def has_B(self):
        """Whether the block has a B sub-flow (a source of targets other than "none")."""
        return self.source.where != "none"

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
        b = f", B {self.b_flow}" if self.has_B else ""
        if self.normalised and self.norm_place == "post" and self.has_B:
            b = ", B exact (a rotation on the manifold)" if self.b_flow == "exact" else ", B euler + R"
        source = self.source.describe(self)
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
