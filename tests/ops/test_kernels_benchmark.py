"""benchmarks/kernels.py: round-robin timing and per-round speedups (on a tiny shape, so it runs in seconds)."""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def kernels():
    return load_benchmark("kernels")


def test_ratio_stats_is_the_median_of_per_round_ratios(kernels):
    baseline = [2.0, 9.0, 3.0]  # the load changed in round 2: it hit both variants of that round
    fused = [1.0, 3.0, 1.5]
    stats = kernels.ratio_stats(baseline, fused)
    assert stats["per_round"] == [2.0, 3.0, 2.0]
    assert stats["median"] == 2.0 and stats["min"] == 2.0 and stats["max"] == 3.0
    # the ratio of the medians would be 3.0 / 1.5 = 2.0 here too, but not in general:
    assert kernels.ratio_stats([1.0, 10.0, 10.0], [1.0, 1.0, 10.0])["median"] == 1.0  # vs 10 / 1 = 10x


def test_interleaved_runs_the_variants_round_robin(kernels):
    order = []
    variants = {name: (lambda name=name: order.append(name)) for name in ("fused", "torch_ref", "fbgemm_tbe")}
    times = kernels.interleaved(variants, rounds=3, calls=2, device=torch.device("cpu"))
    assert {name: len(ts) for name, ts in times.items()} == {"fused": 3, "torch_ref": 3, "fbgemm_tbe": 3}
    per_round = ["fused"] * 3 + ["torch_ref"] * 3 + ["fbgemm_tbe"] * 3  # warm-up + 2 timed calls each
    assert order == per_round * 3


def test_run_shape_reports_per_round_speedups_and_markdown(kernels):
    torch.manual_seed(0)
    result = kernels.run_shape(1000, 8, 2, features=3, batch=16, rounds=3, calls=1, bandwidth=10.0, seed=0,
                               device=torch.device("cpu"))
    assert result["rounds"] == 3 and result["calls_per_round"] == 1
    for name in ("fused", "torch_ref", "hash_only"):
        entry = result["variants"][name]
        assert len(entry["seconds_per_round"]) == 3
        assert entry["seconds"] == statistics.median(entry["seconds_per_round"])
    keys = ["speedup_vs_torch_ref"] + (["speedup_vs_fbgemm_tbe"] if "fbgemm_tbe" in result["variants"] else [])
    for key in keys:
        other = "torch_ref" if key.endswith("torch_ref") else "fbgemm_tbe"
        per_round = [b / f for b, f in zip(result["variants"][other]["seconds_per_round"],
                                            result["variants"]["fused"]["seconds_per_round"])]
        assert result[key + "_per_round"] == per_round
        assert result[key] == statistics.median(per_round)
        assert result[key + "_min"] == min(per_round) <= result[key] <= result[key + "_max"] == max(per_round)
    report = {"machine": kernels.machine(torch.device("cpu")), "command": "test", "mode": "quick", "threads": 1, "rounds": 3,
              "calls_per_round": 1, "min_round_seconds": 0.0, "copy_bytes": 2**20, "copy_GBps": 10.0, "note": "", "results": [result]}
    text = kernels.markdown(report)
    assert "median of the per-round ratios" in text and f"({result['speedup_vs_torch_ref_min']:.2f}-" in text
    # results written before the per-round fields still render
    old = {k: v for k, v in result.items() if not k.endswith(("_min", "_max", "_per_round"))}
    old_report = {k: v for k, v in report.items() if k not in ("rounds", "calls_per_round", "min_round_seconds")}
    assert "rounds not recorded" in kernels.markdown({**old_report, "results": [old]})


@pytest.mark.parametrize("pooling", [1, 3])
def test_torch_gather_ceiling_runs_for_pooling_one_only(kernels, pooling):
    result = kernels.run_shape(500, 4, pooling, features=2, batch=8, rounds=2, calls=1, bandwidth=10.0, seed=1,
                               device=torch.device("cpu"), tbe=False)
    assert ("torch_gather" in result["variants"]) == (pooling == 1)
    assert ("speedup_vs_torch_gather" in result) == (pooling == 1)
    report = {"machine": kernels.machine(torch.device("cpu")), "command": "test", "mode": "quick", "threads": 1,
              "rounds": 2, "calls_per_round": 1, "min_round_seconds": 0.0, "copy_bytes": 2**20, "copy_GBps": 10.0,
              "note": "", "results": [result]}
    row = [line for line in kernels.markdown(report).splitlines() if line.startswith("| 5e+02")][0]
    assert row.endswith(" - |") == (pooling != 1)
    assert "Huge pages: THP_MEM_ALLOC_ENABLE=" in kernels.markdown(report)
