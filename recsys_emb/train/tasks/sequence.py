"""Sequence-ranking task (``task: sequence``): DIN / two-stage / DARE, BCE + auxiliary losses, AUC/GAUC.

1. The raw sequences are loaded and the leave-last-out protocol applied (recsys_emb/data/sequences.py;
   cold start with ``data.holdout_items``: recsys_emb/data/cold_start.py).
2. The model is built on stock ``EmbeddingCollection`` tables (coupled or DARE layout, optionally
   semantic-ID / hashed item features) and, like every family, trained under
   ``DistributedModelParallel`` by :func:`recsys_emb.train.trainer.fit`.
3. Training negatives are redrawn every epoch (``(seed, epoch)``); each global batch of
   ``train.batch_size`` examples (order from ``(train.seed, epoch)``) is split into equal parts, one
   per rank (the at most ``world_size - 1`` leftover examples of a batch are not used).
4. Selection: validation AUC; metrics AUC, GAUC (per-user, impression-weighted) and logloss. Every
   rank scores the whole split (evaluation is not split over ranks yet: the same result on each).
   The test metrics (of the restored best model) add the cold-start ``warm`` / ``new`` splits when the
   data set has them, and the search-stage time per batch of two-stage models.
"""

from __future__ import annotations

import dataclasses

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recsys_emb.config.io import save_config
from recsys_emb.config.sequence import SequenceExperimentConfig
from recsys_emb.data.cold_start import make_sequence_dataset
from recsys_emb.data.sequences import Examples, SequenceBatch, SequenceDataset
from recsys_emb.models.long_sequence import TwoStageModel
from recsys_emb.models.sequence import SequenceTrain, build_sequence_model
from recsys_emb.train.env import DistEnv
from recsys_emb.train.parallel import inner_model
from recsys_emb.train.ranking_metrics import RankingMetrics
from recsys_emb.train.trainer import Task, eval_mode, main_first, split_rows


