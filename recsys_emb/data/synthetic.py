"""Synthetic Criteo-like click logs with a known ceiling: ``recsys-emb synth criteo``.

``synth_criteo(out_dir, rows, test_rows, seed)`` writes::

    DIR/train.txt.gz   `rows` rows in the exact Criteo TSV format: label, I1..I13, C1..C26
    DIR/test.txt.gz    `test_rows` rows (default rows // 5) from the same hidden model
    DIR/oracle.json    AUC and logloss of the TRUE click probabilities (the ceiling any model can
                       reach) on each split, the CTRs, row counts and everything needed to
                       rebuild the generator (seed, scale, hidden-model knobs, calibrated bias)

Rows follow Criteo's layout exactly: 40 tab-separated fields, empty field = missing (trailing
empty fields kept), integers in decimal (I2 can be negative), categoricals as 8 lowercase hex
digits. Marginals (missing rates, count distributions, vocabulary growth) are calibrated on real
Criteo rows and the labels come from a factorisation-machine-like hidden model; see
:mod:`recsys_emb.data.synthetic_model` and ``docs/synthetic_criteo.md``.

Determinism: rows are drawn in blocks of :data:`BLOCK_ROWS`, each from its own seeded stream, and
written in chunks of whole blocks, so the bytes depend on (seed, scale, rows) only, not on the
chunk size; the first ``n`` rows of a longer run equal a run of ``n`` rows. Memory is bounded by
the chunk size. Files are written to temporary names and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from recsys_emb.console import tqdm

from recsys_emb.data.synthetic_model import (
    NUM_DENSE,
    NUM_SPARSE,
    SCALES,
    HiddenModelConfig,
    SynthBlock,
    SynthCriteoModel,
    block_rng,
)
from recsys_emb.utils import atomic_save_json, open_text

__all__ = [
    "BLOCK_ROWS",
    "add_synth_criteo_arguments",
    "format_rows",
    "load_synth_model",
    "oracle_lift",
    "read_criteo_rows",
    "run_synth_criteo",
    "synth_criteo",
    "true_click_probabilities",
]

FORMAT_VERSION = 1
BLOCK_ROWS = 4096  # rows per random stream; never change without bumping FORMAT_VERSION
DEFAULT_CHUNK_ROWS = 32768
SPLIT_IDS = {"train": 0, "test": 1}
_NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)
_AUC_BINS = 1 << 21
_AUC_LOGIT_RANGE = 30.0
_MISSING_INT = np.iinfo(np.int64).min  # placeholder of empty integer fields while parsing


# --------------------------------------------------------------------------- formatting
def format_rows(
    labels: np.ndarray,
    dense: np.ndarray,
    dense_missing: np.ndarray,
    codes: np.ndarray,
    cat_missing: np.ndarray,
) -> bytes:
    """Render rows as Criteo TSV bytes (vectorised: every byte is scattered into one buffer).

    Args:
        labels: (N,) ints in {0, 1}.
        dense: (N, 13) int64 counts.
        dense_missing: (N, 13) bool; missing fields are written empty.
        codes: (N, 26) uint32 categorical values, written as 8 lowercase hex digits.
        cat_missing: (N, 26) bool; missing fields are written empty.

    Returns:
        ``N`` lines of 40 tab-separated fields, each ending in ``\\n``.
    """
    n = len(labels)
    if n == 0:
        return b""
    dense = np.asarray(dense, dtype=np.int64)
    magnitude = np.abs(dense)
    negative = (dense < 0) & ~dense_missing
    digits = 1 + np.searchsorted(_POW10, magnitude, side="right")  # (N, 13) digits of |x|
    widths = np.empty((n, _NUM_FIELDS), dtype=np.int64)  # (N, 40) field widths in bytes
    widths[:, 0] = 1
    widths[:, 1 : 1 + NUM_DENSE] = np.where(dense_missing, 0, digits + negative)
    widths[:, 1 + NUM_DENSE :] = np.where(cat_missing, 0, 8)
    ends = np.cumsum(widths + 1, axis=1)  # (N, 40) end of each field incl. its separator
    row_len = ends[:, -1]
    row_start = np.concatenate([[0], np.cumsum(row_len)[:-1]])  # (N,)
    starts = row_start[:, None] + ends - widths - 1  # (N, 40) first byte of each field
    buf = np.empty(int(row_len.sum()), dtype=np.uint8)
    seps = starts + widths  # (N, 40) position of the tab / newline after each field
    buf[seps[:, :-1]] = ord("\t")
    buf[seps[:, -1]] = ord("\n")
    buf[starts[:, 0]] = ord("0") + np.asarray(labels, dtype=np.uint8)
    # Integers: optional '-', then digits from the least significant one backwards.
    d_starts = starts[:, 1 : 1 + NUM_DENSE]
    buf[d_starts[negative]] = ord("-")
    last = d_starts + negative + digits - 1  # (N, 13) position of the units digit
    present = ~dense_missing
    rest = magnitude.copy()
    for d in range(int(digits[present].max(initial=1))):
        sel = present & (digits > d)
        buf[(last - d)[sel]] = ord("0") + (rest[sel] % 10).astype(np.uint8)
        rest //= 10
    # Categoricals: 8 hex digits, most significant nibble first.
    c_starts = starts[:, 1 + NUM_DENSE :][~cat_missing]  # (P,) present fields only
    c_codes = np.asarray(codes, dtype=np.uint32)[~cat_missing]  # (P,)
    for k in range(8):
        buf[c_starts + k] = _HEX[(c_codes >> np.uint32(28 - 4 * k)) & np.uint32(0xF)]
    return buf.tobytes()


# --------------------------------------------------------------------------- metrics
class _OracleMetrics:
    """Streaming AUC (histogram of 2M logit bins over [-30, 30]) and logloss of true probabilities.

    Pairs whose logits fall in the same bin (width 3e-5) count as ties, so the AUC matches the
    exact rank AUC to about 1e-5.
    """

    def __init__(self) -> None:
        self.pos = np.zeros(_AUC_BINS, dtype=np.int64)
        self.neg = np.zeros(_AUC_BINS, dtype=np.int64)
        self.loss_sum = 0.0
        self.prob_sum = 0.0
        self.rows = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Add rows (a chunk starting on a block boundary): true logits (N,) and labels (N,)."""
        scaled = (np.clip(logits, -_AUC_LOGIT_RANGE, _AUC_LOGIT_RANGE) + _AUC_LOGIT_RANGE) / (
            2 * _AUC_LOGIT_RANGE
        )
        bins = np.minimum((scaled * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        y = labels.astype(bool)
        self.pos += np.bincount(bins[y], minlength=_AUC_BINS)
        self.neg += np.bincount(bins[~y], minlength=_AUC_BINS)
        # -log p = softplus(-l), -log(1 - p) = softplus(l)
        losses = np.where(y, np.logaddexp(0.0, -logits), np.logaddexp(0.0, logits))
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits))
        # Sum block by block (chunks start on block boundaries), so the float rounding and hence
        # oracle.json do not depend on the chunk size.
        for start in range(0, len(labels), BLOCK_ROWS):
            self.loss_sum += float(losses[start : start + BLOCK_ROWS].sum())
            self.prob_sum += float(probs[start : start + BLOCK_ROWS].sum())
        self.rows += len(labels)

    def summary(self) -> dict[str, Any]:
        positives = int(self.pos.sum())
        negatives = int(self.neg.sum())
        auc: float | None = None
        if positives and negatives:
            pos_above = (
                np.cumsum(self.pos[::-1])[::-1] - self.pos
            )  # positives in strictly higher bins
            wins = (self.neg * (pos_above + 0.5 * self.pos)).sum(dtype=np.float64)
            auc = float(wins / (positives * negatives))
        rows = max(self.rows, 1)
        return {
            "rows": self.rows,
            "positives": positives,
            "ctr": positives / rows if self.rows else None,
            "mean_true_probability": self.prob_sum / rows if self.rows else None,
            "oracle_auc": auc,
            "oracle_logloss": self.loss_sum / rows if self.rows else None,
        }


