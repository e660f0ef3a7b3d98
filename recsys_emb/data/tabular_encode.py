"""Encodings of a schema'd table (``recsys-emb prepare table``): vocabularies, hashing, quantile buckets, standardisation.

Everything fitted on the TRAINING file is saved in the prepared folder's ``vocab/`` and reused as is for
validation / test / ``evaluate`` (``vocab_from``), exactly like Criteo's vocabulary:

- ``vocab/vocab.json``: per table its encoding (``vocab``: ``min_count``, ``size``; ``hash``:
  ``hash_buckets``; ``bucket``: quantile edges), and which table each sparse feature uses;
- ``vocab/<table>.parquet`` (vocabularies): columns ``value`` (string) and ``count``, row ``i`` holding
  id ``i + 2`` (ids by descending training count, ties by value, as in
  :mod:`recsys_emb.data.criteo_vocab`; id 0 = missing, 1 = out of vocabulary);
- ``vocab/transforms.json``: per standardised column its training ``mean`` and ``std`` (population);
- ``vocab/schema.yaml``: the schema the folder was prepared with.

Hashing of a string value: ``1 + splitmix64(fnv1a64(utf-8 bytes)) % hash_buckets`` (stable across
processes and platforms; 0 = missing). Quantile buckets: edges are the distinct ``1/B .. (B-1)/B``
quantiles of a 2**20-value uniform reservoir sample of the training values (seeded, so reproducible);
id = 2 + number of edges <= x (0 = missing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_emb.data.criteo_vocab import stable_hash
from recsys_emb.data.schema import SparseFeature, TableSchema, schema_dict
from recsys_emb.data.tabular_reader import numeric_expr
from recsys_emb.utils import atomic_save_json, atomic_write_text

VOCAB_FORMAT = "table_schema/1"
MISSING_ID, OOV_ID, FIRST_ID = 0, 1, 2
RESERVOIR = 1 << 20
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def string_hash(values: pl.Series) -> np.ndarray:
    """``(n,)`` uint64 ``splitmix64(fnv1a64(utf-8 bytes))`` of a String series (nulls hash as "")."""
    import pyarrow as pa

    arr = values.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for j in range(int(lengths.max()) if n else 0):  # byte j of every value that long
        rows = np.flatnonzero(lengths > j)
        part = h[rows] ^ data[starts[rows] + j].astype(np.uint64)
        part *= _FNV_PRIME  # wraps mod 2**64
        h[rows] = part
    return stable_hash(h)


class VocabTable:
    """A frequency vocabulary of strings: 0 missing, 1 OOV, 2.. kept values by descending count (ties by value)."""

    kind = "vocab"

    def __init__(self, values: pl.Series, counts: np.ndarray, min_count: int, distinct: int) -> None:
        self.values = values.cast(pl.String).rename("value")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.min_count, self.distinct = min_count, distinct
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted value hashes, their value index)
        self._collisions = False

    @property
    def size(self) -> int:
        return len(self.values) + FIRST_ID

    def _build_lookup(self) -> None:
        """Sort the vocabulary's 64-bit hashes once: every chunk is then looked up in O(n log V), not O(V)
        (``replace_strict`` builds a map of the whole vocabulary per call, which made preparing many chunks
        at Kaggle cardinalities superlinear in the rows)."""
        hashes = self.values.hash(seed=0).to_numpy()  # (V,) uint64
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        self._collisions = bool(len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any())
        self._lookup = (ordered, order)

    def encode(self, values: pl.Series) -> np.ndarray:
        """``(n,)`` int32 ids of a String series (null = missing)."""
        if self._lookup is None:
            self._build_lookup()
        assert self._lookup is not None
        ordered, order = self._lookup
        if self._collisions or len(ordered) == 0:  # two values share a hash (or nothing is kept): the map, per call
            ids = values.replace_strict(self.values, np.arange(FIRST_ID, len(self.values) + FIRST_ID, dtype=np.int32),
                                        default=OOV_ID, return_dtype=pl.Int32).to_numpy()
        else:
            hashes = values.hash(seed=0).to_numpy()  # (n,)
            pos = np.minimum(np.searchsorted(ordered, hashes), len(ordered) - 1)  # (n,)
            index = order[pos]  # (n,) candidate value of each row
            same = (self.values.gather(index) == values).fill_null(False).to_numpy() & (ordered[pos] == hashes)
            ids = np.where(same, index + FIRST_ID, OOV_ID)
        out = np.asarray(ids).astype(np.int32, copy=True)  # (n,)
        out[values.is_null().to_numpy()] = MISSING_ID
        return out

    def info(self) -> dict[str, Any]:
        return {"encoding": "vocab", "min_count": self.min_count, "size": self.size, "distinct_values": self.distinct}


class HashTable:
    """Stable hashing of strings into ``hash_buckets`` rows (id 0 = missing)."""

    kind = "hash"

    def __init__(self, hash_buckets: int) -> None:
        self.hash_buckets = hash_buckets

    @property
    def size(self) -> int:
        return self.hash_buckets + 1

    def encode(self, values: pl.Series) -> np.ndarray:
        ids = (string_hash(values) % np.uint64(self.hash_buckets) + np.uint64(1)).astype(np.int32)  # (n,)
        ids[values.is_null().to_numpy()] = MISSING_ID
        return ids

    def info(self) -> dict[str, Any]:
        return {"encoding": "hash", "hash_buckets": self.hash_buckets, "size": self.size}


class BucketTable:
    """Quantile buckets of a numeric column: id 2 + #(edges <= x), 0 = missing."""

    kind = "bucket"

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)

    @property
    def size(self) -> int:
        return len(self.edges) + 1 + FIRST_ID

    def encode(self, values: pl.Series) -> np.ndarray:
        x = values.cast(pl.Float64).to_numpy()  # null -> NaN
        ids = (FIRST_ID + np.searchsorted(self.edges, x, side="right")).astype(np.int32)
        ids[np.isnan(x)] = MISSING_ID
        return ids

    def info(self) -> dict[str, Any]:
        return {"encoding": "bucket", "edges": self.edges.tolist(), "size": self.size}


