"""benchmarks/retrieve_rank.py: seed aggregation, the bootstrap comparisons and the markdown table (no training)."""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.retrieve_rank import RANKERS, aggregate, markdown


def test_aggregate_pairs_users_across_seeds_and_writes_every_cell():
    rng = np.random.default_rng(0)
    args = argparse.Namespace(k=5, candidates=[10], bootstrap=200, dataset="synthetic", seeds=[0, 1], clusters=4,
                              hard_fraction=0.5, hard_pool=20)
    lat = {s: {"p50": 1.0, "p99": 2.0, "mean": 1.2} for s in ("stage1", "stage2", "pipeline")}
    keys = ("candidates/recall@10", "candidates/clusters@10", "candidates/categories@10", "candidates/ild@10", "final/recall@5",
            "final/ndcg@5", "final/clusters@5", "final/categories@5", "final/ild@5")
    per_seed = [{f"{m}|10|{r}": {**{key: rng.random(30) for key in keys}, "_latency": lat} for m in ("single", "knn_embed")
                 for r in RANKERS} for _ in range(2)]
    out = aggregate(args, per_seed)
    assert len(out["cells"]) == 6 and len(out["comparisons"]) == 3 + 2 + 2 and len(out["candidate_comparisons"]) == 1
    cell = out["cells"]["knn_embed|10|din"]
    seed_means = [s["knn_embed|10|din"]["final/recall@5"].mean() for s in per_seed]
    assert np.isclose(cell["final/recall@5"]["mean"], np.mean(seed_means))
    assert np.isclose(cell["final/recall@5"]["std"], np.std(seed_means, ddof=1))
    first = out["comparisons"][0]
    assert (first["a"], first["b"]) == ("knn_embed|10|none", "single|10|none")
    expected = np.mean([(s["knn_embed|10|none"]["final/ndcg@5"] - s["single|10|none"]["final/ndcg@5"]).mean() for s in per_seed])
    assert np.isclose(first["final/ndcg@5"]["diff"], expected)
    text = markdown(args, {**out, "command": "x", "machine": "m", "threads": 1, "users": 30})
    assert text.count("| single | 10 |") == 3 and text.count("| knn_embed | 10 |") == 3
    assert "DIN hard negatives - DIN" in text and "| kNN-Embed - single-vector | knn_embed|10|none | single|10|none |" in text
