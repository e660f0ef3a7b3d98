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
