"""Raw rows -> the tensors an exported artefact takes, with the encodings the model was trained with.

Depends on numpy, polars and the data readers only (never on training code): each reader yields
``(inputs, rows)`` batches, where ``inputs`` is the artefact's positional tensors and ``rows`` what
the output file repeats (line numbers, ids, labels). Malformed rows are skipped, counted and the first
few reported as ``file:line: problem`` (a :class:`~recsys_emb.data.criteo_reader.SkipLog`), as
``recsys-emb prepare`` does.

* **ctr** (``criteo_tsv``): Criteo TSV(.gz) rows ``[label,] I1..I13, C1..C26``: dense ``log1p(max(x, 0))``,
  categorical values through the run's vocabulary (``inputs/vocab``), one id per bag.
* **ctr** (``table_schema``): CSV / TSV (plain or gzip) or Parquet files of a run trained through a feature
  schema (docs/data_schema.md), encoded by ``prepare table`` itself with the artefact's schema, vocabularies,
  hashing, quantile edges and standardisation (``vocab_from``), into a temporary folder read back in batches.
* **sequence** (``sequence_jsonl``): one JSON object per line, ``{"user": u, "history": [i, ...],
  "target": i}`` (raw ids as in the training files; ``label`` optional). The most recent
  ``max_history`` behaviours are used; unknown items become the out-of-vocabulary id (as in training),
  an unknown user is a malformed row (the model has no row for it).
* **retrieval** (``user_ids``): one user index per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_emb.data.criteo_reader import ParsedChunk, RowLayout, SkipLog, detect_fields, iter_parsed_chunks


@dataclass
class RawBatch:
    """One batch: the artefact's inputs and, per row, what the output repeats."""

    inputs: tuple[Tensor, ...]
    labels: np.ndarray | None  # (B,) float, or None when the data has no labels
    keys: list[Any]  # (B,) a row id: source line number (ctr, sequence) or user id (retrieval)


def _record(log: SkipLog, where: str, problem: str) -> None:
    log.skipped += 1
    if len(log.examples) < log.max_examples:
        log.examples.append(f"{where}: {problem}")


# ------------------------------------------------------------------------------------------- ctr
def ctr_batches(paths: list[Path], inputs_dir: Path, spec: dict[str, Any], batch_size: int, log: SkipLog) -> Iterator[RawBatch]:
    """Criteo TSV rows, encoded with the run's vocabulary, in batches of ``batch_size``."""
    from recsys_emb.data.criteo_vocab import load_encoder

    if spec.get("raw") != "criteo_tsv" or spec.get("jagged_features"):
        raise ValueError("this artefact's model was not trained on Criteo-format TSV data (no vocabulary in inputs/); "
                         "raw scoring supports Criteo TSV runs and runs on data prepared through a feature schema only")
    meta = json.loads((inputs_dir / "meta.json").read_text())
    dense_names, sparse_names = list(meta["dense_features"]), list(meta["sparse_features"])
    encoder = load_encoder(inputs_dir, sparse_names)
    width = len(dense_names) + len(sparse_names)
    first = detect_fields(paths[0])
    if first is None:
        raise ValueError(f"{paths[0]}: no rows")
    if first[1] not in (width, width + 1):
        raise ValueError(f"{paths[0]}:{first[0]}: {first[1]} tab-separated fields; expected {width + 1} (label, "
                         f"{len(dense_names)} integer, {len(sparse_names)} categorical) or {width} (no label)")
    layout = RowLayout(tuple(dense_names), tuple(sparse_names), first[1] == width + 1)

    def encode(chunk: ParsedChunk) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        values, missing = chunk.sparse_arrays()  # (n, F), (n, F)
        return chunk.dense.astype(np.float32), encoder.encode(values, missing), chunk.labels

    pending: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None  # rows not yet in a batch
    row = 0
    for part in iter_parsed_chunks(paths, layout, log, encode, desc="predict"):
        # one concatenation per parsed block (the rest of the last one + this block), then slices
        joined = part if pending is None else _concat(pending, part)
        start = 0
        while len(joined[0]) - start >= batch_size:
            yield _ctr_batch(*(None if a is None else a[start:start + batch_size] for a in joined), row)
            start += batch_size
            row += batch_size
        pending = tuple(None if a is None else a[start:] for a in joined) if start < len(joined[0]) else None
    if pending is not None:
        yield _ctr_batch(*pending, row)


