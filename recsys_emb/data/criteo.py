"""Criteo click logs (Kaggle DAC, Terabyte) -> memory-mappable columnar arrays.

``recsys-emb prepare criteo --data FILE... --out DIR`` reads TSV rows ``label, I1..I13,
C1..C26`` (40 fields; the Kaggle test file has 39, no label), plain or gzip, several files
concatenated in order, and writes a *prepared directory*::

    DIR/meta.json    format_version 1, row count, label stats, vocab sizes, sources, skipped rows
    DIR/dense.npy    float32 (rows, 13): log1p(max(x, 0)); missing -> 0
    DIR/sparse.npy   int32 (rows, 26): 0 = missing, 1 = out of vocabulary, 2.. = vocabulary ids
    DIR/labels.npy   float32 (rows,) in {0, 1}; absent without labels
    DIR/vocab/       vocabularies (or the hashing settings), reusable with --vocab-from DIR

Conventions:

- Dense features are clipped at 0 before ``log1p``: Criteo's I2 has small negative values
  (-1, -2, -3) and ``log1p`` of them is undefined or -inf; the DLRM reference
  (facebookresearch/dlrm, ``data_utils.py``) clips the same way. Missing values become 0.
- Categoricals are 8 hex digits (upper case is accepted and folded to lower case). Ids come
  from a frequency vocabulary (values seen at least ``min_count`` times, ids by descending
  count, ties by value) or from stable hashing into ``hash_buckets`` rows; see
  :mod:`recsys_emb.data.criteo_vocab`.
- Malformed rows are counted and reported (``meta.json`` ``skipped_rows`` and the first
  ``malformed_examples`` as ``file:line: problem``), or are fatal with ``strict``; parsing rules
  are in :mod:`recsys_emb.data.criteo_reader`.

Memory stays bounded in the number of rows. The text is parsed once, in blocks, by a few
threads, and every block is appended to the arrays on disk. With hashing or ``vocab_from`` the
ids are written directly. To build a vocabulary, the parsing pass counts the values and writes
them (bit-cast) into ``sparse.npy``; a second pass over that memory-mapped file, block by
block, replaces them by vocabulary ids. Only the per-feature value counts grow, with the
number of distinct values. The directory is written under a temporary sibling name and renamed
into place only after everything succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from recsys_emb.console import deprecated_alias, tqdm

from recsys_emb.data.availability import require_file
from recsys_emb.data.criteo_reader import (
    MalformedRowError,
    ParsedChunk,
    RowLayout,
    SkipLog,
    detect_fields,
    iter_parsed_chunks,
)
from recsys_emb.data.criteo_vocab import HashEncoder, ValueCounter, VocabEncoder, load_encoder
from recsys_emb.utils import atomic_save_json

__all__ = [
    "DENSE_FEATURES",
    "SPARSE_FEATURES",
    "FORMAT_VERSION",
    "DENSE_TRANSFORM",
    "MalformedRowError",
    "add_prepare_criteo_arguments",
    "format_skip_report",
    "prepare_criteo",
    "read_meta",
    "run_prepare_criteo",
]

PathLike = str | os.PathLike[str]

DENSE_FEATURES = [f"I{i}" for i in range(1, 14)]
SPARSE_FEATURES = [f"C{i}" for i in range(1, 27)]
FORMAT_VERSION = 1
DENSE_TRANSFORM = "log1p(max(x, 0))"
DEFAULT_MIN_COUNT = 2
_MISSING_FILE = "_missing.tmp"
_META_KEYS = (
    "format_version", "dataset", "rows", "has_labels", "positives", "ctr", "dense_features",
    "sparse_features", "vocab_sizes", "categorical_encoding", "min_count", "hash_buckets",
    "dense_transform", "sources", "skipped_rows", "malformed_examples", "vocab_from",
)


def prepare_criteo(
    inputs: list[PathLike],
    out_dir: PathLike,
    *,
    vocab_from: PathLike | None = None,
    min_count: int | None = None,
    hash_buckets: int | None = None,
    strict: bool = False,
    has_labels: bool | None = None,
    chunk_bytes: int = 16 << 20,
    workers: int | None = None,
) -> dict[str, Any]:
    """Convert Criteo TSV files into a prepared directory (see the module docstring).

    Args:
        inputs: TSV files (plain or gzip), concatenated in order.
        out_dir: the prepared directory; an existing one is replaced only after success.
        vocab_from: reuse the vocabulary (or hashing) of this prepared directory instead of
            counting; values not in it get the OOV id 1.
        min_count: keep values seen at least this many times (default 2); only when counting.
        hash_buckets: hash categoricals into this many rows per feature instead of counting.
        strict: raise :class:`MalformedRowError` (a ValueError naming file, line and field) at
            the first malformed row instead of skipping and counting it.
        has_labels: whether rows start with a label; None detects it from the first non-blank
            line of each input (40 fields: labels, 39: none).
        chunk_bytes: uncompressed bytes parsed at a time per worker (memory use is a few
            times ``chunk_bytes * (workers + 1)``).
        workers: parsing threads; None uses up to 4, at most the number of CPUs.

    Returns:
        The ``meta.json`` dict.
    """
    sources = [Path(p) for p in inputs]
    if not sources:
        raise ValueError("no input files given")
    for path in sources:
        require_file(path, "criteo", where="input file")  # absent: says where to download Criteo
    layout = RowLayout(tuple(DENSE_FEATURES), tuple(SPARSE_FEATURES),
                       _detect_labels(sources) if has_labels is None else has_labels)
    encoder = _choose_encoder(vocab_from, min_count, hash_buckets)
    with staged_dir(Path(out_dir)) as tmp:
        provenance = {"sources": [str(p.resolve()) for p in sources]}
        counter = ValueCounter(SPARSE_FEATURES) if encoder is None else None
        workers = workers or min(4, os.cpu_count() or 1)
        skip_log, positives = _parse_pass(sources, layout, tmp, encoder, counter, strict,
                                          chunk_bytes, workers)
        rows = skip_log.rows_read - skip_log.skipped
        if rows == 0:
            raise ValueError(f"no valid rows in {', '.join(map(str, sources))}: "
                             f"{skip_log.summary()}")
        if counter is not None:  # second pass: the vocabulary, then ids in place of the values
            encoder = VocabEncoder.from_counter(counter, min_count or DEFAULT_MIN_COUNT)
            _encode_in_place(tmp, encoder, workers)
            encoder.save(tmp / "vocab", {
                **provenance, "counted_rows": skip_log.rows_read - skip_log.skipped})
        elif vocab_from is not None and encoder.encoding == "vocab":
            shutil.copytree(Path(vocab_from) / "vocab", tmp / "vocab")
        else:
            encoder.save(tmp / "vocab", {**provenance, "vocab_from": _path_or_none(vocab_from)})
        meta = {
            "format_version": FORMAT_VERSION,
            "dataset": "criteo",
            "rows": rows,
            "has_labels": layout.has_labels,
            "positives": positives,
            "ctr": None if positives is None else positives / rows,
            "dense_features": list(DENSE_FEATURES),
            "sparse_features": list(SPARSE_FEATURES),
            "vocab_sizes": encoder.vocab_sizes,
            "categorical_encoding": encoder.encoding,
            "min_count": encoder.min_count,
            "hash_buckets": encoder.hash_buckets,
            "dense_transform": DENSE_TRANSFORM,
            "sources": provenance["sources"],
            "skipped_rows": skip_log.skipped,
            "malformed_examples": list(skip_log.examples),
            "vocab_from": _path_or_none(vocab_from),
        }
        atomic_save_json(tmp / "meta.json", meta)
    return meta


def read_meta(prepared_dir: PathLike) -> dict[str, Any]:
    """Read and validate ``meta.json`` of a prepared Criteo directory.

    Checks the format version, the keys, and that ``dense.npy``, ``sparse.npy`` (and
    ``labels.npy`` when ``has_labels``) exist with the dtypes and shapes the metadata implies.

    Args:
        prepared_dir: a directory written by :func:`prepare_criteo`.

    Returns:
        The metadata dict.
    """
    root = Path(prepared_dir)
    path = root / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a directory written by "
                                "`recsys-emb prepare criteo`?")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: format_version {found!r} is not supported (expected "
                         f"{FORMAT_VERSION}); re-run `recsys-emb prepare criteo`")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if meta["dataset"] != "criteo":
        raise ValueError(f"{path}: dataset is {meta['dataset']!r}, expected 'criteo'")
    n_dense, n_sparse = len(meta["dense_features"]), len(meta["sparse_features"])
    if len(meta["vocab_sizes"]) != n_sparse:
        raise ValueError(f"{path}: {len(meta['vocab_sizes'])} vocab_sizes for {n_sparse} "
                         "sparse features")
    expected = {"dense.npy": ("<f4", (meta["rows"], n_dense)),
                "sparse.npy": ("<i4", (meta["rows"], n_sparse))}
    if meta["has_labels"]:
        expected["labels.npy"] = ("<f4", (meta["rows"],))
    for name, (dtype, shape) in expected.items():
        array_path = root / name
        if not array_path.is_file():
            raise FileNotFoundError(f"{array_path} not found (required by {path})")
        found_shape, fortran, found_dtype = _npy_header(array_path)
        if (found_dtype.str, tuple(found_shape), fortran) != (dtype, shape, False):
            raise ValueError(f"{array_path}: expected {dtype} {shape} C-order, got "
                             f"{found_dtype.str} {tuple(found_shape)}"
                             f"{' Fortran-order' if fortran else ''}")
    return meta


def add_prepare_criteo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prepare criteo`` options to ``parser``.

    Args:
        parser: the (sub)command parser.
    """
    parser.add_argument("--data", dest="inputs", nargs="+", metavar="FILE",
                        help="Criteo TSV files (.gz or plain), concatenated in order (required)")
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared directory to write")
    parser.add_argument("--vocab-from", metavar="DIR", default=None,
                        help="reuse the vocabulary of this prepared directory (no recount)")
    parser.add_argument("--min-count", type=int, default=None, metavar="N",
                        help=f"keep values seen at least N times (default {DEFAULT_MIN_COUNT})")
    parser.add_argument("--hash-buckets", type=int, default=None, metavar="N",
                        help="hash categoricals into N rows per feature instead of a vocabulary")
    parser.add_argument("--strict", action="store_true",
                        help="fail at the first malformed row instead of skipping it")
    deprecated_alias(parser, "--input", "--data")


