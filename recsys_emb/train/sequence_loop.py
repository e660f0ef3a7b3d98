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
5. writes ``config.yaml``, ``model.pt`` (best weights, ``torch.load(weights_only=True)``),
   ``metrics.json`` (valid/test AUC, GAUC, logloss, search-stage time per batch for two-stage models)
   and ``tensorboard/`` (``train.tensorboard``; rank 0: train loss and samples/s every
   ``train.log_every_steps``, valid AUC/GAUC/logloss per epoch, test AUC/GAUC at each new best);
6. checkpoints after every epoch and every ``train.checkpoint_every_steps`` steps: ``checkpoint.pt``
   (model, optimizer, RNG, loop position; one atomic ``torch.save`` file read back with
   ``weights_only=True``), or ``checkpoint/`` (torch.distributed.checkpoint) when sharded, both through
   recsys_emb/train/checkpoint.py. ``resume=True`` continues from it; the batches of an epoch depend only
   on ``(seed, epoch)`` and the resumed loop skips those already trained, so a resumed run ends with
   exactly the weights and metrics of an uninterrupted one.

CLI: :func:`add_train_seq_arguments` / :func:`run_train_seq`
(``recsys-emb train-seq --config CFG [--run-dir DIR] [--resume]``).
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
from recsys_emb.config.io import load_config, run_config_and_dir, save_config
from recsys_emb.data.cold_start import make_sequence_dataset
from recsys_emb.data.sequences import GROUPS, Examples, SequenceBatch, SequenceDataConfig, SequenceDataset
from recsys_emb.models.din import DIN, DINConfig, bce
from recsys_emb.models.long_sequence import TwoStageConfig, TwoStageModel
from recsys_emb.modules.dare import DecoupledEmbeddingCollection, coupled_table_configs, dare_table_configs
from recsys_emb.modules.sid_sequence import ITEM_FEATURES, SequenceSidConfig
from recsys_emb.train.checkpoint import export_model
from recsys_emb.train.optim import optimizer_class, optimizer_kwargs
from recsys_emb.train.ranking_metrics import RankingMetrics
from recsys_emb.utils import log

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
    """A sequence-ranking experiment: data, model, training."""

    name: str = "sequence"  # free-form label, written into metrics.json
    data: SequenceDataConfig = field(default_factory=SequenceDataConfig)
    model: SequenceModelConfig = field(default_factory=SequenceModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=1024, eval_batch_size=4096))  # tensorboard: RUN_DIR/tensorboard
    sharded: bool = False  # wrap in DistributedModelParallel with fused table optimizers
    progress: bool = True  # tqdm progress bars
    num_threads: int | None = None  # torch intra-op threads while training (1 is much faster on an oversubscribed CPU); None = unchanged


def build_sequence_model(
    cfg: SequenceModelConfig,
    table_sizes: dict[str, int],
    frequencies: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    dataset: SequenceDataset | None = None,
) -> nn.Module:
    """The unsharded model (``DIN`` or ``TwoStageModel``) on a coupled or DARE table layout (+ SID item features)."""
    if cfg.item_features != "id" or cfg.item_hash_buckets:
        from recsys_emb.modules.sid_sequence import build_sequence_item_embedding

        embedding = build_sequence_item_embedding(cfg, table_sizes, dataset, device=device)
    elif cfg.decoupled:
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
        (tables if (".embeddings." in name or ".embedding_bags." in name) else dense)[name] = p
    parts = []
    for key, params, oc in (("tables", tables, tc.embedding_optimizer), ("dense", dense, tc.dense_optimizer)):
        if params:
            cls, kwargs = optimizer_class(oc.name), optimizer_kwargs(oc)
            parts.append((key, KeyedOptimizerWrapper(params, lambda ps, cls=cls, kwargs=kwargs: cls(ps, **kwargs))))
    return CombinedOptimizer(parts)


