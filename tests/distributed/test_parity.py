"""Sharded == unsharded on 2 gloo CPU processes, for EBC, EC, our pre-transform wrapper, Unified Embedding and
an EBC whose one table serves both features (a schema's shared ``table:``, built by the embedding spec).

All kinds run in one pair of ranks (a module fixture); each parametrized test reports its own kind.
For each module kind and each of table_wise / column_wise / row_wise / table_row_wise: the same weights and the same
global batch (each rank feeds its half) give the same forward as the unsharded module on that half;
one fused SGD step leaves the same weights as an unsharded SGD step on the MEAN of the two ranks'
losses (TorchRec averages sharded gradients over ranks); state-dict keys equal the unsharded ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys_emb.config.experiment import ShardingConfig
from recsys_emb.distributed.planning import plan_sharding
from recsys_emb.distributed.sharders import default_sharders
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection
from tests.distributed.multiprocess import run_ranks

LR = 0.5
PER_RANK = 5
FEATURES = ["f0", "f1"]


class SaltedRemap(nn.Module):
    """A parameter-free transform: id -> (a_f * id + b_f) mod M per feature, keys unchanged (buffers a, b)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.register_buffer("a", torch.tensor([7, 11]))
        self.register_buffer("b", torch.tensor([3, 17]))

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        lengths = kjt.lengths()
        per_key = lengths.view(len(kjt.keys()), -1).sum(dim=1)
        key_of_value = torch.repeat_interleave(torch.arange(len(kjt.keys())), per_key)
        values = (kjt.values() * self.a[key_of_value] + self.b[key_of_value]) % self.rows
        return KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=lengths)


def make_module(kind: str, device: str) -> nn.Module:
    if kind == "ebc":
        tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=40 + 10 * i, feature_names=[f])
                  for i, f in enumerate(FEATURES)]
        return EmbeddingBagCollection(tables=tables, device=torch.device(device))
    if kind == "ec":
        tables = [EmbeddingConfig(name=f"t{i}", embedding_dim=16, num_embeddings=40 + 10 * i, feature_names=[f])
                  for i, f in enumerate(FEATURES)]
        return EmbeddingCollection(tables=tables, device=torch.device(device))
    if kind == "unified":  # feature multiplexing: 2 salted probes per feature into one shared table
        from recsys_emb.modules.spec import build_embedding

        tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=40 + 10 * i, feature_names=[f])
                  for i, f in enumerate(FEATURES)]
        return build_embedding([{"unified": {"num_rows": 64, "probes": 2}}], tables, device)
    if kind == "shared":  # both features name table "page": ONE stock table t_page with feature_names f0, f1
        from recsys_emb.config.embedding import EmbeddingSpec
        from recsys_emb.modules.spec import build_pooled

        module = build_pooled(EmbeddingSpec(), dict.fromkeys(FEATURES, 40), 16, family="model", prefix="t_",
                              tables=dict.fromkeys(FEATURES, "page"), device=device)
        assert [(c.name, c.feature_names) for c in module.embedding_bag_configs()] == [("t_page", FEATURES)]
        return module
    shared = [EmbeddingBagConfig(name="shared", embedding_dim=16, num_embeddings=64, feature_names=FEATURES)]
    return TransformedEmbeddingBagCollection(SaltedRemap(64), shared, device=device)


class Holder(nn.Module):
    def __init__(self, sparse: nn.Module) -> None:
        super().__init__()
        self.sparse = sparse

    def forward(self, kjt: KeyedJaggedTensor):  # noqa: ANN201
        return self.sparse(kjt)


def global_batch(world_size: int) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(0)
    n = PER_RANK * world_size
    lengths = torch.randint(0, 4, (len(FEATURES), n), generator=g)
    values = torch.randint(0, 40, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor(keys=FEATURES, values=values, lengths=lengths.flatten())


def rank_slice(kjt: KeyedJaggedTensor, rank: int) -> KeyedJaggedTensor:
    lengths = kjt.lengths().view(len(FEATURES), -1)
    parts = []
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.flatten().cumsum(0)])
    n = lengths.shape[1]
    for f in range(len(FEATURES)):
        lo = offsets[f * n + rank * PER_RANK]
        hi = offsets[f * n + (rank + 1) * PER_RANK]
        parts.append(kjt.values()[lo:hi])
    return KeyedJaggedTensor(
        keys=FEATURES, values=torch.cat(parts), lengths=lengths[:, rank * PER_RANK:(rank + 1) * PER_RANK].flatten()
    )