def run_prepare_criteo(args: argparse.Namespace) -> int:
    """Run ``prepare criteo`` from parsed arguments.

    Prints a one-line JSON summary to stdout and the malformed-row report to stderr.

    Args:
        args: namespace from a parser set up by :func:`add_prepare_criteo_arguments`.

    Returns:
        Exit status: 0 on success, 2 on invalid input or options (message on stderr).
    """
    if not args.inputs:
        print("recsys-emb prepare criteo: error: the following arguments are required: --data FILE [FILE ...]",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        meta = prepare_criteo(args.inputs, args.out, vocab_from=args.vocab_from,
                              min_count=args.min_count, hash_buckets=args.hash_buckets,
                              strict=args.strict)
    except (ValueError, OSError) as err:
        print(f"recsys-emb prepare criteo: error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(format_skip_report(meta), file=sys.stderr)
    summary = {key: meta[key] for key in ("rows", "positives", "ctr", "skipped_rows",
                                          "categorical_encoding", "vocab_sizes")}
    rows_read = meta["rows"] + meta["skipped_rows"]
    print(json.dumps({"out": str(args.out), **summary, "seconds": round(seconds, 3),
                      "rows_per_second": round(rows_read / max(seconds, 1e-9))}))
    return 0


def format_skip_report(meta: dict[str, Any]) -> str:
    """Human-readable malformed-row report for the metadata returned by :func:`prepare_criteo`.

    Args:
        meta: the dict returned by :func:`prepare_criteo` (or read from ``meta.json``).

    Returns:
        ``skipped 3 malformed rows of 10,000 (first: train.txt:17: ...)`` plus one line per
        example, or a one-line "no malformed rows" note.
    """
    log = SkipLog(rows_read=meta["rows"] + meta["skipped_rows"], skipped=meta["skipped_rows"],
                  examples=list(meta["malformed_examples"]))
    lines = [log.summary()]
    if len(log.examples) > 1:
        lines += [f"  {example}" for example in log.examples]
    return "\n".join(lines)


def _detect_labels(sources: list[Path]) -> bool:
    """True for 40-field files, False for 39-field ones; all inputs must agree."""
    found: dict[int, str] = {}
    for path in sources:
        first = detect_fields(path)
        if first is None:
            continue
        line, n_fields = first
        n_cols = len(DENSE_FEATURES) + len(SPARSE_FEATURES)
        if n_fields not in (n_cols, n_cols + 1):
            raise ValueError(f"{path}:{line}: {n_fields} fields, expected {n_cols + 1} (label, "
                             f"13 integer, 26 categorical) or {n_cols} (no label)")
        found.setdefault(n_fields, f"{path}:{line}")
    if not found:
        raise ValueError(f"no rows in {', '.join(map(str, sources))} (all empty)")
    if len(found) > 1:
        raise ValueError("inputs mix labelled and unlabelled rows: "
                         + ", ".join(f"{where} has {n} fields" for n, where in found.items()))
    return next(iter(found)) == len(DENSE_FEATURES) + len(SPARSE_FEATURES) + 1


def _choose_encoder(vocab_from: PathLike | None, min_count: int | None,
                    hash_buckets: int | None) -> VocabEncoder | HashEncoder | None:
    """The encoder to use, or None when a vocabulary has to be counted."""
    if min_count is not None and min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if vocab_from is not None:
        if min_count is not None:
            raise ValueError("min_count cannot be combined with vocab_from (the vocabulary is "
                             "reused as saved)")
        encoder = load_encoder(vocab_from, SPARSE_FEATURES)
        if hash_buckets is not None and hash_buckets != encoder.hash_buckets:
            raise ValueError(f"hash_buckets={hash_buckets} conflicts with {vocab_from} "
                             f"({encoder.encoding} encoding, hash_buckets={encoder.hash_buckets})")
        return encoder
    if hash_buckets is not None:
        if min_count is not None:
            raise ValueError("min_count applies to vocabularies, not to hash_buckets")
        return HashEncoder(SPARSE_FEATURES, hash_buckets)
    return None


@dataclass
class _EncodedChunk:
    """Arrays of one chunk, ready to append (built in a parsing thread)."""

    dense: np.ndarray  # (n, 13) float32
    labels: np.ndarray | None  # (n,) float32
    sparse: np.ndarray  # (n, 26) int32: ids, or raw uint32 values bit-cast when counting
    packed_missing: np.ndarray | None  # (n, 4) uint8 bit-packed missing mask when counting
    counts: list[Any] | None  # per-feature value counts when counting


def _parse_pass(sources: list[Path], layout: RowLayout, tmp: Path,
                encoder: VocabEncoder | HashEncoder | None, counter: ValueCounter | None,
                strict: bool, chunk_bytes: int, workers: int) -> tuple[SkipLog, int | None]:
    """Parse the inputs once and append the arrays to ``tmp``; returns (log, positives).

    With an encoder, ``sparse.npy`` receives ids. Without one (a vocabulary still has to be
    counted), values are counted into ``counter`` and ``sparse.npy`` receives the raw uint32
    values (bit-cast to int32) with the missing mask in ``_missing.tmp``, for
    :func:`_encode_in_place`.
    """

    def encode(chunk: ParsedChunk) -> _EncodedChunk:
        values, missing = chunk.sparse_arrays()  # (n, 26), (n, 26)
        if encoder is not None:
            return _EncodedChunk(chunk.dense, chunk.labels, encoder.encode(values, missing),
                                 None, None)
        assert counter is not None
        return _EncodedChunk(chunk.dense, chunk.labels, values.view(np.int32),
                             np.packbits(missing, axis=1), counter.chunk_counts(chunk.sparse))

    log = SkipLog()
    positives = 0
    writers = {"dense": _NpyAppender(tmp / "dense.npy", np.float32, (len(DENSE_FEATURES),)),
               "sparse": _NpyAppender(tmp / "sparse.npy", np.int32, (len(SPARSE_FEATURES),))}
    if layout.has_labels:
        writers["labels"] = _NpyAppender(tmp / "labels.npy", np.float32, ())
    desc = "criteo: parsing + encoding" if counter is None else "criteo: parsing + counting"
    missing_file = open(tmp / _MISSING_FILE, "wb") if counter is not None else None  # noqa: SIM115
    try:
        for chunk in iter_parsed_chunks(sources, layout, log, encode, strict=strict,
                                        chunk_bytes=chunk_bytes, workers=workers, desc=desc):
            writers["dense"].append(chunk.dense)  # (n, 13)
            writers["sparse"].append(chunk.sparse)  # (n, 26)
            if counter is not None and missing_file is not None:
                assert chunk.counts is not None and chunk.packed_missing is not None
                counter.add(chunk.counts)
                missing_file.write(chunk.packed_missing.data)  # (n, 4)
            if chunk.labels is not None:
                writers["labels"].append(chunk.labels)  # (n,)
                positives += int(chunk.labels.sum(dtype=np.float64))
    finally:
        for writer in writers.values():
            writer.close()
        if missing_file is not None:
            missing_file.close()
    return log, positives if layout.has_labels else None


def _encode_in_place(tmp: Path, encoder: VocabEncoder, workers: int,
                     rows_per_step: int = 1 << 17) -> None:
    """Replace the raw values in ``tmp/sparse.npy`` by vocabulary ids, block by block."""
    sparse = np.lib.format.open_memmap(tmp / "sparse.npy", mode="r+")  # (N, 26) int32
    n_rows, n_features = sparse.shape
    packed = np.memmap(tmp / _MISSING_FILE, dtype=np.uint8, mode="r",
                       shape=(n_rows, (n_features + 7) // 8))  # (N, 4) bit-packed mask

    def encode_rows(start: int) -> int:
        stop = min(start + rows_per_step, n_rows)
        missing = np.unpackbits(packed[start:stop], axis=1, count=n_features).view(bool)
        values = np.asarray(sparse[start:stop]).view(np.uint32)  # (n, 26)
        sparse[start:stop] = encoder.encode(values, missing)  # (n, 26)
        return stop - start

    with tqdm(total=n_rows, unit="rows", unit_scale=True, desc="criteo: applying vocabulary",
              disable=None, file=sys.stderr) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done in pool.map(encode_rows, range(0, n_rows, rows_per_step)):
            bar.update(done)
    sparse.flush()
    del sparse, packed
    (tmp / _MISSING_FILE).unlink()


class _NpyAppender:
    """A ``.npy`` file whose first dimension grows as chunks are appended.

    The header is rewritten with the final row count on :meth:`close`; it is padded to a fixed
    128 bytes (the .npy format allows space padding), so the data offset never moves.
    """

    _HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: type[np.generic], row_shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(self._header())

    def append(self, array: np.ndarray) -> None:
        if array.dtype != self.dtype or array.shape[1:] != self.row_shape:
            raise ValueError(f"expected {self.dtype} (n, *{self.row_shape}), got {array.dtype} "
                             f"{array.shape}")
        self._file.write(np.ascontiguousarray(array).data)
        self.rows += array.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(self._header())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _header(self) -> bytes:
        desc = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                "shape": (self.rows, *self.row_shape)}
        text = repr(desc).encode("latin1")
        preamble = np.lib.format.magic(1, 0)
        size = self._HEADER_BYTES - len(preamble) - 2
        return preamble + size.to_bytes(2, "little") + text.ljust(size - 1) + b"\n"


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy file, read without loading the data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(f)
            return np.lib.format.read_array_header_2_0(f)
        except ValueError as err:
            raise ValueError(f"{path}: not a valid .npy file ({err})") from err


def _path_or_none(path: PathLike | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A prepared directory written aside: yields a temporary sibling of ``out`` that replaces ``out`` only
    when the block succeeds (removed when it raises); ``out`` may be empty or an earlier prepared directory."""
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # unlike mkdtemp, keeps the usual (umask) permissions for the final directory
    try:
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier prepared one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not (out / "meta.json").is_file():
        raise ValueError(f"--out {out} exists, is not empty and has no meta.json: refusing to "
                         "replace a directory that was not written by `prepare criteo`")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``, replacing an earlier one."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)
