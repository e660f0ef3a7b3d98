"""Crash-safe checkpoints: at every moment ``checkpoint`` names a complete checkpoint; a half-written or
damaged one is detected and the previous one used; a run killed with SIGKILL resumes to the same result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from recsys_emb.train import checkpoint as ckpt
from tests.conftest import REPO, make_prepared

# DCP says it saves/loads without a process group: that is what the unit tests here do
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _save(path: Path, seed: int) -> dict[str, torch.Tensor]:
    model, opt = _model(seed)
    ckpt.save_checkpoint(path, model, opt, {"seed": seed})
    return {k: v.clone() for k, v in model.state_dict().items()}


def _load(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    model, opt = _model(99)
    state = ckpt.load_checkpoint(path, model, opt)
    return state, model.state_dict()


def test_each_save_publishes_a_new_complete_version_and_keeps_one_before(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    for seed in range(3):
        weights = _save(path, seed)
        assert path.is_symlink() and (path / ckpt.STATE_FILE).is_file()
        assert os.readlink(path) == os.path.join(ckpt.VERSIONS, f"checkpoint.{seed}")  # relative: the run dir can move
    assert [n for n, _ in ckpt._versions(path)] == [1, 2]
    state, loaded = _load(path)
    assert state == {"seed": 2}
    for key in weights:
        assert torch.equal(loaded[key], weights[key])


def test_a_crash_while_saving_leaves_the_previous_checkpoint_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint"
    first = _save(path, 0)

    def crash(*args: object, **kwargs: object) -> None:  # the process dies after the shards, before the marker
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, 1)
    monkeypatch.undo()
    half = tmp_path / ckpt.VERSIONS / "checkpoint.1"
    assert (half / ".metadata").is_file() and not (half / ckpt.STATE_FILE).exists()  # written, never published
    assert ckpt.resolve_checkpoint(path) == path and os.readlink(path).endswith("checkpoint.0")
    state, loaded = _load(path)
    assert state == {"seed": 0} and all(torch.equal(loaded[k], first[k]) for k in first)
    _save(path, 2)  # the next save removes the stale version
    assert [n for n, _ in ckpt._versions(path)] == [0, 2] and _load(path)[0] == {"seed": 2}


def test_a_damaged_published_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    _save(path, 0)
    _save(path, 1)
    (path / ckpt.STATE_FILE).unlink()  # e.g. a disk that lost the file
    with pytest.warns(UserWarning, match=r"missing or incomplete; using the last complete checkpoint .*checkpoint\.0"):
        assert _load(path)[0] == {"seed": 0}
    path.unlink()  # no published name at all: the same fallback
    with pytest.warns(UserWarning, match="checkpoint.0"):
        assert ckpt.resolve_checkpoint(path) == tmp_path / ckpt.VERSIONS / "checkpoint.0"
    for _, folder in ckpt._versions(path):
        (folder / ckpt.STATE_FILE).unlink(missing_ok=True)
    assert ckpt.resolve_checkpoint(path) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        _load(path)


def test_an_old_style_plain_folder_still_loads_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    model, opt = _model(5)
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": model.state_dict(), "optim": opt.state_dict(), "rng": ckpt._rng_tensors()}, checkpoint_id=str(path))
    (path / ckpt.STATE_FILE).write_text('{"seed": 5}')
    assert _load(path)[0] == {"seed": 5}
    _save(path, 6)
    assert path.is_symlink() and _load(path)[0] == {"seed": 6}
    assert not (tmp_path / ckpt.VERSIONS / "checkpoint.old").exists()


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "recsys_emb", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_a_random_step_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    train_dir = make_prepared(tmp_path / "train", 6000, seed=0)
    test_dir = make_prepared(tmp_path / "test", 800, seed=1)
    env = {**os.environ, "RECSYS_EMB_CACHE": str(tmp_path / "cache")}
    args = ["train", "--config", "configs/criteo_dcnv2_tiny.yaml", "--train", str(train_dir), "--test", str(test_dir),
            "--set", "train.epochs=3", "--set", "train.batch_size=64", "--set", "train.checkpoint_every_steps=3",
            "--set", "train.eval_every_steps=20", "--set", "train.early_stopping_patience=0", "--set", "train.tensorboard=false"]
    full = _cli(*args, "--run-dir", str(tmp_path / "full"), env=env)
    assert full.wait(timeout=600) == 0, full.stderr.read()[-3000:]

    run = tmp_path / "killed"
    victim = _cli(*args, "--run-dir", str(run), env=env)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    delay = random.Random(os.getpid()).uniform(0.0, 2.0)  # a different step each run; reported on failure
    time.sleep(delay)
    assert victim.poll() is None, "the run ended before it could be killed: make it longer"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    killed_at = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["global_step"]
    assert not (run / "metrics.json").exists()

    resumed = _cli("train", "--run-dir", str(run), "--resume", env=env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    for key in ("valid", "test", "train", "history", "steps"):
        assert a[key] == b[key], (key, f"killed {delay:.2f}s after the first checkpoint, resumed from step {killed_at}")
