"""The CTR training loop: DMP model, fused table optimizers, early stopping, checkpoints, metrics.

``train(cfg, run_dir)`` writes into ``run_dir``:

- ``config.yaml``: the resolved experiment config (data paths made absolute);
- ``data/``: the training vocabulary (``meta.json`` + ``vocab/``), so ``recsys-emb evaluate`` can
  encode raw files exactly like the training data;
- ``checkpoint/``: the latest distributed checkpoint (``--resume`` continues from it);
- ``model.pt``: consolidated weights of the best validation AUC (``torch.load(weights_only=True)``);
- ``metrics.json`` and ``tensorboard/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagConfig
from tqdm import tqdm

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import save_config
from recsys_emb.data.dataset import BatchIterator, PreparedCTRData
from recsys_emb.data.resolve import Split, resolve_data
from recsys_emb.models import build_model
from recsys_emb.models.train import CTRTrain
from recsys_emb.train.checkpoint import (
    export_model, load_checkpoint, load_model_shards, resolve_checkpoint, save_checkpoint, save_model_shards,
)
from recsys_emb.train.env import DistEnv, init_distributed, shutdown
from recsys_emb.train.metrics import CTRMetrics
from recsys_emb.train.optim import build_optimizer, dense_parameters, materialize_state, shard_model
from recsys_emb.distributed.planning import describe_plan, table_dims
from recsys_emb.utils import atomic_save_json, atomic_write_text, log

TRAIN_EVAL_ROWS = 100_000  # rows of the training split re-scored at the end for "train" metrics


def table_configs(data: PreparedCTRData, embedding_dim: int, init_bound: float | None = None) -> list[EmbeddingBagConfig]:
    """One table per sparse feature, sized by the training vocabulary (init uniform(+-init_bound) if given)."""
    init = {} if init_bound is None else {"weight_init_min": -init_bound, "weight_init_max": init_bound}
    return [
        EmbeddingBagConfig(name=f"t_{name}", embedding_dim=embedding_dim, num_embeddings=size, feature_names=[name], **init)
        for name, size in zip(data.sparse_features, data.vocab_sizes)
    ]


def build_ctr_model(cfg: ExperimentConfig, data: PreparedCTRData, device: str | torch.device = "cpu") -> nn.Module:
    """The unsharded ``CTRTrain(model)`` for a config and its training data (``device='meta'`` for DMP)."""
    from recsys_emb.modules.registry import build_embedding

    tables = table_configs(data, cfg.model.embedding_dim, cfg.model.embedding_init_bound)
    embedding = build_embedding(cfg.embedding, tables, torch.device(device), data=data)
    model = build_model(cfg.model, embedding, tables, len(data.dense_features), device=torch.device(device))
    return CTRTrain(model)


def embedding_parameter_count(model: nn.Module) -> int:
    """Number of embedding-table parameters (rows x dim summed over tables)."""
    from torchrec import EmbeddingBagCollection

    return sum(
        cfg.num_embeddings * cfg.embedding_dim
        for m in model.modules()
        if isinstance(m, EmbeddingBagCollection)
        for cfg in m.embedding_bag_configs()
    )


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


def _resolve_splits(cfg: ExperimentConfig, env: DistEnv) -> dict[str, Split]:
    # Rank 0 prepares raw inputs into the cache first; the others then find them prepared.
    if env.is_main:
        splits = resolve_data(cfg.data)
    if env.world_size > 1:
        dist.barrier()
    if not env.is_main:
        splits = resolve_data(cfg.data)
    return splits


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    data = dataclasses.replace(
        cfg.data,
        **{k: str(Path(v).resolve()) for k in ("train", "valid", "test") if (v := getattr(cfg.data, k)) is not None},
    )
    return dataclasses.replace(cfg, data=data)


def train(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False, _interrupt_at_step: int | None = None) -> dict[str, Any]:
    """Train, validate, early-stop and test an experiment; returns (and writes) ``metrics.json``.

    Args:
        cfg: the experiment.
        run_dir: output folder (must be new or empty unless ``resume``).
        resume: continue from ``run_dir/checkpoint``; the final metrics equal an uninterrupted run's.
        _interrupt_at_step: tests only: stop right after the checkpoint of this global step, as if killed.
    """
    run_dir = Path(run_dir)
    cfg = _absolute_paths(cfg)
    env = init_distributed(cfg.train.device)
    try:
        return _train(cfg, run_dir, env, resume, _interrupt_at_step)
    finally:
        shutdown(env)


def _train(cfg: ExperimentConfig, run_dir: Path, env: DistEnv, resume: bool, interrupt_at: int | None) -> dict[str, Any]:
    tc = cfg.train
    checkpoint_dir = run_dir / "checkpoint"
    if resume and resolve_checkpoint(checkpoint_dir) is None:
        raise FileNotFoundError(f"--resume: {checkpoint_dir} holds no checkpoint to resume from")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run dir {run_dir} is not empty: pass --resume to continue it, or choose another --run-dir")
    splits = _resolve_splits(cfg, env)
    train_data, train_start, train_stop = splits["train"].open()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _copy_vocab(train_data.root, run_dir)

    torch.manual_seed(tc.seed)
    model = build_ctr_model(cfg, train_data, device="meta")
    embedding_parameters = embedding_parameter_count(model)
    dims = table_dims(model)
    dmp, unfused = shard_model(model, env, tc, cfg.sharding)
    optimizer = build_optimizer(dmp, unfused, tc)
    clip_params = dense_parameters(dmp, unfused)
    if env.is_main:
        text, warnings = describe_plan(
            dims, dmp.plan, env.world_size, tc.embedding_optimizer.name, cfg.sharding.memory_budget_gb
        )
        atomic_write_text(run_dir / "plan.txt", text + "\n")
        log(f"[train] sharding plan ({env.world_size} rank(s), {env.device.type}):\n{text}")
        for warning in warnings:
            log(f"[train] WARNING: {warning}")

    # Global batches split over ranks: every rank runs the same number of steps (no hang at epoch end).
    loader = BatchIterator(
        train_data, tc.batch_size, start=train_start, stop=train_stop, shuffle=tc.shuffle, seed=tc.seed,
        rank=env.rank, world_size=env.world_size, equal_parts=True,
    )
    if env.is_main and loader.rows_left_out:
        log(
            f"[train] {loader.rows_left_out} row(s) per epoch are left out: the last global batch is split into "
            f"{env.world_size} equal parts (shuffling makes them different rows each epoch)"
        )
    state: dict[str, Any] = {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_auc": -math.inf, "best_step": None,
        "best_valid": None, "bad_evals": 0, "history": [], "train_loss": [], "stop": False, "stop_reason": None, "done": False, "last_eval_step": None,
        "train_seconds": 0.0, "train_samples": 0,
    }
    if resume:
        materialize_state(optimizer)
        state = load_checkpoint(checkpoint_dir, dmp, optimizer)
        # A finished run may be extended (more epochs / a larger max_steps); early stopping stays final.
        if state["stop_reason"] == "max_steps" and (tc.max_steps is None or state["global_step"] < tc.max_steps):
            state.update(stop=False, stop_reason=None)
        state["done"] = state["stop"] or state["epoch"] >= tc.epochs
        if env.is_main:
            log(f"[train] resumed from {checkpoint_dir} at step {state['global_step']} (epoch {state['epoch']})")

    writer = None
    if tc.tensorboard and env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    def run_validation() -> None:
        """Validate, export the best model, and request a stop when patience is exhausted."""
        metrics = evaluate(dmp, splits["valid"], tc.eval_batch_size, env)
        step = state["global_step"]
        state["history"].append({"step": step, **metrics})
        state["last_eval_step"] = step
        if writer is not None:
            writer.add_scalar("valid/auc", metrics["auc"], step)
            writer.add_scalar("valid/logloss", metrics["logloss"], step)
        improved = metrics["auc"] > state["best_auc"]
        if improved:
            state.update(best_auc=metrics["auc"], best_step=step, best_valid=metrics, bad_evals=0)
            save_model_shards(run_dir / "best", dmp)  # sharded: restored at the end without full copies
            export_model(run_dir / "model.pt", dmp)  # consolidated single file for inference
        else:
            state["bad_evals"] += 1
            if 0 < tc.early_stopping_patience <= state["bad_evals"]:
                state.update(stop=True, stop_reason="early_stopping")
        if env.is_main:
            mark = " (best)" if improved else f" (no gain {state['bad_evals']}/{tc.early_stopping_patience})"
            log(f"[train] step {step}: valid auc {metrics['auc']:.5f} logloss {metrics['logloss']:.5f}{mark}")

    dmp.train()
    steps_per_epoch = loader.num_batches()
    while state["epoch"] < tc.epochs and not state["done"]:
        epoch = state["epoch"]
        bar = tqdm(
            total=steps_per_epoch, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=None if env.is_main else True, file=sys.stderr, leave=False,
        )
        tick = time.perf_counter()
        window_samples, window_start = 0, tick
        for batch in loader.epoch(epoch, skip=state["step_in_epoch"]):
            if state["stop"]:
                break
            batch = batch.to(env.device)
            loss, _ = dmp(batch)
            optimizer.zero_grad()
            loss.backward()
            if tc.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(clip_params, tc.grad_clip_norm)
            optimizer.step()
            now = time.perf_counter()
            samples = batch.labels.numel() * env.world_size
            state["train_seconds"] += now - tick
            state["train_samples"] += samples
            window_samples += samples
            tick = now
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            step = state["global_step"]
            bar.update(1)
            if step % tc.log_every_steps == 0:
                rate = window_samples / max(now - window_start, 1e-9)
                window_samples, window_start = 0, now
                mean_loss = loss.detach().clone()
                if env.world_size > 1:  # the global batch's loss: mean of the ranks' equal-sized parts
                    dist.all_reduce(mean_loss)
                    mean_loss /= env.world_size
                state["train_loss"].append([step, float(mean_loss)])
                bar.set_postfix(loss=f"{float(mean_loss):.4f}", sps=f"{rate:,.0f}")
                if writer is not None:
                    writer.add_scalar("train/loss", float(mean_loss), step)
                    writer.add_scalar("train/samples_per_second", rate, step)
                    writer.add_scalar("train/lr_dense", tc.dense_optimizer.lr, step)
                    writer.add_scalar("train/lr_embedding", tc.embedding_optimizer.lr, step)
            if tc.eval_every_steps and step % tc.eval_every_steps == 0:
                bar.clear()
                run_validation()
                tick = window_start = time.perf_counter()
                window_samples = 0
            if tc.max_steps is not None and step >= tc.max_steps and not state["stop"]:
                state.update(stop=True, stop_reason="max_steps")
            if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
                save_checkpoint(checkpoint_dir, dmp, optimizer, state)
                if interrupt_at is not None and step >= interrupt_at:
                    bar.close()
                    return {"interrupted_at_step": step}
                tick = time.perf_counter()
        bar.close()
        if state["last_eval_step"] != state["global_step"]:
            run_validation()
        if not state["stop"]:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        state["done"] = state["stop"] or state["epoch"] >= tc.epochs
        save_checkpoint(checkpoint_dir, dmp, optimizer, state)

    state["embedding_parameters"] = embedding_parameters
    return _finish(cfg, run_dir, env, dmp, splits, state, writer)


def _finish(cfg, run_dir, env, dmp, splits, state, writer) -> dict[str, Any]:  # noqa: ANN001
    tc = cfg.train
    # Restore the best-validation weights from their sharded copy (each rank reads only its shards)
    # and score test + train.
    load_model_shards(run_dir / "best", dmp)
    results: dict[str, Any] = {"name": cfg.name, "model": cfg.model.name, "valid": state["best_valid"]}
    if "test" in splits:
        test_data = PreparedCTRData.open(splits["test"].root)
        if test_data.labels is not None:
            results["test"] = evaluate(dmp, splits["test"], tc.eval_batch_size, env)
    results["train"] = evaluate(dmp, splits["train"], tc.eval_batch_size, env, max_rows=TRAIN_EVAL_ROWS)
    results["samples_per_second"] = state["train_samples"] / max(state["train_seconds"], 1e-9)
    results["embedding_parameters"] = state["embedding_parameters"]
    results.update(
        steps=state["global_step"], best_step=state["best_step"], epochs_completed=state["epoch"],
        stop_reason=state["stop_reason"], world_size=env.world_size, history=state["history"],
        train_loss=state.get("train_loss", []),
    )
    if env.is_main:
        atomic_save_json(run_dir / "metrics.json", results)
        if writer is not None:
            for split in ("test", "train"):
                if split in results:
                    writer.add_scalar(f"{split}/auc", results[split]["auc"], state["global_step"])
                    writer.add_scalar(f"{split}/logloss", results[split]["logloss"], state["global_step"])
            writer.close()
        print(json.dumps(results.get("test", results["valid"])), flush=True)
    return results
