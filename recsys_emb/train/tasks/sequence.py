"""Sequence-ranking task (``task: sequence``): DIN / two-stage / DARE, BCE + auxiliary losses, AUC/GAUC.

1. The raw sequences are loaded and the leave-last-out protocol applied (recsys_emb/data/sequences.py;
   cold start with ``data.holdout_items``: recsys_emb/data/cold_start.py).
2. The model's tables come from the ``embedding:`` spec (recsys_emb/models/sequence.py: fields and side
   features, any technique chain, DARE roles) and, like every family, it is trained under
   ``DistributedModelParallel`` by :func:`recsys_emb.train.trainer.fit`.
3. Training negatives are redrawn every epoch (``(seed, epoch)``); each global batch of
   ``train.batch_size`` examples (order from ``(train.seed, epoch)``) is split into equal parts, one
   per rank (the at most ``world_size - 1`` leftover examples of a batch are not used).
4. Selection: validation AUC; metrics AUC, GAUC (per-user, impression-weighted) and logloss. Each
   rank scores its share of the rows (:func:`evaluate_sequence`); the metrics are the same on each.
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
from torch import nn
from recsys_emb.console import tqdm

from recsys_emb.config.io import save_config
from recsys_emb.config.sequence import SequenceExperimentConfig
from recsys_emb.data.cold_start import make_sequence_dataset
from recsys_emb.config.embedding import EmbeddingSpec
from recsys_emb.data.sequences import FIELDS, FIRST_ID, Examples, SequenceBatch, SequenceDataConfig, SequenceDataset
from recsys_emb.models.long_sequence import TwoStageModel
from recsys_emb.models.sequence import SequenceFacts, SequenceTrain, build_sequence_model
from recsys_emb.modules.semantic_ids import ItemIds
from recsys_emb.train.env import DistEnv
from recsys_emb.train.parallel import inner_model
from recsys_emb.train.ranking_metrics import RankingMetrics
from recsys_emb.train.trainer import Task, eval_mode, main_first, split_rows
from recsys_emb.utils import atomic_save_json


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
    """``cfg`` with its file paths (data folder, cache, the semantic-ID codes and tokeniser of its chains) made
    absolute, as the run's ``config.yaml`` records them: ``--resume`` from another working directory reads the
    same files."""
    return dataclasses.replace(cfg, data=absolute_data_paths(cfg.data), embedding=absolute_chain_paths(cfg.embedding))


def absolute_data_paths(data: SequenceDataConfig) -> SequenceDataConfig:
    """``data`` with its folder, cache and hard-negative run made absolute."""
    return dataclasses.replace(data, **{k: str(Path(v).resolve()) for k in ("path", "cache_dir", "hard_negatives")
                                        if (v := getattr(data, k))})


def absolute_chain_paths(spec: EmbeddingSpec) -> EmbeddingSpec:
    """``spec`` with the file options of its chains (``codes``, ``sentencepiece_model``, ``compact_layout``) absolute."""
    def entry(e: Any) -> Any:
        if not isinstance(e, dict):
            return e
        (name, options), = e.items()
        options = dict(options or {})
        for k in ("codes", "sentencepiece_model", "compact_layout"):
            if options.get(k):
                options[k] = str(Path(options[k]).resolve())
        return {name: options}

    return dataclasses.replace(spec, groups=[dataclasses.replace(g, chain=[entry(e) for e in g.chain]) for g in spec.groups])


def sequence_facts(ds: SequenceDataset, world_size: int = 2) -> SequenceFacts:
    """What the tables need to know about ``ds``: fields, rows, bags per example, SID item ids, id counts.

    The one-id bags of a field are padded to ``max_history + 1`` per example only when several ranks run
    (TorchRec's sharded pooled tables need equal batch sizes); one process pads nothing."""
    counts = ds.feature_frequencies()
    counts["user"] = np.bincount(ds.positives("train").user, minlength=ds.num_users).astype(np.float64)
    items = {"item": ItemIds(raw_ids=ds.item_raw_ids, first_id=FIRST_ID, counts=ds.popularity[FIRST_ID:])}
    bags = int(ds.cfg.max_history) + 1 if world_size > 1 else None
    return SequenceFacts(dict(FIELDS), ds.table_sizes(), bags, {"items": items, "counts": counts})


def build_sequence_train(cfg: SequenceExperimentConfig, ds: SequenceDataset, world_size: int, device: str) -> nn.Module:
    """The unsharded ``SequenceTrain`` of an experiment (``device='meta'`` for DMP; one CPU process for export)."""
    model = cfg.model
    freqs = ds.feature_frequencies() if model.name == "din" and model.din.mba_lambda > 0 else None
    return SequenceTrain(build_sequence_model(model, cfg.embedding, sequence_facts(ds, world_size), freqs, device=device))


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
        self._world_size = env.world_size

    def write_run_files(self, run_dir: Path) -> None:
        from recsys_emb.train.tasks.graph import VOCABULARY_FILE

        save_config(self.cfg, run_dir / "config.yaml")
        atomic_save_json(run_dir / VOCABULARY_FILE, self.ds.vocabulary())  # the pipeline checks it against stage 1

    def build_model(self) -> nn.Module:
        return build_sequence_train(self.cfg, self.ds, self._world_size, device="meta")

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
        emb = inner_model(model).embedding
        return {"decoupled": emb.decoupled, "embedding_dim": self.cfg.model.embedding_dim,
                "attention_token_dim": emb.attention_dim, "representation_token_dim": emb.representation_dim}
