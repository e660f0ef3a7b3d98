"""Sharding through one path: every family's model is wrapped in ``DistributedModelParallel`` here.

:func:`shard_model` attaches the fused table optimizers (:mod:`recsys_emb.train.optim`), plans the
sharding on rank 0 (:func:`broadcast_plan`, so all ranks agree or all raise), wraps the model (built
on ``meta``) in DMP and gives every table a start that depends only on the seed, never on the world
size: the seeded uniform init, or a family's own init copied into the shards
(:func:`copy_into_shards`).
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
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys_emb.config.experiment import ShardingConfig, TrainConfig
from recsys_emb.console import known_warnings
from recsys_emb.distributed.init import init_deterministically, table_inits
from recsys_emb.distributed.planning import plan_sharding, table_infos
from recsys_emb.distributed.sharders import default_sharders
from recsys_emb.train.env import DistEnv
from recsys_emb.train.optim import CPU_FUSED_OPTIMIZERS, optimizer_class, optimizer_kwargs, table_weights


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
    with known_warnings("dmp", "sharded_tensor"):
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


def inner_model(model: nn.Module) -> nn.Module:
    """The model inside a training module: unwraps DMP (and DDP), then a ``*Train`` wrapper's ``.model``
    (``CTRTrain``, ``SequenceTrain``, ``GraphBPRTrain``, ``TwoTowerTrain`` all hold their model there)."""
    from torchrec.distributed.model_parallel import get_unwrapped_module

    inner = get_unwrapped_module(model)
    return getattr(inner, "model", inner)
