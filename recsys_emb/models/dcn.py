"""DCN-v2: cross network of explicit bounded-degree feature crosses plus a deep network.

Paper: R. Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021 (arXiv:2008.13535).

As in the paper, the input x0 concatenates the dense features as they come (the prepared Criteo data
is already log1p-normalised) with all sparse embeddings, so features may have different dims.

Deviations:
- the low-rank option is the paper's mixture-free form W = U V^T (Eq. 3 without experts/gating/
  nonlinearity); DCN-Mix is not implemented;
- cross layers use PyTorch's default Linear init (the paper does not pin one);
- returns a logit (no sigmoid).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.model import DCNv2Config
from recsys_emb.models.common import CTRModel, Device, MLP
from recsys_emb.modules.contract import output_feature_dims


class CrossNet(nn.Module):
    """Stack of DCN-v2 cross layers ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``.

    Args:
        in_features: d, the width of x0.
        num_layers: number of cross layers (0 = identity).
        low_rank_dim: None for full-rank W_l (d x d, held by ``nn.Linear(d, d)``); r for
            ``W_l = U_l V_l^T``: ``down[l] = nn.Linear(d, r, bias=False)`` holds V_l^T and
            ``up[l] = nn.Linear(r, d)`` holds U_l and b_l.
        device: parameter device.
    """

    def __init__(self, in_features: int, num_layers: int, low_rank_dim: int | None = None, device: Device = None) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"CrossNet needs in_features >= 1, got {in_features}")
        self.in_features = in_features
        self.num_layers = num_layers
        self.low_rank_dim = low_rank_dim
        if low_rank_dim is None:
            self.full = nn.ModuleList(nn.Linear(in_features, in_features, device=device) for _ in range(num_layers))
        else:
            self.down = nn.ModuleList(
                nn.Linear(in_features, low_rank_dim, bias=False, device=device) for _ in range(num_layers)
            )
            self.up = nn.ModuleList(nn.Linear(low_rank_dim, in_features, device=device) for _ in range(num_layers))

    def forward(self, x0: Tensor) -> Tensor:
        """Args:
        x0: (B, d).

        Returns:
            (B, d) the output of the last cross layer.
        """
        x = x0
        for layer in range(self.num_layers):
            if self.low_rank_dim is None:
                mixed = self.full[layer](x)  # (B, d)
            else:
                mixed = self.up[layer](self.down[layer](x))  # (B, r) -> (B, d)
            x = x0 * mixed + x  # (B, d)
        return x


class DCNv2(CTRModel):
    """DCN-v2 over any EBC-compatible embedding module (mixed per-feature dims allowed).

    ``x0 = concat(dense, e_1, ..., e_F)`` (B, d) with d = D_dense + sum of the feature dims, then
    "stacked": ``logit = head(deep(cross(x0)))``; "parallel": ``logit = head(concat(cross(x0), deep(x0)))``.

    Args:
        embedding: EBC-compatible module, stored as ``self.embedding``.
        num_dense_features: D_dense (may be 0).
        config: DCN-v2 settings.
        device: device of the dense parameters (``"meta"`` allowed).

    Example::

        tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=8, name="t_a", feature_names=["a"]),
                  EmbeddingBagConfig(num_embeddings=5, embedding_dim=4, name="t_b", feature_names=["b"])]
        model = DCNv2(EmbeddingBagCollection(tables), num_dense_features=3, config=DCNv2Config())
        kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 7, 0, 4]), torch.tensor([1, 1, 1, 1]))
        #        example 0   example 1
        #  "a"    [1]         [7]
        #  "b"    [0]         [4]
        logits = model(torch.randn(2, 3), kjt)  # (2,)
    """

    def __init__(
        self,
        embedding: nn.Module,
        num_dense_features: int,
        config: DCNv2Config,
        device: Device = None,
    ) -> None:
        super().__init__()
        if num_dense_features < 0:
            raise ValueError(f"num_dense_features must be >= 0, got {num_dense_features}")
        dims = output_feature_dims(embedding)
        if not dims:
            raise ValueError("DCNv2 needs at least one sparse feature, the embedding module has none")
        self.embedding = embedding
        self.structure = config.structure
        width = num_dense_features + sum(dim for _, dim in dims)
        self.in_features = width
        self.cross = CrossNet(width, config.num_cross_layers, config.low_rank_dim, device)
        self.deep = MLP(
            width, config.deep_layer_sizes, config.activation, config.dropout, config.batch_norm, device
        )
        head_in = self.deep.out_features if config.structure == "stacked" else width + self.deep.out_features
        self.head = nn.Linear(head_in, 1, device=device)

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Args:
        dense_features: (B, D_dense) float.
        sparse_features: KJT with the embedding module's features.

        Returns:
            (B,) logits.
        """
        pooled = self.embedding(sparse_features).values()  # (B, sum of dims)
        x0 = torch.cat([dense_features, pooled], dim=1)  # (B, d)
        if self.structure == "stacked":
            out = self.deep(self.cross(x0))  # (B, last deep size or d)
        else:
            out = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, d + last deep size)
        return self.head(out).squeeze(-1)  # (B,)
