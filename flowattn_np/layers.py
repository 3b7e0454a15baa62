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

Every block has ``forward(Z, params, C=None) -> (Z_out, cache)`` and
``backward(Z_out_bar, cache) -> (Z_bar, grads)`` with ``grads`` keyed like ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .attention import (
    _T,
    _cross_attention,
    _self_attention_sum,
    _sum_lead,
    cross_attention_vjp,
    self_attention_sum_vjp,
)
from .backend import get_array_module
from .flows import _quadratic_B_exact, get_integrator, quadratic_B_exact_vjp, rk_backward, rk_forward
from .mlp import (
    check_activation,
    init_mlp_params,
    mlp_oracle,
    mlp_oracle_vjp,
    mlp_token_oracle,
    mlp_token_oracle_vjp,
)
from .ops import softmax, softmax_vjp, softmax_vjp_heads
from .validate import check_step

MODELS = ("linear", "quadratic", "memory")
SCHEMES = ("lie", "strang")
B_FLOWS = ("exact", "euler")
TARGETS = ("labels", "none", "learned", "mlp")

TARGET_TITLES = {
    "labels": "true labels C (the theory: feature discovery; an oracle computation at test time)",
    "none": "no targets (attention sub-flow only)",
    "learned": "learned oracle C_hat(Z) (label-free)",
    "mlp": "MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2) at the B sub-step (label-free)",
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
    b_flow:     'exact' or 'euler' for the B sub-flow.
    targets:    source of C: 'labels', 'none', 'learned' or 'mlp' (see the module docstring).
    h:          the step (its initial value when learn_h).
    learn_h:    whether h is a trained parameter.
    heads:      class counts per head (linear model): one softmax per head.
    slots:      number of key/value slots s of a 'memory' block.
    mlp_hidden: hidden width k of the MLP oracle (targets='mlp').
    activation: the MLP oracle's activation, 'gelu' (tanh form) or 'relu'.
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
    mlp_hidden: int = 0
    activation: str = "gelu"

    def __post_init__(self):
        for field, allowed in (("model", MODELS), ("scheme", SCHEMES), ("b_flow", B_FLOWS),
                               ("targets", TARGETS)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{field}: expected one of {', '.join(map(repr, allowed))}, "
                    f"got {getattr(self, field)!r}"
                )
        get_integrator(self.integrator)
        # a Python float: a NumPy float64 step would upcast float32 features
        object.__setattr__(self, "h", check_step("h", self.h))
        if self.model == "memory":
            if self.targets != "none":
                raise ValueError("targets: a 'memory' block has no label sub-flow; use targets='none'")
            if int(self.slots) < 1:
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
            object.__setattr__(self, "heads", tuple(int(s) for s in self.heads))

    def replace(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self):
        """One line naming the block, its scheme, integrators and the source of C."""
        if self.model == "memory":
            return (f"key/value memory block Z + h softmax(Z K^T) V, s = {self.slots} slots "
                    f"(beyond the theory), h {'learned' if self.learn_h else f'= {self.h:g}'}")
        kind = "cross-attention (linear model)" if self.model == "linear" else \
            "self-attention (quadratic model)"
        step = "learned h" if self.learn_h else f"h = {self.h:g}"
        b = "" if self.targets == "none" else f", B {self.b_flow}"
        source = TARGET_TITLES[self.targets]
        if self.targets == "mlp":
            source += f", k = {self.mlp_hidden} hidden units, {self.activation}"
        return (f"{kind} block, {self.scheme.capitalize()} splitting, A by {self.integrator}{b}, "
                f"{step}; targets: {source}")


def _scalar(xp, value, dtype):
    return xp.asarray(value, dtype=dtype)


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


class _SplitBlock:
    """Shared forward/backward of a split-flow block; subclasses give the model's pieces.

    Subclasses define: ``theta_of(params)``, ``param_grads(theta_bar, params)``,
    ``field_A`` / ``field_A_vjp`` (vector field of the A sub-flow),
    ``B_forward`` / ``B_vjp`` (the B sub-flow over time t) and
    ``oracle`` / ``oracle_vjp`` (the learned targets).
    """

    def __init__(self, config):
        self.config = config

    @staticmethod
    def _need_labels():
        raise ValueError(
            "C: this block uses the true labels (targets='labels'); pass C, or "
            "configure targets='learned' or 'none' for a label-free block"
        )

    # -- forward --------------------------------------------------------------
    def forward(self, Z, params, C=None, out=None):
        """Advance Z by one block; returns (Z_out, cache). C is needed iff targets='labels'.

        ``out`` (a buffer for Z_out) is a hint that the fused paths use; others ignore it.
        """
        cfg = self.config
        theta = self.theta_of(params)
        h = params["h"] if cfg.learn_h else cfg.h
        oracle_cache = None
        if cfg.targets == "labels":
            if C is None:
                self._need_labels()
        elif cfg.targets == "learned":
            C, oracle_cache = self.oracle(Z, params)
        else:
            C = None
        field = lambda Y: self.field_A(Y, theta)  # noqa: E731
        steps = []
        for kind, frac in _step_schedule(cfg):
            t = h * frac
            if kind == "A":
                Z, c = rk_forward(field, Z, t, cfg.integrator)
            else:
                if cfg.targets == "mlp":  # the MLP sees the B sub-step's input
                    C, oracle_cache = self.mlp_oracle(Z, params)
                Z, c = self.B_forward(Z, theta, C, t)
                c = (c, oracle_cache if cfg.targets == "mlp" else None)
            steps.append((kind, frac, c))
        return Z, ("split", params, theta, C, oracle_cache, steps)

    # -- backward -------------------------------------------------------------
    def backward(self, Z_bar, cache, out=None):
        """VJP of the block: returns (Z_in_bar, grads) with grads keyed like params."""
        cfg = self.config
        _, params, theta, C, oracle_cache, steps = cache
        xp = get_array_module(Z_bar)
        theta_bar = xp.zeros_like(theta)
        h_bar = 0.0
        C_bar = None
        mlp_grads_total = {}
        for kind, frac, c in reversed(steps):
            if kind == "A":
                Z_bar, t_bar, g = rk_backward(self.field_A_vjp, Z_bar, c)
                theta_bar = theta_bar + g["theta"]
            else:
                c, mlp_cache = c
                Z_bar, th_bar, Cb, t_bar = self.B_vjp(Z_bar, c)
                theta_bar = theta_bar + th_bar
                if mlp_cache is not None:  # C = C_hat(Z at this sub-step): back into Z and W1..b2
                    Z_extra, mlp_grads = self.mlp_oracle_vjp(Cb, mlp_cache)
                    Z_bar = Z_bar + Z_extra
                    _add_grads(mlp_grads_total, mlp_grads)
                C_bar = Cb if C_bar is None else C_bar + Cb
            h_bar = h_bar + frac * t_bar
        grads = self.param_grads(theta_bar, params)
        grads.update(mlp_grads_total)
        if cfg.learn_h:
            grads["h"] = xp.asarray(h_bar, dtype=Z_bar.dtype).reshape(())
        if cfg.targets == "learned":
            Z_extra, oracle_grads = self.oracle_vjp(C_bar, oracle_cache, params)
            Z_bar = Z_bar + Z_extra
            grads.update(oracle_grads)
        return Z_bar, grads


class CrossAttentionBlock(_SplitBlock):
    """Block of the linear model N = Z theta^T (eq. 8): cross-attention + label forcing.

    params: 'theta' (m x d), 'h' (0-d, if learn_h), 'W' (m x d) and 'b' (m,) (if
    targets='learned'), 'W1' (k x d), 'b1' (k,), 'W2' (m x k), 'b2' (m,) (if targets='mlp').
    Z: n x d, C: n x m.
    """

    def forward(self, Z, params, C=None, out=None):
        """Advance Z by one block; returns (Z_out, cache). C is needed iff targets='labels'.

        ``out``: a buffer for Z_out (used by the fused eq. (8) path).
        """
        cfg = self.config
        if cfg.scheme == "lie" and cfg.integrator == "euler" and cfg.targets != "mlp":
            return self._eq8_forward(Z, params, C, out)
        return super().forward(Z, params, C)

    def backward(self, Z_bar, cache, out=None):
        """VJP of the block: returns (Z_in_bar, grads) with grads keyed like params.

        ``out``: a buffer for Z_in_bar, which must not be Z_bar (fused path only).
        """
        if cache[0] == "eq8":
            return self._eq8_backward(Z_bar, cache, out)
        return super().backward(Z_bar, cache)

    def _eq8_forward(self, Z, params, C, out=None):
        """The transformer block of eq. (8) in one update: Z + h (C - sigma(Z theta^T)) theta.

        Z_half = Z - h CA(Z, theta) and Z_out = Z_half + h C theta share the product
        with theta (B is constant in Z, so its exact and Euler forms agree); a learned
        oracle's scores Z W^T share one product with the attention scores Z theta^T.
        """
        cfg = self.config
        xp = get_array_module(Z)
        theta = params["theta"]
        h = params["h"] if cfg.learn_h else cfg.h
        m = theta.shape[0]
        K = None
        if cfg.targets == "learned":
            K = xp.concatenate([params["W"], theta])  # keys of oracle and attention: 2m x d
            S = Z @ K.T
            S[:, :m] += params["b"]
            C = softmax(S[:, :m], cfg.heads)
            P = softmax(S[:, m:], cfg.heads)
        else:
            if cfg.targets == "labels" and C is None:
                self._need_labels()
            P = softmax(Z @ theta.T, cfg.heads)
        R = -P if cfg.targets == "none" else C - P
        # h scales the n x m factor, not the n x d product: 1/d of the work
        out = xp.matmul(h * R, theta, out=out)
        out += Z
        return out, ("eq8", Z, theta, C, P, R, h, K)

    def _eq8_backward(self, Z_bar, cache, out=None):
        """VJP of Z_out = Z + h R theta, R = C - P, P = sigma(Z theta^T), C = sigma(Z W^T + b):

            G = Z_bar theta^T,  h_bar = <G, R>,  R_bar = h G
            theta_bar = h R^T Z_bar + S_P_bar^T Z,  S_P_bar = softmax_vjp(P, -R_bar)
            S_C_bar = softmax_vjp(C, R_bar),  W_bar = S_C_bar^T Z,  b_bar = 1^T S_C_bar
            Z_in_bar = Z_bar + S_C_bar W + S_P_bar theta
        """
        cfg = self.config
        xp = get_array_module(Z_bar)
        _, Z, theta, C, P, R, h, K = cache
        G = Z_bar @ theta.T
        R_bar = h * G
        grads = {"theta": h * (R.T @ Z_bar)}
        if cfg.learn_h:
            grads["h"] = (G * R).sum().reshape(())
        SP_bar = softmax_vjp_heads(P, -R_bar, cfg.heads)
        if K is None:
            Z_in_bar = xp.matmul(SP_bar, theta, out=out)
            grads["theta"] += SP_bar.T @ Z
        else:
            m = theta.shape[0]
            S_bar = xp.concatenate([softmax_vjp_heads(C, R_bar, cfg.heads), SP_bar], axis=1)
            Z_in_bar = xp.matmul(S_bar, K, out=out)
            KS = S_bar.T @ Z
            grads["W"] = KS[:m]
            grads["theta"] += KS[m:]
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
        """A sub-flow -CA(Y, theta); cache (Y, P)."""
        CA, P = _cross_attention(Y, theta, self.config.heads)
        return -CA, (Y, theta, P)

    def field_A_vjp(self, k_bar, fcache):
        """VJP of the A vector field -CA(Y, theta): returns (Y_bar, {"theta": theta_bar})."""
        Y, theta, P = fcache
        Y_bar, theta_bar = cross_attention_vjp(Y, theta, P, -k_bar, self.config.heads)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        """B sub-flow Z + t C theta: exact, and identical to one Euler step (B is constant)."""
        Ct = C @ theta
        return Z + t * Ct, (theta, C, Ct, t)

    def B_vjp(self, Z_bar, c):
        """VJP of Z + t C theta: returns (Z_bar, theta_bar, C_bar, t_bar)."""
        theta, C, Ct, t = c
        return Z_bar, t * (C.T @ Z_bar), t * (Z_bar @ theta.T), (Z_bar * Ct).sum()

    def oracle(self, Z, params):
        """Learned targets C_hat = softmax(Z W^T + b) (per head)."""
        C = softmax(Z @ params["W"].T + params["b"], self.config.heads)
        return C, (Z, C)

    def oracle_vjp(self, C_bar, oc, params):
        """VJP of C_hat = softmax(Z W^T + b): returns (Z_bar, {"W": ..., "b": ...})."""
        Z, C = oc
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


class SelfAttentionBlock(_SplitBlock):
    """Block of the quadratic model N = Z theta Z^T, theta = phi phi^T (eq. 10).

    params: 'phi' (d x d, lower-triangular), 'h' (0-d, if learn_h), 'W' (d x d, if
    targets='learned'), 'W1' (k x d), 'b1' (k,), 'W2' (d x k), 'b2' (d,) (if targets='mlp').
    Z: (..., n, d), C: (..., n, n).
    """

    def theta_of(self, params):
        """theta = phi phi^T from the params dict."""
        phi = params["phi"]
        return phi @ phi.T

    def param_grads(self, theta_bar, params):
        """phi_bar = tril((theta_bar + theta_bar^T) phi) from the gradient in theta."""
        xp = get_array_module(theta_bar)
        return {"phi": xp.tril((theta_bar + theta_bar.T) @ params["phi"])}

    def field_A(self, Y, theta):
        """A sub-flow -(SA + SA*)(Y, theta); cache (Y, P, Y theta)."""
        F, P, Yt = _self_attention_sum(Y, theta)
        return -F, (Y, theta, P, Yt)

    def field_A_vjp(self, k_bar, fcache):
        """VJP of the A vector field -(SA + SA*)(Y, theta): returns (Y_bar, {"theta": theta_bar})."""
        Y, theta, P, Yt = fcache
        Y_bar, theta_bar = self_attention_sum_vjp(Y, theta, P, Yt, -k_bar)
        return Y_bar, {"theta": theta_bar}

    def B_forward(self, Z, theta, C, t):
        """B sub-flow dZ/dt = M Z theta, M = C + C^T: exact (eigenbases) or one Euler step."""
        M = C + _T(C)
        if self.config.b_flow == "exact":
            Z_out, c = _quadratic_B_exact(Z, theta, M, t)
            return Z_out, ("exact", c)
        MZt = M @ Z @ theta
        return Z + t * MZt, ("euler", (Z, theta, M, MZt, t))

    def B_vjp(self, Z_bar, c):
        """VJP of the B sub-step (exact or Euler): returns (Z_bar, theta_bar, C_bar, t_bar)."""
        kind, c = c
        if kind == "exact":
            Z_in_bar, theta_bar, M_bar, t_bar = quadratic_B_exact_vjp(Z_bar, c)
        else:
            Z, theta, M, MZt, t = c
            Z_in_bar = Z_bar + t * (_T(M) @ Z_bar @ theta.T)
            theta_bar = t * _sum_lead(_T(M @ Z) @ Z_bar)
            M_bar = t * (Z_bar @ _T(Z @ theta))
            t_bar = (Z_bar * MZt).sum()
        return Z_in_bar, theta_bar, M_bar + _T(M_bar), t_bar

    def oracle(self, Z, params):
        """Learned targets C_hat = softmax(Z W Z^T): each token picks a token."""
        ZW = Z @ params["W"]
        C = softmax(ZW @ _T(Z))
        return C, (Z, ZW, C)

    def oracle_vjp(self, C_bar, oc, params):
        """VJP of C_hat = softmax(Z W Z^T): returns (Z_bar, {"W": W_bar})."""
        Z, ZW, C = oc
        S_bar = softmax_vjp(C, C_bar)
        Z_bar = S_bar @ Z @ params["W"].T + _T(S_bar) @ ZW
        return Z_bar, {"W": _sum_lead(_T(Z) @ S_bar @ Z)}

    def mlp_oracle(self, Z, params):
        """Token targets C_hat = softmax(M(Z) Z^T), M a token-wise MLP (d -> k -> d)."""
        return mlp_token_oracle(Z, params["W1"], params["b1"], params["W2"], params["b2"],
                                self.config.activation)

    def mlp_oracle_vjp(self, C_bar, cache):
        """VJP of the token MLP oracle: (Z_bar, {"W1", "b1", "W2", "b2"})."""
        return mlp_token_oracle_vjp(C_bar, cache)


class MemoryBlock:
    """Key/value memory block Z + h softmax(Z K^T) V with s learned slots.

    Beyond the theory: keys K and values V (s x d) are separate parameters, where the
    gradient flow ties both to theta. params: 'K', 'V', 'h' (if learn_h).
    """

    def __init__(self, config):
        self.config = config

    def forward(self, Z, params, C=None, out=None):
        """Z + h softmax(Z K^T) V; returns (Z_out, cache). C is ignored (no label sub-flow).

        ``out``: a buffer for Z_out.
        """
        xp = get_array_module(Z)
        h = params["h"] if self.config.learn_h else self.config.h
        P = softmax(Z @ params["K"].T)
        out = xp.matmul(h * P, params["V"], out=out)
        out += Z
        return out, (Z, P, h, params)

    def backward(self, Z_bar, cache, out=None):
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
    theta = I / sqrt(d) (quadratic); W ~ N(0, 1/d), b = 0; K, V ~ N(0, 1/d); the MLP
    oracle's W1, b1, W2, b2 from mlp.init_mlp_params.
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
        if config.targets == "mlp":
            p.update(init_mlp_params(d, config.mlp_hidden, m, rng, dtype))
    elif config.model == "quadratic":
        if with_theta:
            p["phi"] = xp.eye(d, dtype=dtype) / d ** 0.25
        if config.targets == "learned":
            p["W"] = xp.asarray(rng.normal(0, 1.0 / d, size=(d, d)), dtype=dtype)
        if config.targets == "mlp":  # the token MLP maps d -> k -> d
            p.update(init_mlp_params(d, config.mlp_hidden, d, rng, dtype))
    else:
        p["K"] = xp.asarray(rng.normal(0, 1.0 / d ** 0.5, size=(config.slots, d)), dtype=dtype)
        p["V"] = xp.asarray(rng.normal(0, 1.0 / d ** 0.5, size=(config.slots, d)), dtype=dtype)
    if config.learn_h:
        p["h"] = _scalar(xp, config.h, dtype)
    return p
