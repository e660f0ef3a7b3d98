"""Candidate retrieval: item indexes (exact torch reference + FAISS) and kNN-Embed multi-interest retrieval.

See docs/techniques/knn_embed.md. ``index`` has no hard dependency on FAISS (only the FAISS kinds need it).
"""

from recsys_emb.retrieval.index import (
    INDEX_KINDS,
    Csr,
    ExactIndex,
    FaissIndex,
    IndexConfig,
    ItemIndex,
    SearchResult,
    build_index,
    load_index,
)

__all__ = [
    "INDEX_KINDS",
    "Csr",
    "ExactIndex",
    "FaissIndex",
    "IndexConfig",
    "ItemIndex",
    "SearchResult",
    "build_index",
    "load_index",
]
