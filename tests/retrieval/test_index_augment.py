"""The MIPS -> L2 augmentation (``mips_transform: augment``) for IVF-Flat (and HNSW), against the exact index."""

from __future__ import annotations

import pytest
import torch

from recsys_emb.retrieval.index import ExactIndex, IndexConfig, build_index, load_index


def _spread(n: int = 600, d: int = 16, b: int = 40, seed: int = 0):
    """Items whose norms vary ~50x (like LightGCN / BPR embeddings), queries, per-query exclusions."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).mul(5).add(0.1)
    queries = torch.randn(b, d, generator=g) * 3
    exclude = [torch.randint(0, n, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g) for _ in range(b)]
    return items, queries, exclude


def _tie_free(scores: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """Positions whose exact score is not within ``tol`` of a neighbour's (their id order is well defined)."""
    near = torch.zeros_like(scores, dtype=torch.bool)
    close = (scores[:, 1:] - scores[:, :-1]).abs() < tol
    near[:, 1:] |= close
    near[:, :-1] |= close
    return ~near


@pytest.mark.parametrize("kind,opts", [("ivf_flat", {"nlist": 10, "nprobe": 10}),
                                       ("hnsw", {"hnsw_m": 16, "ef_search": 600})])
def test_augment_exhaustive_equals_exact_mips(tmp_path, kind, opts):
    faiss = pytest.importorskip("faiss")
    items, queries, exclude = _spread()
    ref = ExactIndex(items).search(queries, 15, exclude)
    idx = build_index(items, IndexConfig(kind=kind, mips_transform="augment", **opts), item_ids=torch.arange(600) + 7)
    assert idx.augmented and idx.index.metric_type == faiss.METRIC_L2 and idx.index.d == 17
    if kind == "ivf_flat":
        assert idx.index.quantizer.metric_type == faiss.METRIC_L2
    res = idx.search(queries, 15, [e + 7 for e in exclude])
    ok = _tie_free(ref.scores)
    if kind == "ivf_flat":  # nprobe = nlist: exhaustive, so the same top-15 as exact
        assert torch.equal(res.ids[ok] - 7, ref.ids[ok])
    else:  # efSearch = N on 600 points: (almost) exhaustive
        assert (res.ids - 7 == ref.ids).float().mean() > 0.99
    # returned scores are the inner products q.x (recovered from the L2 distance) within float rounding
    direct = (queries.double().unsqueeze(1) * items.double()[(res.ids - 7).clamp_min(0)]).sum(2).float()
    torch.testing.assert_close(res.scores, direct, rtol=1e-4, atol=2e-3)
    torch.testing.assert_close(res.scores, ref.scores, rtol=1e-4, atol=2e-3)
    for b in range(queries.shape[0]):
        assert not set((res.ids[b] - 7).tolist()) & set(exclude[b].tolist())
    idx.save(tmp_path / "aug.idx")
    back = load_index(tmp_path / "aug.idx")
    assert back.kind == kind and back.augmented and back.max_norm == pytest.approx(idx.max_norm)
    again = back.search(queries, 15, [e + 7 for e in exclude])
    assert torch.equal(again.ids, res.ids)
    torch.testing.assert_close(again.scores, res.scores)


@pytest.mark.parametrize("n", [1, 5, 20, 45])
def test_augment_ivf_tiny_indexes_build_and_search(n):
    """kNN-Embed builds one index per cluster: with nlist 0 (auto) a ~20-item cluster gets one list
    (exact inside the cluster); an explicit nlist larger than the cluster is capped at its size."""
    pytest.importorskip("faiss")
    items, queries, _ = _spread(n=n, b=6, seed=2)
    ids = torch.arange(n) * 3 + 1
    ref = ExactIndex(items, ids).search(queries, 10)
    for nlist, nprobe in ((0, 16), (810, 810)):
        idx = build_index(items, IndexConfig(kind="ivf_flat", mips_transform="augment", nlist=nlist, nprobe=nprobe),
                          item_ids=ids)
        assert idx.nlist == (max(1, n // 39) if nlist == 0 else n)
        res = idx.search(queries, 10)
        ok = _tie_free(ref.scores) & (ref.ids >= 0)
        assert torch.equal(res.ids[ok], ref.ids[ok])
        assert (res.ids[:, min(n, 10):] == -1).all()
        torch.testing.assert_close(res.scores[ref.ids >= 0], ref.scores[ref.ids >= 0], rtol=1e-4, atol=2e-3)


def test_augment_is_ignored_by_flat():
    pytest.importorskip("faiss")
    items, queries, exclude = _spread(n=200)
    idx = build_index(items, IndexConfig(kind="flat", mips_transform="augment"))
    assert not idx.augmented
    ref = ExactIndex(items).search(queries, 10, exclude)
    res = idx.search(queries, 10, exclude)
    torch.testing.assert_close(res.scores, ref.scores, rtol=1e-4, atol=1e-3)
