"""``recsys-emb plan``: the sharding plan and per-rank memory of an experiment, without training."""

from __future__ import annotations

import torch

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.distributed.planning import describe_plan, plan_sharding, table_dims


def plan_experiment(cfg: ExperimentConfig, world_size: int, device: str | None = None) -> tuple[str, list[str]]:
    """Plan ``cfg``'s model for ``world_size`` ranks on ``device`` (default: the config's device, auto -> cpu
    unless CUDA is available). Returns the plan text (as in ``RUN_DIR/plan.txt``) and budget warnings.

    The vocabulary sizes come from the training data (raw inputs are prepared into the cache first).
    The model is built on the ``meta`` device: planning never allocates a table.
    """
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.train.tasks.ctr import build_ctr_model

    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    if device is None:
        device = cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    train_data, _, _ = resolve_data(cfg.data)["train"].open()
    model = build_ctr_model(cfg, train_data, device="meta")
    plan = plan_sharding(model, cfg.sharding, world_size=world_size, device_type=device, batch_size=cfg.train.batch_size)
    text, warnings = describe_plan(
        table_dims(model), plan, world_size, cfg.train.embedding_optimizer.name, cfg.sharding.memory_budget_gb
    )
    header = f"# {cfg.name}: {world_size} rank(s) on {device}, sharding.type={cfg.sharding.type}"
    return header + "\n" + text, warnings
