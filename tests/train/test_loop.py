"""End-to-end training on tiny data: every model trains, resume == uninterrupted, evaluate == train's test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import load_config
from recsys_emb.evaluate import evaluate_run
from recsys_emb.train.checkpoint import load_model_state
from recsys_emb.train.tasks import train
from tests.conftest import REPO, make_prepared


def tiny_config(name: str, train_dir: Path, tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        REPO / "configs" / f"criteo_{name}_tiny.yaml",
        [f"data.train={train_dir}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
    )


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loop")
    return make_prepared(root / "train", 3000, seed=0), make_prepared(root / "test", 800, seed=1)


@pytest.mark.parametrize("model", ["dcnv2", "dlrm", "deepfm", "lr"])
def test_tiny_configs_train_and_learn(model: str, data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, test_dir = data_dirs
    cfg = tiny_config(model, train_dir, tmp_path, f"data.test={test_dir}", "train.epochs=3")
    results = train(cfg, tmp_path / "run")
    # The labels depend on C1's id and I1: every model must beat chance clearly on held-out rows.
    assert results["test"]["auc"] > 0.7, results
    assert results["valid"]["rows"] == 600 and results["test"]["rows"] == 800
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test"] == results["test"]
    assert set(written) >= {"valid", "test", "train", "samples_per_second", "embedding_parameters"}
    assert written["samples_per_second"] > 0
    assert written["embedding_parameters"] == sum(
        cfg.num_embeddings * cfg.embedding_dim for cfg in _tables(tmp_path / "run")
    )
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    assert load_config(ExperimentConfig, tmp_path / "run" / "config.yaml").model.name == model


def _tables(run_dir: Path):  # noqa: ANN202
    from recsys_emb.evaluate import _MetaOnly
    from recsys_emb.train.tasks.ctr import build_ctr_model

    cfg = load_config(ExperimentConfig, run_dir / "config.yaml")
    model = build_ctr_model(cfg, _MetaOnly(run_dir / "data"), "meta")  # type: ignore[arg-type]
    from torchrec import EmbeddingBagCollection

    return [c for m in model.modules() if isinstance(m, EmbeddingBagCollection) for c in m.embedding_bag_configs()]


def test_tables_are_updated_by_the_fused_optimizer(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, _ = data_dirs
    cfg = tiny_config("dcnv2", train_dir, tmp_path, "train.epochs=1", "train.early_stopping_patience=0")
    torch.manual_seed(cfg.train.seed)
    from recsys_emb.data.dataset import PreparedCTRData
    from recsys_emb.train.tasks.ctr import build_ctr_model

    initial = build_ctr_model(cfg, PreparedCTRData.open(train_dir), "cpu").state_dict()
    train(cfg, tmp_path / "run")
    final = load_model_state(tmp_path / "run" / "model.pt")
    key = "model.embedding.embedding_bags.t_C1.weight"
    assert final[key].shape == initial[key].shape
    assert not torch.equal(final[key], initial[key])


def test_resume_equals_uninterrupted(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, test_dir = data_dirs
    overrides = (f"data.test={test_dir}", "train.epochs=2", "train.eval_every_steps=7", "train.checkpoint_every_steps=4",
                 "train.early_stopping_patience=0", "model.dcnv2.dropout=0.2")
    full = train(tiny_config("dcnv2", train_dir, tmp_path, *overrides), tmp_path / "full")
    run = tmp_path / "resumed"
    # Interrupt mid-epoch, after the step-12 checkpoint (between evaluations at 7 and 14).
    out = train(tiny_config("dcnv2", train_dir, tmp_path, *overrides), run, _interrupt_at_step=12)
    assert out == {"interrupted_at_step": 12}
    assert not (run / "metrics.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config("dcnv2", train_dir, tmp_path, *overrides), run)
    resumed = train(load_config(ExperimentConfig, run / "config.yaml"), run, resume=True)
    for split in ("valid", "test", "train"):
        assert resumed[split] == full[split], split
    assert resumed["history"] == full["history"]
    assert resumed["steps"] == full["steps"]


def _files(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing_unless_extended(data_dirs: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    train_dir, _ = data_dirs
    run = tmp_path / "run"
    first = train(tiny_config("dlrm", train_dir, tmp_path, "train.epochs=1"), run)
    before = _files(run)
    again = train(load_config(ExperimentConfig, run / "config.yaml"), run, resume=True)
    assert again == json.loads((run / "metrics.json").read_text()) and again["steps"] == first["steps"]
    assert _files(run) == before  # not one file written, not even a TensorBoard event file
    assert "is finished (it ran all 1 epoch(s)); nothing to resume" in capsys.readouterr().err
    longer = train(tiny_config("dlrm", train_dir, tmp_path, "train.epochs=2"), run, resume=True)
    assert longer["steps"] == 2 * first["steps"] and longer["epochs_completed"] == 2


def test_run_folder_keeps_the_console_lines_in_train_log_and_wall_clock_throughput(data_dirs: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    m = train(tiny_config("dlrm", data_dirs[0], tmp_path, "train.epochs=1"), tmp_path / "run")
    # throughput on the wall clock too: steps, validation and checkpoints are timed apart
    parts = m["train_seconds"] + m["eval_seconds"] + m["checkpoint_seconds"]
    assert m["eval_seconds"] > 0 and m["checkpoint_seconds"] > 0 and m["wall_seconds"] >= parts
    assert m["wall_samples_per_second"] * m["wall_seconds"] == pytest.approx(m["samples_per_second"] * m["train_seconds"], rel=1e-3)
    assert m["wall_samples_per_second"] < m["samples_per_second"]
    err = capsys.readouterr().err
    console = [line for line in err.splitlines() if line.startswith("[ctr] ")]
    logged = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert console and all(" [rank 0] [ctr] " in line for line in logged if "[ctr]" in line)
    assert [line.split(" [rank 0] ", 1)[1] for line in logged if " [rank 0] [ctr] " in line] == console
    # the plan is in plan.txt; the console gets one summary line of it
    plan = [line for line in console if "sharding plan" in line]
    assert len(plan) == 1 and "4 table(s) on 1 rank(s)" in plan[0] and "plan.txt" in plan[0]
    assert "t_C1 " not in err and "t_C1" in (tmp_path / "run" / "plan.txt").read_text()


def test_evaluate_matches_training_test_metrics(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, test_dir = data_dirs
    results = train(tiny_config("deepfm", train_dir, tmp_path, f"data.test={test_dir}"), tmp_path / "run")
    again = evaluate_run(tmp_path / "run", test_dir)
    assert again["rows"] == results["test"]["rows"]
    assert again["auc"] == pytest.approx(results["test"]["auc"], abs=1e-6)
    assert again["logloss"] == pytest.approx(results["test"]["logloss"], abs=1e-5)


def test_early_stopping_stops(data_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, _ = data_dirs
    # A huge table learning rate ruins validation after the first evaluation -> stop after 1 bad eval.
    cfg = tiny_config(
        "dcnv2", train_dir, tmp_path, "train.epochs=20", "train.eval_every_steps=3", "train.early_stopping_patience=2",
        "train.dense_optimizer.lr=0.5", "train.embedding_optimizer.lr=5.0",
    )
    results = train(cfg, tmp_path / "run")
    aucs = [h["auc"] for h in results["history"]]
    assert results["epochs_completed"] < 20
    best = max(range(len(aucs)), key=lambda i: aucs[i])
    assert len(aucs) - 1 - best == 2  # stopped exactly `patience` evaluations after the best one
    assert results["valid"]["auc"] == aucs[best]


def test_sigterm_stops_after_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(data_dirs: tuple[Path, Path],
                                                                                     tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    train_dir, test_dir = data_dirs
    sets = [f"data.test={test_dir}", "train.epochs=3", "train.batch_size=16", "train.checkpoint_every_steps=100000",
            "train.early_stopping_patience=0", "train.tensorboard=false", "train.progress=false",
            f"data.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "recsys_emb", "train", "--config", str(REPO / "configs" / "criteo_dlrm_tiny.yaml"),
               "--train", str(train_dir), "--run-dir", str(run)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "train.log").is_file() and "data:" in (run / "train.log").read_text()):
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)  # in the first epoch (or setup): stops after the current step, whichever it is
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM) at step" in err and f"recsys-emb train --run-dir {run} --resume" in err
    assert "Traceback" not in err and not (run / "metrics.json").exists()
    resumed = train(load_config(ExperimentConfig, run / "config.yaml"), run, resume=True)
    full = train(tiny_config("dlrm", train_dir, tmp_path, *sets), tmp_path / "full")
    for split in ("valid", "test", "train"):
        assert resumed[split] == full[split], split
    assert resumed["steps"] == full["steps"] and resumed["history"] == full["history"]
