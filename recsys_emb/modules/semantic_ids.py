"""Semantic-ID features: item id -> SID pieces (pre-lookup transform) + a stock table.

Paper: Singh et al., "Better Generalization with Semantic IDs: A Case Study in Ranking for
Recommendations" (RecSys 2024). Items get semantic IDs from an RQ-VAE over content embeddings
(recsys_emb/semantic_ids/); a ranking model then embeds an item as the sum of the embeddings of the
PIECES of its ID (unigrams, bigrams, prefix n-grams, or SentencePiece pieces) instead of, or next
to, a random-hash/vocabulary item-id embedding. New items share pieces with similar old items.

Pieces of every item are computed offline and stored as jagged buffers (``item_offsets``,
``item_rows``: table rows, row 0 = unknown), so the transform is parameter-free and runs before
TorchRec's input all-to-all: :func:`semantic_id_embedding_bag_collection` returns a stock
:class:`~recsys_emb.modules.wrapper.TransformedEmbeddingBagCollection` (sharded by the wrapper
sharder). The raw codes are kept as the ``codes`` buffer for inspection and checkpoints.

Reduction: one level whose code is the item id, unigram tokens, ``dense`` mapping -> row ``1 + id``,
i.e. exactly the plain item-id embedding (tested). Deviations from the paper: the SID table's
pieces are pooled with the bag's pooling (sum by default) together with all ids of a multi-id bag;
ids outside the code table (new items without codes, OOV ids) map to the shared row 0.

Shapes: B batch size, N items with codes, P pieces per item (jagged).
"""

from __future__ import annotations

import dataclasses

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.modules.spec import Tables, register_technique
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection
from recsys_emb.ops import sid_pieces


