"""From the ``sharding:`` config to a TorchRec ``ShardingPlan``, with per-rank memory and clear errors.

The plan always comes from TorchRec's ``EmbeddingShardingPlanner``: ``sharding.type: auto`` lets it
choose among the layouts that can run (see below); an explicit type, globally or per table,
becomes a ``ParameterConstraints`` that pins the type. Row-wise and table-row-wise work on CPU
because our EBC sharders offer them there (:mod:`recsys_emb.distributed.sharders`).

Which layouts can run:

* tables whose dim is a multiple of 4 train with FBGEMM's fused optimizer (row-wise Adagrad etc.
  applied inside backward), which TorchRec only applies to SHARDED tables (table/row/column/
  table-row-wise); requesting ``data_parallel`` for such a table is allowed and gives it a regular,
  unfused optimizer instead;
* tables whose dim is not a multiple of 4 cannot use FBGEMM's sharded kernels: they are
  data-parallel (requesting another type is an error that says so).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.embedding_configs import BaseEmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.console import known_warnings
from recsys_emb.distributed.sharders import default_sharders

FBGEMM_DIM_MULTIPLE = 4
SHARDED_TYPES = ["table_wise", "row_wise", "column_wise", "table_row_wise"]
# what `auto` lets the planner choose from: on CPU, table_row_wise only when asked for explicitly
# (on one host it is row_wise with extra bookkeeping)
AUTO_TYPES = {"cpu": ["table_wise", "row_wise", "column_wise"], "cuda": SHARDED_TYPES}
GIB = 1024**3
ROW_SPLIT_TYPES = ("row_wise", "table_row_wise")  # split a table's rows over ranks


class ShardingError(ValueError):
    """A requested sharding cannot run; the message says why and what would."""


@dataclass(frozen=True)
class TableInfo:
    """One stock table of the model."""

    name: str
    module: str  # fqn of its EmbeddingBagCollection / EmbeddingCollection
    rows: int
    dim: int
    type: str | None  # requested sharding type (None = planner's choice)
    kernel: str | None  # requested compute kernel

    @property
    def fused(self) -> bool:
        """Trained with an FBGEMM optimizer fused into backward (sharded, dim % 4 == 0)."""
        return self.dim % FBGEMM_DIM_MULTIPLE == 0 and self.type != "data_parallel" and self.kernel != "dense"


def _stock_tables(model: nn.Module) -> list[tuple[str, BaseEmbeddingConfig]]:
    out = []
    for fqn, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            out += [(fqn, cfg) for cfg in module.embedding_bag_configs()]
        elif isinstance(module, EmbeddingCollection):
            out += [(fqn, cfg) for cfg in module.embedding_configs()]
    return out


def table_infos(model: nn.Module, sharding: ShardingConfig) -> list[TableInfo]:
    """Every stock table of ``model`` with the sharding requested for it by ``sharding``.

    Raises:
        ShardingError: unknown table names in ``sharding.tables``, or a sharded type requested for a
            table FBGEMM cannot shard.
    """
    tables = _stock_tables(model)
    names = [cfg.name for _, cfg in tables]
    for name in sharding.tables:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (tables: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
            raise ShardingError(f"sharding.tables: the model has no table '{name}'{hint}")
    infos = []
    for fqn, cfg in tables:
        override = sharding.tables.get(cfg.name)
        stype = (override.type if override and override.type else None) or (None if sharding.type == "auto" else sharding.type)
        kernel = (override.compute_kernel if override and override.compute_kernel else None) or (
            None if sharding.compute_kernel == "auto" else sharding.compute_kernel
        )
        info = TableInfo(cfg.name, fqn, int(cfg.num_embeddings), int(cfg.embedding_dim), stype, kernel)
        if info.dim % FBGEMM_DIM_MULTIPLE and stype not in (None, "data_parallel"):
            raise ShardingError(
                f"table '{info.name}' has dim {info.dim}: FBGEMM's sharded kernels need dims that are multiples of "
                f"{FBGEMM_DIM_MULTIPLE}, so it cannot be {stype}. Use data_parallel for it (sharding.tables.{info.name}.type="
                "data_parallel) or a dim that is a multiple of 4 (for LR/DeepFM first-order tables: model.first_order_dim=4)"
            )
        if kernel == "dense" and stype not in (None, "data_parallel") and info.dim % FBGEMM_DIM_MULTIPLE == 0:
            raise ShardingError(
                f"table '{info.name}': compute_kernel dense is only for data_parallel tables here (sharded tables train "
                "with FBGEMM's fused optimizer); use compute_kernel fused, or type data_parallel"
            )
        infos.append(info)
    return infos


def _constraints(infos: list[TableInfo], device_type: str, world_size: int) -> dict[str, ParameterConstraints]:
    constraints = {}
    for t in infos:
        if not t.fused:
            constraints[t.name] = ParameterConstraints(
                sharding_types=["data_parallel"], compute_kernels=[EmbeddingComputeKernel.DENSE.value]
            )
            continue
        if t.kernel in ("fused_uvm", "fused_uvm_caching") and device_type != "cuda":
            raise ShardingError(f"table '{t.name}': compute kernel {t.kernel} needs CUDA (UVM); on CPU use fused")
        kernel = t.kernel or EmbeddingComputeKernel.FUSED.value
        types = [t.type] if t.type else list(AUTO_TYPES.get(device_type, SHARDED_TYPES))
        if t.rows < world_size:  # a row-wise split would leave a rank an empty shard, which FBGEMM's CPU optimizer rejects
            if t.type in ROW_SPLIT_TYPES:
                raise ShardingError(f"table '{t.name}' has {t.rows} row(s), fewer than the {world_size} ranks: it cannot be "
                                    f"{t.type} (a rank would hold no rows); use table_wise or column_wise for it "
                                    f"(sharding.tables.{t.name}.type=table_wise)")
            types = [x for x in types if x not in ROW_SPLIT_TYPES]
        constraints[t.name] = ParameterConstraints(
            sharding_types=types,
            compute_kernels=[kernel],
            # column_wise: up to world_size shards, each a multiple of 4 wide (a 4-wide table stays one shard)
            min_partition=_column_partition(t.dim, world_size) if t.type == "column_wise" else None,
        )
    return constraints


def _column_partition(dim: int, world_size: int) -> int:
    width = max(FBGEMM_DIM_MULTIPLE, math.ceil(dim / world_size / FBGEMM_DIM_MULTIPLE) * FBGEMM_DIM_MULTIPLE)
    while dim % width:
        width += FBGEMM_DIM_MULTIPLE
    return width


def plan_sharding(
    model: nn.Module,
    sharding: ShardingConfig,
    *,
    world_size: int,
    device_type: str,
    batch_size: int,
    local_world_size: int | None = None,
    sharders: list[ModuleSharder[nn.Module]] | None = None,
) -> ShardingPlan:
    """Plan ``model`` (built on ``meta`` or any device) for ``world_size`` ranks; no process group needed.

    Raises:
        ShardingError: the request cannot run, or no plan fits the memory budget (with the reason).
    """
    infos = table_infos(model, sharding)
    constraints = _constraints(infos, device_type, world_size)
    caps = {}
    if sharding.memory_budget_gb is not None:
        caps["hbm_cap_bytes" if device_type == "cuda" else "ddr_cap_bytes"] = int(sharding.memory_budget_gb * GIB)
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size, local_world_size=local_world_size or world_size, **caps),
        kernel_config=KernelConfig(compute_device=device_type),
    )
    try:
        with known_warnings("planner"):
            planner = EmbeddingShardingPlanner(
                topology=topology, batch_size=max(1, batch_size // world_size), constraints=constraints
            )
            return planner.plan(model, sharders or default_sharders())
    except PlannerError as err:
        need = sum(t.rows * t.dim * 4 for t in infos) / GIB
        raise ShardingError(
            f"TorchRec's planner found no plan for {world_size} rank(s) on {device_type}"
            + (f" within sharding.memory_budget_gb={sharding.memory_budget_gb}" if sharding.memory_budget_gb else "")
            + f": the tables hold {need:.3f} GiB of weights in total before optimizer state. Raise the budget, add ranks, "
            f"or use row_wise/table_row_wise to spread the largest tables. Planner said: {str(err).splitlines()[0]}"
        ) from err


def optimizer_state_per_row(optimizer: str, dim: int) -> int:
    """Optimizer-state floats per table row (FBGEMM fused / torch optimizers)."""
    return {"rowwise_adagrad": 1, "adagrad": dim, "sgd": 0, "adam": 2 * dim}.get(optimizer, dim)


def table_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{table name: (rows, dim)}`` of the UNSHARDED model (call before DistributedModelParallel)."""
    return {cfg.name: (int(cfg.num_embeddings), int(cfg.embedding_dim)) for _, cfg in _stock_tables(model)}


