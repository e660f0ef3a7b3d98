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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
from tqdm import tqdm

_BOM = b"\xef\xbb\xbf"
_LINE = "_line"
_TABS = "_tabs"
_OK = "_ok"


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
    *,
    strict: bool = False,
    chunk_bytes: int = 32 << 20,
    desc: str = "criteo",
) -> Iterator[ParsedChunk]:
    """Parse Criteo files in order, yielding the valid rows block by block.

    Args:
        paths: input files (plain or gzip, detected from the content), concatenated in order.
        layout: expected row layout.
        skip_log: receives the count and first messages of malformed rows.
        strict: raise :class:`MalformedRowError` at the first malformed row instead.
        chunk_bytes: uncompressed bytes per block (a block always ends at a line end).
        desc: progress-bar label (tqdm on stderr, shown only on a terminal).

    Yields:
        One :class:`ParsedChunk` per block that holds at least one valid row.
    """
    total = sum(os.path.getsize(p) for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=None, file=sys.stderr) as bar:
        for path in paths:
            name = str(path)
            next_line = 1  # file line number of the next block's first line
            blank_start, blank_count = 0, 0  # trailing blank lines, not rows unless data follows
            with _open_binary(path) as (raw, stream):
                done = 0
                for block in _iter_blocks(stream, chunk_bytes):
                    lines = _split_lines(block)
                    filled = np.flatnonzero((lines.fill_null("") != "").to_numpy())
                    n_tabs = block.count(b"\t")
                    if filled.size == 0:
                        blank_start = blank_start if blank_count else next_line
                        blank_count += len(lines)
                    else:
                        # Blank lines followed by data are malformed rows.
                        _record_range(skip_log, strict, name, blank_start, blank_count, "empty line")
                        end = int(filled[-1]) + 1
                        chunk = _parse_lines(lines.slice(0, end), layout, skip_log, strict=strict,
                                             source=name,
                                             first_line=next_line, n_tabs=n_tabs,
                                             n_filled=filled.size)
                        blank_start, blank_count = next_line + end, len(lines) - end
                        if len(chunk):
                            yield chunk
                    next_line += len(lines)
                    now = raw.tell()
                    bar.update(now - done)
                    done = now


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
        if rest:
            data = rest + data
        if first:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                rest = data
                continue
            data = data[len(_BOM) :] if data.startswith(_BOM) else data
            first = False
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: a line longer than a block
            rest = data
            continue
        rest = data[cut:]
        yield _normalise_eol(data[:cut])
    if rest:
        yield _normalise_eol(rest[:-1] if rest.endswith(b"\r") else rest)


def _normalise_eol(block: bytes) -> bytes:
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block


def _split_lines(block: bytes) -> pl.Series:
    """One string per line of ``block`` (blank lines are null or empty)."""
    n_lines = block.count(b"\n") + (not block.endswith(b"\n"))
    if b"\x01" not in block:
        # polars' CSV reader with a separator absent from the data is a fast line splitter.
        lines = pl.read_csv(
            io.BytesIO(block), separator="\x01", has_header=False, quote_char=None,
            schema={_LINE: pl.String}, encoding="utf8-lossy", raise_if_empty=False,
            truncate_ragged_lines=False, comment_prefix=None,
        ).to_series()
        if len(lines) == n_lines:
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
    skip_log: SkipLog,
    *,
    strict: bool,
    source: str,
    first_line: int,
    n_tabs: int,
    n_filled: int,
) -> ParsedChunk:
    """Validate and convert a block of lines (the last one non-blank).

    ``n_tabs`` is the number of tabs in the block and ``n_filled`` its number of non-blank
    lines: when every non-blank line has its last field and the tab total is right, every line
    has exactly the expected field count, and counting tabs line by line can be skipped.
    """
    names = layout.names
    frame = pl.DataFrame({_LINE: lines}).select(
        pl.col(_LINE).str.split_exact("\t", layout.n_fields - 1)
        .struct.rename_fields(names).alias("_fields"),
    ).unnest("_fields")
    n_blank = len(lines) - n_filled
    if n_tabs == (layout.n_fields - 1) * n_filled and frame[names[-1]].null_count() == n_blank:
        tabs = pl.when(pl.col(names[-1]).is_null()).then(-1).otherwise(layout.n_fields - 1)
    else:
        line = pl.lit(lines).fill_null("")
        tabs = pl.when(line == "").then(-1).otherwise(line.str.count_matches("\t", literal=True))
    frame = frame.with_columns(tabs.alias(_TABS))
    frame = frame.with_columns(
        *[pl.col(n).str.to_integer(base=10, strict=False).alias(f"_v{n}") for n in layout.dense],
        *[pl.col(n).str.to_integer(base=16, strict=False).alias(f"_v{n}") for n in layout.sparse],
    )
    checks = _checks(layout)
    count_ok = pl.col(_TABS) == layout.n_fields - 1
    frame = frame.with_columns(pl.all_horizontal(count_ok, *[e for _, e in checks]).alias(_OK))
    n_bad = frame.height - int(frame.get_column(_OK).sum())
    if n_bad:
        bad = frame.with_row_index("_row").filter(~pl.col(_OK))
        shown = min(n_bad, 1 if strict else max(0, skip_log.max_examples - len(skip_log.examples)))
        flags = bad.head(shown).select(
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
            _record(skip_log, strict, source, first_line + row["_row"], problem)
        skip_log.skipped += n_bad - shown
        skip_log.rows_read += n_bad - shown
        frame = frame.filter(pl.col(_OK))
    skip_log.rows_read += frame.height

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
    return ParsedChunk(labels=labels, dense=dense, sparse=sparse)
