"""``make_block``: the readable block of a configuration."""

from __future__ import annotations

from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.memory import MemoryBlock
from flowattn_np.blocks.self_attention import SelfAttentionBlock

BLOCKS = {"linear": CrossAttentionBlock, "quadratic": SelfAttentionBlock, "memory": MemoryBlock}
"""The readable block class of each model."""


def make_block(config):
    """The readable block for ``config.model``.

    Parameters
    ----------
    config : BlockConfig
        What the block computes.

    Returns
    -------
    CrossAttentionBlock or SelfAttentionBlock or MemoryBlock
    """
    return BLOCKS[config.model](config)
