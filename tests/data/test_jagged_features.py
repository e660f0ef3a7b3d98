"""Multi-valued (jagged) sparse features in the prepared format: MovieLens genres as bags of ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import EmbeddingBagCollection

from recsys_emb.data.dataset import BatchIterator, PreparedCTRData, write_jagged
from recsys_emb.data.movielens import GENRES, prepare_movielens_100k, read_movielens_100k
from recsys_emb.modules.spec import build_embedding
from recsys_emb.modules.unified import hash_coefficients
from recsys_emb.train.tasks.ctr import table_configs
from tests.conftest import make_prepared
from tests.data.test_movielens import write_tiny_ml

P61 = (1 << 61) - 1
ITEM_GENRES = {1: [3, 4, 5], 2: [1, 2, 16], 3: []}  # the flags write_tiny_ml gives items 1..3


def tiny_movielens(tmp_path: Path) -> tuple[dict[str, Path], list[tuple[int, int, int]]]:
    rng = np.random.default_rng(1)
    ratings = [(int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.choice([1, 2, 4, 5]))) for _ in range(300)]
    return prepare_movielens_100k(write_tiny_ml(tmp_path / "ml", ratings), tmp_path / "out", seed=2), ratings


def decode_genre_bags(data: PreparedCTRData, rows: np.ndarray) -> list[list[str]]:
    """Genre names of each row's bag, decoded through the vocabulary written next to the arrays."""
    vocab = json.loads((data.root / "vocab" / "movielens_vocab.json").read_text())["vocab"]["genres"]
    name = {i: g for g, i in vocab.items()}
    jt = data.batch(rows).sparse_features.to_dict()["genres"]
    return [[name[int(v)] for v in bag] for bag in torch.split(jt.values(), jt.lengths().tolist())]


def test_movie_with_k_genres_gives_a_bag_of_k_ids_and_no_genre_an_empty_bag(tmp_path: Path) -> None:
    paths, ratings = tiny_movielens(tmp_path)
    kept = [r for r in ratings if r[2] != 3]
    order = np.random.default_rng(2).permutation(len(kept))  # independent re-derivation of the split
    for role, rows_of_role in (("train", order[: round(0.8 * len(kept))]), ("test", order[round(0.8 * len(kept)) + round(0.1 * len(kept)) :])):
        data = PreparedCTRData.open(paths[role])
        assert data.jagged_features == ["genres"] and data.sparse.shape == (len(data), 6)
        items = [kept[r][1] for r in np.sort(rows_of_role)]
        picked = np.array([len(data) - 1, 0, *range(1, len(data), 7)])  # not sorted
        bags = decode_genre_bags(data, picked)
        for b, r in zip(bags, picked):
            assert sorted(b) == sorted(GENRES[g] for g in ITEM_GENRES[items[r]])  # k flags -> bag of k; none -> empty
        # a contiguous slice and an index array give the same bags
        jt_slice = data.batch(slice(3, 11)).sparse_features.to_dict()["genres"]
        jt_index = data.batch(np.arange(3, 11)).sparse_features.to_dict()["genres"]
        assert torch.equal(jt_slice.lengths(), jt_index.lengths()) and torch.equal(jt_slice.values(), jt_index.values())
        assert jt_slice.lengths().tolist() == [len(ITEM_GENRES[items[r]]) for r in range(3, 11)]


