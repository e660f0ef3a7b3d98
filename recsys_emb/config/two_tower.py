"""Two-tower retrieval experiments (``task: two_tower``): in-batch softmax over (user, item) pairs,
scored by full ranking like graph CF.

Example (configs/ml1m_two_tower_tiny.yaml)::

    task: two_tower
    data: {path: ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m, valid: true}
    model: {embedding_dim: 32, tower_layers: [], normalize: true, temperature: 0.1}
    train: {epochs: 2, batch_size: 1024, embedding_optimizer: {name: adam, lr: 0.005}}
    sharding: {type: data_parallel}
    evaluation: {ks: [20, 50], select_metric: recall@20}

The data and evaluation sections are the graph family's (:class:`GraphDataConfig`,
:class:`GraphEvalConfig`: an NGCF/LightGCN-format folder, recall@K / NDCG@K over all items);
``train:`` and ``sharding:`` are the shared sections, with the old two-tower trainer's defaults
(:class:`TwoTowerTrainConfig`). ``embedding:`` builds the user/item tables (features ``user`` and
``item``) from table groups and technique chains, as in every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.experiment import OptimizerConfig, ShardingConfig, TrainConfig
from recsys_emb.config.graph import GraphDataConfig, GraphEvalConfig
from recsys_emb.models.two_tower import TwoTowerConfig


@dataclass
class TwoTowerTrainConfig(TrainConfig):
    """The shared :class:`TrainConfig` with the two-tower defaults: 10 epochs of 2048 pairs, Adam lr 5e-3
    for tables and towers, seed 0, no early stopping. Same fields, same meaning."""

    epochs: int = 10
    batch_size: int = 2048  # (user, item) pairs per step (global: split over ranks; in-batch negatives are per rank)
    seed: int = 0
    embedding_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=0.005))
    dense_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=0.005))
    early_stopping_patience: int = 0


@dataclass
class TwoTowerExperimentConfig:
    """A two-tower experiment (``task: two_tower``; configs/ml1m_two_tower.yaml)."""

    task: str = "two_tower"  # the model family (recsys_emb/train/tasks)
    name: str = "two_tower"  # free-form label, written into metrics.json
    data: GraphDataConfig = field(default_factory=GraphDataConfig)
    model: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    train: TwoTowerTrainConfig = field(default_factory=TwoTowerTrainConfig)
    # the user/item tables (features `user`, `item`): table groups + technique chains (config/embedding.py);
    # no groups / plain chains = the two stock tables `user` and `item`
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    # data_parallel: replicas trained by torch's Adam (FBGEMM's fused CPU kernels have no Adam); row_wise /
    # table_wise / column_wise shard the two tables (fused optimizers: rowwise_adagrad / adagrad / sgd on CPU)
    sharding: ShardingConfig = field(default_factory=lambda: ShardingConfig(type="data_parallel"))
    evaluation: GraphEvalConfig = field(default_factory=GraphEvalConfig)

    def __post_init__(self) -> None:
        if self.task != "two_tower":
            raise ValueError(f"task must be 'two_tower' for a TwoTowerExperimentConfig, got '{self.task}'")
        if self.train.batch_size < 2:
            raise ValueError(f"train.batch_size must be >= 2 (the in-batch softmax needs negatives), got {self.train.batch_size}")
