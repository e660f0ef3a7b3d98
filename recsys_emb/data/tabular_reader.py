"""Reading CSV / TSV (plain or gzip) and Parquet files through a :class:`~recsys_emb.data.schema.TableSchema`.

The text side of ``recsys-emb prepare table`` (the public entry point and the output format are in
:mod:`recsys_emb.data.tabular`). Text files are read in byte blocks cut at line ends (the block reader
of :mod:`recsys_emb.data.criteo_reader`: gzip from the magic bytes, a UTF-8 BOM dropped, ``\\r\\n``
accepted), each block split into lines and fields with polars; Parquet files in record batches
(``pyarrow.parquet.ParquetFile.iter_batches``). Memory stays bounded whatever the number of rows.

Rules (the same as for Criteo TSV, with the schema's column names):

- One row per line. Quoted fields (``format.quote``, doubled quotes inside) are accepted but cannot
  span lines. Blank lines at the end of a file are not rows; a blank line followed by data is a
  malformed row ("empty line").
- The header (``format.header: true``, or ``auto`` when the first non-blank line holds a declared
  column name) must name every column the schema uses; a column neither used nor in ``ignore:`` is
  an error naming the file, the line and the column. Without a header, ``format.columns`` gives the
  order, and the first line must have that many fields (one fewer: the file has no label column).
- A row must have exactly the file's number of fields; the label one of the declared values; an
  ``int`` numeric column a decimal int64, a ``float`` one a finite number; a ``log1p`` input must be
  above -1 (after ``clip``); a categorical value must match its ``pattern``; a derived column's
  source must parse (e.g. ``YYMMDDHH``). Values in ``format.null_values`` are missing (allowed
  everywhere but in the label). Ignored columns are not checked.

A malformed row is counted in a :class:`~recsys_emb.data.criteo_reader.SkipLog` with a
``file:line: column 'x' (field k): problem`` message (for Parquet, the line is the 1-based row),
or raises :class:`~recsys_emb.data.criteo_reader.MalformedRowError` with ``strict``.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys_emb.data.criteo_reader import _BOM, _iter_blocks, _open_binary, _split_lines
from recsys_emb.data.schema import TableSchema
from recsys_emb.data.tabular_join import SideTable, apply_joins

_LINE = "_line"
_NF = "_nf"
_OK = "_ok"
PARQUET_MAGIC = b"PAR1"
DERIVED_FORMAT = "%y%m%d"  # the date part of YYMMDDHH


class SchemaMismatchError(ValueError):
    """A file does not fit its schema as a whole (header, delimiter, columns); names file, line and column."""


@dataclass(frozen=True)
class FileLayout:
    """How one input file is laid out, as found by :func:`inspect_file`.

    Args:
        source: the path as given.
        parquet: a Parquet file (else text).
        columns: column names in file order (text: all fields; Parquet: the columns read).
        has_labels: whether the file has the label column.
        header_line: line number of the header (0: none).
    """

    source: str
    parquet: bool
    columns: tuple[str, ...]
    has_labels: bool
    header_line: int


def is_parquet(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == PARQUET_MAGIC


def split_fields(line: str, schema: TableSchema) -> list[str]:
    """One line's fields (with the schema's delimiter and quote)."""
    fmt = schema.format
    if fmt.quote is None or fmt.quote not in line:
        return line.split(fmt.delimiter)
    return next(csv.reader([line], delimiter=str(fmt.delimiter), quotechar=fmt.quote, strict=True))


def _first_line(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    with _open_binary(path) as (_, stream):
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            line = raw.rstrip(b"\r\n")
            if line:
                return number, line.decode("utf-8", "replace")
    return None


def _delimiter_hint(line: str, schema: TableSchema) -> str:
    others = [d for d in (",", "\t", ";", "|") if d != schema.format.delimiter and d in line]
    return f" (the line contains {others[0]!r}: is format.delimiter {schema.format.delimiter!r} right?)" if others else ""


def _check_names(path: str, where: str, names: Sequence[str], schema: TableSchema) -> bool:
    """Check a file's column names against the schema; returns whether the label column is there."""
    label = schema.label.column if schema.label is not None else None
    known = set(schema.inputs) | set(schema.ignore)
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise SchemaMismatchError(f"{where}: column {dup[0]!r} appears twice")
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SchemaMismatchError(
                f"{where}: column {name!r} is neither used by schema '{schema.name}' nor in its ignore: list{hint}; "
                "add it to ignore: to drop it")
    missing = [c for c in schema.inputs if c not in names and c != label]
    if missing:
        raise SchemaMismatchError(f"{where}: no column {missing[0]!r}, which schema '{schema.name}' uses "
                                  f"(the file has {list(names)})")
    return label is not None and label in names


