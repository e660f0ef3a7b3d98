"""The cross-validation helpers of benchmarks/ctr_peers.py: every row is a test row exactly once, the
validation block is the next one, and the paired fold difference against a hand-computed case."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


def test_folds_partition_the_rows(tmp_path: Path) -> None:
    peers = load_benchmark("ctr_peers")
    header, rows = ["h\n"], [f"{i}\n" for i in range(11)]
    seen_test: list[str] = []
    for fold in range(4):
        paths = peers.split_fold(header, rows, 4, fold, tmp_path / str(fold), "csv.gz")
        parts = {k: gzip.open(p, "rt").read().splitlines() for k, p in paths.items()}
        assert all(lines[0] == "h" for lines in parts.values())
        test, valid, train = (parts[k][1:] for k in ("test", "valid", "train"))
        assert sorted(test + valid + train, key=int) == [r.strip() for r in rows]  # a partition of the rows
        seen_test += test
        nxt = peers.split_fold(header, rows, 4, (fold + 1) % 4, tmp_path / f"n{fold}", "csv.gz")["test"]
        assert valid == gzip.open(nxt, "rt").read().splitlines()[1:]  # valid = the next fold's test block
    assert sorted(seen_test, key=int) == [r.strip() for r in rows]


def test_paired_folds_hand_computed() -> None:
    peers = load_benchmark("ctr_peers")

    def run(fold: int, auc: float) -> dict:
        return {"fold": fold, "test": {"auc": auc, "logloss": 0.5}}

    ours = [run(0, 0.70), run(0, 0.72), run(1, 0.60), run(1, 0.60), run(2, 0.80), run(2, 0.80)]
    peer = [run(0, 0.70), run(0, 0.70), run(1, 0.62), run(1, 0.62), run(2, 0.79), run(2, 0.79)]
    r = peers.paired_folds(ours, peer)
    assert r["fold_auc_diffs"] == pytest.approx([0.01, -0.02, 0.01])
    assert r["auc_diff_mean"] == pytest.approx(0.0)
    assert r["auc_diff_se"] == pytest.approx(math.sqrt(0.0003) / math.sqrt(3))  # sample std 0.01732 / sqrt(3)
    assert r["folds_ours_at_or_above"] == 2 and r["logloss_diff_mean"] == 0.0
