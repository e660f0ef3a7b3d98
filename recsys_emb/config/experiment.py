"""Experiment configuration: the dataclasses a YAML experiment file mirrors.

Example (configs/criteo_dcnv2_tiny.yaml)::

    data:
      train: data/synth_tiny/train.txt.gz
      test: data/synth_tiny/test.txt.gz
      valid_fraction: 0.1
    model:
      name: dcnv2
    train:
      epochs: 1
      batch_size: 512
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.config.model import ModelConfig

_EMB_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")
_DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd", "adamw")


@dataclass
class DataConfig:
    """Where the data comes from and how raw Criteo TSV is prepared."""

    dataset: str = "criteo"  # only criteo-format TSV for now (when `schema` is null)
    schema: str | None = None  # feature schema of raw CSV/TSV/Parquet files: a YAML path or a shipped name
    #   (criteo, avazu: configs/schemas/; docs/data_schema.md); null = Criteo TSV through `prepare criteo`
    train: str | None = None  # raw TSV(.gz) file or prepared directory
    valid: str | None = None  # raw or prepared; None = last `valid_fraction` of train rows
    test: str | None = None  # raw or prepared; None = no test evaluation
    valid_fraction: float = 0.1  # used only when `valid` is None (a temporal split: the LAST rows)
    min_count: int = 2  # vocabulary frequency threshold (rarer values -> OOV id)
    hash_buckets: int | None = None  # hash categoricals into this many buckets instead of a vocabulary
    cache_dir: str | None = None  # where raw inputs are prepared; None = ~/.cache/recsys_emb
    strict: bool = False  # malformed raw rows are fatal instead of counted and skipped

    def __post_init__(self) -> None:
        if self.dataset != "criteo":
            raise ValueError(f"data.dataset: unknown dataset '{self.dataset}' (supported: criteo)")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.min_count < 1:
            raise ValueError(f"data.min_count must be >= 1, got {self.min_count}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ValueError(f"data.hash_buckets must be >= 1, got {self.hash_buckets}")


@dataclass
class OptimizerConfig:
    """One optimizer (for the embedding tables or for the dense parameters)."""

    name: str = "adam"  # tables: rowwise_adagrad|adagrad|sgd|adam; dense: adam|adamw|adagrad|sgd
    lr: float = 1e-3  # learning rate
    weight_decay: float = 0.0  # L2 weight decay
    eps: float = 1e-8  # epsilon of adaptive optimizers

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class TrainConfig:
    """Training loop settings."""

    epochs: int = 3  # maximum number of passes over the training data
    batch_size: int = 2048  # global batch size (split over ranks when sharded)
    eval_batch_size: int = 16384  # batch size for validation/test
    seed: int = 0  # seeds parameters, shuffling and dropout
    shuffle: bool = True  # reshuffle training rows every epoch (seed + epoch)
    embedding_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="rowwise_adagrad", lr=0.05)
    )  # tables: fused into the backward by FBGEMM where the kernel supports it
    dense_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    grad_clip_norm: float | None = None  # clip the global norm of DENSE gradients (fused tables are not clipped)
    early_stopping_patience: int = 1  # stop after this many validations without an AUC gain (0 = never)
    eval_every_steps: int | None = None  # validate every N steps as well as at each epoch end
    max_steps: int | None = None  # stop after this many optimizer steps (None = all epochs)
    checkpoint_every_steps: int | None = None  # write RUN_DIR/checkpoint every N steps (and at each epoch end)
    max_steps_per_epoch: int | None = None  # cut every epoch short after N steps (quick runs; None = full epochs)
    # small data (recsys_emb/train/schedule.py): halve batch_size (not below 64) until an epoch has at least
    # this many steps; None = always batch_size. Large data (rows >= batch_size * N) is unaffected
    min_steps_per_epoch: int | None = None
    # small data: add epochs beyond `epochs` until the run may take this many steps (early stopping still
    # ends it); None = exactly `epochs`. metrics.json `schedule` records the batch size and epochs used
    min_steps: int | None = None
    max_minutes: float | None = None  # wall-time budget: no epoch is started that would end past it (None = none)
    log_every_steps: int = 50  # TensorBoard/progress-bar update period
    tensorboard: bool = True  # write TensorBoard scalars to RUN_DIR/tensorboard (rank 0)
    progress: bool = True  # tqdm progress bars (rank 0, interactive terminals)
    num_threads: int | None = None  # torch intra-op threads while training (None = torch's default)
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"train.max_minutes must be > 0 or null, got {self.max_minutes}")
        for name in ("eval_every_steps", "max_steps", "checkpoint_every_steps", "max_steps_per_epoch", "num_threads",
                     "min_steps_per_epoch", "min_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"train.{name} must be >= 1 or null, got {value}")
        if self.early_stopping_patience < 0:
            raise ValueError("train.early_stopping_patience must be >= 0")
        if self.embedding_optimizer.name not in _EMB_OPTIMIZERS:
            raise ValueError(
                f"train.embedding_optimizer.name '{self.embedding_optimizer.name}' is not one of {list(_EMB_OPTIMIZERS)}"
            )
        if self.dense_optimizer.name not in _DENSE_OPTIMIZERS:
            raise ValueError(
                f"train.dense_optimizer.name '{self.dense_optimizer.name}' is not one of {list(_DENSE_OPTIMIZERS)}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got '{self.device}'")


SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel")
COMPUTE_KERNELS = ("fused", "fused_uvm", "fused_uvm_caching", "dense")


@dataclass
class TableShardingConfig:
    """How one table is sharded (unset fields fall back to the section-wide values)."""

    type: str | None = None  # table_wise | row_wise | column_wise | table_row_wise | data_parallel
    compute_kernel: str | None = None  # fused | fused_uvm | fused_uvm_caching (CUDA) | dense (data_parallel)

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in SHARDING_TYPES:
            raise ValueError(f"sharding type '{self.type}' is not one of {list(SHARDING_TYPES)}")
        if self.compute_kernel is not None and self.compute_kernel not in COMPUTE_KERNELS:
            raise ValueError(f"compute kernel '{self.compute_kernel}' is not one of {list(COMPUTE_KERNELS)}")


@dataclass
class ShardingConfig:
    """How the embedding tables are distributed over ranks (see docs/distributed.md).

    ``type: auto`` lets TorchRec's planner choose per table (within ``tables`` constraints and the
    memory budget); a sharding type applies to every table unless ``tables`` overrides it.
    """

    type: str = "auto"  # auto | table_wise | row_wise | column_wise | table_row_wise | data_parallel
    compute_kernel: str = "auto"  # auto (fused) | fused | fused_uvm | fused_uvm_caching | dense
    memory_budget_gb: float | None = None  # per-rank budget for tables + optimizer state (None = device size)
    tables: dict[str, TableShardingConfig] = field(default_factory=dict)  # per-table overrides, by table name

    def __post_init__(self) -> None:
        if self.type != "auto" and self.type not in SHARDING_TYPES:
            raise ValueError(f"sharding.type '{self.type}' is not auto or one of {list(SHARDING_TYPES)}")
        if self.compute_kernel != "auto" and self.compute_kernel not in COMPUTE_KERNELS:
            raise ValueError(f"sharding.compute_kernel '{self.compute_kernel}' is not auto or one of {list(COMPUTE_KERNELS)}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"sharding.memory_budget_gb must be > 0, got {self.memory_budget_gb}")


@dataclass
class ExperimentConfig:
    """A CTR experiment (``task: ctr``): pooled sparse + dense features, BCE, AUC/logloss."""

    task: str = "ctr"  # the model family (recsys_emb/train/tasks): ctr | sequence | graph | two_tower
    name: str = "experiment"  # free-form label, written into metrics.json
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)  # table groups + technique chains (config/embedding.py)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
