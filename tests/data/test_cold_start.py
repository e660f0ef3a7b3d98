"""UniSRec sequence reader and the cold-start (held-out items) protocol."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsys_emb.data.cold_start import ColdStartSequenceDataset, make_sequence_dataset, read_unisrec_sequences
from recsys_emb.data.sequences import FIRST_ID, SequenceDataConfig, SequenceDataError, SequenceDataset, load_raw, write_synthetic_s3rec
from tests.conftest import shared_dataset

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def _write_unisrec(folder: Path, rows: dict[str, list[tuple[int, list[int], int]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        text = HEADER + "".join(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in lines)
        with gzip.open(folder / f"Toy.{split}.inter.gz", "wt") as f:
            f.write(text)
    return folder


def test_read_unisrec_rebuilds_sequences(tmp_path: Path) -> None:
    folder = _write_unisrec(tmp_path / "d", {
        "train": [(0, [4], 7), (1, [2, 3], 9)],
        "valid": [(0, [4, 7], 5), (1, [2, 3, 9], 1)],
        "test": [(0, [4, 7, 5], 6), (1, [2, 3, 9, 1], 8)],
    })
    raw = read_unisrec_sequences(folder, "Toy")
    assert raw.users.tolist() == [0, 1]
    assert raw.offsets.tolist() == [0, 4, 9]
    assert raw.items.tolist() == [4, 7, 5, 6, 2, 3, 9, 1, 8]
    cfg = SequenceDataConfig(dataset="unisrec", path=str(folder), stem="Toy")
    assert load_raw(cfg).items.tolist() == raw.items.tolist()


def test_read_unisrec_errors(tmp_path: Path) -> None:
    folder = _write_unisrec(tmp_path / "bad", {"valid": [(0, [4, 8], 5)], "test": [(0, [4, 7, 5], 6)]})
    with pytest.raises(SequenceDataError, match="not a prefix"):
        read_unisrec_sequences(folder, "Toy")
    bad = tmp_path / "bad2"
    bad.mkdir()
    (bad / "Toy.test.inter").write_text(HEADER + "0\t1 x\t2\n")
    with pytest.raises(SequenceDataError, match=r"Toy.test.inter:2"):
        read_unisrec_sequences(bad, "Toy")
    with pytest.raises(ValueError, match="stem"):
        SequenceDataConfig(dataset="unisrec")
    with pytest.raises(ValueError, match="holdout_items"):
        SequenceDataConfig(holdout_items=1.0)


@pytest.fixture(scope="module")
def raw_cfg(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = write_synthetic_s3rec(tmp_path_factory.mktemp("cs"), users=120, items=60, categories=5, seed=2)
    cfg = SequenceDataConfig(dataset="s3rec", stem="Synth", path=str(folder), max_history=5, eval_negatives=2, holdout_items=0.2, holdout_seed=1)
    return load_raw(cfg), cfg


def test_held_out_items_never_in_training(raw_cfg) -> None:  # noqa: ANN001
    raw, cfg = raw_cfg
    ds = ColdStartSequenceDataset(raw, cfg)
    held = set(ds.holdout_raw_ids.tolist())
    assert len(held) == round(0.2 * len(np.unique(raw.items)))
    held_enc = set(ds.holdout_ids.tolist())
    assert {int(ds.item_raw_ids[e - FIRST_ID]) for e in held_enc} == held
    for epoch in range(3):
        ex = ds.examples("train", epoch)
        assert not held_enc & set(ex.target_item.tolist())  # neither positives nor negatives
        hist = ds.make_batch(ex).sparse_features["hist_item"].values().tolist()
        assert not held_enc & set(hist)
    for split in ("valid", "test_warm"):
        ex = ds.examples(split)
        assert not held_enc & set(ex.target_item.tolist())
    assert (ds.popularity[list(held_enc)] == 0).all()


def test_new_item_examples_reference(raw_cfg) -> None:  # noqa: ANN001
    """Every removed interaction is a new-item positive with the kept behaviours before it as history."""
    raw, cfg = raw_cfg
    ds = ColdStartSequenceDataset(raw, cfg)
    held = set(ds.holdout_raw_ids.tolist())
    raw_of = {FIRST_ID + i: int(r) for i, r in enumerate(ds.item_raw_ids)}
    expected = []  # (user, target raw, history raw)
    for u in range(len(raw.users)):
        seq = raw.items[raw.offsets[u]:raw.offsets[u + 1]].tolist()
        for t, item in enumerate(seq):
            if item in held:
                kept = [x for x in seq[:t] if x not in held]
                expected.append((u, item, kept[-cfg.max_history:]))
    ex = ds.examples("test_new")
    assert len(ex) == 3 * len(expected)
    batch = ds.make_batch(ex)
    hist = batch.sparse_features["hist_item"].to_dense()
    got = []
    for r in range(0, len(ex), 3):
        got.append((int(ex.user[r]), raw_of[int(ex.target_item[r])], [raw_of[int(i)] for i in hist[r].tolist()]))
        assert ex.label[r] == 1 and ex.label[r + 1] == ex.label[r + 2] == 0
        user_seq = set(raw.items[raw.offsets[ex.user[r]]:raw.offsets[ex.user[r] + 1]].tolist())
        for neg in ex.target_item[r + 1:r + 3].tolist():
            assert raw_of[neg] in held and raw_of[neg] not in user_seq
    assert got == expected
    overall = ds.examples("test")
    assert len(overall) == len(ds.examples("test_warm")) + len(ex)
    assert set(ds.extra_test_splits()) == {"warm", "new_items"}


def test_explicit_holdout(raw_cfg) -> None:  # noqa: ANN001
    raw, cfg = raw_cfg
    ds = ColdStartSequenceDataset(raw, cfg, holdout=np.array([int(raw.items[0])]))
    assert ds.holdout_raw_ids.tolist() == [int(raw.items[0])]
    with pytest.raises(ValueError, match="occur in no sequence"):
        ColdStartSequenceDataset(raw, cfg, holdout=np.array([10**9]))


def test_no_holdout_equals_plain_protocol(raw_cfg) -> None:  # noqa: ANN001
    raw, cfg = raw_cfg
    plain_cfg = SequenceDataConfig(**{**cfg.__dict__, "holdout_items": 0.0})
    plain = make_sequence_dataset(plain_cfg)
    assert type(plain) is SequenceDataset
    cold = ColdStartSequenceDataset(raw, plain_cfg)
    for split in ("train", "valid"):
        a, b = plain.examples(split, 1), cold.examples(split, 1)
        assert np.array_equal(a.target_item, b.target_item) and np.array_equal(a.label, b.label)
        ka, kb = plain.make_batch(a).sparse_features, cold.make_batch(b).sparse_features
        assert ka.values().tolist() == kb.values().tolist()
    assert len(cold.examples("test_new")) == 0


def test_scientific_cold_start_split() -> None:
    folder = shared_dataset("amazon_scientific_text")
    cfg = SequenceDataConfig(dataset="unisrec", path=str(folder), stem="Scientific", holdout_items=0.15)
    ds = make_sequence_dataset(cfg)
    s = ds.summary()
    assert s["users"] == 2928 and s["catalogue_items"] == 1585
    assert s["holdout_items"] == round(0.15 * 1585)
    assert not set(ds.holdout_ids.tolist()) & set(ds.examples("train").target_item.tolist())
