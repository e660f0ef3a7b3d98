"""Can our checkpoints move from ShardedTensor to DTensor? Re-run this after a TorchRec upgrade.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 scripts/dtensor_state_dict_check.py

Shards one row-wise and one table-wise table on 2 gloo ranks with ``ShardingEnv.output_dtensor = True`` (TorchRec's
switch from ShardedTensor to DTensor state dicts) and tries to gather each full table, which our checkpoint
consolidation (recsys_emb/train/checkpoint.py) and the export's unsharding need. With TorchRec 1.8 (2026-12-07):
the row-wise table's ``full_tensor()`` fails (``aten.constant_pad_nd.default is not supported for
LocalShardsWrapper``) and the table-wise table is a ``Replicate`` DTensor whose local tensor is empty on the rank
that does not hold it, so we keep ShardedTensor state dicts and hide its deprecation warning
(recsys_emb/console.py, group ``sharded_tensor``). Prints one line per rank and table; exit 0 when every table gathers.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingEnv

from recsys_emb.distributed.sharders import default_sharders


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tables = [EmbeddingBagConfig(name="rw", embedding_dim=8, num_embeddings=11, feature_names=["f0"]),
              EmbeddingBagConfig(name="tw", embedding_dim=8, num_embeddings=7, feature_names=["f1"])]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    topology = TopologyFactory.create_topology(trainer_config=TrainerConfig(world_size=world, local_world_size=world),
                                               kernel_config=KernelConfig(compute_device="cpu"))
    constraints = {"rw": ParameterConstraints(sharding_types=["row_wise"]),
                   "tw": ParameterConstraints(sharding_types=["table_wise"])}
    sharders = default_sharders()
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        ebc, sharders, pg=dist.GroupMember.WORLD)
    env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)
    env.output_dtensor = True
    model = DistributedModelParallel(ebc, device=torch.device("cpu"), plan=plan, env=env, sharders=sharders)
    ok = True
    for key, value in model.state_dict().items():
        try:
            full = value.full_tensor()
            good = tuple(full.shape) == tuple(value.shape)
            print(f"rank {rank} {key}: {type(value).__name__} {value.placements} -> full {tuple(full.shape)}"
                  f"{'' if good else ' (WRONG SHAPE)'}", flush=True)
        except Exception as err:  # noqa: BLE001 (report what fails, per table)
            good = False
            print(f"rank {rank} {key}: {type(value).__name__} {value.placements} -> {type(err).__name__}: "
                  f"{str(err).splitlines()[0][:160]}", flush=True)
            break  # a failed collective leaves the other rank waiting: stop here
        ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