def test_round_trip_through_prepared_files_and_shuffled_epochs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bags = [rng.integers(0, 9, size=int(rng.integers(0, 5))).tolist() for _ in range(257)]  # empty bags included
    root = make_prepared(tmp_path / "p", 257, vocab=9, n_sparse=2)
    meta = json.loads((root / "meta.json").read_text())
    meta.update(format_version=2, sparse_features=["C1", "C2", "tags"], jagged_features=["tags"], vocab_sizes=[9, 9, 9])
    (root / "meta.json").write_text(json.dumps(meta))
    write_jagged(root, "tags", bags)
    data = PreparedCTRData.open(root)
    seen: dict[float, list[int]] = {}
    for batch in BatchIterator(data, 40, shuffle=True, seed=5).epoch(1):
        kjt = batch.sparse_features
        assert kjt.keys() == ["C1", "C2", "tags"] and kjt.stride() == batch.labels.numel()
        per = kjt.to_dict()
        assert per["C1"].lengths().tolist() == [1] * kjt.stride()
        for key, bag in zip(batch.dense_features[:, 0].tolist(), torch.split(per["tags"].values(), per["tags"].lengths().tolist())):
            seen[key] = bag.tolist()
    dense0 = np.asarray(data.dense[:, 0]).tolist()
    assert len(seen) == 257 and all(seen[dense0[r]] == bags[r] for r in range(257))


def test_malformed_jagged_arrays_name_file_row_and_field(tmp_path: Path) -> None:
    root = make_prepared(tmp_path / "p", 4, vocab=5, n_sparse=1)
    meta = json.loads((root / "meta.json").read_text())
    meta.update(format_version=2, sparse_features=["C1", "tags"], jagged_features=["tags"], vocab_sizes=[5, 5])
    (root / "meta.json").write_text(json.dumps(meta))
    write_jagged(root, "tags", [[1], [], [2, 7], [3]])  # id 7 is outside the vocabulary of 5
    with pytest.raises(ValueError, match=r"tags\.values\.npy: field 'tags': row 2 holds id 7"):
        PreparedCTRData.open(root)
    write_jagged(root, "tags", [[1], [], [2, 4], [3]])
    np.save(root / "jagged" / "tags.offsets.npy", np.array([0, 1, 3, 1, 4], dtype=np.int64))
    with pytest.raises(ValueError, match=r"field 'tags': row 2 has a negative length"):
        PreparedCTRData.open(root)
    (root / "jagged" / "tags.offsets.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"tags\.offsets\.npy is missing"):
        PreparedCTRData.open(root)
    meta.update(sparse_features=["tags", "C1"])
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="must be the LAST entries"):
        PreparedCTRData.open(root)


def test_malformed_genre_flag_names_file_line_and_field(tmp_path: Path) -> None:
    root = write_tiny_ml(tmp_path / "ml", [(1, 1, 5)])
    lines = (root / "u.item").read_text(encoding="latin-1").splitlines()
    parts = lines[1].split("|")
    parts[5 + GENRES.index("Comedy")] = "x"
    lines[1] = "|".join(parts)
    (root / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"u\.item:2: field \d+ \(genre flag 'Comedy'\) must be 0 or 1"):
        read_movielens_100k(root)


@pytest.mark.parametrize("layout", ["multiplexed", "collisionless"])
def test_unified_and_plain_ebc_pool_genre_bags(tmp_path: Path, layout: str) -> None:
    paths, _ = tiny_movielens(tmp_path)
    data = PreparedCTRData.open(paths["train"])
    kjt = data.batch(np.arange(min(len(data), 64))).sparse_features
    genres = kjt.to_dict()["genres"]
    assert 0 in genres.lengths().tolist() and 3 in genres.lengths().tolist()
    bags = torch.split(genres.values(), genres.lengths().tolist())
    tables = table_configs(data, 8)
    torch.manual_seed(0)
    plain = EmbeddingBagCollection(tables)
    weight = plain.embedding_bags["t_genres"].weight.detach()
    want = torch.stack([weight[b].sum(0) if len(b) else torch.zeros(8) for b in bags])
    torch.testing.assert_close(plain(kjt)["genres"], want)
    options = {"layout": layout, "hash_seed": 3, **({"num_rows": 37} if layout == "multiplexed" else {})}
    unified = build_embedding([{"unified": options}], tables, data=data)
    (name, table), = ((n, t) for n, t in unified.lookup.ebc.embedding_bags.items() if layout == "multiplexed" or n.endswith("genres"))
    w = table.weight.detach()
    if layout == "multiplexed":  # rows from the documented salted hash, computed here with Python ints
        a0, a1, b = hash_coefficients(3, "genres", 0)

        def row(v: int) -> int:  # splitmix64 finaliser of the id, then the multilinear hash
            z = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
            z ^= z >> 31
            return ((a0 * (z & 0xFFFFFFFF) + a1 * (z >> 32) + b) % P61) % 37
    else:

        def row(v: int) -> int:
            return v

    want = torch.stack([sum((w[row(int(v))] for v in bag), torch.zeros(8)) for bag in bags])
    torch.testing.assert_close(unified(kjt)["genres"], want)


