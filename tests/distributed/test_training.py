"""Distributed training on 2 gloo CPU processes: follows the 1-process run; checkpoints reshard 2 -> 1 -> 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import from_dict, load_config
from recsys_emb.evaluate import evaluate_checkpoint
from recsys_emb.train.tasks import train
from tests.conftest import make_prepared
from tests.distributed.multiprocess import run_ranks


def tiny_config(train_dir: Path, test_dir: Path, **train_overrides: object) -> dict:
    return {
        "name": "dist_tiny",
        "data": {"train": str(train_dir), "test": str(test_dir), "valid_fraction": 0.2},
        "model": {"name": "dlrm", "embedding_dim": 8,
                  "dlrm": {"dense_arch_layer_sizes": [16, 8], "over_arch_layer_sizes": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 500, "log_every_steps": 10, "tensorboard": False,
                  "early_stopping_patience": 0, **train_overrides},
        "sharding": {"type": "row_wise"},
    }


def _train_ranks(rank: int, world_size: int, cfg: dict, run_dir: str) -> None:
    train(from_dict(ExperimentConfig, cfg), run_dir)


def _evaluate_ranks(rank: int, world_size: int, run_dir: str, out: str) -> None:
    result = evaluate_checkpoint(run_dir)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist_data")
    return make_prepared(root / "train", 16000, seed=0), make_prepared(root / "test", 2000, seed=1)


def test_two_rank_training_follows_one_process(data: tuple[Path, Path], tmp_path: Path) -> None:
    """Same global batches (64 rows = 2 x 32): loss curve and metrics match the 1-process run."""
    cfg = tiny_config(*data)
    single = train(from_dict(ExperimentConfig, cfg), tmp_path / "one")
    run_ranks(_train_ranks, 2, cfg, str(tmp_path / "two"))
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert single["steps"] == double["steps"] == 200  # 12,800 training rows / 64
    curve_1 = dict((s, loss) for s, loss in single["train_loss"])
    curve_2 = dict((s, loss) for s, loss in double["train_loss"])
    assert curve_1.keys() == curve_2.keys() and len(curve_1) == 20
    # Stated tolerance: the sharded run differs only in float summation order (gradients averaged
    # over 2 ranks instead of one mean over 64 rows), so the curves agree to 1e-3.
    for step in curve_1:
        assert abs(curve_1[step] - curve_2[step]) < 1e-3, (step, curve_1[step], curve_2[step])
    assert abs(single["test"]["auc"] - double["test"]["auc"]) < 2e-3
    assert abs(single["test"]["logloss"] - double["test"]["logloss"]) < 2e-3
    assert (tmp_path / "two" / "plan.txt").read_text().count(" row_wise ") == 4


def test_checkpoint_reshards_two_one_two(data: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(*data, max_steps=20)
    run_ranks(_train_ranks, 2, cfg, str(run))
    run_ranks(_evaluate_ranks, 2, str(run), str(tmp_path / "two.json"))
    on_two = json.loads((tmp_path / "two.json").read_text())
    on_one = evaluate_checkpoint(run)
    assert on_one["rows"] == on_two["rows"] == 3200
    assert on_one["auc"] == pytest.approx(on_two["auc"], abs=1e-7)
    assert on_one["logloss"] == pytest.approx(on_two["logloss"], abs=1e-6)

    # continue the 2-rank run on ONE rank, then read its checkpoint back on two
    resumed = load_config(ExperimentConfig, run / "config.yaml", ["train.max_steps=30"])
    train(resumed, run, resume=True)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 30
    after_one = evaluate_checkpoint(run)
    run_ranks(_evaluate_ranks, 2, str(run), str(tmp_path / "two_after.json"))
    after_two = json.loads((tmp_path / "two_after.json").read_text())
    assert after_one["auc"] != on_one["auc"]  # the resumed steps changed the model
    assert after_one["auc"] == pytest.approx(after_two["auc"], abs=1e-7)
    assert after_one["logloss"] == pytest.approx(after_two["logloss"], abs=1e-6)
