"""Chunked reading, validation and parsing of Criteo TSV files (plain or gzip).

This is the text side of ``recsys-emb prepare criteo`` (see :mod:`recsys_emb.data.criteo` for the
public entry point and the output format). Files are read in byte blocks of about ``chunk_bytes``
(cut at a newline), each block is split into lines and parsed with polars, so memory stays bounded
whatever the number of rows.

Parsing rules (one row per line, ``\\t``-separated, no header, no quoting):

- ``\\r\\n`` line endings are accepted, and a UTF-8 byte-order mark at the start of a file is
  ignored. Bytes that are not UTF-8 are replaced by U+FFFD, so the row is reported as malformed.
- Blank lines at the end of a file are not rows. A blank line followed by more data is a
  malformed row ("empty line").
- A row must have exactly the expected number of fields (40 with a label, 39 without).
- The label must be exactly ``0`` or ``1``.
- An integer feature is empty (missing) or an optionally signed decimal integer that fits in
  int64 (no spaces, no decimal point).
- A categorical feature is empty (missing) or exactly 8 hexadecimal digits. Upper-case digits are
  accepted and mean the same value as lower-case ones (values are parsed as unsigned 32-bit
  integers, so ``68FD1E64`` and ``68fd1e64`` are one value).

Rows breaking a rule are counted in a :class:`SkipLog` (with ``file:line: problem`` messages for the
first few) and left out, or raise :class:`MalformedRowError` when ``strict`` is set.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Generic, TypeVar

import numpy as np
import polars as pl
from recsys_emb.console import tqdm

_BOM = b"\xef\xbb\xbf"
_LINE = "_line"
_TABS = "_tabs"
_OK = "_ok"
T = TypeVar("T")
R = TypeVar("R")


class MalformedRowError(ValueError):
    """A malformed input row met with ``strict=True``; the message names file, line and field."""


@dataclass(frozen=True)
class RowLayout:
    """Column names of one Criteo row, in file order.

    Args:
        dense: names of the integer features (``I1..I13``).
        sparse: names of the categorical features (``C1..C26``).
        has_labels: whether each row starts with a ``0``/``1`` label field.
    """

    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    has_labels: bool

    @property
    def n_fields(self) -> int:
        """Number of tab-separated fields per row."""
        return len(self.dense) + len(self.sparse) + int(self.has_labels)

    @property
    def names(self) -> list[str]:
        """Field names in file order (``label`` first when present)."""
        return (["label"] if self.has_labels else []) + list(self.dense) + list(self.sparse)


@dataclass
class SkipLog:
    """Bookkeeping of malformed rows: how many, out of how many, and the first few messages.

    Args:
        max_examples: how many ``file:line: problem`` messages to keep.
    """

    max_examples: int = 5
    rows_read: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable line, e.g. ``skipped 3 malformed rows of 10,000 (first: f:17: ...)``."""
        if self.skipped == 0:
            return f"no malformed rows in {self.rows_read:,} rows"
        first = f" (first: {self.examples[0]})" if self.examples else ""
        return f"skipped {self.skipped:,} malformed rows of {self.rows_read:,}{first}"


@dataclass
class ParsedChunk:
    """The valid rows of one block of lines.

    Args:
        labels: ``(n,)`` float32 labels in {0, 1}, or None without labels.
        dense: ``(n, 13)`` float32 ``log1p(max(x, 0))``, missing -> 0.
        sparse: n rows, one UInt32 column per categorical feature, null = missing.
    """

    labels: np.ndarray | None
    dense: np.ndarray
    sparse: pl.DataFrame

    def __len__(self) -> int:
        return self.sparse.height

    def sparse_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, missing)``: ``(n, 26)`` uint32 values (0 where missing) and bool mask."""
        values = self.sparse.select(pl.all().fill_null(0)).to_numpy()  # (n, 26)
        missing = self.sparse.select(pl.all().is_null()).to_numpy()  # (n, 26)
        return np.ascontiguousarray(values, dtype=np.uint32), np.ascontiguousarray(missing)


def detect_fields(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Field count of the first non-blank line of a Criteo file.

    Args:
        path: plain or gzip TSV file.

    Returns:
        ``(line_number, n_fields)`` of the first non-blank line, or None for a file without one.
    """
    with _open_binary(path) as (_, stream):
        for line_no, raw in enumerate(stream, start=1):
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            line = raw.rstrip(b"\r\n")
            if line:
                return line_no, line.count(b"\t") + 1
    return None