def train_sequence(
    cfg: SequenceExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    dataset: SequenceDataset | None = None,
    resume: bool = False,
    _interrupt_at_step: int | None = None,
) -> dict[str, Any]:
    """Train, validate (early stopping) and test; returns (and writes into ``run_dir``) the metrics.

    Args:
        cfg: the experiment.
        run_dir: output folder (new or empty unless ``resume``); None = nothing written, no checkpoints.
        dataset: an already built dataset for ``cfg.data`` (benchmarks reuse one across runs).
        resume: continue from the last checkpoint in ``run_dir``; the results equal an uninterrupted run's.
        _interrupt_at_step: tests only: stop right after the checkpoint of this global step, as if killed.
    """
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_sequence(cfg, run_dir, dataset, resume, _interrupt_at_step)
    finally:
        torch.set_num_threads(previous_threads)


def _train_sequence(
    cfg: SequenceExperimentConfig, run_dir: str | Path | None, dataset: SequenceDataset | None, resume: bool, interrupt_at: int | None
) -> dict[str, Any]:
    tc = cfg.train
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is None and resume:
        raise ValueError("resume needs the run dir holding the checkpoint")
    if run_path is not None:
        if resume and not _has_checkpoint(cfg, run_path):
            raise FileNotFoundError(f"--resume: {run_path} holds no checkpoint to resume from")
        if not resume and run_path.exists() and any(run_path.iterdir()):
            raise FileExistsError(f"run dir {run_path} is not empty: pass --resume to continue it, or choose another --run-dir")
        run_path.mkdir(parents=True, exist_ok=True)
        if not resume:
            save_config(cfg, run_path / "config.yaml")
    ds = dataset if dataset is not None else make_sequence_dataset(cfg.data)
    log(f"[train-seq] data: {json.dumps(ds.summary())}")
    torch.manual_seed(tc.seed)
    freqs = ds.feature_frequencies() if cfg.model.name == "din" and cfg.model.din.mba_lambda > 0 else None
    env = None
    if cfg.sharded:
        from recsys_emb.train.env import init_distributed
        from recsys_emb.train.optim import build_optimizer, shard_model

        env = init_distributed(tc.device)
        device = env.device
        model = SequenceTrain(build_sequence_model(cfg.model, ds.table_sizes(), freqs, device="meta", dataset=ds))
        model, unfused = shard_model(model, env, tc)
        optimizer = build_optimizer(model, unfused, tc)
    else:
        from recsys_emb.train.env import resolve_device

        device = resolve_device(tc.device)
        # .to(device): the tables are built there, the MLPs and transform buffers on the CPU.
        model = SequenceTrain(build_sequence_model(cfg.model, ds.table_sizes(), freqs, device=device, dataset=ds)).to(device)
        optimizer = _plain_optimizer(model, tc)
    try:
        return _loop(cfg, run_path, ds, model, optimizer, device, env.is_main if env is not None else True, resume, interrupt_at)
    finally:
        if env is not None:
            from recsys_emb.train.env import shutdown

            shutdown(env)


def _has_checkpoint(cfg: SequenceExperimentConfig, run_path: Path) -> bool:
    """Whether ``run_path`` holds a checkpoint to resume: ``checkpoint.pt`` (unsharded) or ``checkpoint/`` (sharded)."""
    from recsys_emb.train.checkpoint import resolve_checkpoint

    return resolve_checkpoint(run_path / "checkpoint") is not None if cfg.sharded else (run_path / "checkpoint.pt").is_file()


def _save_checkpoint(cfg, run_path, model, optimizer, state) -> None:  # noqa: ANN001
    from recsys_emb.train.checkpoint import save_checkpoint, save_file_checkpoint

    if cfg.sharded:
        save_checkpoint(run_path / "checkpoint", model, optimizer, state)  # collective
    else:
        save_file_checkpoint(run_path / "checkpoint.pt", model, optimizer, state)


