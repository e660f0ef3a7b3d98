"""A declared feature schema for CTR tables (CSV / TSV / Parquet): which column is what.

``recsys-emb prepare table --schema S --data FILE...`` and ``data.schema`` of an experiment read a
YAML schema with the project's strict config loader (:mod:`recsys_emb.config.io`: an unknown key is
an error naming the file, the dotted key and the closest valid one). Example (the reference is
docs/data_schema.md; shipped schemas are in ``configs/schemas/``)::

    name: my_clicks
    format: {type: csv, header: true}          # csv | tsv | parquet; delimiter; header true/false/auto
    label: {column: clicked, positive: ["1", "yes"], negative: ["0", "no"]}
    numeric:
      - {name: price, transform: [clip, log1p, standardise], clip: [0, null]}
      - {name: age, transform: [bucketise], buckets: 10}     # -> a categorical feature
    categorical:
      - {name: user_id, min_count: 2}
      - {name: ad_id, hash_buckets: 100000}
      - {name: page_from, table: page}                        # shares vocabulary "page" ...
      - {name: page_to, table: page}                          # ... with page_from
    multi_valued:
      - {name: tags, separator: "|", max_length: 20}
    derived:
      - {name: hour_of_day, source: ts, fn: hour_of_day}     # ts is YYMMDDHH
    crosses:
      - {columns: [user_id, hour_of_day], hash_buckets: 50000}
    joins:                                                    # side tables looked up by a key column
      - {file: users.csv, key: user_id, format: {type: csv, header: true, columns: [user_id, age, country]}}
    ignore: [row_id]

Sparse features, in this order: ``categorical`` (as listed), bucketised ``numeric``, ``crosses``,
then ``multi_valued`` (the prepared layout stores multi-valued features last). Dense features: the
other ``numeric`` columns. Each sparse feature uses a *table* (a vocabulary or a hashing), by default
its own, named after the feature; features naming the same ``table`` share one vocabulary.

``joins`` add the columns of small side tables (e.g. MovieLens' ``u.user`` and ``u.item``) to every row,
looked up by a key column (``key``) of the main file; ``flags`` turn 0/1 indicator columns of a side table
into one list column (a multi-valued feature). Relative side-table paths are relative to the folder of
the first data file; ``prepare table`` stores the side tables in the prepared folder (``vocab/joins/``),
from which ``--vocab-from`` preparations and ``predict`` read them (:mod:`recsys_emb.data.tabular_join`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CategoricalColumn", "CrossColumn", "DerivedColumn", "DERIVED_FUNCTIONS", "FormatConfig", "JoinConfig", "LabelConfig",
    "MultiValuedColumn", "NumericColumn", "SHIPPED_SCHEMAS", "SparseFeature", "TableSchema", "load_schema",
    "load_saved_schema", "resolve_schema_path", "schema_from_dict",
]

SHIPPED_SCHEMAS = Path(__file__).resolve().parents[2] / "configs" / "schemas"  # `schema: avazu` -> avazu.yaml there
NUMERIC_STEPS = ("clip", "log1p", "standardise", "bucketise")
# name -> what it expects (the functions themselves are polars expressions in recsys_emb/data/tabular.py)
DERIVED_FUNCTIONS = {
    "hour_of_day": "YYMMDDHH (Avazu's hour) -> the hour, 00..23",
    "weekday": "YYMMDDHH -> the day of the week, 1 (Monday) .. 7 (Sunday)",
    "date": "YYMMDDHH -> YYMMDD",
    "prefix": "any text -> its first `length` characters (e.g. a zip code's region)",
}


@dataclass
class FormatConfig:
    """How the text files are laid out (Parquet files are recognised by their content and need none of it)."""

    type: str = "csv"  # csv | tsv | parquet (sets the default delimiter; Parquet is detected from the file)
    delimiter: str | None = None  # one character; default "," for csv, "\t" for tsv
    header: bool | str = True  # true: first non-blank line names the columns; false: `columns` does; auto: either
    columns: list[str] | None = None  # column names in file order (required with header false / auto)
    quote: str | None = '"'  # quote character (a quoted field cannot span lines); null = no quoting
    null_values: list[str] = field(default_factory=lambda: [""])  # values that mean "missing"

    def __post_init__(self) -> None:
        if self.type not in ("csv", "tsv", "parquet"):
            raise ValueError(f"format.type must be csv, tsv or parquet, got {self.type!r}")
        if self.delimiter is None:
            self.delimiter = "\t" if self.type == "tsv" else ","
        if len(self.delimiter) != 1 or self.delimiter in "\r\n":
            raise ValueError(f"format.delimiter must be one character other than a line end, got {self.delimiter!r}")
        if self.quote is not None and (len(self.quote) != 1 or self.quote == self.delimiter):
            raise ValueError(f"format.quote must be one character other than the delimiter, or null; got {self.quote!r}")
        if self.header not in (True, False, "auto"):
            raise ValueError(f"format.header must be true, false or auto, got {self.header!r}")
        if self.header is not True and not self.columns:
            raise ValueError(f"format.header: {self.header}: list the column names in file order in format.columns")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise ValueError(f"format.columns: {dup} listed twice")


@dataclass
class LabelConfig:
    """The label column and which of its values are clicks (1) and non-clicks (0); any other value is malformed."""

    column: str = "label"  # column name
    positive: list[str] = field(default_factory=lambda: ["1"])  # values meaning 1
    negative: list[str] = field(default_factory=lambda: ["0"])  # values meaning 0
    drop: list[str] = field(default_factory=list)  # values whose rows are left out on purpose (counted, not malformed)

    def __post_init__(self) -> None:
        both = set(self.positive) & set(self.negative)
        if both:
            raise ValueError(f"label: {sorted(both)} are both positive and negative")
        kept = sorted(set(self.drop) & (set(self.positive) | set(self.negative)))
        if kept:
            raise ValueError(f"label: {kept} are both dropped and a label value")
        if not self.positive or not self.negative:
            raise ValueError("label: positive and negative need at least one value each")


@dataclass
class NumericColumn:
    """A numeric column: a dense feature, or (``bucketise``) a categorical one of quantile buckets."""

    name: str = ""  # column (or derived column) name
    dtype: str = "float"  # float | int (int: a decimal integer that fits int64, anything else is malformed)
    transform: list[str] | str = field(default_factory=list)  # steps in order: clip, log1p, standardise, bucketise
    clip: list[float | None] | None = None  # [low, high] for `clip`; null = unbounded on that side
    buckets: int | None = None  # `bucketise`: number of quantile buckets, fitted on the training file
    fill: float = 0.0  # dense value of a missing entry (after the transform); bucketised: missing id 0
    table: str | None = None  # bucketised only: the table (default: the column's name)

    def __post_init__(self) -> None:
        where = f"numeric '{self.name}'"
        if not self.name:
            raise ValueError("numeric: every column needs a name")
        self.transform = [self.transform] if isinstance(self.transform, str) else list(self.transform)
        for step in self.transform:
            if step not in NUMERIC_STEPS:
                raise ValueError(f"{where}: transform step {step!r} is not one of {list(NUMERIC_STEPS)}")
        if len(set(self.transform)) != len(self.transform):
            raise ValueError(f"{where}: transform {self.transform} repeats a step")
        if "bucketise" in self.transform:
            if self.transform[-1] != "bucketise" or "standardise" in self.transform:
                raise ValueError(f"{where}: bucketise must be the last step and cannot follow standardise")
            if self.buckets is None or self.buckets < 2:
                raise ValueError(f"{where}: bucketise needs buckets: N (N >= 2 quantile buckets)")
        elif self.buckets is not None or self.table is not None:
            raise ValueError(f"{where}: buckets / table apply to bucketised columns only (transform: [..., bucketise])")
        if self.dtype not in ("float", "int"):
            raise ValueError(f"{where}: dtype must be float or int, got {self.dtype!r}")
        if ("clip" in self.transform) != (self.clip is not None):
            raise ValueError(f"{where}: the clip step and clip: [low, high] go together")
        if self.clip is not None:
            if len(self.clip) != 2 or all(b is None for b in self.clip):
                raise ValueError(f"{where}: clip must be [low, high] with at least one bound (null = unbounded)")
            low, high = self.clip
            if low is not None and high is not None and low > high:
                raise ValueError(f"{where}: clip low {low} > high {high}")

    @property
    def bucketised(self) -> bool:
        return "bucketise" in self.transform


@dataclass
class CategoricalColumn:
    """A single-valued categorical column: a vocabulary (min_count) or hashing (hash_buckets)."""

    name: str = ""  # column (or derived column) name
    min_count: int | None = None  # keep values seen this often in training (null = the prepare default, 2)
    hash_buckets: int | None = None  # hash into this many rows instead of a vocabulary
    table: str | None = None  # the table (vocabulary) it uses; features naming the same table share it
    pattern: str | None = None  # a regular expression every value must match (else the row is malformed)
    lowercase: bool = False  # fold values to lower case before matching and encoding

    def __post_init__(self) -> None:
        _check_encoding(f"categorical '{self.name}'", self.name, self.min_count, self.hash_buckets)
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"categorical '{self.name}': pattern {self.pattern!r} is not a regular expression ({err})") from None


@dataclass
class MultiValuedColumn:
    """A multi-valued (list) column: ``a|b|c`` becomes a bag of ids (a jagged feature)."""

    name: str = ""  # column name (text: one string split at `separator`; Parquet: a list column or such a string)
    separator: str = "|"  # between the values of one cell
    max_length: int | None = None  # keep the first N values of a cell (null = all)
    min_count: int | None = None  # as for categorical columns
    hash_buckets: int | None = None
    table: str | None = None
    lowercase: bool = False

    def __post_init__(self) -> None:
        _check_encoding(f"multi_valued '{self.name}'", self.name, self.min_count, self.hash_buckets)
        if not self.separator:
            raise ValueError(f"multi_valued '{self.name}': separator must not be empty")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"multi_valued '{self.name}': max_length must be >= 1 or null")


@dataclass
class DerivedColumn:
    """A column computed from another by a named function (:data:`DERIVED_FUNCTIONS`); use its name as a column."""

    name: str = ""  # the new column's name
    source: str = ""  # the input column it is computed from
    fn: str = ""  # hour_of_day | weekday | date | prefix
    length: int | None = None  # prefix: characters kept

    def __post_init__(self) -> None:
        if not self.name or not self.source:
            raise ValueError("derived: every entry needs name and source")
        if self.fn not in DERIVED_FUNCTIONS:
            raise ValueError(f"derived '{self.name}': fn {self.fn!r} is not one of {sorted(DERIVED_FUNCTIONS)}")
        if (self.fn == "prefix") != (self.length is not None):
            raise ValueError(f"derived '{self.name}': length goes with fn: prefix (and prefix needs length: N)")
        if self.length is not None and self.length < 1:
            raise ValueError(f"derived '{self.name}': length must be >= 1, got {self.length}")


@dataclass
class CrossColumn:
    """A feature cross: the tuple of two or more columns' values as one categorical value (missing if any is)."""

    columns: list[str] = field(default_factory=list)  # the crossed columns (input, derived or categorical)
    name: str | None = None  # feature name (default: the columns joined by "_x_")
    min_count: int | None = None
    hash_buckets: int | None = None
    table: str | None = None

    def __post_init__(self) -> None:
        if len(self.columns) < 2:
            raise ValueError(f"crosses: {self.columns} needs at least two columns")
        if self.name is None:
            self.name = "_x_".join(self.columns)
        _check_encoding(f"cross '{self.name}'", self.name, self.min_count, self.hash_buckets)


