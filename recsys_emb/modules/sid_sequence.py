"""Semantic-ID item features for sequence rankers (DIN, two-stage, DARE): ``item_features: id | sid | id+sid``.

Paper: Singh et al., "Better Generalization with Semantic IDs: A Case Study in Ranking for
Recommendations" (RecSys 2024): an item is embedded as the SUM of the embeddings of the pieces of its
semantic ID (recsys_emb/semantic_ids/) instead of, or next to, a random-hash item-id embedding.

Here the item of every behaviour (``hist_item``, jagged) and of every target (``target_item``) goes
through the SID module of recsys_emb/modules/semantic_ids.py: the ``N + B`` item ids of a batch become
a KJT with ONE BAG PER ITEM, the parameter-free :class:`SemanticIdTransform` replaces each id by its
pieces inside that bag (pieces never cross item boundaries), and a stock ``EmbeddingBagCollection``
sum-pools them: ``(N + B, D)``, split back into the behaviours' jagged values and the targets. Nothing
is padded. The other feature groups (category, recency position) keep their stock tables.

* ``sid``: the item-id embedding is replaced by the pooled SID embedding;
* ``id+sid``: the two are ADDED (dims unchanged, so the models are unchanged; a zero SID table gives
  exactly the plain model, tested);
* ``item_hash_buckets``: the item-id feature is first hashed (salted, parameter-free) into that many
  rows: the "random-hash item id" baseline of the paper.

DARE (decoupled) gets two SID tables (attention / representation dims), like the id tables.

Reduction: one SID level whose code is the item's own row, ``unigram`` tokens, ``dense`` mapping and
the id table's rows copied into the SID table -> exactly the plain DIN (tests/modules/test_sid_sequence.py).

Deviations from the paper: the pieces' table is looked up through an EBC next to the sequence
EmbeddingCollections (the paper's rankers are not sequence models); ``id+sid`` adds instead of
concatenating (keeps the token width of the models); new items' pieces that were never seen on
training items map to the shared row 0 (``mapping: vocab`` fitted on training items only).

Shapes: B examples, N behaviours in the batch, D table dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys_emb.data.sequences import FIRST_ID, GROUP_FEATURES
from recsys_emb.modules.dare import DecoupledEmbeddingCollection, coupled_table_configs, dare_table_configs
from recsys_emb.modules.semantic_ids import SemanticIdTransform
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection

ITEM_FEATURES = ("id", "sid", "id+sid")
SID_FEATURE = "item"


@dataclass
class SequenceSidConfig:
    """Where the semantic IDs come from and how they become pieces (``model.sid`` of a sequence experiment)."""

    codes: str = ""  # SID file from `recsys-emb sid assign` (required unless item_features: id)
    raw_id_offset: int = 0  # raw item id v has code row v - raw_id_offset (UniSRec indices: 0)
    tokenizer: str = "prefix_ngram"  # unigram | bigram | prefix_ngram | sentencepiece
    mapping: str = "vocab"  # vocab (pieces of TRAINING items; unseen -> row 0) | dense | hash
    num_rows: int | None = None  # table rows for mapping: hash
    levels: int | None = None  # leading levels used (None = all, suffix included)
    sentencepiece_model: str | None = None  # a trained .model; None = train one on the training items' SIDs
    sentencepiece_vocab_size: int = 256  # when training it here
    seed: int = 0  # hash salt / SentencePiece seed

    def __post_init__(self) -> None:
        if self.tokenizer not in ("unigram", "bigram", "prefix_ngram", "sentencepiece"):
            raise ValueError(f"model.sid.tokenizer must be unigram | bigram | prefix_ngram | sentencepiece, got '{self.tokenizer}'")
        if self.mapping not in ("vocab", "dense", "hash"):
            raise ValueError(f"model.sid.mapping must be vocab | dense | hash, got '{self.mapping}'")


class ItemIdHash(nn.Module):
    """``KJT -> KJT``: ids ``>= 2`` of ``features`` -> ``2 + h(id) mod buckets`` (salted splitmix64); 0/1 kept."""

    def __init__(self, features: Sequence[str], buckets: int, seed: int = 0) -> None:
        super().__init__()
        if buckets < 1:
            raise ValueError(f"item_hash_buckets must be >= 1, got {buckets}")
        self.features = list(features)
        self.buckets = int(buckets)
        self.seed = int(seed)

    def hash(self, ids: torch.Tensor) -> torch.Tensor:
        x = ids.long() * 0x9E3779B1 + (self.seed + 1) * 0x632BE5AB  # stays within int64 (ids < 2^31)
        x = ((x ^ (x >> 16)) & 0xFFFFFFFF) * 0x45D9F3B  # < 2^59: no overflow
        x = (x ^ (x >> 16)) & 0x7FFFFFFF
        return torch.where(ids >= FIRST_ID, FIRST_ID + x % self.buckets, ids.long())

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        parts = [self.hash(kjt[k].values()) if k in self.features else kjt[k].values().long() for k in kjt.keys()]
        return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(parts), lengths=kjt.lengths(), stride=kjt.stride())


class SemanticIdSequenceEmbedding(nn.Module):
    """The ``DecoupledEmbeddingCollection`` interface with SID (and/or hashed) item features.

    Args:
        base: tables of the non-item groups, plus the item group when ``item_features`` uses ids
            (None when nothing else is looked up).
        sid_attention: SID module for the attention role (or both roles when tied); None for ``id``.
        sid_representation: SID module for the representation role (DARE), or None.
        item_features: id | sid | id+sid.
        item_hash: optional id hashing applied before ``base``.
        attention_dim, representation_dim: table dims.
        bags_per_example: when set (``max_history + 1``), the one-bag-per-item KJT of the SID lookup is
            padded with empty bags to ``B * bags_per_example`` bags. Its batch size then depends on ``B``
            alone, the same on every rank: TorchRec's sharded pooled tables need equal batch sizes across
            ranks (different ones fail in the backward all-gather), while ``N`` differs per rank.

    Example::

        emb = build_sequence_item_embedding(model_cfg, ds.table_sizes(), ds)
        att, rep = emb(batch.sparse_features)   # att["hist_item"]: JaggedTensor (N, D); att["target_item"]: (B, D)
    """

    def __init__(
        self,
        base: DecoupledEmbeddingCollection | None,
        sid_attention: TransformedEmbeddingBagCollection | None,
        sid_representation: TransformedEmbeddingBagCollection | None,
        item_features: str,
        attention_dim: int,
        representation_dim: int,
        item_hash: ItemIdHash | None = None,
        bags_per_example: int | None = None,
    ) -> None:
        super().__init__()
        if item_features not in ITEM_FEATURES:
            raise ValueError(f"item_features must be one of {list(ITEM_FEATURES)}, got '{item_features}'")
        if item_features != "id" and sid_attention is None:
            raise ValueError(f"item_features '{item_features}' needs a SID module")
        self.base = base
        self.sid_attention = sid_attention
        self.sid_representation = sid_representation
        self.item_features = item_features
        self.item_hash = item_hash
        self.bags_per_example = bags_per_example
        self._attention_dim = attention_dim
        self._representation_dim = representation_dim

    @property
    def decoupled(self) -> bool:
        return self.sid_representation is not None or (self.base is not None and self.base.decoupled)

    @property
    def attention_dim(self) -> int:
        return self._attention_dim

    @property
    def representation_dim(self) -> int:
        return self._representation_dim

    def _sid(self, module: TransformedEmbeddingBagCollection, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        keys = GROUP_FEATURES["item"]
        jts = [features[k] for k in keys]
        ids = torch.cat([jt.values() for jt in jts])  # (N + B,)
        lengths = torch.ones_like(ids, dtype=torch.int32)  # one bag per item
        if self.bags_per_example is not None:
            bags_total = features.stride() * self.bags_per_example
            if ids.numel() > bags_total:
                raise ValueError(f"{ids.numel()} items in a batch of {features.stride()} examples: more than "
                                 f"bags_per_example={self.bags_per_example} (max_history + 1) per example")
            lengths = torch.cat([lengths, lengths.new_zeros(bags_total - ids.numel())])  # empty bags pool to 0
        bags = KeyedJaggedTensor(keys=[SID_FEATURE], values=ids, lengths=lengths)
        pooled = module(bags)[SID_FEATURE]  # (N + B [+ empty bags], D)
        out, start = {}, 0
        for k, jt in zip(keys, jts):
            n = jt.values().numel()
            out[k] = JaggedTensor(values=pooled[start:start + n], lengths=jt.lengths())
            start += n
        return out

    def _merge(self, looked_up: Mapping[str, JaggedTensor], sid: dict[str, JaggedTensor]) -> dict[str, JaggedTensor]:
        out = dict(looked_up)
        for k, jt in sid.items():
            if self.item_features == "id+sid":
                jt = JaggedTensor(values=looked_up[k].values() + jt.values(), lengths=jt.lengths())
            out[k] = jt
        return out

    def forward(self, features: KeyedJaggedTensor) -> tuple[dict[str, JaggedTensor], dict[str, JaggedTensor]]:
        sid_input = features
        if self.item_hash is not None:
            features = self.item_hash(features)
        att, rep = self.base(features) if self.base is not None else ({}, {})
        if self.sid_attention is None:
            return att, rep
        tied = (self.base is None or not self.base.decoupled) and self.sid_representation is None
        att = self._merge(att, self._sid(self.sid_attention, sid_input))
        if tied:
            return att, att
        sid_rep = self.sid_representation if self.sid_representation is not None else self.sid_attention
        return att, self._merge(rep, self._sid(sid_rep, sid_input))


# ------------------------------------------------------------------------------------------ building


def sid_piece_rows(cfg: SequenceSidConfig, item_raw_ids: np.ndarray, train_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Pieces of every encoded item id ``2 + i`` (raw id ``item_raw_ids[i]``).

    The tokeniser (SentencePiece) and the ``vocab`` mapping are fitted on the items with
    ``train_counts > 0`` only (weighted by them), so held-out items contribute nothing but their codes.

    Returns:
        ``(item_offsets (I + 1,), item_rows, num_rows, codes (I, L))`` for the ``I`` encoded items.
    """
    from recsys_emb.semantic_ids.codes import SemanticIds
    from recsys_emb.semantic_ids.tokenizers import PieceTable, build_tokenizer

    if not cfg.codes:
        raise ValueError("model.sid.codes: the SID file of `recsys-emb sid assign` is required for item_features sid / id+sid")
    sids = SemanticIds.load(cfg.codes)
    rows = np.asarray(item_raw_ids, dtype=np.int64) - cfg.raw_id_offset
    bad = (rows < 0) | (rows >= sids.num_items)
    if bad.any():
        raise ValueError(f"{cfg.codes}: no semantic ID for raw items {np.asarray(item_raw_ids)[bad][:10].tolist()} "
                         f"(the file has {sids.num_items} rows; raw_id_offset={cfg.raw_id_offset})")
    codes = sids.codes[rows]  # (I, L)
    counts = np.asarray(train_counts, dtype=np.float64)
    seen = counts > 0
    tok = build_tokenizer(cfg.tokenizer, codes[seen], sids.level_sizes, levels=cfg.levels,
                          sentencepiece_model=cfg.sentencepiece_model, vocab_size=cfg.sentencepiece_vocab_size,
                          item_counts=np.rint(counts[seen]).astype(np.int64), seed=cfg.seed)
    pieces = tok.pieces(codes)
    table = PieceTable(tok, cfg.mapping, cfg.num_rows, cfg.seed).fit([p for p, s in zip(pieces, seen) if s])
    offsets, piece_rows = table.item_rows(pieces)
    return offsets, piece_rows, table.num_rows, codes


