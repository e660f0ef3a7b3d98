"""Item indexes: the exact torch index against a brute-force reference, FAISS kinds against the exact one."""

from __future__ import annotations

import os

import pytest
import torch

from recsys_emb.retrieval.index import Csr, ExactIndex, IndexConfig, build_index, load_index


def _data(n: int = 300, d: int = 12, b: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n, d, generator=g)
    queries = torch.randn(b, d, generator=g)
    seen = [torch.randperm(n, generator=g)[: int(torch.randint(0, 25, (1,), generator=g))] for _ in range(b)]
    return items, queries, seen


def _reference(items, queries, k, seen, item_ids=None):
    """Brute force: full score matrix, -inf on seen items, sort; ids mapped to global ids."""
    s = (queries.double() @ items.double().T).float()
    ids = torch.arange(items.shape[0]) if item_ids is None else item_ids
    for b, excl in enumerate(seen):
        for g_id in excl.tolist():
            s[b, ids == g_id] = float("-inf")
    order = torch.argsort(s, dim=1, descending=True)[:, :k]
    top = torch.gather(s, 1, order)
    out = torch.where(torch.isneginf(top), torch.full_like(order, -1), ids[order])
    return top, out


@pytest.mark.parametrize("chunk", [7, 64, 100000])
def test_exact_matches_bruteforce_with_exclusion(chunk):
    items, queries, seen = _data()
    res = ExactIndex(items, config=IndexConfig(chunk_size=chunk, query_batch_size=9)).search(queries, 15, seen)
    ref_s, ref_i = _reference(items, queries, 15, seen)
    assert torch.equal(res.ids, ref_i)
    assert torch.allclose(res.scores, ref_s, atol=1e-5)
    for b, excl in enumerate(seen):
        assert not set(res.ids[b].tolist()) & set(excl.tolist())


def test_exclude_as_csr_equals_list_and_item_ids_are_global():
    items, queries, seen = _data(n=80)
    item_ids = torch.randperm(1000)[:80]
    seen_global = [item_ids[s] for s in seen]
    lengths = torch.tensor([len(s) for s in seen_global])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    idx = ExactIndex(items, item_ids)
    a = idx.search(queries, 10, seen_global)
    b = idx.search(queries, 10, Csr(offsets, torch.cat(seen_global)))
    assert torch.equal(a.ids, b.ids)
    _, ref_i = _reference(items, queries, 10, seen_global, item_ids)
    assert torch.equal(a.ids, ref_i)


def test_k_larger_than_catalogue_minus_seen_pads():
    items, queries, _ = _data(n=20, b=3)
    seen = [torch.arange(5), torch.arange(20), torch.zeros(0, dtype=torch.long)]
    res = ExactIndex(items).search(queries, 30, seen)
    assert res.ids.shape == (3, 30)
    assert (res.ids[0] >= 0).sum() == 15 and (res.ids[1] >= 0).sum() == 0 and (res.ids[2] >= 0).sum() == 20
    assert torch.isneginf(res.scores[res.ids < 0]).all()
    assert set(res.ids[0, :15].tolist()) == set(range(5, 20))


def test_bad_inputs():
    idx = ExactIndex(torch.randn(5, 4))
    with pytest.raises(ValueError, match="queries must be"):
        idx.search(torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="distinct"):
        ExactIndex(torch.randn(2, 4), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="lsh")


def test_exact_save_load_round_trip(tmp_path):
    items, queries, seen = _data()
    idx = ExactIndex(items, torch.arange(300) * 3, IndexConfig(chunk_size=50))
    path = tmp_path / "idx.pt"
    idx.save(path)
    assert os.listdir(tmp_path) == ["idx.pt"]  # atomic write leaves no temp file
    back = load_index(path)
    assert back.kind == "exact" and back.config == idx.config
    assert torch.equal(back.search(queries, 9, seen).ids, idx.search(queries, 9, seen).ids)


def test_load_rejects_other_files(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a recsys_emb item index"):
        load_index(tmp_path / "x.pt")


# ---- FAISS ------------------------------------------------------------------------------------
def test_faiss_flat_equals_exact_reference():
    pytest.importorskip("faiss")
    items, queries, seen = _data(n=500, d=16, b=60)
    exact = ExactIndex(items).search(queries, 25, seen)
    flat = build_index(items, IndexConfig(kind="flat", query_batch_size=7)).search(queries, 25, seen)
    assert torch.allclose(flat.scores, exact.scores, atol=1e-4)
    # ids equal wherever the score is not tied with a neighbour within float rounding
    gap = torch.zeros_like(exact.scores, dtype=torch.bool)
    gap[:, 1:] |= (exact.scores[:, 1:] - exact.scores[:, :-1]).abs() < 1e-4
    gap[:, :-1] |= gap[:, 1:].clone()
    assert torch.equal(flat.ids[~gap], exact.ids[~gap])


@pytest.mark.parametrize("kind,opts", [("ivf_flat", {"nlist": 8, "nprobe": 8}), ("hnsw", {"ef_search": 400})])
def test_faiss_ann_exhaustive_settings_match_exact(kind, opts):
    pytest.importorskip("faiss")
    items, queries, seen = _data(n=400, d=16, b=50)
    exact = ExactIndex(items).search(queries, 20, seen)
    ann = build_index(items, IndexConfig(kind=kind, **opts)).search(queries, 20, seen)
    for b, excl in enumerate(seen):
        assert not set(ann.ids[b].tolist()) & set(excl.tolist())
    # nprobe = nlist is exhaustive; HNSW with a large efSearch on 400 points finds (almost) everything
    overlap = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(ann.ids, exact.ids)) / exact.ids.numel()
    assert overlap >= (1.0 if kind == "ivf_flat" else 0.98)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "hnsw"])
def test_faiss_save_load_round_trip_and_padding(tmp_path, kind):
    pytest.importorskip("faiss")
    items, queries, seen = _data(n=200)
    idx = build_index(items, IndexConfig(kind=kind, nlist=4, nprobe=4), item_ids=torch.arange(200) + 1000)
    idx.save(tmp_path / "f.pt")
    back = load_index(tmp_path / "f.pt")
    assert back.kind == kind
    seen_g = [s + 1000 for s in seen]
    a, b = idx.search(queries, 12, seen_g), back.search(queries, 12, seen_g)
    assert torch.equal(a.ids, b.ids) and torch.allclose(a.scores, b.scores)
    assert ((a.ids >= 1000) & (a.ids < 1200)).all()
    everything = [torch.arange(1000, 1195)] * queries.shape[0]  # only 5 admissible items left
    p = idx.search(queries, 12, everything)
    assert (p.ids[:, 5:] == -1).all() and torch.isneginf(p.scores[:, 5:]).all()
    if kind != "ivf_flat":  # IVF with nprobe < nlist may legitimately miss some of the 5
        assert ((p.ids[:, :5] >= 1195)).all()
