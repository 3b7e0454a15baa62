"""Fast paths: fused implementations of the blocks and networks of ``blocks``, equal to
them to round-off (the tests prove it) and chosen in one place."""