def _concat(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Row-wise concatenation of two ``(dense, ids, labels | None)`` parts."""
    return tuple(None if x is None else np.concatenate([x, y]) for x, y in zip(a, b))


def _ctr_batch(dense: np.ndarray, ids: np.ndarray, labels: np.ndarray | None, first_row: int) -> RawBatch:
    b, f = ids.shape
    values = torch.from_numpy(np.ascontiguousarray(ids.T).reshape(-1).astype(np.int64))  # (F*B,) feature-major
    lengths = torch.ones(f, b, dtype=torch.int64)  # one id per bag
    return RawBatch((torch.from_numpy(np.ascontiguousarray(dense)), values, lengths), labels,
                    list(range(first_row, first_row + b)))


# ------------------------------------------------------------------------------- ctr, schema'd tables
def table_batches(paths: list[Path], inputs_dir: Path, spec: dict[str, Any], batch_size: int, log: SkipLog) -> Iterator[RawBatch]:
    """CSV / TSV / Parquet rows of a schema run, encoded exactly as its training data, in batches of ``batch_size``.

    ``prepare table`` (the training path's reader and encoder) prepares ``paths`` into a temporary folder with
    the artefact's ``inputs/vocab`` as ``vocab_from``; its memory-mapped arrays are then cut into batches in the
    key order of the exported model (``spec["keys"]``), multi-valued features as real bags. Malformed rows are
    counted into ``log`` with prepare's ``file:line: column 'x' (field k): problem`` messages. The temporary
    folder is removed when the batches are exhausted (or the generator is closed).

    Raises:
        ValueError: the artefact is not a schema run's, or no row of ``paths`` is valid (the message counts them).
    """
    import shutil
    import tempfile

    from recsys_emb.data.schema import load_saved_schema
    from recsys_emb.data.tabular import prepare_table

    if spec.get("raw") != "table_schema":
        raise ValueError(f"this artefact's inputs are {spec.get('raw')!r}, not a schema run's (table_schema)")
    schema = load_saved_schema(inputs_dir / "vocab" / "schema.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="recsys_predict_"))
    try:
        meta = prepare_table(paths, tmp / "rows", schema, vocab_from=inputs_dir)
        log.rows_read += meta["rows"] + meta["skipped_rows"]
        log.skipped += meta["skipped_rows"]
        log.examples += meta["malformed_examples"][:max(0, log.max_examples - len(log.examples))]
        yield from _prepared_batches(tmp / "rows", meta, list(spec["keys"]), batch_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepared_batches(root: Path, meta: dict[str, Any], keys: list[str], batch_size: int) -> Iterator[RawBatch]:
    """A ``prepare table`` folder's rows as ctr batches (numpy only: the training data loader imports TorchRec)."""
    features, jagged = list(meta["sparse_features"]), list(meta["jagged_features"])
    if sorted(features) != sorted(keys):
        raise ValueError(f"the prepared features {features} are not the model's {keys}: the artefact's inputs/vocab "
                         "does not belong to its model; export the run again")
    dense = np.load(root / "dense.npy", mmap_mode="r")  # (N, D) float32
    sparse = np.load(root / "sparse.npy", mmap_mode="r")  # (N, F - J) int32
    labels = np.load(root / "labels.npy", mmap_mode="r") if meta["has_labels"] else None  # (N,)
    bags = {name: (np.load(root / "jagged" / f"{name}.values.npy", mmap_mode="r"),  # (nnz,) int32
                   np.load(root / "jagged" / f"{name}.offsets.npy", mmap_mode="r")) for name in jagged}  # (N + 1,)
    for start in range(0, int(meta["rows"]), batch_size):
        stop = min(start + batch_size, int(meta["rows"]))
        values, lengths = [], []
        for key in keys:
            if key in bags:
                ids, offsets = bags[key]
                bounds = np.asarray(offsets[start:stop + 1])  # (B + 1,)
                values.append(np.asarray(ids[bounds[0]:bounds[-1]], dtype=np.int64))
                lengths.append(np.diff(bounds))  # (B,)
            else:
                values.append(np.asarray(sparse[start:stop, features.index(key)], dtype=np.int64))  # (B,)
                lengths.append(np.ones(stop - start, dtype=np.int64))
        inputs = (torch.from_numpy(np.array(dense[start:stop], dtype=np.float32)),  # (B, D)
                  torch.from_numpy(np.concatenate(values)),  # (N,) feature-major
                  torch.from_numpy(np.stack(lengths).astype(np.int64)))  # (F, B)
        yield RawBatch(inputs, None if labels is None else np.array(labels[start:stop]), list(range(start, stop)))


# -------------------------------------------------------------------------------------- sequence
class SequenceEncoder:
    """Raw user / item ids -> the sequence batch of the run (the keys and encodings of training)."""

    def __init__(self, inputs_dir: Path, spec: dict[str, Any]) -> None:
        data = np.load(inputs_dir / "sequence.npz")
        self.item_raw_ids = data["item_raw_ids"]  # sorted; encoded id = first_id + position
        self.item_cat = data["item_cat"]
        self.attr_offsets, self.attr_values = data["item_attr_offsets"], data["item_attr_values"]
        raw_users = data["raw_users"]
        self.user_index = {int(u): i for i, u in enumerate(raw_users.tolist())}
        self.max_history = int(spec["max_history"])
        self.first_id, self.oov_id = int(spec["first_id"]), int(spec["oov_id"])
        self.keys = list(spec["keys"])

    def items(self, raw: np.ndarray) -> np.ndarray:
        known = self.item_raw_ids
        if len(known) == 0:
            return np.full(len(raw), self.oov_id, dtype=np.int64)
        idx = np.minimum(np.searchsorted(known, raw), len(known) - 1)
        return np.where(known[idx] == raw, idx + self.first_id, self.oov_id).astype(np.int64)

    def batch(self, users: list[int], histories: list[np.ndarray], targets: np.ndarray) -> tuple[Tensor, Tensor]:
        """``(values, lengths (F, B))`` in the key order of the exported model."""
        hist = [self.items(h[-self.max_history:]) if len(h) else np.zeros(0, dtype=np.int64) for h in histories]
        lens = np.array([len(h) for h in hist], dtype=np.int64)
        flat = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
        recency = np.concatenate([np.arange(n, 0, -1) for n in lens]) if len(lens) else np.zeros(0, dtype=np.int64)
        target = self.items(targets)
        a_start, a_len = self.attr_offsets[target], np.diff(self.attr_offsets)[target]
        a_row = np.zeros(len(a_len), dtype=np.int64)
        np.cumsum(a_len[:-1], out=a_row[1:])
        attrs = self.attr_values[np.repeat(a_start - a_row, a_len) + np.arange(int(a_len.sum()))]
        ones = np.ones(len(lens), dtype=np.int64)
        parts = {
            "hist_item": (flat, lens), "hist_cat": (self.item_cat[flat], lens), "hist_pos": (recency.astype(np.int64), lens),
            "target_item": (target, ones), "target_cat": (self.item_cat[target], ones),
            "target_pos": (np.zeros(len(lens), dtype=np.int64), ones), "user": (np.asarray(users, dtype=np.int64), ones),
            "target_attrs": (attrs, a_len),
        }
        missing = [k for k in self.keys if k not in parts]
        if missing:
            raise ValueError(f"the artefact expects sequence features {missing}, which this recsys_emb cannot build")
        values = np.concatenate([parts[k][0] for k in self.keys]).astype(np.int64)
        lengths = np.stack([parts[k][1] for k in self.keys]).astype(np.int64)  # (F, B)
        return torch.from_numpy(values), torch.from_numpy(lengths)


def _int_id(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"'{field}' must be an integer id, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"'{field}' must be an integer id, got {value!r}") from None


def sequence_batches(paths: list[Path], inputs_dir: Path, spec: dict[str, Any], batch_size: int, log: SkipLog) -> Iterator[RawBatch]:
    """JSON-lines sequence rows (see the module docstring) in batches of ``batch_size``."""
    enc = SequenceEncoder(inputs_dir, spec)
    users: list[int] = []
    hists: list[np.ndarray] = []
    targets: list[int] = []
    labels: list[float] = []
    keys: list[str] = []

    def flush() -> RawBatch:
        values, lengths = enc.batch(users, hists, np.asarray(targets, dtype=np.int64))
        has = len(labels) == len(users) and labels
        out = RawBatch((values, lengths), np.asarray(labels, dtype=np.float32) if has else None, list(keys))
        users.clear(), hists.clear(), targets.clear(), labels.clear(), keys.clear()
        return out

    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                log.rows_read += 1
                where = f"{path}:{n}"
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("expected a JSON object")
                    for field in ("user", "history", "target"):
                        if field not in row:
                            raise ValueError(f"missing field '{field}'")
                    if not isinstance(row["history"], list):
                        raise ValueError(f"'history' must be a list of item ids, got {row['history']!r}")
                    user = enc.user_index.get(_int_id(row["user"], "user"))
                    if user is None:
                        raise ValueError(f"user {row['user']!r} is not one of the model's users")
                    history = np.asarray([_int_id(v, "history") for v in row["history"]], dtype=np.int64)
                    target = _int_id(row["target"], "target")
                    label = float(row["label"]) if "label" in row else None
                except (ValueError, TypeError) as e:
                    _record(log, where, str(e))
                    continue
                users.append(user), hists.append(history), targets.append(target), keys.append(where)
                if label is not None:
                    labels.append(label)
                if len(users) == batch_size:
                    yield flush()
    if users:
        yield flush()


# ------------------------------------------------------------------------------------- retrieval
def user_batches(paths: list[Path], spec: dict[str, Any], batch_size: int, log: SkipLog) -> Iterator[RawBatch]:
    """One user index per line, in batches."""
    num_users = int(spec["num_users"])
    users: list[int] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue
                log.rows_read += 1
                try:
                    user = int(text)
                except ValueError:
                    _record(log, f"{path}:{n}", f"user id {text!r} is not an integer")
                    continue
                if not 0 <= user < num_users:
                    _record(log, f"{path}:{n}", f"user {user} is outside the model's users [0, {num_users})")
                    continue
                users.append(user)
                if len(users) == batch_size:
                    yield RawBatch((torch.tensor(users, dtype=torch.int64),), None, list(users))
                    users = []
    if users:
        yield RawBatch((torch.tensor(users, dtype=torch.int64),), None, list(users))


def check_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    out = [Path(p) for p in paths]
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"--data: {p} does not exist")
    return out
