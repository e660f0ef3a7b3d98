"""Exact AUC (ties averaged) and logloss on tensors: torch only, shared by training
(:mod:`recsys_emb.train.metrics`) and serving (:mod:`recsys_emb.inference.predictor`)."""

from __future__ import annotations

import math

import torch
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
