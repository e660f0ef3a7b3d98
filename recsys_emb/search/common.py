"""Shared pieces of the search drivers: data, unsharded model, optimizers, evaluation, checkpoints.

Searches run on ONE process with the unsharded model (plain torch optimizers on the tables'
dense gradients): the bi-level DNIS steps and the OptEmbed evolution need fine control over which
parameters step on which batch, which TorchRec's fused in-backward optimizers do not give. The
derived compact model is then retrained with the ordinary, shardable training loop
(``recsys_emb.train.tasks.train``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from recsys_emb.config.experiment import ExperimentConfig, OptimizerConfig
from recsys_emb.data.dataset import BatchIterator, PreparedCTRData
from recsys_emb.data.resolve import Split, resolve_data
from recsys_emb.models import split_named_parameters
from recsys_emb.train.env import DistEnv
from recsys_emb.train.tasks.ctr import build_ctr_model, evaluate
from recsys_emb.train.optim import optimizer_class, optimizer_kwargs
from recsys_emb.utils import atomic_write_bytes, log

CPU_ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo", owns_group=False)


def batches(data: PreparedCTRData, start: int, stop: int, batch_size: int, seed: int, first_step: int = 0) -> Iterator[Batch]:
    """Endless shuffled batches over rows [start, stop), epoch after epoch; starts at ``first_step``."""
    it = BatchIterator(data, batch_size, start=start, stop=stop, shuffle=True, seed=seed, drop_last=True)
    per_epoch = it.num_batches()
    if per_epoch == 0:
        raise ValueError(f"{data.root}: rows [{start}, {stop}) hold fewer than one batch of {batch_size}")
    epoch, skip = divmod(first_step, per_epoch)
    while True:
        yield from it.epoch(epoch, skip=skip)
        epoch, skip = epoch + 1, 0


@dataclass
class SearchSetup:
    """Everything a driver needs: the splits, the unsharded ``CTRTrain`` and its embedding module."""

    cfg: ExperimentConfig
    splits: dict[str, Split]
    train_data: PreparedCTRData
    model: nn.Module  # CTRTrain
    technique_params: dict[str, nn.Parameter]  # alpha / threshold (small dense technique parameters)
    table_params: dict[str, nn.Parameter]
    dense_params: dict[str, nn.Parameter]

    @property
    def embedding(self) -> nn.Module:
        return self.model.model.embedding

    def train_batches(self, first_step: int = 0, salt: int = 0) -> Iterator[Batch]:
        _, start, stop = self.splits["train"].open()
        return batches(self.train_data, start, stop, self.cfg.train.batch_size, self.cfg.train.seed + salt, first_step)

    def valid_batches(self, first_step: int = 0) -> Iterator[Batch]:
        data, start, stop = self.splits["valid"].open()
        return batches(data, start, stop, self.cfg.train.batch_size, self.cfg.train.seed + 7919, first_step)

    def evaluate(self, split: str = "valid", max_rows: int | None = None) -> dict[str, float]:
        return evaluate(self.model, self.splits[split], self.cfg.train.eval_batch_size, CPU_ENV, max_rows=max_rows)


def make_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return optimizer_class(cfg.name)(params, **optimizer_kwargs(cfg))


def setup(cfg: ExperimentConfig, technique_names: tuple[str, ...]) -> SearchSetup:
    """Resolve data and build the unsharded model; split its parameters into tables / technique / dense."""
    if cfg.train.device == "cuda":
        log("[search] searches run on the CPU; the retrain uses train.device")
    splits = resolve_data(cfg.data)
    train_data, _, _ = splits["train"].open()
    torch.manual_seed(cfg.train.seed)
    model = build_ctr_model(cfg, train_data, device="cpu")
    tables, dense = split_named_parameters(model)
    technique = {k: v for k, v in dense.items() if k.startswith("model.embedding.") and k.rsplit(".", 1)[-1].startswith(technique_names)}
    dense = {k: v for k, v in dense.items() if k not in technique}
    return SearchSetup(cfg, splits, train_data, model, technique, tables, dense)


def set_trainable(params: dict[str, nn.Parameter], flag: bool) -> None:
    for p in params.values():
        p.requires_grad_(flag)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a search state (plain containers and tensors only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