def iter_parsed_chunks(
    paths: Sequence[str | os.PathLike[str]],
    layout: RowLayout,
    skip_log: SkipLog,
    transform: Callable[[ParsedChunk], T],
    *,
    strict: bool = False,
    chunk_bytes: int = 16 << 20,
    workers: int = 2,
    desc: str = "criteo",
) -> Iterator[T]:
    """Parse Criteo files in order and yield ``transform(chunk)`` for each block's valid rows.

    Blocks are parsed (and transformed) by ``workers`` threads while the calling thread reads
    and decompresses the next blocks; results come back in file order and at most
    ``workers + 1`` blocks are in flight, so memory stays bounded.

    Args:
        paths: input files (plain or gzip, detected from the content), concatenated in order.
        layout: expected row layout.
        skip_log: receives the count and first messages of malformed rows.
        transform: applied to each :class:`ParsedChunk` in the worker thread (must be
            thread-safe; typically the categorical encoding).
        strict: raise :class:`MalformedRowError` at the first malformed row instead.
        chunk_bytes: uncompressed bytes per block (a block always ends at a line end).
        workers: parsing threads (1 parses in the calling thread).
        desc: progress-bar label (tqdm on stderr, shown only on a terminal).

    Yields:
        ``transform(chunk)`` for each block that holds at least one valid row, in order.
    """
    max_problems = 1 if strict else skip_log.max_examples

    def work(block: _Block) -> _BlockResult[T]:
        return _process_block(block, layout, transform, max_problems)

    total = sum(os.path.getsize(p) for p in paths)
    source: str | None = None
    first_line = 1  # line number (in its file) of the current block's first line
    blank_start, blank_count = 0, 0  # trailing blank lines: not rows unless data follows
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=None, file=sys.stderr) as bar:
        for result in _ordered_map(work, _iter_all_blocks(paths, chunk_bytes), workers):
            block = result.block
            if block.source != source:
                source, first_line, blank_start, blank_count = block.source, 1, 0, 0
            if result.last_filled < 0:
                blank_start = blank_start if blank_count else first_line
                blank_count += result.n_lines
            else:
                _record_range(skip_log, strict, source, blank_start, blank_count, "empty line")
                for index, problem in result.problems:
                    _record(skip_log, strict, source, first_line + index, problem)
                unlisted = result.n_bad - len(result.problems)
                skip_log.skipped += unlisted
                skip_log.rows_read += unlisted + result.n_valid
                end = result.last_filled + 1
                blank_start, blank_count = first_line + end, result.n_lines - end
                if result.payload is not None:
                    yield result.payload
            first_line += result.n_lines
            bar.update(block.progress)


@dataclass
class _Block:
    """Whole lines of one file."""

    data: bytes
    source: str
    progress: int  # bytes of the (possibly compressed) file consumed for this block


@dataclass
class _BlockResult(Generic[T]):
    block: _Block
    n_lines: int
    last_filled: int  # index of the last non-blank line, -1 when all are blank
    n_bad: int  # malformed rows up to last_filled (interior blank lines included)
    problems: list[tuple[int, str]]  # (line index, problem) of the first malformed rows
    n_valid: int
    payload: T | None


def _iter_all_blocks(paths: Sequence[str | os.PathLike[str]], chunk_bytes: int) -> Iterator[_Block]:
    for path in paths:
        with _open_binary(path) as (raw, stream):
            done = 0
            for data in _iter_blocks(stream, chunk_bytes):
                now = raw.tell()
                yield _Block(data, str(path), now - done)
                done = now


