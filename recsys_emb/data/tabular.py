"""Any CTR table (CSV / TSV, plain or gzip, or Parquet) + a feature schema -> the prepared CTR layout.

``recsys-emb prepare table --schema S --data FILE... --out DIR`` (and ``data.schema`` of an experiment)
reads files in order through a :class:`~recsys_emb.data.schema.TableSchema` (docs/data_schema.md) and
writes the prepared directory that ``recsys-emb prepare criteo`` writes (:mod:`recsys_emb.data.dataset`)::

    DIR/meta.json     the Criteo keys (rows, label stats, features, vocab sizes, sources, skipped rows, ...)
                      + schema, tables (feature -> table), jagged_features; format_version 2 with jagged features
    DIR/dense.npy     float32 (rows, D): the numeric columns after their transform, missing -> `fill`
    DIR/sparse.npy    int32 (rows, F - J): 0 = missing, 1 = out of vocabulary, 2.. = ids
    DIR/labels.npy    float32 (rows,); absent when the files have no label column
    DIR/jagged/       <feature>.values.npy / .offsets.npy of the multi-valued features (the last J)
    DIR/vocab/        vocabularies, hashing, quantile edges, standardisation and the schema
                      (:mod:`recsys_emb.data.tabular_encode`), reusable with ``--vocab-from DIR``

Reading and malformed-row rules: :mod:`recsys_emb.data.tabular_reader` (``file:line: column: problem``
examples in ``meta.json`` and on stderr, or fatal with ``strict``).

Memory stays bounded in the number of rows. The files are parsed once, in blocks, by a few threads; dense
values and labels are appended to the arrays on disk. Without anything to fit (hashing everywhere, or
``vocab_from``) the ids are written directly. Otherwise the first pass counts values, accumulates the
numeric moments / quantile samples and writes each block's feature values to a temporary Parquet file;
the second pass reads those back and writes the ids (and standardises ``dense.npy`` in place). The folder
is written under a temporary sibling name and renamed into place only after everything succeeded.

The Criteo schema (``configs/schemas/criteo.yaml``) prepares arrays byte-identical to
:func:`recsys_emb.data.criteo.prepare_criteo` (tested), which stays the faster path for Criteo TSV.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_emb.console import tqdm
from recsys_emb.data.availability import REGISTRY, require_file
from recsys_emb.data.criteo import _NpyAppender, format_skip_report, staged_dir
from recsys_emb.data.criteo_reader import SkipLog, _ordered_map, _record, _record_range
from recsys_emb.data.schema import TableSchema, load_schema
from recsys_emb.data.tabular_encode import (
    Fitter, HashTable, Table, dense_values, encode_features, feature_frame, finish_dense, load_fitted, save_fitted,
)
from recsys_emb.data.tabular_join import SideTable, load_saved_side_tables, load_side_tables, save_side_tables
from recsys_emb.data.tabular_reader import FileLayout, Unit, inspect_file, iter_units, parse_unit
from recsys_emb.utils import atomic_save_json

__all__ = ["add_prepare_table_arguments", "prepare_table", "run_prepare_table", "split_table_file"]

DEFAULT_MIN_COUNT = 2
FORMAT_VERSION, JAGGED_FORMAT_VERSION = 1, 2  # of recsys_emb/data/dataset.py (not imported: it imports torch)
_FEATURES_DIR = "_features.tmp"
PathLike = str | Path


@dataclass
class _Chunk:
    """What one block contributes (built in a worker thread)."""

    labels: np.ndarray | None  # (n,) float32
    dense: np.ndarray  # (n, D) float32; NaN where missing / not yet standardised
    ids: np.ndarray | None  # (n, F - J) int32 when the tables are known
    jagged: list[tuple[np.ndarray, np.ndarray]] | None  # per multi-valued feature (values, lengths)
    features: pl.DataFrame | None  # the raw feature values, when tables are still to be fitted
    counts: list[tuple[str, pl.DataFrame]]  # value counts per vocabulary table (fitting only)
    numeric: dict[str, np.ndarray]  # pre-standardise / pre-bucketise values per column (fitting only)


@dataclass
class _Result:
    layout: FileLayout
    first_line: int
    n_lines: int
    last_filled: int
    n_bad: int
    problems: list[tuple[int, str]]
    n_valid: int
    payload: _Chunk | None
    progress: int
    n_dropped: int = 0


def prepare_table(
    inputs: list[PathLike],
    out_dir: PathLike,
    schema: str | Path | TableSchema,
    *,
    vocab_from: PathLike | None = None,
    min_count: int | None = None,
    hash_buckets: int | None = None,
    strict: bool = False,
    chunk_bytes: int = 16 << 20,
    batch_rows: int = 1 << 17,
    workers: int | None = None,
) -> dict[str, Any]:
    """Prepare CSV / TSV / Parquet files through a schema (see the module docstring).

    Args:
        inputs: files, concatenated in order (text plain or gzip, or Parquet; recognised from the content).
        out_dir: the prepared directory; an existing one is replaced only after success.
        schema: a schema YAML path, a shipped schema's name (``criteo``, ``avazu``, ``movielens_100k``) or a
            :class:`TableSchema`.
        vocab_from: reuse the vocabularies, hashing, quantile edges and standardisation of this prepared
            directory (or a run's ``data/``) instead of fitting them; unseen values get the OOV id 1.
        min_count: the vocabulary threshold of columns that set neither ``min_count`` nor ``hash_buckets``
            (default 2).
        hash_buckets: hash such columns into this many rows instead.
        strict: raise :class:`~recsys_emb.data.criteo_reader.MalformedRowError` at the first malformed row.
        chunk_bytes: uncompressed text bytes parsed at a time per worker.
        batch_rows: Parquet rows per block.
        workers: parsing threads; None uses up to 4, at most the number of CPUs.

    Returns:
        The ``meta.json`` dict.
    """
    import os

    schema = load_schema(schema)
    sources = [Path(p) for p in inputs]
    if not sources:
        raise ValueError("no input files given")
    for path in sources:
        if schema.name in REGISTRY:  # a public data set (criteo, avazu): the message says where to download it
            require_file(path, schema.name, where="--data")
        elif not path.is_file():
            raise FileNotFoundError(f"--data: {path} does not exist" if not path.exists() else f"--data: {path} is not a file")
    if min_count is not None and min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if min_count is not None and hash_buckets is not None:
        raise ValueError("give min_count or hash_buckets, not both")
    layouts = [inspect_file(p, schema) for p in sources]
    labelled = {layout.has_labels for layout in layouts}
    if len(labelled) > 1:
        raise ValueError("inputs mix files with and without the label column: "
                         + ", ".join(f"{x.source} ({'with' if x.has_labels else 'without'})" for x in layouts))
    has_labels = labelled.pop()
    preset, standardise, fitting = _initial_tables(schema, vocab_from, min_count, hash_buckets)
    sides = (load_saved_side_tables(Path(vocab_from), schema) if vocab_from is not None
             else load_side_tables(schema, sources[0].resolve().parent))
    with staged_dir(Path(out_dir)) as tmp:
        workers = workers or min(4, os.cpu_count() or 1)
        fitter = Fitter(schema, hashed=sorted(preset)) if fitting else None
        tables = None if fitting else preset
        log, positives, dropped = _parse_pass(sources, layouts, schema, tmp, tables, standardise, fitter, has_labels,
                                              strict, chunk_bytes, batch_rows, workers, sides)
        rows = log.rows_read - log.skipped
        if rows == 0:
            raise ValueError(f"no valid rows in {', '.join(map(str, sources))}: {log.summary()}")
        provenance = {"sources": [str(p.resolve()) for p in sources], "counted_rows": rows}
        if fitter is not None:
            tables, standardise = fitter.fit(min_count or DEFAULT_MIN_COUNT, preset)
            _encode_pass(tmp, schema, tables, standardise, workers)
        assert tables is not None
        if vocab_from is not None:
            shutil.copytree(Path(vocab_from) / "vocab", tmp / "vocab")
        else:
            save_fitted(tmp / "vocab", schema, tables, standardise, provenance)
            save_side_tables(tmp / "vocab", sides)
        meta = _meta(schema, tables, rows, has_labels, positives, provenance["sources"], log, vocab_from,
                     min_count, hash_buckets)
        if schema.label is not None and schema.label.drop:
            meta["dropped_rows"] = {"label.drop": dropped, "values": list(schema.label.drop)}
        if sides:
            meta["joins"] = {side.join.name: {"key": side.join.key, "rows": side.frame.height, "source": side.source}
                             for side in sides}
        atomic_save_json(tmp / "meta.json", meta)
    return meta


def _initial_tables(schema: TableSchema, vocab_from: PathLike | None, min_count: int | None,
                    hash_buckets: int | None) -> tuple[dict[str, Table], dict[str, tuple[float, float]] | None, bool]:
    """(known tables, known standardisation or None, whether a fitting pass is needed)."""
    if vocab_from is not None:
        if min_count is not None or hash_buckets is not None:
            raise ValueError("min_count / hash_buckets cannot be combined with vocab_from (the encodings are reused as saved)")
        tables, standardise = load_fitted(vocab_from, schema)
        return tables, standardise, False
    preset: dict[str, Table] = {}
    for feat in schema.sparse_features:
        buckets = feat.hash_buckets or (hash_buckets if feat.min_count is None and feat.kind != "bucketised" else None)
        if buckets:
            preset[feat.table] = HashTable(int(buckets))
    needs_fit = any(f.table not in preset for f in schema.sparse_features) or any(
        "standardise" in c.transform for c in schema.numeric)
    return preset, ({} if not needs_fit else None), needs_fit


def _parse_pass(sources: list[Path], layouts: list[FileLayout], schema: TableSchema, tmp: Path,
                tables: dict[str, Table] | None, standardise: dict[str, tuple[float, float]] | None,
                fitter: Fitter | None, has_labels: bool, strict: bool, chunk_bytes: int, batch_rows: int,
                workers: int, sides: list[SideTable]) -> tuple[SkipLog, int | None, int]:
    """Parse every file once; append dense / labels (and ids when ``tables`` is known) to ``tmp``.

    Returns the malformed-row log, the number of positives (None without labels) and the rows left out
    by ``label.drop``."""
    max_problems = 1 if strict else SkipLog().max_examples
    hashed = set(fitter.hashed) if fitter is not None else set()
    vocab_tables = {f.table for f in schema.sparse_features if f.kind != "bucketised"} - hashed
    fit_numeric = [c for c in schema.numeric if c.bucketised or "standardise" in c.transform] if fitter else []

    def work(unit: Unit) -> _Result:
        parsed = parse_unit(unit, schema, max_problems, sides)
        payload = None
        if parsed.last_filled >= 0 and parsed.frame.height:
            frame = parsed.frame
            labels = None
            if has_labels and schema.label is not None:
                labels = frame.get_column(schema.label.column).is_in(schema.label.positive).cast(pl.Float32).to_numpy()
            dense = finish_dense(dense_values(frame, schema), schema, standardise)  # (n, D)
            features = feature_frame(frame, schema)
            if fitter is None:
                assert tables is not None
                ids, jagged = encode_features(features, schema, tables)
                payload = _Chunk(labels, dense, ids, jagged, None, [], {})
            else:
                numeric = {}
                for c in fit_numeric:
                    if c.bucketised:
                        numeric[c.name] = features.get_column(c.name).to_numpy().astype(np.float64)
                    else:
                        numeric[c.name] = dense[:, schema.dense_features.index(c.name)].copy()
                counts = Fitter.chunk_counts(features, schema, vocab_tables)
                payload = _Chunk(labels, dense, None, None, features, counts, numeric)
        return _Result(unit.layout, parsed.first_line, parsed.n_lines, parsed.last_filled, parsed.n_bad,
                       parsed.problems, parsed.frame.height if payload is not None else 0, payload, unit.progress,
                       parsed.n_dropped)

    log, positives, dropped = SkipLog(), 0, 0
    n_single = sum(f.kind != "multi_valued" for f in schema.sparse_features)
    writers = {"dense": _NpyAppender(tmp / "dense.npy", np.float32, (len(schema.dense_features),))}
    if has_labels:
        writers["labels"] = _NpyAppender(tmp / "labels.npy", np.float32, ())
    if fitter is None:
        writers.update(_id_writers(tmp, schema, n_single))
    else:
        (tmp / _FEATURES_DIR).mkdir()
    source, blank_start, blank_count, seq = None, 0, 0, 0
    total = sum(p.stat().st_size for p in sources)
    units = iter_units(sources, layouts, chunk_bytes, batch_rows, schema.inputs)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=None, file=sys.stderr,
                  desc=f"{schema.name}: parsing" + (" + counting" if fitter else " + encoding")) as bar:
            for result in _ordered_map(work, units, workers):  # type: ignore[arg-type]
                if result.layout.source != source:
                    source, blank_start, blank_count = result.layout.source, 0, 0
                if result.last_filled < 0:
                    blank_start = blank_start if blank_count else result.first_line
                    blank_count += result.n_lines
                else:
                    _record_range(log, strict, result.layout.source, blank_start, blank_count, "empty line")
                    for line, problem in result.problems:
                        _record(log, strict, result.layout.source, line, problem)
                    unlisted = result.n_bad - len(result.problems)
                    dropped += result.n_dropped
                    log.skipped += unlisted
                    log.rows_read += unlisted + result.n_valid
                    end = result.last_filled + 1
                    blank_start, blank_count = result.first_line + end, result.n_lines - end
                    chunk = result.payload
                    if chunk is not None:
                        writers["dense"].append(chunk.dense)  # (n, D)
                        if chunk.labels is not None:
                            writers["labels"].append(chunk.labels)  # (n,)
                            positives += int(chunk.labels.sum(dtype=np.float64))
                        if fitter is None:
                            _append_ids(writers, schema, chunk)
                        else:
                            assert chunk.features is not None
                            chunk.features.write_parquet(tmp / _FEATURES_DIR / f"{seq:08d}.parquet", compression="lz4")
                            seq += 1
                            fitter.add_counts(chunk.counts)
                            for c in fit_numeric:
                                fitter.add_numeric(c.name, chunk.numeric[c.name], c.bucketised)
                bar.update(result.progress)
    finally:
        for writer in writers.values():
            writer.close()
    return log, positives if has_labels else None, dropped


def _id_writers(root: Path, schema: TableSchema, n_single: int) -> dict[str, _NpyAppender]:
    writers = {"sparse": _NpyAppender(root / "sparse.npy", np.int32, (n_single,))}
    multi = [f.name for f in schema.sparse_features if f.kind == "multi_valued"]
    if multi:
        (root / "jagged").mkdir(exist_ok=True)
    for name in multi:
        writers[f"v:{name}"] = _NpyAppender(root / "jagged" / f"{name}.values.npy", np.int32, ())
        writers[f"o:{name}"] = offsets = _NpyAppender(root / "jagged" / f"{name}.offsets.npy", np.int64, ())
        offsets.append(np.zeros(1, dtype=np.int64))
        offsets.total = 0  # type: ignore[attr-defined]
    return writers


def _append_ids(writers: dict[str, _NpyAppender], schema: TableSchema, chunk: _Chunk) -> None:
    assert chunk.ids is not None and chunk.jagged is not None
    writers["sparse"].append(chunk.ids)  # (n, F - J)
    multi = [f.name for f in schema.sparse_features if f.kind == "multi_valued"]
    for name, (values, lengths) in zip(multi, chunk.jagged):
        writers[f"v:{name}"].append(values)  # (nnz,)
        offsets = writers[f"o:{name}"]
        ends = offsets.total + np.cumsum(lengths)  # type: ignore[attr-defined]
        offsets.append(ends.astype(np.int64))  # (n,)
        offsets.total = int(ends[-1]) if len(ends) else offsets.total  # type: ignore[attr-defined]


def _encode_pass(tmp: Path, schema: TableSchema, tables: dict[str, Table],
                 standardise: dict[str, tuple[float, float]], workers: int) -> None:
    """Second pass: the saved feature values -> ids; ``dense.npy``'s standardised columns fixed in place."""
    files = sorted((tmp / _FEATURES_DIR).glob("*.parquet"))
    writers = _id_writers(tmp, schema, sum(f.kind != "multi_valued" for f in schema.sparse_features))

    def encode(path: Path) -> _Chunk:
        ids, jagged = encode_features(pl.read_parquet(path), schema, tables)
        return _Chunk(None, np.zeros((0, 0), np.float32), ids, jagged, None, [], {})

    try:
        with tqdm(total=len(files), unit="blocks", disable=None, file=sys.stderr,
                  desc=f"{schema.name}: applying vocabulary") as bar:
            for chunk in _ordered_map(encode, iter(files), workers):  # type: ignore[arg-type]
                _append_ids(writers, schema, chunk)
                bar.update(1)
    finally:
        for writer in writers.values():
            writer.close()
    shutil.rmtree(tmp / _FEATURES_DIR)
    if any("standardise" in c.transform for c in schema.numeric):
        dense = np.lib.format.open_memmap(tmp / "dense.npy", mode="r+")  # (N, D) float32
        step = 1 << 18

        def fix(start: int) -> None:
            block = np.array(dense[start:start + step])
            dense[start:start + step] = finish_dense(block, schema, standardise)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(fix, range(0, dense.shape[0], step)))
        dense.flush()
        del dense


