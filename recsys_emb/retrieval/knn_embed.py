"""kNN-Embed: multi-interest candidate retrieval from locally smoothed mixtures over item clusters.

Paper: A. El-Kishky, T. Markovich, K. Leung, F. Portman, A. Haghighi, Y. Xiao, "kNN-Embed: Locally
Smoothed Embedding Mixtures For Multi-interest Candidate Retrieval", PAKDD 2023 (arXiv:2205.06205).

Shape glossary: N items, U users, B queried users, C clusters, D embedding dim, K candidate budget.

What it does, on top of any user/item embeddings (two-tower, MF, LightGCN, ...):

1. **Interests.** Item embeddings are clustered into C clusters with FAISS k-means
   (:func:`kmeans_items`); every item has exactly one cluster.
2. **Mixture.** P(c|u) = share of user u's engaged (training) items that fall in cluster c (the
   maximum-likelihood estimate; :func:`cluster_mixtures`).
3. **Local smoothing.** P~(c|u) = (1 - lambda) P(c|u) + lambda * mean of P(c|v) over u's
   ``num_neighbors`` nearest users v (:func:`nearest_users`, :func:`smooth_mixtures`).
4. **Budget.** K is split over clusters in proportion to P~(c|u) by largest-remainder rounding; a
   cluster's budget is capped by the number of its items the user has not seen, and the excess is
   re-split over the clusters that still have room, again in proportion to P~ (:func:`allocate_budget`).
5. **Per-cluster queries.** Each cluster with a budget is searched with the user embedding,
   restricted to that cluster's items (one :class:`~recsys_emb.retrieval.index.ItemIndex` per
   cluster), seen items excluded.
6. **Merge.** The per-cluster lists are concatenated, deduplicated and, when short of K (approximate
   indexes returning fewer, or every cluster with mass exhausted), refilled from the user's
   single-vector ranking over the whole catalogue (:func:`merge_candidates`).

Choices not fixed by the paper (also in docs/techniques/knn_embed.md):

* Each mixture component (cluster c) is queried with the user's own embedding over cluster c's items
  only (the definition in the issue). The paper's abstract speaks of "querying each of a user's
  mixture component"; its full text was not available when this was checked, so no other
  per-component query vector is offered.
* k-means runs on L2-normalised item embeddings by default (``spherical: true``; the retrieval score
  is an inner product, so direction is what defines an interest); items are assigned to the centroid
  of highest cosine similarity (Euclidean nearest centroid when ``spherical: false``).
* P(c|u) counts each distinct training item once (no recency or count weighting).
* Neighbours are the users with the highest cosine similarity of their *user embeddings* among users
  with a history, the user itself excluded; they are searched with the same index kind as the items.
* Largest-remainder ties go to the cluster with the larger P~, then the lower cluster index; clusters
  with P~ = 0 never get a seat.
* The merged list is ordered by inner-product score (the per-cluster lists are not interleaved), so
  ranking metrics compare like with like; the *set* is what kNN-Embed changes.
* Users with no history: ``no_history: single_vector`` (default, plain top-K), ``popularity`` (most
  engaged training items) or ``neighbors`` (P~ = the neighbour mean, i.e. lambda = 1 for them).

Reductions (tested): with C = 1 the result is exactly single-vector top-K on the same index kind;
with lambda = 0 a user whose history lies in one cluster gets exactly the top-K of that cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from recsys_emb.console import tqdm

from recsys_emb.retrieval.index import Csr, Exclude, IndexConfig, ItemIndex, SearchResult, build_index, exclude_to_csr

NO_HISTORY_FALLBACKS = ("single_vector", "popularity", "neighbors")


@dataclass
class KnnEmbedConfig:
    """Options of kNN-Embed (the YAML ``knn_embed:`` section)."""

    num_clusters: int = 32  # C, number of k-means interest clusters
    kmeans_iters: int = 25  # k-means iterations
    spherical: bool = True  # cluster L2-normalised item embeddings (cosine k-means)
    smoothing_lambda: float = 0.5  # lambda in P~ = (1 - lambda) P + lambda * neighbour mean
    num_neighbors: int = 10  # k nearest users used for smoothing
    no_history: str = "single_vector"  # single_vector | popularity | neighbors
    seed: int = 0  # k-means seed
    user_batch_size: int = 2048  # users retrieved per chunk (bounds the (chunk, C, K) candidate buffer)

    def __post_init__(self) -> None:
        if self.user_batch_size < 1:
            raise ValueError(f"knn_embed.user_batch_size must be >= 1, got {self.user_batch_size}")
        if self.num_clusters < 1:
            raise ValueError(f"knn_embed.num_clusters must be >= 1, got {self.num_clusters}")
        if not 0.0 <= self.smoothing_lambda <= 1.0:
            raise ValueError(f"knn_embed.smoothing_lambda must be in [0, 1], got {self.smoothing_lambda}")
        if self.num_neighbors < 0 or self.kmeans_iters < 1:
            raise ValueError("knn_embed.num_neighbors must be >= 0 and kmeans_iters >= 1")
        if self.no_history not in NO_HISTORY_FALLBACKS:
            raise ValueError(f"knn_embed.no_history {self.no_history!r} is not one of {list(NO_HISTORY_FALLBACKS)}")


# --------------------------------------------------------------------------------------------------
# 1. clustering
# --------------------------------------------------------------------------------------------------
def kmeans_items(item_embeddings: Tensor, num_clusters: int, *, iters: int = 25, spherical: bool = True,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cluster item embeddings with FAISS k-means.

    Returns:
        ``(centroids (C, D), assignments (N,) int64)``.
    """
    import faiss  # noqa: PLC0415

    x = item_embeddings.detach().to("cpu", torch.float32)
    n, d = x.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}] (number of items), got {num_clusters}")
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    km = faiss.Kmeans(d, num_clusters, niter=iters, seed=seed, spherical=spherical, verbose=False,
                      max_points_per_centroid=max(256, (n + num_clusters - 1) // num_clusters))
    km.train(x.contiguous().numpy())
    centroids = torch.from_numpy(km.centroids.copy())  # (C, D)
    return centroids, assign_clusters(x, centroids, spherical=spherical)


def assign_clusters(x: Tensor, centroids: Tensor, *, spherical: bool = True) -> Tensor:
    """(N,) index of the nearest centroid: highest cosine when ``spherical`` else lowest Euclidean distance."""
    if spherical:
        scores = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(centroids, dim=1).T
    else:  # argmin |x - c|^2 = argmax x.c - |c|^2 / 2
        scores = x @ centroids.T - 0.5 * (centroids * centroids).sum(1)
    return scores.argmax(1)


# --------------------------------------------------------------------------------------------------
# 2-3. mixtures and smoothing
# --------------------------------------------------------------------------------------------------
def _unique_pairs(csr: Csr, num_items: int) -> tuple[Tensor, Tensor]:
    """Distinct (row, item) pairs of a CSR, items outside [0, num_items) dropped."""
    b = csr.offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(b), csr.offsets[1:] - csr.offsets[:-1])
    ok = (csr.ids >= 0) & (csr.ids < num_items)
    keys = torch.unique(rows[ok] * num_items + csr.ids[ok])
    return keys // num_items, keys % num_items


def cluster_counts(csr: Csr, assignments: Tensor, num_clusters: int) -> Tensor:
    """(B, C) number of distinct items of each row that fall in each cluster."""
    b = csr.offsets.numel() - 1
    rows, items = _unique_pairs(csr, assignments.numel())
    flat = torch.bincount(rows * num_clusters + assignments[items], minlength=b * num_clusters)
    return flat.view(b, num_clusters)


def cluster_mixtures(history: Csr, assignments: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """MLE mixtures P(c|u) from engaged items.

    Returns:
        ``(P (U, C) float32, rows summing to 1 or all zero; has_history (U,) bool)``.
    """
    counts = cluster_counts(history, assignments, num_clusters).float()
    total = counts.sum(1, keepdim=True)
    has = total.squeeze(1) > 0
    return counts / total.clamp_min(1.0), has


def nearest_users(user_embeddings: Tensor, candidates: Tensor, k: int,
                  index_config: IndexConfig | None = None, queries: Tensor | None = None) -> Tensor:
    """Ids of the k most cosine-similar users among ``candidates`` ((U,) bool mask), self excluded; -1 pads.

    Returns (Q, k) for the users ``queries`` (default: all U users, Q = U).
    """
    u = user_embeddings.shape[0]
    queries = torch.arange(u) if queries is None else queries.long()
    q = queries.numel()
    if k == 0 or not bool(candidates.any()):
        return torch.full((q, k), -1, dtype=torch.long)
    x = torch.nn.functional.normalize(user_embeddings.detach().float(), dim=1)
    ids = torch.nonzero(candidates).squeeze(1)
    index = build_index(x[ids], index_config or IndexConfig(), item_ids=ids)
    self_excl = Csr(torch.arange(q + 1), queries)
    return index.search(x[queries], k, exclude=self_excl).ids


def smooth_mixtures(mixtures: Tensor, neighbors: Tensor, lam: float, has_history: Tensor | None = None) -> Tensor:
    """P~ = (1 - lam) P + lam * mean over valid neighbours (ids >= 0 with a history) of their P.

    A user with no valid neighbour keeps P (the neighbour term is undefined for it).
    """
    if has_history is None:
        has_history = mixtures.sum(1) > 0
    valid = neighbors >= 0
    safe = neighbors.clamp_min(0)
    valid &= has_history[safe]
    w = valid.float()  # (U, k)
    n_valid = w.sum(1, keepdim=True)
    nbr_mean = (mixtures[safe] * w.unsqueeze(2)).sum(1) / n_valid.clamp_min(1.0)  # (U, C)
    out = (1.0 - lam) * mixtures + lam * nbr_mean
    return torch.where(n_valid > 0, out, mixtures)


# --------------------------------------------------------------------------------------------------
# 4. budget
# --------------------------------------------------------------------------------------------------
def largest_remainder(p: Tensor, k: Tensor | int) -> Tensor:
    """Split ``k`` seats over columns in proportion to ``p`` (B, C) (rows need not be normalised).

    Each count is floor(k p_c / sum p) or one more; counts sum to k for rows with positive mass (0
    otherwise). Remainder ties: larger p first, then lower column index. Zero-mass columns get nothing.
    """
    b, c = p.shape
    k = torch.as_tensor(k, dtype=torch.long).expand(b) if not isinstance(k, Tensor) else k.long()
    total = p.sum(1, keepdim=True)
    share = torch.where(total > 0, p / total.clamp_min(1e-30), torch.zeros_like(p)).double()
    quota = share * k.unsqueeze(1).double()  # (B, C)
    base = torch.floor(quota).long()
    rem = torch.where(total.squeeze(1) > 0, k - base.sum(1), torch.zeros_like(k))  # (B,), < C
    frac = quota - base
    # order: positive-mass columns by descending fraction, then descending p, then index (stable)
    key_p = torch.argsort(-share, dim=1, stable=True)
    frac_sorted = torch.gather(frac, 1, key_p)
    order2 = torch.argsort(-frac_sorted, dim=1, stable=True)
    order = torch.gather(key_p, 1, order2)  # columns in seat priority
    pos_sorted = torch.gather(share > 0, 1, order)
    rank = torch.cumsum(pos_sorted.long(), 1) - 1  # rank among positive-mass columns
    seat_sorted = pos_sorted & (rank < rem.unsqueeze(1))
    seats = torch.zeros_like(base)
    seats.scatter_(1, order, seat_sorted.long())
    return base + seats


def allocate_budget(p: Tensor, k: int, capacity: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-cluster budgets from mixtures ``p`` (B, C), capped by ``capacity`` (B, C) with reallocation.

    Clusters whose budget exceeds their capacity are cut to it, and the excess is split (largest
    remainder, in proportion to p) over clusters with p > 0 and room left, until nothing is over.

    Returns:
        ``(counts (B, C) int64, leftover (B,) int64)``: counts.sum(1) + leftover == k for rows with
        mass; leftover > 0 only when every cluster with p > 0 is full (the caller refills it).
    """
    b, _ = p.shape
    counts = largest_remainder(p, k)
    leftover = torch.zeros(b, dtype=torch.long)
    if capacity is None:
        return counts, leftover
    capacity = capacity.long()
    for _ in range(p.shape[1] + 1):
        excess = (counts - capacity).clamp_min(0).sum(1)  # (B,)
        counts = torch.minimum(counts, capacity)
        if not bool((excess > 0).any()):
            break
        room = (capacity - counts) > 0
        open_p = torch.where(room & (p > 0), p, torch.zeros_like(p))
        stuck = (excess > 0) & (open_p.sum(1) == 0)
        leftover += torch.where(stuck, excess, torch.zeros_like(excess))
        counts = counts + largest_remainder(open_p, torch.where(stuck, torch.zeros_like(excess), excess))
    return counts, leftover


# --------------------------------------------------------------------------------------------------
# 6. merge
# --------------------------------------------------------------------------------------------------
def _first_occurrence(ids: Tensor) -> Tensor:
    """(B, M) bool: True where ids[b, j] >= 0 and is not a repeat of an earlier ids[b, j' < j]."""
    order = torch.argsort(ids, dim=1, stable=True)
    s = torch.gather(ids, 1, order)
    dup_sorted = torch.zeros_like(s, dtype=torch.bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    first = torch.zeros_like(dup_sorted)
    first.scatter_(1, order, ~dup_sorted)
    return first & (ids >= 0)


def merge_candidates(ids: Tensor, scores: Tensor, k: int, refill_ids: Tensor | None = None,
                     refill_scores: Tensor | None = None) -> SearchResult:
    """Merge per-cluster candidates (B, M) into K per row: deduplicate, then refill from a ranking.

    The K selected items are the distinct candidates (a repeated id keeps its best score) followed,
    while short of K, by refill items (in refill order) not already selected; the output is sorted by
    score, padded with -1 / -inf when even the refill runs out.
    """
    b = ids.shape[0]
    scores = torch.where(ids >= 0, scores.float(), torch.full_like(scores.float(), float("-inf")))
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    ids, scores = torch.gather(ids, 1, by_score), torch.gather(scores, 1, by_score)
    if refill_ids is not None:
        assert refill_scores is not None
        ids = torch.cat([ids, refill_ids], 1)
        scores = torch.cat([scores, refill_scores.float()], 1)
    keep = _first_occurrence(ids)
    pos = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]  # first k kept, priority order
    ids, scores, keep = (torch.gather(t, 1, pos) for t in (ids, scores, keep))
    ids = torch.where(keep, ids, torch.full_like(ids, -1))
    scores = torch.where(keep, scores, torch.full_like(scores, float("-inf")))
    resort = torch.argsort(scores, dim=1, descending=True, stable=True)
    ids, scores = torch.gather(ids, 1, resort), torch.gather(scores, 1, resort)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = torch.cat([ids, torch.full((b, pad), -1, dtype=torch.long)], 1)
        scores = torch.cat([scores, torch.full((b, pad), float("-inf"))], 1)
    return SearchResult(scores, ids)


# --------------------------------------------------------------------------------------------------
# the retriever
# --------------------------------------------------------------------------------------------------
@dataclass
class KnnEmbedResult:
    """Candidates and how the budget was spent."""

    scores: Tensor  # (B, K) float32, best first; -inf pads
    ids: Tensor  # (B, K) int64 global item ids; -1 pads
    budgets: Tensor  # (B, C) per-cluster budget after capacity reallocation (0 rows for fallback users)
    fallback: Tensor  # (B,) bool: served by the no-history fallback


class KnnEmbed:
    """kNN-Embed retriever over fixed item embeddings and cluster assignments.

    Args:
        item_embeddings: (N, D).
        assignments: (N,) cluster of each item in [0, C).
        num_clusters: C.
        config: kNN-Embed options (smoothing, neighbours, fallback).
        index_config: index kind/options used for every per-cluster index, the global index and the
            neighbour search.
        item_popularity: (N,) training engagement counts (needed for ``no_history: popularity``).

    Example::

        knn = KnnEmbed.fit(item_emb, KnnEmbedConfig(num_clusters=16), IndexConfig(kind="exact"))
        knn.fit_users(user_emb, train_history)          # P~(c|u) for every user
        res = knn.retrieve_users(users, k=100, exclude=train_history.select(users))
    """

    def __init__(self, item_embeddings: Tensor, assignments: Tensor, num_clusters: int, config: KnnEmbedConfig,
                 index_config: IndexConfig | None = None, item_popularity: Tensor | None = None) -> None:
        self.config = config
        self.index_config = index_config or IndexConfig()
        self.item_embeddings = item_embeddings.detach().to("cpu", torch.float32)
        n = self.item_embeddings.shape[0]
        self.assignments = assignments.long().cpu()
        if self.assignments.numel() != n:
            raise ValueError(f"{self.assignments.numel()} assignments for {n} items")
        if n and (int(self.assignments.min()) < 0 or int(self.assignments.max()) >= num_clusters):
            raise ValueError(f"assignments must be in [0, {num_clusters})")
        self.num_clusters = num_clusters
        self.cluster_sizes = torch.bincount(self.assignments, minlength=num_clusters)
        self.item_popularity = None if item_popularity is None else item_popularity.float().cpu()
        if config.no_history == "popularity" and self.item_popularity is None:
            raise ValueError("knn_embed.no_history='popularity' needs item_popularity")
        self.global_index = build_index(self.item_embeddings, self.index_config)
        self.cluster_index: list[ItemIndex | None] = []
        for c in range(num_clusters):
            members = torch.nonzero(self.assignments == c).squeeze(1)
            self.cluster_index.append(
                build_index(self.item_embeddings[members], self.index_config, item_ids=members) if members.numel() else None
            )
        self.mixtures: Tensor | None = None  # (U, C) P~ after fit_users
        self.has_history: Tensor | None = None
        self._fitted = torch.zeros(0, dtype=torch.bool)

    @classmethod
    def fit(cls, item_embeddings: Tensor, config: KnnEmbedConfig, index_config: IndexConfig | None = None,
            item_popularity: Tensor | None = None) -> KnnEmbed:
        """Cluster the items with k-means (FAISS), then build the per-cluster indexes."""
        _, assign = kmeans_items(item_embeddings, config.num_clusters, iters=config.kmeans_iters,
                                 spherical=config.spherical, seed=config.seed)
        return cls(item_embeddings, assign, config.num_clusters, config, index_config, item_popularity)

    # -- users ---------------------------------------------------------------------------------
    def fit_users(self, user_embeddings: Tensor, history: Csr, users: Tensor | None = None) -> Tensor:
        """Compute and store P~(c|u) from every user's history (CSR with U rows).

        Neighbours come from all users with a history; with ``users`` given, the smoothing (the
        neighbour search) is done for those users only, and only they can be passed to
        :meth:`retrieve_users`. Returns the (U, C) mixtures (rows of other users: unsmoothed MLE).
        """
        p, has = cluster_mixtures(history, self.assignments, self.num_clusters)
        n_users = p.shape[0]
        users = torch.arange(n_users) if users is None else users.long()
        lam, k = self.config.smoothing_lambda, self.config.num_neighbors
        fallback_nbrs = self.config.no_history == "neighbors" and k > 0
        mixtures, has_out = p.clone(), has.clone()
        if (lam > 0 and k > 0) or fallback_nbrs:
            nbrs = nearest_users(user_embeddings, has, k, self.index_config, queries=users)  # (Q, k)
            p_u, has_u = p[users], has[users]
            # neighbour mean = smoothing with lambda 1, written on the query rows
            valid = (nbrs >= 0) & has[nbrs.clamp_min(0)]
            w = valid.float()
            nbr_mean = (p[nbrs.clamp_min(0)] * w.unsqueeze(2)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
            smoothed = torch.where(w.sum(1, keepdim=True) > 0, (1 - lam) * p_u + lam * nbr_mean, p_u)
            if fallback_nbrs:
                smoothed = torch.where(has_u.unsqueeze(1), smoothed, nbr_mean)
                has_out[users] = smoothed.sum(1) > 0
            mixtures[users] = smoothed
        self.mixtures, self.has_history = mixtures, has_out
        self._fitted = torch.zeros(n_users, dtype=torch.bool)
        self._fitted[users] = True
        return mixtures

    def retrieve_users(self, users: Tensor, queries: Tensor, k: int, exclude: Exclude = None) -> KnnEmbedResult:
        """:meth:`retrieve` with the stored P~ of ``users`` (call :meth:`fit_users` first)."""
        if self.mixtures is None or self.has_history is None:
            raise RuntimeError("call fit_users() before retrieve_users()")
        if not bool(self._fitted[users].all()):
            raise ValueError("some users were not passed to fit_users(users=...): their mixtures are not smoothed")
        return self.retrieve(queries, self.mixtures[users], k, exclude, self.has_history[users])

    # -- retrieval -----------------------------------------------------------------------------
    def retrieve(self, queries: Tensor, mixtures: Tensor, k: int, exclude: Exclude = None,
                 has_history: Tensor | None = None, show_progress: bool = False) -> KnnEmbedResult:
        """K candidates per query (B, D) from mixtures (B, C); rows without mass use the fallback.

        Users are processed in chunks of ``config.user_batch_size`` (memory is O(chunk * C * K)).
        """
        b = queries.shape[0]
        queries = queries.detach().to("cpu", torch.float32)
        excl = exclude_to_csr(exclude, b)
        if has_history is None:
            has_history = mixtures.sum(1) > 0
        step = self.config.user_batch_size
        if b <= step:
            return self._retrieve_chunk(queries, mixtures, k, excl, has_history, show_progress)
        parts = []
        for s in tqdm(range(0, b, step), desc="kNN-Embed users", disable=not show_progress, leave=False):
            rows = torch.arange(s, min(s + step, b))
            parts.append(self._retrieve_chunk(queries[rows], mixtures[rows], k, _select_csr(excl, rows),
                                              has_history[rows], False))
        return KnnEmbedResult(*(torch.cat([getattr(r, f) for r in parts]) for f in ("scores", "ids", "budgets", "fallback")))

    def _retrieve_chunk(self, queries: Tensor, mixtures: Tensor, k: int, excl: Csr, has_history: Tensor,
                        show_progress: bool) -> KnnEmbedResult:
        b = queries.shape[0]
        has_history = has_history & (mixtures.sum(1) > 0)
        capacity = self.cluster_sizes.unsqueeze(0) - cluster_counts(excl, self.assignments, self.num_clusters)
        budgets, _ = allocate_budget(mixtures * has_history.unsqueeze(1), k, capacity)  # (B, C)
        # A row's budgets sum to at most k, so its candidates fit in k slots: cluster c's go to
        # [start[b, c], start[b, c] + budgets[b, c]) (cluster-major, as the merge's tie order expects).
        start = torch.cumsum(budgets, 1) - budgets  # (B, C)
        cand_ids = torch.full((b, k), -1, dtype=torch.long)
        cand_scores = torch.full((b, k), float("-inf"))
        clusters = [c for c in range(self.num_clusters) if bool((budgets[:, c] > 0).any())]
        for c in tqdm(clusters, desc="kNN-Embed clusters", disable=not show_progress, leave=False):
            rows = torch.nonzero(budgets[:, c] > 0).squeeze(1)
            index = self.cluster_index[c]
            assert index is not None  # budget > 0 implies capacity > 0 implies members
            kc = int(budgets[rows, c].max())
            res = index.search(queries[rows], kc, exclude=_select_csr(excl, rows))
            slot = torch.arange(kc).unsqueeze(0)  # (1, kc)
            within = slot < budgets[rows, c].unsqueeze(1)  # (R, kc)
            r, pos = rows.unsqueeze(1).expand(-1, kc)[within], (start[rows, c].unsqueeze(1) + slot)[within]
            cand_ids[r, pos] = res.ids[within]
            cand_scores[r, pos] = res.scores[within].float()
        n_found = (cand_ids >= 0).sum(1)
        out = merge_candidates(cand_ids, cand_scores, k)
        # refill rows that are short of k (and serve the fallback rows) from the whole catalogue
        short = (n_found < k) & has_history
        fallback = ~has_history
        if bool(short.any()):
            rows = torch.nonzero(short).squeeze(1)
            glob = self.global_index.search(queries[rows], k, exclude=_select_csr(excl, rows))
            merged = merge_candidates(cand_ids[rows], cand_scores[rows], k, glob.ids, glob.scores)
            out.ids[rows], out.scores[rows] = merged.ids, merged.scores
        if bool(fallback.any()):
            rows = torch.nonzero(fallback).squeeze(1)
            fb = self._fallback(queries[rows], k, _select_csr(excl, rows))
            out.ids[rows], out.scores[rows] = fb.ids, fb.scores
        return KnnEmbedResult(out.scores, out.ids, budgets, fallback)

    def _fallback(self, queries: Tensor, k: int, exclude: Csr) -> SearchResult:
        if self.config.no_history == "popularity":
            assert self.item_popularity is not None
            b = queries.shape[0]
            pop = self.item_popularity.unsqueeze(0).repeat(b, 1)  # (b, N)
            rows, items = _unique_pairs(exclude, pop.shape[1])
            pop[rows, items] = float("-inf")
            top_s, top_i = torch.topk(pop, min(k, pop.shape[1]), dim=1)
            scores = (queries @ self.item_embeddings.T).gather(1, top_i)
            ids = torch.where(torch.isneginf(top_s), torch.full_like(top_i, -1), top_i)
            return merge_candidates(ids, torch.where(ids >= 0, scores, torch.full_like(scores, float("-inf"))), k)
        return self.global_index.search(queries, k, exclude=exclude)


def _select_csr(csr: Csr, rows: Tensor) -> Csr:
    starts, ends = csr.offsets[rows], csr.offsets[rows + 1]
    lengths = ends - starts
    offsets = torch.zeros(rows.numel() + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    r = torch.repeat_interleave(torch.arange(rows.numel()), lengths)
    pos = torch.arange(int(offsets[-1])) - offsets[r] + starts[r]
    return Csr(offsets, csr.ids[pos])
