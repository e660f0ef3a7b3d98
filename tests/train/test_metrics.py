"""AUC and logloss against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_emb.train.metrics import CTRMetrics, log_loss, roc_auc


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie) over all positive/negative pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    scores = rng.integers(0, 7, size=n).astype(np.float64)  # many ties
    labels = rng.integers(0, 2, size=n)
    labels[0], labels[1] = 0, 1
    expected = brute_force_auc(scores, labels)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected, abs=1e-12)


def test_auc_extremes_and_single_class() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.zeros(4), labels) == 0.5
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_logloss_matches_formula() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100)
    labels = rng.integers(0, 2, size=100)
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert log_loss(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(expected, rel=1e-9)


def test_accumulator_equals_one_shot() -> None:
    rng = np.random.default_rng(1)
    logits, labels = torch.tensor(rng.normal(size=50)), torch.tensor(rng.integers(0, 2, size=50))
    acc = CTRMetrics()
    for lo in range(0, 50, 7):
        acc.update(logits[lo : lo + 7], labels[lo : lo + 7])
    out = acc.compute()
    assert out["rows"] == 50
    assert out["auc"] == pytest.approx(roc_auc(logits, labels))
    assert out["logloss"] == pytest.approx(log_loss(logits, labels), rel=1e-6)