def inspect_file(path: str | os.PathLike[str], schema: TableSchema) -> FileLayout:
    """Find the layout of one input file and check it against the schema (header, field count, columns).

    Raises:
        SchemaMismatchError: unknown or missing columns, a field count that fits no layout (names the file and line).
        ValueError: an empty file.
    """
    source = str(path)
    if is_parquet(path):
        import pyarrow.parquet as pq

        names = tuple(pq.ParquetFile(path).schema_arrow.names)
        has_labels = _check_names(source, f"{source}: Parquet schema", names, schema)
        return FileLayout(source, True, names, has_labels, 0)
    first = _first_line(path)
    if first is None:
        raise ValueError(f"{source}: no rows (the file is empty)")
    number, line = first
    fmt = schema.format
    try:
        fields = split_fields(line, schema)
    except csv.Error as err:
        raise SchemaMismatchError(f"{source}:{number}: cannot split the first line ({err})") from None
    declared = list(fmt.columns or [])
    header = fmt.header is True or (fmt.header == "auto" and any(f in declared for f in fields))
    if header:
        where = f"{source}:{number}: header"
        if len(fields) == 1 and len(schema.inputs) > 1:
            raise SchemaMismatchError(f"{where}: one column {fields[0][:60]!r}{_delimiter_hint(line, schema)}")
        return FileLayout(source, False, tuple(fields), _check_names(source, where, fields, schema), number)
    label = schema.label.column if schema.label is not None else None
    if len(fields) == len(declared):
        return FileLayout(source, False, tuple(declared), label is not None, 0)
    if label is not None and len(fields) == len(declared) - 1:
        return FileLayout(source, False, tuple(c for c in declared if c != label), False, 0)
    raise SchemaMismatchError(
        f"{source}:{number}: {len(fields)} fields, but format.columns lists {len(declared)} "
        f"({len(declared) - 1} without the label){_delimiter_hint(line, schema)}")


# ------------------------------------------------------------------------------------------ blocks
@dataclass
class Unit:
    """One block of one file: text bytes (whole lines) or a Parquet record batch."""

    layout: FileLayout
    data: bytes | pl.DataFrame
    first_line: int  # line (text) or 1-based row (Parquet) of the block's first line
    progress: int  # bytes of the file consumed for this block


def iter_units(paths: Sequence[str | os.PathLike[str]], layouts: Sequence[FileLayout], chunk_bytes: int,
               batch_rows: int, read_columns: Sequence[str]) -> Iterator[Unit]:
    """Blocks of every file in order (``read_columns``: the columns to read from Parquet)."""
    for path, layout in zip(paths, layouts):
        if layout.parquet:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            size, total = os.path.getsize(path), max(1, pf.metadata.num_rows)
            columns = [c for c in read_columns if c in layout.columns]
            row = 1
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield Unit(layout, frame, row, int(size * frame.height / total))
                row += frame.height
            continue
        with _open_binary(path) as (raw, stream):
            line, done = 1, 0
            for data in _iter_blocks(stream, chunk_bytes):
                now = raw.tell()
                yield Unit(layout, data, line, now - done)
                done = now
                line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


