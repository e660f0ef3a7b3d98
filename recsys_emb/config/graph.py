"""Graph collaborative-filtering experiments (``task: graph``): LightGCN, NGCF and BPR-MF with full ranking.

Example (configs/gowalla_lightgcn_tiny.yaml)::

    task: graph
    data: {path: data/gowalla, valid: false}
    model: {name: lightgcn, embedding_dim: 16, num_layers: 2}
    train:
      epochs: 2
      batch_size: 256
      embedding_optimizer: {name: adam, lr: 0.01}
    sharding: {type: data_parallel}       # CPU: Adam needs unfused (data-parallel) tables
    evaluation: {ks: [10, 20, 50], select_metric: recall@20}

``embedding:`` builds the user/item tables (features ``user`` and ``item``) from table groups and
technique chains, as in every family (docs/techniques/graph_cf.md: LightGCN with ``unified`` items).

``train:`` and ``sharding:`` are the shared sections of every family
(:class:`recsys_emb.config.experiment.TrainConfig`, :class:`ShardingConfig`); only their defaults
are the papers' here (:class:`GraphTrainConfig`: seed 2020, Adam lr 1e-3 for tables and NGCF layers,
batch 2048, no early stopping; sharding ``data_parallel``). The BPR loss settings (``l2``,
``l2_on``) belong to the model (:class:`recsys_emb.models.graph.GraphModelConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.experiment import OptimizerConfig, ShardingConfig, TrainConfig
from recsys_emb.data.sequences import SequenceDataConfig
from recsys_emb.models.graph import GraphModelConfig, check_propagation


@dataclass
class GraphDataConfig:
    """Where the graph is (a folder with train.txt[.gz], test.txt[.gz] and optionally valid.txt[.gz])."""

    path: str = "data/gowalla"  # NGCF/LightGCN-format folder (see datasets/gowalla/README.md)
    valid: bool = True  # use valid.txt when present: model selection on it, test excludes its items too
    cache: bool = True  # parse the files once into cache_dir, memory-map them on later runs
    cache_dir: str | None = None  # None = $RECSYS_EMB_CACHE or ~/.cache/recsys_emb
    # instead of `path`: behaviour sequences (a `task: sequence` data section) as a graph in THEIR ids, so the
    # model can be stage 1 of a retrieve-then-rank pipeline (docs/techniques/retrieve_rank.md): train =
    # training positions, valid / test = the leave-last-out targets; the run writes vocabulary.json
    sequence: SequenceDataConfig | None = None


@dataclass
class GraphEvalConfig:
    """Full-ranking evaluation (recall@K / NDCG@K over all items, see recsys_emb/train/ranking_metrics.py)."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 50])  # cut-offs of recall/ndcg
    # the metric that selects the model (on valid when present, else test; higher is better);
    # null = no selection: the weights after the last epoch are kept and only scored at the end
    select_metric: str | None = "recall@20"
    user_chunk: int = 1024  # users scored at once (memory: user_chunk x items floats)
    max_users: int | None = None  # score only the first N eligible users (quick runs; null = all)
    track_test: bool = False  # with a valid split: also score test at every evaluation (curves; never selects)

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"evaluation.ks must be a non-empty list of positive cut-offs, got {self.ks}")
        if self.user_chunk < 1:
            raise ValueError(f"evaluation.user_chunk must be >= 1, got {self.user_chunk}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"evaluation.max_users must be >= 1 or null, got {self.max_users}")
        if self.select_metric is not None:
            name, _, k = self.select_metric.partition("@")
            if name not in ("recall", "ndcg") or not k.isdigit() or int(k) not in self.ks:
                raise ValueError(
                    f"evaluation.select_metric '{self.select_metric}' must be recall@K or ndcg@K with K in "
                    f"evaluation.ks={self.ks} (or null: keep the last epoch's weights)"
                )


@dataclass
class GraphTrainConfig(TrainConfig):
    """The shared :class:`TrainConfig` with the papers' defaults (LightGCN/NGCF code): a graph ``train:``
    section that omits a field gets these, not the CTR ones. Same fields, same meaning."""

    epochs: int = 100
    batch_size: int = 2048  # BPR triples per step (global: split over ranks)
    seed: int = 2020  # tables, NGCF layers, sampling and dropout (the LightGCN/NGCF code's seed)
    embedding_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    dense_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    early_stopping_patience: int = 0  # the papers train a fixed number of epochs


@dataclass
class GraphExperimentConfig:
    """A graph CF experiment (``task: graph``; configs/gowalla_lightgcn.yaml)."""

    task: str = "graph"  # the model family (recsys_emb/train/tasks)
    name: str = "graph"  # free-form label, written into metrics.json
    data: GraphDataConfig = field(default_factory=GraphDataConfig)
    model: GraphModelConfig = field(default_factory=GraphModelConfig)
    train: GraphTrainConfig = field(default_factory=GraphTrainConfig)
    # the user/item tables (features `user`, `item`): table groups + technique chains (config/embedding.py);
    # no groups / plain chains = the papers' tables; a technique needs model.propagation: lookup
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    # data_parallel: full replicas trained by the regular torch optimizer (Adam, as the papers; FBGEMM's
    # fused CPU kernels have no Adam); row_wise / table_wise / column_wise shard the tables (fused optimizers)
    sharding: ShardingConfig = field(default_factory=lambda: ShardingConfig(type="data_parallel"))
    evaluation: GraphEvalConfig = field(default_factory=GraphEvalConfig)

    def __post_init__(self) -> None:
        if self.task != "graph":
            raise ValueError(f"task must be 'graph' for a GraphExperimentConfig, got '{self.task}'")
        if self.model.propagation == "full":
            raise ValueError(
                "model.propagation: full reads the table weights directly, but the trainer wraps the model in "
                "DistributedModelParallel (sharded or replicated tables): use model.propagation: lookup (the default) "
                "or neighbor; all modes give the same numbers (tested). full is for an unsharded GraphCF used "
                "directly, e.g. examples/graph_cf.py"
            )
        check_propagation(self.embedding, self.model.propagation)
