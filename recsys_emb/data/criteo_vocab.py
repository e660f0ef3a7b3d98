"""Categorical encodings for prepared Criteo data: frequency vocabularies and stable hashing.

Categorical values arrive as unsigned 32-bit integers (the 8 hex digits of the raw value, see
:mod:`recsys_emb.data.criteo_reader`), null when missing. Two encodings map them to table rows:

- **vocab**: per feature, values seen at least ``min_count`` times get ids ``2, 3, ...`` in order of
  descending count, ties broken by ascending value (the same order as the lower-case hex
  strings). Id 0 is "missing", id 1 is "out of vocabulary" (rarer or unseen values).
- **hash**: id 0 is "missing", otherwise ``1 + stable_hash(value) % hash_buckets`` where
  ``stable_hash`` is the SplitMix64 finalizer (Steele, Lea & Flood, 2014) of the 32-bit value::

      z = (v + 0x9E3779B97F4A7C15) mod 2**64
      z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64
      z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2**64
      stable_hash(v) = z ^ (z >> 31)

  i.e. the first output of a SplitMix64 generator seeded with ``v``. It does not depend on the
  Python version, process or platform (unlike ``hash()``).

Vocabulary directory (``DIR/vocab/``): ``vocab.json`` describing the encoding, and for the vocab
encoding one ``<feature>.parquet`` per feature with columns ``value`` (8 lower-case hex digits)
and ``count`` (training count), row ``i`` holding id ``i + 2``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_emb.utils import atomic_save_json

VOCAB_FORMAT_VERSION = 1
MISSING_ID = 0
OOV_ID = 1
_FIRST_ID = 2
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def stable_hash(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer of 32-bit values (see the module docstring).

    Args:
        values: ``(n,)`` unsigned integers below ``2**32``.

    Returns:
        ``(n,)`` uint64 hashes.
    """
    z = values.astype(np.uint64)
    z += np.uint64(0x9E3779B97F4A7C15)  # numpy uint64 arithmetic wraps mod 2**64
    t = z >> np.uint64(30)
    z ^= t
    z *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= np.uint64(0x94D049BB133111EB)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def hex_strings(values: np.ndarray) -> pl.Series:
    """Format 32-bit values as 8 lower-case hex digits.

    Args:
        values: ``(n,)`` unsigned integers below ``2**32``.

    Returns:
        String series of length n.
    """
    octets = values.astype(">u4").view(np.uint8).reshape(-1, 4)  # (n, 4) big-endian bytes
    digits = np.empty((len(values), 8), dtype=np.uint8)  # (n, 8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    return pl.Series("value", digits.view("S8").ravel()).cast(pl.String)


class ValueCounter:
    """Counts non-missing categorical values per feature, chunk by chunk.

    Chunk counts are merged lazily (when the pending counts outgrow the merged table), so the
    cost stays proportional to the number of distinct values, not to the number of chunks.

    Args:
        features: names of the UInt32 columns to count.
    """

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)
        self._merged: dict[str, pl.DataFrame | None] = {f: None for f in self.features}
        self._pending: dict[str, list[pl.DataFrame]] = {f: [] for f in self.features}
        self._pending_rows = dict.fromkeys(self.features, 0)

    def chunk_counts(self, sparse: pl.DataFrame) -> list[pl.DataFrame]:
        """Value counts of one chunk, per feature (thread-safe; pass the result to :meth:`add`).

        Args:
            sparse: one UInt32 column per feature, null = missing.
        """
        return [
            sparse.get_column(name).drop_nulls().value_counts(name="count")
            .rename({name: "value"}).with_columns(pl.col("count").cast(pl.Int64))
            for name in self.features
        ]

    def add(self, counts: list[pl.DataFrame]) -> None:
        """Add the output of :meth:`chunk_counts` for one chunk."""
        for name, chunk in zip(self.features, counts, strict=True):
            self._pending[name].append(chunk)
            self._pending_rows[name] += chunk.height
            merged = self._merged[name]
            if self._pending_rows[name] > max(1 << 20, 0 if merged is None else merged.height):
                self._merge(name)

    def counts(self, name: str) -> pl.DataFrame:
        """All counts of one feature: columns ``value`` (UInt32) and ``count`` (Int64)."""
        self._merge(name)
        merged = self._merged[name]
        if merged is None:
            return pl.DataFrame(schema={"value": pl.UInt32, "count": pl.Int64})
        return merged

    def _merge(self, name: str) -> None:
        frames = [f for f in [self._merged[name], *self._pending[name]] if f is not None]
        if frames:
            self._merged[name] = (
                pl.concat(frames).group_by("value").agg(pl.col("count").sum())
            )
        self._pending[name] = []
        self._pending_rows[name] = 0


