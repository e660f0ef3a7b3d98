"""Ranking metrics: GAUC and RelaImpr for behaviour-sequence models (Zhou et al., KDD 2018, Sec. 5.3), and
top-K recall/NDCG for graph CF and retrieval (one implementation for both).

* recall@K = hits in the top K / held-out items of the user; NDCG@K = DCG / IDCG with binary relevance,
  ``DCG = sum_{r<K} hit_r / log2(r + 2)`` and IDCG the DCG of ``min(held-out, K)`` hits at the top.
  :func:`full_ranking_metrics` averages them over users after ranking ALL items (the protocol of
  NGCF / LightGCN: a user's training items, and validation items when scoring test, are excluded).
* GAUC = sum_u w_u AUC_u / sum_u w_u, where AUC_u is the AUC over user ``u``'s rows and the weight
  ``w_u`` is the user's number of impressions (rows). Users whose rows are all positive or all
  negative have no AUC and are skipped (in both sums).
* RelaImpr = (AUC(model) - 0.5) / (AUC(base) - 0.5) - 1, reported in percent.

The global AUC/logloss come from :mod:`recsys_emb.train.metrics` (exact, ties averaged).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from recsys_emb.train.metrics import log_loss, roc_auc

if TYPE_CHECKING:
    from recsys_emb.data.graphs import GraphSplit


def group_auc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, groups: torch.Tensor | np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUCs (ties get average ranks), skipping single-class groups.

    Args:
        scores: (N,) real scores (only their order within a group matters).
        labels: (N,) binary labels.
        groups: (N,) integer group (user) ids.

    Returns:
        ``(gauc, number of groups counted)``; ``(nan, 0)`` when no group has both classes.
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).ravel()
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64).ravel()
    g = np.asarray(groups.detach().cpu() if isinstance(groups, torch.Tensor) else groups).ravel()
    if s.size == 0:
        return math.nan, 0
    order = np.lexsort((s, g))  # by group, then score
    s, y, g = s[order], y[order], g[order]
    n = s.size
    # tie blocks: consecutive rows with the same (group, score) share the average 1-based rank in their group
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new_block) - 1
    block_start = np.flatnonzero(new_block)
    block_end = np.append(block_start[1:], n)  # exclusive
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_idx = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    avg_rank = (block_start + block_end + 1) / 2.0 - group_start[group_idx[block_start]]  # per block, rank in group
    ranks = avg_rank[block]  # (N,)
    num_groups = len(group_start)
    pos = np.bincount(group_idx, weights=y, minlength=num_groups)
    cnt = np.bincount(group_idx, minlength=num_groups).astype(np.float64)
    neg = cnt - pos
    rank_sum = np.bincount(group_idx, weights=ranks * y, minlength=num_groups)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return math.nan, 0
    auc = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    weight = cnt[valid]
    return float((auc * weight).sum() / weight.sum()), int(valid.sum())


def recall_ndcg(hits: torch.Tensor, n_test: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Per-row ``recall@k`` and ``ndcg@k`` for every ``k`` in ``ks`` (cut at the ``K`` ranked columns).

    Args:
        hits: (R, K) 1.0 where the item ranked at column ``r`` is held out for that row (floating dtype).
        n_test: (R,) held-out items per row; rows with none get 0 (callers skip them when averaging).
    """
    discounts = 1.0 / torch.log2(torch.arange(2, hits.shape[1] + 2, dtype=hits.dtype))  # (K,)
    idcg = torch.cumsum(discounts, 0)  # idcg[n - 1] = DCG of n hits at the top
    n_test = n_test.to(hits.dtype)
    out = {}
    for k in ks:
        h = hits[:, :k]
        kk = h.shape[1]
        out[f"recall@{k}"] = h.sum(1) / n_test.clamp_min(1.0)
        out[f"ndcg@{k}"] = (h * discounts[:kk]).sum(1) / idcg[(n_test.clamp(min=1, max=kk) - 1).long()]
    return out


