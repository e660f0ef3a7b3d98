"""DeepFM: a factorization machine and a deep network sharing the field embeddings.

Paper: H. Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
IJCAI 2017 (arXiv:1703.04247).

``logit = b + dense @ w + sum_f w_f[id_f]``  (FM first order)
``      + sum_{i<j} <v_i, v_j>``             (FM second order over the N = F (+1) fields)
``      + head(MLP(concat(v_1, ..., v_N)))`` (deep part)

Deviations, all documented in docs/models.md:
- dense features form ONE extra field ``v_dense = dense @ P`` (``P``: Linear(D_dense -> D), no bias).
  Its interactions with sparse fields are ``sum_j x_j <p_j, v_f>``, exactly the FM's
  dense-by-sparse terms with a factor ``p_j`` per dense feature; the FM's dense-by-dense pairs are
  not modelled separately. Dense features also enter the first-order term linearly.
- per-id first-order weights live in separate tables of width ``first_order_dim`` (default 4, mean
  of the row, zero init; see ``recsys_emb.models.lr``) so that they shard with FBGEMM kernels.
- returns a logit (no sigmoid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.model import DeepFMConfig
from recsys_emb.models.common import CTRModel, Device, LinearTerm, MLP, shared_dim
from recsys_emb.models.lr import first_order_layout, first_order_logit
from recsys_emb.modules.contract import output_feature_dims


class FactorizationMachine(nn.Module):
    """FM second-order term ``sum_{i<j} <v_i, v_j>`` via ``0.5 * sum_d ((sum_i v_id)^2 - sum_i v_id^2)``."""

    def forward(self, fields: Tensor) -> Tensor:
        """Args:
        fields: (B, N, D) field embeddings.

        Returns:
            (B,) sum of the pairwise dot products of distinct fields.
        """
        square_of_sum = fields.sum(dim=1).pow(2)  # (B, D)
        sum_of_squares = fields.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)  # (B,)


class DeepFM(CTRModel):
    """DeepFM over an EBC-compatible embedding module whose features all share one dim D.

    Args:
        embedding: EBC-compatible module of the field embeddings, stored as ``self.embedding``.
        first_order: per-id weight module, stored as ``self.first_order``; build it with
            ``EmbeddingBagCollection(first_order_tables(tables))`` from the BASE table configs (it
            sees the raw KJT, not a technique's transformed ids).
        num_dense_features: D_dense (may be 0: then there is no dense field).
        config: DeepFM settings.
        device: device of the dense parameters (``"meta"`` allowed).

    Example::

        tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name="t_a", feature_names=["a"])]
        model = DeepFM(EmbeddingBagCollection(tables), EmbeddingBagCollection(first_order_tables(tables)),
                       num_dense_features=3, config=DeepFMConfig())
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 7]), torch.tensor([1, 1]))
        logits = model(torch.randn(2, 3), kjt)  # (2,)
    """

    def __init__(
        self,
        embedding: nn.Module,
        first_order: nn.Module,
        num_dense_features: int,
        config: DeepFMConfig,
        device: Device = None,
    ) -> None:
        super().__init__()
        if num_dense_features < 0:
            raise ValueError(f"num_dense_features must be >= 0, got {num_dense_features}")
        dims = output_feature_dims(embedding)
        dim = shared_dim(dims, "DeepFM (its FM second-order term)")
        self.embedding = embedding
        self.first_order = first_order
        self.num_features = len(dims)
        self.embedding_dim = dim
        self.first_order_features, self.first_order_width = first_order_layout(
            first_order, "DeepFM's first-order (per-id weight) tables"
        )
        self.dense_linear = LinearTerm(num_dense_features, device=device)  # first order of dense + global bias
        self.dense_field = (
            nn.Linear(num_dense_features, dim, bias=False, device=device) if num_dense_features > 0 else None
        )
        self.num_fields = self.num_features + (1 if num_dense_features > 0 else 0)
        self.fm = FactorizationMachine()
        self.deep = MLP(
            self.num_fields * dim, config.deep_layer_sizes, config.activation, config.dropout, config.batch_norm, device
        )
        self.deep_head = nn.Linear(self.deep.out_features, 1, device=device)

    def aux_modules(self) -> list[nn.Module | None]:
        """The embedding module and the first-order module (either may define ``aux_loss``)."""
        return [self.embedding, self.first_order]

    def fields(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Field embeddings ``[v_dense, v_1, ..., v_F]`` (B, N, D), the dense field first when present.

        Args:
            dense_features: (B, D_dense).
            sparse_features: KJT with the embedding module's features.
        """
        batch = dense_features.shape[0]
        pooled = self.embedding(sparse_features).values()  # (B, F*D)
        sparse = pooled.reshape(batch, self.num_features, self.embedding_dim)  # (B, F, D)
        if self.dense_field is None:
            return sparse
        dense = self.dense_field(dense_features).unsqueeze(1)  # (B, 1, D)
        return torch.cat([dense, sparse], dim=1)  # (B, F+1, D)

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Args:
        dense_features: (B, D_dense) float.
        sparse_features: KJT with the features of both embedding modules.

        Returns:
            (B,) logits.
        """
        batch = dense_features.shape[0]
        weights = self.first_order(sparse_features).values()  # (B, F1 * width)
        first = self.dense_linear(dense_features) + first_order_logit(
            weights, batch, self.first_order_features, self.first_order_width
        )  # (B,)
        fields = self.fields(dense_features, sparse_features)  # (B, N, D)
        second = self.fm(fields)  # (B,)
        deep = self.deep_head(self.deep(fields.flatten(1))).squeeze(-1)  # (B,)
        return first + second + deep  # (B,)