class _IdTable:
    """Open-addressing hash table (linear probing) from uint32 values to ids, one per feature.

    All features' tables live in one array (feature ``f`` owns slots ``offset[f] ..
    offset[f] + 2**bits[f]``, at most half full), so a whole ``(n, F)`` chunk is looked up with
    a few vectorised numpy passes instead of one dictionary lookup per value. Slot 0 of ``ids``
    means empty (real ids are >= 2).

    Args:
        keys: per feature, ``(V_f,)`` distinct uint32 values.
        ids: per feature, ``(V_f,)`` int32 ids (>= 2) of those values.
    """

    _GOLDEN = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, keys: Sequence[np.ndarray], ids: Sequence[np.ndarray]) -> None:
        bits = [max(4, int(len(k) * 2 - 1).bit_length()) for k in keys]  # load factor <= 1/2
        sizes = [1 << b for b in bits]
        self.shift = np.array([64 - b for b in bits], dtype=np.uint64)  # (F,)
        self.mask = np.array([size - 1 for size in sizes], dtype=np.int64)  # (F,)
        self.offset = np.cumsum([0, *sizes[:-1]]).astype(np.int64)  # (F,)
        self.keys = np.zeros(sum(sizes), dtype=np.uint32)
        self.ids = np.zeros(sum(sizes), dtype=np.int32)
        for f, (k, i) in enumerate(zip(keys, ids, strict=True)):
            self._insert(f, np.asarray(k, dtype=np.uint32), np.asarray(i, dtype=np.int32))

    def _slots(self, values: np.ndarray, f: int | slice) -> np.ndarray:
        """Home slot of each value: Fibonacci hashing into the feature's table."""
        h = values.astype(np.uint64)
        h *= self._GOLDEN  # wraps mod 2**64
        h >>= self.shift[f]
        slots = h.view(np.int64)  # < 2**63 after the shift
        slots += self.offset[f]
        return slots

    def _insert(self, f: int, keys: np.ndarray, ids: np.ndarray) -> None:
        pos = self._slots(keys, f)  # (V,)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            free = self.ids[p] == 0
            slots, first = np.unique(p[free], return_index=True)  # one winner per free slot
            winners = todo[free][first]
            self.keys[slots] = keys[winners]
            self.ids[slots] = ids[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            todo = todo[~placed[todo]]
            base = self.offset[f]
            pos[todo] = base + ((pos[todo] - base + 1) & self.mask[f])  # probe the next slot

    def lookup(self, values: np.ndarray, skip: np.ndarray, default: int) -> np.ndarray:
        """Ids of ``(n, F)`` uint32 values; ``default`` where a value is not in the table.

        Entries where ``skip`` is True (missing values) are not looked up and get ``default``.
        """
        pos = self._slots(values, slice(None))  # (n, F)
        found = self.ids[pos]  # (n, F)
        taken = found != 0
        hit = self.keys[pos] == values
        hit &= taken
        out = np.where(hit, found, np.int32(default))  # (n, F)
        taken &= ~hit
        taken &= ~skip  # slot taken by another value: probe the next slots
        index = np.flatnonzero(taken)
        if index.size == 0:
            return out
        n_features = values.shape[1]
        flat_out = out.reshape(-1)
        pos, wanted = pos.reshape(-1)[index], values.reshape(-1)[index]
        while index.size:
            base, mask = self.offset[index % n_features], self.mask[index % n_features]
            pos = base + ((pos - base + 1) & mask)
            found = self.ids[pos]
            hit = (self.keys[pos] == wanted) & (found != 0)
            flat_out[index[hit]] = found[hit]
            go_on = (found != 0) & ~hit
            index, pos, wanted = index[go_on], pos[go_on], wanted[go_on]
        return out


class VocabEncoder:
    """Frequency vocabularies: id 0 missing, 1 OOV, 2.. kept values by descending count.

    Args:
        features: feature names, in column order.
        values: per feature, ``(V_f,)`` uint32 kept values in id order (id = index + 2).
        counts: per feature, ``(V_f,)`` int64 training counts of those values.
        min_count: the threshold the vocabulary was built with.
        distinct: per feature, number of distinct values counted (before the threshold).
    """

    encoding = "vocab"
    hash_buckets: int | None = None

    def __init__(self, features: Sequence[str], values: Sequence[np.ndarray],
                 counts: Sequence[np.ndarray], min_count: int,
                 distinct: Sequence[int] | None = None) -> None:
        self.features = list(features)
        self.values = [np.asarray(v, dtype=np.uint32) for v in values]
        self.counts = [np.asarray(c, dtype=np.int64) for c in counts]
        self.min_count = min_count
        self.distinct = list(distinct) if distinct is not None else [len(v) for v in self.values]
        self._table = _IdTable(
            self.values, [np.arange(_FIRST_ID, len(v) + _FIRST_ID, dtype=np.int32)
                          for v in self.values]
        )

    @classmethod
    def from_counter(cls, counter: ValueCounter, min_count: int) -> VocabEncoder:
        """Build from counted values, keeping those seen at least ``min_count`` times."""
        values, counts, distinct = [], [], []
        for name in counter.features:
            table = counter.counts(name)
            kept = table.filter(pl.col("count") >= min_count).sort(
                ["count", "value"], descending=[True, False]
            )
            values.append(kept.get_column("value").to_numpy())
            counts.append(kept.get_column("count").to_numpy())
            distinct.append(table.height)
        return cls(counter.features, values, counts, min_count, distinct)

    @property
    def vocab_sizes(self) -> list[int]:
        """Rows each feature's table needs (kept values + missing + OOV)."""
        return [len(v) + _FIRST_ID for v in self.values]

    def encode(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Map a chunk of values to ids.

        Args:
            values: ``(n, F)`` uint32 categorical values (anything where missing).
            missing: ``(n, F)`` bool, True where the value is missing.

        Returns:
            ``(n, F)`` int32 ids.
        """
        out = self._table.lookup(values, missing, OOV_ID)  # (n, F)
        out[missing] = MISSING_ID
        return out

    def save(self, vocab_dir: str | os.PathLike[str], info: dict[str, Any]) -> None:
        """Write ``<feature>.parquet`` files and ``vocab.json`` into ``vocab_dir``.

        Args:
            vocab_dir: target directory (created).
            info: extra provenance for ``vocab.json`` (e.g. sources, counted rows).
        """
        vocab_dir = Path(vocab_dir)
        vocab_dir.mkdir(parents=True, exist_ok=True)
        for name, values, counts in zip(self.features, self.values, self.counts, strict=True):
            pl.DataFrame({"value": hex_strings(values), "count": counts}).write_parquet(
                vocab_dir / f"{name}.parquet"
            )
        atomic_save_json(vocab_dir / "vocab.json", {
            "format_version": VOCAB_FORMAT_VERSION, "categorical_encoding": self.encoding,
            "min_count": self.min_count, "hash_buckets": None, "sparse_features": self.features,
            "vocab_sizes": self.vocab_sizes, "distinct_values": self.distinct, **info,
        })


class HashEncoder:
    """Stable hashing: id 0 missing, else ``1 + stable_hash(value) % hash_buckets``.

    Args:
        features: feature names, in column order.
        hash_buckets: number of hashed rows per feature (ids 1..hash_buckets).
    """

    encoding = "hash"
    min_count: int | None = None

    def __init__(self, features: Sequence[str], hash_buckets: int) -> None:
        if not 1 <= hash_buckets < 2**31 - 1:
            raise ValueError(f"hash_buckets must be in [1, 2**31 - 2], got {hash_buckets}")
        self.features = list(features)
        self.hash_buckets = hash_buckets

    @property
    def vocab_sizes(self) -> list[int]:
        """Rows each feature's table needs (hash buckets + missing)."""
        return [self.hash_buckets + 1] * len(self.features)

    def encode(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Map a chunk of values to ids; see :meth:`VocabEncoder.encode`."""
        buckets = stable_hash(values) % np.uint64(self.hash_buckets)  # (n, F)
        out = (buckets + np.uint64(1)).astype(np.int32)  # (n, F)
        out[missing] = MISSING_ID
        return out

    def save(self, vocab_dir: str | os.PathLike[str], info: dict[str, Any]) -> None:
        """Write ``vocab.json`` (hashing needs no value lists) into ``vocab_dir``."""
        Path(vocab_dir).mkdir(parents=True, exist_ok=True)
        atomic_save_json(Path(vocab_dir) / "vocab.json", {
            "format_version": VOCAB_FORMAT_VERSION, "categorical_encoding": self.encoding,
            "min_count": None, "hash_buckets": self.hash_buckets,
            "hash": "1 + splitmix64(uint32(hex value)) % hash_buckets",
            "sparse_features": self.features, "vocab_sizes": self.vocab_sizes, **info,
        })


def load_encoder(prepared_dir: str | os.PathLike[str],
                 features: Sequence[str]) -> VocabEncoder | HashEncoder:
    """Load the encoding saved in ``prepared_dir/vocab`` (for ``--vocab-from``).

    Args:
        prepared_dir: a directory written by ``recsys-emb prepare criteo``.
        features: the categorical feature names expected, in order.

    Returns:
        The saved encoder; raises ValueError (naming the file) when the vocabulary is invalid.
    """
    vocab_dir = Path(prepared_dir) / "vocab"
    info_path = vocab_dir / "vocab.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: --vocab-from needs a directory written "
                                "by `recsys-emb prepare criteo`")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version") != VOCAB_FORMAT_VERSION:
        raise ValueError(f"{info_path}: format_version {info.get('format_version')!r} is not "
                         f"supported (expected {VOCAB_FORMAT_VERSION})")
    if info.get("sparse_features") != list(features):
        raise ValueError(f"{info_path}: sparse_features {info.get('sparse_features')} do not match "
                         f"{list(features)}")
    if info.get("categorical_encoding") == "hash":
        return HashEncoder(features, int(info["hash_buckets"]))
    if info.get("categorical_encoding") != "vocab":
        raise ValueError(f"{info_path}: unknown categorical_encoding "
                         f"{info.get('categorical_encoding')!r} (expected 'vocab' or 'hash')")
    values, counts = [], []
    for name, size in zip(features, info["vocab_sizes"], strict=True):
        path = vocab_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (listed in {info_path})")
        table = pl.read_parquet(path)
        if table.columns != ["value", "count"] or table.height != size - _FIRST_ID:
            raise ValueError(f"{path}: expected columns ['value', 'count'] and {size - _FIRST_ID} "
                             f"rows, got {table.columns} and {table.height} rows")
        raw = table.get_column("value")
        parsed = raw.str.to_integer(base=16, strict=False)
        bad = ~raw.str.contains("^[0-9a-f]{8}$").fill_null(False)
        if bad.any():
            row = int(bad.arg_max() or 0)
            raise ValueError(f"{path}: row {row}: value {raw[row]!r} is not 8 lower-case hex digits")
        if parsed.n_unique() != table.height:
            raise ValueError(f"{path}: duplicated values")
        values.append(parsed.cast(pl.UInt32).to_numpy())
        counts.append(table.get_column("count").cast(pl.Int64).to_numpy())
    return VocabEncoder(features, values, counts, int(info["min_count"]),
                        info.get("distinct_values"))