def flat_output(out) -> torch.Tensor:  # noqa: ANN001
    """KeyedTensor -> (B, sum dims); dict[str, JaggedTensor] -> concatenated values."""
    if hasattr(out, "wait"):
        out = out.wait()
    if isinstance(out, dict):
        return torch.cat([out[k].values() for k in FEATURES])
    by_key = out.to_dict()  # sharded outputs may order keys differently
    return torch.cat([by_key[k] for k in FEATURES], dim=1)


def loss_of(output: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (output * torch.randn(output.shape, generator=g)).sum()


def full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.endswith("weight")}


def _local_blocks(state: dict, full: dict[str, torch.Tensor]):  # noqa: ANN202
    """(this rank's shard tensor, the matching block of the full tensor) for every key of ``full``."""
    for key, tensor in full.items():
        for shard in state[key].local_shards():
            (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            yield shard.tensor, tensor[r0:r0 + nr, c0:c0 + nc]


@torch.no_grad()
def copy_into_shards(state: dict, full: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) weights into this rank's shards of a sharded state dict."""
    for shard, block in _local_blocks(state, full):
        shard.copy_(block)


def assert_shards_close(state: dict, full: dict[str, torch.Tensor]) -> None:
    """Every local shard of ``state`` equals its block of the full tensors ``full``."""
    for shard, block in _local_blocks(state, full):
        torch.testing.assert_close(shard, block, rtol=1e-5, atol=1e-6)


def check_parity(rank: int, world_size: int, kind: str, sharding_type: str) -> None:
    torch.manual_seed(0)
    reference = Holder(make_module(kind, "cpu"))
    start = full_weights(reference)
    batch = global_batch(world_size)

    # unsharded reference: forward of this rank's half; SGD step on the mean of the ranks' losses
    ref_out = flat_output(reference(rank_slice(batch, rank)))
    stepped = copy.deepcopy(reference)
    opt = torch.optim.SGD(stepped.parameters(), lr=LR)
    loss = sum(loss_of(flat_output(stepped(rank_slice(batch, r)))) for r in range(world_size)) / world_size
    loss.backward()
    opt.step()
    expected = full_weights(stepped)

    model = Holder(make_module(kind, "meta"))
    if kind == "wrapper":  # buffers of a transform are built for real even when tables are on meta
        model.sparse.transform = SaltedRemap(64)
    apply_optimizer_in_backward(torch.optim.SGD, [p for p in model.parameters()], {"lr": LR})
    plan = plan_sharding(model, ShardingConfig(type=sharding_type), world_size=world_size, device_type="cpu", batch_size=8)
    types = {ps.sharding_type for mp in plan.plan.values() for ps in mp.values()}
    assert types == {sharding_type}, plan
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=default_sharders())
    state = dmp.state_dict()
    assert sorted(k for k in state if k.endswith("weight")) == sorted(start), (sorted(state), sorted(start))
    copy_into_shards(state, start)

    out = flat_output(dmp(rank_slice(batch, rank)))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    loss_of(out).backward()  # fused SGD runs inside backward

    assert_shards_close(dmp.state_dict(), expected)
    # the step changed something (so the comparison above is not vacuous)
    assert any(not torch.equal(expected[k], start[k]) for k in start)


def run_all(rank: int, world_size: int, kind: str) -> None:
    # TorchRec's EmbeddingCollection sharder has no table_row_wise
    types = ("table_wise", "column_wise", "row_wise") + (("table_row_wise",) if kind != "ec" else ())
    for sharding_type in types:
        check_parity(rank, world_size, kind, sharding_type)


KINDS = ["ebc", "ec", "wrapper", "unified", "shared"]


def run_kinds(rank: int, world_size: int, kinds: list[str], done_dir: str) -> None:
    for kind in kinds:  # the first failure ends both ranks (a rank may not skip a collective its peer enters)
        run_all(rank, world_size, kind)
        Path(done_dir, f"{kind}.rank{rank}").touch()


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseException | None]:
    """All kinds in ONE pair of spawned ranks (each spawn pays ~5 s of imports); each test reads its kind's result."""
    done = tmp_path_factory.mktemp("parity_done")
    try:
        run_ranks(run_kinds, 2, KINDS, str(done))
    except Exception as e:  # noqa: BLE001 (re-raised by every test whose kind did not finish)
        return done, e
    return done, None


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_equals_unsharded_two_ranks(kind: str, parity_run: tuple[Path, BaseException | None]) -> None:
    done, error = parity_run
    if not all((done / f"{kind}.rank{r}").exists() for r in range(2)):
        raise AssertionError(f"sharded != unsharded (or the run ended earlier) for kind '{kind}'") from error
