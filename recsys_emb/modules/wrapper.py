"""The generic technique wrapper: a parameter-free pre-lookup transform in front of a stock EBC.

Techniques that change WHICH rows are looked up (hashing many features into one shared table,
mapping item ids to semantic-ID pieces) are a ``KJT -> KJT`` transform followed by a stock
``torchrec.EmbeddingBagCollection``. :class:`TransformedEmbeddingBagCollection` is that pair as one
module type, so that:

* unsharded, it is simply ``ebc(transform(features))``;
* sharded, ``recsys_emb.distributed.wrapper.TransformedEmbeddingBagCollectionSharder`` runs the
  transform BEFORE the input all-to-all (row-wise sharding buckets ids by their transformed value)
  and delegates everything else to TorchRec's own sharded EBC: planner, FBGEMM kernels, fused
  optimizers and checkpoint keys are the stock ones.

The transform must have no trainable parameters (it runs on each rank's local input, outside the
sharded lookup and outside DDP). Buffers are fine (hash salts, code tables) and are saved with the
model. Its output keys are the EBC's feature names; a technique module that needs per-original-
feature outputs (e.g. concatenating probes) regroups the ``KeyedTensor`` afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class TransformedEmbeddingBagCollection(nn.Module):
    """``EmbeddingBagCollection(tables)`` applied to ``transform(features)``.

    Args:
        transform: a ``KJT -> KJT`` module without trainable parameters whose output keys are the
            feature names of ``tables`` (in any order).
        tables: stock table configs of the lookup.
        is_weighted: whether the transformed KJT carries per-id weights.
        device: where to build the tables (``meta`` for DistributedModelParallel).

    Raises:
        ValueError: when the transform has trainable parameters.
    """

    def __init__(
        self,
        transform: nn.Module,
        tables: Sequence[EmbeddingBagConfig],
        *,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        trainable = [name for name, p in transform.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"{type(transform).__name__} has trainable parameters {trainable[:3]}: a pre-lookup transform runs "
                "before the sharded input all-to-all and must be parameter-free (use buffers, or put learnable "
                "parts after the lookup)"
            )
        self.transform = transform
        self.ebc = EmbeddingBagCollection(
            tables=list(tables), is_weighted=is_weighted, device=torch.device(device) if device is not None else None
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(self.transform(features))

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.ebc.embedding_bag_configs()

    def is_weighted(self) -> bool:
        return self.ebc.is_weighted()