def _load_checkpoint(cfg, run_path, model, optimizer) -> dict[str, Any]:  # noqa: ANN001
    from recsys_emb.train.checkpoint import load_checkpoint, load_file_checkpoint
    from recsys_emb.train.optim import materialize_state

    materialize_state(optimizer)  # lazily created optimizer state must exist to be loaded into
    if cfg.sharded:
        return load_checkpoint(run_path / "checkpoint", model, optimizer)
    return load_file_checkpoint(run_path / "checkpoint.pt", model, optimizer)


def _loop(cfg, run_path, ds, model, optimizer, device, is_main=True, resume=False, interrupt_at=None) -> dict[str, Any]:  # noqa: ANN001
    tc = cfg.train
    valid_ex, test_ex = ds.examples("valid"), ds.examples("test")
    state: dict[str, Any] = {
        "epoch": 0, "step_in_epoch": 0, "step": 0, "best_auc": -math.inf, "best_epoch": None, "best_valid": None,
        "best_test": None, "bad": 0, "history": [], "train_loss": [], "seconds": 0.0, "samples": 0,
        "stop_reason": None, "done": False,
    }
    if resume:
        state = _load_checkpoint(cfg, run_path, model, optimizer)
        # A finished run may be extended (more epochs / a larger max_steps); early stopping stays final.
        if state["stop_reason"] == "max_steps" and (tc.max_steps is None or state["step"] < tc.max_steps):
            state["stop_reason"] = None
        state["done"] = state["stop_reason"] is not None or state["epoch"] >= tc.epochs
        log(f"[train-seq] resumed from {run_path} at step {state['step']} (epoch {state['epoch'] + 1}, batch {state['step_in_epoch']})")
    writer = None
    if tc.tensorboard and run_path is not None and is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_path / "tensorboard"))
    show = cfg.progress and is_main
    model.train()
    while not state["done"]:
        epoch = state["epoch"]
        train_ex = ds.examples("train", epoch)
        total = math.ceil(len(train_ex) / tc.batch_size)
        batches = ds.batches(train_ex, tc.batch_size, shuffle=tc.shuffle, seed=tc.seed * 1000 + epoch, skip=state["step_in_epoch"])
        bar = tqdm(batches, total=total, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not show, leave=False, file=sys.stderr)
        window_samples, window_start = 0, time.perf_counter()
        for batch in bar:
            if tc.max_steps is not None and state["step"] >= tc.max_steps:  # resumed from the checkpoint of the last step
                state["stop_reason"] = "max_steps"
                break
            tick = time.perf_counter()
            loss, _ = model(batch.to(device))
            optimizer.zero_grad()
            loss.backward()
            if tc.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], tc.grad_clip_norm)
            optimizer.step()
            now = time.perf_counter()
            state["seconds"] += now - tick
            state["samples"] += batch.labels.numel()
            window_samples += batch.labels.numel()
            state["step"] += 1
            state["step_in_epoch"] += 1
            step = state["step"]
            if step % tc.log_every_steps == 0:
                value, rate = float(loss.detach()), window_samples / max(now - window_start, 1e-9)
                window_samples, window_start = 0, now
                state["train_loss"].append([step, value])
                bar.set_postfix(loss=f"{value:.4f}", sps=f"{rate:,.0f}")
                if writer is not None:
                    writer.add_scalar("train/loss", value, step)
                    writer.add_scalar("train/samples_per_second", rate, step)
            if run_path is not None and tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
                _save_checkpoint(cfg, run_path, model, optimizer, state)
                if interrupt_at is not None and step >= interrupt_at:
                    bar.close()
                    return {"interrupted_at_step": step}
            if tc.max_steps is not None and step >= tc.max_steps:
                state["stop_reason"] = "max_steps"
                break
        bar.close()
        # resumed after a max_steps stop at the end of an epoch: that step is already validated
        if not (state["history"] and state["history"][-1]["step"] == state["step"]):
            valid = evaluate_sequence(model, ds, valid_ex, tc.eval_batch_size, device, progress=show)
            state["history"].append({"epoch": epoch + 1, "step": state["step"], **valid})
            if writer is not None:
                for name in ("auc", "gauc", "logloss"):
                    writer.add_scalar(f"valid/{name}", valid[name], state["step"])
            if valid["auc"] > state["best_auc"]:
                test = _test_metrics(cfg, model, ds, test_ex, device)
                state.update(best_auc=valid["auc"], best_epoch=epoch + 1, best_valid=valid, best_test=test, bad=0)
                if run_path is not None:
                    export_model(run_path / "model.pt", model)
                if writer is not None:
                    writer.add_scalar("test/auc", test["auc"], state["step"])
                    writer.add_scalar("test/gauc", test["gauc"], state["step"])
                log(f"[train-seq] epoch {epoch + 1}: valid auc {valid['auc']:.5f} gauc {valid['gauc']:.5f} (best); test auc {test['auc']:.5f}")
            else:
                state["bad"] += 1
                log(f"[train-seq] epoch {epoch + 1}: valid auc {valid['auc']:.5f} (no gain {state['bad']}/{tc.early_stopping_patience})")
                if 0 < tc.early_stopping_patience <= state["bad"]:
                    state["stop_reason"] = "early_stopping"
        if state["stop_reason"] is None:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        state["done"] = state["stop_reason"] is not None or state["epoch"] >= tc.epochs
        if run_path is not None:
            _save_checkpoint(cfg, run_path, model, optimizer, state)
    if writer is not None:
        writer.close()
    results = {
        "name": cfg.name, "model": cfg.model.name, "decoupled": cfg.model.decoupled,
        "attention_dim": cfg.model.attention_dim or cfg.model.embedding_dim, "embedding_dim": cfg.model.embedding_dim,
        "best_epoch": state["best_epoch"], "valid": state["best_valid"], "test": state["best_test"], "steps": state["step"],
        "epochs_completed": state["epoch"], "samples_per_second": state["samples"] / max(state["seconds"], 1e-9),
        "stop_reason": state["stop_reason"] or "epochs", "history": state["history"], "train_loss": state["train_loss"],
        "data": ds.summary(),
    }
    if run_path is not None and is_main:
        from recsys_emb.utils import atomic_save_json

        atomic_save_json(run_path / "metrics.json", results)
    return results


