"""Sequence-ranking experiments (``task: sequence``): DIN / two-stage long-sequence on behaviour sequences.

Example (configs/amazon_beauty_dare_tiny.yaml)::

    task: sequence
    data: {dataset: amazon_beauty, max_users: 200, max_history: 20}
    model: {name: two_stage, embedding_dim: 8}
    embedding:
      groups:
        - {name: item, features: [item, category], chain: [{dare: {attention_dim: 4}}]}
        - {name: position, features: [position]}
    train: {epochs: 2, batch_size: 128}

The tables come from ``embedding:`` (recsys_emb/config/embedding.py): groups of FIELDS (``item``,
``category``, ``position``: a behaviour history and its target share a field's embedding) or of
SIDE features (``user``, ``target_attrs``: the target item's attribute ids; pooled, once per example). Techniques: ``dare`` (attention / representation
tables), ``semantic_ids``, ``hash``, ``unified``, ``dnis``, ``optembed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.experiment import ShardingConfig, TrainConfig
from recsys_emb.data.sequences import FIELDS, SIDE_FEATURES, SequenceDataConfig
from recsys_emb.models.din import DINConfig
from recsys_emb.models.long_sequence import TwoStageConfig

MODELS = ("din", "two_stage")
# keys of the pre-0.3 model section that chose the tables; they now live in `embedding:`
_OLD_TABLE_KEYS = ("decoupled", "attention_dim", "groups", "item_features", "item_hash_buckets", "sid")


@dataclass
class SequenceModelConfig:
    """Which sequence model, which fields form its tokens and which side features it reads."""

    name: str = "din"  # din | two_stage
    embedding_dim: int = 16  # table dim of every group (a group's `dim` overrides it)
    fields: list[str] = field(default_factory=lambda: list(FIELDS))  # fields forming a token (item first)
    side_features: list[str] = field(default_factory=list)  # pooled per-example features: user, target_attrs
    init_std: float | None = None  # uniform table init with this std (None = torchrec default)
    din: DINConfig = field(default_factory=DINConfig)
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        """Refuse the pre-0.3 table flags, showing the equivalent ``embedding:`` section."""
        old = [k for k in _OLD_TABLE_KEYS if k in data]
        if not old:
            return
        raise ValueError(f"{old} chose the tables in the old form; tables now come from the `embedding:` section "
                         f"(and `model.groups` is `model.fields`). The closest new form is:\n{legacy_embedding(data)}\n"
                         "(hash now hashes the missing / unknown ids 0 and 1 too; a hashed id row next to SID pieces has "
                         "no new form: semantic_ids with_id keeps the vocabulary id row)")

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"model.name must be one of {list(MODELS)}, got '{self.name}'")
        unknown = [g for g in self.fields if g not in FIELDS]
        if unknown or not self.fields or "item" not in self.fields:
            raise ValueError(f"model.fields must include 'item' and only use {list(FIELDS)}, got {self.fields}")
        bad = [f for f in self.side_features if f not in SIDE_FEATURES]
        if bad:
            raise ValueError(f"model.side_features {bad} are not side features of the sequence data (choose from {list(SIDE_FEATURES)})")


def legacy_embedding(model: dict[str, Any]) -> str:
    """The ``embedding:`` section equivalent to an old model section's table flags (for the error message)."""
    fields = list(model.get("groups") or FIELDS)
    dare = [{"dare": {"attention_dim": model["attention_dim"]}}] if model.get("decoupled") and model.get("attention_dim") else (
        ["dare"] if model.get("decoupled") else [])
    item: list[Any] = []
    sid = dict(model.get("sid") or {})
    how = model.get("item_features", "id")
    if how in ("sid", "id+sid"):
        item.append({"semantic_ids": {**sid, **({"with_id": True} if how == "id+sid" else {})}})
    if model.get("item_hash_buckets") and how == "id":
        item.append({"hash": {"num_rows": int(model["item_hash_buckets"]) + 2}})
    groups: list[dict[str, Any]] = [{"name": "item", "features": ["item"], "chain": item + dare}]
    rest = [f for f in fields if f != "item"]
    if rest:
        groups.append({"name": "rest", "features": rest, "chain": list(dare)})
    out = {"model": {"fields": fields}, "embedding": {"groups": groups}}
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None).rstrip()


@dataclass
class SequenceExperimentConfig:
    """A sequence-ranking experiment (``task: sequence``): data, model, tables, training, sharding."""

    task: str = "sequence"  # the model family (recsys_emb/train/tasks)
    name: str = "sequence"  # free-form label, written into metrics.json
    data: SequenceDataConfig = field(default_factory=SequenceDataConfig)
    model: SequenceModelConfig = field(default_factory=SequenceModelConfig)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)  # table groups + technique chains (config/embedding.py)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=1024, eval_batch_size=4096))
    sharding: ShardingConfig = field(default_factory=ShardingConfig)  # how the tables are distributed over ranks
