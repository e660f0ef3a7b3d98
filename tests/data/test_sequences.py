"""Behaviour sequences: readers, the leave-last-out protocol, negatives, jagged batches, frequencies."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from recsys_emb.data.movielens import MovieLensDataError

from recsys_emb.data.sequences import (
    FEATURE_KEYS,
    OOV_ID,
    SequenceDataConfig,
    SequenceDataError,
    SequenceDataset,
    load_raw,
    read_movielens_100k,
    read_s3rec,
)
from tests.conftest import shared_dataset

# user 7: 5 items; user 8: 2 items (valid + test only); user 9: 1 item (test only, empty history);
# user 20: 6 items; item 99 appears only as user 7's TEST target -> OOV; item 13 has no attributes -> category 0.
SEQS = "7 10 11 12 13 99\n8 11 10\n9 12\n20 30 31 32 33 30 31\n"
ATTRS = {"10": [5, 6], "11": [6], "12": [5], "99": [7]}


def _write(tmp_path: Path, seqs: str = SEQS, gz: bool = False) -> Path:
    folder = tmp_path / "s3"
    folder.mkdir(exist_ok=True)
    if gz:
        with gzip.open(folder / "Toy.txt.gz", "wt") as f:
            f.write(seqs)
    else:
        (folder / "Toy.txt").write_text(seqs)
    (folder / "Toy_item2attributes.json").write_text(json.dumps(ATTRS))
    return folder


def _dataset(tmp_path: Path, **kw) -> SequenceDataset:
    cfg = SequenceDataConfig(dataset="s3rec", stem="Toy", path=str(_write(tmp_path)), **kw)
    return SequenceDataset(load_raw(cfg), cfg)


def _raw_items(ds: SequenceDataset, encoded: np.ndarray) -> list[int]:
    return [int(ds.item_raw_ids[e - 2]) if e >= 2 else -int(e) for e in encoded]


def _histories(ds: SequenceDataset, batch) -> list[list[int]]:  # noqa: ANN001
    jt = batch.sparse_features["hist_item"]
    return [_raw_items(ds, v.numpy()) for v in jt.to_dense()]


def test_protocol_split_last_is_test_second_last_is_valid(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, max_history=2)
    test, valid, train = ds.positives("test"), ds.positives("valid"), ds.positives("train")
    assert _raw_items(ds, test.target_item) == [-OOV_ID, 10, 12, 31]  # 99 unseen in training -> OOV
    assert test.position.tolist() == [4, 1, 0, 5]
    assert _raw_items(ds, valid.target_item) == [-OOV_ID, 11, 30]  # 13 only at a valid position -> OOV
    assert valid.position.tolist() == [3, 0, 4]
    assert _raw_items(ds, train.target_item) == [10, 11, 12, 30, 31, 32, 33]  # all but the last two
    assert train.user.tolist() == [0, 0, 0, 3, 3, 3, 3]
    # histories: most recent L=2 before the target, oldest first; recency 1 = most recent
    batch = ds.make_batch(test)
    assert _histories(ds, batch) == [[12, -OOV_ID], [11], [], [33, 30]]
    assert batch.sparse_features["hist_pos"].to_dense()[0].tolist() == [2, 1]
    batch = ds.make_batch(train)
    assert _histories(ds, batch) == [[], [10], [10, 11], [], [30], [30, 31], [31, 32]]  # first interaction: empty history
    assert ds.make_batch(ds.positives("train")).labels.tolist() == [1.0] * 7


def test_vocabulary_only_from_training_positions(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    assert ds.item_raw_ids.tolist() == [10, 11, 12, 30, 31, 32, 33]  # 13 (valid target) and 99 (test target) are OOV
    assert ds.num_items == 9
    # category: first attribute; 13 has none -> 0 (missing); 99's category 7 never seen in training -> OOV
    test = ds.positives("test")
    assert test.target_cat[0] == OOV_ID
    valid = ds.positives("valid")
    assert valid.target_cat[0] == 0
    assert sorted(ds.category_raw_ids.tolist()) == [5, 6]


def test_kjt_is_jagged_without_padding(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, max_history=3, num_negatives=2)
    ex = ds.examples("test")
    batch = ds.make_batch(ex)
    kjt = batch.sparse_features
    assert kjt.keys() == list(FEATURE_KEYS)
    lengths = kjt.length_per_key()
    hist_len = kjt["hist_item"].lengths()
    assert lengths[0] == int(hist_len.sum()) == kjt["hist_item"].values().numel()  # no pad slots
    assert hist_len.tolist() == [3, 3, 3, 1, 1, 1, 0, 0, 0, 3, 3, 3]  # negatives share the positive's history
    for key in ("target_item", "target_cat", "target_pos"):
        assert kjt[key].lengths().tolist() == [1] * len(ex)
    assert kjt["target_pos"].values().tolist() == [0] * len(ex)
    assert batch.labels.tolist() == [1, 0, 0] * 4
    assert batch.users.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_side_features_user_and_target_attributes(tmp_path: Path) -> None:
    """``user`` = the user index; ``target_attrs`` = every attribute of the target item, encoded by the attributes
    seen on TRAINING items (10 -> [5, 6], 11 -> [6], 12 -> [5]; 99's attribute 7 is never trained: OOV)."""
    ds = _dataset(tmp_path, max_history=3, num_negatives=1)
    known = {int(a): i + 2 for i, a in enumerate(ds.attribute_raw_ids)}
    assert sorted(known) == [5, 6] and ds.table_sizes()["target_attrs"] == 4
    for split in ("train", "test"):
        ex = ds.examples(split)
        kjt = ds.make_batch(ex).sparse_features
        assert kjt["user"].values().tolist() == ex.user.tolist()
        bags = [v.tolist() for v in kjt["target_attrs"].to_dense()]
        for item, bag in zip(_raw_items(ds, ex.target_item), bags):
            expected = [known.get(a, OOV_ID) for a in ATTRS.get(str(item), [])] if item >= 2 else []
            assert bag == expected, (split, item)


def test_negatives_exclude_history_follow_popularity_and_are_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = [" ".join(map(str, [u + 1, *rng.choice(np.arange(1, 41), size=8, replace=False)])) for u in range(60)]
    folder = _write(tmp_path, "\n".join(lines) + "\n")
    cfg = SequenceDataConfig(dataset="s3rec", stem="Toy", path=str(folder), num_negatives=4, seed=3)
    ds = SequenceDataset(load_raw(cfg), cfg)
    ex = ds.examples("train", epoch=0)
    neg = ex.label == 0
    for u, item in zip(ex.user[neg], ex.target_item[neg]):
        start, end = ds.offsets[u], ds.offsets[u + 1]
        assert item not in ds.items[start:end]  # never an item of the user's whole sequence
        assert item >= 2 and ds.popularity[item] > 0
    again = SequenceDataset(load_raw(cfg), cfg).examples("train", epoch=0)
    assert np.array_equal(again.target_item, ex.target_item)  # fixed seed
    assert not np.array_equal(ds.examples("train", epoch=1).target_item, ex.target_item)  # redrawn per epoch
    assert np.array_equal(ds.examples("test").target_item, ds.examples("test").target_item)
    # negatives' categories are the items' categories
    assert np.array_equal(ex.target_cat[neg], ds.item_cat[ex.target_item[neg]])


def test_negatives_follow_popularity(tmp_path: Path) -> None:
    # skewed popularity (item 1 in every sequence); the last user (index 200) shares no item with the others
    lines = [f"{u + 1} 1 {u % 5 + 2} {u % 7 + 10} 30 31" for u in range(200)]
    lines.append("999 50 51 52 53 54")
    folder = _write(tmp_path, "\n".join(lines) + "\n")
    cfg = SequenceDataConfig(dataset="s3rec", stem="Toy", path=str(folder), num_negatives=1, seed=0)
    ds = SequenceDataset(load_raw(cfg), cfg)
    neg = ds.sample_negatives(np.full(4000, 200), 1, np.random.default_rng(0)).ravel()  # the last user
    counts = np.bincount(neg, minlength=ds.num_items)
    user_items = set(ds.items[ds.offsets[200] : ds.offsets[201]].tolist())
    allowed = np.array([i for i in range(2, ds.num_items) if i not in user_items])
    p = ds.popularity[allowed] / ds.popularity[allowed].sum()
    observed = counts[allowed] / counts.sum()
    assert counts[list(user_items)].sum() == 0
    assert np.abs(observed - p).max() < 0.03


def test_history_longer_than_L_keeps_most_recent(tmp_path: Path) -> None:
    seq = "1 " + " ".join(str(i) for i in range(1, 301)) + "\n"
    folder = _write(tmp_path, seq)
    cfg = SequenceDataConfig(dataset="s3rec", stem="Toy", path=str(folder), max_history=200)
    ds = SequenceDataset(load_raw(cfg), cfg)
    batch = ds.make_batch(ds.positives("test"))
    hist = _histories(ds, batch)[0]
    assert hist == [*range(100, 299), -OOV_ID]  # test target 300; the 200 behaviours before it (299 = valid target, OOV)
    assert batch.sparse_features["hist_pos"].values().tolist() == list(range(200, 0, -1))


def test_feature_frequencies_match_brute_force_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u + 1, *rng.integers(1, 15, size=int(rng.integers(1, 12)))])) for u in range(25)]
    folder = _write(tmp_path, "\n".join(lines) + "\n")
    for min_history in (0, 2):
        cfg = SequenceDataConfig(dataset="s3rec", stem="Toy", path=str(folder), max_history=3, min_history=min_history)
        ds = SequenceDataset(load_raw(cfg), cfg)
        freqs = ds.feature_frequencies()
        kjt = ds.make_batch(ds.positives("train")).sparse_features
        for group, keys, rows in (("item", ("hist_item", "target_item"), ds.num_items),
                                  ("category", ("hist_cat", "target_cat"), ds.num_categories),
                                  ("position", ("hist_pos", "target_pos"), ds.num_positions)):
            ids = np.concatenate([kjt[k].values().numpy() for k in keys])
            assert np.array_equal(freqs[group], np.bincount(ids, minlength=rows)), group


