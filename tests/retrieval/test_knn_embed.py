"""kNN-Embed: budget split, smoothing, merge, reductions to single-vector retrieval, multi-interest recall."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from recsys_emb.retrieval.index import Csr, ExactIndex, IndexConfig
from recsys_emb.retrieval.knn_embed import (
    KnnEmbed,
    KnnEmbedConfig,
    allocate_budget,
    cluster_mixtures,
    largest_remainder,
    merge_candidates,
    nearest_users,
    smooth_mixtures,
)


def _csr(lists: list[list[int]]) -> Csr:
    lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)
    offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return Csr(offsets, torch.tensor([i for x in lists for i in x], dtype=torch.long))


def _hamilton(p: list[float], k: int) -> list[int]:
    """Independent largest-remainder reference in exact rational arithmetic (ties: larger p, lower index)."""
    ps = [Fraction(x).limit_denominator(10**9) for x in p]
    tot = sum(ps)
    quota = [x / tot * k for x in ps]
    base = [int(q) for q in quota]
    order = sorted(range(len(p)), key=lambda c: (-(quota[c] - base[c]), -ps[c], c))
    for c in [c for c in order if ps[c] > 0][: k - sum(base)]:
        base[c] += 1
    return base


# ---- budget ------------------------------------------------------------------------------------
def test_budget_sums_to_k_and_is_within_one_of_quota():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200, 7, generator=g) ** 3
    p[p < 0.05] = 0
    p[:, 0] += 1e-3  # every row has mass
    p = p / p.sum(1, keepdim=True)
    for k in (1, 5, 20, 100, 101):
        counts = largest_remainder(p, k)
        assert (counts.sum(1) == k).all()
        assert ((counts - k * p.double()).abs() < 1).all()
        assert (counts[p == 0] == 0).all()


def test_budget_matches_exact_rational_reference():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(50, 5, generator=g)
    p[:, 3] = 0
    for k in (3, 10, 37):
        counts = largest_remainder(p, k)
        for row in range(p.shape[0]):
            assert counts[row].tolist() == _hamilton(p[row].tolist(), k)


def test_budget_reallocates_when_clusters_run_out():
    p = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    cap = torch.tensor([[2, 100, 100, 100], [3, 4, 100, 100], [100, 0, 100, 100]])
    counts, left = allocate_budget(p, 10, cap)
    assert (counts <= cap).all()
    assert (counts.sum(1) + left == 10).all()
    assert counts[0].tolist() == [2, 6, 2, 0]  # excess 4 split 3:1 over the clusters with room
    assert counts[1].tolist() == [3, 4, 0, 0] and left[1] == 3  # clusters with mass exhausted: leftover
    assert counts[2, 1] == 0 and counts[2].sum() == 10


def test_no_mass_rows_get_no_budget():
    counts, left = allocate_budget(torch.zeros(2, 3), 5)
    assert (counts == 0).all() and (left == 0).all()


# ---- mixtures and smoothing -------------------------------------------------------------------
def test_mixtures_are_mle_counts():
    assign = torch.tensor([0, 0, 1, 2, 2, 2])
    p, has = cluster_mixtures(_csr([[0, 1, 3], [], [5, 5, 4, 2]]), assign, 3)  # repeated item counted once
    assert torch.allclose(p[0], torch.tensor([2 / 3, 0, 1 / 3]))
    assert has.tolist() == [True, False, True]
    assert (p[1] == 0).all()
    assert torch.allclose(p[2], torch.tensor([0, 1 / 3, 2 / 3]))


def test_smoothing_keeps_a_distribution_and_hits_both_ends():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(30, 6, generator=g)
    p = p / p.sum(1, keepdim=True)
    nbrs = torch.randint(0, 30, (30, 4), generator=g)
    nbrs[0, 2:] = -1  # padding is ignored
    mean = torch.stack([p[[j for j in row.tolist() if j >= 0]].mean(0) for row in nbrs])
    assert torch.allclose(smooth_mixtures(p, nbrs, 0.0), p)
    assert torch.allclose(smooth_mixtures(p, nbrs, 1.0), mean, atol=1e-6)
    for lam in (0.0, 0.3, 1.0):
        s = smooth_mixtures(p, nbrs, lam)
        assert torch.allclose(s.sum(1), torch.ones(30), atol=1e-6) and (s >= 0).all()
        assert torch.allclose(s, (1 - lam) * p + lam * mean, atol=1e-6)


def test_nearest_users_excludes_self_and_users_without_history():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 4, generator=g)
    has = torch.ones(12, dtype=torch.bool)
    has[3] = False
    nbrs = nearest_users(emb, has, 3)
    unit = torch.nn.functional.normalize(emb, dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(float("-inf"))
    sim[:, 3] = float("-inf")
    assert torch.equal(nbrs, sim.topk(3, dim=1).indices)


# ---- merge ------------------------------------------------------------------------------------
def test_merge_deduplicates_and_refills():
    ids = torch.tensor([[5, 7, 5, -1, 9], [1, 1, 1, 1, 1]])
    scores = torch.tensor([[0.5, 0.7, 0.9, 0.0, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]])
    refill_ids = torch.tensor([[7, 3, 2, 8], [1, 4, -1, -1]])
    refill_scores = torch.tensor([[0.7, 0.6, 0.2, 0.1], [1.0, 0.3, float("-inf"), float("-inf")]])
    out = merge_candidates(ids, scores, 4, refill_ids, refill_scores)
    assert out.ids[0].tolist() == [5, 7, 3, 9]  # 5 keeps its best score 0.9; 3 refills the 4th slot
    assert torch.allclose(out.scores[0], torch.tensor([0.9, 0.7, 0.6, 0.1]))
    assert out.ids[1].tolist() == [1, 4, -1, -1]  # refill runs out: padded


# ---- reductions and retrieval -----------------------------------------------------------------
def _clustered(n_per: int = 40, c: int = 3, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(d)[:c] * 3.0
    items = torch.cat([centers[j] + 0.4 * torch.randn(n_per, d, generator=g) for j in range(c)])
    assign = torch.arange(c).repeat_interleave(n_per)
    return items, assign


def test_one_cluster_equals_single_vector_topk():
    items, _ = _clustered()
    g = torch.Generator().manual_seed(2)
    users = torch.randn(25, 8, generator=g)
    seen = [torch.randperm(items.shape[0], generator=g)[: int(i)] for i in torch.randint(0, 30, (25,), generator=g)]
    knn = KnnEmbed(items, torch.zeros(items.shape[0], dtype=torch.long), 1, KnnEmbedConfig(num_clusters=1, smoothing_lambda=0.7))
    knn.fit_users(users, Csr(*_seen_csr(seen)))
    single = ExactIndex(items).search(users, 30, seen)
    res = knn.retrieve_users(torch.arange(25), users, 30, seen)
    assert torch.equal(res.ids, single.ids)
    assert torch.equal(res.scores, single.scores)


def _seen_csr(seen):
    lengths = torch.tensor([len(s) for s in seen], dtype=torch.long)
    offsets = torch.zeros(len(seen) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return offsets, torch.cat(seen) if seen else torch.zeros(0, dtype=torch.long)


def test_single_cluster_user_with_lambda_zero_gets_that_clusters_topk():
    items, assign = _clustered()
    g = torch.Generator().manual_seed(3)
    users = torch.randn(6, 8, generator=g)
    history = [[1, 2, 3], [45, 50], [100], [0, 41, 81], [5], [119]]  # users 0,1,2,4,5: one cluster each
    knn = KnnEmbed(items, assign, 3, KnnEmbedConfig(num_clusters=3, smoothing_lambda=0.0))
    knn.fit_users(users, _csr(history))
    res = knn.retrieve_users(torch.arange(6), users, 10, [torch.tensor(h) for h in history])
    for u in (0, 1, 2, 4, 5):
        c = int(assign[history[u][0]])
        s = users[u] @ items.T
        s[assign != c] = float("-inf")
        s[history[u]] = float("-inf")
        assert res.ids[u].tolist() == s.topk(10).indices.tolist()
        assert res.budgets[u].tolist() == [10 if j == c else 0 for j in range(3)]
    assert res.budgets[3].tolist() == [4, 3, 3]  # 1/3 each: remainder seat to the lowest index


def test_small_clusters_k_beyond_catalogue_and_no_history_fallbacks():
    items, assign = _clustered(n_per=5)  # 15 items, clusters of 5
    users = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    history = [[0, 1], [0, 1, 2, 3, 4], [], list(range(13))]
    seen = [torch.tensor(h, dtype=torch.long) for h in history]
    pop = torch.arange(15, dtype=torch.float32)  # item 14 most popular
    for fallback in ("single_vector", "popularity"):
        knn = KnnEmbed(items, assign, 3, KnnEmbedConfig(num_clusters=3, smoothing_lambda=0.0, no_history=fallback),
                       item_popularity=pop)
        knn.fit_users(users, _csr(history))
        res = knn.retrieve_users(torch.arange(4), users, 12, seen)
        # user 0: all history in cluster 0 (capacity 3) -> the other 9 slots are refilled from the catalogue
        assert res.budgets[0].tolist() == [3, 0, 0]
        ranking = ExactIndex(items).search(users[0:1], 13, seen[:1]).ids[0].tolist()
        expected = {2, 3, 4} | set([i for i in ranking if i not in (2, 3, 4)][:9])
        assert set(res.ids[0].tolist()) == expected and len(expected) == 12
        # user 1: its only cluster is exhausted -> everything comes from the refill, no duplicates
        assert res.budgets[1].tolist() == [0, 0, 0]
        assert set(res.ids[1].tolist()) == set(range(5, 15)) | {-1} and (res.ids[1] >= 0).sum() == 10
        # user 3: K larger than catalogue minus seen -> 2 items then padding
        assert set(res.ids[3, :2].tolist()) == {13, 14} and (res.ids[3, 2:] == -1).all()
        # user 2: no history -> fallback
        assert res.fallback.tolist() == [False, False, True, False]
        if fallback == "single_vector":
            assert torch.equal(res.ids[2], ExactIndex(items).search(users[2:3], 12).ids[0])
        else:
            assert set(res.ids[2].tolist()) == set(range(3, 15))


def test_three_interest_users_get_all_interests_and_better_recall():
    """Users whose embedding leans to one interest but who engage with three (well separated)."""
    c, n_per, d = 3, 60, 6
    items, assign = _clustered(n_per=n_per, c=c, d=d, seed=5)
    g = torch.Generator().manual_seed(6)
    n_users, k = 30, 12
    users, history, heldout = [], [], []
    for u in range(n_users):
        w = torch.tensor([1.0, 0.3, 0.2])[torch.roll(torch.arange(3), u % 3)]
        e = (w.unsqueeze(1) * torch.eye(d)[:c]).sum(0) + 0.05 * torch.randn(d, generator=g)
        users.append(e)
        hist = [int(j) * n_per + int(i) for j in range(c) for i in torch.randperm(n_per, generator=g)[:4]]
        s = e @ items.T
        s[hist] = float("-inf")
        held = {}
        for j in range(c):
            sj = s.clone()
            sj[assign != j] = float("-inf")
            held[j] = set(sj.topk(2).indices.tolist())  # the user's best unseen items of interest j
        history.append(hist)
        heldout.append(held)
    users_t = torch.stack(users)
    seen = [torch.tensor(h) for h in history]
    knn = KnnEmbed(items, assign, c, KnnEmbedConfig(num_clusters=c, smoothing_lambda=0.0))
    knn.fit_users(users_t, _csr(history))
    multi = knn.retrieve_users(torch.arange(n_users), users_t, k, seen).ids
    single = ExactIndex(items).search(users_t, k, seen).ids
    assert all(len(set(assign[r].tolist())) == c for r in multi)  # every interest covered for every user
    assert any(len(set(assign[r].tolist())) < c for r in single)
    recall_multi = torch.zeros(c)  # summed over users: recall of interest j's held-out items
    recall_single = torch.zeros(c)
    for u in range(n_users):
        for j in range(c):
            recall_multi[j] += len(heldout[u][j] & set(multi[u].tolist())) / 2
            recall_single[j] += len(heldout[u][j] & set(single[u].tolist())) / 2
    assert (recall_multi >= recall_single).all()
    assert recall_multi.sum() > recall_single.sum()
    assert (recall_multi == n_users).all()  # kNN-Embed finds every held-out item


def test_kmeans_recovers_well_separated_clusters():
    pytest.importorskip("faiss")
    from recsys_emb.retrieval.knn_embed import kmeans_items

    items, assign = _clustered(n_per=50, c=4, d=8)
    _, found = kmeans_items(items, 4, iters=20, seed=0)
    # same partition up to relabelling
    pairs = set(zip(assign.tolist(), found.tolist()))
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4 and len({b for _, b in pairs}) == 4
    knn = KnnEmbed.fit(items, KnnEmbedConfig(num_clusters=4), IndexConfig(kind="flat"))
    assert torch.equal(knn.cluster_sizes.sort().values, torch.full((4,), 50))


def test_config_validation():
    with pytest.raises(ValueError, match="smoothing_lambda"):
        KnnEmbedConfig(smoothing_lambda=1.5)
    with pytest.raises(ValueError, match="no_history"):
        KnnEmbedConfig(no_history="random")
    with pytest.raises(ValueError, match="item_popularity"):
        KnnEmbed(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), 1, KnnEmbedConfig(no_history="popularity"))


def test_fit_users_subset_matches_full_smoothing():
    items, assign = _clustered()
    g = torch.Generator().manual_seed(7)
    users = torch.randn(20, 8, generator=g)
    history = _csr([torch.randperm(120, generator=g)[: int(n)].tolist() for n in torch.randint(0, 6, (20,), generator=g)])
    cfg = KnnEmbedConfig(num_clusters=3, smoothing_lambda=0.4, num_neighbors=3)
    full = KnnEmbed(items, assign, 3, cfg)
    full.fit_users(users, history)
    part = KnnEmbed(items, assign, 3, cfg)
    subset = torch.tensor([2, 5, 11])
    part.fit_users(users, history, users=subset)
    assert torch.allclose(part.mixtures[subset], full.mixtures[subset])
    p, has = cluster_mixtures(history, assign, 3)
    ref = smooth_mixtures(p, nearest_users(users, has, 3), 0.4, has)
    assert torch.allclose(full.mixtures, ref, atol=1e-6)
    with pytest.raises(ValueError, match="not passed to fit_users"):
        part.retrieve_users(torch.tensor([0]), users[:1], 5)


def test_user_chunking_does_not_change_results():
    items, assign = _clustered()
    g = torch.Generator().manual_seed(8)
    users = torch.randn(23, 8, generator=g)
    history = _csr([torch.randperm(120, generator=g)[: int(n)].tolist() for n in torch.randint(0, 9, (23,), generator=g)])
    seen = [history.ids[history.offsets[u]:history.offsets[u + 1]] for u in range(23)]
    out = []
    for chunk in (5, 1000):
        knn = KnnEmbed(items, assign, 3, KnnEmbedConfig(num_clusters=3, num_neighbors=2, user_batch_size=chunk))
        knn.fit_users(users, history)
        out.append(knn.retrieve_users(torch.arange(23), users, 17, seen))
    assert torch.equal(out[0].ids, out[1].ids) and torch.equal(out[0].budgets, out[1].budgets)
    assert torch.equal(out[0].fallback, out[1].fallback)


def test_each_cluster_contributes_its_top_budget_items():
    """Independent per-user reference of steps 5-6 with many clusters: for every cluster with budget n,
    the n best unseen items of that cluster; the union, ordered by score."""
    g = torch.Generator().manual_seed(11)
    n_items, n_clusters, n_users, k = 300, 12, 40, 37
    items = torch.randn(n_items, 6, generator=g)
    assign = torch.randint(0, n_clusters, (n_items,), generator=g)
    users = torch.randn(n_users, 6, generator=g)
    history = [torch.randperm(n_items, generator=g)[: int(n)] for n in torch.randint(1, 60, (n_users,), generator=g)]
    knn = KnnEmbed(items, assign, n_clusters, KnnEmbedConfig(num_clusters=n_clusters, smoothing_lambda=0.3, num_neighbors=4))
    knn.fit_users(users, Csr(*_seen_csr(history)))
    res = knn.retrieve_users(torch.arange(n_users), users, k, history)
    scores = users @ items.T
    for u in range(n_users):
        assert int(res.budgets[u].sum()) == k
        want = []
        for c in range(n_clusters):
            s = scores[u].clone()
            s[assign != c] = float("-inf")
            s[history[u]] = float("-inf")
            want += s.topk(int(res.budgets[u, c])).indices.tolist()
        order = sorted(want, key=lambda i: -float(scores[u, i]))
        assert res.ids[u].tolist() == order
        assert torch.allclose(res.scores[u], scores[u, order])
