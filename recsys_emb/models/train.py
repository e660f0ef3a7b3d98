"""CTRTrain: wraps a CTR model into ``Batch -> (loss, (loss, logits, labels))`` for training loops.

The loss is ``BCE-with-logits(logits, labels)`` (mean over the batch) plus the model's auxiliary loss:
``model.aux_loss()`` when the model defines it (every ``CTRModel`` does, summing the ``aux_loss()`` of
its embedding modules), else ``model.embedding.aux_loss()`` when the embedding module defines it.
``aux_loss()`` returns a scalar tensor, or None for "no auxiliary loss"; techniques use it for
regularisers (e.g. sparsity penalties on a dimension search). It is evaluated once per forward, after
the model's forward, so a technique may compute it from state its forward just stored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.datasets.utils import Batch


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """Return the model's auxiliary loss (see module docstring), or None when it has none.

    Args:
        model: a CTR model (``forward(dense, kjt) -> logits``).
    """
    fn = getattr(model, "aux_loss", None)
    if callable(fn):
        return fn()
    embedding = getattr(model, "embedding", None)
    fn = getattr(embedding, "aux_loss", None) if embedding is not None else None
    if callable(fn):
        return fn()
    return None


class CTRTrain(nn.Module):
    """Training wrapper: ``forward(batch) -> (loss, (loss.detach(), logits.detach(), labels.detach()))``.

    Same output convention as ``torchrec.models.dlrm.DLRMTrain``, so TorchRec train pipelines accept it.
    Wrap THIS module in DistributedModelParallel; the model is at ``self.model``.

    Args:
        model: a CTR model mapping ``(dense_features (B, D_dense), KJT)`` to logits (B,).

    Example::

        train = CTRTrain(build_model(ModelConfig(), None, tables, num_dense_features=13))
        loss, (loss_detached, logits, labels) = train(batch)
        loss.backward()
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Args:
        batch: ``Batch(dense_features (B, D_dense), sparse_features KJT, labels (B,) in {0, 1})``.

        Returns:
            ``(loss, (loss.detach(), logits.detach(), labels.detach()))``: loss is the scalar total
            (BCE mean + auxiliary loss); logits and labels are (B,).
        """
        logits = self.model(batch.dense_features, batch.sparse_features)  # (B,)
        labels = batch.labels.to(logits.dtype)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, labels)  # ()
        aux = auxiliary_loss(self.model)
        if aux is not None:
            loss = loss + aux  # ()
        return loss, (loss.detach(), logits.detach(), labels.detach())
