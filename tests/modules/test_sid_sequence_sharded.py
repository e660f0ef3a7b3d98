"""Sharded == unsharded for the sequence item embeddings with semantic-ID features, DARE tables and id hashing.

On 2 gloo CPU processes, for each item-feature variant and each of table_wise / column_wise / row_wise:
the same weights and the same global batch (each rank feeds its own examples) give the same attention
and representation embeddings as the unsharded module on that rank's examples, and one fused SGD step
leaves the same weights as an unsharded SGD step on the MEAN of the ranks' losses (TorchRec averages
sharded gradients). This is what lets ``recsys-emb train`` run DIN / DARE with SID features under
DistributedModelParallel.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.data.sequences import SequenceDataConfig, SequenceDataset, load_raw, write_synthetic_s3rec
from recsys_emb.distributed.planning import plan_sharding
from recsys_emb.distributed.sharders import default_sharders
from recsys_emb.modules.sid_sequence import build_sequence_item_embedding
from recsys_emb.semantic_ids.codes import SemanticIds
from recsys_emb.config.sequence import SequenceModelConfig
from tests.distributed.multiprocess import run_ranks
from tests.distributed.test_parity import Holder, assert_shards_close, copy_into_shards

LR = 0.5
PER_RANK = 12
VARIANTS = {  # name: (item_features, decoupled, item_hash_buckets)
    "sid": ("sid", False, 0),
    "dare_id+sid": ("id+sid", True, 0),
    "dare_hashed_id": ("id", True, 7),
}


def _setup(folder: str) -> tuple[SequenceDataset, str]:
    cfg = SequenceDataConfig(dataset="s3rec", stem="Synth", path=folder, max_history=6)
    ds = SequenceDataset(load_raw(cfg), cfg)
    return ds, str(Path(folder) / "sids.npz")


def _build(ds: SequenceDataset, codes: str, variant: str, device: str) -> nn.Module:
    item_features, decoupled, buckets = VARIANTS[variant]
    cfg = SequenceModelConfig(name="din", embedding_dim=8, attention_dim=4 if decoupled else None, decoupled=decoupled,
                              item_features=item_features, item_hash_buckets=buckets)
    if item_features != "id":
        cfg.sid = type(cfg.sid)(codes=codes, tokenizer="prefix_ngram")
    return Holder(build_sequence_item_embedding(cfg, ds.table_sizes(), ds, device=device))


def _flat(out) -> torch.Tensor:  # noqa: ANN001
    """(attention, representation) dicts of JaggedTensor -> one vector, keys in sorted order."""
    att, rep = (d.wait() if hasattr(d, "wait") else d for d in out)  # sharded tables return LazyAwaitables
    return torch.cat([d[k].values().flatten() for d in (att, rep) for k in sorted(d)])


def _loss(flat: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (flat * torch.randn(flat.shape, generator=g)).sum()


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.endswith("weight")}


def _check(rank: int, world_size: int, folder: str, variant: str, sharding_type: str) -> None:
    ds, codes = _setup(folder)
    examples = ds.examples("test")
    batch = [ds.make_batch(examples.take(np.arange(r * PER_RANK, (r + 1) * PER_RANK))).sparse_features for r in range(world_size)]
    torch.manual_seed(0)
    reference = _build(ds, codes, variant, "cpu")
    start = _weights(reference)
    ref_out = _flat(reference(batch[rank]))
    stepped = copy.deepcopy(reference)
    opt = torch.optim.SGD(stepped.parameters(), lr=LR)
    (sum(_loss(_flat(stepped(batch[r]))) for r in range(world_size)) / world_size).backward()
    opt.step()
    expected = _weights(stepped)

    model = _build(ds, codes, variant, "meta")
    apply_optimizer_in_backward(torch.optim.SGD, list(model.parameters()), {"lr": LR})
    plan = plan_sharding(model, ShardingConfig(type=sharding_type), world_size=world_size, device_type="cpu", batch_size=8)
    assert {ps.sharding_type for mp in plan.plan.values() for ps in mp.values()} == {sharding_type}, plan
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=default_sharders())
    state = dmp.state_dict()
    assert sorted(k for k in state if k.endswith("weight")) == sorted(start)
    copy_into_shards(state, start)

    out = _flat(dmp(batch[rank]))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    _loss(out).backward()  # the fused SGD step runs inside backward
    assert_shards_close(dmp.state_dict(), expected)
    assert any(not torch.equal(expected[k], start[k]) for k in start)  # the step moved something


def _all_types(rank: int, world_size: int, folder: str, variant: str) -> None:
    for sharding_type in ("table_wise", "column_wise", "row_wise"):
        _check(rank, world_size, folder, variant, sharding_type)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = write_synthetic_s3rec(tmp_path_factory.mktemp("synth"), users=60, items=30, categories=4, seed=3)
    codes = np.random.default_rng(0).integers(0, 4, size=(31, 3))
    SemanticIds([str(i) for i in range(31)], codes, [4, 4, 4]).save(Path(root) / "sids.npz")
    return str(root)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sharded_sequence_item_embedding_equals_unsharded(folder: str, variant: str) -> None:
    run_ranks(_all_types, 2, folder, variant)
