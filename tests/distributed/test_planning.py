"""Planning from the sharding config (single process, no process group): types, errors, memory, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from recsys_emb.cli import main
from recsys_emb.config.experiment import ShardingConfig, TableShardingConfig
from recsys_emb.config.io import ConfigError, from_dict
from recsys_emb.distributed.planning import ShardingError, per_rank_memory, plan_sharding, table_dims
from tests.conftest import make_prepared


def model(dims: tuple[int, ...] = (16, 16, 4), rows: int = 1000) -> torch.nn.Module:
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=d, num_embeddings=rows * (i + 1), feature_names=[f"f{i}"])
              for i, d in enumerate(dims)]
    holder = torch.nn.Module()
    holder.ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    return holder


def types_of(plan) -> dict[str, str]:  # noqa: ANN001
    return {name: ps.sharding_type for mp in plan.plan.values() for name, ps in mp.items()}


def test_explicit_types_per_table_and_globally() -> None:
    cfg = ShardingConfig(type="row_wise", tables={"t1": TableShardingConfig(type="column_wise"),
                                                   "t2": TableShardingConfig(type="table_wise")})
    plan = plan_sharding(model(), cfg, world_size=2, device_type="cpu", batch_size=64)
    assert types_of(plan) == {"t0": "row_wise", "t1": "column_wise", "t2": "table_wise"}
    auto = plan_sharding(model(), ShardingConfig(), world_size=2, device_type="cpu", batch_size=64)
    assert set(types_of(auto).values()) <= {"table_wise", "row_wise", "column_wise"}


def test_data_parallel_request_and_narrow_tables() -> None:
    plan = plan_sharding(model((16, 3)), ShardingConfig(tables={"t0": TableShardingConfig(type="data_parallel")}),
                         world_size=2, device_type="cpu", batch_size=64)
    assert types_of(plan) == {"t0": "data_parallel", "t1": "data_parallel"}  # dim 3 cannot be sharded by FBGEMM
    with pytest.raises(ShardingError, match="multiples of 4"):
        plan_sharding(model((16, 3)), ShardingConfig(type="row_wise"), world_size=2, device_type="cpu", batch_size=64)


def test_clear_errors() -> None:
    with pytest.raises(ShardingError, match="did you mean 't1'"):
        plan_sharding(model(), ShardingConfig(tables={"t_1": TableShardingConfig(type="row_wise")}),
                      world_size=2, device_type="cpu", batch_size=64)
    with pytest.raises(ShardingError, match="memory_budget_gb"):
        plan_sharding(model(rows=100_000), ShardingConfig(memory_budget_gb=0.001), world_size=2, device_type="cpu", batch_size=64)
    with pytest.raises(ShardingError, match="needs CUDA"):
        plan_sharding(model(), ShardingConfig(compute_kernel="fused_uvm"), world_size=1, device_type="cpu", batch_size=64)
    with pytest.raises(ConfigError, match="sharding type 'rowwise'"):
        from_dict(ShardingConfig, {"tables": {"t0": {"type": "rowwise"}}})


def test_per_rank_memory_counts_shards_and_optimizer_state() -> None:
    m = model((16, 16, 4), rows=1000)  # rows: 1000, 2000, 3000
    dims = table_dims(m)
    plan = plan_sharding(m, ShardingConfig(type="row_wise", tables={"t2": TableShardingConfig(type="data_parallel")}),
                         world_size=2, device_type="cpu", batch_size=64)
    memory = per_rank_memory(dims, plan, 2, "rowwise_adagrad")
    # row-wise halves of t0 and t1 on each rank + a full replica of t2 everywhere
    expected_weights = (500 * 16 + 1000 * 16 + 3000 * 4) * 4
    expected_state = (500 + 1000 + 3000) * 4  # one float per row for row-wise Adagrad
    assert memory == [{"weights": expected_weights, "optimizer": expected_state}] * 2
    assert per_rank_memory(dims, plan, 2, "adagrad")[0]["optimizer"] == expected_weights


def test_plan_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_prepared(tmp_path / "train", 500)
    out = tmp_path / "plan.txt"
    code = main(["plan", "--config", str(Path(__file__).parents[2] / "configs" / "criteo_dcnv2_tiny.yaml"),
                 "--train", str(data), "--world-size", "2", "--set", "sharding.type=row_wise", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert text.count(" row_wise ") == 4 and "optimizer MiB" in text
    assert out.read_text().strip() == text.strip()
    code = main(["plan", "--config", str(Path(__file__).parents[2] / "configs" / "criteo_dcnv2_tiny.yaml"),
                 "--train", str(data), "--world-size", "2", "--set", "sharding.tables={t_C9: {type: row_wise}}"])
    assert code == 2 and "no table 't_C9'" in capsys.readouterr().err


def test_tables_with_fewer_rows_than_ranks_are_never_split_by_rows() -> None:
    """A 1-row table split by rows over 2 ranks leaves one rank an empty shard, which FBGEMM's CPU optimizer
    rejects (with a misleading 'more than 2B rows' error): auto never picks it, an explicit request is refused."""
    plan = plan_sharding(model((16, 16, 16), rows=1), ShardingConfig(), world_size=2, device_type="cpu", batch_size=64)
    assert types_of(plan)["t0"] not in ("row_wise", "table_row_wise")  # t0: 1 row (t1: 2, t2: 3 rows)
    with pytest.raises(ShardingError, match="table 't0' has 1 row.*fewer than the 2 ranks.*table_wise"):
        plan_sharding(model((16, 16, 16), rows=1), ShardingConfig(type="row_wise"), world_size=2, device_type="cpu",
                      batch_size=64)