def _meta(schema: TableSchema, tables: dict[str, Table], rows: int, has_labels: bool, positives: int | None,
          sources: list[str], log: SkipLog, vocab_from: PathLike | None, min_count: int | None,
          hash_buckets: int | None) -> dict[str, Any]:
    feats = schema.sparse_features
    jagged = [f.name for f in feats if f.kind == "multi_valued"]
    kinds = {tables[f.table].kind for f in feats if f.kind != "bucketised"}
    encoding = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")
    transforms = [f"{c.name}: {' -> '.join(c.transform) or 'none'}" for c in schema.numeric if not c.bucketised]
    return {
        "format_version": JAGGED_FORMAT_VERSION if jagged else FORMAT_VERSION,
        "dataset": schema.name,
        "rows": rows,
        "has_labels": has_labels,
        "positives": positives,
        "ctr": None if positives is None else positives / rows,
        "dense_features": schema.dense_features,
        "sparse_features": [f.name for f in feats],
        "vocab_sizes": [tables[f.table].size for f in feats],
        "categorical_encoding": encoding,
        "min_count": (min_count or DEFAULT_MIN_COUNT) if "vocab" in {tables[f.table].kind for f in feats} else None,
        "hash_buckets": hash_buckets,
        "dense_transform": "; ".join(transforms) or "none",
        "sources": sources,
        "skipped_rows": log.skipped,
        "malformed_examples": list(log.examples),
        "vocab_from": None if vocab_from is None else str(Path(vocab_from).resolve()),
        "jagged_features": jagged,
        "schema": schema.name,
        "tables": {f.name: f.table for f in feats},
    }


