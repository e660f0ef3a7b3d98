"""Shared helpers of the sequence-model tests: a tiny field layout, KJTs, spec-built embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.config.sequence import SequenceModelConfig
from recsys_emb.data.sequences import FEATURE_KEYS, FIELDS
from recsys_emb.models.sequence import SequenceEmbedding, SequenceFacts, build_sequence_embedding

SIZES = {"item": 30, "category": 6, "position": 12, "user": 5, "target_attrs": 9}
GROUPS = ("item", "category", "position")
MAX_HISTORY = 15


def make_kjt(histories: list[list[int]], targets: list[int], users: list[int] | None = None) -> KeyedJaggedTensor:
    """A sequence KJT from per-row item histories (categories/positions derived), target items and users."""
    lengths = [len(h) for h in histories]
    items = [i for h in histories for i in h]
    cats = [i % SIZES["category"] for i in items]
    pos = [len(h) - j for h in histories for j in range(len(h))]
    tcat = [i % SIZES["category"] for i in targets]
    users = users if users is not None else [b % SIZES["user"] for b in range(len(targets))]
    attrs = [[t % SIZES["target_attrs"], (t + 3) % SIZES["target_attrs"]][: t % 3] for t in targets]  # 0-2 per target
    values = items + cats + pos + targets + tcat + [0] * len(targets) + users + [a for row in attrs for a in row]
    ones = [1] * len(targets)
    return KeyedJaggedTensor(
        keys=list(FEATURE_KEYS), values=torch.tensor(values, dtype=torch.long),
        lengths=torch.tensor(lengths * 3 + ones * 4 + [len(row) for row in attrs], dtype=torch.int32),
    )


def facts(context: dict[str, Any] | None = None) -> SequenceFacts:
    return SequenceFacts(dict(FIELDS), dict(SIZES), MAX_HISTORY + 1, dict(context or {}))


def seq_embedding(dim: int = 4, chain: list[Any] | None = None, groups: list[TableGroup] | None = None,
                  name: str = "din", side: list[str] | None = None, context: dict[str, Any] | None = None) -> SequenceEmbedding:
    """Tables of a sequence model: one group of every field with ``chain`` (plain when None), or ``groups``."""
    spec = EmbeddingSpec(groups=groups if groups is not None else ([TableGroup(name="all", chain=list(chain))] if chain else []))
    cfg = SequenceModelConfig(name=name, embedding_dim=dim, side_features=list(side or []))
    return build_sequence_embedding(cfg, spec, facts(context))


def table(emb: SequenceEmbedding, name: str, role: str = "attention", group: str = "all") -> torch.Tensor:
    """The weight of table ``name`` (e.g. ``item``, ``att_item``) of a plain-layout group."""
    lookup = emb.lookup.attention if role == "attention" or emb.lookup.representation is None else emb.lookup.representation
    return lookup.groups[group].embedding_bags[name].weight
