"""Batches from prepared arrays: KJT invariants, shuffling, rank slicing, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_emb.data.dataset import BatchIterator, PreparedCTRData
from tests.conftest import make_prepared


def test_batch_kjt_matches_arrays(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)
    rows = np.array([3, 10, 11, 500])
    batch = data.batch(rows)
    kjt = batch.sparse_features
    assert kjt.keys() == data.sparse_features
    assert kjt.stride() == 4
    assert kjt.lengths().tolist() == [1] * (4 * len(data.sparse_features))
    per_key = kjt.to_dict()
    for f, name in enumerate(data.sparse_features):
        assert per_key[name].values().tolist() == data.sparse[rows, f].tolist()
    assert np.array_equal(batch.dense_features.numpy(), data.dense[rows])
    assert np.array_equal(batch.labels.numpy(), data.labels[rows])


def test_iterator_covers_rows_once_and_is_deterministic(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)

    def seen(it: BatchIterator, epoch: int) -> list[float]:
        return [float(v) for b in it.epoch(epoch) for v in b.dense_features[:, 0]]

    it = BatchIterator(data, 128, start=100, stop=2100, shuffle=True, seed=3)
    first, again, other_epoch = seen(it, 0), seen(it, 0), seen(it, 1)
    assert sorted(first) == sorted(data.dense[100:2100, 0].tolist())
    assert first == again
    assert first != other_epoch
    assert it.num_batches() == len(list(it.epoch(0))) == 16


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_are_disjoint_and_complete(prepared_dir: Path, world_size: int) -> None:
    data = PreparedCTRData.open(prepared_dir)
    per_rank = []
    for rank in range(world_size):
        it = BatchIterator(data, 100, shuffle=True, seed=1, rank=rank, world_size=world_size)
        values = [float(v) for b in it.epoch(0) for v in b.dense_features[:, 1]]
        assert len(list(it.epoch(0))) == it.num_batches()
        per_rank.append(values)
    merged = sorted(v for r in per_rank for v in r)
    assert merged == sorted(data.dense[:, 1].tolist())


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_parts_reassemble_the_one_process_batches(prepared_dir: Path, world_size: int) -> None:
    """Step s of a sharded run = the rows of step s of a 1-process run, split contiguously over ranks."""
    data = PreparedCTRData.open(prepared_dir)  # 3000 rows; 3000 % 210 = 60 rows in the last batch
    single = [b.dense_features[:, 1].tolist() for b in BatchIterator(data, 210, shuffle=True, seed=4).epoch(1)]
    parts = [
        [b.dense_features[:, 1].tolist() for b in BatchIterator(data, 210, shuffle=True, seed=4, rank=r, world_size=world_size).epoch(1)]
        for r in range(world_size)
    ]
    assert all(len(p) == len(single) for p in parts)  # same number of steps on every rank
    for step, rows in enumerate(single):
        assert sorted(x for p in parts for x in p[step]) == sorted(rows)
        sizes = [len(p[step]) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_equal_parts_for_training(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)
    # 1000 rows, global batch 300: three full batches (150 + 150) and one of 100 -> 50 + 50.
    its = [BatchIterator(data, 300, stop=1000, rank=r, world_size=2, equal_parts=True) for r in range(2)]
    assert [[len(b.labels) for b in it.epoch(0)] for it in its] == [[150, 150, 150, 50]] * 2
    assert its[0].rows_left_out == 0
    # 1001 rows: the 101-row last batch gives 50 + 50 and leaves one row out (reported).
    its = [BatchIterator(data, 300, stop=1001, rank=r, world_size=2, equal_parts=True) for r in range(2)]
    assert [len(b.labels) for b in its[1].epoch(0)] == [150, 150, 150, 50]
    assert its[0].rows_left_out == 1
    # a last global batch smaller than the world size is skipped entirely
    it = BatchIterator(data, 300, stop=902, rank=0, world_size=3, equal_parts=True)
    assert [len(b.labels) for b in it.epoch(0)] == [100, 100, 100] and it.rows_left_out == 2
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(data, 301, rank=0, world_size=2, equal_parts=True)


def test_evaluation_parts_may_be_empty(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)
    sizes = [[len(b.labels) for b in BatchIterator(data, 100, stop=101, rank=r, world_size=3).epoch(0)] for r in range(3)]
    assert sizes == [[34, 1], [33, 0], [33, 0]]


def test_skip_resumes_mid_epoch(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)
    it = BatchIterator(data, 64, shuffle=True, seed=5)
    full = [b.labels.tolist() for b in it.epoch(2)]
    assert [b.labels.tolist() for b in it.epoch(2, skip=7)] == full[7:]


def test_drop_last_and_bad_arguments(prepared_dir: Path) -> None:
    data = PreparedCTRData.open(prepared_dir)
    assert BatchIterator(data, 1000, drop_last=True).num_batches() == 3
    assert BatchIterator(data, 1000).num_batches() == 3
    assert BatchIterator(data, 1001).num_batches() == 3
    with pytest.raises(ValueError, match="outside"):
        BatchIterator(data, 10, start=0, stop=10**6)
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(data, 10, rank=2, world_size=2)


def test_open_errors_are_explicit(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared data directory"):
        PreparedCTRData.open(tmp_path)
    root = make_prepared(tmp_path / "p", 10)
    meta = json.loads((root / "meta.json").read_text())
    meta["rows"] = 11
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dense\.npy: expected float32 \(11, 3\)"):
        PreparedCTRData.open(root)
    meta["format_version"] = 99
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version"):
        PreparedCTRData.open(root)
