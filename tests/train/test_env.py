"""recsys_emb.train.env.resolve_device: which device each rank gets (no GPU needed: CUDA is faked)."""

from __future__ import annotations

import pytest
import torch

from recsys_emb.train.env import resolve_device


@pytest.fixture
def one_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_auto_uses_the_gpu_when_every_local_rank_gets_one(monkeypatch, one_fake_gpu) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_device("auto", 0) == torch.device("cuda", 0)
    assert one_fake_gpu == [0]


def test_more_local_ranks_than_gpus(monkeypatch, one_fake_gpu) -> None:
    # 2 processes on a 1-GPU machine: NCCL needs one GPU per rank, so `auto` puts EVERY rank on the CPU
    # (gloo; never a mix of devices), and an explicit `cuda` names the counts instead of "invalid device ordinal".
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_device("auto", 0) == torch.device("cpu")
    assert resolve_device("auto", 1) == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"local rank 1 of 2 processes .* only 1 GPU"):
        resolve_device("cuda", 1)
    assert resolve_device("cuda", 0) == torch.device("cuda", 0)
    assert one_fake_gpu == [0]


def test_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
        resolve_device("cuda")
