"""Optimisers (SGD with momentum and weight decay, Adam) and learning-rate schedules.

Parameters are a dict of arrays updated in place, so a Network's ``params`` stay the
same objects (tied weights stay tied). Updates use the parameters' own dtype: float32
parameters get float32 updates.
"""

from __future__ import annotations

import math

from flowattn_np.backend import get_array_module

# The package exports only SGD and Adam; the schedules, the base class and the factory are
# public too (the API reference shows a module's __all__).
__all__ = ["Schedule", "Constant", "Cosine", "StepDecay", "Optimizer", "SGD", "Adam", "make_optimizer"]

# ---------------------------------------------------------------- schedules


class Schedule:
    r"""Learning-rate multiplier as a function of the step count $t=0,1,2,\dots$"""

    def __call__(self, t):
        raise NotImplementedError


class Constant(Schedule):
    """A constant learning rate (multiplier 1)."""

    def __call__(self, t):
        return 1.0

    def __repr__(self):
        return "Constant()"


class Cosine(Schedule):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``.

    Parameters
    ----------
    total : int
        Step at which the multiplier reaches ``floor``.
    warmup : int
        Steps of linear warm-up from 0 to 1.
    floor : float
        Final multiplier.
    """

    def __init__(self, total, warmup=0, floor=0.0):
        if int(total) < 1:
            raise ValueError(f"total: expected a positive number of steps, got {total}")
        self.total, self.warmup, self.floor = int(total), int(warmup), float(floor)

    def __call__(self, t):
        if t < self.warmup:
            return (t + 1) / self.warmup
        frac = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))

    def __repr__(self):
        return f"Cosine(total={self.total}, warmup={self.warmup}, floor={self.floor})"


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``every`` steps.

    Parameters
    ----------
    every : int
        Steps between decays.
    gamma : float
        Factor of each decay.
    """

    def __init__(self, every, gamma=0.1):
        if int(every) < 1:
            raise ValueError(f"every: expected a positive number of steps, got {every}")
        self.every, self.gamma = int(every), float(gamma)

    def __call__(self, t):
        return self.gamma ** (t // self.every)

    def __repr__(self):
        return f"StepDecay(every={self.every}, gamma={self.gamma})"


def _no_decay(name):
    # step sizes and biases are not shrunk toward zero: weight decay on h would bias
    # the very quantity whose learned sign the experiments report
    base = name.rsplit(".", 1)[-1]
    return base in ("h", "b")


# ---------------------------------------------------------------- optimisers


class Optimizer:
    """Base: ``step(grads)`` updates ``params`` in place; ``lr`` follows ``schedule``."""

    state_prefixes = ()  # the per-parameter state arrays, keyed "<prefix>/<parameter>"

    def __init__(self, params, lr, weight_decay=0.0, schedule=None):
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr: expected a positive finite learning rate, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = schedule or Constant()
        self.t = 0

    @property
    def current_lr(self):
        r"""The learning rate of the next step, $\text{lr}\cdot\text{schedule}(t)$."""
        return self.lr * self.schedule(self.t)

    def _grad(self, name, g):
        if self.weight_decay and not _no_decay(name):
            return g + self.weight_decay * self.params[name]
        return g

    def state(self):
        """Optimiser state as a dict of arrays (for checkpoints)."""
        return {"t": self.t}

    def load_state(self, state):
        """Restore what state() returned."""
        self.t = int(state.get("t", 0))


class SGD(Optimizer):
    r"""SGD with heavy-ball or Nesterov momentum and weight decay.

    $$
    g\leftarrow\nabla+\text{wd}\,p,\qquad v\leftarrow\mu v+g,\qquad
    p\leftarrow p-\text{lr}\cdot\begin{cases}g+\mu v&\text{Nesterov}\\ v&\text{else}\end{cases}
    $$

    Parameters
    ----------
    params : dict of array
        Updated in place by `step`.
    lr : float
        Learning rate.
    momentum : float
        $\mu\in[0,1)$.
    weight_decay : float
        $\text{wd}$.
    nesterov : bool
        Nesterov momentum instead of heavy ball.
    schedule : Schedule, optional
        Learning-rate multiplier; constant by default.
    """

    def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False,
                 schedule=None):
        super().__init__(params, lr, weight_decay, schedule)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected 0 <= momentum < 1, got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = {}

    def step(self, grads):
        """Update every parameter that has a gradient, in place."""
        lr = self.current_lr
        for name, p in self.params.items():
            if name not in grads:
                continue
            g = self._grad(name, grads[name])
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = get_array_module(p).zeros_like(p)
                v *= self.momentum
                v += g
                g = g + self.momentum * v if self.nesterov else v
            p -= lr * g
        self.t += 1

    state_prefixes = ("velocity",)

    def state(self):
        """Step count and velocities, for checkpoints."""
        out = {"t": self.t}
        out.update({f"velocity/{k}": v for k, v in self.velocity.items()})
        return out

    def load_state(self, state):
        """Restore what state() returned."""
        super().load_state(state)
        self.velocity = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("velocity/")}


class Adam(Optimizer):
    r"""Adam (Kingma & Ba) with bias correction; weight decay added to the gradient.

    $$
    m\leftarrow\beta_1m+(1-\beta_1)g,\qquad v\leftarrow\beta_2v+(1-\beta_2)g^2,\qquad
    p\leftarrow p-\text{lr}\,\frac{\hat m}{\sqrt{\hat v}+\varepsilon}
    $$

    Parameters
    ----------
    params : dict of array
        Updated in place by `step`.
    lr : float
        Learning rate.
    betas : tuple of float
        $(\beta_1,\beta_2)$.
    eps : float
        $\varepsilon$.
    weight_decay : float
        Added to the gradient as $\text{wd}\,p$.
    schedule : Schedule, optional
        Learning-rate multiplier; constant by default.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 schedule=None):
        super().__init__(params, lr, weight_decay, schedule)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.m, self.v = {}, {}

    def step(self, grads):
        """Update every parameter that has a gradient, in place."""
        lr = self.current_lr
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for name, p in self.params.items():
            if name not in grads:
                continue
            xp = get_array_module(p)
            g = self._grad(name, grads[name])
            if name not in self.m:
                self.m[name], self.v[name] = xp.zeros_like(p), xp.zeros_like(p)
            m, v = self.m[name], self.v[name]
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * (g * g)
            p -= (lr / c1) * m / (xp.sqrt(v / c2) + self.eps)

    state_prefixes = ("m", "v")

    def state(self):
        """Step count and moment estimates, for checkpoints."""
        out = {"t": self.t}
        out.update({f"m/{k}": a for k, a in self.m.items()})
        out.update({f"v/{k}": a for k, a in self.v.items()})
        return out

    def load_state(self, state):
        """Restore what state() returned."""
        super().load_state(state)
        self.m = {k[2:]: a for k, a in state.items() if k.startswith("m/")}
        self.v = {k[2:]: a for k, a in state.items() if k.startswith("v/")}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, params, **kwargs):
    """An optimiser by name.

    Parameters
    ----------
    name : str
        ``"sgd"`` or ``"adam"``.
    params : dict of array
        The parameters it updates.
    **kwargs
        Passed to `SGD` or `Adam`.

    Returns
    -------
    Optimizer
    """
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {name!r}") from None
    return cls(params, **kwargs)
