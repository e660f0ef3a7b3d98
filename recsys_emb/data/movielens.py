"""MovieLens-100K as a CTR task, written in the prepared-array format the CTR trainer reads.

The convention of DCN-v2 (Wang et al., 2021) and Unified Embedding (Coleman et al., 2023): a rating
``>= 4`` is a positive, ``<= 2`` a negative, ratings of 3 are dropped. Rows are split by a seeded
random permutation into train/valid/test (80/10/10 by default), each written as a prepared
directory (``dense.npy``, ``sparse.npy`` int32, ``labels.npy``, ``meta.json``, ``vocab/``) that
``recsys-emb train`` takes as ``data.train`` / ``data.valid`` / ``data.test``.

Features (sparse, one id per row): ``user``, ``item``, ``gender``, ``age`` (years, categorical),
``occupation``, ``zip`` (first ``zip_prefix`` characters of the zip code), ``genres``.

Deviations, and why:

* ``genres`` is multi-valued in MovieLens. The prepared format (and the trainer's batches) carry ONE
  id per bag, so the genre SET of a movie is one categorical value (e.g. ``Action|Comedy``): no
  information is lost, but two movies sharing one genre of several share no row.
  :func:`genre_lists` gives the jagged genre ids for callers that build their own KJTs.
* DLRM needs at least one dense feature (its bottom MLP), and MovieLens has none natively, so two
  numeric copies of side information are written as dense features: ``age_years`` (age / 100) and
  ``release_year`` ((year - 1900) / 100; 0 for the one movie without a date). DCN-v2 and DeepFM would
  also run with none.

Vocabularies are built on the TRAINING rows only (like the Criteo pipeline): id 0 = missing, 1 = out
of vocabulary (a value never seen in training), 2.. = training values by descending count (ties by
value). Every split's ``meta.json`` lists the same ``vocab_sizes``.

Input files: the original GroupLens ``ml-100k`` folder (``u.data`` or ``u.data.gz``, ``u.user``,
``u.item``); see datasets/movielens/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_emb.data.dataset import FORMAT_VERSION
from recsys_emb.utils import atomic_save_json

SPARSE_FEATURES = ["user", "item", "gender", "age", "occupation", "zip", "genres"]
DENSE_FEATURES = ["age_years", "release_year"]
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # the 19 genre flag columns of u.item, in file order (u.genre)
MISSING_ID, OOV_ID = 0, 1


@dataclass
class MovieLensRatings:
    """The labelled rows (ratings of 3 already dropped) with raw string feature values.

    Attributes:
        raw: per sparse feature, (N,) object array of raw values ("" = missing).
        dense: (N, 2) float32 dense features.
        labels: (N,) float32 in {0, 1}.
        genres: (N,) object array of tuples of genre indices (into :data:`GENRES`).
        dropped_neutral: ratings of 3 that were dropped.
    """

    raw: dict[str, np.ndarray]
    dense: np.ndarray
    labels: np.ndarray
    genres: np.ndarray
    dropped_neutral: int


def _lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding, newline="") as f:  # type: ignore[operator]
        return [(i, line.rstrip("\r\n")) for i, line in enumerate(f, 1) if line.strip()]


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: neither {name} nor {name}.gz found (expected the GroupLens ml-100k folder)")


def read_movielens_100k(root: str | Path) -> MovieLensRatings:
    """Read ``u.data``, ``u.user`` and ``u.item`` from an ml-100k folder; malformed lines are fatal (file:line)."""
    root = Path(root)
    users: dict[str, tuple[str, str, str, str]] = {}
    path = _find(root, "u.user")
    for n, line in _lines(path, "latin-1"):
        parts = line.split("|")
        if len(parts) != 5 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected 'id|age|gender|occupation|zip', got {line[:80]!r}")
        users[parts[0]] = (parts[1], parts[2], parts[3], parts[4])
    items: dict[str, tuple[float, tuple[int, ...]]] = {}
    path = _find(root, "u.item")
    for n, line in _lines(path, "latin-1"):
        parts = line.split("|")
        flags = parts[-len(GENRES) :]
        if len(parts) != 5 + len(GENRES) or any(f not in ("0", "1") for f in flags):
            raise ValueError(f"{path}:{n}: expected 5 fields and {len(GENRES)} 0/1 genre flags, got {line[:80]!r}")
        date = parts[2]
        year = float(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else None
        items[parts[0]] = ((year - 1900.0) / 100.0 if year is not None else 0.0, tuple(i for i, f in enumerate(flags) if f == "1"))
    path = _find(root, "u.data")
    rows: list[tuple[str, str, float]] = []
    dropped = 0
    for n, line in _lines(path, "utf-8"):
        parts = line.split("\t")
        if len(parts) != 4 or parts[2] not in ("1", "2", "3", "4", "5"):
            raise ValueError(f"{path}:{n}: expected 'user<TAB>item<TAB>rating(1-5)<TAB>timestamp', got {line[:80]!r}")
        if parts[0] not in users or parts[1] not in items:
            raise ValueError(f"{path}:{n}: user {parts[0]} or item {parts[1]} is not in u.user / u.item")
        rating = int(parts[2])
        if rating == 3:
            dropped += 1
            continue
        rows.append((parts[0], parts[1], 1.0 if rating >= 4 else 0.0))
    raw: dict[str, list[str]] = {name: [] for name in SPARSE_FEATURES}
    dense, labels, genres = [], [], []
    for user, item, label in rows:
        age, gender, occupation, zip_code = users[user]
        year, item_genres = items[item]
        values = [user, item, gender, age, occupation, zip_code, "|".join(GENRES[g] for g in item_genres)]
        for name, value in zip(SPARSE_FEATURES, values):
            raw[name].append(value)
        dense.append((int(age) / 100.0, year))
        labels.append(label)
        genres.append(item_genres)
    genre_array = np.empty(len(genres), dtype=object)
    genre_array[:] = genres
    return MovieLensRatings(
        raw={k: np.array(v, dtype=object) for k, v in raw.items()},
        dense=np.asarray(dense, dtype=np.float32).reshape(-1, len(DENSE_FEATURES)),
        labels=np.asarray(labels, dtype=np.float32),
        genres=genre_array,
        dropped_neutral=dropped,
    )


def build_vocab(values: np.ndarray) -> dict[str, int]:
    """Raw value -> id (2.. by descending count, ties by value); "" is missing (id 0) and not listed."""
    counts = Counter(v for v in values.tolist() if v != "")
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    return {v: i + 2 for i, v in enumerate(ordered)}


def encode(values: np.ndarray, vocab: dict[str, int]) -> np.ndarray:
    """(N,) int32 ids: vocabulary id, 0 for missing (""), 1 for values not in the vocabulary."""
    return np.array([MISSING_ID if v == "" else vocab.get(v, OOV_ID) for v in values.tolist()], dtype=np.int32)


def genre_lists(ratings: MovieLensRatings, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Jagged genre ids of ``rows`` (all by default): ``(values, lengths)`` int64, ids = index in :data:`GENRES`."""
    selected = ratings.genres if rows is None else ratings.genres[rows]
    lengths = np.array([len(g) for g in selected], dtype=np.int64)
    values = np.fromiter((g for gs in selected for g in gs), dtype=np.int64, count=int(lengths.sum()))
    return values, lengths


