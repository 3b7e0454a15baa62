"""Fast paths: fused implementations of the blocks and networks of ``blocks``, equal to
them to round-off (the tests prove it). Each implements its reference's interface and
registers here, in ``blocks/implementations.py``, the one place a path is chosen:

* ``eq8``: the cross-attention block of eq. (8) in one update (``FusedCrossAttentionBlock``);
* ``fused_quadratic``: the self-attention network's whole pass (``FusedQuadraticPass``).
"""

from flowattn_np.blocks.implementations import register_fast_block, register_fast_network
from flowattn_np.fast import eq8, fused_quadratic

register_fast_block("eq8", eq8.supports, eq8.FusedCrossAttentionBlock)
register_fast_network("fused_quadratic", fused_quadratic.supports, fused_quadratic.FusedQuadraticPass)