def _rows(split: GraphSplit, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, item) of every interaction of ``users`` in ``split`` (items sorted per row)."""
    starts, lens = split.indptr[users], np.diff(split.indptr)[users]
    total = int(lens.sum())
    row = np.repeat(np.arange(len(users)), lens)
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    return row, split.indices[pos]


@torch.no_grad()
def full_ranking_metrics(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    test: GraphSplit,
    exclude: list[GraphSplit],
    ks: list[int] | tuple[int, ...] = (10, 20, 50),
    chunk: int = 1024,
    max_users: int | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Recall@K / NDCG@K over all items not excluded, averaged over the users with held-out items.

    For every user with at least one item in ``test``: score all items (``user_emb @ item_emb.T``),
    remove the user's items of every ``exclude`` split (they can never be hits, even when also held
    out), take the top ``max(ks)`` and score them with :func:`recall_ndcg`. Users without held-out
    items are skipped and counted.

    Args:
        user_emb: (U, D) user embeddings.
        item_emb: (I, D) item embeddings.
        test: the held-out interactions (CSR over the same U users).
        exclude: splits whose items are removed from each user's ranking (training items, ...).
        ks: cut-offs (a K above I ranks all items).
        chunk: users scored at once (memory ~ chunk x I floats).
        max_users: only the first N users with held-out items (quick runs).
        progress: a tqdm bar over the chunks.
        rank, world_size: score only every ``world_size``-th eligible user from ``rank`` on, and sum over
            the ranks (a collective when ``world_size > 1``: every rank must call it; all get the same result).

    Returns:
        ``recall@K``, ``ndcg@K`` for every K, ``users_evaluated``, ``users_skipped_no_test``.
    """
    from recsys_emb.console import tqdm

    num_items = item_emb.shape[0]
    test_len = np.diff(test.indptr)
    eligible = np.flatnonzero(test_len > 0)
    skipped = test.num_users - len(eligible)
    if max_users is not None:
        eligible = eligible[:max_users]
    kmax = min(max(ks), num_items)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    dev = user_emb.device
    items_t = item_emb.t().contiguous()  # (D, I)
    mine = eligible[rank::world_size]
    starts = range(0, len(mine), chunk)
    for start in tqdm(starts, desc="eval", unit="chunk", disable=not progress, leave=False):
        users = mine[start : start + chunk]
        scores = user_emb[torch.from_numpy(users).to(dev)] @ items_t  # (C, I)
        for split in exclude:
            r, c = _rows(split, users)
            scores[torch.from_numpy(r).to(dev), torch.from_numpy(c).to(dev)] = -torch.inf
        top_scores, top = torch.topk(scores, kmax, dim=1)  # (C, kmax)
        top_scores, top = top_scores.cpu(), top.cpu()
        r, c = _rows(test, users)
        test_keys = torch.from_numpy(r * num_items + c)  # sorted: rows ascending, items sorted per row
        query = torch.arange(len(users)).unsqueeze(1) * num_items + top  # (C, kmax)
        found = test_keys[torch.searchsorted(test_keys, query).clamp(max=len(test_keys) - 1)] == query
        hits = (found & (top_scores > -torch.inf)).double()  # (C, kmax); excluded items never hit
        for key, per_user in recall_ndcg(hits, torch.from_numpy(test_len[users]), list(ks)).items():
            sums[key] += float(per_user.sum())
    if world_size > 1:
        total = torch.tensor(list(sums.values()), dtype=torch.float64, device=dev)
        dist.all_reduce(total)
        sums = dict(zip(sums, total.tolist()))
    n = max(len(eligible), 1)
    out: dict[str, float] = {key: value / n for key, value in sums.items()}
    out["users_evaluated"] = len(eligible)
    out["users_skipped_no_test"] = int(skipped)
    return out


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr in percent: ``((auc_model - 0.5) / (auc_base - 0.5) - 1) * 100``."""
    if auc_base == 0.5:
        raise ValueError("RelaImpr is undefined for a base AUC of 0.5")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


class RankingMetrics:
    """Accumulates logits, labels and user ids; :meth:`compute` gives AUC, GAUC and logloss (all ranks)."""

    def __init__(self) -> None:
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> None:
        self._parts.append(
            (logits.detach().float().flatten().cpu(), labels.detach().float().flatten().cpu(), users.detach().long().flatten().cpu())
        )

    def compute(self) -> dict[str, float]:
        """``{"auc", "gauc", "logloss", "rows", "gauc_users"}`` over every rank's rows (collective when distributed)."""
        if self._parts:
            logits, labels, users = (torch.cat(t) for t in zip(*self._parts))
        else:
            logits, labels, users = torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[tuple[torch.Tensor, ...] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (logits, labels, users))
            logits, labels, users = (torch.cat([g[i] for g in gathered if g is not None]) for i in range(3))
        gauc, counted = group_auc(logits, labels, users)
        return {
            "auc": roc_auc(logits, labels),
            "gauc": gauc,
            "logloss": log_loss(logits, labels),
            "rows": int(labels.numel()),
            "gauc_users": counted,
        }