def split_rows(n: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded random split of ``range(n)`` into sorted train/valid/test row indices."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * fractions[0]))
    n_valid = int(round(n * fractions[1]))
    parts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    return {k: np.sort(v) for k, v in parts.items()}


def prepare_movielens_100k(
    root: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    zip_prefix: int = 3,
) -> dict[str, Path]:
    """Write ``out/{train,valid,test}`` prepared directories; returns their paths.

    Args:
        root: the ml-100k folder (``u.data[.gz]``, ``u.user``, ``u.item``).
        out: output folder (created).
        seed: seed of the random split.
        fractions: train/valid/test fractions.
        zip_prefix: characters of the zip code kept as the ``zip`` feature.
    """
    if zip_prefix < 1:
        raise ValueError(f"zip_prefix must be >= 1, got {zip_prefix}")
    ratings = read_movielens_100k(root)
    ratings.raw["zip"] = np.array([z[:zip_prefix] for z in ratings.raw["zip"].tolist()], dtype=object)
    parts = split_rows(len(ratings.labels), fractions, seed)
    vocabs = {name: build_vocab(ratings.raw[name][parts["train"]]) for name in SPARSE_FEATURES}
    vocab_sizes = [len(vocabs[name]) + 2 for name in SPARSE_FEATURES]
    sparse_all = np.stack([encode(ratings.raw[name], vocabs[name]) for name in SPARSE_FEATURES], axis=1)  # (N, F)
    out = Path(out)
    paths: dict[str, Path] = {}
    for role, rows in parts.items():
        final, d = out / role, out / f".{role}.tmp"  # written aside, then swapped into place
        shutil.rmtree(d, ignore_errors=True)
        (d / "vocab").mkdir(parents=True)
        labels = ratings.labels[rows]
        np.save(d / "sparse.npy", np.ascontiguousarray(sparse_all[rows]))
        np.save(d / "dense.npy", np.ascontiguousarray(ratings.dense[rows]))
        np.save(d / "labels.npy", labels)
        atomic_save_json(d / "vocab" / "movielens_vocab.json", {"features": SPARSE_FEATURES, "vocab": vocabs})
        atomic_save_json(d / "meta.json", {
            "format_version": FORMAT_VERSION, "dataset": "movielens_100k", "rows": int(len(rows)), "has_labels": True,
            "positives": int(labels.sum()), "ctr": float(labels.mean()) if len(rows) else 0.0,
            "dense_features": DENSE_FEATURES, "sparse_features": SPARSE_FEATURES, "vocab_sizes": vocab_sizes,
            "categorical_encoding": "vocab", "min_count": 1, "hash_buckets": None,
            "dense_transform": "age/100, (release year - 1900)/100", "label_rule": "rating>=4 -> 1, <=2 -> 0, 3 dropped",
            "dropped_neutral_ratings": ratings.dropped_neutral, "split": {"role": role, "seed": seed, "fractions": list(fractions)},
            "zip_prefix": zip_prefix, "sources": [str(Path(root).resolve())], "skipped_rows": 0, "malformed_examples": [],
            "vocab_from": None if role == "train" else str((out / "train").resolve()),
        })
        shutil.rmtree(final, ignore_errors=True)
        os.replace(d, final)
        paths[role] = final
    return paths


def add_movielens_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``recsys-emb prepare movielens`` (the lead wires the sub-command)."""
    parser.add_argument("--input", required=True, help="the ml-100k folder (u.data[.gz], u.user, u.item)")
    parser.add_argument("--out", required=True, help="output folder: OUT/train, OUT/valid, OUT/test are written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random 80/10/10 split")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--zip-prefix", type=int, default=3, help="characters of the zip code kept")


def run_movielens(args: argparse.Namespace) -> int:
    """Prepare MovieLens-100K from parsed :func:`add_movielens_arguments` options; prints a summary."""
    paths = prepare_movielens_100k(args.input, args.out, seed=args.seed, fractions=tuple(args.fractions), zip_prefix=args.zip_prefix)
    summary = {role: {k: json.loads((p / "meta.json").read_text())[k] for k in ("rows", "ctr")} for role, p in paths.items()}
    print(json.dumps({"out": str(Path(args.out).resolve()), **summary}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare MovieLens-100K as CTR data (prepared-array format).")
    add_movielens_arguments(parser)
    return run_movielens(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
