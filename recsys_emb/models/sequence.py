"""Builders of the behaviour-sequence rankers (DIN, two-stage long-sequence) and their training module.

Every table comes from the embedding spec (recsys_emb/modules/spec.py). A sequence model has two
kinds of features:

* FIELDS (``model.fields``, e.g. item, category, position): each a behaviour history key and a target
  key that share one embedding; the model concatenates the fields' embeddings into a token. A group
  of fields is built by :func:`recsys_emb.modules.spec.build_sequence` (any chain, ``dare`` included).
* SIDE features (``model.side_features``, e.g. the user id): pooled, one vector per example,
  concatenated to the model's output MLP input (DIN's user-profile / context features). A group of
  side features is built by :func:`recsys_emb.modules.spec.build_pooled` (``dare`` is refused there).

The data set's key names reach the techniques only through :class:`SequenceFacts`, which the task fills.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup, technique_entry
from recsys_emb.config.io import ConfigError
from recsys_emb.config.sequence import SequenceModelConfig
from recsys_emb.data.sequences import SequenceBatch
from recsys_emb.models.din import DIN, bce
from recsys_emb.models.long_sequence import TwoStageModel
from recsys_emb.modules.contract import output_feature_dims
from recsys_emb.modules.spec import (
    RoleLookup, assign_groups, build_pooled, build_sequence, resolve_chain, sum_aux_losses, uniform_init,
)


@dataclass
class SequenceFacts:
    """What a sequence model's tables need to know about the data (filled by the task from the data set).

    Attributes:
        field_keys: field -> its (history key, target key) in the batch KJT.
        vocab: field or side feature -> table rows.
        bags_per_example: the most ids one example has in a field (history length + 1), the padding of
            the one-id bags under several ranks; None = no padding (one process).
        context: data facts for techniques (``items`` for semantic IDs, ``counts`` for DNIS).
    """

    field_keys: dict[str, tuple[str, str]]
    vocab: dict[str, int]
    bags_per_example: int | None
    context: dict[str, Any] = field(default_factory=dict)


class SequenceEmbedding(nn.Module):
    """The tables of a sequence ranker: ``forward(kjt) -> (attention, representation, side)``.

    ``attention`` / ``representation`` map every history and target key to its JaggedTensor (the same
    dict when no group has ``dare``); ``side`` is the (B, S) concatenation of the pooled side features,
    or None. Token dims: ``attention_dim`` / ``representation_dim`` = the sum over the fields.
    """

    def __init__(self, fields: Mapping[str, tuple[str, str]], lookup: RoleLookup, side: nn.Module | None = None) -> None:
        super().__init__()
        self.fields = dict(fields)
        self.lookup = lookup
        self.side = side
        att, rep = lookup.field_dims("attention"), lookup.field_dims("representation")
        self.attention_dim = sum(att[f] for f in self.fields)
        self.representation_dim = sum(rep[f] for f in self.fields)
        self.side_dim = sum(d for _, d in output_feature_dims(side)) if side is not None else 0

    @property
    def decoupled(self) -> bool:
        return self.lookup.decoupled

    def forward(self, features: KeyedJaggedTensor) -> tuple[dict[str, JaggedTensor], dict[str, JaggedTensor], Tensor | None]:
        att, rep = self.lookup(features)
        side = self.side(features).values() if self.side is not None else None  # (B, S)
        return att, rep, side

    def aux_loss(self) -> Tensor | None:
        return sum_aux_losses([self.lookup, self.side])


def build_sequence_embedding(cfg: SequenceModelConfig, spec: EmbeddingSpec, facts: SequenceFacts,
                             device: torch.device | str | None = None) -> SequenceEmbedding:
    """The fields' role lookups and the side features' pooled module of ``spec``.

    Raises:
        ConfigError: a group mixes fields and side features, or names a feature the model lacks.
    """
    unknown = [f for f in cfg.fields if f not in facts.field_keys]
    if unknown:
        raise ConfigError(f"model.fields {unknown} are not fields of this data set ({sorted(facts.field_keys)})")
    features = [*cfg.fields, *cfg.side_features]
    assigned = assign_groups(spec, features, family=cfg.name)
    seq_groups: list[tuple[TableGroup, list[str]]] = []
    side_groups: list[tuple[TableGroup, list[str]]] = []
    for group, feats in assigned:
        fields = [f for f in feats if f in cfg.fields]
        side = [f for f in feats if f not in cfg.fields]
        if fields and side and group.features is not None:
            raise ConfigError(f"embedding group '{group.name}' mixes sequence fields {fields} and side features {side}: "
                              "a field's embedding is looked up per behaviour, a side feature's once per example; "
                              "put them in separate groups")
        if fields:
            seq_groups.append((group, fields))
        if side and fields:  # a features: null group covering both: its side part without dare, as '<name>_side'
            name = f"{group.name}_side"
            if any(g.name == name for g, _ in assigned):
                raise ConfigError(f"embedding group '{group.name}' (features: null) covers side features {side} as "
                                  f"'{name}', which is also a group's name: list the side features in a group of their own")
            chain = [e for e in group.chain if technique_entry(e, group.name)[0] != "dare"]
            side_groups.append((dataclasses.replace(group, name=name, chain=chain), side))
        elif side:
            side_groups.append((group, side))
    if cfg.name == "din" and cfg.din.mba_lambda > 0:
        for group, _ in seq_groups:
            chain = resolve_chain(group, sequence=True)
            if chain.pre or chain.layout[0].name != "plain" or chain.post:
                raise ConfigError(f"model.din.mba_lambda > 0 regularises each id's own row, but group '{group.name}' "
                                  f"uses {chain.names()}: use it with plain (or dare-only) chains")
    init = uniform_init(None if cfg.init_std is None else cfg.init_std * 3**0.5)  # uniform with std init_std
    lookup = build_sequence(seq_groups, facts.vocab, cfg.embedding_dim,
                            {f: facts.field_keys[f] for f in cfg.fields}, bags_per_example=facts.bags_per_example,
                            init=init, context=facts.context, device=device)
    side = None
    if side_groups:
        side = build_pooled(spec, {f: facts.vocab[f] for f in cfg.side_features}, cfg.embedding_dim, family=cfg.name,
                            prefix="side_", init=init, context=facts.context, device=device, groups=side_groups, select=True)
    return SequenceEmbedding({f: facts.field_keys[f] for f in cfg.fields}, lookup, side)


def build_sequence_model(
    cfg: SequenceModelConfig,
    spec: EmbeddingSpec,
    facts: SequenceFacts,
    frequencies: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The unsharded model (``DIN`` or ``TwoStageModel``) on the tables of ``spec``."""
    embedding = build_sequence_embedding(cfg, spec, facts, device)
    if cfg.name == "din":
        freqs = {k: torch.as_tensor(v) for k, v in frequencies.items()} if frequencies is not None else None
        return DIN(embedding, cfg.din, freqs)
    return TwoStageModel(embedding, cfg.two_stage)


class SequenceTrain(nn.Module):
    """``forward(batch) -> (loss, (loss.detach(), logits.detach(), labels))``; loss = BCE + auxiliary losses
    (the model's, e.g. DIN's mini-batch-aware L2, and the tables' techniques', e.g. OptEmbed's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SequenceBatch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        logits = self.model(batch.sparse_features)  # (B,)
        loss = bce(logits, batch.labels)
        if self.training:
            for aux in (self.model.aux_loss(batch.labels), self.model.embedding.aux_loss()):
                if aux is not None:
                    loss = loss + aux
        return loss, (loss.detach(), logits.detach(), batch.labels)