Table = VocabTable | HashTable | BucketTable


# ------------------------------------------------------------------------------- per-block values
def feature_frame(frame: pl.DataFrame, schema: TableSchema) -> pl.DataFrame:
    """The sparse features of valid rows: String (categorical, cross), Float64 (bucketised), List[String] (multi)."""
    exprs = []
    for feat in schema.sparse_features:
        if feat.kind == "categorical":
            exprs.append(pl.col(feat.columns[0]).alias(feat.name))
        elif feat.kind == "bucketised":
            exprs.append(numeric_expr(feat.name, schema)[0].alias(feat.name))
        elif feat.kind == "cross":
            exprs.append(pl.concat_str([pl.col(c) for c in feat.columns], separator="\x1f").alias(feat.name))
        else:
            exprs.append(_bags(feat, frame, schema))
    return frame.select(exprs)


def _bags(feat: SparseFeature, frame: pl.DataFrame, schema: TableSchema) -> pl.Expr:
    column = next(m for m in schema.multi_valued if m.name == feat.name)
    col = pl.col(feat.name)
    if not isinstance(frame.schema[feat.name], pl.List):
        col = col.fill_null("").str.split(column.separator)
    nulls = list(schema.format.null_values)
    bags = col.fill_null([]).list.eval(pl.element().filter(pl.element().is_not_null() & ~pl.element().is_in(nulls)))
    if column.lowercase:
        bags = bags.list.eval(pl.element().str.to_lowercase())
    if column.max_length is not None:
        bags = bags.list.head(column.max_length)
    return bags.alias(feat.name)


def dense_values(frame: pl.DataFrame, schema: TableSchema) -> np.ndarray:
    """``(n, D)`` float32 dense features before standardisation (NaN = missing)."""
    names = schema.dense_features
    if not names:
        return np.zeros((frame.height, 0), dtype=np.float32)
    values = frame.select(numeric_expr(n, schema)[0].alias(n) for n in names).to_numpy()  # (n, D) float64
    return np.ascontiguousarray(values, dtype=np.float32)


def finish_dense(values: np.ndarray, schema: TableSchema, standardise: dict[str, tuple[float, float]] | None) -> np.ndarray:
    """Standardise (when fitted; else leave NaN in those columns) and fill missing values, in place; ``(n, D)`` float32."""
    for j, column in enumerate(c for c in schema.numeric if not c.bucketised):
        x = values[:, j]
        missing = np.isnan(x)
        if "standardise" in column.transform:
            if standardise is None:
                continue
            mean, std = standardise[column.name]
            x[:] = ((x.astype(np.float64) - mean) / std).astype(np.float32)
        x[missing] = column.fill
    return values


