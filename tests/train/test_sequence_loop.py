"""`recsys-emb train-seq` parity with `recsys-emb train`: resume, TensorBoard scalars, progress bars."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from recsys_emb.config.io import load_config
from recsys_emb.data.sequences import write_synthetic_s3rec
from recsys_emb.train.sequence_loop import SequenceExperimentConfig, add_train_seq_arguments, run_train_seq, train_sequence

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_s3rec(tmp_path_factory.mktemp("seq_data"), users=160, items=60, seed=0)


def _cfg(config: str, folder: Path, **train) -> SequenceExperimentConfig:  # noqa: ANN003
    overrides = [f"data.path={folder}", "data.dataset=s3rec", "data.stem=Synth", "progress=false",
                 "train.epochs=3", "train.early_stopping_patience=0", "train.tensorboard=false"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(SequenceExperimentConfig, REPO / "configs" / config, overrides)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("config", ["amazon_beauty_din_tiny.yaml", "amazon_beauty_dare_tiny.yaml"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, synth: Path, config: str) -> None:
    """Killed mid-epoch 2 (after a step checkpoint) and resumed: same losses, metrics and weights, bit for bit.

    DIN covers Dice running statistics (buffers) and the MBA regulariser; the DARE config the two-stage model.
    Per-epoch training negatives and batch orders must also line up after the skip.
    """
    full = train_sequence(_cfg(config, synth, log_every_steps=1), tmp_path / "full")
    steps_per_epoch = full["history"][0]["step"]
    assert full["steps"] == 3 * steps_per_epoch and steps_per_epoch >= 3
    stop = steps_per_epoch + 2  # inside epoch 2
    cfg = _cfg(config, synth, log_every_steps=1, checkpoint_every_steps=stop)  # checkpointing changes no result
    out = train_sequence(cfg, tmp_path / "cut", _interrupt_at_step=stop)
    assert out == {"interrupted_at_step": stop}
    assert not (tmp_path / "cut" / "metrics.json").exists()
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)  # the file loads safely
    assert json.loads(ckpt["trainer_state"])["step"] == stop
    resumed = train_sequence(cfg, tmp_path / "cut", resume=True)
    for key in ("history", "train_loss", "valid", "steps", "best_epoch", "epochs_completed", "stop_reason"):
        assert resumed[key] == full[key], key
    untimed = lambda m: {k: v for k, v in m.items() if k != "search_ms_per_batch"}  # noqa: E731  (a wall time)
    assert untimed(resumed["test"]) == untimed(full["test"])
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a finished run resumes to the same result without training
    again = train_sequence(cfg, tmp_path / "cut", resume=True)
    assert again["steps"] == full["steps"] and again["test"] == resumed["test"]


def test_resume_at_epoch_boundary_and_extension(tmp_path: Path, synth: Path) -> None:
    """Stopped by max_steps at an epoch end, then extended to 3 epochs == 3 epochs in one go."""
    base = _cfg("amazon_beauty_dare_tiny.yaml", synth)
    full = train_sequence(base, tmp_path / "full")
    per_epoch = full["history"][0]["step"]
    short = _cfg("amazon_beauty_dare_tiny.yaml", synth, max_steps=per_epoch)
    first = train_sequence(short, tmp_path / "ext")
    assert first["stop_reason"] == "max_steps" and first["steps"] == per_epoch and len(first["history"]) == 1
    resumed = train_sequence(base, tmp_path / "ext", resume=True)  # no max_steps any more: continue
    assert resumed["steps"] == full["steps"] and resumed["stop_reason"] == "epochs"
    assert resumed["history"] == full["history"]  # epoch 1 is neither retrained nor validated twice
    assert resumed["test"]["auc"] == full["test"]["auc"] and resumed["test"]["gauc"] == full["test"]["gauc"]


def test_run_dir_errors(tmp_path: Path, synth: Path) -> None:
    cfg = _cfg("amazon_beauty_dare_tiny.yaml", synth, max_steps=2)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_sequence(cfg, tmp_path / "missing", resume=True)
    with pytest.raises(ValueError, match="run dir"):
        train_sequence(cfg, None, resume=True)
    train_sequence(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_sequence(cfg, tmp_path / "run")


def test_tensorboard_scalars_and_cli_resume(tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    parser = argparse.ArgumentParser()
    add_train_seq_arguments(parser)
    run = tmp_path / "run"
    common = ["--data-path", str(synth), "--set", "data.dataset=s3rec", "--set", "data.stem=Synth"]
    args = parser.parse_args(["--config", str(REPO / "configs" / "amazon_beauty_dare_tiny.yaml"), "--run-dir", str(run), *common,
                              "--set", "train.tensorboard=true", "--set", "train.log_every_steps=2", "--set", "train.max_steps=4"])
    assert run_train_seq(args) == 0
    capsys.readouterr()
    # resume: config from RUN_DIR/config.yaml, extended by an override
    args = parser.parse_args(["--resume", "--run-dir", str(run), *common, "--set", "train.max_steps=null", "--set", "progress=true"])
    assert run_train_seq(args) == 0
    captured = capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(captured.out.strip().splitlines()[-1]) == metrics["test"]
    assert "resumed from" in captured.err and "epoch 2/2" in captured.err  # log + tqdm bar on stderr
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/samples_per_second", "valid/auc", "valid/gauc", "valid/logloss", "test/auc"} <= tags
    valid = [(e.step, e.value) for e in acc.Scalars("valid/auc")]
    assert valid == [(h["step"], pytest.approx(h["auc"], rel=1e-6)) for h in metrics["history"]]
    assert [e.step for e in acc.Scalars("train/loss")] == [s for s, _ in metrics["train_loss"]]
    assert all(s % 2 == 0 for s, _ in metrics["train_loss"])


@pytest.mark.slow
def test_sharded_resume_equals_uninterrupted_run(tmp_path: Path, synth: Path) -> None:
    """``sharded: true`` (DMP, fused table optimizers, DCP ``checkpoint/`` folder): resumed == uninterrupted."""
    cfg = dataclasses.replace(_cfg("amazon_beauty_dare_tiny.yaml", synth, epochs=2, checkpoint_every_steps=30), sharded=True)
    full = train_sequence(cfg, tmp_path / "full")
    stop = 30
    assert full["history"][0]["step"] < stop < full["steps"]  # inside epoch 2
    assert train_sequence(cfg, tmp_path / "cut", _interrupt_at_step=stop) == {"interrupted_at_step": stop}
    assert (tmp_path / "cut" / "checkpoint" / "trainer_state.json").is_file()
    resumed = train_sequence(cfg, tmp_path / "cut", resume=True)
    assert resumed["history"] == full["history"] and resumed["train_loss"] == full["train_loss"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
