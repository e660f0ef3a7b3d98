"""DLRM: bottom MLP, pairwise dot-product interaction, top MLP.

Paper: M. Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation
Systems", arXiv:1906.00091, 2019.

Deviations from the reference implementation (facebookresearch/dlrm):
- returns a logit (no final sigmoid); the loss applies BCE-with-logits;
- Linear layers use PyTorch's default init instead of the reference's normal(0, sqrt(2/(m+n)));
- embedding tables use TorchRec's default init, uniform(+-sqrt(1/num_embeddings)), which is the
  reference's init as well;
- only the "dot" interaction without self-interaction (the reference default) is implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.model import DLRMConfig
from recsys_emb.models.common import CTRModel, DenseArch, Device, MLP, shared_dim
from recsys_emb.modules.contract import output_feature_dims


class DotInteraction(nn.Module):
    """Pairwise dot products of N vectors, strict upper triangle (no self-interaction).

    Pairs are ordered row-major: (0,1), (0,2), ..., (0,N-1), (1,2), ...

    Args:
        num_vectors: N, the number of vectors per example.
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        if num_vectors < 2:
            raise ValueError(f"DotInteraction needs at least 2 vectors, got {num_vectors}")
        self.num_vectors = num_vectors
        self.out_features = num_vectors * (num_vectors - 1) // 2

    def forward(self, vectors: Tensor) -> Tensor:
        """Args:
        vectors: (B, N, D).

        Returns:
            (B, N*(N-1)/2) dot products of every pair i < j.
        """
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, N, N)
        # Indices are built per call (cheap, on device) rather than held in a buffer: DMP zero-fills
        # buffers of meta-built modules.
        rows, cols = torch.triu_indices(self.num_vectors, self.num_vectors, offset=1, device=vectors.device)
        return gram[:, rows, cols]  # (B, N*(N-1)/2)


class OverArch(nn.Module):
    """Top MLP ending in an un-activated Linear -> 1 logit.

    Args:
        in_features: input width.
        layer_sizes: hidden sizes (activated).
        activation: activation name.
        dropout: dropout after each hidden activation.
        batch_norm: BatchNorm1d in hidden layers.
        device: parameter device.
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        device: Device = None,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, layer_sizes, activation, dropout, batch_norm, device)
        self.head = nn.Linear(self.mlp.out_features, 1, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
        x: (B, in_features).

        Returns:
            (B,) logits.
        """
        return self.head(self.mlp(x)).squeeze(-1)  # (B,)


class DLRM(CTRModel):
    """DLRM over any EBC-compatible embedding module whose features all share one dim D.

    ``dense_out = DenseArch(dense)`` (B, D); ``T = [dense_out, e_1, ..., e_F]`` (B, F+1, D);
    ``logit = OverArch(concat(dense_out, <T_i, T_j> for i < j))``.

    Shapes: B batch, F sparse features, D shared embedding dim, D_dense dense features.

    Args:
        embedding: EBC-compatible module (``m(kjt) -> KeyedTensor``), stored as ``self.embedding``.
        num_dense_features: D_dense (must be >= 1).
        config: DLRM settings; the bottom MLP gets a last layer of width D appended.
        device: device of the dense parameters (``"meta"`` allowed).

    Example::

        tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name="t_a", feature_names=["a"])]
        model = DLRM(EmbeddingBagCollection(tables), num_dense_features=3, config=DLRMConfig())
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 7]), torch.tensor([1, 1]))
        #        example 0   example 1
        #  "a"    [1]         [7]
        logits = model(torch.randn(2, 3), kjt)  # (2,)
    """

    def __init__(
        self,
        embedding: nn.Module,
        num_dense_features: int,
        config: DLRMConfig,
        device: Device = None,
    ) -> None:
        super().__init__()
        if num_dense_features < 1:
            raise ValueError(f"DLRM needs at least one dense feature for its bottom MLP, got {num_dense_features}")
        dims = output_feature_dims(embedding)
        dim = shared_dim(dims, "DLRM")
        self.embedding = embedding
        self.num_features = len(dims)
        self.embedding_dim = dim
        self.dense_arch = DenseArch(
            num_dense_features,
            [*config.dense_arch_layer_sizes, dim],
            config.activation,
            config.dropout,
            config.batch_norm,
            device,
        )
        self.interaction = DotInteraction(self.num_features + 1)
        self.over_arch = OverArch(
            dim + self.interaction.out_features,
            config.over_arch_layer_sizes,
            config.activation,
            config.dropout,
            config.batch_norm,
            device,
        )

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Args:
        dense_features: (B, D_dense) float.
        sparse_features: KJT with the embedding module's features.

        Returns:
            (B,) logits.
        """
        batch = dense_features.shape[0]
        dense_out = self.dense_arch(dense_features)  # (B, D)
        pooled = self.embedding(sparse_features).values()  # (B, F*D)
        sparse = pooled.reshape(batch, self.num_features, self.embedding_dim)  # (B, F, D)
        stacked = torch.cat([dense_out.unsqueeze(1), sparse], dim=1)  # (B, F+1, D)
        pairs = self.interaction(stacked)  # (B, (F+1)F/2)
        return self.over_arch(torch.cat([dense_out, pairs], dim=1))  # (B,)