@dataclass
class ParsedRows:
    """The valid rows of one block, still as (string) columns, plus the accounting of the block.

    Args:
        frame: valid rows; every used input column as String (nulls = missing), derived columns added.
        first_line: line number of ``lines[0]`` below.
        n_lines: lines (or Parquet rows) of the block after its header.
        last_filled: index of the last non-blank line, -1 when all are blank.
        n_bad: malformed rows up to ``last_filled`` (interior blank lines included).
        problems: ``(line number, problem)`` of the first malformed rows.
        n_dropped: valid rows left out on purpose (a label value in ``label.drop``); not in ``frame``.
    """

    frame: pl.DataFrame
    first_line: int
    n_lines: int
    last_filled: int
    n_bad: int
    problems: list[tuple[int, str]]
    n_dropped: int = 0


def parse_unit(unit: Unit, schema: TableSchema, max_problems: int, sides: Sequence[SideTable] = ()) -> ParsedRows:
    """Split, check and type one block (runs in a worker thread); ``sides``: the joins' side tables."""
    layout = unit.layout
    used = [c for c in schema.inputs if c in layout.columns]
    if isinstance(unit.data, pl.DataFrame):
        frame = _parquet_strings(unit.data, used, schema)
        frame = frame.with_columns(pl.lit(len(layout.columns), dtype=pl.Int64).alias(_NF))
        first, n_lines, end = unit.first_line, frame.height, frame.height
    else:
        lines = _split_lines(unit.data)
        skip = max(0, layout.header_line - unit.first_line + 1)  # the header and blank lines before it
        lines, first = lines.slice(skip), unit.first_line + skip
        n_lines = len(lines)
        filled = np.flatnonzero((lines.fill_null("") != "").to_numpy())
        if filled.size == 0:
            return ParsedRows(pl.DataFrame(), first, n_lines, -1, 0, [])
        end = int(filled[-1]) + 1
        frame = _split_text(lines.slice(0, end), layout, schema, n_filled=filled.size).select(*used, _NF)
    if frame.height == 0:
        return ParsedRows(frame, first, n_lines, -1, 0, [])
    frame = frame.with_columns(pl.int_range(first, first + frame.height, dtype=pl.Int64).alias(_LINE))
    frame = _normalise(frame, used, schema, sides)
    checks = _checks(frame, layout, schema, sides)
    count_ok = pl.col(_NF) == len(layout.columns)
    frame = frame.with_columns(pl.all_horizontal(count_ok, *[e for _, e, _ in checks]).fill_null(False).alias(_OK))
    n_bad = frame.height - int(frame.get_column(_OK).sum())
    problems: list[tuple[int, str]] = []
    if n_bad:
        bad = frame.filter(~pl.col(_OK)).head(max_problems)
        flags = bad.select(_LINE, _NF, *[e.alias(f"_ok{i}") for i, (_, e, _) in enumerate(checks)])
        raw = bad.select(c for c in dict.fromkeys([*used, *[name for name, _, _ in checks]]) if c in bad.columns)
        for k, row in enumerate(flags.iter_rows(named=True)):
            problems.append((row[_LINE], _problem(row, k, raw, checks, layout)))
        frame = frame.filter(pl.col(_OK))
    n_dropped = 0
    if layout.has_labels and schema.label is not None and schema.label.drop:
        keep = ~pl.col(schema.label.column).is_in(schema.label.drop)
        n_dropped = frame.height - int(frame.select(keep.sum()).item())
        frame = frame.filter(keep)
    frame = frame.drop(_OK, _NF, *[side.match_column for side in sides])
    return ParsedRows(frame, first, n_lines, end - 1, n_bad, problems, n_dropped)


def _parquet_strings(frame: pl.DataFrame, used: list[str], schema: TableSchema) -> pl.DataFrame:
    """Parquet columns as the strings a CSV would hold (list columns of multi-valued features kept as lists)."""
    multi = {m.name for m in schema.multi_valued}
    out = []
    for name in used:
        col = pl.col(name)
        if name in multi and isinstance(frame.schema[name], pl.List):
            out.append(col.list.eval(pl.element().cast(pl.String)).alias(name))
        else:
            out.append(col.cast(pl.String).alias(name))
    return frame.select(out)