def sid_module(
    item_offsets: np.ndarray, item_rows: np.ndarray, num_rows: int, dim: int, *,
    name: str = "sid_item", init_std: float | None = None, codes: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> TransformedEmbeddingBagCollection:
    """``SemanticIdTransform`` (encoded id ``2 + i`` -> pieces of item ``i``) + one sum-pooled table."""
    init: dict[str, Any] = {} if init_std is None else {"weight_init_min": -init_std * 3**0.5, "weight_init_max": init_std * 3**0.5}
    transform = SemanticIdTransform(torch.as_tensor(item_offsets), torch.as_tensor(item_rows), [SID_FEATURE],
                                    id_offset=FIRST_ID, codes=None if codes is None else torch.as_tensor(codes))
    table = EmbeddingBagConfig(num_embeddings=int(num_rows), embedding_dim=int(dim), name=name,
                               feature_names=[SID_FEATURE], pooling=PoolingType.SUM, **init)
    return TransformedEmbeddingBagCollection(transform, [table], device=device)


def build_sequence_item_embedding(
    cfg: Any, table_sizes: Mapping[str, int], dataset: Any | None, device: torch.device | str | None = None
) -> SemanticIdSequenceEmbedding:
    """The embedding of a ``SequenceModelConfig`` with ``item_features != id`` or ``item_hash_buckets``.

    Args:
        cfg: the ``SequenceModelConfig`` (``item_features``, ``item_hash_buckets``, ``sid``, dims, groups).
        table_sizes: rows per group (``SequenceDataset.table_sizes()``).
        dataset: the ``SequenceDataset`` (its ``item_raw_ids`` and training ``popularity``) when SIDs are used.
    """
    sizes = dict(table_sizes)
    item_hash = None
    if cfg.item_hash_buckets:
        item_hash = ItemIdHash(GROUP_FEATURES["item"], cfg.item_hash_buckets, seed=cfg.sid.seed)
        sizes["item"] = FIRST_ID + int(cfg.item_hash_buckets)
    att_dim = cfg.attention_dim or cfg.embedding_dim
    rep_dim = cfg.embedding_dim
    groups = [g for g in cfg.groups if g != "item" or cfg.item_features != "sid"]
    base = None
    if groups:
        if cfg.decoupled:
            att, rep = dare_table_configs(sizes, att_dim, rep_dim, groups, init_std=cfg.init_std)
            base = DecoupledEmbeddingCollection(att, rep, device=device)
        else:
            base = DecoupledEmbeddingCollection(coupled_table_configs(sizes, rep_dim, groups, init_std=cfg.init_std), device=device)
    sid_att = sid_rep = None
    if cfg.item_features != "id":
        if not cfg.sid.codes:
            raise ValueError(f"item_features '{cfg.item_features}' needs model.sid.codes (a SID file of `recsys-emb sid assign`)")
        if dataset is None:
            raise ValueError("item_features with 'sid' needs the data set (item raw ids and training counts)")
        offsets, rows, num_rows, codes = sid_piece_rows(cfg.sid, dataset.item_raw_ids, dataset.popularity[FIRST_ID:])
        name = "att_sid_item" if cfg.decoupled else "sid_item"
        sid_att = sid_module(offsets, rows, num_rows, att_dim, name=name, init_std=cfg.init_std, codes=codes, device=device)
        if cfg.decoupled:
            sid_rep = sid_module(offsets, rows, num_rows, rep_dim, name="rep_sid_item", init_std=cfg.init_std, device=device)
    bags = None if sid_att is None else int(dataset.cfg.max_history) + 1  # hist_item + target_item per example
    return SemanticIdSequenceEmbedding(base, sid_att, sid_rep, cfg.item_features, att_dim, rep_dim, item_hash, bags)
