"""The one backward protocol of the blocks: every block, sub-step, field and label source
returns its gradients as a `Grads`, and parameter gradients are summed with `add_grads`.

A sub-step is a pair of functions (`SubStep`): ``forward(Z, t) -> (Z_out, cache)`` over
time ``t`` and ``vjp(Z_out_bar, cache) -> Grads``. A block records the sub-steps it runs
on a tape (`TapeEntry`) and its backward walks the tape in reverse.

Every block takes ``out=`` buffers in ``forward`` and ``backward`` and returns its result in
them; ``fills_out`` says whether it computes into them (the fused blocks) or copies a
fresh result in (the readable ones), so that a network hands buffers only to the former.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Grads(NamedTuple):
    """Gradients of one differentiable piece, in one order.

    Z: gradient in the input features; params: parameter gradients keyed by name;
    t: gradient in the step or time (None where there is none); C: gradient in the
    targets (None where the targets are not an input).
    """

    Z: Any
    params: dict
    t: Any = None
    C: Any = None


class SubStep(NamedTuple):
    """One sub-step of a split block: ``forward(Z, t) -> (Z_out, cache)`` and
    ``vjp(Z_out_bar, cache) -> Grads``."""

    forward: Callable
    vjp: Callable


class TapeEntry(NamedTuple):
    """One sub-step as it ran: its name ("A" or "B"), its time as a fraction of h, its cache."""

    name: str
    fraction: float
    cache: Any


def add_grads(total, grads):
    """total += grads, key by key: a parameter used twice gets the sum of its gradients.

    The one way gradients are merged: never ``dict.update``, which would overwrite the
    gradient of a shared parameter (a label source that reads the block's theta).
    Returns ``total``.
    """
    for name, value in grads.items():
        total[name] = total[name] + value if name in total else value
    return total


def add_optional(total, value):
    """total + value where either may be None (no contribution)."""
    if value is None:
        return total
    return value if total is None else total + value


def copy_into(out, value):
    """``value`` written into the buffer ``out`` (returned), or ``value`` itself without one."""
    if out is None:
        return value
    out[...] = value
    return out
