"""MovieLens-100K CTR preparation: label rule, train-only vocabularies, split, format, real-file counts."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import load_config
from recsys_emb.data.dataset import PreparedCTRData
from recsys_emb.data.movielens import GENRES, SPARSE_FEATURES, genre_lists, prepare_movielens_100k, read_movielens_100k
from tests.conftest import REPO, shared_dataset


def write_tiny_ml(root: Path, ratings: list[tuple[int, int, int]], extra_users: int = 0) -> Path:
    """An ml-100k-shaped folder: 4 (+ ``extra_users``) users, 3 items, the given (user, item, rating) rows."""
    root.mkdir(parents=True, exist_ok=True)
    extra = "".join(f"{u}|30|F|artist|1000{u % 10}\n" for u in range(5, 5 + extra_users))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n4|24|M|technician|43537\n" + extra)
    flags = {1: [3, 4, 5], 2: [1, 2, 16], 3: []}
    dates = {1: "01-Jan-1995", 2: "01-Jan-1995", 3: ""}
    lines = []
    for item in (1, 2, 3):
        bits = ["1" if g in flags[item] else "0" for g in range(len(GENRES))]
        lines.append("|".join([str(item), f"Movie {item}", dates[item], "", "http://x", *bits]))
    (root / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    with gzip.open(root / "u.data.gz", "wt") as f:
        for n, (u, i, r) in enumerate(ratings):
            f.write(f"{u}\t{i}\t{r}\t{880000000 + n}\n")
    return root


def test_labels_features_and_train_only_vocabulary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ratings = [(int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 6))) for _ in range(400)]
    root = write_tiny_ml(tmp_path / "ml", ratings)
    paths = prepare_movielens_100k(root, tmp_path / "out", seed=3)
    kept = [(u, i, r) for u, i, r in ratings if r != 3]
    splits = {role: PreparedCTRData.open(p) for role, p in paths.items()}
    assert sum(len(s) for s in splits.values()) == len(kept)
    assert [len(splits[r]) for r in ("train", "valid", "test")] == [round(0.8 * len(kept)), round(0.1 * len(kept)), len(kept) - round(0.8 * len(kept)) - round(0.1 * len(kept))]
    order = np.random.default_rng(3).permutation(len(kept))  # independent re-derivation of the split
    train_rows = np.sort(order[: round(0.8 * len(kept))])
    want_labels = np.array([1.0 if r >= 4 else 0.0 for _, _, r in kept], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(splits["train"].labels), want_labels[train_rows])
    train = splits["train"]
    assert train.sparse_features == SPARSE_FEATURES and train.dense_features == ["age_years", "release_year"]
    assert all(splits[r].meta["vocab_sizes"] == train.meta["vocab_sizes"] for r in splits)
    # ids: 2.. by descending training count; user column decoded back must equal the raw users
    user_counts: dict[int, int] = {}
    for row in train_rows:
        user_counts[kept[row][0]] = user_counts.get(kept[row][0], 0) + 1
    ranked = sorted(user_counts, key=lambda u: (-user_counts[u], str(u)))
    decode = {i + 2: u for i, u in enumerate(ranked)}
    assert [decode[int(x)] for x in np.asarray(train.sparse[:, 0])] == [kept[r][0] for r in train_rows]
    assert train.meta["vocab_sizes"][0] == len(ranked) + 2
    # genres: multi-valued, a bag per row (item 2 has 3 flags -> 3 ids; item 3 none -> an empty bag)
    items = [kept[r][1] for r in train_rows]
    genre_lengths = np.diff(np.asarray(train.jagged["genres"][1]))
    assert genre_lengths.tolist() == [{1: 3, 2: 3, 3: 0}[it] for it in items]
    dense = np.asarray(train.dense)
    assert np.allclose(dense[:, 1], [0.95 if it in (1, 2) else 0.0 for it in items])
    batch = train.batch(slice(0, 8))
    assert batch.sparse_features.keys() == SPARSE_FEATURES and batch.dense_features.shape == (8, 2)


def test_unseen_values_are_oov_in_valid_and_test(tmp_path: Path) -> None:
    # users 5..14 rate once each: with half the rows in training, some of them land only in valid/test
    ratings = [(1, 1, 5)] * 8 + [(2, 2, 1)] * 8 + [(u, 3, 4) for u in range(5, 15)]
    root = write_tiny_ml(tmp_path / "ml", ratings, extra_users=10)
    paths = prepare_movielens_100k(root, tmp_path / "out", seed=0, fractions=(0.5, 0.25, 0.25))
    kept = [(u, i, r) for u, i, r in ratings if r != 3]
    order = np.random.default_rng(0).permutation(len(kept))  # independent re-derivation of the split
    n_train, n_valid = round(0.5 * len(kept)), round(0.25 * len(kept))
    rows = {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_valid]), "test": np.sort(order[n_train + n_valid:])}
    train_users = {kept[r][0] for r in rows["train"]}
    train = PreparedCTRData.open(paths["train"])
    user_id = dict(zip((kept[r][0] for r in rows["train"]), (int(x) for x in np.asarray(train.sparse[:, 0]))))
    assert min(user_id.values()) >= 2  # no OOV ids in training (0 missing, 1 OOV)
    want_oov = 0
    for role in ("valid", "test"):
        got = [int(x) for x in np.asarray(PreparedCTRData.open(paths[role]).sparse[:, 0])]
        want = [user_id.get(kept[r][0], 1) for r in rows[role]]  # a user never seen in training -> OOV row 1
        assert got == want, role
        want_oov += sum(kept[r][0] not in train_users for r in rows[role])
    assert want_oov > 0  # the fixture really puts training-unseen users into valid/test


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = write_tiny_ml(tmp_path / "ml", [(1, 1, 5), (2, 2, 1)])
    with gzip.open(root / "u.data.gz", "at") as f:
        f.write("3\t1\tseven\t880000000\n")
    with pytest.raises(ValueError, match=r"u\.data\.gz:3: field 'rating' = 'seven'"):
        read_movielens_100k(root)
    (root / "u.data.gz").unlink()
    with pytest.raises(FileNotFoundError, match="u.data"):
        read_movielens_100k(root)


def test_real_files_counts_and_jagged_genres() -> None:
    root = shared_dataset("movielens_100k")
    ratings = read_movielens_100k(root)
    with gzip.open(root / "u.data.gz", "rt") as f:
        stars = [int(line.split("\t")[2]) for line in f if line.strip()]
    assert len(ratings.labels) == sum(r != 3 for r in stars) and ratings.dropped_neutral == stars.count(3)
    assert int(ratings.labels.sum()) == sum(r >= 4 for r in stars)
    values, lengths = genre_lists(ratings)
    assert lengths.sum() == len(values) and len(lengths) == len(ratings.labels)
    item_flags = {}
    for line in (root / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        item_flags[parts[0]] = [g for g, f in enumerate(parts[-19:]) if f == "1"]
    first = ratings.raw["item"][0]
    assert values[: lengths[0]].tolist() == item_flags[first]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ml100k_unified_tiny", "ml100k_dcnv2_tiny"])
def test_tiny_configs_train_on_movielens(config: str, tmp_path: Path) -> None:
    from recsys_emb.train.tasks import train

    paths = prepare_movielens_100k(shared_dataset("movielens_100k"), tmp_path / "ml")
    overrides = [f"data.{role}={p}" for role, p in paths.items()]
    cfg = load_config(ExperimentConfig, REPO / "configs" / f"{config}.yaml", [*overrides, "model.name=dlrm"])
    results = train(cfg, tmp_path / "run")  # DLRM: the two dense features feed its bottom MLP
    assert results["test"]["rows"] == len(PreparedCTRData.open(paths["test"]))
    assert results["test"]["auc"] > 0.6, results
