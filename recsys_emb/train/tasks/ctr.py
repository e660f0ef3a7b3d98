"""CTR task (``task: ctr``): pooled sparse + dense features, BCE, AUC/logloss (DLRM, DCN-v2, DeepFM, LR).

Data: Criteo-format TSV (raw, prepared into the cache once, memory-mapped after) or a prepared
folder (recsys_emb/data/resolve.py). Every global batch is split into equal contiguous parts, one
per rank (:class:`recsys_emb.data.dataset.BatchIterator`), so step ``s`` of an N-rank run sees the
rows of step ``s`` of a one-process run. Selection: validation AUC. Final splits: test (when it has
labels) and the first :data:`TRAIN_EVAL_ROWS` training rows (``train`` metrics).

Besides ``config.yaml`` the run folder gets ``data/`` (``meta.json`` + ``vocab/``): the training
vocabulary, so ``recsys-emb evaluate`` encodes raw files exactly like the training data.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchrec import EmbeddingBagConfig

from recsys_emb.config.experiment import ExperimentConfig, TrainConfig
from recsys_emb.config.io import ConfigError, save_config
from recsys_emb.data.dataset import Batch, BatchIterator, PreparedCTRData
from recsys_emb.data.resolve import Split, resolve_data
from recsys_emb.models import build_model
from recsys_emb.models.lr import FIRST_ORDER_SUFFIX
from recsys_emb.models.train import CTRTrain
from recsys_emb.train.env import DistEnv
from recsys_emb.train.metrics import CTRMetrics
from recsys_emb.train.schedule import sized_schedule
from recsys_emb.train.trainer import Task, main_first
from recsys_emb.utils import log

TRAIN_EVAL_ROWS = 100_000  # rows of the training split re-scored at the end for "train" metrics


def table_configs(data: PreparedCTRData, embedding_dim: int, init_bound: float | None = None) -> list[EmbeddingBagConfig]:
    """One table per sparse feature, sized by the training vocabulary (init uniform(+-init_bound) if given)."""
    from recsys_emb.modules.spec import uniform_init

    return [
        EmbeddingBagConfig(name=f"t_{name}", embedding_dim=embedding_dim, num_embeddings=size, feature_names=[name],
                           **uniform_init(init_bound))
        for name, size in zip(data.sparse_features, data.vocab_sizes)
    ]


def build_ctr_model(cfg: ExperimentConfig, data: PreparedCTRData, device: str | torch.device = "cpu") -> nn.Module:
    """The unsharded ``CTRTrain(model)`` for a config and its training data (``device='meta'`` for DMP).

    Every table comes from ``cfg.embedding`` (recsys_emb/modules/spec.py): the embedding of the
    factorised models and the per-id weights of ``lr`` / ``deepfm`` (``<table>_first_order``: the same
    pre-transforms and layout at ``first_order_dim``, zero-initialised, without post-transforms).

    Features that the data says use the same table (``data.tables``: a schema's ``table:``) share ONE
    embedding table ``t_<table>`` (and one ``t_<table>_first_order``); every other feature has its own."""
    from recsys_emb.modules.spec import assign_groups, build_pooled, resolve_chain, uniform_init

    m = cfg.model
    vocab = dict(zip(data.sparse_features, data.vocab_sizes))
    tables = dict(getattr(data, "tables", None) or {})  # absent (other data objects): one table per feature
    groups = assign_groups(cfg.embedding, list(vocab), family=m.name)
    dev = torch.device(device)
    context = {"data": data}
    embedding = first_order = None
    if m.name != "lr":
        embedding = build_pooled(cfg.embedding, vocab, m.embedding_dim, family=m.name, prefix="t_",
                                 init=uniform_init(m.embedding_init_bound), context=context, device=dev, groups=groups,
                                 tables=tables)
    else:
        for group, _ in groups:
            post = [t.name for t, _ in resolve_chain(group, sequence=False).post]
            if post:
                raise ConfigError(f"embedding group '{group.name}': '{post[0]}' searches embedding dims, but 'lr' has "
                                  "one weight per id; use it with dlrm, dcnv2 or deepfm")
    if m.name in ("lr", "deepfm"):
        first = [(dataclasses.replace(g, chain=[first_order_entry(e, g.name) for e in g.chain]), fs) for g, fs in groups]
        first_order = build_pooled(cfg.embedding, vocab, m.first_order_dim, family=m.name, prefix="t_", suffix=FIRST_ORDER_SUFFIX,
                                   init={"weight_init_min": 0.0, "weight_init_max": 0.0}, context=context, device=dev,
                                   post=False, groups=first, tables=tables)
    return CTRTrain(build_model(m, embedding, [], len(data.dense_features), device=dev, first_order=first_order))


def first_order_entry(entry: Any, group: str) -> Any:
    """A chain entry for the per-id weight tables: ``unified`` with one probe of the full width (a weight is one
    scalar per id: probes and chunk widths of the embedding do not apply), other entries unchanged."""
    from recsys_emb.config.embedding import technique_entry

    name, options = technique_entry(entry, group)
    if name != "unified":
        return entry
    return {name: {**options, "probes": 1, "probes_per_feature": {}, "chunk_dim": None, "combine": "concat"}}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int, env: DistEnv, max_rows: int | None = None) -> dict[str, float]:
    """AUC/logloss of ``model`` (a ``CTRTrain``, sharded or not) over a split, reduced across ranks."""
    data, start, stop = split.open()
    if data.labels is None:
        raise ValueError(f"{split.root} has no labels: cannot compute metrics")
    if max_rows is not None:
        stop = min(stop, start + max_rows)
    batches = BatchIterator(data, batch_size, start=start, stop=stop, rank=env.rank, world_size=env.world_size)
    was_training = model.training
    model.eval()
    metrics = CTRMetrics()
    for batch in batches.epoch():
        _, (_, logits, labels) = model(batch.to(env.device))
        metrics.update(logits, labels)
    model.train(was_training)
    return metrics.compute()


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its data paths made absolute (what ``config.yaml`` of a run records)."""
    data = dataclasses.replace(
        cfg.data,
        **{k: str(Path(v).resolve()) for k in ("train", "valid", "test") if (v := getattr(cfg.data, k)) is not None},
    )
    return dataclasses.replace(cfg, data=data)


class CTRTask(Task):
    """The CTR family on :class:`ExperimentConfig`."""

    name = "ctr"
    select_metric = "auc"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = absolute_paths(cfg)

    def prepare(self, env: DistEnv) -> None:
        self.splits = main_first(env, lambda: resolve_data(self.cfg.data))
        self.train_data, self.train_start, self.train_stop = self.splits["train"].open()
        self.final_splits = ("test", "train") if self._test_has_labels() else ("train",)
        self._loader: BatchIterator | None = None
        self._env = env

    def _test_has_labels(self) -> bool:
        return "test" in self.splits and PreparedCTRData.open(self.splits["test"].root).labels is not None

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.cfg, run_dir / "config.yaml")
        _copy_vocab(self.train_data.root, run_dir)

    def build_model(self) -> nn.Module:
        return build_ctr_model(self.cfg, self.train_data, device="meta")

    def schedule(self, tc: TrainConfig, env: DistEnv) -> TrainConfig:
        """``tc`` sized to the training rows (``train.min_steps_per_epoch`` / ``train.min_steps``); batches use it."""
        sized = sized_schedule(tc, self.train_stop - self.train_start, env.world_size)
        self.cfg = dataclasses.replace(self.cfg, train=sized)
        self._loader = None
        return sized

    def loader(self, env: DistEnv) -> BatchIterator:
        if self._loader is None:
            tc = self.cfg.train
            # Global batches split over ranks: every rank runs the same number of steps (no hang at epoch end).
            self._loader = BatchIterator(
                self.train_data, tc.batch_size, start=self.train_start, stop=self.train_stop, shuffle=tc.shuffle,
                seed=tc.seed, rank=env.rank, world_size=env.world_size, equal_parts=True,
            )
            if env.is_main and self._loader.rows_left_out:
                log(
                    f"[ctr] {self._loader.rows_left_out} row(s) per epoch are left out: the last global batch is split "
                    f"into {env.world_size} equal parts (shuffling makes them different rows each epoch)"
                )
        return self._loader

    def num_batches(self, epoch: int, env: DistEnv) -> int:
        return self.loader(env).num_batches()

    def batches(self, epoch: int, env: DistEnv, skip: int) -> Iterator[Batch]:
        return self.loader(env).epoch(epoch, skip=skip)

    def evaluate(self, model: nn.Module, split: str, env: DistEnv) -> dict[str, Any]:
        max_rows = TRAIN_EVAL_ROWS if split == "train" else None
        return evaluate(model, self.splits[split], self.cfg.train.eval_batch_size, env, max_rows=max_rows)

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": self.train_stop - self.train_start, "sparse_features": len(self.train_data.sparse_features),
            "dense_features": len(self.train_data.dense_features), "splits": sorted(self.splits),
        }


def _copy_vocab(train_root: Path, run_dir: Path) -> None:
    out = run_dir / "data"
    if out.exists():
        return
    tmp = run_dir / ".data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(train_root / "meta.json", tmp / "meta.json")
    if (train_root / "vocab").is_dir():
        shutil.copytree(train_root / "vocab", tmp / "vocab")
    tmp.rename(out)
