"""MovieLens-100K as a CTR task, written in the prepared-array format the CTR trainer reads.

The convention of DCN-v2 (Wang et al., 2021) and Unified Embedding (Coleman et al., 2023): a rating
``>= 4`` is a positive, ``<= 2`` a negative, ratings of 3 are dropped. Rows are split by a seeded
random permutation into train/valid/test (80/10/10 by default), each written as a prepared
directory (``dense.npy``, ``sparse.npy`` int32, ``labels.npy``, ``meta.json``, ``vocab/``, and
``jagged/genres.{values,offsets}.npy``; format version 2 of :mod:`recsys_emb.data.dataset`) that
``recsys-emb train`` takes as ``data.train`` / ``data.valid`` / ``data.test``.

Features (sparse): ``user``, ``item``, ``gender``, ``age`` (years, categorical), ``occupation``,
``zip`` (first ``zip_prefix`` characters of the zip code), one id per row each; and ``genres``,
MULTI-VALUED: a movie with k genre flags gives a bag of k genre ids in the batch's KJT (a movie with
no flag an empty bag). Sum pooling of that bag is the usual multi-hot treatment (DCN-v2 paper).

Deviations, and why:

* DLRM needs at least one dense feature (its bottom MLP), and MovieLens has none natively, so two
  numeric copies of side information are written as dense features: ``age_years`` (age / 100) and
  ``release_year`` ((year - 1900) / 100; 0 for the one movie without a date). DCN-v2 and DeepFM would
  also run with none.

Vocabularies are built on the TRAINING rows only (like the Criteo pipeline): id 0 = missing, 1 = out
of vocabulary (a value never seen in training), 2.. = training values by descending count (ties by
value); for ``genres`` the count is over the genre occurrences of the training rows. Every split's
``meta.json`` lists the same ``vocab_sizes``.

Input files: the original GroupLens ``ml-100k`` folder (``u.data`` or ``u.data.gz``, ``u.user``,
``u.item``); see datasets/movielens/README.md. A missing folder or file raises
:class:`~recsys_emb.data.availability.MissingDataError` saying where to download it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_emb.data.availability import require_data
from recsys_emb.utils import atomic_save_json, open_text, plain_or_gz

SPARSE_FEATURES = ["user", "item", "gender", "age", "occupation", "zip", "genres"]
JAGGED_FEATURES = ["genres"]  # multi-valued; last in SPARSE_FEATURES (the prepared format's rule)
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
        raw: per single-valued sparse feature, (N,) object array of raw values ("" = missing).
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
    with open_text(path, encoding=encoding, newline="") as f:
        return [(i, line.rstrip("\r\n")) for i, line in enumerate(f, 1) if line.strip()]


def _find(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``; else :class:`~recsys_emb.data.availability.MissingDataError` (download, README)."""
    path = plain_or_gz(require_data(root, "movielens", (name,)), name)
    assert path is not None  # require_data found it
    return path


class MovieLensDataError(ValueError):
    """A malformed MovieLens-100K file; the message names file, line and field."""


RATING_FIELDS = ("user", "item", "rating", "timestamp")


