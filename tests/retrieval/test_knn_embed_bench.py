"""benchmarks/knn_embed.py: grid points, the (constrained) tuning selection, the per-user analysis, a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsys_emb.retrieval.data import Interactions
from tests.conftest import load_benchmark
from tests.retrieval.conftest import write_random_splits


def _bench():  # noqa: ANN202
    return load_benchmark("knn_embed")


def _row(c: int, lam: float, nn: int, recall: float, clusters: float, entropy: float) -> dict:
    single = {"recall@100": 0.30, "clusters@100": 5.0, "entropy@100": 1.0}
    return {"num_clusters": c, "smoothing_lambda": lam, "num_neighbors": nn, "single": single,
            "knn_embed": {"recall@100": recall, "clusters@100": clusters, "entropy@100": entropy}}


def test_grid_points_lambda_zero_once_per_c() -> None:
    bench = _bench()
    pts = bench.grid_points({"num_clusters": [4, 8], "smoothing_lambda": [0.0, 0.5], "num_neighbors": [10, 50]},
                            {"num_clusters": 16, "smoothing_lambda": 0.5, "num_neighbors": 10})
    expected = [(c, lam, nn) for c in (4, 8) for lam in (0.0, 0.5) for nn in (10, 50) if not (lam == 0.0 and nn == 50)]
    assert [(p["num_clusters"], p["smoothing_lambda"], p["num_neighbors"]) for p in pts] == expected
    # a field missing from the grid takes the default
    pts = bench.grid_points({"num_clusters": [4]}, {"num_clusters": 16, "smoothing_lambda": 0.5, "num_neighbors": 7})
    assert pts == [{"num_clusters": 4, "smoothing_lambda": 0.5, "num_neighbors": 7}]


def test_select_setting_recall_and_constrained() -> None:
    bench = _bench()
    rows = [_row(4, 0.0, 10, 0.35, 4.0, 0.9),     # best recall, less diverse than single
            _row(8, 0.5, 10, 0.32, 6.0, 1.2),     # more diverse on both: the constrained pick
            _row(8, 0.9, 10, 0.33, 6.0, 0.95),    # more clusters but lower entropy: not qualifying
            _row(16, 0.5, 50, 0.31, 7.0, 1.5),    # qualifying, lower recall
            _row(64, 0.5, 10, 0.99, 9.0, 2.0)]    # not in the grid below: ignored
    grid = {"num_clusters": [4, 8, 16], "smoothing_lambda": [0.0, 0.5, 0.9], "num_neighbors": [10, 50]}
    t = bench.select_setting({"k": 100, "grid": grid, "rows": rows}, "recall")
    assert t["chosen"] == {"num_clusters": 4, "smoothing_lambda": 0.0, "num_neighbors": 10}
    t = bench.select_setting({"k": 100, "grid": grid, "rows": rows}, "constrained")
    # reference: filter by hand, then the best recall
    ok = [r for r in rows[:4] if r["knn_embed"]["clusters@100"] > 5.0 and r["knn_embed"]["entropy@100"] > 1.0]
    ref = max(ok, key=lambda r: r["knn_embed"]["recall@100"])
    assert t["chosen"] == {f: ref[f] for f in ("num_clusters", "smoothing_lambda", "num_neighbors")}
    assert t["rule_applied"] == "constrained" and t["points"] == 4 and t["points_more_diverse"] == 2
    assert t["points_more_diverse_and_recall_ge_single"] == 2  # 0.32 and 0.31 >= 0.30
    # no qualifying point: says so and falls back to the recall rule
    t = bench.select_setting({"k": 100, "grid": grid, "rows": [rows[0], rows[2]]}, "constrained")
    assert t["chosen"]["num_clusters"] == 4 and t["rule_applied"].startswith("recall (fallback")
    assert t["points_more_diverse"] == 0


def _interactions(lists: list[list[int]], n_items: int) -> Interactions:
    offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
    torch.cumsum(torch.tensor([len(x) for x in lists]), 0, out=offsets[1:])
    return Interactions(offsets, torch.tensor([i for x in lists for i in x], dtype=torch.long), n_items)


def test_per_user_analysis_matches_set_reference() -> None:
    bench = _bench()
    g = torch.Generator().manual_seed(0)
    n_users, n_items, c, k = 30, 60, 5, 10
    assign = torch.randint(0, c, (n_items,), generator=g)
    train_l, test_l, single, knn = [], [], [], []
    for u in range(n_users):
        perm = torch.randperm(n_items, generator=g).tolist()
        train_l.append(perm[: 1 + u % 9])
        test_l.append(perm[10:14])
        rest = perm[10:]
        single.append(rest[u % 3: u % 3 + k])
        knn.append(rest[(u + 1) % 4: (u + 1) % 4 + k])
    data = SimpleNamespace(train=_interactions(train_l, n_items), test=_interactions(test_l, n_items))
    keep = {"users": torch.arange(n_users), "assignments": assign,
            "single[exact]": torch.tensor(single), "knn_embed[exact]": torch.tensor(knn)}
    out = bench.per_user_analysis(data, keep, c, k)
    rs = [len(set(single[u]) & set(test_l[u])) / len(test_l[u]) for u in range(n_users)]
    rk = [len(set(knn[u]) & set(test_l[u])) / len(test_l[u]) for u in range(n_users)]
    gained = sum(len((set(knn[u]) - set(single[u])) & set(test_l[u])) for u in range(n_users))
    lost = sum(len((set(single[u]) - set(knn[u])) & set(test_l[u])) for u in range(n_users))
    assert out["delta_mean"] == pytest.approx(sum(b - a for a, b in zip(rs, rk)) / n_users)
    assert out["hits_gained_total"] == gained and out["hits_lost_total"] == lost
    assert out["knn_better"] == pytest.approx(sum(b > a for a, b in zip(rs, rk)) / n_users)
    novel = [int(assign[t]) not in {int(assign[i]) for i in train_l[u]} for u in range(n_users) for t in test_l[u]]
    assert out["test_items_in_clusters_outside_history"] == pytest.approx(sum(novel) / len(novel))
    for key, size in (("by_history_size", lambda u: len(train_l[u])),
                      ("by_history_clusters", lambda u: len({int(assign[i]) for i in train_l[u]}))):
        bins = out[key]
        assert sum(b["users"] for b in bins) == n_users
        for b in bins:
            label = b["history" if key == "by_history_size" else "clusters"]
            lo, hi = (int(x) for x in label.split("-")) if "-" in label else (int(label), int(label))
            members = [u for u in range(n_users) if lo <= size(u) <= hi]
            assert b["users"] == len(members)
            assert b["delta"] == pytest.approx(sum(rk[u] - rs[u] for u in members) / len(members))


def test_mixture_diagnostic_matches_per_cluster_reference() -> None:
    from recsys_emb.retrieval.knn_embed import KnnEmbedConfig

    bench = _bench()
    g = torch.Generator().manual_seed(3)
    n_users, n_items, d = 12, 240, 6
    assign = torch.arange(n_items) % 2  # two clusters of 120 items
    train_l, test_l = [], []
    for u in range(n_users):
        even = (torch.randperm(n_items // 2, generator=g) * 2).tolist()
        odd = (torch.randperm(n_items // 2, generator=g) * 2 + 1).tolist()
        n_even = 1 + u % 3  # test split 1/3, 2/2 or 3/1 over the clusters: budgets 25/75, 50/50, 75/25
        test_l.append(even[:n_even] + odd[: 4 - n_even])
        train_l.append(even[5:5 + u % 4] + odd[5:8])  # history: 3 odd items, 0-3 even ones
    data = SimpleNamespace(train=_interactions(train_l, n_items), test=_interactions(test_l, n_items))
    data.exclusions = lambda users: data.train.select(users)
    user, item = torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g)
    cfg = SimpleNamespace(eval=SimpleNamespace(ks=[100]), knn_embed=KnnEmbedConfig(num_clusters=2),
                          index=SimpleNamespace(threads=1))
    out = bench.mixture_diagnostic(cfg, data, user, item, {"users": torch.arange(n_users), "assignments": assign})
    scores = user @ item.T

    def reference(shares: list[list[float]]) -> float:
        recalls = []
        for u in range(n_users):
            chosen: set[int] = set()
            for c in (0, 1):
                budget = round(100 * shares[u][c])
                members = [i for i in range(n_items) if int(assign[i]) == c and i not in train_l[u]]
                ranked = sorted(members, key=lambda i: -float(scores[u, i]))
                chosen |= set(ranked[:budget])
            recalls.append(len(chosen & set(test_l[u])) / len(test_l[u]))
        return sum(recalls) / n_users

    oracle = [[sum(int(assign[i]) == c for i in test_l[u]) / 4 for c in (0, 1)] for u in range(n_users)]
    hist = [[sum(int(assign[i]) == c for i in train_l[u]) / len(train_l[u]) for c in (0, 1)] for u in range(n_users)]
    assert out["oracle_test_mixture"]["recall@100"] == pytest.approx(reference(oracle))
    # history: 3 odd + (u % 4) even items, even shares 0, 1/4, 2/5, 3/6: K * share is an integer, no rounding
    assert out["history_mle"]["recall@100"] == pytest.approx(reference(hist))


def test_end_to_end_tiny_tuning_cache_and_merge(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    bench = _bench()
    g = torch.Generator().manual_seed(2)
    n_users, n_items = 60, 200
    data = write_random_splits(tmp_path / "data", n_users, n_items, {"train": 10, "valid": 3, "test": 3}, g)
    emb = tmp_path / "emb.npz"
    np.savez(emb, user=torch.randn(n_users, 8, generator=g).numpy(), item=torch.randn(n_items, 8, generator=g).numpy())
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--datasets", "ml1m", "--embeddings", f"ml1m={emb}", "--set", f"data.path={data}",
              "--set", "index.hnsw_m=8", "--out", str(out), "--work-dir", str(work), "--merge", "--tune",
              "--select", "constrained"]
    small = {"num_clusters": [2], "smoothing_lambda": [0.0, 0.5], "num_neighbors": [5]}
    assert bench.main([*common, "--tune-only", "--grid", json.dumps(small)]) == 0
    assert not (out / "knn_embed.json").exists()  # --tune-only writes the tuning cache only
    cache = json.loads((work / "ml1m_lightgcn_tuning.json").read_text())
    assert len(cache["rows"]) == 2
    big = {"num_clusters": [2, 4], "smoothing_lambda": [0.0, 0.5], "num_neighbors": [5]}
    assert bench.main([*common, "--seeds", "0", "--per-user", "--oracle-mixture", "--grid", json.dumps(big)]) == 0
    cache2 = json.loads((work / "ml1m_lightgcn_tuning.json").read_text())
    assert len(cache2["rows"]) == 4 and cache2["rows"][:2] == cache["rows"]  # old points kept, not recomputed
    res = json.loads((out / "knn_embed.json").read_text())["results"]["ml1m"]
    t = res["tuning"]
    assert t["select"] == "constrained" and t["points"] == 4
    # the chosen point obeys the rule, recomputed from the rows
    ok = [r for r in t["rows"] if r["knn_embed"]["clusters@100"] > r["single"]["clusters@100"]
          and r["knn_embed"]["entropy@100"] > r["single"]["entropy@100"]]
    if ok:
        best = max(r["knn_embed"]["recall@100"] for r in ok)
        assert t["chosen_metrics"]["recall@100"] == pytest.approx(best)
    run = res["runs"][0]
    assert run["knn_embed"] is not None and run["per_user"]["users"] == n_users
    assert run["methods"]["knn_embed[exact]"]["recall@100"] - run["methods"]["single[exact]"]["recall@100"] == \
        pytest.approx(run["per_user"]["delta_mean"], abs=1e-6)
    assert not math.isnan(run["per_user"]["delta_mean"])
    diag = run["mixture_diagnostic"]
    assert set(diag) == {"k", "oracle_test_mixture", "history_mle"}
    assert 0.0 <= diag["oracle_test_mixture"]["recall@100"] <= 1.0
    assert "Mixture diagnostic" in (out / "knn_embed.md").read_text()
    # --merge keeps another data set's results written meanwhile
    j = json.loads((out / "knn_embed.json").read_text())
    j["results"]["gowalla"] = dict(j["results"]["ml1m"], marker=1)
    (out / "knn_embed.json").write_text(json.dumps(j))
    assert bench.main([*common, "--seeds", "1", "--grid", json.dumps(big)]) == 0
    res = json.loads((out / "knn_embed.json").read_text())["results"]
    assert res["gowalla"]["marker"] == 1 and res["ml1m"]["seeds"] == [0, 1]
    assert "## gowalla" in (out / "knn_embed.md").read_text()


def test_cached_base_is_reused_only_for_the_same_settings(tmp_path: Path, monkeypatch) -> None:
    bench = _bench()
    trained = []

    def fake_train(cfg, data, work):  # noqa: ANN001, ANN202
        trained.append(cfg.base.graph.train.epochs)
        work.mkdir(parents=True, exist_ok=True)
        user, item = torch.randn(4, 3), torch.randn(5, 3)
        torch.save({"user": user, "item": item}, work / "embeddings.pt")
        return user, item, {"source": "lightgcn", "epochs": cfg.base.graph.train.epochs}

    monkeypatch.setattr(bench, "base_embeddings", fake_train)
    args = bench.parse_args(["--datasets", "ml1m", "--work-dir", str(tmp_path)])
    data = SimpleNamespace(source="folder")

    def cfg(*over: str):  # noqa: ANN202
        return bench.make_config("ml1m", args, list(over))

    u0, _, info = bench.cached_base(cfg(), data, "ml1m", 0, args)
    assert trained == [10] and "cached" not in info
    # run-time-only settings (progress bars, threads, evaluation cut-offs) do not matter
    u1, _, info = bench.cached_base(cfg("base.graph.train.progress=false", "base.graph.evaluation.ks=[20]"), data, "ml1m", 0, args)
    assert trained == [10] and info["cached"] and torch.equal(u0, u1)
    # a different training schedule is refused, naming the field, rather than evaluated as if it matched
    with pytest.raises(ValueError, match=r"cached base model was made with other base-model settings \(train\.epochs: cached 10, asked 40\).*--no-reuse"):
        bench.cached_base(cfg("base.graph.train.epochs=40"), data, "ml1m", 0, args)
    args.no_reuse = True  # retrains over it
    bench.cached_base(cfg("base.graph.train.epochs=40"), data, "ml1m", 0, args)
    assert trained == [10, 40]
    # caches written before signatures existed are reused unchecked
    info_path = tmp_path / "ml1m_lightgcn_train_s0" / "base_info.json"
    info_path.write_text(json.dumps({"source": "lightgcn", "epochs": 40}))
    args.no_reuse = False
    _, _, info = bench.cached_base(cfg("base.graph.train.epochs=3"), data, "ml1m", 0, args)
    assert info["cached"] and trained == [10, 40]


def test_cached_tuning_rows_of_another_base_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    bench = _bench()
    g = torch.Generator().manual_seed(5)
    data = write_random_splits(tmp_path / "data", 30, 80, {"train": 8, "valid": 3, "test": 3}, g)
    emb = tmp_path / "emb.npz"
    np.savez(emb, user=torch.randn(30, 4, generator=g).numpy(), item=torch.randn(80, 4, generator=g).numpy())
    work = tmp_path / "work"
    common = ["--datasets", "ml1m", "--embeddings", f"ml1m={emb}", "--set", f"data.path={data}", "--work-dir",
              str(work), "--tune", "--tune-only", "--grid", json.dumps({"num_clusters": [2], "smoothing_lambda": [0.0]})]
    assert bench.main(common) == 0
    cache = json.loads((work / "ml1m_lightgcn_tuning.json").read_text())
    assert cache["base_signature"]["train"]["epochs"] == 10
    assert bench.main([*common, "--set", "base.graph.train.progress=false"]) == 0  # run-time only: reused
    with pytest.raises(ValueError, match=r"tuning cache was made with other base-model settings \(train\.epochs: cached 10, asked 2\)"):
        bench.main([*common, "--set", "base.graph.train.epochs=2"])