def _check_encoding(where: str, name: str, min_count: int | None, hash_buckets: int | None) -> None:
    if not name:
        raise ValueError(f"{where}: a name is required")
    if min_count is not None and hash_buckets is not None:
        raise ValueError(f"{where}: give min_count (a vocabulary) or hash_buckets (hashing), not both")
    if min_count is not None and min_count < 1:
        raise ValueError(f"{where}: min_count must be >= 1, got {min_count}")
    if hash_buckets is not None and not 1 <= hash_buckets < 2**31 - 1:
        raise ValueError(f"{where}: hash_buckets must be in [1, 2**31 - 2], got {hash_buckets}")


@dataclass
class JoinConfig:
    """A side table whose columns are added to every row with the same key (a left lookup, one row per key)."""

    file: str = ""  # the side table (CSV / TSV, plain or gzip); relative: to the first data file's folder
    key: str = ""  # the key column: a column of the main file and of the side table
    format: FormatConfig = field(default_factory=FormatConfig)  # the side table's layout (header or columns)
    encoding: str = "utf-8"  # text encoding of the side table (MovieLens' u.item: latin-1)
    flags: dict[str, list[str]] = field(default_factory=dict)  # new list column -> the 0/1 columns it collects
    name: str | None = None  # how messages name it (default: the file's name)

    def __post_init__(self) -> None:
        if isinstance(self.format, dict):
            self.format = FormatConfig(**self.format)
        if not self.file or not self.key:
            raise ValueError("joins: every entry needs file and key (the column joined on)")
        if self.name is None:
            self.name = Path(self.file).name
        if self.format.type == "parquet":
            raise ValueError(f"join '{self.name}': side tables are CSV / TSV (format.type csv or tsv)")
        if not self.format.columns or self.key not in self.format.columns:
            raise ValueError(f"join '{self.name}': format.columns must list the side table's columns, the key '{self.key}' "
                             "included (with a header line, the header is checked against it)")
        for column, sources in self.flags.items():
            if not sources:
                raise ValueError(f"join '{self.name}': flags '{column}' lists no columns")
            if self.key in sources:
                raise ValueError(f"join '{self.name}': flags '{column}' cannot collect the key column '{self.key}'")
            unknown = [c for c in sources if c not in self.format.columns]
            if unknown:
                raise ValueError(f"join '{self.name}': flags '{column}' collects {unknown}, which are not in its format.columns")

    def provided(self, columns: list[str]) -> list[str]:
        """The columns this join adds, given the side table's columns (flag sources become their list column)."""
        used = {c for sources in self.flags.values() for c in sources}
        return [c for c in columns if c != self.key and c not in used] + list(self.flags)


