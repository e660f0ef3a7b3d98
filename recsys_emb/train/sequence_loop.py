"""Training and evaluation of behaviour-sequence rankers (DIN, two-stage, DARE) on jagged histories.

``train_sequence(cfg, run_dir)``:

1. loads the raw sequences and applies the leave-last-out protocol (recsys_emb/data/sequences.py);
2. builds the model with stock ``EmbeddingCollection`` tables (coupled or DARE layout);
3. trains with BCE (+ the model's ``aux_loss``: mini-batch-aware L2, auxiliary head), redrawing the
   training negatives every epoch; tables use ``train.embedding_optimizer``, the rest
   ``train.dense_optimizer``. ``sharded: true`` wraps the model in ``DistributedModelParallel`` with
   FBGEMM fused table optimizers (recsys_emb/train/optim.py); the default trains the unsharded module,
   which is faster on a small CPU machine;
4. validates (AUC) after every epoch with early stopping; at every new best it also scores the test
   split, so the reported test metrics are those of the best-validation epoch (no reload needed,
   which also holds for sharded EmbeddingCollections);
5. writes ``config.yaml``, ``model.pt`` (best weights, ``torch.load(weights_only=True)``) and
   ``metrics.json`` (valid/test AUC, GAUC, logloss, search-stage time per batch for two-stage models).

CLI: :func:`add_train_seq_arguments` / :func:`run_train_seq` (``recsys-emb train-seq --config CFG``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from recsys_emb.config.experiment import TrainConfig
from recsys_emb.config.io import load_config, save_config
from recsys_emb.data.sequences import GROUPS, Examples, SequenceBatch, SequenceDataConfig, SequenceDataset, load_raw
from recsys_emb.models.din import DIN, DINConfig, bce
from recsys_emb.models.long_sequence import TwoStageConfig, TwoStageModel
from recsys_emb.modules.dare import DecoupledEmbeddingCollection, coupled_table_configs, dare_table_configs
from recsys_emb.train.checkpoint import export_model
from recsys_emb.train.optim import optimizer_class, optimizer_kwargs
from recsys_emb.train.ranking_metrics import RankingMetrics

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


@dataclass
class SequenceExperimentConfig:
    """A sequence-ranking experiment: data, model, training."""

    name: str = "sequence"  # free-form label, written into metrics.json
    data: SequenceDataConfig = field(default_factory=SequenceDataConfig)
    model: SequenceModelConfig = field(default_factory=SequenceModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=1024, eval_batch_size=4096, tensorboard=False))
    sharded: bool = False  # wrap in DistributedModelParallel with fused table optimizers
    progress: bool = True  # tqdm progress bars
    num_threads: int | None = None  # torch intra-op threads while training (1 is much faster on an oversubscribed CPU); None = unchanged


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_sequence_model(
    cfg: SequenceModelConfig,
    table_sizes: dict[str, int],
    frequencies: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The unsharded model (``DIN`` or ``TwoStageModel``) on a coupled or DARE table layout."""
    if cfg.decoupled:
        att, rep = dare_table_configs(table_sizes, cfg.attention_dim or cfg.embedding_dim, cfg.embedding_dim, cfg.groups, init_std=cfg.init_std)
        embedding = DecoupledEmbeddingCollection(att, rep, device=device)
    else:
        embedding = DecoupledEmbeddingCollection(coupled_table_configs(table_sizes, cfg.embedding_dim, cfg.groups, init_std=cfg.init_std), device=device)
    if cfg.name == "din":
        freqs = {k: torch.as_tensor(v) for k, v in frequencies.items()} if frequencies is not None else None
        return DIN(embedding, cfg.groups, cfg.din, freqs)
    return TwoStageModel(embedding, cfg.groups, cfg.two_stage)


