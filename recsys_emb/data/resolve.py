"""Turn the data paths of a config (raw Criteo TSV, schema'd CSV/TSV/Parquet, or prepared folders) into prepared row ranges.

Raw files are prepared once into a cache folder keyed by (path, size, mtime, options), so a second
run with the same inputs starts at once. The vocabulary is always counted on the TRAINING rows only;
validation/test files are encoded with it (``--vocab-from``). Without an explicit validation file,
the LAST ``valid_fraction`` of the training rows become the validation set (a temporal split, as
Criteo rows are in time order).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from recsys_emb.config.experiment import DataConfig
from recsys_emb.data.cache import default_cache_dir, file_fingerprint
from recsys_emb.data.dataset import PreparedCTRData, sparse_tables
from recsys_emb.utils import open_text


# what a missing data.train / valid / test should have been, and where the public data sets are described
NOT_FOUND_HINT = ("expected a Criteo TSV(.gz) file (or, with data.schema, a CSV/TSV/Parquet file) or a directory "
                  "written by `recsys-emb prepare criteo|table|movielens`; "
                  "where to download each data set: datasets/README.md")


@dataclass(frozen=True)
class Split:
    """Rows ``[start, stop)`` of a prepared folder (``stop=None``: to the end)."""

    root: Path
    start: int = 0
    stop: int | None = None

    def open(self) -> tuple[PreparedCTRData, int, int]:
        data = PreparedCTRData.open(self.root)
        return data, self.start, len(data) if self.stop is None else self.stop


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def split_raw_file(path: Path, fraction: float, out_dir: Path) -> tuple[Path, Path]:
    """Write the first ``1 - fraction`` and the last ``fraction`` of ``path``'s non-empty lines to two files."""
    head, tail = out_dir / "head.txt.gz", out_dir / "tail.txt.gz"
    if head.is_file() and tail.is_file():
        return head, tail
    with open_text(path, newline="") as f:
        total = sum(1 for line in f if line.strip())
    n_tail = int(round(total * fraction))
    if total - n_tail < 1 or n_tail < 1:
        raise ValueError(f"{path}: {total} rows cannot be split into train/valid with valid_fraction={fraction}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Per-process temporary names: several processes (e.g. benchmark seeds) may split the same file at once;
    # each writes whole files and the last os.replace wins (same content).
    tmp_head, tmp_tail = (p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp") for p in (head, tail))
    with open_text(path, newline="") as f, gzip.open(tmp_head, "wt", compresslevel=1, newline="") as h, gzip.open(
        tmp_tail, "wt", compresslevel=1, newline=""
    ) as t:
        seen = 0
        for line in f:
            if not line.strip():
                continue
            (h if seen < total - n_tail else t).write(line if line.endswith("\n") else line + "\n")
            seen += 1
    os.replace(tmp_head, head)
    os.replace(tmp_tail, tail)
    return head, tail


def prepare_cached(inputs: list[Path], cfg: DataConfig, cache: Path, role: str, vocab_from: Path | None) -> Path:
    """Prepare raw ``inputs`` into ``cache/prepared/<role>-<key>`` once; return the folder.

    With ``cfg.schema`` the files go through :func:`recsys_emb.data.tabular.prepare_table`; with
    ``vocab_from`` the schema saved there (``vocab/schema.yaml``) is used, so validation, test and
    ``evaluate`` data are read exactly like the training data."""
    schema = _schema_file(cfg, vocab_from)
    schema_key = hashlib.sha1(schema.read_bytes()).hexdigest() if schema is not None else None
    key = _key(role, *[file_fingerprint(p) for p in inputs], cfg.min_count, cfg.hash_buckets, vocab_from,
               *([schema_key] if schema_key else []))
    out = cache / "prepared" / f"{role}-{key}"
    if not is_prepared(out):
        if vocab_from is None:
            encoding = {"hash_buckets": cfg.hash_buckets} if cfg.hash_buckets else {"min_count": cfg.min_count}
        else:
            encoding = {"vocab_from": vocab_from}  # ids exactly as in the training vocabulary (or hashing)
        if schema is not None:
            from recsys_emb.data.tabular import prepare_table

            prepare_table(inputs, out, schema, strict=cfg.strict, **encoding)
        else:
            from recsys_emb.data.criteo import prepare_criteo

            prepare_criteo(inputs, out, strict=cfg.strict, **encoding)
    return out


def _schema_file(cfg: DataConfig, vocab_from: Path | None) -> Path | None:
    """The schema file raw inputs are read with (None: Criteo TSV)."""
    if cfg.schema is None:
        return None
    saved = Path(vocab_from) / "vocab" / "schema.yaml" if vocab_from is not None else None
    if saved is not None and saved.is_file():
        return saved
    from recsys_emb.data.schema import resolve_schema_path

    return resolve_schema_path(cfg.schema)


def resolve_data(cfg: DataConfig) -> dict[str, Split]:
    """Return prepared splits ``{"train", "valid"[, "test"]}`` for a data config (preparing raw inputs)."""
    if cfg.train is None:
        raise ValueError("data.train is not set: pass --train PATH or set data.train in the config")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    train_path = Path(cfg.train)
    if not train_path.exists():
        raise FileNotFoundError(f"data.train: {train_path} does not exist ({NOT_FOUND_HINT})")
    splits: dict[str, Split] = {}
    if is_prepared(train_path):
        train_root = train_path
        if cfg.valid is None:
            rows = len(PreparedCTRData.open(train_root))
            cut = rows - int(round(rows * cfg.valid_fraction))
            if cut < 1 or cut >= rows:
                raise ValueError(f"{train_root}: {rows} rows cannot be split with valid_fraction={cfg.valid_fraction}")
            splits["train"], splits["valid"] = Split(train_root, 0, cut), Split(train_root, cut, rows)
        else:
            splits["train"] = Split(train_root)
    else:
        if cfg.valid is None:
            schema = _schema_file(cfg, None)
            parts = cache / "splits" / _key(file_fingerprint(train_path), cfg.valid_fraction,
                                            *([hashlib.sha1(schema.read_bytes()).hexdigest()] if schema else []))
            if schema is not None:  # a header goes to both parts; Parquet is split by rows
                from recsys_emb.data.schema import load_schema
                from recsys_emb.data.tabular import split_table_file

                head, tail = split_table_file(train_path, load_schema(schema), cfg.valid_fraction, parts)
            else:
                head, tail = split_raw_file(train_path, cfg.valid_fraction, parts)
            train_root = prepare_cached([head], cfg, cache, "train", None)
            splits["train"] = Split(train_root)
            splits["valid"] = Split(prepare_cached([tail], cfg, cache, "valid", train_root))
        else:
            train_root = prepare_cached([train_path], cfg, cache, "train", None)
            splits["train"] = Split(train_root)
    for role in ("valid", "test"):
        value = getattr(cfg, role)
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"data.{role}: {path} does not exist ({NOT_FOUND_HINT})")
        splits[role] = Split(path if is_prepared(path) else prepare_cached([path], cfg, cache, role, train_root))
    check_compatible(splits)
    return splits


def _meta(root: Path) -> dict:
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a prepared data directory (no meta.json)")
    return json.loads(path.read_text())


def check_compatible(splits: dict[str, Split]) -> None:
    """Every split must use the training split's features and fit its tables (checked on meta.json)."""
    train = _meta(splits["train"].root)
    for role, split in splits.items():
        other = _meta(split.root)
        for key in ("sparse_features", "dense_features"):
            if other[key] != train[key]:
                raise ValueError(f"{role} data {split.root} has different {key} than the training data {splits['train'].root}")
        if sparse_tables(other) != sparse_tables(train):  # features sharing a table (a schema's `table:`)
            raise ValueError(f"{role} data {split.root} shares tables differently from the training data {splits['train'].root} "
                             f"({sparse_tables(other)} vs {sparse_tables(train)}); prepare it with --vocab-from {splits['train'].root}")
        too_big = [
            f"{name}: {v} > {t}"
            for name, v, t in zip(other["sparse_features"], other["vocab_sizes"], train["vocab_sizes"])
            if v > t
        ]
        if too_big:
            raise ValueError(
                f"{role} data {split.root} has ids beyond the training vocabulary ({', '.join(too_big[:3])}); "
                f"prepare it with --vocab-from {splits['train'].root}"
            )