def test_gzip_input_and_malformed_lines(tmp_path: Path) -> None:
    folder = _write(tmp_path, gz=True)
    raw = read_s3rec(folder / "Toy.txt.gz", folder / "Toy_item2attributes.json")
    assert raw.users.tolist() == [7, 8, 9, 20] and raw.items.tolist()[:8] == [10, 11, 12, 13, 99, 11, 10, 12]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n2 4 x5\n")
    with pytest.raises(SequenceDataError, match=r"bad.txt:2: item #2 'x5'"):
        read_s3rec(bad, None)
    bad.write_text("1 2 3\n1 4\n")
    with pytest.raises(SequenceDataError, match=r"bad.txt:2: user 1 already appeared on line 1"):
        read_s3rec(bad, None)


def test_movielens_order_by_timestamp_then_line_and_first_genre(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("1\t5\t3\t300\n1\t6\t4\t100\n2\t5\t1\t50\n1\t7\t2\t100\n")
    flags = lambda *on: "|".join("1" if g in on else "0" for g in range(19))  # noqa: E731
    (folder / "u.item").write_text(f"5|A|01-Jan-1995||url|{flags(3, 7)}\n6|B|||url|{flags()}\n7|C|||url|{flags(0)}\n")
    raw = read_movielens_100k(folder)
    assert raw.users.tolist() == [1, 2]
    assert raw.items.tolist() == [6, 7, 5, 5]  # ties (timestamp 100) keep file order
    assert raw.item_category == {5: 3, 7: 0}
    (folder / "u.data").write_text("1\t5\t3\t300\n1\tx\t4\t100\n")
    with pytest.raises(MovieLensDataError, match=r"u.data:2: field 'item' = 'x'"):
        read_movielens_100k(folder)


def test_real_amazon_beauty_and_movielens() -> None:
    folder = shared_dataset("amazon_seq_s3rec")
    cfg = SequenceDataConfig(dataset="amazon_beauty", path=str(folder), max_history=200)
    raw = load_raw(cfg)
    assert len(raw.users) == 22363 and len(raw.items) == 198502  # PROVENANCE.md counts
    ds = SequenceDataset(raw, cfg)
    assert len(ds.positives("test")) == len(ds.positives("valid")) == 22363
    assert len(ds.positives("train")) == 198502 - 2 * 22363
    ml = shared_dataset("movielens_100k")
    mcfg = SequenceDataConfig(dataset="movielens_100k", path=str(ml), max_history=200)
    mds = SequenceDataset(load_raw(mcfg), mcfg)
    assert mds.num_users == 943 and int(mds.offsets[-1]) == 100000
    batch = mds.make_batch(mds.positives("test"))
    assert int(batch.sparse_features["hist_item"].lengths().max()) == 200


def test_raw_sequences_are_parsed_once_then_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load parses and caches; later loads read the cache (same arrays); a changed file is parsed again."""
    from recsys_emb.data import sequences

    folder = sequences.write_synthetic_s3rec(tmp_path / "raw", users=40, items=30, seed=0)
    cfg = SequenceDataConfig(dataset="s3rec", stem="Synth", path=str(folder), cache_dir=str(tmp_path / "cache"))
    reads = []
    real = sequences._read_raw
    monkeypatch.setattr(sequences, "_read_raw", lambda c, f: reads.append(f) or real(c, f))
    first = sequences.load_raw(cfg)
    again = sequences.load_raw(cfg)
    assert len(reads) == 1 and isinstance(again.items, np.memmap)
    uncached = real(cfg, folder)
    for name in ("users", "offsets", "items"):
        assert np.array_equal(getattr(first, name), getattr(uncached, name))
        assert np.array_equal(getattr(again, name), getattr(uncached, name))
    assert again.item_category == uncached.item_category and again.source == uncached.source
    assert len(list((tmp_path / "cache" / "sequences").iterdir())) == 1  # one published entry, no temp folder left
    # the same max_users cut of the cached arrays
    assert np.array_equal(sequences.load_raw(dataclasses.replace(cfg, max_users=7)).items, uncached.head(7).items)
    # an edited file is a new key: parsed again
    seq = folder / "Synth.txt"
    seq.write_text(seq.read_text() + "\n")
    sequences.load_raw(cfg)
    assert len(reads) == 2
    sequences.load_raw(dataclasses.replace(cfg, cache=False))
    assert len(reads) == 3
