"""DNIS module + search steps: reductions, alpha steps, pruning, derived real tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.modules.dnis import DNISEmbeddingBagCollection, frequency_blocks
from recsys_emb.modules.compact import CompactEmbeddingBagCollection
from recsys_emb.search.derive import compact_module, derive_tables, full_embedding_bytes
from recsys_emb.search.dnis import normalise_rows, prune_masks

FEATURES = ["a", "b", "c"]
VOCAB = {"a": 40, "b": 24, "c": 12}
DIM = 8


def tables(dim: int = DIM) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=VOCAB[f], feature_names=[f]) for f in FEATURES]


def kjt(batch: int = 64, seed: int = 0, empty_every: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for f in FEATURES:
        ids = torch.randint(0, VOCAB[f], (batch,), generator=g)
        lens = torch.ones(batch, dtype=torch.int64)
        if empty_every:
            lens[::empty_every] = 0
        values.append(ids[lens.bool()])
        lengths.append(lens)
    return KeyedJaggedTensor.from_lengths_sync(FEATURES, torch.cat(values), torch.cat(lengths))


def dnis(num_blocks: int = 3, seed: int = 0) -> DNISEmbeddingBagCollection:
    torch.manual_seed(seed)
    blocks = {f: torch.from_numpy(frequency_blocks(np.arange(VOCAB[f], 0, -1), num_blocks)) for f in FEATURES}
    return DNISEmbeddingBagCollection(tables(), blocks, num_blocks)


def test_all_alpha_one_equals_plain_ebc_forward_and_gradients() -> None:
    m = dnis()
    plain = EmbeddingBagCollection(tables())
    plain.load_state_dict(m.ebc.state_dict())
    features = kjt(empty_every=5)
    out, ref = m(features), plain(features)
    assert out.keys() == ref.keys()
    torch.testing.assert_close(out.values(), ref.values(), rtol=0, atol=0)
    g = torch.randn_like(ref.values())
    (out.values() * g).sum().backward()
    (ref.values() * g).sum().backward()
    for f in FEATURES:
        torch.testing.assert_close(m.ebc.embedding_bags[f"t_{f}"].weight.grad, plain.embedding_bags[f"t_{f}"].weight.grad, rtol=0, atol=0)


def test_alpha_scales_each_id_by_its_block_row() -> None:
    m = dnis()
    with torch.no_grad():
        for a in m.alphas().values():
            a.uniform_()
    features = kjt(batch=16)
    out = m(features).to_dict()
    for f, jt in features.to_dict().items():
        ids = jt.values()
        weight = m.table_weight(f).detach()
        expected = weight[ids] * m.alphas()[f].detach()[m.block_of(f)[ids]]
        torch.testing.assert_close(out[f], expected)


def test_frequency_blocks_rows_and_mass() -> None:
    counts = np.array([5, 50, 1, 20, 0, 7, 3, 9])
    blocks = frequency_blocks(counts, 4, "rows")
    order = np.argsort(-counts, kind="stable")  # most frequent first
    assert blocks[order].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    mass = frequency_blocks(counts, 2, "mass")
    # 50 alone already holds more than half of the total count (95): block 0 = {id 1}
    assert mass[1] == 0 and (mass[np.arange(8) != 1] == 1).all()


def test_multi_id_bags_are_rejected() -> None:
    m = dnis()
    bad = KeyedJaggedTensor.from_lengths_sync(FEATURES, torch.tensor([1, 2, 3, 4]), torch.tensor([2, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="at most one id per bag"):
        m(bad)


def test_normalised_rows_have_mean_abs_one() -> None:
    g = torch.randn(5, 7) * torch.tensor([[1e-3], [1.0], [30.0], [0.0], [2.0]])
    n = normalise_rows(g)
    means = n.abs().mean(dim=1)
    torch.testing.assert_close(means[[0, 1, 2, 4]], torch.ones(4))
    assert means[3] == 0
    torch.testing.assert_close(torch.sign(n), torch.sign(g))


def test_entry_pruning_hits_target_and_zeroes_exactly_the_smallest() -> None:
    m = dnis()
    with torch.no_grad():
        for a in m.alphas().values():
            a.uniform_()
    masks, _ = prune_masks(m, 0.3, by="entry")
    values = torch.cat([(m.table_weight(f) * m.alphas()[f][m.block_of(f)]).detach().abs().flatten() for f in FEATURES])
    keep = torch.cat([masks[f].flatten() for f in FEATURES])
    k = int(np.ceil(0.3 * values.numel()))
    smallest = torch.argsort(values)[:k]  # independent reference: sort all |alpha * E|
    expected = torch.ones_like(keep)
    expected[smallest] = False
    assert torch.equal(keep, expected)


def test_column_pruning_removes_whole_block_columns() -> None:
    m = dnis()
    with torch.no_grad():
        for a in m.alphas().values():
            a.uniform_()
    masks, _ = prune_masks(m, 0.5, by="column")
    total = sum(v.numel() for v in masks.values())
    pruned = sum(int((~v).sum()) for v in masks.values())
    assert pruned >= 0.5 * total
    for f in FEATURES:
        blocks = m.block_of(f)
        for b in range(3):
            rows = masks[f][blocks == b]
            assert (rows == rows[:1]).all()  # every row of a block keeps the same columns


@pytest.mark.parametrize("by", ["entry", "column"])
def test_derived_model_equals_masked_model_and_has_real_smaller_tables(by: str) -> None:
    m = dnis()
    with torch.no_grad():
        for a in m.alphas().values():
            a.uniform_()
            a[:, :2] = 0.0  # as after an l1 search: some (block, dim) weights at exactly 0
        m.alphas()["c"].zero_()  # a feature pruned entirely -> zero output
    masks, _ = prune_masks(m, 0.6, by=by)
    m.set_entry_masks(masks)
    layout, weights = derive_tables(m)
    compact = compact_module(layout, weights)
    features = kjt(batch=128, empty_every=7)
    torch.testing.assert_close(compact(features).values(), m(features).values(), rtol=0, atol=0)
    assert (compact(features).to_dict()["c"] == 0).all()
    assert isinstance(compact.ebc, EmbeddingBagCollection)
    configs = compact.ebc.embedding_bag_configs()
    assert all(c.embedding_dim % 4 == 0 for c in configs)
    assert not any(c.feature_names[0].startswith("c@") for c in configs)
    assert full_embedding_bytes(compact) < full_embedding_bytes(m)
    # rounding up to a multiple of 4 only adds zero values
    assert full_embedding_bytes(compact) // 4 - sum(int(v.sum()) for v in masks.values()) >= 0


def test_derived_compact_module_trains_through_stock_tables() -> None:
    m = dnis()
    with torch.no_grad():
        m.alphas()["a"][:, 4:] = 0.0
    layout, weights = derive_tables(m)
    compact = compact_module(layout, weights)
    assert isinstance(compact, CompactEmbeddingBagCollection)
    compact(kjt()).values().sum().backward()
    grads = [t.weight.grad for t in compact.ebc.embedding_bags.values()]
    assert all(g is not None for g in grads)
