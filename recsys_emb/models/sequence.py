"""Builders of the behaviour-sequence rankers (DIN, two-stage long-sequence) and their training module."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recsys_emb.config.sequence import SequenceModelConfig
from recsys_emb.data.sequences import SequenceBatch, SequenceDataset
from recsys_emb.models.din import DIN, bce
from recsys_emb.models.long_sequence import TwoStageModel
from recsys_emb.modules.dare import DecoupledEmbeddingCollection, coupled_table_configs, dare_table_configs


def build_sequence_model(
    cfg: SequenceModelConfig,
    table_sizes: dict[str, int],
    frequencies: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    dataset: SequenceDataset | None = None,
) -> nn.Module:
    """The unsharded model (``DIN`` or ``TwoStageModel``) on a coupled or DARE table layout (+ SID item features)."""
    if cfg.item_features != "id" or cfg.item_hash_buckets:
        from recsys_emb.modules.sid_sequence import build_sequence_item_embedding

        embedding = build_sequence_item_embedding(cfg, table_sizes, dataset, device=device)
    elif cfg.decoupled:
        att, rep = dare_table_configs(table_sizes, cfg.attention_dim or cfg.embedding_dim, cfg.embedding_dim, cfg.groups, init_std=cfg.init_std)
        embedding = DecoupledEmbeddingCollection(att, rep, device=device)
    else:
        embedding = DecoupledEmbeddingCollection(coupled_table_configs(table_sizes, cfg.embedding_dim, cfg.groups, init_std=cfg.init_std), device=device)
    if cfg.name == "din":
        freqs = {k: torch.as_tensor(v) for k, v in frequencies.items()} if frequencies is not None else None
        return DIN(embedding, cfg.groups, cfg.din, freqs)
    return TwoStageModel(embedding, cfg.groups, cfg.two_stage)


class SequenceTrain(nn.Module):
    """``forward(batch) -> (loss, (loss.detach(), logits.detach(), labels))``; loss = BCE + model.aux_loss(labels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SequenceBatch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        logits = self.model(batch.sparse_features)  # (B,)
        loss = bce(logits, batch.labels)
        aux = self.model.aux_loss(batch.labels) if self.training else None
        if aux is not None:
            loss = loss + aux
        return loss, (loss.detach(), logits.detach(), batch.labels)