def test_real_movielens_genre_bags_match_u_item(tmp_path: Path) -> None:
    from tests.conftest import shared_dataset

    root = shared_dataset("movielens_100k")
    paths = prepare_movielens_100k(root, tmp_path / "ml")
    flags = {}
    for line in (root / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        flags[parts[0]] = sorted(GENRES[g] for g, f in enumerate(parts[-19:]) if f == "1")
    ratings = read_movielens_100k(root)
    data = PreparedCTRData.open(paths["valid"])
    item_vocab = json.loads((data.root / "vocab" / "movielens_vocab.json").read_text())["vocab"]["item"]
    item_name = {i: it for it, i in item_vocab.items()}
    rows = np.arange(0, len(data), 97)
    items = np.asarray(data.sparse[rows, 1])
    bags = decode_genre_bags(data, rows)
    checked = 0
    for it, bag in zip(items.tolist(), bags):
        if it in item_name:  # OOV items (unseen in training) cannot be decoded back
            assert sorted(bag) == flags[item_name[it]]
            checked += 1
    assert checked > 50 and max(len(b) for b in bags) >= 3
    assert len(data) + len(PreparedCTRData.open(paths["train"])) + len(PreparedCTRData.open(paths["test"])) == len(ratings.labels)


def test_dnis_frequency_counts_see_every_bag_entry(tmp_path: Path) -> None:
    from recsys_emb.modules.dnis import _counts

    root = make_prepared(tmp_path / "p", 3, vocab=6, n_sparse=1)
    meta = json.loads((root / "meta.json").read_text())
    meta.update(format_version=2, sparse_features=["C1", "tags"], jagged_features=["tags"], vocab_sizes=[6, 6])
    (root / "meta.json").write_text(json.dumps(meta))
    write_jagged(root, "tags", [[2, 3, 3], [], [5]])
    data = PreparedCTRData.open(root)
    assert _counts(data, 1, 6).tolist() == [0, 0, 1, 2, 0, 1]
    assert _counts(data, 0, 6).tolist() == np.bincount(np.asarray(data.sparse[:, 0]), minlength=6).tolist()


def test_genre_set_option_keeps_one_id_per_bag(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ratings = [(int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.choice([1, 2, 4, 5]))) for _ in range(200)]
    paths = prepare_movielens_100k(write_tiny_ml(tmp_path / "ml", ratings), tmp_path / "out", seed=2, genres="set")
    data = PreparedCTRData.open(paths["train"])
    assert data.meta["format_version"] == 1 and data.jagged_features == [] and data.sparse.shape[1] == 7
    kjt = data.batch(np.arange(len(data))).sparse_features
    assert kjt.lengths().tolist() == [1] * (7 * len(data))
    vocab = json.loads((data.root / "vocab" / "movielens_vocab.json").read_text())["vocab"]["genres"]
    assert set(vocab) == {"|".join(GENRES[g] for g in gs) for gs in (ITEM_GENRES[1], ITEM_GENRES[2])}  # item 3: "" = missing (id 0)
    with pytest.raises(ValueError, match="genres must be 'bag' or 'set'"):
        prepare_movielens_100k(tmp_path / "ml", tmp_path / "out2", genres="list")
