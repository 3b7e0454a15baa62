r"""The split-flow block as the paper writes it: one step $h$ of the split gradient flow.

    Lie:     Z_out = B(h) o A(h) (Z)                 flows.lie_step(A, B, Z, h)
    Strang:  Z_out = A(h/2) o B(h) o A(h/2) (Z)      flows.strang_step(A, B, Z, h)

A is the attention sub-flow (one explicit Runge-Kutta step), B the label sub-flow with
targets $C$ from the block's label source. ``forward`` runs exactly that line with A and
B sub-steps that record their caches on a tape; ``backward`` walks the tape in reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from flowattn_np.backend import get_array_module
from flowattn_np.blocks.config import require_labels
from flowattn_np.blocks.normalisation import normalised, post_norm, pre_norm, riemannian_rk
from flowattn_np.blocks.protocol import Grads, SubStep, TapeEntry, add_grads, add_optional, copy_into
from flowattn_np.equations.flows import lie_step, strang_step
from flowattn_np.equations.integrators import rk_backward, rk_forward

SPLITTINGS = {"lie": lie_step, "strang": strang_step}
"""The splitting of one block step by ``BlockConfig.scheme``: ``step(A, B, Z, h)``."""


class BlockCache(NamedTuple):
    r"""Cache of a split block: its params, $\theta$, the targets $C$ held for the whole
    block (given, or from the source at the input; else None), the source's cache (an
    "input" source; else None) and the tape: the sub-steps in the order they ran."""

    params: dict
    theta: Any
    C: Any
    source: Any
    tape: tuple


def _identity(Z, t):
    """No B sub-flow (targets 'none'): Lie is A(h), Strang A(h/2) A(h/2)."""
    return Z


def schedule(config):
    """The sub-steps of one block as (name, fraction of h), read off the splitting itself."""
    ran = []

    def step(name):
        return lambda Z, t: ran.append((name, t)) or Z

    SPLITTINGS[config.scheme](step("A"), step("B") if config.has_B else _identity, None, 1.0)
    return tuple(ran)


class SplitBlock(ABC):
    """The split-flow block for any scheme, integrator, label source and normalisation.

    Subclasses give the model's pieces: ``theta_of``, ``param_grads``, ``check_inputs``,
    the A field ``field_A`` / ``field_A_vjp`` and the B sub-flow with given targets
    ``B_forward`` / ``B_vjp`` (and ``B_manifold_forward`` / ``B_manifold_vjp``, its exact
    form on the manifold, where there is one).
    """

    fast = False  # the readable reference (a fast path says True; blocks/implementations.py)
    fills_out = False  # computes fresh arrays: an `out` buffer would only cost a copy

    def __init__(self, config):
        self.config = config

    def forward(self, Z, params, C=None, out=None, check=True):
        """Advance $Z$ by one block: ``lie_step(A, B, Z, h)`` or ``strang_step(A, B, Z, h)``.

        Parameters
        ----------
        Z : array
            Features.
        params : dict
            The block's parameters (see the class).
        C : array, optional
            Targets; needed if and only if the label source is "given" (``targets="labels"``).
        out : array, optional
            A buffer the output is written into (and returned).
        check : bool
            Validate ``Z``, ``params`` and ``C`` first (`check_inputs`); False on the training
            path, whose inputs were validated once.

        Returns
        -------
        Z_out : array
            Of the shape of ``Z``.
        cache : BlockCache
            What `backward` needs.
        """
        if check:
            self.check_inputs(Z, params, C)
        cfg = self.config
        theta = self.theta_of(params)
        C, source_cache = self.block_targets(Z, params, C)
        steps, tape = self.sub_steps(theta, C, params), []

        def recorded(name):
            def run(Y, t):
                Y, cache = steps[name].forward(Y, t)
                tape.append(cache)
                return Y
            return run

        B = recorded("B") if cfg.has_B else _identity
        Z_out = SPLITTINGS[cfg.scheme](recorded("A"), B, Z, cfg.step_size(params))
        entries = tuple(TapeEntry(name, frac, c) for (name, frac), c in zip(schedule(cfg), tape))
        return copy_into(out, Z_out), BlockCache(params, theta, C, source_cache, entries)

    def backward(self, Z_bar, cache, out=None):
        """Vector-Jacobian product of the block: the tape in reverse, then the label source.

        Parameters
        ----------
        Z_bar : array
            Upstream gradient, of the shape of the block's output.
        cache : BlockCache
            From `forward`.
        out : array, optional
            A buffer ``Grads.Z`` is written into; must not be ``Z_bar``.

        Returns
        -------
        Grads
            Z: gradient in the input; params: keyed like the block's params; t: gradient
            in h; C: gradient in given targets (else None).
        """
        cfg = self.config
        steps = self.sub_steps(cache.theta, cache.C, cache.params)
        inner, h_bar, C_bar = {}, 0.0, None
        for entry in reversed(cache.tape):
            g = steps[entry.name].vjp(Z_bar, entry.cache)
            Z_bar, h_bar = g.Z, h_bar + entry.fraction * g.t
            add_grads(inner, g.params)
            C_bar = add_optional(C_bar, g.C)
        grads = self.param_grads(inner.pop("theta"), cache.params)  # theta -> the model's own
        add_grads(grads, inner)  # a source's parameters at the B sub-step
        if cfg.learn_h:
            add_grads(grads, {"h": get_array_module(Z_bar).asarray(h_bar, dtype=Z_bar.dtype).reshape(())})
        if cfg.source.where == "input":  # C = C_hat(Z) at the block's input
            g = cfg.source.vjp(cfg, C_bar, cache.source, cache.params)
            Z_bar, C_bar = Z_bar + g.Z, None
            add_grads(grads, g.params)
        return Grads(copy_into(out, Z_bar), grads, h_bar, C_bar)

    def block_targets(self, Z, params, C):
        """C held for the whole block and the source's cache: the given labels, C_hat(Z)
        of an "input" source, or (None, None) where there are none or B evaluates them."""
        source = self.config.source
        if source.where == "given":
            require_labels(C)
            return C, None
        if source.where == "input":
            return source.forward(self.config, Z, params)
        return None, None

    def sub_steps(self, theta, C, params):
        """The A and B sub-steps of this block (B only with a B sub-flow), normalised as
        the config says."""
        steps = {"A": self.sub_step_A(theta)}
        if self.config.has_B:
            steps["B"] = self.sub_step_B(theta, C, params)
        return steps

    def sub_step_A(self, theta):
        """A(t): one RK step of the field f_A; post-norm, of the projected field, then R."""
        cfg = self.config
        field = lambda Y: self.field_A(Y, theta)  # noqa: E731
        if cfg.normalised and cfg.norm_place == "post":
            return riemannian_rk(field, self.field_A_vjp, cfg.integrator, cfg.norm)

        def vjp(Z_bar, cache):
            Z_bar, t_bar, grads = rk_backward(self.field_A_vjp, Z_bar, cache)
            return Grads(Z_bar, grads, t_bar)

        return normalised(SubStep(lambda Z, t: rk_forward(field, Z, t, cfg.integrator), vjp), cfg)

    def sub_step_B(self, theta, C, params):
        """B(t) with the block's targets C, or with C_hat(Y) at its input Y (a "B" source).

        Post-norm: the exact rotation on the manifold (b_flow='exact') or a projected
        Euler step then R; pre-norm: Y + B(R(Y)) - R(Y). A "B" source sees R(Y) pre-norm
        (as GPT-2's MLP sees ln_2(x)) and the on-manifold Y post-norm.
        """
        cfg = self.config
        on_manifold = cfg.normalised and cfg.norm_place == "post" and cfg.b_flow == "exact"
        core = (SubStep(self.B_manifold_forward, self.B_manifold_vjp) if on_manifold
                else SubStep(self.B_forward, self.B_vjp))
        step = self.with_targets(core, theta, C, params)
        if not cfg.normalised or on_manifold:
            return step
        return (pre_norm if cfg.norm_place == "pre" else post_norm)(step, cfg.norm)

    def with_targets(self, core, theta, C, params):
        """The B sub-step Y -> core(Y, theta, C, t) with C fixed, or C = C_hat(Y) from a
        "B" source evaluated at the sub-step's input (its VJP adds the source's gradients)."""
        cfg = self.config
        if cfg.source.where != "B":
            return SubStep(lambda Y, t: core.forward(Y, theta, C, t), core.vjp)

        def forward(Y, t):
            C_hat, source_cache = cfg.source.forward(cfg, Y, params)
            Y_out, B_cache = core.forward(Y, theta, C_hat, t)
            return Y_out, (B_cache, source_cache)

        def vjp(Y_bar, cache):
            g = core.vjp(Y_bar, cache[0])
            s = cfg.source.vjp(cfg, g.C, cache[1], params)
            return Grads(g.Z + s.Z, add_grads(dict(g.params), s.params), g.t)

        return SubStep(forward, vjp)

    def B_manifold_forward(self, Z, theta, C, t):
        """The exact B sub-flow on the manifold: only where the model has one (BlockConfig
        refuses the others)."""
        raise ValueError(f"b_flow: the {self.config.model} model's B sub-flow has no exact form "
                         "on the manifold; use b_flow='euler'")

    B_manifold_vjp = B_manifold_forward

    # -- the model's pieces ---------------------------------------------------
    @abstractmethod
    def check_inputs(self, Z, params, C=None):
        """Validate Z, params and C (ValueError or TypeError naming the argument)."""

    @abstractmethod
    def theta_of(self, params):
        r"""The model's $\theta$ from the params dict."""

    @abstractmethod
    def param_grads(self, theta_bar, params):
        r"""The model's own parameter gradients from the gradient in $\theta$."""

    @abstractmethod
    def field_A(self, Y, theta):
        """The A field at a stage Y: (f_A(Y), cache)."""

    @abstractmethod
    def field_A_vjp(self, k_bar, cache):
        """VJP of the A field: (Y_bar, {"theta": theta_bar})."""

    @abstractmethod
    def B_forward(self, Z, theta, C, t):
        """The flat B sub-flow with targets C over time t: (Z_out, cache)."""

    @abstractmethod
    def B_vjp(self, Z_bar, cache):
        """VJP of B_forward: Grads(Z, {"theta": theta_bar}, t, C)."""
