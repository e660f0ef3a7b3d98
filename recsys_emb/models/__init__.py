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
    first_order: nn.Module | None = None,
) -> CTRModel:
    """Build the CTR model named by ``config.name``.

    Args:
        config: model config.
        embedding: EBC-compatible embedding module (a technique's module), or None to build a plain
            ``EmbeddingBagCollection(tables)``. Must be None for ``lr``, which has per-id weights only.
        tables: base table configs (one per sparse feature, raw ids): used for the plain EBC, and for
            the per-id weight tables of ``lr`` and ``deepfm`` when ``first_order`` is None (same feature
            names and num_embeddings, width ``config.first_order_dim``).
        num_dense_features: D_dense.
        device: device of every parameter the function creates (``"meta"`` for deferred init under
            DistributedModelParallel); a passed-in ``embedding`` keeps its own device.
        first_order: the per-id weight module of ``lr`` / ``deepfm`` (e.g. built from the embedding spec
            by :func:`recsys_emb.modules.spec.build_pooled`); None = plain zero-initialised tables.
    """
    if config.name == "lr":
        if embedding is not None:
            raise ValueError(
                "model.name 'lr' has per-id weight tables only and cannot use an embedding module "
                f"(got {type(embedding).__name__}); pass embedding=None (and its weights as first_order)"
            )
        if first_order is not None:
            return LogisticRegression(first_order, num_dense_features, device=device)
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
        if first_order is None:
            first_order = EmbeddingBagCollection(first_order_tables(tables, config.first_order_dim), device=device)
        return DeepFM(embedding, first_order, num_dense_features, config.deepfm, device=device)
    raise ValueError(f"unknown model name {config.name!r}")  # unreachable: ModelConfig validates the name
