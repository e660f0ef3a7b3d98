"""Sequence-ranking experiments (``task: sequence``): DIN / two-stage long-sequence / DARE on behaviour sequences.

Example (configs/amazon_beauty_dare_tiny.yaml)::

    task: sequence
    data: {dataset: amazon_beauty, max_users: 200, max_history: 20}
    model: {name: two_stage, embedding_dim: 8, decoupled: true, attention_dim: 4}
    train: {epochs: 2, batch_size: 128}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_emb.config.experiment import ShardingConfig, TrainConfig
from recsys_emb.data.sequences import GROUPS, SequenceDataConfig
from recsys_emb.models.din import DINConfig
from recsys_emb.models.long_sequence import TwoStageConfig
from recsys_emb.modules.sid_sequence import ITEM_FEATURES, SequenceSidConfig

MODELS = ("din", "two_stage")


@dataclass
class SequenceModelConfig:
    """Which sequence model and which embedding layout."""

    name: str = "din"  # din | two_stage
    embedding_dim: int = 16  # representation dim per feature group (the only dim when coupled)
    decoupled: bool = False  # DARE: separate attention and representation tables per feature group
    attention_dim: int | None = None  # DARE attention dim (None = embedding_dim); needs decoupled
    groups: list[str] = field(default_factory=lambda: list(GROUPS))  # feature groups forming a token
    init_std: float | None = None  # uniform table init with this std (None = torchrec default)
    item_features: str = "id"  # id | sid | id+sid: item embedding = id row, pooled SID pieces, or their sum
    item_hash_buckets: int | None = None  # hash item ids into this many rows (random-hash ids); None = vocabulary ids
    sid: SequenceSidConfig = field(default_factory=SequenceSidConfig)  # SID source + tokeniser (item_features sid / id+sid)
    din: DINConfig = field(default_factory=DINConfig)
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"model.name must be one of {list(MODELS)}, got '{self.name}'")
        if self.attention_dim is not None and not self.decoupled:
            raise ValueError("model.attention_dim needs model.decoupled: true (coupled tables have one dim)")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups or "item" not in self.groups:
            raise ValueError(f"model.groups must include 'item' and only use {list(GROUPS)}, got {self.groups}")
        if self.item_features not in ITEM_FEATURES:
            raise ValueError(f"model.item_features must be one of {list(ITEM_FEATURES)}, got '{self.item_features}'")
        if self.item_features != "id" and self.name == "din" and self.din.mba_lambda > 0:
            raise ValueError("model.din.mba_lambda > 0 regularises id rows: use it with item_features: id only")


@dataclass
class SequenceExperimentConfig:
    """A sequence-ranking experiment (``task: sequence``): data, model, training, sharding."""

    task: str = "sequence"  # the model family (recsys_emb/train/tasks)
    name: str = "sequence"  # free-form label, written into metrics.json
    data: SequenceDataConfig = field(default_factory=SequenceDataConfig)
    model: SequenceModelConfig = field(default_factory=SequenceModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=1024, eval_batch_size=4096))
    sharding: ShardingConfig = field(default_factory=ShardingConfig)  # how the tables are distributed over ranks
