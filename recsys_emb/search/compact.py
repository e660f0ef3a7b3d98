"""Re-export of :mod:`recsys_emb.modules.compact` (the compact module a search ends in).

The compact module moved to ``recsys_emb.modules.compact`` so that ``recsys_emb/modules/`` does not
import ``recsys_emb/search/``; this name keeps working for existing code.
"""

from recsys_emb.modules.compact import (
    FBGEMM_DIM_MULTIPLE,
    LAYOUT_FORMAT,
    CompactEmbeddingBagCollection,
    CompactLayout,
    PartRemap,
    PartSpec,
    buffer_device,
    check_sum_pooling,
    load_layout,
    round_up,
    save_layout,
)

_buffer_device = buffer_device  # the former private name

__all__ = [
    "FBGEMM_DIM_MULTIPLE",
    "LAYOUT_FORMAT",
    "CompactEmbeddingBagCollection",
    "CompactLayout",
    "PartRemap",
    "PartSpec",
    "buffer_device",
    "check_sum_pooling",
    "load_layout",
    "round_up",
    "save_layout",
]
