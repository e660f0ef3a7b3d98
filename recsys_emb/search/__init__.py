"""Learned embedding dimensions and row pruning (DNIS, OptEmbed) ending in REAL smaller tables.

- ``recsys_emb.search.dnis``: the DNIS bi-level search driver;
- ``recsys_emb.search.optembed``: OptEmbed supernet training + evolutionary search;
- ``recsys_emb.search.derive``: ``derive_tables()``: search result -> compact layout + table values;
- ``recsys_emb.search.compact``: re-export of ``recsys_emb.modules.compact``, the compact module
  (id remap -> stock mixed-dim EBC -> column scatter), which the technique modules build from a config;
- ``recsys_emb.search.cli``: ``add_search_arguments`` / ``run_search`` (``recsys-emb search``).

The technique modules themselves live in ``recsys_emb.modules.dnis`` and ``recsys_emb.modules.optembed``.
"""

from recsys_emb.modules.compact import CompactEmbeddingBagCollection, CompactLayout, PartSpec, load_layout, save_layout
from recsys_emb.search.derive import compact_module, derive_tables

__all__ = [
    "CompactEmbeddingBagCollection",
    "CompactLayout",
    "PartSpec",
    "compact_module",
    "derive_tables",
    "load_layout",
    "save_layout",
]
