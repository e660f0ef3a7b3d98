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
_SMALL_VOCAB = 1 << 16  # up to this size polars' replace_strict is fastest; above, sorted search
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def stable_hash(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer of 32-bit values (see the module docstring).

    Args:
        values: ``(n,)`` unsigned integers below ``2**32``.

    Returns:
        ``(n,)`` uint64 hashes.
    """
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


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

    def update(self, sparse: pl.DataFrame) -> None:
        """Add the values of one chunk (one UInt32 column per feature, null = missing)."""
        for name in self.features:
            counts = (
                sparse.get_column(name).drop_nulls().value_counts(name="count")
                .rename({name: "value"}).with_columns(pl.col("count").cast(pl.Int64))
            )
            self._pending[name].append(counts)
            self._pending_rows[name] += counts.height
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
        self._sorted: list[tuple[np.ndarray, np.ndarray]] = []
        for v in self.values:
            order = np.argsort(v, kind="stable")
            self._sorted.append((v[order], (order + _FIRST_ID).astype(np.int32)))

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
        out = np.empty(values.shape, dtype=np.int32)  # (n, F)
        small = [j for j, v in enumerate(self.values) if len(v) <= _SMALL_VOCAB]
        if small:
            frame = pl.DataFrame({str(j): values[:, j] for j in small})
            out[:, small] = frame.select(
                pl.col(str(j)).replace_strict(
                    pl.Series(self.values[j], dtype=pl.UInt32),
                    pl.Series(np.arange(_FIRST_ID, len(self.values[j]) + _FIRST_ID,
                                        dtype=np.int32)),
                    default=OOV_ID, return_dtype=pl.Int32)
                for j in small
            ).to_numpy()  # (n, len(small))
        for j in range(len(self.features)):
            if len(self.values[j]) > _SMALL_VOCAB:
                out[:, j] = self._encode_large(values[:, j], j)
        out[missing] = MISSING_ID
        return out

    def _encode_large(self, values: np.ndarray, j: int) -> np.ndarray:
        keys, ids = self._sorted[j]
        uniq, inverse = np.unique(values, return_inverse=True)  # sorted queries: cache-friendly
        pos = np.minimum(np.searchsorted(keys, uniq), len(keys) - 1)
        found = np.where(keys[pos] == uniq, ids[pos], OOV_ID).astype(np.int32)
        return found[inverse.reshape(-1)]

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
