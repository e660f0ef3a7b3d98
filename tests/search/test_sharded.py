"""Sharded == unsharded on 2 gloo ranks for the DNIS / OptEmbed modules and the derived compact module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.distributed.planning import plan_sharding
from recsys_emb.distributed.sharders import default_sharders
from recsys_emb.modules.dnis import DNISEmbeddingBagCollection
from recsys_emb.modules.optembed import OptEmbedEmbeddingBagCollection
from recsys_emb.search.compact import CompactEmbeddingBagCollection, CompactLayout, PartSpec
from tests.distributed.multiprocess import run_ranks

FEATURES = ["f0", "f1"]
VOCAB = 40
PER_RANK = 6


def tables() -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=8, num_embeddings=VOCAB, feature_names=[f]) for f in FEATURES]


def layout() -> CompactLayout:
    codes = {}
    for f in FEATURES:
        c = torch.full((VOCAB,), -1, dtype=torch.int64)
        c[0:20] = torch.arange(20) * 2 + 0  # part 0: ids 0..19
        c[25:40] = torch.arange(15) * 2 + 1  # part 1: ids 25..39; ids 20..24 pruned
        codes[f] = c.to(torch.int32)
    parts = [p for f in FEATURES for p in (PartSpec(f, 0, 20, (0, 1, 2, 3, 4, 5, 6, 7)), PartSpec(f, 1, 15, (2, 3, 5, 7)))]
    return CompactLayout([(f, 8) for f in FEATURES], parts, codes)


def make(kind: str, device: str) -> nn.Module:
    if kind == "dnis":
        return DNISEmbeddingBagCollection(tables(), {f: torch.arange(VOCAB) // 20 for f in FEATURES}, 2, device=device)
    if kind == "optembed":
        return OptEmbedEmbeddingBagCollection(tables(), field_dims={"f0": 5, "f1": 8}, device=device)
    return CompactEmbeddingBagCollection(layout(), device=device)


class Holder(nn.Module):
    def __init__(self, sparse: nn.Module) -> None:
        super().__init__()
        self.sparse = sparse

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        out = self.sparse(kjt)
        by_key = out.to_dict()
        return torch.cat([by_key[k] for k in FEATURES], dim=1)


def batch(rank: int, kind: str) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(rank)
    max_len = 3 if kind == "compact" else 1
    lengths = torch.randint(0, max_len + 1, (len(FEATURES) * PER_RANK,), generator=g)
    values = torch.randint(0, VOCAB, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor(keys=FEATURES, values=values, lengths=lengths)


def check(rank: int, world_size: int, kind: str) -> None:
    for sharding_type in ("table_wise", "row_wise"):
        torch.manual_seed(0)
        reference = Holder(make(kind, "cpu"))
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if "alpha" in name:
                    p.uniform_(0.0, 1.0)
                if "threshold" in name:
                    p.fill_(0.3)
        start = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        expected = reference(batch(rank, kind))

        model = Holder(make(kind, "meta"))
        plan = plan_sharding(model, ShardingConfig(type=sharding_type), world_size=world_size, device_type="cpu", batch_size=8)
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=default_sharders())
        state = dmp.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                plain_key = key.replace("_dmp_wrapped_module.", "").replace("module.", "", 1) if key not in start else key
                full = start[plain_key]
                if hasattr(value, "local_shards"):
                    for shard in value.local_shards():
                        (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                        shard.tensor.copy_(full[r0:r0 + nr, c0:c0 + nc])
                else:
                    value.copy_(full)
        out = dmp(batch(rank, kind))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # spawns 2 processes importing torchrec (~60 s on 2 idle cores)
@pytest.mark.parametrize("kind", ["dnis", "optembed", "compact"])
def test_sharded_equals_unsharded_two_ranks(kind: str) -> None:
    run_ranks(check, 2, kind)
