"""CTR metrics: exact AUC (ties averaged), logloss, and an accumulator reduced across ranks.

AUC is computed over the WHOLE evaluation set: under data parallelism every rank's scores are
gathered before ranking, so the result is not a mean of per-rank AUCs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, ties given average rank.

    Args:
        scores: (N,) real scores (logits or probabilities; only their order matters).
        labels: (N,) binary labels in {0, 1}.

    Returns:
        The AUC, or NaN when only one class is present.
    """
    scores = scores.detach().double().flatten()
    labels = labels.detach().double().flatten()
    n = scores.numel()
    positives = float(labels.sum())
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return math.nan
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of the last element of each tie group
    average_rank = ends - (counts.double() - 1) / 2  # (groups,)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = average_rank[inverse]  # (N,)
    rank_sum = float((ranks * labels).sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``labels``."""
    if logits.numel() == 0:
        return math.nan
    return float(F.binary_cross_entropy_with_logits(logits.double(), labels.double()))


class CTRMetrics:
    """Accumulates logits and labels of an evaluation pass; :meth:`compute` reduces across ranks."""

    def __init__(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self._logits.append(logits.detach().float().flatten().cpu())
        self._labels.append(labels.detach().float().flatten().cpu())

    def compute(self) -> dict[str, float]:
        """Return ``{"auc", "logloss", "rows"}`` over all ranks' rows (collective when distributed)."""
        logits = torch.cat(self._logits) if self._logits else torch.empty(0)
        labels = torch.cat(self._labels) if self._labels else torch.empty(0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (logits, labels))
            logits = torch.cat([g[0] for g in gathered if g is not None])
            labels = torch.cat([g[1] for g in gathered if g is not None])
        return {"auc": roc_auc(logits, labels), "logloss": log_loss(logits, labels), "rows": int(labels.numel())}