def _split_text(lines: pl.Series, layout: FileLayout, schema: TableSchema, *, n_filled: int) -> pl.DataFrame:
    """Lines -> one String column per file column + the field count (``-1``: blank, ``-2``: bad quoting)."""
    names = list(layout.columns)
    delim, quote = str(schema.format.delimiter), schema.format.quote
    if quote is not None and lines.str.contains(quote, literal=True).any():
        return _split_quoted(lines, names, delim, quote)
    frame = pl.DataFrame({"_l": lines}).select(
        pl.col("_l").str.splitn(delim, len(names)).struct.rename_fields(names).alias("_f"),
        pl.col("_l"),
    ).unnest("_f")
    last = frame.get_column(names[-1])
    if last.null_count() == len(lines) - n_filled and not last.str.contains(delim, literal=True).any():
        count = pl.when(pl.col(names[-1]).is_null()).then(-1).otherwise(len(names))  # every filled line complete
    else:
        line = pl.col("_l").fill_null("")
        count = pl.when(line == "").then(-1).otherwise(line.str.count_matches(delim, literal=True) + 1)
    return frame.with_columns(count.cast(pl.Int64).alias(_NF)).drop("_l")


def _split_quoted(lines: pl.Series, names: list[str], delim: str, quote: str) -> pl.DataFrame:
    columns: list[list[str | None]] = [[] for _ in names]
    counts = []
    for line in lines.to_list():
        fields: list[str | None]
        if not line:
            fields, n = [], -1
        else:
            try:
                fields = list(next(csv.reader([line], delimiter=delim, quotechar=quote, strict=True)))
                n = len(fields)
            except csv.Error:
                fields, n = [], -2
        fields = fields[: len(names)] + [None] * max(0, len(names) - len(fields))
        for column, value in zip(columns, fields):
            column.append(value)
        counts.append(n)
    data: dict[str, Any] = {name: pl.Series(name, col, dtype=pl.String) for name, col in zip(names, columns)}
    data[_NF] = pl.Series(_NF, counts, dtype=pl.Int64)
    return pl.DataFrame(data)


def _normalise(frame: pl.DataFrame, used: list[str], schema: TableSchema, sides: Sequence[SideTable] = ()) -> pl.DataFrame:
    """Missing values -> null, lower-casing, joined columns then derived columns added."""
    nulls = list(schema.format.null_values)
    multi = {m.name for m in schema.multi_valued}
    lower = {c.name for c in schema.categorical if c.lowercase} | {m.name for m in schema.multi_valued if m.lowercase}
    exprs = []
    for name in used:
        if name in multi and isinstance(frame.schema[name], pl.List):
            continue
        col = pl.col(name)
        col = pl.when(col.is_in(nulls)).then(None).otherwise(col) if nulls else col
        exprs.append((col.str.to_lowercase() if name in lower else col).alias(name))
    frame = frame.with_columns(exprs)
    if sides:
        frame = apply_joins(frame, list(sides))
        joined = [c for side in sides for c in side.frame.columns if c != side.join.key and c in lower
                  and frame.schema[c] == pl.String]
        if joined:
            frame = frame.with_columns(pl.col(c).str.to_lowercase() for c in joined)
        multi_joined = [c for side in sides for c in side.join.flags if c in lower]
        if multi_joined:
            frame = frame.with_columns(pl.col(c).list.eval(pl.element().str.to_lowercase()) for c in multi_joined)
    extra = []
    for d in schema.derived:
        src = pl.col(d.source)
        if d.fn == "prefix":
            extra.append((src.str.slice(0, d.length).str.to_lowercase() if d.name in lower else src.str.slice(0, d.length))
                         .alias(d.name))
            continue
        day = src.str.slice(0, 6).str.strptime(pl.Date, DERIVED_FORMAT, strict=False)
        valid = src.str.contains(r"^[0-9]{6}(?:[01][0-9]|2[0-3])$") & day.is_not_null()
        value = {"hour_of_day": src.str.slice(6, 2), "weekday": day.dt.weekday().cast(pl.String),
                 "date": src.str.slice(0, 6)}[d.fn]
        out = pl.when(valid).then(value).otherwise(None)
        extra.append((out.str.to_lowercase() if d.name in lower else out).alias(d.name))
    return frame.with_columns(extra) if extra else frame


