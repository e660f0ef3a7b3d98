"""Side tables of a feature schema's ``joins:``: read, checked, stored with the prepared data, looked up per row.

A join adds the columns of a small side table (MovieLens' ``u.user``: age, gender, occupation, zip; ``u.item``:
genre flags) to every row of the main file with the same key. Rules:

- A side table is read whole (side tables are small: one row per user or item), as text in the join's
  ``encoding``, plain or gzip, split with its ``format`` (delimiter, quote, header checked against
  ``format.columns``). A line with the wrong number of fields, a duplicate key, a missing key or a flag
  value other than 0/1 is an error naming the file, the line and the column: a side table is reference
  data, and a silently wrong one would spoil every row that uses it.
- ``flags: {genres: [action, comedy, ...]}`` collects, per side row, the names of the listed columns whose
  value is ``1`` into a list column ``genres`` (a multi-valued feature; none set: an empty bag).
- The lookup is a left join on the key: a main row whose key is missing gets missing joined values; a main
  row whose key is not in the side table is a malformed row (``column 'user_id' (field 1): '944' has no
  row in u.user``), counted and reported like any other (:mod:`recsys_emb.data.tabular_reader`).
- ``prepare table`` stores every side table, as read, in ``vocab/joins/<name>.parquet`` of the prepared
  folder; a preparation with ``--vocab-from`` (validation and test splits, ``predict`` on raw rows) reads
  them from there, so the splits and the served model see the same side tables as training did.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys_emb.data.schema import JoinConfig, TableSchema

JOINS_DIR = "joins"  # under a prepared folder's vocab/


@dataclass(frozen=True)
class SideTable:
    """One join's side table: the key column and the columns it provides (String; flags: List[String])."""

    join: JoinConfig
    frame: pl.DataFrame
    source: str  # where it was read from (a file, or a prepared folder's copy)

    @property
    def match_column(self) -> str:
        return f"_joined_{self.join.name}"


def _read_text(path: Path, encoding: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not {encoding} text ({err.reason}); set the join's encoding: "
                         "(e.g. latin-1)") from None


def read_side_table(join: JoinConfig, path: Path) -> SideTable:
    """Read and check one side table (see the module docstring for the rules)."""
    fmt = join.format
    columns = list(fmt.columns or [])
    text = _read_text(path, join.encoding)
    reader = csv.reader(io.StringIO(text), delimiter=str(fmt.delimiter), quotechar=fmt.quote or '"',
                        quoting=csv.QUOTE_MINIMAL if fmt.quote else csv.QUOTE_NONE, strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    header_pending = fmt.header is True
    key = columns.index(join.key)
    try:
        for fields in reader:
            number = reader.line_num
            if not fields or fields == [""]:
                continue
            if header_pending:
                header_pending = False
                if fields != columns:
                    raise ValueError(f"{path}:{number}: header {fields} differs from join '{join.name}' format.columns {columns}")
                continue
            if len(fields) != len(columns):
                raise ValueError(f"{path}:{number}: {len(fields)} fields, join '{join.name}' format.columns lists {len(columns)}")
            value = fields[key]
            if value in fmt.null_values:
                raise ValueError(f"{path}:{number}: column '{join.key}' (field {key + 1}): a missing key")
            if value in seen:
                raise ValueError(f"{path}:{number}: column '{join.key}' (field {key + 1}): key {value!r} repeats line "
                                 f"{seen[value]} (a side table has one row per key)")
            seen[value] = number
            rows.append(fields)
            lines.append(number)
    except csv.Error as err:
        raise ValueError(f"{path}:{reader.line_num}: {err}") from None
    if not rows:
        raise ValueError(f"{path}: join '{join.name}' has no rows")
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    flagged = {c for sources in join.flags.values() for c in sources}
    for name, sources in join.flags.items():
        for c in sources:
            bad = next((i for i, v in enumerate(data[c]) if v not in ("0", "1")), None)
            if bad is not None:
                raise ValueError(f"{path}:{lines[bad]}: column '{c}' (field {columns.index(c) + 1}): {data[c][bad]!r} is not "
                                 f"a 0/1 flag (flags '{name}' of join '{join.name}')")
        data[name] = [[c for c in sources if data[c][i] == "1"] for i in range(len(rows))]  # type: ignore[misc]
    nulls = list(fmt.null_values)
    frame = pl.DataFrame({c: data[c] for c in columns if c not in flagged} | {n: data[n] for n in join.flags},
                         schema={**{c: pl.String for c in columns if c not in flagged}, **{n: pl.List(pl.String) for n in join.flags}})
    plain = [c for c in columns if c not in flagged and c != join.key]
    if plain and nulls:
        frame = frame.with_columns(pl.when(pl.col(c).is_in(nulls)).then(None).otherwise(pl.col(c)).alias(c) for c in plain)
    return SideTable(join, frame.with_columns(pl.lit(True).alias(f"_joined_{join.name}")), str(path))


def side_table_path(join: JoinConfig, base: Path) -> Path:
    """Where a join's file is: as given when absolute, else relative to ``base`` (the first data file's folder)."""
    path = Path(os.path.expanduser(join.file))
    return path if path.is_absolute() else base / path


def load_side_tables(schema: TableSchema, base: Path) -> list[SideTable]:
    """Every join's side table from its file (``base``: the folder relative paths start from).

    Raises:
        FileNotFoundError: a side table is missing (names the join, the path looked at and how it was resolved).
        ValueError: a side table breaks a rule of the module docstring (names the file, line and column).
    """
    out = []
    for join in schema.joins:
        path = side_table_path(join, base)
        if not path.is_file():
            raise FileNotFoundError(f"join '{join.name}': {path} not found (file: {join.file!r}; a relative path is read "
                                    f"from the first data file's folder, {base})")
        out.append(read_side_table(join, path))
    return out


def save_side_tables(vocab_dir: Path, sides: list[SideTable]) -> None:
    """Store the side tables in ``vocab_dir/joins/`` (read back by :func:`load_saved_side_tables`)."""
    if not sides:
        return
    (vocab_dir / JOINS_DIR).mkdir(parents=True, exist_ok=True)
    for side in sides:
        side.frame.drop(side.match_column).write_parquet(vocab_dir / JOINS_DIR / f"{side.join.name}.parquet")


def load_saved_side_tables(prepared_dir: Path, schema: TableSchema) -> list[SideTable]:
    """The side tables stored with a prepared folder (or a run's ``data/``, or an artefact's inputs)."""
    out = []
    for join in schema.joins:
        path = Path(prepared_dir) / "vocab" / JOINS_DIR / f"{join.name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the prepared folder {prepared_dir} has no copy of join "
                                    f"'{join.name}' (prepare the training data again with this schema)")
        frame = pl.read_parquet(path)
        out.append(SideTable(join, frame.with_columns(pl.lit(True).alias(f"_joined_{join.name}")), str(path)))
    return out


def apply_joins(frame: pl.DataFrame, sides: list[SideTable]) -> pl.DataFrame:
    """``frame`` with every side table's columns added (left join on the key; the match flag column is kept)."""
    for side in sides:
        frame = frame.join(side.frame, on=side.join.key, how="left", coalesce=True, maintain_order="left")
    return frame
