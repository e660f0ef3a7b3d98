"""Wrap a model in DistributedModelParallel and assemble its optimizers.

Embedding tables whose dim is a multiple of 4 (an FBGEMM TBE requirement) get the configured
table optimizer FUSED into the backward pass (``apply_optimizer_in_backward`` -> FBGEMM
EXACT_ROWWISE_ADAGRAD / EXACT_ADAGRAD / EXACT_SGD / ADAM): their rows are updated during backward
and never materialise a dense gradient. Other tables (e.g. the 1-dim first-order weights of LR and
DeepFM) are placed data-parallel by the planner and get the same optimizer type as a regular
(non-fused) optimizer. Dense parameters get the dense optimizer. ``CombinedOptimizer`` joins them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from recsys_emb.config.experiment import OptimizerConfig, ShardingConfig, TrainConfig
from recsys_emb.distributed.planning import table_infos, plan_sharding
from recsys_emb.distributed.init import init_deterministically, table_inits
from recsys_emb.distributed.sharders import default_sharders
from recsys_emb.train.env import DistEnv

FBGEMM_DIM_MULTIPLE = 4
CPU_FUSED_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")  # FBGEMM TBE's CPU optimizers


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


def table_weights(model: nn.Module, fused_names: set[str] | None = None) -> tuple[list[nn.Parameter], list[str]]:
    """Split the model's embedding-table weights into (fused params, parameter names of the others).

    Fused: tables named in ``fused_names`` (default: every table with dim % 4 == 0).
    """
    fused: list[nn.Parameter] = []
    unfused: list[str] = []
    for module_name, prefix, cfg, weight in _tables(model):
        is_fused = cfg.embedding_dim % FBGEMM_DIM_MULTIPLE == 0 if fused_names is None else cfg.name in fused_names
        if is_fused:
            fused.append(weight)
        else:
            unfused.append(".".join(p for p in (module_name, prefix, cfg.name, "weight") if p))
    return fused, unfused


def broadcast_plan(make_plan: Callable[[], ShardingPlan], env: DistEnv) -> ShardingPlan:
    """Plan on rank 0 and send the plan (or rank 0's error) to every rank, so all ranks agree or all raise."""
    if env.world_size == 1:
        return make_plan()
    payload: list[Any] = [None]
    if env.rank == 0:
        try:
            payload[0] = make_plan()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            payload[0] = err
    torch.distributed.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], Exception):
        raise payload[0]
    return payload[0]


def shard_model(
    model: nn.Module, env: DistEnv, train: TrainConfig, sharding: ShardingConfig | None = None,
    initial: dict[str, torch.Tensor] | None = None,
) -> tuple[DistributedModelParallel, list[str]]:
    """Attach fused table optimizers, plan the sharding and wrap ``model`` (ideally built on ``meta``) in DMP.

    Tables start from the seeded, world-size-independent uniform init of
    :func:`recsys_emb.distributed.init.init_deterministically`, or from ``initial`` (full tensors by
    state-dict key, the same on every rank) where a family's paper prescribes another init.

    Returns:
        The DMP model and the parameter names of tables trained by a regular (non-fused) optimizer.

    Raises:
        ShardingError: the requested sharding cannot run (the message says why and what would).
    """
    sharding = sharding or ShardingConfig()
    infos = table_infos(model, sharding)
    fused, unfused = table_weights(model, {t.name for t in infos if t.fused})
    if fused and env.device.type == "cpu" and train.embedding_optimizer.name not in CPU_FUSED_OPTIMIZERS:
        raise ValueError(
            f"train.embedding_optimizer.name={train.embedding_optimizer.name} has no FBGEMM CPU kernel for the sharded "
            f"(fused) tables {', '.join(t.name for t in infos if t.fused)} (CPU supports "
            f"{', '.join(CPU_FUSED_OPTIMIZERS)}); choose one of those, set sharding.type: data_parallel (full table "
            f"replicas trained by the regular torch {train.embedding_optimizer.name}), or train on CUDA"
        )
    if fused:
        apply_optimizer_in_backward(
            optimizer_class(train.embedding_optimizer.name), fused, optimizer_kwargs(train.embedding_optimizer)
        )
    sharders = default_sharders()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    plan = broadcast_plan(
        lambda: plan_sharding(
            model, sharding, world_size=env.world_size, device_type=env.device.type, batch_size=train.batch_size,
            local_world_size=local_world_size, sharders=sharders,
        ),
        env,
    )
    _check_meta_initialisable(model)
    inits = table_inits(model)
    dmp = DistributedModelParallel(model, device=env.device, plan=plan, sharders=sharders)
    # TorchRec initialises shards with each rank's own RNG: redo it so the start depends only on the seed
    init_deterministically(dmp, inits, train.seed)
    if initial:
        copy_into_shards(dmp, initial)
    return dmp, unfused


@torch.no_grad()
def copy_into_shards(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (by state-dict key) into this rank's shards of ``model`` (or into plain tensors)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    state = model.state_dict()
    for key, value in full.items():
        if key not in state:
            raise KeyError(f"initial weights: the sharded model has no state-dict entry '{key}'")
        target = state[key]
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(value[r0 : r0 + nr, c0 : c0 + nc])
        else:
            target.copy_(value)


def _check_meta_initialisable(model: nn.Module) -> None:
    """DMP materialises meta parameters of non-table modules with ``reset_parameters()``: a module without
    one would silently keep uninitialised memory, and meta BUFFERS would silently become zeros."""
    for name, module in model.named_modules():
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)):
            continue
        if any(p.device.type == "meta" for p in module._parameters.values() if p is not None) and not hasattr(
            module, "reset_parameters"
        ):
            raise TypeError(
                f"module '{name}' ({type(module).__name__}) has parameters on the meta device but no reset_parameters(): "
                "DistributedModelParallel could not initialise them; give it a reset_parameters() method"
            )
        meta_buffers = [b for b, t in module._buffers.items() if t is not None and t.device.type == "meta"]
        if meta_buffers:
            raise TypeError(
                f"module '{name}' ({type(module).__name__}) has buffers {meta_buffers} on the meta device: "
                "DistributedModelParallel would fill them with zeros; build buffers (hash salts, code tables, "
                "running statistics) on a real device even when the model is built on meta"
            )


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
