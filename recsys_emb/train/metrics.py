"""CTR metrics: exact AUC (ties averaged), logloss, and an accumulator reduced across ranks.

AUC is computed over the WHOLE evaluation set: under data parallelism every rank's scores are
gathered before ranking, so the result is not a mean of per-rank AUCs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from recsys_emb.metrics import log_loss, roc_auc  # shared with serving (recsys_emb.inference), which imports no training code

__all__ = ["CTRMetrics", "log_loss", "roc_auc"]


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
