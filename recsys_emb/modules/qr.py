"""Quotient-remainder compositional embeddings: two small tables per feature instead of one large one.

Paper: H.-J. M. Shi, D. Mudigere, M. Naumov, J. Yang, "Compositional Embeddings Using Complementary
Partitions for Memory-Efficient Recommendation Systems", KDD 2020 (arXiv:1909.02107).

What it does. A feature with ``V`` ids and ``m`` collisions gets a quotient table ``Q`` of
``ceil(V / m)`` rows and a remainder table ``R`` of ``min(m, V)`` rows. Id ``i`` looks up
``q = Q[i // m]`` and ``r = R[i % m]``. The two partitions of the ids (by quotient, by remainder) are
complementary: no two ids share BOTH rows, so every id keeps a vector of its own, unlike the hashing
trick. The vectors are combined by ``operation``:

* ``mult`` (the paper's default): ``e = q * r`` (element-wise), both tables ``D`` wide;
* ``add``: ``e = q + r``, both tables ``D`` wide;
* ``concat``: ``e = [q, r]``, each table ``D / 2`` wide (``D`` even), so that the output keeps the
  feature's dim ``D`` like every other layout (the paper's concat gives ``2 D``; halving keeps the
  model above unchanged and the bytes comparable).

Bytes of a feature: ``(ceil(V / m) + min(m, V)) * d_t * 4`` with ``d_t = D`` (mult, add) or ``D / 2``
(concat). The fewest rows are about ``2 sqrt(V)`` (``m`` near ``sqrt(V)``); ``m >= V`` is the plain
table plus one quotient row.

How it is built (as ``hash``/``unified``: techniques wrap the table, they never fork it):

* :class:`QuotientRemainder`, a parameter-free ``KJT -> KJT`` transform: raw ids of feature ``f`` ->
  quotient ids under the key ``f@q<s>`` and remainder ids under ``f@r<s>`` (``s`` a per-id slot, below);
  its collision counts are buffers;
* a stock ``EmbeddingBagCollection`` with two tables per feature, ``{prefix}{f}_q{suffix}`` and
  ``{prefix}{f}_r{suffix}``, inside :class:`~recsys_emb.modules.wrapper.TransformedEmbeddingBagCollection`
  (the wrapper sharder runs the transform before the input all-to-all; TorchRec shards the tables);
* a parameter-free combine into one output per feature (:class:`QREmbeddingBagCollection`,
  EBC-compatible: ``embedding_bag_configs()``, ``output_feature_dims()``).

A TorchScript export (fx tracing: the batch's keys are unknown there) records one call of
:func:`in_feature_order`, which the scripted program runs per batch, and takes the combine's column
order from the lookup's contract; the id-range check becomes an assert of the program.

Sizing (``QROptions``, exactly one of): ``collisions`` (``m``, one for all features or one per feature),
``budget_bytes`` or ``budget_fraction`` (of the plain tables' bytes). A budget is split over the
features in proportion to their vocabularies (as ``hash`` splits it, :func:`~recsys_emb.modules.unified.split_rows`;
a feature below its fewest rows is held there), and each feature gets the LARGEST ``m`` whose two
tables fit its share (:func:`collisions_for_budget`); rows left over by one feature go to the next.
For ``m > sqrt(V)`` the row count ``ceil(V/m) + m`` grows by 0 or 1 with ``m``, so every share from the
minimum up to ``V + 1`` rows is met exactly and the tables use the budget to within one row. The
budget's ``m`` is therefore large (a small quotient table, a big remainder table); an explicit
``collisions`` gives the paper's small-``m`` regime (e.g. ``m = 4``: a quotient table of ``V / 4`` rows).

Pooled bags. Composition is per id. With one id per bag (Criteo-style CTR data; sequence lookups,
where every id is a bag of its own) this is exactly what the module computes. For multi-id bags,
``add`` and ``concat`` are linear, so pooling each table first is still exact; ``mult`` is not:
``sum_i q_i * r_i != (sum_i q_i) * (sum_i r_i)``. ``id_slots: S`` makes ``mult`` exact for bags of up to
``S`` ids: the ``j``-th id of a bag goes to slot ``min(j, S - 1)``, every slot is a key of its own
sharing the feature's two tables (the batch size and the tables stay the same, so sharding is unchanged),
and the slots' products are summed. Ids past the last slot are pooled within it before the product.
``id_slots: 1`` (the default) pools each table over the bag and multiplies the pooled vectors, which
is what the authors' DLRM reference implementation does.

Deviations from the paper (docs/techniques/qr.md):

* init: the table with fewer rows (the quotient table on a tie) starts at the operation's identity (1
  for ``mult``, 0 for ``add``), the other table gets the group's init, so every id starts as its row
  in the big table; zero-initialised groups (LR / DeepFM first-order weights) therefore still train
  under ``mult``. The reference draws both tables uniformly. ``concat``: both halves get the group's init.
* ``concat`` halves the table dims (see above).
* only the quotient-remainder partition (two tables) is built; the paper's generalised complementary
  partitions (e.g. Chinese-remainder, k tables) and its path-based compositions are not.
* the reference applies QR only to features above a vocabulary threshold; here every feature of the
  group is split (put small features in another group).
* ids must lie in ``[0, V)`` (checked), as for a plain table.

Reduction: ``m >= V`` (one quotient row, an identity remainder table), the quotient row set to the
identity and the remainder table to a plain table's rows equals that plain ``EmbeddingBagCollection``
(exactly, with ``id_slots`` >= the longest bag for ``mult``; tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.modules.contract import output_feature_dims
from recsys_emb.modules.spec import Tables, register_technique
from recsys_emb.modules.tracing import assert_all, fx_tracing, tracing
from recsys_emb.modules.unified import split_rows
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection

OPERATIONS = ("mult", "add", "concat")
IDENTITY = {"mult": 1.0, "add": 0.0}  # the value the smaller table starts at
PARTS = ("q", "r")


# ------------------------------------------------------------------------------------------- sizes
def qr_rows(vocab: int, collisions: int) -> tuple[int, int]:
    """``(quotient rows, remainder rows)`` of a feature: ``(ceil(V / m), min(m, V))``."""
    if vocab < 1 or collisions < 1:
        raise ValueError(f"qr needs a vocabulary and a collision count >= 1, got V={vocab}, m={collisions}")
    return -(-vocab // collisions), min(collisions, vocab)


def table_units(features: Sequence[str], shared: Mapping[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """``(name stem, features)`` per pair of tables, in the order of their first feature: features sharing a
    data table (``shared``: feature -> table) share its quotient and remainder tables, named after it."""
    by_table: dict[str, list[str]] = {}
    for f in features:
        by_table.setdefault((shared or {}).get(f, f), []).append(f)
    return [(t if len(fs) > 1 else fs[0], fs) for t, fs in by_table.items()]


def _total(vocab: int, m: int) -> int:
    q, r = qr_rows(vocab, m)
    return q + r


def fewest_rows(vocab: int) -> int:
    """The fewest rows (both tables) of a feature over every ``m`` (about ``2 sqrt(V)``)."""
    s = math.isqrt(vocab)
    return min(_total(vocab, m) for m in (s, s + 1) if m <= vocab) if vocab > 1 else _total(vocab, 1)


def largest_collisions(vocab: int, max_rows: int) -> int | None:
    """The largest ``m`` in ``[1, V]`` whose two tables hold at most ``max_rows`` rows (None: none does).

    ``rows(m) = ceil(V/m) + min(m, V)`` is non-decreasing on ``m > isqrt(V)`` (there ``V/m - V/(m+1) < 1``,
    so the quotient loses at most one row per step), and the largest fitting ``m`` is never below
    ``isqrt(V)`` (``m' = ceil(V/m)`` has ``rows(m') <= rows(m)``): a binary search over ``(isqrt(V), V]``,
    then ``isqrt(V)`` itself.
    """
    if _total(vocab, vocab) <= max_rows:
        return vocab
    s = math.isqrt(vocab)
    lo, hi = s + 1, vocab  # rows(hi) > max_rows
    if lo <= hi and _total(vocab, lo) <= max_rows:
        while hi - lo > 1:  # invariant: rows(lo) <= max_rows < rows(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _total(vocab, mid) <= max_rows else (lo, mid)
        return lo
    return s if s >= 1 and _total(vocab, s) <= max_rows else None


def collisions_for_budget(vocab: Sequence[int], budget_bytes: int, row_bytes: int) -> list[int]:
    """Collision counts ``m`` per feature whose tables fill ``budget_bytes`` to within one row.

    The rows ``floor(budget / row_bytes)`` are split in proportion to the vocabularies (largest
    remainder, :func:`~recsys_emb.modules.unified.split_rows`; a feature whose share is below its fewest
    rows is held there); each feature takes the largest ``m`` that fits its share, then one pass hands
    the rows left over to the features in order (a larger ``m`` where it fits).

    Args:
        vocab: ``V`` per feature.
        budget_bytes: bytes of all the features' tables together.
        row_bytes: bytes of one row of either table (``d_t * 4``).

    Raises:
        ValueError: the budget is below the features' fewest rows together (the message says how many
            bytes would do).
    """
    total = budget_bytes // row_bytes
    fewest = [fewest_rows(v) for v in vocab]
    if total < sum(fewest):
        raise ValueError(
            f"embedding budget too small for qr: {budget_bytes} bytes are {total} rows of {row_bytes} bytes, fewer than "
            f"the fewest rows of the quotient + remainder tables ({sum(fewest)} rows, about 2 sqrt(V) per feature: "
            f"{sum(fewest) * row_bytes} bytes)"
        )
    shares = split_rows(budget_bytes, list(vocab), row_bytes, fewest)
    chosen: list[int] = []
    for v, share in zip(vocab, shares):
        m = largest_collisions(v, share)
        assert m is not None  # share >= fewest_rows(v)
        chosen.append(m)
    left = total - sum(_total(v, m) for v, m in zip(vocab, chosen))
    for i, v in enumerate(vocab):
        used = _total(v, chosen[i])
        m = largest_collisions(v, used + left)
        if m is not None and m > chosen[i]:
            left -= _total(v, m) - used
            chosen[i] = m
    return chosen


# ---------------------------------------------------------------------------------------- transform
@torch.fx.wrap
def in_feature_order(features: KeyedJaggedTensor, wanted: list[str]) -> tuple[Tensor, Tensor]:
    """(values (N,), lengths (F*B,)) of a KJT, key-major in ``wanted`` order (absent keys -> empty bags).

    fx-wrapped with a TorchScript body: it reads the batch's keys, which fx tracing cannot, so the
    TorchScript export records one call and the scripted program reorders every batch.
    """
    keys = features.keys()
    if keys == wanted:
        return features.values(), features.lengths()
    unknown: list[str] = []
    for k in keys:
        if k not in wanted:
            unknown.append(k)
    if len(unknown) > 0:
        raise KeyError(f"QuotientRemainder: input features {unknown} are not configured (known: {wanted})")
    jts = features.to_dict()
    values, lengths, stride = features.values(), features.lengths(), features.stride()
    out_values: list[Tensor] = []
    out_lengths: list[Tensor] = []
    for f in wanted:
        if f in jts:
            out_values.append(jts[f].values())
            out_lengths.append(jts[f].lengths())
        else:
            out_values.append(values.new_zeros(0))
            out_lengths.append(lengths.new_zeros(stride))
    return torch.cat(out_values), torch.cat(out_lengths)


class QuotientRemainder(nn.Module):
    """Parameter-free ``KJT -> KJT``: raw ids -> quotient ids (keys ``f@q<s>``) and remainder ids (``f@r<s>``).

    Output keys: ``f@q0 .. f@q<S-1>`` for every feature (in ``features`` order), then the same with
    ``r``; the stride is the input's. Slot ``s`` of a bag holds its ``s``-th id (ids past the last slot
    all go to the last), so with ``slots = 1`` every output bag holds the bag's ids in order. A feature
    missing from the input gives empty bags; an unknown key, an id outside ``[0, V)``, per-id weights
    and variable-batch KJTs are errors.

    Shapes: B batch (stride), F features, S slots, N ids in the batch.

    Args:
        features: feature names.
        vocab_sizes: (F,) ``V`` per feature.
        collisions: (F,) ``m`` per feature.
        slots: ``S`` (1 unless per-id ``mult`` composition of multi-id bags is asked for).

    Example::

        t = QuotientRemainder(["a", "b"], vocab_sizes=[10, 4], collisions=[3, 2])
        kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([7, 8, 3]), torch.tensor([2, 0, 1, 0]))
        #        batch 0   batch 1
        # a      [7, 8]    []
        # b      [3]       []
        out = t(kjt)  # a@q0: [2, 2], [];  b@q0: [1], [];  a@r0: [1, 2], [];  b@r0: [1], []
    """

    def __init__(self, features: Sequence[str], vocab_sizes: Sequence[int], collisions: Sequence[int], slots: int = 1) -> None:
        super().__init__()
        if not features or not (len(features) == len(vocab_sizes) == len(collisions)):
            raise ValueError("features, vocab_sizes and collisions must be non-empty and of equal length")
        if len(set(features)) != len(features):
            raise ValueError(f"duplicate feature names in {list(features)}")
        for f, v, m in zip(features, vocab_sizes, collisions):
            qr_rows(int(v), int(m))  # checks both >= 1
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.features = list(features)
        self.slots = int(slots)
        self._index = {f: i for i, f in enumerate(self.features)}
        self.output_keys = [f"{f}@{p}{s}" for p in PARTS for f in self.features for s in range(self.slots)]
        # CPU buffers even when the model is built on `meta` (DMP would zero-fill meta buffers); forward moves
        # them to the ids' device. Not persistent: they follow from the config.
        self.register_buffer("collisions", torch.tensor([int(m) for m in collisions], dtype=torch.int64), persistent=False)
        self.register_buffer("vocab_sizes", torch.tensor([int(v) for v in vocab_sizes], dtype=torch.int64), persistent=False)

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        fx = fx_tracing()  # TorchScript export: the KJT is a proxy (its batches are unweighted, fixed-batch KJTs)
        if not fx and features.variable_stride_per_key():
            raise NotImplementedError("QuotientRemainder does not support variable-batch (VBE) KJTs")
        if not fx and features.weights_or_none() is not None:
            raise ValueError("qr: per-id weights are not supported (the tables are unweighted)")
        stride = features.stride()
        values, lengths = in_feature_order(features, self.features)  # (N,), (F*B,)
        device = values.device
        n, num_bags = values.numel(), len(self.features) * stride
        ids = values.to(torch.int64)
        bag = torch.repeat_interleave(torch.arange(num_bags, device=device), lengths.to(torch.int64), output_size=n)  # (N,)
        feature = bag // stride  # (N,)
        vocab = self.vocab_sizes.to(device)[feature]  # (N,)
        bad = (ids < 0) | (ids >= vocab)
        if tracing() or fx:  # export / TorchScript: the check is a runtime assert of the program
            assert_all(~bad, "qr: an id is outside its feature's vocabulary [0, V)", scripted=fx)
        elif bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"qr: id {int(ids[i])} of feature '{self.features[int(feature[i])]}' is outside its "
                             f"vocabulary [0, {int(vocab[i])})")
        m = self.collisions.to(device)[feature]  # (N,)
        quotient = torch.div(ids, m, rounding_mode="floor")  # (N,) ids are >= 0: i // m
        remainder = ids - quotient * m  # (N,) i % m
        if self.slots == 1:  # keys f@q0 (F of them) then f@r0: the input's layout twice
            out_values = torch.cat([quotient, remainder]).to(values.dtype)  # (2N,)
            out_lengths = torch.cat([lengths, lengths])  # (2*F*B,)
        else:
            lengths64 = lengths.to(torch.int64)
            start = torch.cumsum(lengths64, 0) - lengths64  # (F*B,) first id of every bag
            slot = (torch.arange(n, device=device) - start[bag]).clamp(max=self.slots - 1)  # (N,)
            key = (feature * self.slots + slot) * stride + bag % stride  # (N,) (feature, slot, example), key-major
            order = torch.sort(key, stable=True).indices  # (N,) ids of a bag keep their order
            counts = torch.zeros(num_bags * self.slots, dtype=torch.int64, device=device).index_add_(
                0, key, torch.ones_like(key))  # (F*S*B,)
            out_values = torch.cat([quotient[order], remainder[order]]).to(values.dtype)  # (2N,)
            out_lengths = torch.cat([counts, counts]).to(lengths.dtype)  # (2*F*S*B,)
        return KeyedJaggedTensor(keys=self.output_keys, values=out_values, lengths=out_lengths, stride=stride)


# ------------------------------------------------------------------------------------------- module
class QREmbeddingBagCollection(nn.Module):
    """EBC-compatible quotient-remainder embeddings: two stock tables per feature, one output per feature.

    Shapes: B batch, F features, S slots, D output dim (``d_t = D``, or ``D / 2`` for ``concat``).

    Args:
        features: feature names (output order).
        vocab_sizes: ``V`` per feature.
        collisions: ``m`` per feature.
        dim: output dim ``D`` of every feature.
        operation: ``mult`` | ``add`` | ``concat``.
        id_slots: per-id slots for ``mult`` over multi-id bags (module docstring); ignored otherwise.
        prefix, suffix: table names are ``{prefix}{f}_q{suffix}`` and ``{prefix}{f}_r{suffix}``.
        init: the group's table init keyword arguments (``weight_init_min/max`` or ``init_fn``).
        pooling: bag pooling (SUM: the composition above assumes it).
        pre: a parameter-free ``KJT -> KJT`` transform before the split (a chain's pre-transform).
        device: table device (``meta`` for DistributedModelParallel); the transform stays on the CPU.
        shared: feature -> the data table it shares with other features (a schema's ``table:``): those
            features look up the same two tables ``{prefix}{table}_q{suffix}`` / ``_r`` (same ``V`` and ``m``).

    Example::

        qr = QREmbeddingBagCollection(["user", "item"], [1000, 50], [32, 50], dim=8)
        kjt = KeyedJaggedTensor.from_lengths_sync(["user", "item"], torch.tensor([3, 4, 40]), torch.tensor([1, 0, 1, 1]))
        #          batch 0   batch 1
        # user     [3]       []
        # item     [4]       [40]
        out = qr(kjt)  # KeyedTensor keys user, item; values (2, 16); user 3 = Q_user[0] * R_user[3]
    """

    def __init__(
        self,
        features: Sequence[str],
        vocab_sizes: Sequence[int],
        collisions: Sequence[int],
        dim: int,
        *,
        operation: str = "mult",
        id_slots: int = 1,
        prefix: str = "",
        suffix: str = "",
        init: Mapping[str, Any] | None = None,
        pooling: PoolingType = PoolingType.SUM,
        pre: nn.Module | None = None,
        device: torch.device | str | None = None,
        shared: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        if operation == "concat" and (dim < 2 or dim % 2):
            raise ValueError(f"qr operation 'concat' splits the dim into two equal halves: dim must be even, got {dim}")
        if pooling != PoolingType.SUM:
            raise ValueError(f"qr composes SUM-pooled rows; the tables use {pooling.name}")
        self.feature_names = list(features)
        self.dim, self.operation = int(dim), operation
        self.slots = int(id_slots) if operation == "mult" else 1
        self.table_dim = self.dim // 2 if operation == "concat" else self.dim
        vocab = dict(zip(self.feature_names, (int(v) for v in vocab_sizes)))
        self.collisions = dict(zip(self.feature_names, (int(m) for m in collisions)))
        self.vocab_sizes = vocab
        transform = QuotientRemainder(self.feature_names, list(vocab.values()), list(self.collisions.values()), self.slots)
        tables = []
        for p, part in enumerate(PARTS):
            for stem, fs in table_units(self.feature_names, shared):
                sizes = {(vocab[f], self.collisions[f]) for f in fs}
                if len(sizes) > 1:
                    raise ValueError(f"qr: features {fs} share table '{stem}' but differ in (vocabulary, collisions): "
                                     f"{sorted(sizes)}")
                rows = qr_rows(vocab[fs[0]], self.collisions[fs[0]])
                table_init = dict(init or {})
                identity = (part == "q") == (rows[0] <= rows[1])  # the smaller table (the quotient one on a tie)
                if operation in IDENTITY and identity:
                    table_init = {"weight_init_min": IDENTITY[operation], "weight_init_max": IDENTITY[operation]}
                tables.append(EmbeddingBagConfig(
                    name=f"{prefix}{stem}_{part}{suffix}", embedding_dim=self.table_dim, num_embeddings=rows[p],
                    feature_names=[f"{f}@{part}{s}" for f in fs for s in range(self.slots)], pooling=pooling, **table_init,
                ))
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"qr: two tables would share a name in {names}; rename the features")
        self.lookup = TransformedEmbeddingBagCollection(transform if pre is None else nn.Sequential(pre, transform), tables,
                                                        device=device)
        self._columns: dict[tuple[tuple[str, ...], torch.device], Tensor | None] = {}

    # -- contract -------------------------------------------------------------------------------
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The quotient tables (one per feature), then the remainder tables."""
        return self.lookup.embedding_bag_configs()

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return [(f, self.dim) for f in self.feature_names]

    def is_weighted(self) -> bool:
        return False

    # -- forward --------------------------------------------------------------------------------
    def _column_index(self, pooled: KeyedTensor, device: torch.device) -> Tensor | None:
        """Columns of ``pooled`` in the canonical order (part, feature, slot), or None when already so.

        A sharded lookup may return its keys grouped by sharding type, not in table order.
        """
        traced = tracing() or fx_tracing()
        if fx_tracing():  # TorchScript export: the (unsharded) lookup's keys from its contract, constants of the program
            dims = output_feature_dims(self.lookup)
            keys, sizes = tuple(k for k, _ in dims), [d for _, d in dims]
        else:
            keys, sizes = tuple(pooled.keys()), pooled.length_per_key()
        cached = self._columns.get((keys, device), False)
        if cached is not False and not traced:  # a traced index is a fake tensor / proxy: never cached
            return cached  # type: ignore[return-value]
        offsets, start = {}, 0
        for k, n in zip(keys, sizes):
            offsets[k] = start
            start += n
        want = [f"{f}@{p}{s}" for p in PARTS for f in self.feature_names for s in range(self.slots)]
        columns = [c for k in want for c in range(offsets[k], offsets[k] + self.table_dim)]
        index = None if columns == list(range(len(columns))) else torch.tensor(columns, device=device)
        if not traced:
            self._columns[(keys, device)] = index
        return index

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.lookup(features)
        values = pooled.values()  # (B, 2 * F * S * d_t)
        index = self._column_index(pooled, values.device)
        if index is not None:
            values = values.index_select(1, index)
        batch, f, s = values.shape[0], len(self.feature_names), self.slots
        q, r = values.reshape(batch, 2, f, s, self.table_dim).unbind(1)  # (B, F, S, d_t) each
        if self.operation == "mult":
            out = (q * r).sum(2)  # (B, F, D): per slot (per id when S >= bag length), then summed
        elif self.operation == "add":
            out = q.sum(2) + r.sum(2)  # (B, F, D)
        else:
            out = torch.cat([q.sum(2), r.sum(2)], dim=2)  # (B, F, D)
        return KeyedTensor(keys=list(self.feature_names), length_per_key=[self.dim] * f, values=out.reshape(batch, f * self.dim))


# ------------------------------------------------------------------------------------ config + build
@dataclass
class QROptions:
    """``qr: {...}``: quotient-remainder tables per feature. Size by exactly one of the three."""

    collisions: int | list[int] | None = None  # m per feature (an int, or one per feature): ids sharing a quotient row
    budget_bytes: int | None = None  # total bytes of the group's tables, split over the features by vocabulary
    budget_fraction: float | None = None  # budget as a fraction of the plain tables' bytes
    operation: str = "mult"  # mult | add | concat: how the quotient and remainder vectors combine
    id_slots: int = 1  # mult over multi-id bags: per-id products for bags of up to this many ids (1 = pool, then multiply)

    def __post_init__(self) -> None:
        sizing = [n for n in ("collisions", "budget_bytes", "budget_fraction") if getattr(self, n) is not None]
        if len(sizing) != 1:
            raise ValueError(f"qr needs exactly one of collisions, budget_bytes, budget_fraction (got {sizing or 'none'})")
        if self.collisions is not None:
            ms = self.collisions if isinstance(self.collisions, list) else [self.collisions]
            if not ms or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
                raise ValueError(f"collisions must be a positive integer or a list of them, got {self.collisions!r}")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {self.budget_bytes}")
        if self.budget_fraction is not None and self.budget_fraction <= 0:
            raise ValueError(f"budget_fraction must be > 0, got {self.budget_fraction}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.id_slots < 1:
            raise ValueError(f"id_slots must be >= 1, got {self.id_slots}")


def resolve_collisions(options: QROptions, vocab: Mapping[str, int], dim: int, shared: Mapping[str, str] | None = None,
                       bytes_per_value: int = 4) -> list[int]:
    """``m`` per feature (in ``vocab`` order) from ``options``: explicit, or the budget's (:func:`collisions_for_budget`,
    a table that several features share counted once)."""
    features = list(vocab)
    if options.collisions is not None:
        ms = options.collisions if isinstance(options.collisions, list) else [options.collisions] * len(features)
        if len(ms) != len(features):
            raise ValueError(f"qr.collisions has {len(ms)} entries for {len(features)} features {features}")
        return [int(m) for m in ms]
    units = table_units(features, shared)
    sizes = [vocab[fs[0]] for _, fs in units]
    table_dim = dim // 2 if options.operation == "concat" else dim
    plain = sum(sizes) * dim * bytes_per_value
    budget = options.budget_bytes if options.budget_bytes is not None else int(options.budget_fraction * plain)  # type: ignore[operator]
    per_unit = collisions_for_budget(sizes, budget, table_dim * bytes_per_value)
    m_of = {f: m for (_, fs), m in zip(units, per_unit) for f in fs}
    return [m_of[f] for f in features]


@register_technique("qr", "layout", QROptions, doc="quotient-remainder tables per feature (Shi et al. 2020)")
def build_qr(options: QROptions, tables: Tables) -> QREmbeddingBagCollection:
    """Chain layout ``qr: {...}`` (see :class:`QROptions`)."""
    vocab = {f: int(tables.vocab[f]) for f in tables.features}
    if options.operation == "concat" and (tables.dim < 2 or tables.dim % 2):
        raise ValueError(f"operation 'concat' splits the dim into two equal halves: dim must be even, got {tables.dim}")
    shared = tables.shared_keys()  # features sharing a data table share its two tables
    return QREmbeddingBagCollection(
        tables.features, list(vocab.values()), resolve_collisions(options, vocab, tables.dim, shared), tables.dim,
        operation=options.operation, id_slots=options.id_slots, prefix=tables.prefix, suffix=tables.suffix, init=tables.init,
        pre=tables.transform(), device=tables.device, shared=shared,
    )