def per_rank_memory(dims: dict[str, tuple[int, int]], plan: ShardingPlan, world_size: int, optimizer: str) -> list[dict[str, int]]:
    """Bytes of table weights and optimizer state each rank holds under ``plan`` (fp32)."""
    memory = [{"weights": 0, "optimizer": 0} for _ in range(world_size)]
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            rows, dim = dims[name]
            if ps.sharding_spec is None:  # data_parallel: a full replica everywhere
                shards = [(r, rows, dim) for r in range(world_size)]
            else:
                shards = [(s.placement.rank(), s.shard_sizes[0], s.shard_sizes[1]) for s in ps.sharding_spec.shards]
            for rank, r_rows, r_cols in shards:
                memory[rank]["weights"] += r_rows * r_cols * 4
                per_row = optimizer_state_per_row(optimizer, r_cols)
                if optimizer == "rowwise_adagrad" and ps.sharding_type == "column_wise":
                    per_row = 1  # each column shard keeps its own row-wise state
                memory[rank]["optimizer"] += r_rows * per_row * 4
    return memory


def format_plan(
    dims: dict[str, tuple[int, int]], plan: ShardingPlan, memory: list[dict[str, int]], budget_gb: float | None = None
) -> tuple[str, list[str]]:
    """Human-readable plan (one line per table) + per-rank memory, and the list of budget warnings."""
    lines = [f"{'table':<24} {'rows x dim':>16}  {'sharding':<15} {'kernel':<18} ranks"]
    for fqn, module_plan in plan.plan.items():
        lines.append(f"# module {fqn or '<root>'}")
        for name, ps in sorted(module_plan.items()):  # type: ignore[union-attr]
            rows, dim = dims[name]
            if ps.sharding_spec is None:
                where = "all"
            else:
                where = ", ".join(
                    f"{s.placement.rank()}:[{s.shard_offsets[0]}+{s.shard_sizes[0]}, {s.shard_offsets[1]}+{s.shard_sizes[1]}]"
                    for s in ps.sharding_spec.shards
                )
            lines.append(f"{name:<24} {f'{rows} x {dim}':>16}  {ps.sharding_type:<15} {ps.compute_kernel:<18} {where}")
    lines.append("")
    lines.append(f"{'rank':<6} {'weights MiB':>12} {'optimizer MiB':>14} {'total MiB':>10}")
    warnings = []
    for rank, m in enumerate(memory):
        total = m["weights"] + m["optimizer"]
        lines.append(f"{rank:<6} {m['weights'] / 2**20:>12.3f} {m['optimizer'] / 2**20:>14.3f} {total / 2**20:>10.3f}")
        if budget_gb is not None and total > budget_gb * GIB:
            warnings.append(
                f"rank {rank} needs {total / GIB:.3f} GiB for tables + optimizer state, over sharding.memory_budget_gb={budget_gb}"
            )
    return "\n".join(lines), warnings


def describe_plan(
    dims: dict[str, tuple[int, int]], plan: ShardingPlan, world_size: int, optimizer: str, budget_gb: float | None
) -> tuple[str, list[str]]:
    """:func:`format_plan` of :func:`per_rank_memory`: the text of ``plan.txt`` and budget warnings."""
    return format_plan(dims, plan, per_rank_memory(dims, plan, world_size, optimizer), budget_gb)