def read_ratings(root: str | Path) -> np.ndarray:
    """``u.data[.gz]`` of an ml-100k folder as an (N, 4) int64 array ``user, item, rating, timestamp`` in file order.

    The one parser of MovieLens-100K ratings: the CTR data (:func:`read_movielens_100k`) and the
    behaviour sequences (:func:`recsys_emb.data.sequences.read_movielens_100k`) both build on it.

    Raises:
        MovieLensDataError: a line without 4 integer fields or a rating outside 1-5 (file:line:field).
    """
    path = _find(Path(root), "u.data")
    rows: list[list[int]] = []
    for n, line in _lines(path, "utf-8"):
        parts = line.split("\t")
        if len(parts) != 4:
            raise MovieLensDataError(f"{path}:{n}: expected 4 tab-separated fields {RATING_FIELDS}, got {len(parts)}: {line[:80]!r}")
        for name, part in zip(RATING_FIELDS, parts):
            if not part.strip().isdigit():
                raise MovieLensDataError(f"{path}:{n}: field '{name}' = {part!r} is not a non-negative integer")
        values = [int(p) for p in parts]
        if not 1 <= values[2] <= 5:
            raise MovieLensDataError(f"{path}:{n}: field 'rating' = {parts[2]!r} is not in 1-5")
        rows.append(values)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def read_items(root: str | Path) -> dict[int, tuple[float, tuple[int, ...]]]:
    """``u.item[.gz]``: movie id -> (release year feature ``(year - 1900) / 100``, 0 when unknown; genre indices into :data:`GENRES`)."""
    path = _find(Path(root), "u.item")
    items: dict[int, tuple[float, tuple[int, ...]]] = {}
    for n, line in _lines(path, "latin-1"):
        parts = line.split("|")
        if len(parts) != 5 + len(GENRES):
            raise MovieLensDataError(f"{path}:{n}: expected 5 fields and {len(GENRES)} 0/1 genre flags ({5 + len(GENRES)} fields), "
                                     f"got {len(parts)} fields: {line[:80]!r}")
        if not parts[0].isdigit():
            raise MovieLensDataError(f"{path}:{n}: field 1 (movie id) = {parts[0]!r} is not an integer")
        flags = parts[-len(GENRES) :]
        for g, f in enumerate(flags):
            if f not in ("0", "1"):
                raise MovieLensDataError(f"{path}:{n}: field {6 + g} (genre flag {GENRES[g]!r}) must be 0 or 1, got {f!r}")
        date = parts[2]
        year = float(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else None
        items[int(parts[0])] = ((year - 1900.0) / 100.0 if year is not None else 0.0, tuple(i for i, f in enumerate(flags) if f == "1"))
    return items


def read_movielens_100k(root: str | Path) -> MovieLensRatings:
    """Read ``u.data``, ``u.user`` and ``u.item`` from an ml-100k folder; malformed lines are fatal (file:line).

    Raises:
        MissingDataError: the folder or one of the three files is absent (the message says where to download it).
        MovieLensDataError: a malformed line (file:line:field).
    """
    root = require_data(root, "movielens")
    users: dict[int, tuple[str, str, str, str]] = {}
    path = _find(root, "u.user")
    for n, line in _lines(path, "latin-1"):
        parts = line.split("|")
        if len(parts) != 5 or not parts[0].isdigit() or not parts[1].isdigit():
            raise MovieLensDataError(f"{path}:{n}: expected 'id|age|gender|occupation|zip', got {line[:80]!r}")
        users[int(parts[0])] = (parts[1], parts[2], parts[3], parts[4])
    items = read_items(root)
    ratings = read_ratings(root)
    path = _find(root, "u.data")
    unknown = np.flatnonzero([u not in users or i not in items for u, i in ratings[:, :2].tolist()])
    if len(unknown):
        u, i = ratings[unknown[0], :2].tolist()
        raise MovieLensDataError(f"{path}: rating {unknown[0] + 1} (non-empty line): user {u} or item {i} is not in u.user / u.item")
    neutral = ratings[:, 2] == 3
    rows = ratings[~neutral]
    raw: dict[str, list[str]] = {name: [] for name in SPARSE_FEATURES if name not in JAGGED_FEATURES}
    dense, genres = [], []
    for user, item in rows[:, :2].tolist():
        age, gender, occupation, zip_code = users[user]
        year, item_genres = items[item]
        for name, value in zip(raw, (str(user), str(item), gender, age, occupation, zip_code)):
            raw[name].append(value)
        dense.append((int(age) / 100.0, year))
        genres.append(item_genres)
    genre_array = np.empty(len(genres), dtype=object)
    genre_array[:] = genres
    return MovieLensRatings(
        raw={k: np.array(v, dtype=object) for k, v in raw.items()},
        dense=np.asarray(dense, dtype=np.float32).reshape(-1, len(DENSE_FEATURES)),
        labels=(rows[:, 2] >= 4).astype(np.float32),
        genres=genre_array,
        dropped_neutral=int(neutral.sum()),
    )


def build_vocab(values: np.ndarray) -> dict[str, int]:
    """Raw value -> id (2.. by descending count, ties by value); "" is missing (id 0) and not listed."""
    counts = Counter(v for v in values.tolist() if v != "")
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    return {v: i + 2 for i, v in enumerate(ordered)}


def encode(values: np.ndarray, vocab: dict[str, int]) -> np.ndarray:
    """(N,) int32 ids: vocabulary id, 0 for missing (""), 1 for values not in the vocabulary."""
    return np.array([MISSING_ID if v == "" else vocab.get(v, OOV_ID) for v in values.tolist()], dtype=np.int32)


def genre_vocab(genres: np.ndarray) -> dict[str, int]:
    """Genre name -> id (2.. by descending count of genre occurrences, ties by name) over tuples of genre indices."""
    counts = Counter(GENRES[g] for gs in genres.tolist() for g in gs)
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    return {v: i + 2 for i, v in enumerate(ordered)}


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
    genres: str = "bag",
) -> dict[str, Path]:
    """Write ``out/{train,valid,test}`` prepared directories; returns their paths.

    Args:
        root: the ml-100k folder (``u.data[.gz]``, ``u.user``, ``u.item``).
        out: output folder (created).
        seed: seed of the random split.
        fractions: train/valid/test fractions.
        zip_prefix: characters of the zip code kept as the ``zip`` feature.
        genres: ``bag`` (multi-valued: a jagged bag of genre ids per movie, format version 2) or
            ``set`` (the movie's genre SET as ONE categorical value, e.g. ``Action|Comedy``, format
            version 1: for techniques that need one id per bag, such as DNIS and OptEmbed).
    """
    if genres not in ("bag", "set"):
        raise ValueError(f"genres must be 'bag' or 'set', got {genres!r}")
    if zip_prefix < 1:
        raise ValueError(f"zip_prefix must be >= 1, got {zip_prefix}")
    ratings = read_movielens_100k(root)
    ratings.raw["zip"] = np.array([z[:zip_prefix] for z in ratings.raw["zip"].tolist()], dtype=object)
    parts = split_rows(len(ratings.labels), fractions, seed)
    jagged = JAGGED_FEATURES if genres == "bag" else []
    if genres == "set":
        ratings.raw["genres"] = np.array(["|".join(GENRES[g] for g in gs) for gs in ratings.genres.tolist()], dtype=object)
    single = [name for name in SPARSE_FEATURES if name not in jagged]
    vocabs = {name: build_vocab(ratings.raw[name][parts["train"]]) for name in single}
    if genres == "bag":
        vocabs["genres"] = genre_vocab(ratings.genres[parts["train"]])
    vocab_sizes = [len(vocabs[name]) + 2 for name in SPARSE_FEATURES]
    sparse_all = np.stack([encode(ratings.raw[name], vocabs[name]) for name in single], axis=1)  # (N, F - 1)
    genre_ids = [tuple(vocabs["genres"].get(GENRES[g], OOV_ID) for g in gs) for gs in ratings.genres.tolist()] if jagged else []  # bags
    from recsys_emb.data.dataset import FORMAT_VERSION, JAGGED_FORMAT_VERSION, write_jagged  # imports torchrec

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
        if jagged:
            write_jagged(d, "genres", [genre_ids[r] for r in rows.tolist()])
        atomic_save_json(d / "vocab" / "movielens_vocab.json", {"features": SPARSE_FEATURES, "vocab": vocabs})
        atomic_save_json(d / "meta.json", {
            "format_version": JAGGED_FORMAT_VERSION if jagged else FORMAT_VERSION, "dataset": "movielens_100k", "jagged_features": jagged,
            "genres": genres, "rows": int(len(rows)), "has_labels": True,
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
    parser.add_argument("--data", dest="input", help="the ml-100k folder (u.data[.gz], u.user, u.item) (required)")
    parser.add_argument("--out", required=True, help="output folder: OUT/train, OUT/valid, OUT/test are written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random 80/10/10 split")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VALID", "TEST"),
                        help="shares of the ratings in the train, valid and test splits (default 0.8 0.1 0.1)")
    parser.add_argument("--zip-prefix", type=int, default=3, help="characters of the zip code kept")
    parser.add_argument("--genres", choices=["bag", "set"], default="bag",
                        help="bag: multi-valued genres (a jagged bag per movie); set: the genre set as one value (one id per bag, for DNIS/OptEmbed)")
    from recsys_emb.console import deprecated_alias

    deprecated_alias(parser, "--input", "--data")


def run_movielens(args: argparse.Namespace) -> int:
    """Prepare MovieLens-100K from parsed :func:`add_movielens_arguments` options; prints a summary."""
    if not args.input:
        raise ValueError("the following arguments are required: --data (the ml-100k folder)")
    paths = prepare_movielens_100k(args.input, args.out, seed=args.seed, fractions=tuple(args.fractions), zip_prefix=args.zip_prefix, genres=args.genres)
    summary = {role: {k: json.loads((p / "meta.json").read_text())[k] for k in ("rows", "ctr")} for role, p in paths.items()}
    print(json.dumps({"out": str(Path(args.out).resolve()), **summary}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare MovieLens-100K as CTR data (prepared-array format).")
    add_movielens_arguments(parser)
    return run_movielens(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