# -------------------------------------------------------------------------------------- splitting
def split_table_file(path: Path, schema: TableSchema, fraction: float, out_dir: Path) -> tuple[Path, Path]:
    """The first ``1 - fraction`` and the last ``fraction`` of a file's rows as two files (a header copied to both).

    Text: non-blank lines after the header are the rows (gzip output); Parquet: rows (Parquet output).
    """
    import gzip
    import os

    from recsys_emb.utils import open_text

    layout = inspect_file(path, schema)
    suffix = ".parquet" if layout.parquet else ".txt.gz"
    head, tail = out_dir / f"head{suffix}", out_dir / f"tail{suffix}"
    if head.is_file() and tail.is_file():
        return head, tail
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_head, tmp_tail = (p.with_name(f"{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp") for p in (head, tail))
    if layout.parquet:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        cut = total - int(round(total * fraction))
        _check_cut(path, total, cut, fraction)
        with pq.ParquetWriter(tmp_head, pf.schema_arrow) as h, pq.ParquetWriter(tmp_tail, pf.schema_arrow) as t:
            seen = 0
            for batch in pf.iter_batches():
                k = max(0, min(batch.num_rows, cut - seen))
                if k:
                    h.write_batch(batch.slice(0, k))
                if k < batch.num_rows:
                    t.write_batch(batch.slice(k))
                seen += batch.num_rows
    else:
        with open_text(path, newline="") as f:
            total = sum(1 for n, line in enumerate(f, 1) if line.strip() and n != layout.header_line)
        cut = total - int(round(total * fraction))
        _check_cut(path, total, cut, fraction)
        with open_text(path, newline="") as f, gzip.open(tmp_head, "wt", compresslevel=1, newline="") as h, \
                gzip.open(tmp_tail, "wt", compresslevel=1, newline="") as t:
            seen = 0
            for n, line in enumerate(f, 1):
                line = line if line.endswith("\n") else line + "\n"
                if n == layout.header_line:
                    h.write(line.lstrip("\ufeff"))
                    t.write(line.lstrip("\ufeff"))
                elif line.strip():
                    (h if seen < cut else t).write(line)
                    seen += 1
    os.replace(tmp_head, head)
    os.replace(tmp_tail, tail)
    return head, tail


