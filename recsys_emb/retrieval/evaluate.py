"""Retrieval metrics (recall@K, NDCG@K, diversity) and the side-by-side evaluation of retrievers.

Shape glossary: B evaluated users, K retrieved items per user, C clusters, D embedding dim.

Conventions (those of the NGCF/LightGCN evaluation code, so numbers are comparable with papers on the
same splits):

* recall@K = |top-K ∩ test items| / |test items| per user, averaged over users with >= 1 test item;
* NDCG@K = DCG@K / IDCG@K with binary gains, ``1 / log2(rank + 1)``, IDCG over ``min(K, |test|)`` hits;
* training items are excluded from the ranking (the retriever's ``exclude``).

Diversity of the top-K list (``-1`` padding ignored), averaged over users:

* ``clusters@K``: number of distinct item clusters (the kNN-Embed k-means clusters, the same
  clustering for every method);
* ``entropy@K``: Shannon entropy (nats) of the cluster histogram of the list;
* ``ild@K``: intra-list distance, 1 - mean pairwise cosine similarity of the listed items' embeddings
  (computed in O(K D) from the norm of the sum of unit vectors).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from recsys_emb.retrieval.index import Csr, SearchResult
from recsys_emb.train.ranking_metrics import recall_ndcg


def _hits(ids: Tensor, test: Csr) -> Tensor:
    """(B, K) bool: ids[b, j] is one of row b's test items."""
    b, k = ids.shape
    if b == 0:
        return torch.zeros((0, k), dtype=torch.bool)
    width = int(max(int(ids.max()), int(test.ids.max()) if test.ids.numel() else 0)) + 2
    rows = torch.repeat_interleave(torch.arange(b), test.offsets[1:] - test.offsets[:-1])
    keys = rows * width + test.ids
    cand = torch.arange(b).unsqueeze(1) * width + ids
    return torch.isin(cand, keys) & (ids >= 0)


def ranking_metrics(ids: Tensor, test: Csr, ks: list[int]) -> dict[str, float]:
    """Mean recall@k and NDCG@k over rows with at least one test item (``ids`` (B, K) ranked, -1 pads)."""
    n_test = test.offsets[1:] - test.offsets[:-1]  # (B,)
    valid = n_test > 0
    for k in ks:
        if k > ids.shape[1]:
            raise ValueError(f"metric cutoff {k} exceeds the {ids.shape[1]} retrieved items")
    per_row = recall_ndcg(_hits(ids, test).float(), n_test, ks)
    out: dict[str, float] = {}
    for key, values in per_row.items():
        out[key] = float(values[valid].mean()) if bool(valid.any()) else float("nan")
    return out


def diversity_metrics(ids: Tensor, assignments: Tensor, num_clusters: int, item_embeddings: Tensor,
                      ks: list[int]) -> dict[str, float]:
    """Mean distinct clusters, cluster entropy (nats) and intra-list distance of each top-k list."""
    out: dict[str, float] = {}
    b = ids.shape[0]
    if b == 0:
        return out
    unit = torch.nn.functional.normalize(item_embeddings.float(), dim=1)
    for k in ks:
        top = ids[:, :k]
        ok = top >= 0
        safe = top.clamp_min(0)
        cl = assignments[safe]  # (B, k)
        hist = torch.zeros(b, num_clusters)
        hist.scatter_add_(1, cl, ok.float())
        n = hist.sum(1, keepdim=True)
        p = hist / n.clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
        distinct = (hist > 0).sum(1).float()
        v = unit[safe] * ok.unsqueeze(2)  # (B, k, D)
        s = v.sum(1)
        m = n.squeeze(1)
        pair_sim = ((s * s).sum(1) - m) / (m * (m - 1)).clamp_min(1.0)  # mean cosine over ordered pairs
        ild = torch.where(m > 1, 1.0 - pair_sim, torch.zeros_like(pair_sim))
        out[f"clusters@{k}"] = float(distinct.mean())
        out[f"entropy@{k}"] = float(entropy.mean())
        out[f"ild@{k}"] = float(ild.mean())
    return out


@dataclass
class MethodResult:
    """Candidates of one retriever and how long it took."""

    name: str
    ids: Tensor  # (B, K)
    seconds: float  # wall-clock time of the retrieval call (all B queries, batched)

    def timing(self) -> dict[str, float]:
        b = self.ids.shape[0]
        return {
            "seconds": self.seconds,
            "queries_per_second": b / self.seconds if self.seconds > 0 else float("inf"),
            "ms_per_query": 1000.0 * self.seconds / max(b, 1),
        }


def timed(name: str, fn: Callable[[], SearchResult | Tensor]) -> MethodResult:
    """Run a retriever once and keep its ids and wall-clock time."""
    t0 = time.perf_counter()
    res = fn()
    seconds = time.perf_counter() - t0
    ids = res if isinstance(res, Tensor) else res.ids
    return MethodResult(name, ids, seconds)


def summarize(method: MethodResult, test: Csr, assignments: Tensor, num_clusters: int, item_embeddings: Tensor,
              ks: list[int], reference: Tensor | None = None) -> dict[str, float]:
    """All metrics of one method; ``reference`` (B, K) ids of the exact single-vector search add ``overlap@K``."""
    out = {**ranking_metrics(method.ids, test, ks),
           **diversity_metrics(method.ids, assignments, num_clusters, item_embeddings, ks), **method.timing()}
    if reference is not None:
        k = max(ks)
        a, r = method.ids[:, :k], reference[:, :k]
        same = _hits(a, Csr(torch.arange(0, r.numel() + 1, k) if r.numel() else torch.zeros(r.shape[0] + 1, dtype=torch.long),
                            r.reshape(-1)))
        denom = (r >= 0).sum(1).clamp_min(1).float()
        out[f"overlap@{k}"] = float((same.sum(1).float() / denom).mean())  # share of the exact top-K found
    return out


def nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
