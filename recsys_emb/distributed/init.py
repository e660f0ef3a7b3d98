"""World-size-independent initialisation of sharded embedding tables and dense parameters.

TorchRec initialises each shard of a table with the local RNG of the rank that holds it, so the
same seed gives DIFFERENT initial tables for 1, 2 or 8 ranks (and the dense layers, initialised
afterwards, see a different RNG state too). :func:`init_deterministically` re-initialises after
sharding so that a model's initial weights depend only on the seed:

* every table is drawn in blocks of :data:`BLOCK_ROWS` rows, block ``b`` of table ``t`` from a
  generator seeded by ``(seed, t, b)``, uniform in the table's ``[weight_init_min, weight_init_max]``
  (TorchRec's defaults when unset); a rank draws only the blocks overlapping its shards, so no rank
  ever materialises a full large table;
* dense modules (everything outside the sharded modules) get ``reset_parameters()`` in module order
  after ``torch.manual_seed(seed)``, identically on every rank.

This is what makes a 2-rank run follow the 1-process run step by step (tests/distributed).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn
from torchrec.distributed.types import ShardedModule
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

BLOCK_ROWS = 4096


@dataclass(frozen=True)
class TableInit:
    """Where a table's weight lives in the state dict and how it is initialised."""

    key: str  # state-dict key of the weight
    name: str
    rows: int
    dim: int
    low: float
    high: float


def table_inits(model: nn.Module) -> list[TableInit]:
    """Init specs of every stock table of the UNSHARDED model (call before DistributedModelParallel)."""
    specs = []
    for fqn, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            configs, attr = module.embedding_bag_configs(), "embedding_bags"
        elif isinstance(module, EmbeddingCollection):
            configs, attr = module.embedding_configs(), "embeddings"
        else:
            continue
        for cfg in configs:
            key = ".".join(p for p in (fqn, attr, cfg.name, "weight") if p)
            specs.append(TableInit(key, cfg.name, int(cfg.num_embeddings), int(cfg.embedding_dim),
                                   float(cfg.get_weight_init_min()), float(cfg.get_weight_init_max())))
    return specs


def _block(spec: TableInit, seed: int, block: int) -> torch.Tensor:
    lo = block * BLOCK_ROWS
    rows = min(BLOCK_ROWS, spec.rows - lo)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(spec.name.encode()) * 7919 + block)
    out = torch.empty(rows, spec.dim)
    if spec.low == spec.high:
        return out.fill_(spec.low)
    return out.uniform_(spec.low, spec.high, generator=gen)


def _fill(target: torch.Tensor, spec: TableInit, seed: int, row0: int, col0: int) -> None:
    rows, cols = target.shape
    first, last = row0 // BLOCK_ROWS, (row0 + rows - 1) // BLOCK_ROWS
    for b in range(first, last + 1):
        values = _block(spec, seed, b)
        lo = max(row0, b * BLOCK_ROWS)
        hi = min(row0 + rows, b * BLOCK_ROWS + values.shape[0])
        target[lo - row0:hi - row0].copy_(values[lo - b * BLOCK_ROWS:hi - b * BLOCK_ROWS, col0:col0 + cols])


@torch.no_grad()
def init_deterministically(dmp: nn.Module, specs: list[TableInit], seed: int) -> None:
    """Re-initialise ``dmp`` (a DistributedModelParallel) so its weights depend only on ``seed``."""
    state = dmp.state_dict()
    for spec in specs:
        if spec.rows == 0:
            continue
        weight = state.get(spec.key)
        if weight is None:
            raise KeyError(f"table weight {spec.key} not found in the sharded model's state dict")
        if hasattr(weight, "local_shards"):
            for shard in weight.local_shards():
                (r0, c0) = shard.metadata.shard_offsets
                if shard.tensor.numel():
                    _fill(shard.tensor, spec, seed, r0, c0)
        else:  # data-parallel: a full (small) replica on every rank
            _fill(weight, spec, seed, 0, 0)
    torch.manual_seed(seed)
    _reset_dense(getattr(dmp, "_dmp_wrapped_module", dmp))


def _reset_dense(module: nn.Module) -> None:
    if isinstance(module, ShardedModule) or isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)):
        return
    inner = getattr(module, "module", None)  # DistributedDataParallel
    if isinstance(module, nn.parallel.DistributedDataParallel) and inner is not None:
        _reset_dense(inner)
        return
    if module._parameters and hasattr(module, "reset_parameters"):
        module.reset_parameters()
    for child in module.children():
        _reset_dense(child)