def _ordered_map(fn: Callable[[_Block], R], items: Iterator[_Block], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in order, with at most ``workers + 1`` in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="criteo-parse")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            while len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _process_block(block: _Block, layout: RowLayout, transform: Callable[[ParsedChunk], T],
                   max_problems: int) -> _BlockResult[T]:
    """Split, validate, convert and transform one block (runs in a worker thread)."""
    lines = _split_lines(block.data)
    n_lines = len(lines)
    filled = np.flatnonzero((lines.fill_null("") != "").to_numpy())
    if filled.size == 0:
        return _BlockResult(block, n_lines, -1, 0, [], 0, None)
    end = int(filled[-1]) + 1
    chunk, n_bad, problems = _parse_lines(
        lines.slice(0, end), layout, n_filled=filled.size,
        max_problems=max_problems,
    )
    payload = transform(chunk) if len(chunk) else None
    return _BlockResult(block, n_lines, end - 1, n_bad, problems, len(chunk), payload)


def _record_range(log: SkipLog, strict: bool, source: str, start: int, count: int,
                  problem: str) -> None:
    """Count ``count`` malformed rows at lines ``start..`` with one problem (or raise)."""
    shown = min(count, 1 if strict else max(0, log.max_examples - len(log.examples)))
    for k in range(shown):
        _record(log, strict, source, start + k, problem)
    log.skipped += count - shown
    log.rows_read += count - shown


def _record(log: SkipLog, strict: bool, source: str, line: int, problem: str) -> None:
    """Count one malformed row and keep its message (or raise in strict mode)."""
    message = f"{source}:{line}: {problem}"
    if strict:
        raise MalformedRowError(f"{message} (run without --strict to skip and count such rows)")
    log.skipped += 1
    log.rows_read += 1
    if len(log.examples) < log.max_examples:
        log.examples.append(message)


@contextmanager
def _open_binary(path: str | os.PathLike[str]) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """``(raw file, decompressed stream)``; gzip is recognised by its magic bytes."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield raw, stream  # type: ignore[misc]
        else:
            yield raw, raw


def _iter_blocks(stream: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (``\\r\\n`` normalised to ``\\n``, no leading BOM)."""
    rest = b""
    first = True
    while True:
        data = stream.read(max(1, chunk_bytes))
        if not data:
            break
        if first:
            data = rest + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                rest = data
                continue
            rest = b""
            data = data[len(_BOM) :] if data.startswith(_BOM) else data
            first = False
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: a line longer than a block
            rest += data
            continue
        block = b"".join((rest, memoryview(data)[:cut])) if rest or cut < len(data) else data
        rest = data[cut:]
        yield _normalise_eol(block)
    if rest:
        yield _normalise_eol(rest[:-1] if rest.endswith(b"\r") else rest)


def _normalise_eol(block: bytes) -> bytes:
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block


def _split_lines(block: bytes) -> pl.Series:
    """One string per line of ``block`` (blank lines are null or empty)."""
    if b"\x01" not in block:
        # polars' CSV reader with a separator absent from the data is a fast line splitter;
        # its result is used only if line lengths plus line ends add up to the block size.
        lines = pl.read_csv(
            io.BytesIO(block), separator="\x01", has_header=False, quote_char=None,
            schema={_LINE: pl.String}, encoding="utf8-lossy", raise_if_empty=False,
            truncate_ragged_lines=False, comment_prefix=None,
        ).to_series()
        line_ends = len(lines) - (not block.endswith(b"\n"))
        if (lines.str.len_bytes().sum() or 0) + line_ends == len(block):
            return lines
    parts = block.split(b"\n")
    if block.endswith(b"\n"):
        parts.pop()
    return pl.Series(_LINE, [p.decode("utf-8", "replace") for p in parts], dtype=pl.String)


def _missing(name: str) -> pl.Expr:
    return pl.col(name).fill_null("") == ""


def _checks(layout: RowLayout) -> list[tuple[str, pl.Expr]]:
    """(description, "field is valid" expression) in field order, after the field-count check."""
    checks: list[tuple[str, pl.Expr]] = []
    if layout.has_labels:
        checks.append(("label", pl.col("label").is_in(["0", "1"]).fill_null(False)))
    for name in layout.dense:
        checks.append((name, _missing(name) | pl.col(f"_v{name}").is_not_null()))
    for name in layout.sparse:
        value = pl.col(f"_v{name}")
        ok = (value.is_not_null() & (value >= 0) & (pl.col(name).str.len_bytes() == 8)
              & ~pl.col(name).str.starts_with("+"))
        checks.append((name, _missing(name) | ok.fill_null(False)))
    return checks