@dataclass(frozen=True)
class SparseFeature:
    """One sparse feature of a schema, resolved: what it is made from and which table it uses."""

    name: str
    kind: str  # categorical | bucketised | cross | multi_valued
    table: str
    columns: tuple[str, ...]  # the column(s) it reads (cross: several)
    min_count: int | None
    hash_buckets: int | None


@dataclass
class TableSchema:
    """A CTR table's schema (see the module docstring)."""

    name: str = "table"  # data set name, written to meta.json's `dataset`
    format: FormatConfig = field(default_factory=FormatConfig)
    label: LabelConfig | None = field(default_factory=LabelConfig)  # null: the data has no label
    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)
    multi_valued: list[MultiValuedColumn] = field(default_factory=list)
    derived: list[DerivedColumn] = field(default_factory=list)
    crosses: list[CrossColumn] = field(default_factory=list)
    joins: list[JoinConfig] = field(default_factory=list)  # side tables looked up by a key column
    ignore: list[str] = field(default_factory=list)  # input columns dropped on purpose (e.g. a row id)

    def __post_init__(self) -> None:
        derived = {d.name: d for d in self.derived}
        names = [j.name for j in self.joins]
        if len(set(names)) != len(names):
            raise ValueError(f"joins: two entries are named the same ({names}); give them distinct name:")
        flagged = [c for j in self.joins for c in j.flags]
        if len(set(flagged)) != len(flagged):
            raise ValueError(f"joins: flags columns {sorted({c for c in flagged if flagged.count(c) > 1})} are declared twice")
        for j in self.joins:
            if j.key in self.joined:
                raise ValueError(f"join '{j.name}': key '{j.key}' comes from a join itself (join on main-file columns)")
        features = [c.name for c in self.numeric] + [c.name for c in self.categorical] + \
            [c.name for c in self.multi_valued] + [str(c.name) for c in self.crosses]
        dup = sorted({f for f in features if features.count(f) > 1})
        if dup:
            raise ValueError(f"features {dup} are declared twice (each column is numeric, categorical or multi_valued once)")
        if len(derived) != len(self.derived):
            raise ValueError("derived: two entries have the same name")
        label = self.label.column if self.label is not None else None
        if label is not None and label in features:
            raise ValueError(f"the label column '{label}' is also declared as a feature")
        for d in self.derived:
            if d.source in derived:
                raise ValueError(f"derived '{d.name}': source '{d.source}' is itself derived (derive from input columns)")
        for m in self.multi_valued:
            if m.name in derived:
                raise ValueError(f"multi_valued '{m.name}' must be an input column, not a derived one")
            if self.format.type != "parquet" and m.separator == self.format.delimiter:
                raise ValueError(f"multi_valued '{m.name}': separator {m.separator!r} is the column delimiter; "
                                 "choose another (e.g. '|')")
        for cross in self.crosses:
            for col in cross.columns:
                if col in {m.name for m in self.multi_valued}:
                    raise ValueError(f"cross '{cross.name}': '{col}' is multi-valued (cross single-valued columns)")
        used = set(self.inputs)
        both = sorted(used & set(self.ignore))
        if both:
            raise ValueError(f"ignore: {both} are also used by the schema")
        unused_derived = sorted(set(derived) - set(features) - {c for x in self.crosses for c in x.columns})
        if unused_derived:
            raise ValueError(f"derived {unused_derived} are not used: list them under categorical or numeric")
        if self.format.columns is not None:
            listed = set(self.format.columns)
            missing = [c for c in self.inputs if c not in listed]
            if missing:
                raise ValueError(f"format.columns lacks {missing}, which the schema uses")
            unknown = [c for c in self.format.columns if c not in used and c not in self.ignore]
            if unknown:
                raise ValueError(f"format.columns: {unknown} are neither used nor in ignore: (list them under ignore: "
                                 "to drop them)")
        # shared tables: one encoding per table
        encodings: dict[str, tuple[str, int | None, int | None]] = {}
        for feat in self.sparse_features:
            if feat.kind == "bucketised":
                if sum(f.table == feat.table for f in self.sparse_features) > 1:
                    raise ValueError(f"numeric '{feat.name}': a bucketised column cannot share table '{feat.table}'")
                continue
            seen = encodings.setdefault(feat.table, (feat.name, feat.min_count, feat.hash_buckets))
            if seen[1:] != (feat.min_count, feat.hash_buckets):
                raise ValueError(f"table '{feat.table}': '{seen[0]}' and '{feat.name}' set different min_count / "
                                 "hash_buckets (features sharing a table share its encoding; set it on one, or the same on all)")

    @property
    def derived_by_name(self) -> dict[str, DerivedColumn]:
        return {d.name: d for d in self.derived}

    @property
    def joined(self) -> dict[str, JoinConfig]:
        """Columns that joins provide (a side table's columns but its key, and its flags columns) -> their join."""
        out: dict[str, JoinConfig] = {}
        for j in self.joins:
            for column in j.provided(list(j.format.columns or [])):
                out.setdefault(column, j)
        return out

    def read_columns(self) -> list[str]:
        """Every column the schema reads (label first), from the main file or a join, in declaration order."""
        derived = self.derived_by_name
        names = [self.label.column] if self.label is not None else []
        for col in [c.name for c in self.numeric] + [c.name for c in self.categorical] + [m.name for m in self.multi_valued]:
            names.append(derived[col].source if col in derived else col)
        for cross in self.crosses:
            names += [derived[c].source if c in derived else c for c in cross.columns]
        names += [d.source for d in self.derived]
        return list(dict.fromkeys(names))

    @property
    def inputs(self) -> list[str]:
        """Columns of the MAIN file the schema reads (label first, join keys last), without duplicates."""
        joined = self.joined
        return list(dict.fromkeys([c for c in self.read_columns() if c not in joined] + [j.key for j in self.joins]))

    @property
    def dense_features(self) -> list[str]:
        return [c.name for c in self.numeric if not c.bucketised]

    @property
    def sparse_features(self) -> list[SparseFeature]:
        """Every sparse feature in prepared order: categorical, bucketised numeric, crosses, multi-valued (last)."""
        out = [SparseFeature(c.name, "categorical", c.table or c.name, (c.name,), c.min_count, c.hash_buckets)
               for c in self.categorical]
        out += [SparseFeature(c.name, "bucketised", c.table or c.name, (c.name,), None, None)
                for c in self.numeric if c.bucketised]
        out += [SparseFeature(str(c.name), "cross", c.table or str(c.name), tuple(c.columns), c.min_count, c.hash_buckets)
                for c in self.crosses]
        out += [SparseFeature(m.name, "multi_valued", m.table or m.name, (m.name,), m.min_count, m.hash_buckets)
                for m in self.multi_valued]
        return out


