"""Logistic regression baseline: one learned weight per id plus a linear term on dense features.

``logit = b + dense @ w + sum_f w_f[id_f]`` (for multi-id bags, the sum over the bag's ids).

The per-id weights live in their own tables built from the base table configs (same feature names
and ``num_embeddings``), so the model needs no embedding technique. Each table has width
``first_order_dim`` (default 4) and an id's weight is the MEAN of its row: FBGEMM's sharded table
kernels require dims that are multiples of 4, and with the zero init used here all columns receive
identical gradients and stay equal, so the model is exactly one weight per id (with Adam/Adagrad
the updates also match a width-1 table; plain SGD sees a 1/width learning rate on these weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.models.common import CTRModel, Device, LinearTerm, shared_dim
from recsys_emb.modules.contract import output_feature_dims

FIRST_ORDER_SUFFIX = "_first_order"


def first_order_tables(tables: Sequence[EmbeddingBagConfig], dim: int = 4) -> list[EmbeddingBagConfig]:
    """Zero-initialised per-id weight tables mirroring ``tables`` (name + ``"_first_order"``, width ``dim``).

    Args:
        tables: base table configs (their feature names and ``num_embeddings`` are kept).
        dim: table width; the weight of an id is the mean of its row.
    """
    if dim < 1:
        raise ValueError(f"first-order table dim must be >= 1, got {dim}")
    if not tables:
        raise ValueError("first_order_tables needs at least one table config")
    return [
        dataclasses.replace(
            table,
            name=f"{table.name}{FIRST_ORDER_SUFFIX}",
            embedding_dim=dim,
            feature_names=list(table.feature_names) or [table.name],
            weight_init_min=0.0,  # zero init, honoured by both the unsharded EBC and sharded TBE kernels
            weight_init_max=0.0,
            init_fn=None,  # recomputed in __post_init__ from weight_init_min/max
        )
        for table in tables
    ]


def first_order_logit(pooled: Tensor, batch: int, num_features: int, width: int) -> Tensor:
    """Sum over features of each feature's pooled weight (mean over the table's ``width`` columns).

    Args:
        pooled: (B, F * width) values of the first-order tables' KeyedTensor.
        batch: B.
        num_features: F.
        width: the tables' common width.

    Returns:
        (B,) first-order term.
    """
    return pooled.reshape(batch, num_features, width).mean(dim=2).sum(dim=1)  # (B,)


def first_order_layout(module: nn.Module, what: str) -> tuple[int, int]:
    """Return (F, width) of a per-id weight module, checking that all its outputs share one width.

    Args:
        module: EBC-compatible module like ``EmbeddingBagCollection(first_order_tables(tables))``.
        what: description for the error message.
    """
    dims = output_feature_dims(module)
    return len(dims), shared_dim(dims, what)


class LogisticRegression(CTRModel):
    """Logistic regression on sparse ids and dense features.

    Args:
        embedding: per-id weight module (EBC-compatible, all outputs of one width), stored as
            ``self.embedding`` so DistributedModelParallel shards it like any model's tables.
            Build one from base table configs with :meth:`from_tables`.
        num_dense_features: D_dense (may be 0).
        device: device of the dense parameters.

    Example::

        tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=16, name="t_a", feature_names=["a"])]
        model = LogisticRegression.from_tables(tables, num_dense_features=3)
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 7]), torch.tensor([1, 1]))
        logits = model(torch.randn(2, 3), kjt)  # (2,)
    """

    def __init__(self, embedding: nn.Module, num_dense_features: int, device: Device = None) -> None:
        super().__init__()
        if num_dense_features < 0:
            raise ValueError(f"num_dense_features must be >= 0, got {num_dense_features}")
        self.num_features, self.width = first_order_layout(embedding, "LogisticRegression's per-id weight tables")
        self.embedding = embedding
        self.dense_linear = LinearTerm(num_dense_features, device=device)  # holds the global bias too

    @classmethod
    def from_tables(
        cls,
        tables: Sequence[EmbeddingBagConfig],
        num_dense_features: int,
        first_order_dim: int = 4,
        device: Device = None,
    ) -> LogisticRegression:
        """Build the model with fresh per-id weight tables mirroring ``tables``.

        Args:
            tables: base table configs (feature names, ``num_embeddings``); their dims are ignored.
            num_dense_features: D_dense.
            first_order_dim: width of each weight table (see module docstring).
            device: device of all parameters (``"meta"`` allowed).
        """
        ebc = EmbeddingBagCollection(first_order_tables(tables, first_order_dim), device=device)
        return cls(ebc, num_dense_features, device=device)

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Args:
        dense_features: (B, D_dense) float.
        sparse_features: KJT with the tables' features.

        Returns:
            (B,) logits.
        """
        batch = dense_features.shape[0]
        pooled = self.embedding(sparse_features).values()  # (B, F * width)
        sparse_term = first_order_logit(pooled, batch, self.num_features, self.width)  # (B,)
        return self.dense_linear(dense_features) + sparse_term  # (B,)