def encode_features(features: pl.DataFrame, schema: TableSchema, tables: dict[str, Table]
                    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(ids (n, F - J) int32, [(values (nnz,) int32, lengths (n,) int64) per multi-valued feature])``."""
    single = [f for f in schema.sparse_features if f.kind != "multi_valued"]
    ids = np.empty((features.height, len(single)), dtype=np.int32)  # (n, F - J)
    for j, feat in enumerate(single):
        ids[:, j] = tables[feat.table].encode(features.get_column(feat.name))
    jagged = []
    for feat in schema.sparse_features[len(single):]:
        bags = features.get_column(feat.name)
        lengths = bags.list.len().fill_null(0).to_numpy().astype(np.int64)  # (n,)
        values = tables[feat.table].encode(bags.explode().drop_nulls()) if lengths.sum() else np.zeros(0, np.int32)
        jagged.append((values.astype(np.int32, copy=False), lengths))
    return ids, jagged


# ------------------------------------------------------------------------------------ fitting
@dataclass
class Fitter:
    """What the training rows teach: value counts per vocabulary table, moments and samples per numeric column."""

    schema: TableSchema
    hashed: list[str] = field(default_factory=list)  # tables hashed (nothing to count)
    seed: int = 0
    counts: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    moments: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # n, mean, M2
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @staticmethod
    def chunk_counts(features: pl.DataFrame, schema: TableSchema, vocab_tables: set[str]) -> list[tuple[str, pl.DataFrame]]:
        """Value counts of one block per vocabulary feature (thread-safe)."""
        out = []
        for feat in schema.sparse_features:
            if feat.table not in vocab_tables:
                continue
            col = features.get_column(feat.name)
            col = col.explode() if feat.kind == "multi_valued" else col
            out.append((feat.table, col.drop_nulls().rename("value").value_counts(name="count")
                        .with_columns(pl.col("count").cast(pl.Int64))))
        return out

    def add_counts(self, counts: list[tuple[str, pl.DataFrame]]) -> None:
        for table, frame in counts:
            pending = self.counts.setdefault(table, [])
            pending.append(frame)
            if sum(f.height for f in pending[1:]) > max(1 << 20, pending[0].height):
                self.counts[table] = [_merge(pending)]

    def add_numeric(self, name: str, values: np.ndarray, bucketise: bool) -> None:
        """Non-missing float values of one block (in file order: the reservoir depends on it)."""
        x = values[~np.isnan(values)].astype(np.float64)
        if not bucketise:
            n, mean, m2 = self.moments.get(name, (0, 0.0, 0.0))
            if len(x):
                nb, mb = len(x), float(x.mean())
                m2b = float(((x - mb) ** 2).sum())
                total = n + nb
                delta = mb - mean
                self.moments[name] = (total, mean + delta * nb / total, m2 + m2b + delta * delta * n * nb / total)
            return
        sample, seen = self.samples.get(name, np.zeros(0)), self.seen.get(name, 0)
        room = max(0, RESERVOIR - len(sample))
        sample = np.concatenate([sample, x[:room]])
        rest = x[room:]
        if len(rest):  # Algorithm R, vectorised: item i (0-based overall) replaces slot j ~ U[0, i] if j < RESERVOIR
            index = seen + room + np.arange(len(rest))
            slots = (self._rng.random(len(rest)) * (index + 1)).astype(np.int64)
            keep = slots < RESERVOIR
            sample[slots[keep]] = rest[keep]  # later items overwrite earlier ones, as in the sequential algorithm
        self.samples[name], self.seen[name] = sample, seen + len(x)

    def fit(self, min_count: int, preset: dict[str, Table]) -> tuple[dict[str, Table], dict[str, tuple[float, float]]]:
        """The tables (``preset``: hash tables, already known) and the standardisation of every column."""
        tables = dict(preset)
        for feat in self.schema.sparse_features:
            if feat.table in tables:
                continue
            if feat.kind == "bucketised":
                column = next(c for c in self.schema.numeric if c.name == feat.name)
                sample = self.samples.get(feat.name, np.zeros(0))
                qs = np.linspace(0, 1, int(column.buckets or 2) + 1)[1:-1]
                tables[feat.table] = BucketTable(np.unique(np.quantile(sample, qs)) if len(sample) else np.zeros(0))
                continue
            merged = _merge(self.counts.get(feat.table, []))
            threshold = feat.min_count or min_count
            kept = merged.filter(pl.col("count") >= threshold).sort(["count", "value"], descending=[True, False])
            tables[feat.table] = VocabTable(kept.get_column("value"), kept.get_column("count").to_numpy(), threshold,
                                            merged.height)
        standardise = {}
        for column in self.schema.numeric:
            if "standardise" in column.transform:
                n, mean, m2 = self.moments.get(column.name, (0, 0.0, 0.0))
                std = float(np.sqrt(m2 / n)) if n else 0.0
                standardise[column.name] = (mean, std if std > 0 else 1.0)
        return tables, standardise


def _merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema={"value": pl.String, "count": pl.Int64})
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames).group_by("value").agg(pl.col("count").sum())


# ------------------------------------------------------------------------------ save / load
def save_fitted(vocab_dir: Path, schema: TableSchema, tables: dict[str, Table],
                standardise: dict[str, tuple[float, float]], info: dict[str, Any]) -> None:
    """Write ``vocab.json``, the vocabularies, ``transforms.json`` and ``schema.yaml`` into ``vocab_dir``."""
    import yaml

    vocab_dir.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if isinstance(table, VocabTable):
            pl.DataFrame({"value": table.values, "count": table.counts}).write_parquet(vocab_dir / f"{name}.parquet")
    atomic_save_json(vocab_dir / "vocab.json", {
        "format": VOCAB_FORMAT, "schema": schema.name,
        "features": {f.name: f.table for f in schema.sparse_features},
        "tables": {name: table.info() for name, table in tables.items()}, **info,
    })
    atomic_save_json(vocab_dir / "transforms.json", {
        "standardise": {name: {"mean": m, "std": s} for name, (m, s) in standardise.items()}})
    atomic_write_text(vocab_dir / "schema.yaml", yaml.safe_dump(schema_dict(schema), sort_keys=False))


def load_fitted(prepared_dir: str | os.PathLike[str], schema: TableSchema
                ) -> tuple[dict[str, Table], dict[str, tuple[float, float]]]:
    """The tables and standardisation saved by :func:`save_fitted` in ``prepared_dir/vocab`` (for ``vocab_from``).

    Raises:
        FileNotFoundError: not a folder written by ``prepare table`` (or a run's ``data/`` of one).
        ValueError: its features or tables differ from ``schema``'s (names the file).
    """
    vocab_dir = Path(prepared_dir) / "vocab"
    path = vocab_dir / "vocab.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: vocab_from needs a folder written by `recsys-emb prepare table` "
                                "(or a run's data/ folder)")
    info = json.loads(path.read_text())
    if info.get("format") != VOCAB_FORMAT:
        raise ValueError(f"{path}: not a schema'd table vocabulary (format {info.get('format')!r}, expected "
                         f"{VOCAB_FORMAT!r}); was it prepared with `prepare criteo`? Use the same preparer for all splits")
    wanted = {f.name: f.table for f in schema.sparse_features}
    if info["features"] != wanted:
        raise ValueError(f"{path}: features -> tables {info['features']} differ from schema '{schema.name}' ({wanted})")
    tables: dict[str, Table] = {}
    for name, spec in info["tables"].items():
        if spec["encoding"] == "hash":
            tables[name] = HashTable(int(spec["hash_buckets"]))
        elif spec["encoding"] == "bucket":
            tables[name] = BucketTable(np.asarray(spec["edges"], dtype=np.float64))
        else:
            frame = pl.read_parquet(vocab_dir / f"{name}.parquet")
            if frame.height != int(spec["size"]) - FIRST_ID:
                raise ValueError(f"{vocab_dir / name}.parquet: {frame.height} values, {path} says {spec['size'] - FIRST_ID}")
            tables[name] = VocabTable(frame.get_column("value"), frame.get_column("count").to_numpy(),
                                      int(spec["min_count"]), int(spec.get("distinct_values", frame.height)))
    transforms = json.loads((vocab_dir / "transforms.json").read_text())
    standardise = {k: (float(v["mean"]), float(v["std"])) for k, v in transforms["standardise"].items()}
    return tables, standardise