def resolve_schema_path(schema: str | Path) -> Path:
    """A schema path, or a shipped schema's name (``criteo``, ``avazu``, ``movielens_100k``) -> its file."""
    path = Path(schema)
    if path.is_file():
        return path
    shipped = SHIPPED_SCHEMAS / f"{schema}.yaml"
    if not path.suffix and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_SCHEMAS.glob("*.yaml"))
    raise FileNotFoundError(f"schema {schema!r}: no such file, and not a shipped schema name (shipped: {', '.join(names)})")


def load_schema(schema: str | Path | TableSchema) -> TableSchema:
    """Load a schema YAML (strictly: unknown keys are errors with a did-you-mean hint) or a shipped schema by name."""
    if isinstance(schema, TableSchema):
        return schema
    from recsys_emb.config.io import load_config

    return load_config(TableSchema, resolve_schema_path(schema))


def schema_dict(schema: TableSchema) -> dict[str, Any]:
    """The schema as plain data (what ``vocab/schema.yaml`` of a prepared folder holds)."""
    from recsys_emb.config.io import to_dict

    return to_dict(schema)


_COLUMN_SECTIONS: dict[str, Any] = {"numeric": NumericColumn, "categorical": CategoricalColumn, "multi_valued": MultiValuedColumn,
                    "derived": DerivedColumn, "crosses": CrossColumn}


