"""CTR ranking models: DLRM, DCN-v2, DeepFM, logistic regression, and the CTRTrain loss wrapper.

Every model is a ``CTRModel`` with ``forward(dense_features (B, D_dense), sparse_features KJT) ->
logits (B,)`` and keeps its EBC-compatible embedding module at ``model.embedding`` (DeepFM also has
per-id weight tables at ``model.first_order``). See docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys_emb.config.model import ModelConfig
from recsys_emb.models.common import MLP, CTRModel, DenseArch, Device, LinearTerm, split_named_parameters
from recsys_emb.models.dcn import CrossNet, DCNv2
from recsys_emb.models.deepfm import DeepFM, FactorizationMachine
from recsys_emb.models.dlrm import DLRM, DotInteraction, OverArch
from recsys_emb.models.lr import LogisticRegression, first_order_tables
from recsys_emb.models.train import CTRTrain, auxiliary_loss

__all__ = [
    "MLP",
    "CTRModel",
    "CTRTrain",
    "CrossNet",
    "DCNv2",
    "DLRM",
    "DeepFM",
    "DenseArch",
    "DotInteraction",
    "FactorizationMachine",
    "LinearTerm",
    "LogisticRegression",
    "OverArch",
    "auxiliary_loss",
    "build_model",
    "first_order_tables",
    "split_named_parameters",
]


def build_model(
    config: ModelConfig,
    embedding: nn.Module | None,
    tables: Sequence[EmbeddingBagConfig],
    num_dense_features: int,
    device: Device = None,
) -> CTRModel:
    """Build the CTR model named by ``config.name``.

    Args:
        config: model config.
        embedding: EBC-compatible embedding module (a technique's module), or None to build a plain
            ``EmbeddingBagCollection(tables)``. Must be None for ``lr``, which builds its own per-id
            weight tables.
        tables: base table configs (one per sparse feature, raw ids): used for the plain EBC, and for
            the per-id weight tables of ``lr`` and ``deepfm`` (same feature names and num_embeddings,
            width ``config.first_order_dim``).
        num_dense_features: D_dense.
        device: device of every parameter the function creates (``"meta"`` for deferred init under
            DistributedModelParallel); a passed-in ``embedding`` keeps its own device.
    """
    if config.name == "lr":
        if embedding is not None:
            raise ValueError(
                "model.name 'lr' builds its own per-id weight tables from the table configs and cannot use "
                f"an embedding module (got {type(embedding).__name__}); pass embedding=None"
            )
        return LogisticRegression.from_tables(tables, num_dense_features, config.first_order_dim, device=device)
    if embedding is None:
        if not tables:
            raise ValueError(f"model {config.name!r}: no table configs given and no embedding module")
        embedding = EmbeddingBagCollection(list(tables), device=device)
    if config.name == "dlrm":
        return DLRM(embedding, num_dense_features, config.dlrm, device=device)
    if config.name == "dcnv2":
        return DCNv2(embedding, num_dense_features, config.dcnv2, device=device)
    if config.name == "deepfm":
        first_order = EmbeddingBagCollection(first_order_tables(tables, config.first_order_dim), device=device)
        return DeepFM(embedding, first_order, num_dense_features, config.deepfm, device=device)
    raise ValueError(f"unknown model name {config.name!r}")  # unreachable: ModelConfig validates the name