def _check_cut(path: Path, total: int, cut: int, fraction: float) -> None:
    if cut < 1 or cut >= total:
        raise ValueError(f"{path}: {total} rows cannot be split into train/valid with valid_fraction={fraction}")


# -------------------------------------------------------------------------------------------- CLI
def add_prepare_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare table`` options to ``parser``."""
    parser.add_argument("--schema", required=True, metavar="SCHEMA",
                        help="feature schema: a YAML file (docs/data_schema.md) or a shipped name "
                             "(criteo, avazu, movielens_100k: configs/schemas/)")
    parser.add_argument("--data", dest="inputs", nargs="+", metavar="FILE",
                        help="CSV / TSV (.gz or plain) or Parquet files, concatenated in order (required)")
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared directory to write")
    parser.add_argument("--vocab-from", metavar="DIR", default=None,
                        help="reuse the vocabularies, quantile edges and standardisation of this prepared directory "
                             "(validation / test files)")
    parser.add_argument("--min-count", type=int, default=None, metavar="N",
                        help=f"vocabulary threshold of columns that set none (default {DEFAULT_MIN_COUNT})")
    parser.add_argument("--hash-buckets", type=int, default=None, metavar="N",
                        help="hash columns that set no encoding into N rows instead of a vocabulary")
    parser.add_argument("--strict", action="store_true",
                        help="fail at the first malformed row instead of skipping and counting it")


def run_prepare_table(args: argparse.Namespace) -> int:
    """Run ``prepare table``: a one-line JSON summary on stdout, the malformed-row report on stderr."""
    if not args.inputs:
        print("recsys-emb prepare table: error: the following arguments are required: --data FILE [FILE ...]",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        meta = prepare_table(args.inputs, args.out, args.schema, vocab_from=args.vocab_from,
                             min_count=args.min_count, hash_buckets=args.hash_buckets, strict=args.strict)
    except (ValueError, OSError) as err:
        print(f"recsys-emb prepare table: error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(format_skip_report(meta), file=sys.stderr)
    summary = {key: meta[key] for key in ("rows", "positives", "ctr", "skipped_rows", "categorical_encoding",
                                          "sparse_features", "vocab_sizes")}
    rows_read = meta["rows"] + meta["skipped_rows"]
    print(json.dumps({"out": str(args.out), **summary, "seconds": round(seconds, 3),
                      "rows_per_second": round(rows_read / max(seconds, 1e-9))}))
    return 0