class SemanticIdTransform(nn.Module):
    """``KJT -> KJT``: replace the ids of ``features`` by the table rows of their SID pieces.

    Args:
        item_offsets: (N + 1,) offsets of each item's rows in ``item_rows``.
        item_rows: (total pieces,) table rows of the pieces (row 0 = unknown).
        features: input features holding item ids (all share this code table).
        keep_item_id: also pass the original id features through; the SID features are then
            named ``<feature>_sid`` (otherwise they keep the feature name).
        id_offset: item id ``v`` has codes row ``v - id_offset`` (e.g. 2 when ids 0/1 mean missing/OOV).
        codes: optional (N, L) code matrix, stored as a buffer for inspection.

    Example::

        # item 0 -> rows [1, 5], item 1 -> rows [2, 5]; feature "item": bags [[0], [1, 0]]
        t = SemanticIdTransform(torch.tensor([0, 2, 4]), torch.tensor([1, 5, 2, 5]), ["item"])
        kjt = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([0, 1, 0]), torch.tensor([1, 2]))
        t(kjt)["item"]   # values [1, 5, 2, 5, 1, 5], lengths [2, 4]
    """

    def __init__(
        self,
        item_offsets: Tensor,
        item_rows: Tensor,
        features: Sequence[str],
        *,
        keep_item_id: bool = False,
        id_offset: int = 0,
        codes: Tensor | None = None,
    ) -> None:
        super().__init__()
        offsets = torch.as_tensor(item_offsets, dtype=torch.long)
        rows = torch.as_tensor(item_rows, dtype=torch.long)
        if offsets.ndim != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != rows.numel():
            raise ValueError("item_offsets must start at 0 and end at len(item_rows)")
        if bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError("item_offsets must be non-decreasing")
        if not features:
            raise ValueError("SemanticIdTransform needs at least one feature")
        # one extra "unknown item" at index N with the single piece row 0
        self.register_buffer("item_offsets", torch.cat([offsets, offsets[-1:] + 1]))
        self.register_buffer("item_rows", torch.cat([rows, rows.new_zeros(1)]))
        self.register_buffer("codes", torch.as_tensor(codes, dtype=torch.long) if codes is not None else torch.zeros(0, 0, dtype=torch.long))
        self.features = list(features)
        self.keep_item_id = keep_item_id
        self.id_offset = int(id_offset)
        self.num_items = offsets.numel() - 1

    def output_name(self, feature: str) -> str:
        return f"{feature}_sid" if self.keep_item_id else feature

    def pieces(self, ids: Tensor, lengths: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Rows (values), new bag lengths and repeated weights for ids ``ids`` in bags ``lengths``.

        One ``recsys_emb::sid_pieces`` call (compiled kernel when ``recsys_emb._C`` is built, else its
        torch reference; the unknown item is the last of ``item_offsets``): ids outside
        ``[id_offset, id_offset + num_items)`` get the unknown item's single row 0.
        """
        values, new_lengths, owner = sid_pieces(ids, lengths, self.item_offsets, self.item_rows, self.id_offset)
        return values, new_lengths, None if weights is None else weights[owner]

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return semantic_id_kjt(features, self.features, self.keep_item_id, self.item_offsets, self.item_rows, self.id_offset)


def semantic_id_embedding_bag_collection(
    tables: Sequence[EmbeddingBagConfig],
    features: Sequence[str],
    item_offsets: Tensor | np.ndarray,
    item_rows: Tensor | np.ndarray,
    num_rows: int,
    *,
    keep_item_id: bool = False,
    id_offset: int = 0,
    embedding_dim: int | None = None,
    pooling: PoolingType | None = None,
    codes: Tensor | np.ndarray | None = None,
    is_weighted: bool = False,
    device: torch.device | str | None = None,
) -> TransformedEmbeddingBagCollection:
    """The plain ``tables`` with the item features' lookups replaced by (or joined with) a SID table.

    Args:
        tables: the per-feature tables the model would otherwise use.
        features: item-id features that get SID pieces (they share one SID table).
        item_offsets, item_rows: jagged table rows of every item's pieces (see SemanticIdTransform).
        num_rows: rows of the SID table (row 0 = unknown).
        keep_item_id: keep the item-id tables as well (SID features are then ``<feature>_sid``).
        id_offset: item id ``v`` has codes row ``v - id_offset``.
        embedding_dim: SID table dim (default: the dim of the first item feature's table).
        pooling: SID table pooling (default: that table's pooling).
        codes: (N, L) codes kept as a buffer.
        device: where to build the tables (``meta`` for DistributedModelParallel).
    """
    table_of = {f: t for t in tables for f in t.feature_names}
    unknown = [f for f in features if f not in table_of]
    if unknown:
        raise ValueError(f"semantic_ids: features {unknown} have no table (features: {sorted(table_of)})")
    item_max = int(np.asarray(item_rows).max()) if len(item_rows) else 0
    if item_max >= num_rows:
        raise ValueError(f"semantic_ids: piece row {item_max} >= num_rows {num_rows}")
    first = table_of[features[0]]
    sid_feature_names = [f"{f}_sid" if keep_item_id else f for f in features]
    sid_table = EmbeddingBagConfig(
        num_embeddings=int(num_rows),
        embedding_dim=int(embedding_dim or first.embedding_dim),
        name="semantic_ids",
        feature_names=sid_feature_names,
        pooling=pooling if pooling is not None else first.pooling,
    )
    out_tables: list[EmbeddingBagConfig] = []
    for t in tables:
        kept = [f for f in t.feature_names if keep_item_id or f not in features]
        if kept == list(t.feature_names):
            out_tables.append(t)
        elif kept:
            out_tables.append(replace(t, feature_names=kept))
    out_tables.append(sid_table)
    transform = SemanticIdTransform(
        torch.as_tensor(np.asarray(item_offsets)), torch.as_tensor(np.asarray(item_rows)), features,
        keep_item_id=keep_item_id, id_offset=id_offset,
        codes=None if codes is None else torch.as_tensor(np.asarray(codes)),
    )
    return TransformedEmbeddingBagCollection(transform, out_tables, is_weighted=is_weighted, device=device)


@dataclass
class SemanticIdOptions:
    """Chain pre-transform ``semantic_ids: {...}``: every feature of the group (item ids) -> its SID pieces."""

    codes: str = ""  # SID file written by `recsys-emb sid assign` (row r = raw item id r + raw_id_offset)
    raw_id_offset: int = 0  # raw item id v has code row v - raw_id_offset
    tokenizer: str = "prefix_ngram"  # unigram | bigram | prefix_ngram | sentencepiece
    mapping: str = "vocab"  # vocab (pieces of training items; unseen -> row 0) | dense | hash (recsys_emb/semantic_ids/tokenizers.py)
    num_rows: int | None = None  # rows of the hashed piece table (mapping: hash)
    levels: int | None = None  # use only the first `levels` levels of the IDs (None = all, suffix included)
    sentencepiece_model: str | None = None  # a trained .model; None = train one on the training items' SIDs
    sentencepiece_vocab_size: int = 256  # when training it here
    with_id: bool = False  # also look up the item's own id row: embedding = id row + pooled pieces ("id+sid")
    seed: int = 0  # hash salt / SentencePiece seed

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("semantic_ids.codes: the path of a SID file (`recsys-emb sid assign`) is required")
        if self.tokenizer not in ("unigram", "bigram", "prefix_ngram", "sentencepiece"):
            raise ValueError(f"semantic_ids.tokenizer must be unigram | bigram | prefix_ngram | sentencepiece, got '{self.tokenizer}'")
        if self.mapping not in ("vocab", "dense", "hash"):
            raise ValueError(f"semantic_ids.mapping must be vocab | dense | hash, got '{self.mapping}'")


@dataclass
class ItemIds:
    """How a family's encoded item ids relate to raw item ids (``context["items"][feature]``).

    Encoded id ``first_id + i`` is raw item ``raw_ids[i]``; ``counts[i]`` is its training count (the
    tokeniser and the ``vocab`` mapping are fitted on items with a count > 0 only). Ids below
    ``first_id`` (missing / OOV) get the unknown piece row 0.
    """

    raw_ids: np.ndarray
    first_id: int = 0
    counts: np.ndarray | None = None


def item_piece_rows(options: SemanticIdOptions, items: ItemIds | None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Pieces of every encoded item: ``(item_offsets (I + 1,), item_rows, num_rows, codes (I, L))``.

    Without ``items`` the ids are raw ids: encoded id ``raw_id_offset + r`` is code row ``r``.
    """
    from recsys_emb.semantic_ids.codes import SemanticIds
    from recsys_emb.semantic_ids.tokenizers import PieceTable, build_tokenizer

    sids = SemanticIds.load(options.codes)
    if items is None:
        rows = np.arange(sids.num_items)
    else:
        rows = np.asarray(items.raw_ids, dtype=np.int64) - options.raw_id_offset
        bad = (rows < 0) | (rows >= sids.num_items)
        if bad.any():
            raise ValueError(f"{options.codes}: no semantic ID for raw items {np.asarray(items.raw_ids)[bad][:10].tolist()} "
                             f"(the file has {sids.num_items} rows; raw_id_offset={options.raw_id_offset})")
    codes = sids.codes[rows]  # (I, L)
    counts = np.ones(len(rows)) if items is None or items.counts is None else np.asarray(items.counts, dtype=np.float64)
    seen = counts > 0
    tok = build_tokenizer(options.tokenizer, codes[seen], sids.level_sizes, levels=options.levels,
                          sentencepiece_model=options.sentencepiece_model, vocab_size=options.sentencepiece_vocab_size,
                          item_counts=np.rint(counts[seen]).astype(np.int64), seed=options.seed)
    pieces = tok.pieces(codes)
    table = PieceTable(tok, options.mapping, options.num_rows, options.seed).fit([p for p, s in zip(pieces, seen) if s])
    offsets, piece_rows = table.item_rows(pieces)
    return offsets, piece_rows, table.num_rows, codes


def with_id_rows(offsets: np.ndarray, rows: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Append every item's own row ``num_rows + i`` to its pieces: the pooled sum is id row + pieces."""
    n = len(offsets) - 1
    counts = np.diff(offsets)
    out = np.empty(len(rows) + n, dtype=np.int64)
    new_offsets = offsets + np.arange(n + 1)
    for_item = np.repeat(np.arange(n), counts)
    out[np.arange(len(rows)) + for_item] = rows
    out[new_offsets[1:] - 1] = num_rows + np.arange(n)
    return new_offsets, out, num_rows + n


@register_technique("semantic_ids", "pre", SemanticIdOptions, doc="item id -> semantic-ID pieces (Singh et al. 2024)")
def build_semantic_ids(options: SemanticIdOptions, tables: Tables) -> Tables:
    """Chain pre-transform: the group's item-id features become bags of their SID pieces (the
    layout after it decides the tables: per feature for ``plain``, shared for ``unified``).

    Every feature of the group must hold ids of the same items (``context["items"]`` of the first
    feature, if the family gives one). The layout after it sees ``num_rows`` (+ items with ``with_id``)
    rows per feature.
    """
    items_by_feature = tables.context.get("items") or {}
    items = next((items_by_feature[f] for f in tables.features if f in items_by_feature), None)
    offsets, rows, num_rows, codes = item_piece_rows(options, items)
    if options.with_id:
        offsets, rows, num_rows = with_id_rows(offsets, rows, num_rows)
    first_id = items.first_id if items is not None else options.raw_id_offset
    transform = SemanticIdTransform(torch.as_tensor(offsets), torch.as_tensor(rows), tables.features, id_offset=first_id,
                                    codes=torch.as_tensor(codes))
    return dataclasses.replace(tables, pre=[*tables.pre, transform], vocab=dict.fromkeys(tables.features, int(num_rows)))


@torch.fx.wrap
def semantic_id_kjt(features: KeyedJaggedTensor, items: list[str], keep_item_id: bool, item_offsets: Tensor,
                    item_rows: Tensor, id_offset: int) -> KeyedJaggedTensor:
    """:class:`SemanticIdTransform`'s ``KJT -> KJT``: the ``items`` features' ids -> their pieces.

    fx-wrapped with a TorchScript body: it walks the batch's keys, which fx tracing cannot read, so the
    TorchScript export records one call and the scripted program transforms every batch.
    """
    stride = features.stride()
    values, lengths, weights = features.values(), features.lengths(), features.weights_or_none()
    keys = features.keys()
    missing: list[str] = []
    for f in items:
        if f not in keys:
            missing.append(f)
    if len(missing) > 0:
        raise KeyError(f"SemanticIdTransform: features {missing} are not in the input KJT (keys {keys})")
    out_keys: list[str] = []
    out_values: list[Tensor] = []
    out_lengths: list[Tensor] = []
    out_weights: list[Tensor] = []
    start = 0
    for i, (key, n) in enumerate(zip(keys, features.length_per_key())):
        v = values[start:start + n]
        ln = lengths[i * stride:(i + 1) * stride]
        w: Tensor | None = None
        if weights is not None:
            w = weights[start:start + n]
        start += n
        if key not in items or keep_item_id:
            out_keys.append(key)
            out_values.append(v.long())
            out_lengths.append(ln)
            if w is not None:
                out_weights.append(w)
        if key in items:
            pv, pl, owner = sid_pieces(v, ln, item_offsets, item_rows, id_offset)
            out_keys.append(f"{key}_sid" if keep_item_id else key)
            out_values.append(pv)
            out_lengths.append(pl)
            if w is not None:
                out_weights.append(w[owner])
    return KeyedJaggedTensor(
        keys=out_keys,
        values=torch.cat(out_values),
        lengths=torch.cat(out_lengths),
        weights=torch.cat(out_weights) if weights is not None else None,
        stride=stride,
    )
