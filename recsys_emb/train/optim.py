"""The optimizers of a (DMP-wrapped) model; the wrapping itself is :mod:`recsys_emb.train.parallel`.

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
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from recsys_emb.config.experiment import OptimizerConfig, TrainConfig

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
