"""Blocks and networks: one step of the split flow as a transformer block (cross-attention,
self-attention, the key/value memory), the sources of the block targets, the
normalisation wrappers, and the network of blocks with its regression head."""

from flowattn_np.blocks.config import (
    B_FLOWS,
    MODELS,
    NORM_PLACES,
    NORM_TITLES,
    NORMS,
    SCHEMES,
    TARGET_TITLES,
    TARGETS,
    BlockConfig,
    require_labels,
)
from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.implementations import make_block, readable_block
from flowattn_np.blocks.memory import MemoryBlock
from flowattn_np.blocks.params import block_param_shapes, check_block_params, init_block_param, init_block_params
from flowattn_np.blocks.protocol import Grads, add_grads
from flowattn_np.blocks.self_attention import SelfAttentionBlock
from flowattn_np.blocks.sources import SOURCES, LabelSource, register_source

__all__ = ["B_FLOWS", "MODELS", "NORMS", "NORM_PLACES", "NORM_TITLES", "SCHEMES", "SOURCES", "TARGETS",
           "TARGET_TITLES", "BlockConfig", "CrossAttentionBlock", "Grads", "LabelSource", "MemoryBlock",
           "SelfAttentionBlock", "add_grads", "block_param_shapes", "check_block_params", "init_block_param",
           "init_block_params", "make_block", "readable_block", "register_source", "require_labels"]
