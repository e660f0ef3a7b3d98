"""Sequence ranking (DIN / two-stage / DARE) through the one trainer: resume, TensorBoard, CLI, 2 ranks vs 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.cli import main
from recsys_emb.config.io import from_dict, load_config, to_dict
from recsys_emb.config.sequence import SequenceExperimentConfig
from recsys_emb.data.sequences import write_synthetic_s3rec
from recsys_emb.train.tasks import load_experiment, train
from tests.distributed.multiprocess import run_ranks

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_s3rec(tmp_path_factory.mktemp("seq_data"), users=160, items=60, seed=0)


def _cfg(config: str, folder: Path, **train) -> SequenceExperimentConfig:  # noqa: ANN003
    overrides = [f"data.path={folder}", "data.dataset=s3rec", "data.stem=Synth", "train.progress=false",
                 "train.epochs=3", "train.early_stopping_patience=0", "train.tensorboard=false"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(SequenceExperimentConfig, REPO / "configs" / config, overrides)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_configs_load_as_sequence_experiments() -> None:
    for path in sorted((REPO / "configs").glob("amazon_*.yaml")):
        cfg = load_experiment(path)
        assert isinstance(cfg, SequenceExperimentConfig) and cfg.task == "sequence", path


@pytest.mark.parametrize("config", ["amazon_beauty_din_tiny.yaml", "amazon_beauty_dare_tiny.yaml"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, synth: Path, config: str) -> None:
    """Killed mid-epoch 2 (after a step checkpoint) and resumed: same losses, metrics and weights, bit for bit.

    DIN covers Dice running statistics (buffers) and the MBA regulariser; the DARE config the two-stage model.
    Per-epoch training negatives and batch orders must also line up after the skip.
    """
    full = train(_cfg(config, synth, log_every_steps=1), tmp_path / "full")
    steps_per_epoch = full["history"][0]["step"]
    assert full["steps"] == 3 * steps_per_epoch and steps_per_epoch >= 3
    assert full["task"] == "sequence" and full["world_size"] == 1
    stop = steps_per_epoch + 2  # inside epoch 2
    cfg = _cfg(config, synth, log_every_steps=1, checkpoint_every_steps=stop)  # checkpointing changes no result
    assert train(cfg, tmp_path / "cut", _interrupt_at_step=stop) == {"interrupted_at_step": stop}
    assert not (tmp_path / "cut" / "metrics.json").exists()
    state = json.loads((tmp_path / "cut" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == stop and state["step_in_epoch"] == 2
    resumed = train(cfg, tmp_path / "cut", resume=True)
    for key in ("history", "train_loss", "valid", "steps", "best_epoch", "epochs_completed", "stop_reason"):
        assert resumed[key] == full[key], key
    untimed = lambda m: {k: v for k, v in m.items() if k != "search_ms_per_batch"}  # noqa: E731  (a wall time)
    assert untimed(resumed["test"]) == untimed(full["test"])
    _assert_same_weights(tmp_path / "full", tmp_path / "cut")
    # a finished run resumes to the same result without training
    again = train(cfg, tmp_path / "cut", resume=True)
    assert again["steps"] == full["steps"] and untimed(again["test"]) == untimed(resumed["test"])


def test_resume_at_epoch_boundary_and_extension(tmp_path: Path, synth: Path) -> None:
    """Stopped by max_steps at an epoch end, then extended to 3 epochs == 3 epochs in one go."""
    base = _cfg("amazon_beauty_dare_tiny.yaml", synth)
    full = train(base, tmp_path / "full")
    per_epoch = full["history"][0]["step"]
    first = train(_cfg("amazon_beauty_dare_tiny.yaml", synth, max_steps=per_epoch), tmp_path / "ext")
    assert first["stop_reason"] == "max_steps" and first["steps"] == per_epoch and len(first["history"]) == 1
    resumed = train(base, tmp_path / "ext", resume=True)  # no max_steps any more: continue
    assert resumed["steps"] == full["steps"] and resumed["stop_reason"] == "epochs"
    assert resumed["history"] == full["history"]  # epoch 1 is neither retrained nor validated twice
    assert resumed["test"]["auc"] == full["test"]["auc"] and resumed["test"]["gauc"] == full["test"]["gauc"]


def test_run_dir_errors(tmp_path: Path, synth: Path) -> None:
    cfg = _cfg("amazon_beauty_dare_tiny.yaml", synth, max_steps=2)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, tmp_path / "missing", resume=True)
    train(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run")


def test_tensorboard_scalars_and_cli_resume(tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`recsys-emb train` trains a sequence config (task: sequence) and resumes it from RUN_DIR/config.yaml."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    common = ["--data", str(synth), "--set", "data.dataset=s3rec", "--set", "data.stem=Synth"]
    assert main(["train", "--config", str(REPO / "configs" / "amazon_beauty_dare_tiny.yaml"), "--run-dir", str(run), *common,
                 "--set", "train.tensorboard=true", "--set", "train.log_every_steps=2", "--set", "train.max_steps=4"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run), "--set", "train.max_steps=null", "--set", "train.progress=true"]) == 0
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


def _train_ranks(rank: int, world_size: int, cfg: dict, run_dir: str) -> None:
    train(from_dict(SequenceExperimentConfig, cfg), run_dir)


def test_two_rank_training_follows_one_process(tmp_path: Path, synth: Path) -> None:
    """Each global batch (128 examples) split into 2 x 64 over two gloo ranks, tables row-wise sharded:
    the loss curve and the metrics follow the one-process run.

    Stated tolerance: the ranks differ only in float summation order (the mean of two 64-row means
    instead of one 128-row mean, gradients all-reduced), so the curves agree to 1e-3 and AUC/GAUC to 2e-3.
    The DARE two-stage config is used: DIN's Dice uses per-batch statistics, which a split batch changes.
    """
    cfg = _cfg("amazon_beauty_dare_tiny.yaml", synth, epochs=2, log_every_steps=5)
    cfg.sharding.type = "row_wise"
    single = train(cfg, tmp_path / "one")
    run_ranks(_train_ranks, 2, to_dict(cfg), str(tmp_path / "two"))
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["steps"] == double["steps"] > 20
    curve_1, curve_2 = dict(map(tuple, single["train_loss"])), dict(map(tuple, double["train_loss"]))
    assert curve_1.keys() == curve_2.keys() and len(curve_1) >= 4
    for step in curve_1:
        assert abs(curve_1[step] - curve_2[step]) < 1e-3, (step, curve_1[step], curve_2[step])
    for key in ("auc", "gauc"):
        assert abs(single["test"][key] - double["test"][key]) < 2e-3, key
    # each rank scored its share of the rows (the last share padded): every row counted exactly once
    assert double["test"]["rows"] == single["test"]["rows"] and double["test"]["gauc_users"] == single["test"]["gauc_users"]
    assert double["selected_on"] == "valid" and double["valid"]["rows"] == single["valid"]["rows"]


class _ScoreByFeatures(torch.nn.Module):
    """A fixed scorer with the ``SequenceTrain`` interface: logit = f(user, target item, history length)."""

    def forward(self, batch):  # noqa: ANN001, ANN201
        kjt = batch.sparse_features
        target = kjt["target_item"].values().float()
        hist = kjt["hist_item"].lengths().float()
        logits = torch.sin(batch.users.float() * 0.7 + target * 0.13) + 0.05 * hist
        return logits.mean(), (logits.mean(), logits, batch.labels)


def _eval_odd_split(rank: int, world_size: int, folder: str, rows: int, out: str) -> None:
    from recsys_emb.data.sequences import SequenceDataset, load_raw
    from recsys_emb.train.env import DistEnv
    from recsys_emb.train.tasks.sequence import evaluate_sequence

    cfg = _cfg("amazon_beauty_dare_tiny.yaml", Path(folder)).data
    ds = SequenceDataset(load_raw(cfg), cfg)
    env = DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo", False)
    got = evaluate_sequence(_ScoreByFeatures(), ds, ds.examples("test").take(np.arange(rows)), 7, env)
    if rank == 0:
        Path(out).write_text(json.dumps(got))


def test_evaluation_splits_rows_over_ranks_and_counts_each_once(tmp_path: Path, synth: Path) -> None:
    """An odd number of rows over 2 ranks (the last share padded, the padding dropped) in batches of 7
    gives the one-process metrics of the same scorer."""
    from recsys_emb.data.sequences import SequenceDataset, load_raw
    from recsys_emb.train.env import DistEnv
    from recsys_emb.train.tasks.sequence import evaluate_sequence

    rows = 101
    run_ranks(_eval_odd_split, 2, str(synth), rows, str(tmp_path / "two.json"))
    cfg = _cfg("amazon_beauty_dare_tiny.yaml", synth).data
    ds = SequenceDataset(load_raw(cfg), cfg)
    env = DistEnv(0, 1, 0, torch.device("cpu"), "gloo", False)
    one = evaluate_sequence(_ScoreByFeatures(), ds, ds.examples("test").take(np.arange(rows)), 7, env)
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["rows"] == two["rows"] == rows
    assert two == pytest.approx(one, rel=1e-12, abs=1e-12)