class SequenceTrain(nn.Module):
    """``forward(batch) -> (loss, (loss.detach(), logits.detach(), labels))``; loss = BCE + model.aux_loss(labels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SequenceBatch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        logits = self.model(batch.sparse_features)  # (B,)
        loss = bce(logits, batch.labels)
        aux = self.model.aux_loss(batch.labels) if self.training else None
        if aux is not None:
            loss = loss + aux
        return loss, (loss.detach(), logits.detach(), batch.labels)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DMP
    return inner.model if isinstance(inner, SequenceTrain) else inner


@torch.no_grad()
def evaluate_sequence(
    model: nn.Module, ds: SequenceDataset, examples: Examples, batch_size: int, device: torch.device, *, progress: bool = False
) -> dict[str, float]:
    """AUC, GAUC (per-user, impression-weighted) and logloss of ``model`` (a ``SequenceTrain``) on ``examples``."""
    was_training = model.training
    model.eval()
    metrics = RankingMetrics()
    total = math.ceil(len(examples) / batch_size)
    for batch in tqdm(ds.batches(examples, batch_size), total=total, desc="eval", disable=not progress, leave=False, file=sys.stderr):
        _, (_, logits, labels) = model(batch.to(device))
        metrics.update(logits, labels, batch.users)
    model.train(was_training)
    return metrics.compute()


def _plain_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer | None:
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

    tables, dense = {}, {}
    for name, p in model.named_parameters():
        (tables if (".embeddings." in name) else dense)[name] = p
    parts = []
    for key, params, oc in (("tables", tables, tc.embedding_optimizer), ("dense", dense, tc.dense_optimizer)):
        if params:
            cls, kwargs = optimizer_class(oc.name), optimizer_kwargs(oc)
            parts.append((key, KeyedOptimizerWrapper(params, lambda ps, cls=cls, kwargs=kwargs: cls(ps, **kwargs))))
    return CombinedOptimizer(parts)


def train_sequence(
    cfg: SequenceExperimentConfig, run_dir: str | Path | None = None, *, dataset: SequenceDataset | None = None
) -> dict[str, Any]:
    """Train, validate (early stopping) and test; returns (and writes into ``run_dir``) the metrics."""
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_sequence(cfg, run_dir, dataset)
    finally:
        torch.set_num_threads(previous_threads)


def _train_sequence(cfg: SequenceExperimentConfig, run_dir: str | Path | None, dataset: SequenceDataset | None) -> dict[str, Any]:
    tc = cfg.train
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        if run_path.exists() and any(run_path.iterdir()):
            raise FileExistsError(f"run dir {run_path} is not empty: choose another --run-dir")
        run_path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_path / "config.yaml")
    ds = dataset if dataset is not None else SequenceDataset(load_raw(cfg.data), cfg.data)
    log(f"[train-seq] data: {json.dumps(ds.summary())}")
    torch.manual_seed(tc.seed)
    freqs = ds.feature_frequencies() if cfg.model.name == "din" and cfg.model.din.mba_lambda > 0 else None
    env = None
    if cfg.sharded:
        from recsys_emb.train.env import init_distributed
        from recsys_emb.train.optim import build_optimizer, shard_model

        env = init_distributed(tc.device)
        device = env.device
        model = SequenceTrain(build_sequence_model(cfg.model, ds.table_sizes(), freqs, device="meta"))
        model, unfused = shard_model(model, env, tc)
        optimizer = build_optimizer(model, unfused, tc)
    else:
        from recsys_emb.train.env import resolve_device

        device = resolve_device(tc.device)
        model = SequenceTrain(build_sequence_model(cfg.model, ds.table_sizes(), freqs, device=device))
        optimizer = _plain_optimizer(model, tc)
    try:
        return _loop(cfg, run_path, ds, model, optimizer, device)
    finally:
        if env is not None:
            from recsys_emb.train.env import shutdown

            shutdown(env)


def _loop(cfg, run_path, ds, model, optimizer, device) -> dict[str, Any]:  # noqa: ANN001
    tc = cfg.train
    valid_ex, test_ex = ds.examples("valid"), ds.examples("test")
    best: dict[str, Any] = {"auc": -math.inf, "epoch": None, "valid": None, "test": None}
    history, bad, step, seconds, samples = [], 0, 0, 0.0, 0
    stop_reason = None
    model.train()
    for epoch in range(tc.epochs):
        train_ex = ds.examples("train", epoch)
        total = math.ceil(len(train_ex) / tc.batch_size)
        bar = tqdm(ds.batches(train_ex, tc.batch_size, shuffle=tc.shuffle, seed=tc.seed * 1000 + epoch), total=total,
                   desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not cfg.progress, leave=False, file=sys.stderr)
        for batch in bar:
            tick = time.perf_counter()
            loss, _ = model(batch.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds += time.perf_counter() - tick
            samples += batch.labels.numel()
            step += 1
            if step % tc.log_every_steps == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if tc.max_steps is not None and step >= tc.max_steps:
                stop_reason = "max_steps"
                break
        bar.close()
        valid = evaluate_sequence(model, ds, valid_ex, tc.eval_batch_size, device, progress=cfg.progress)
        history.append({"epoch": epoch + 1, "step": step, **valid})
        if valid["auc"] > best["auc"]:
            test = _test_metrics(cfg, model, ds, test_ex, device)
            best.update(auc=valid["auc"], epoch=epoch + 1, valid=valid, test=test)
            bad = 0
            if run_path is not None:
                export_model(run_path / "model.pt", model)
            log(f"[train-seq] epoch {epoch + 1}: valid auc {valid['auc']:.5f} gauc {valid['gauc']:.5f} (best); test auc {test['auc']:.5f}")
        else:
            bad += 1
            log(f"[train-seq] epoch {epoch + 1}: valid auc {valid['auc']:.5f} (no gain {bad}/{tc.early_stopping_patience})")
            if 0 < tc.early_stopping_patience <= bad:
                stop_reason = "early_stopping"
        if stop_reason is not None:
            break
    results = {
        "name": cfg.name, "model": cfg.model.name, "decoupled": cfg.model.decoupled,
        "attention_dim": cfg.model.attention_dim or cfg.model.embedding_dim, "embedding_dim": cfg.model.embedding_dim,
        "best_epoch": best["epoch"], "valid": best["valid"], "test": best["test"], "steps": step,
        "samples_per_second": samples / max(seconds, 1e-9), "stop_reason": stop_reason or "epochs", "history": history,
        "data": ds.summary(),
    }
    if run_path is not None:
        from recsys_emb.utils import atomic_save_json

        atomic_save_json(run_path / "metrics.json", results)
    return results


def _test_metrics(cfg, model, ds, test_ex, device) -> dict[str, float]:  # noqa: ANN001
    inner = _unwrap(model)
    timed = isinstance(inner, TwoStageModel)
    if timed:
        inner.time_search, inner.search_seconds, inner.search_calls = True, 0.0, 0
    test = evaluate_sequence(model, ds, test_ex, cfg.train.eval_batch_size, device, progress=cfg.progress)
    if timed:
        test["search_ms_per_batch"] = 1000.0 * inner.search_seconds / max(inner.search_calls, 1)
        inner.time_search = False
    return test


# ------------------------------------------------------------------------------------------ CLI


def add_train_seq_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys-emb train-seq``."""
    parser.add_argument("--config", required=True, help="YAML experiment (e.g. configs/amazon_beauty_din.yaml)")
    parser.add_argument("--run-dir", default=None, help="output folder (new or empty); omitted = nothing written")
    parser.add_argument("--data-path", default=None, help="folder with the raw files (overrides data.path)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (dotted key)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_train_seq(args: argparse.Namespace) -> int:
    """Run ``train-seq``; prints the test metrics as one JSON line."""
    overrides = list(args.set)
    if args.data_path is not None:
        overrides.append(f"data.path={args.data_path}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_config(SequenceExperimentConfig, args.config, overrides)
    results = train_sequence(cfg, args.run_dir)
    print(json.dumps(results["test"]), flush=True)
    return 0