def _test_metrics(cfg, model, ds, test_ex, device) -> dict[str, float]:  # noqa: ANN001
    inner = _unwrap(model)
    timed = isinstance(inner, TwoStageModel)
    if timed:
        inner.time_search, inner.search_seconds, inner.search_calls = True, 0.0, 0
    test = evaluate_sequence(model, ds, test_ex, cfg.train.eval_batch_size, device, progress=cfg.progress)
    for split, examples in getattr(ds, "extra_test_splits", dict)().items():  # cold start: warm / new items
        test[split] = evaluate_sequence(model, ds, examples, cfg.train.eval_batch_size, device, progress=cfg.progress)
    if timed:
        test["search_ms_per_batch"] = 1000.0 * inner.search_seconds / max(inner.search_calls, 1)
        inner.time_search = False
    return test


# ------------------------------------------------------------------------------------------ CLI


def add_train_seq_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys-emb train-seq``."""
    parser.add_argument("--config", type=Path, default=None, help="YAML experiment (e.g. configs/amazon_beauty_din.yaml); required unless --resume")
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (new or empty; default runs/<config name>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint (uses RUN_DIR/config.yaml)")
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
    config_path, run_dir = run_config_and_dir(
        args.config, args.run_dir, args.resume, example="configs/amazon_beauty_dare_tiny.yaml", tag="train-seq"
    )
    cfg = load_config(SequenceExperimentConfig, config_path, overrides)
    log(f"[train-seq] run dir: {run_dir}")
    results = train_sequence(cfg, run_dir, resume=args.resume)
    print(json.dumps(results["test"]), flush=True)
    return 0
