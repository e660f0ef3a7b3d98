"""Shared helpers for the model tests: small table configs, KJT builders, a stub embedding module."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

FEATURES = ["f0", "f1", "f2"]
VOCAB = [11, 7, 5]


def small_tables(dims: Sequence[int] = (8, 8, 8), vocab: Sequence[int] = VOCAB) -> list[EmbeddingBagConfig]:
    """One table per feature of FEATURES with the given dims."""
    return [
        EmbeddingBagConfig(num_embeddings=n, embedding_dim=d, name=f"t_{f}", feature_names=[f])
        for f, n, d in zip(FEATURES, vocab, dims, strict=True)
    ]


def one_hot_kjt(ids: Tensor, keys: Sequence[str] = FEATURES) -> KeyedJaggedTensor:
    """KJT with one id per bag from ids (B, F) (feature-major values, int64)."""
    batch, num = ids.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=ids.t().reshape(-1).long(),
        lengths=torch.ones(num * batch, dtype=torch.long),
    )


def random_ids(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Random ids (B, F) within each feature's vocab."""
    cols = [torch.randint(0, n, (batch,), generator=generator) for n in VOCAB]
    return torch.stack(cols, dim=1) if batch else torch.zeros(0, len(VOCAB), dtype=torch.long)


class StubEmbedding(nn.Module):
    """EBC-compatible test double: a learnable vector per feature plus the id (so B = 0 works), and an
    optional aux loss."""

    def __init__(self, dims: Sequence[int], aux: float | None = None) -> None:
        super().__init__()
        self.dims = list(dims)
        self.vectors = nn.Parameter(torch.randn(sum(self.dims)))
        self.aux_weight = nn.Parameter(torch.tensor(aux)) if aux is not None else None

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return list(zip(FEATURES, self.dims, strict=True))

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        batch = kjt.stride()
        values = self.vectors.expand(batch, -1)  # (B, sum dims)
        return KeyedTensor(keys=list(FEATURES), length_per_key=self.dims, values=values)

    def aux_loss(self) -> Tensor | None:
        return None if self.aux_weight is None else self.aux_weight * 2.0


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The helpers above as a fixture (robust to pytest's import mode, unlike importing conftest)."""
    torch.manual_seed(0)
    return SimpleNamespace(
        FEATURES=FEATURES,
        VOCAB=VOCAB,
        small_tables=small_tables,
        one_hot_kjt=one_hot_kjt,
        random_ids=random_ids,
        StubEmbedding=StubEmbedding,
    )