def evaluate_sequence(
    model: nn.Module, ds: SequenceDataset, examples: Examples, batch_size: int, env: DistEnv, *, progress: bool = False
) -> dict[str, float]:
    """AUC, GAUC (per-user, impression-weighted) and logloss of ``model`` (a ``SequenceTrain``) on ``examples``.

    Each rank scores a contiguous share of ``ceil(R / world_size)`` rows; a short last share is padded
    with copies of a row (every rank then runs the same batches: the sharded lookups are collective)
    whose scores are dropped, and the ranks' rows are gathered: every row counted once, the same
    metrics on every rank."""
    metrics = RankingMetrics()
    per_rank = -(-len(examples) // env.world_size)
    rows = np.arange(env.rank * per_rank, min((env.rank + 1) * per_rank, len(examples)))
    real = len(rows)
    if 0 < len(examples) and real < per_rank:
        rows = np.concatenate([rows, np.zeros(per_rank - real, dtype=rows.dtype)])  # padding, scored then dropped
    mine = examples.take(rows)
    total = math.ceil(len(mine) / batch_size)
    with eval_mode(model):
        for i, batch in enumerate(tqdm(ds.batches(mine, batch_size), total=total, desc="eval", disable=not progress,
                                       leave=False, file=sys.stderr)):
            _, (_, logits, labels) = model(batch.to(env.device))
            keep = max(0, min(batch_size, real - i * batch_size))  # the padding rows come last
            metrics.update(logits[:keep], labels[:keep], batch.users[:keep])
    return metrics.compute()


def absolute_paths(cfg: SequenceExperimentConfig) -> SequenceExperimentConfig:
    """``cfg`` with its file paths (data folder, cache, SID codes and tokeniser) made absolute, as the run's
    ``config.yaml`` records them: ``--resume`` from another working directory reads the same files."""
    def resolved(obj, names):  # noqa: ANN001, ANN202
        return dataclasses.replace(obj, **{k: str(Path(getattr(obj, k)).resolve()) for k in names if getattr(obj, k)})

    sid = resolved(cfg.model.sid, ("codes", "sentencepiece_model"))
    return dataclasses.replace(cfg, data=resolved(cfg.data, ("path", "cache_dir")),
                               model=dataclasses.replace(cfg.model, sid=sid))


class SequenceTask(Task):
    """The sequence-ranking family on :class:`SequenceExperimentConfig`.

    Args:
        cfg: the experiment.
        dataset: an already built data set for ``cfg.data`` (benchmarks reuse one across runs).
    """

    name = "sequence"
    select_metric = "auc"

    def __init__(self, cfg: SequenceExperimentConfig, dataset: SequenceDataset | None = None) -> None:
        self.cfg, self.ds = absolute_paths(cfg), dataset
        self._epoch_examples: tuple[int, Examples] | None = None

    def prepare(self, env: DistEnv) -> None:
        if self.ds is None:
            self.ds = main_first(env, lambda: make_sequence_dataset(self.cfg.data))  # rank 0 fills the parse cache

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.cfg, run_dir / "config.yaml")

    def build_model(self) -> nn.Module:
        model = self.cfg.model
        freqs = self.ds.feature_frequencies() if model.name == "din" and model.din.mba_lambda > 0 else None
        return SequenceTrain(build_sequence_model(model, self.ds.table_sizes(), freqs, device="meta", dataset=self.ds))

    def _examples(self, epoch: int) -> Examples:
        if self._epoch_examples is None or self._epoch_examples[0] != epoch:
            self._epoch_examples = (epoch, self.ds.examples("train", epoch))
        return self._epoch_examples[1]

    def _global_batches(self, epoch: int, env: DistEnv) -> list[np.ndarray]:
        """Row indices of every global batch of ``epoch`` that has at least one row per rank."""
        tc, n = self.cfg.train, len(self._examples(epoch))
        order = np.random.default_rng(tc.seed * 1000 + epoch).permutation(n) if tc.shuffle else np.arange(n)
        return [order[lo : lo + tc.batch_size] for lo in range(0, n, tc.batch_size) if min(tc.batch_size, n - lo) >= env.world_size]

    def num_batches(self, epoch: int, env: DistEnv) -> int:
        return len(self._global_batches(epoch, env))

    def batches(self, epoch: int, env: DistEnv, skip: int) -> Iterator[SequenceBatch]:
        examples = self._examples(epoch)
        for rows in self._global_batches(epoch, env)[skip:]:
            yield self.ds.make_batch(examples.take(rows[split_rows(len(rows), env)]))

    def evaluate(self, model: nn.Module, split: str, env: DistEnv) -> dict[str, Any]:
        tc = self.cfg.train
        progress = tc.progress and env.is_main
        if split != "test":
            return evaluate_sequence(model, self.ds, self.ds.examples(split), tc.eval_batch_size, env, progress=progress)
        inner = inner_model(model)
        timed = isinstance(inner, TwoStageModel)
        if timed:
            inner.time_search, inner.search_seconds, inner.search_calls = True, 0.0, 0
        test = evaluate_sequence(model, self.ds, self.ds.examples("test"), tc.eval_batch_size, env, progress=progress)
        for name, examples in getattr(self.ds, "extra_test_splits", dict)().items():  # cold start: warm / new items
            test[name] = evaluate_sequence(model, self.ds, examples, tc.eval_batch_size, env, progress=progress)
        if timed:
            test["search_ms_per_batch"] = 1000.0 * inner.search_seconds / max(inner.search_calls, 1)
            inner.time_search = False
        return test

    def summary(self) -> dict[str, Any]:
        return self.ds.summary()

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        m = self.cfg.model
        return {"decoupled": m.decoupled, "embedding_dim": m.embedding_dim, "attention_dim": m.attention_dim or m.embedding_dim}