def oracle_lift(auc: float, oracle_auc: float) -> float:
    """Share of the oracle's lift over chance a model reaches: ``(auc - .5) / (oracle - .5)``.

    Args:
        auc: the model's test AUC.
        oracle_auc: ``oracle.json``'s ``oracle_auc``.
    """
    return (auc - 0.5) / (oracle_auc - 0.5)


# --------------------------------------------------------------------------- writing
@dataclass
class _Split:
    name: str
    rows: int
    final: Path
    tmp: Path


def _blocks(model: SynthCriteoModel, split: str, rows: int, chunk_rows: int) -> Any:
    """Yield chunks of whole random blocks (the last one truncated), ``chunk_rows`` at a time."""
    per_chunk = max(chunk_rows // BLOCK_ROWS, 1)
    n_blocks = math.ceil(rows / BLOCK_ROWS)
    for first in range(0, n_blocks, per_chunk):
        parts = [
            model.sample(block_rng(model.seed, SPLIT_IDS[split], b), BLOCK_ROWS)
            for b in range(first, min(first + per_chunk, n_blocks))
        ]
        block = SynthBlock(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
        keep = min(rows - first * BLOCK_ROWS, len(block.labels))
        yield SynthBlock(*(a[:keep] for a in block))


def _write_split(
    model: SynthCriteoModel,
    split: _Split,
    chunk_rows: int,
    compresslevel: int,
    bar: tqdm,
) -> dict[str, Any]:
    metrics = _OracleMetrics()
    with open(split.tmp, "wb") as raw:
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0
        ) as gz:
            for block in _blocks(model, split.name, split.rows, chunk_rows):
                cat_missing = block.ranks < 0
                codes = model.encode(np.maximum(block.ranks, 0))  # (N, 26)
                gz.write(
                    format_rows(block.labels, block.dense, block.dense_missing, codes, cat_missing)
                )
                metrics.update(block.logits, block.labels)
                bar.update(len(block.labels))
        raw.flush()
        os.fsync(raw.fileno())
    return {"file": split.final.name, **metrics.summary()}


def synth_criteo(
    out_dir: str | os.PathLike[str],
    rows: int,
    test_rows: int | None = None,
    seed: int = 0,
    scale: str = "small",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    compresslevel: int = 1,
    config: HiddenModelConfig | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write a synthetic Criteo-like data set (train, test, oracle.json) and return its summary.

    Args:
        out_dir: output folder (created if needed; existing files of the same names are replaced).
        rows: training rows (> 0).
        test_rows: test rows (>= 0); default ``rows // 5``.
        seed: non-negative seed; the hidden model depends on (seed, scale, config) only.
        scale: ``"small"`` (default; vocabularies sized for ~1M rows) or ``"full"`` (Kaggle sizes).
        chunk_rows: rows generated and written per step (memory bound); rounded down to whole
            blocks of :data:`BLOCK_ROWS` (at least one). Does not change the output.
        compresslevel: gzip level 1-9 (1 is fastest).
        config: hidden-model knobs (default :class:`HiddenModelConfig`).
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.

    Returns:
        The summary: ``oracle.json``'s contents plus ``out_dir``, ``seconds``, ``rows_per_min``.
    """
    if rows <= 0:
        raise ValueError(f"rows must be > 0, got {rows}")
    test_rows = rows // 5 if test_rows is None else test_rows
    if test_rows < 0:
        raise ValueError(f"test_rows must be >= 0, got {test_rows}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    if not 1 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be in 1..9, got {compresslevel}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = SynthCriteoModel(seed, scale, config)
    splits = []
    for name, n in (("train", rows), ("test", test_rows)):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.txt.gz.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data sets are meant to be shared
        splits.append(_Split(name, n, out / f"{name}.txt.gz", Path(tmp)))
    try:
        results = {}
        with tqdm(
            total=rows + test_rows,
            unit="row",
            unit_scale=True,
            desc="synth criteo",
            disable=None if progress is None else not progress,
            file=sys.stderr,
        ) as bar:
            for split in splits:
                results[split.name] = _write_split(model, split, chunk_rows, compresslevel, bar)
        # Never leave an old oracle.json next to new rows (it is rewritten right after).
        (out / "oracle.json").unlink(missing_ok=True)
        for split in splits:
            os.replace(split.tmp, split.final)
    finally:
        for split in splits:
            split.tmp.unlink(missing_ok=True)
    oracle = {
        "format_version": FORMAT_VERSION,
        "generator": "recsys_emb.data.synthetic",
        "seed": seed,
        "scale": scale,
        "rows": {"train": rows, "test": test_rows},
        "oracle_auc": results["test"]["oracle_auc"],
        "oracle_logloss": results["test"]["oracle_logloss"],
        "ctr": results["train"]["ctr"],
        "train": results["train"],
        "test": results["test"],
        "vocab_sizes": model.vocab_sizes,
        "block_rows": BLOCK_ROWS,
        "hidden_model": model.describe(),
        "auc_method": "histogram of true logits, 2^21 bins on [-30, 30] (exact to ~1e-5)",
    }
    atomic_save_json(out / "oracle.json", oracle)
    seconds = time.perf_counter() - start
    return {
        "out_dir": str(out),
        **oracle,
        "seconds": round(seconds, 3),
        "rows_per_min": round((rows + test_rows) / seconds * 60.0),
    }


# --------------------------------------------------------------------------- reading back
def load_synth_model(out_dir: str | os.PathLike[str]) -> SynthCriteoModel:
    """Rebuild the generator (and hidden model) of a data set from its ``oracle.json``.

    Args:
        out_dir: a folder written by :func:`synth_criteo`.

    Raises:
        ValueError: when the stored calibrated bias differs from the rebuilt one (the data set was
            written by an incompatible version of the generator).
    """
    path = Path(out_dir) / "oracle.json"
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    hidden = dict(meta["hidden_model"])
    seed, scale, bias = hidden.pop("seed"), hidden.pop("scale"), hidden.pop("bias")
    hidden["interaction_columns"] = tuple(hidden["interaction_columns"])
    model = SynthCriteoModel(seed, scale, HiddenModelConfig(**hidden))
    if not math.isclose(model.bias, bias, rel_tol=0.0, abs_tol=1e-9):
        raise ValueError(
            f"{path}: rebuilt hidden model has bias {model.bias!r}, the file says {bias!r}: "
            "the data set was written by a different generator version"
        )
    return model


def read_criteo_rows(path: str | os.PathLike[str]) -> tuple[np.ndarray, ...]:
    """Parse a labelled Criteo TSV(.gz) strictly (for checks on generated files; not a fast reader).

    Args:
        path: file with 40-field rows.

    Returns:
        ``(labels (N,) uint8, dense (N, 13) int64, dense_missing (N, 13) bool, codes (N, 26)
        uint32, cat_missing (N, 26) bool)``.

    Raises:
        ValueError: naming the file, line and field of the first malformed row.
    """
    path = Path(path)
    labels: list[int] = []
    dense: list[list[int]] = []
    codes: list[list[int]] = []
    with open_text(path, encoding="ascii", newline="\n") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != _NUM_FIELDS:
                raise ValueError(f"{path}:{line_no}: {len(fields)} fields, expected {_NUM_FIELDS}")
            try:
                if fields[0] not in ("0", "1"):
                    raise ValueError("label")
                labels.append(int(fields[0]))
                dense.append([int(v) if v else _MISSING_INT for v in fields[1 : 1 + NUM_DENSE]])
                row = []
                for v in fields[1 + NUM_DENSE :]:
                    if v and (len(v) != 8 or v != v.lower()):
                        raise ValueError(f"categorical {v!r}")
                    row.append(int(v, 16) if v else -1)
                codes.append(row)
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: malformed field ({exc})") from None
    d = np.asarray(dense, dtype=np.int64).reshape(-1, NUM_DENSE)
    c = np.asarray(codes, dtype=np.int64).reshape(-1, NUM_SPARSE)
    d_missing = d == _MISSING_INT
    c_missing = c < 0
    return (
        np.asarray(labels, dtype=np.uint8),
        np.where(d_missing, 0, d),
        d_missing,
        np.where(c_missing, 0, c).astype(np.uint32),
        c_missing,
    )


def true_click_probabilities(
    out_dir: str | os.PathLike[str], split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the true click probabilities of a written split from its rows.

    Args:
        out_dir: a folder written by :func:`synth_criteo`.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(probabilities (N,) float64, labels (N,) uint8)`` in file order.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    model = load_synth_model(out_dir)
    labels, dense, dense_missing, codes, cat_missing = read_criteo_rows(
        Path(out_dir) / f"{split}.txt.gz"
    )
    ranks = model.decode(codes, cat_missing)
    return model.probabilities(dense, dense_missing, ranks), labels


# --------------------------------------------------------------------------- CLI
def add_synth_criteo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth criteo`` options to ``parser``.

    Args:
        parser: the sub-command's parser.
    """
    parser.add_argument("--rows", type=int, required=True, help="training rows")
    parser.add_argument(
        "--out", required=True, help="output folder (train.txt.gz, test.txt.gz, oracle.json)"
    )
    parser.add_argument(
        "--test-rows", type=int, default=None, help="test rows (default: rows // 5)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the hidden model and the rows (default 0)"
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="small",
        help="vocabulary sizes: 'small' = what ~1M rows of Criteo show (default), "
        "'full' = the Kaggle sizes",
    )
    parser.add_argument(
        "--ctr",
        type=float,
        default=HiddenModelConfig.target_ctr,
        help=f"target click-through rate (default {HiddenModelConfig.target_ctr})",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows per generation step, bounds memory; output does not depend on it "
        f"(default {DEFAULT_CHUNK_ROWS})",
    )
    parser.add_argument("--compresslevel", type=int, default=1, help="gzip level 1-9 (default 1)")


def run_synth_criteo(args: argparse.Namespace) -> int:
    """Run ``recsys-emb synth criteo``: write the data set, print a one-line JSON summary.

    Args:
        args: parsed options of :func:`add_synth_criteo_arguments`.

    Returns:
        Exit code: 0 on success, 2 on invalid options.
    """
    try:
        summary = synth_criteo(
            args.out,
            args.rows,
            args.test_rows,
            seed=args.seed,
            scale=args.scale,
            chunk_rows=args.chunk_rows,
            compresslevel=args.compresslevel,
            config=HiddenModelConfig(target_ctr=args.ctr),
        )
    except (ValueError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = (
        "out_dir",
        "seed",
        "scale",
        "rows",
        "ctr",
        "oracle_auc",
        "oracle_logloss",
        "seconds",
        "rows_per_min",
    )
    print(json.dumps({k: summary[k] for k in keys}))
    return 0
