"""Size-aware schedule (train.min_steps_per_epoch / train.min_steps): small data gets smaller batches and more
epochs, large data keeps the configured ones; a run records what it used and resumes with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_emb.config.experiment import ExperimentConfig, TrainConfig
from recsys_emb.config.io import load_config
from recsys_emb.train.schedule import MIN_BATCH_SIZE, sized_schedule, steps_per_epoch
from recsys_emb.train.tasks import train
from tests.conftest import REPO, make_prepared

SHIPPED = dict(batch_size=2048, epochs=3, min_steps_per_epoch=20, min_steps=300)  # configs/criteo_*.yaml


def test_small_data_gets_smaller_batches_and_more_epochs() -> None:
    sized = sized_schedule(TrainConfig(**SHIPPED), rows=6000)
    assert (sized.batch_size, sized.epochs) == (256, 13)  # 24 steps an epoch, 13 * 24 >= 300
    assert steps_per_epoch(6000, sized.batch_size) == 24


@pytest.mark.parametrize("rows", [270_000, 1_000_000, 40_000_000])
def test_large_data_keeps_the_configured_schedule(rows: int) -> None:
    tc = TrainConfig(**SHIPPED)
    assert sized_schedule(tc, rows) is tc


def test_without_the_keys_nothing_changes() -> None:
    tc = TrainConfig(batch_size=2048, epochs=3)
    assert sized_schedule(tc, rows=100) is tc


def test_batch_never_below_the_floor_or_the_world_size() -> None:
    assert sized_schedule(TrainConfig(**SHIPPED), rows=300).batch_size == MIN_BATCH_SIZE
    assert sized_schedule(TrainConfig(batch_size=1024, min_steps_per_epoch=50), rows=300, world_size=200).batch_size == 256
    assert sized_schedule(TrainConfig(batch_size=48, min_steps_per_epoch=50), rows=300).batch_size == 48  # already below


def test_min_steps_alone_adds_epochs_at_the_configured_batch() -> None:
    sized = sized_schedule(TrainConfig(batch_size=500, epochs=2, min_steps=30), rows=2000)
    assert (sized.batch_size, sized.epochs) == (500, 8)


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="train.min_steps must be >= 1 or null"):
        TrainConfig(min_steps=0)
    with pytest.raises(ValueError, match="train.min_steps_per_epoch must be >= 1 or null"):
        TrainConfig(min_steps_per_epoch=-1)


@pytest.mark.parametrize("model", ["dcnv2", "deepfm", "dlrm", "lr"])
def test_shipped_criteo_configs_are_size_aware(model: str) -> None:
    tc = load_config(ExperimentConfig, REPO / "configs" / f"criteo_{model}.yaml").train
    assert sized_schedule(tc, 6000).batch_size <= 256  # no 3-step epochs on a few thousand rows
    assert sized_schedule(tc, 270_000) is tc  # the 300k demo and larger data: as configured


def test_a_ctr_run_uses_records_and_resumes_with_the_sized_schedule(tmp_path: Path) -> None:
    train_dir = make_prepared(tmp_path / "train", 1500, seed=0)
    cfg = load_config(ExperimentConfig, REPO / "configs" / "criteo_dlrm_tiny.yaml", [
        f"data.train={train_dir}", "train.batch_size=1024", "train.epochs=1", "train.min_steps_per_epoch=10",
        "train.min_steps=40", "train.early_stopping_patience=0", "train.checkpoint_every_steps=10"])
    run = tmp_path / "run"
    # 1200 training rows: batch 1024 -> 128 (10 steps an epoch), 1 -> 4 epochs. Killed after epoch 2: the resumed
    # run must not take the configured single epoch for "finished".
    assert train(cfg, run, _interrupt_at_step=20) == {"interrupted_at_step": 20}
    resumed = train(cfg, run, resume=True)
    assert resumed["schedule"] == {"batch_size": 128, "epochs": 4, "sized": True}
    assert resumed["steps"] == 40 and resumed["epochs_completed"] == 4
    assert json.loads((run / "metrics.json").read_text())["schedule"]["batch_size"] == 128
    assert load_config(ExperimentConfig, run / "config.yaml").train.batch_size == 1024  # the config as given


def test_tasks_that_do_not_size_reject_the_keys() -> None:
    from recsys_emb.train.trainer import Task

    with pytest.raises(ValueError, match="the task task does not size its schedule"):
        Task().schedule(TrainConfig(min_steps=10), None)  # type: ignore[arg-type]