def _problem(layout: RowLayout, field_name: str, raw: str | None) -> str:
    column = layout.names.index(field_name) + 1
    shown = repr(raw if len(raw or "") <= 40 else (raw or "")[:37] + "...")
    if field_name == "label":
        what = "is not 0 or 1"
    elif field_name in layout.dense:
        what = "is not an integer (int64)"
    else:
        what = "is not 8 hex digits"
    return f"field {field_name} (column {column}): {shown} {what}"


def _parse_lines(
    lines: pl.Series,
    layout: RowLayout,
    *,
    n_filled: int,
    max_problems: int,
) -> tuple[ParsedChunk, int, list[tuple[int, str]]]:
    """Validate and convert lines (the last one non-blank).

    Lines are split into at most ``n_fields`` fields, the last one keeping any extra tabs.
    When no non-blank line lacks its last field (``n_filled`` lines are non-blank) and no last
    field holds a tab, every row has the expected field count and tabs need not be counted.

    Returns:
        (valid rows, number of malformed rows, (line index, problem) of the first
        ``max_problems`` malformed rows).
    """
    names = layout.names
    frame = pl.DataFrame({_LINE: lines}).select(
        pl.col(_LINE).str.splitn("\t", layout.n_fields)
        .struct.rename_fields(names).alias("_fields"),
    ).unnest("_fields")
    last = frame.get_column(names[-1])
    if (last.null_count() == len(lines) - n_filled
            and not last.str.contains("\t", literal=True).any()):
        tabs = pl.when(pl.col(names[-1]).is_null()).then(-1).otherwise(layout.n_fields - 1)
    else:
        line = pl.lit(lines).fill_null("")
        tabs = pl.when(line == "").then(-1).otherwise(line.str.count_matches("\t", literal=True))
    frame = frame.with_columns(
        tabs.alias(_TABS),
        *[pl.col(n).str.to_integer(base=10, strict=False).alias(f"_v{n}") for n in layout.dense],
        *[pl.col(n).str.to_integer(base=16, strict=False).alias(f"_v{n}") for n in layout.sparse],
    )
    checks = _checks(layout)
    count_ok = pl.col(_TABS) == layout.n_fields - 1
    frame = frame.with_columns(
        pl.all_horizontal(count_ok, *[e for _, e in checks]).fill_null(False).alias(_OK)
    )
    n_bad = frame.height - int(frame.get_column(_OK).sum())
    problems: list[tuple[int, str]] = []
    if n_bad:
        flags = frame.with_row_index("_row").filter(~pl.col(_OK)).head(max_problems).select(
            "_row", _TABS, *names, *[e.alias(f"_ok{n}") for n, e in checks]
        )
        for row in flags.iter_rows(named=True):
            if row[_TABS] < 0:
                problem = "empty line"
            elif row[_TABS] != layout.n_fields - 1:
                problem = f"{row[_TABS] + 1} fields, expected {layout.n_fields}"
            else:
                failed = next(n for n, _ in checks if not row[f"_ok{n}"])
                problem = _problem(layout, failed, row[failed])
            problems.append((row["_row"], problem))
        frame = frame.filter(pl.col(_OK))

    sparse = frame.select(pl.col(f"_v{n}").cast(pl.UInt32).alias(n) for n in layout.sparse)
    dense_frame = frame.select(
        pl.col(f"_v{n}").clip(lower_bound=0).cast(pl.Float64).log1p().fill_null(0.0)
        .cast(pl.Float32).alias(n)
        for n in layout.dense
    )
    dense = np.ascontiguousarray(dense_frame.to_numpy())  # (n, 13)
    labels = None
    if layout.has_labels:
        labels = (frame.get_column("label") == "1").cast(pl.Float32).to_numpy()  # (n,)
    return ParsedChunk(labels=labels, dense=dense, sparse=sparse), n_bad, problems
