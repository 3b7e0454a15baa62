"""Blocks and networks: one step of the split flow as a transformer block (cross-attention,
self-attention, the key/value memory), the sources of the block targets, the
normalisation wrappers, and the network of blocks with its regression head."""
