"""Wrap a model in DistributedModelParallel and assemble its optimizers.

Embedding tables whose dim is a multiple of 4 (an FBGEMM TBE requirement) get the configured
table optimizer FUSED into the backward pass (``apply_optimizer_in_backward`` -> FBGEMM
EXACT_ROWWISE_ADAGRAD / EXACT_ADAGRAD / EXACT_SGD / ADAM): their rows are updated during backward
and never materialise a dense gradient. Other tables (e.g. the 1-dim first-order weights of LR and
DeepFM) are placed data-parallel by the planner and get the same optimizer type as a regular
(non-fused) optimizer. Dense parameters get the dense optimizer. ``CombinedOptimizer`` joins them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingType
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from recsys_emb.config.experiment import OptimizerConfig, TrainConfig
from recsys_emb.train.env import DistEnv

FBGEMM_DIM_MULTIPLE = 4
CPU_FUSED_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")  # FBGEMM TBE's CPU optimizers
SHARDED_TYPES = [t.value for t in (ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE, ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Map a config name to a torch optimizer class (TorchRec maps these to FBGEMM fused types)."""
    classes: dict[str, type[torch.optim.Optimizer]] = {
        "rowwise_adagrad": RowWiseAdagrad,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
    }
    if name not in classes:
        raise ValueError(f"unknown optimizer '{name}' (choose from {sorted(classes)})")
    return classes[name]


def optimizer_kwargs(cfg: OptimizerConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`optimizer_class` (``eps`` only where the class takes it)."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name != "sgd":
        kwargs["eps"] = cfg.eps
    return kwargs


def _tables(model: nn.Module):  # noqa: ANN202
    """Yield (module name, weight-dict prefix, table config, weight) for every stock table."""
    for module_name, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            configs, tables = module.embedding_bag_configs(), module.embedding_bags
        elif isinstance(module, EmbeddingCollection):
            configs, tables = module.embedding_configs(), module.embeddings
        else:
            continue
        prefix = "embedding_bags" if isinstance(module, EmbeddingBagCollection) else "embeddings"
        for cfg in configs:
            yield module_name, prefix, cfg, tables[cfg.name].weight


def fused_table_names(model: nn.Module) -> list[str]:
    """Names of the tables that get a fused optimizer (dim % 4 == 0)."""
    return [cfg.name for _, _, cfg, _ in _tables(model) if cfg.embedding_dim % FBGEMM_DIM_MULTIPLE == 0]


def table_weights(model: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """Split the model's embedding-table weights into (fusable params, names of non-fusable ones).

    Fusable: tables of EmbeddingBagCollection/EmbeddingCollection modules with dim % 4 == 0.
    """
    fused: list[nn.Parameter] = []
    unfused: list[str] = []
    for module_name, prefix, cfg, weight in _tables(model):
        if cfg.embedding_dim % FBGEMM_DIM_MULTIPLE == 0:
            fused.append(weight)
        else:
            unfused.append(".".join(p for p in (module_name, prefix, cfg.name, "weight") if p))
    return fused, unfused


def shard_model(model: nn.Module, env: DistEnv, train: TrainConfig) -> tuple[DistributedModelParallel, list[str]]:
    """Attach fused table optimizers and wrap ``model`` (ideally built on ``meta``) in DMP.

    Returns:
        The DMP model and the parameter names of tables trained by a regular (non-fused) optimizer.
    """
    fused, unfused = table_weights(model)
    if fused and env.device.type == "cpu" and train.embedding_optimizer.name not in CPU_FUSED_OPTIMIZERS:
        raise ValueError(
            f"train.embedding_optimizer.name={train.embedding_optimizer.name} has no FBGEMM CPU kernel "
            f"(CPU supports {', '.join(CPU_FUSED_OPTIMIZERS)}); choose one of those or train on CUDA"
        )
    if fused:
        apply_optimizer_in_backward(
            optimizer_class(train.embedding_optimizer.name), fused, optimizer_kwargs(train.embedding_optimizer)
        )
    topology = Topology(world_size=env.world_size, compute_device=env.device.type, local_world_size=env.world_size)
    # A data_parallel table silently skips its in-backward (fused) optimizer, so tables that carry one
    # must be sharded with the fused kernel; the planner picks among the sharded layouts.
    constraints = {
        name: ParameterConstraints(sharding_types=SHARDED_TYPES, compute_kernels=[EmbeddingComputeKernel.FUSED.value])
        for name in fused_table_names(model)
    }
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    sharders = get_default_sharders()
    if env.world_size > 1:
        plan = planner.collective_plan(model, sharders, torch.distributed.group.WORLD)
    else:
        plan = planner.plan(model, sharders)
    dmp = DistributedModelParallel(model, device=env.device, plan=plan, sharders=sharders)
    return dmp, unfused


def build_optimizer(model: DistributedModelParallel, unfused_tables: list[str], train: TrainConfig) -> CombinedOptimizer:
    """Combine the fused table optimizer, a regular one for non-fused tables, and the dense one."""
    table_params: dict[str, nn.Parameter] = {}
    dense_params: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if getattr(param, "_in_backward_optimizers", None):
            continue  # updated inside backward by FBGEMM
        if any(name.endswith(table) for table in unfused_tables):
            table_params[name] = param
        else:
            dense_params[name] = param
    optimizers: list[KeyedOptimizer | tuple[str, KeyedOptimizer]] = [("fused", model.fused_optimizer)]
    if table_params:
        cls, kwargs = optimizer_class(train.embedding_optimizer.name), optimizer_kwargs(train.embedding_optimizer)
        optimizers.append(("tables", KeyedOptimizerWrapper(table_params, lambda ps: cls(ps, **kwargs))))
    if dense_params:
        cls, kwargs = optimizer_class(train.dense_optimizer.name), optimizer_kwargs(train.dense_optimizer)
        optimizers.append(("dense", KeyedOptimizerWrapper(dense_params, lambda ps: cls(ps, **kwargs))))
    return CombinedOptimizer(optimizers)


def dense_parameters(model: nn.Module, unfused_tables: list[str]) -> list[nn.Parameter]:
    """Parameters trained by the dense optimizer (the ones gradient clipping applies to)."""
    return [
        p
        for n, p in model.named_parameters()
        if not getattr(p, "_in_backward_optimizers", None) and not any(n.endswith(t) for t in unfused_tables)
    ]


def materialize_state(optimizer: CombinedOptimizer) -> None:
    """Create the lazily-built state of the non-fused optimizers (a zero-gradient step) so that a
    checkpoint can be loaded into it in place. Parameters moved by that step (weight decay) are
    overwritten when the model state is loaded afterwards; gradients are cleared."""
    for name, opt in optimizer.optimizers:
        if name != "fused":
            opt.init_state()
            opt.zero_grad(set_to_none=True)
