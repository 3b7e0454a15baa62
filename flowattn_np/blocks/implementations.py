"""The one place where a block or a network pass gets its implementation.

The readable blocks (the split flow as the paper writes it) and the block-by-block
network pass are the reference. A fast path, in ``flowattn_np/fast``, computes the same
thing arranged for speed, implements the same interface, and registers itself here with
the configurations it supports; the tests prove each one equal to its reference. Nothing
else in the package asks which one runs:

* ``make_block(config, fast=True)``: the first registered fast block that supports the
  ``BlockConfig``, else the readable block; ``fast=False`` (or ``readable_block(config)``):
  always the readable one.
* ``network_pass(config, fast=True)``: likewise for a whole network (``NetworkConfig``);
  the fallback is ``BlockByBlock``, which runs the blocks ``make_block`` gives.

A fast path is registered once, when ``flowattn_np`` is imported (``fast/__init__.py``):
this module imports nothing from ``fast``, so the layers stay one way.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.memory import MemoryBlock
from flowattn_np.blocks.network_pass import BlockByBlock
from flowattn_np.blocks.self_attention import SelfAttentionBlock

BLOCKS = {"linear": CrossAttentionBlock, "quadratic": SelfAttentionBlock, "memory": MemoryBlock}
"""The readable block class of each model."""


class FastPath(NamedTuple):
    """A registered fast implementation: its name, ``supports(config) -> bool`` and
    ``build(config)``, which returns an object with the reference's interface."""

    name: str
    supports: Callable
    build: Callable


FAST_BLOCKS: list = []
"""Fast block implementations, in the order they are tried."""

FAST_NETWORKS: list = []
"""Fast network passes, in the order they are tried."""


def _register(registry, name, supports, build):
    if any(path.name == name for path in registry):
        raise ValueError(f"name: a fast path named {name!r} is registered already")
    registry.append(FastPath(name, supports, build))


def register_fast_block(name, supports, build):
    """Register a fast block: ``build(config)`` for every ``BlockConfig`` that ``supports``."""
    _register(FAST_BLOCKS, name, supports, build)


def register_fast_network(name, supports, build):
    """Register a fast network pass: ``build(config)`` for every ``NetworkConfig`` that ``supports``."""
    _register(FAST_NETWORKS, name, supports, build)


def _first(registry, config):
    return next((path for path in registry if path.supports(config)), None)


def readable_block(config):
    """The readable block of ``config.model`` (`CrossAttentionBlock`, `SelfAttentionBlock` or
    `MemoryBlock`): the reference every fast block equals."""
    return BLOCKS[config.model](config)


def make_block(config, fast=True):
    """The block for a ``BlockConfig``: a registered fast block that supports it (``fast``),
    else the readable block of ``config.model``."""
    path = _first(FAST_BLOCKS, config) if fast else None
    return path.build(config) if path else readable_block(config)


def network_pass(config, fast=True):
    """The pass of a ``NetworkConfig``: a registered fast pass that supports it (``fast``),
    else ``BlockByBlock`` over the blocks that ``make_block(config.block, fast)`` gives."""
    path = _first(FAST_NETWORKS, config) if fast else None
    return path.build(config) if path else BlockByBlock(config, make_block(config.block, fast))


def fast_path_name(config, network=False, fast=True):
    """The name of the fast path that runs ``config`` (a Network's with ``network``), or None."""
    path = _first(FAST_NETWORKS if network else FAST_BLOCKS, config) if fast else None
    return path.name if path else None