def numeric_expr(name: str, schema: TableSchema) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """``(value, parses, in log1p domain)`` of a numeric column before standardise / bucketise (Float64, null = missing)."""
    column = next(c for c in schema.numeric if c.name == name)
    raw = pl.col(name)
    if column.dtype == "int":
        value = raw.str.to_integer(base=10, strict=False).cast(pl.Float64)
        parses = raw.is_null() | value.is_not_null()
    else:
        value = raw.cast(pl.Float64, strict=False)
        parses = raw.is_null() | value.is_finite().fill_null(False)
    domain = pl.lit(True)
    for step in column.transform:
        if step == "clip":
            low, high = column.clip or (None, None)
            value = value.clip(lower_bound=low, upper_bound=high)
        elif step == "log1p":
            domain = raw.is_null() | (value > -1.0).fill_null(False)
            value = value.log1p()
    return value, parses, domain


def _checks(frame: pl.DataFrame, layout: FileLayout, schema: TableSchema,
            sides: Sequence[SideTable] = ()) -> list[tuple[str, pl.Expr, str]]:
    """``(column, "valid" expression, what a failure means)`` in file column order (joined columns last)."""
    checks: list[tuple[int, str, pl.Expr, str]] = []
    derived = schema.derived_by_name
    position = {name: i for i, name in enumerate(layout.columns)}

    def add(column: str, expr: pl.Expr, what: str) -> None:
        source = derived[column].source if column in derived else column
        checks.append((position.get(source, len(position)), source, expr, what))

    if layout.has_labels and schema.label is not None:
        lab = schema.label
        values = [*lab.positive, *lab.negative, *lab.drop]
        checks.append((position[lab.column], lab.column, pl.col(lab.column).is_in(values).fill_null(False),
                       f"is not a label ({', '.join(map(repr, values))})"))
    for d in schema.derived:
        if d.fn != "prefix":  # a prefix of any text is valid
            add(d.name, pl.col(d.source).is_null() | pl.col(d.name).is_not_null(), f"is not YYMMDDHH (for derived '{d.name}')")
    for c in schema.numeric:
        _, parses, domain = numeric_expr(c.name, schema)
        add(c.name, parses, "is not an integer (int64)" if c.dtype == "int" else "is not a finite number")
        if "log1p" in c.transform:
            add(c.name, domain, "is at most -1 (log1p undefined; clip it first)")
    for c in schema.categorical:
        if c.pattern is not None:
            add(c.name, pl.col(c.name).is_null() | pl.col(c.name).str.contains(c.pattern).fill_null(False),
                f"does not match pattern {c.pattern!r}")
    for side in sides:  # a key that is present must have its side row
        key = side.join.key
        checks.append((position[key], key, pl.col(key).is_null() | pl.col(side.match_column).fill_null(False),
                       f"has no row in {side.join.name} (join on '{key}')"))
    checks.sort(key=lambda item: item[0])
    return [(name, expr, what) for _, name, expr, what in checks]


def _problem(row: dict[str, Any], k: int, raw: pl.DataFrame, checks: list[tuple[str, pl.Expr, str]],
             layout: FileLayout) -> str:
    if row[_NF] == -1:
        return "empty line"
    if row[_NF] == -2:
        return "unbalanced quotes"
    if row[_NF] != len(layout.columns):
        return f"{row[_NF]} fields, expected {len(layout.columns)}"
    failed = next(i for i in range(len(checks)) if not row[f"_ok{i}"])
    column, _, what = checks[failed]
    value = raw.get_column(column)[k]
    shown = "a missing value" if value is None else repr(value if len(value) <= 40 else value[:37] + "...")
    where = f"field {layout.columns.index(column) + 1}" if column in layout.columns else "from a join"
    return f"column {column!r} ({where}): {shown} {what}"