def schema_from_dict(data: dict[str, Any]) -> TableSchema:
    """The schema of a plain dict written by :func:`schema_dict` (a prepared folder's ``vocab/schema.yaml``).

    Builds the dataclasses directly, without the strict config loader (:mod:`recsys_emb.config` is training
    code that the serving side, :mod:`recsys_emb.inference.raw`, must not import). Hand-written schemas go
    through :func:`load_schema`, whose errors name the key and the closest valid one.
    """
    rest = dict(data)
    fmt = FormatConfig(**(rest.pop("format", None) or {}))
    label = rest.pop("label", {})
    sections: dict[str, Any] = {key: [cls(**entry) for entry in rest.pop(key, None) or []]
                                for key, cls in _COLUMN_SECTIONS.items()}
    sections["joins"] = [JoinConfig(**{**j, "format": FormatConfig(**(j.get("format") or {}))}) for j in rest.pop("joins", None) or []]
    return TableSchema(format=fmt, label=None if label is None else LabelConfig(**label), **sections, **rest)


def load_saved_schema(path: str | Path) -> TableSchema:
    """A prepared folder's (or an artefact's) ``vocab/schema.yaml`` -> its schema (see :func:`schema_from_dict`).

    Raises:
        ValueError: the file is not a schema written by ``prepare table`` (names the file and the problem).
    """
    import yaml

    path = Path(path)
    try:
        return schema_from_dict(yaml.safe_load(path.read_text()))
    except (TypeError, AttributeError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a schema written by `recsys-emb prepare table` ({err})") from None
