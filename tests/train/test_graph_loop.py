"""BPR sampling, full-ranking recall/NDCG against brute force, and tiny end-to-end graph runs."""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.config.io import load_config
from recsys_emb.data.graphs import graph_from_interactions, parse_graph_text
from recsys_emb.train.graph_loop import (
    BPRSampler,
    GraphExperimentConfig,
    add_graph_arguments,
    full_ranking_metrics,
    load_graph_embeddings,
    run_graph,
    train_graph,
)
from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_metrics_hand_computed_case() -> None:
    # user 0: scores 0.9 0.8 0.7 0.1 over items 0..3; item 0 is a training item; test = {2, 3}.
    # Ranking without item 0: [1, 2, 3] -> hit at rank 2 (K=2), hits at ranks 2 and 3 (K=3).
    # user 1: no test items -> skipped and counted.
    user_emb = torch.tensor([[1.0], [1.0]])
    item_emb = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    train = parse_graph_text("0 0\n1 1\n")
    test = parse_graph_text("0 2 3\n1\n")
    m = full_ranking_metrics(user_emb, item_emb, test, [train], ks=[1, 2, 3])
    assert m["users_evaluated"] == 1 and m["users_skipped_no_test"] == 1
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    assert m["recall@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(d2 / (1 + d2))  # IDCG over min(|test|, K) = 2 hits
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((d2 + d3) / (1 + d2))


def _brute_force(user_emb, item_emb, test_rows, exclude_rows, ks):
    """Per user: sort the allowed items by score (Python), count hits in the top K."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    n = 0
    for u, test_items in test_rows.items():
        if not test_items:
            continue
        n += 1
        scores = (user_emb[u] @ item_emb.T).tolist()
        allowed = [i for i in range(len(scores)) if i not in exclude_rows.get(u, set())]
        ranked = sorted(allowed, key=lambda i: -scores[i])
        for k in ks:
            top = ranked[:k]
            hits = [1.0 if i in test_items else 0.0 for i in top]
            sums[f"recall@{k}"] += sum(hits) / len(test_items)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(test_items), k)))
            sums[f"ndcg@{k}"] += dcg / idcg
    return {key: v / n for key, v in sums.items()}, n


def test_metrics_match_brute_force_with_exclusions_and_chunks() -> None:
    rng = np.random.default_rng(0)
    num_users, num_items, ks = 30, 40, [1, 5, 10, 50]  # K=50 > number of items
    user_emb, item_emb = torch.randn(num_users, 6), torch.randn(num_items, 6)
    train_rows = {u: set(rng.choice(num_items, rng.integers(0, 15), replace=False).tolist()) for u in range(num_users)}
    test_rows = {u: set(rng.choice(num_items, rng.integers(0, 6), replace=False).tolist()) for u in range(num_users)}
    test_rows[3] = set()  # users without test items
    test_rows[4] = set()
    test_rows[5] = set(list(train_rows[5])[:2]) | {39}  # test items also in training: excluded, never hit
    to_text = lambda rows: "\n".join(" ".join(map(str, [u, *sorted(v)])) for u, v in rows.items())  # noqa: E731
    train, test = parse_graph_text(to_text(train_rows)), parse_graph_text(to_text(test_rows))
    expected, n = _brute_force(user_emb, item_emb, test_rows, train_rows, ks)
    for chunk in (1, 7, 1000):
        got = full_ranking_metrics(user_emb, item_emb, test, [train], ks=ks, chunk=chunk)
        assert got["users_evaluated"] == n
        assert got["users_skipped_no_test"] == sum(1 for v in test_rows.values() if not v)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (chunk, key)


def test_bpr_sampler_never_samples_positives_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    num_users, num_items = 50, 12  # dense: ~60% of items are positives, so rejection is exercised
    users = np.repeat(np.arange(num_users), 7)
    items = np.concatenate([rng.choice(num_items, 7, replace=False) for _ in range(num_users)])
    graph = graph_from_interactions(users, items, num_users, num_items)
    positives = set(zip(users.tolist(), items.tolist()))
    sampler = BPRSampler(graph.train, num_items, batch_size=64, seed=3)
    for epoch in range(3):
        batches = list(sampler.epoch(epoch))
        u = torch.cat([b[0] for b in batches]).tolist()
        p = torch.cat([b[1] for b in batches]).tolist()
        n = torch.cat([b[2] for b in batches]).tolist()
        assert sorted(zip(u, p)) == sorted(positives)  # every interaction exactly once per epoch
        assert not any((a, b) in positives for a, b in zip(u, n))
        assert all(0 <= x < num_items for x in n)
    again = BPRSampler(graph.train, num_items, batch_size=64, seed=3)
    for b1, b2 in zip(sampler.epoch(1), again.epoch(1)):
        for x, y in zip(b1, b2):
            assert torch.equal(x, y)
    other = torch.cat([b[2] for b in BPRSampler(graph.train, num_items, 64, seed=4).epoch(1)])
    assert not torch.equal(other, torch.cat([b[2] for b in sampler.epoch(1)]))
    assert not torch.equal(torch.cat([b[2] for b in sampler.epoch(0)]), torch.cat([b[2] for b in sampler.epoch(1)]))


def test_bpr_sampler_rejects_user_with_every_item() -> None:
    graph = graph_from_interactions(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2)
    with pytest.raises(ValueError, match="user 0 interacted with every item"):
        BPRSampler(graph.train, 2, 4, 0)


def write_community_graph(root: Path, seed: int = 0, num_users: int = 120, num_items: int = 80) -> Path:
    """Two communities (users/items split in halves); a user's items come from its own half.
    train.txt plain, test.txt.gz; one user without test items, items only in test exist."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    train_lines, test_lines = [], []
    half_u, half_i = num_users // 2, num_items // 2
    for u in range(num_users):
        pool = np.arange(half_i) + (half_i if u >= half_u else 0)
        chosen = rng.choice(pool, 12, replace=False)
        train_lines.append(" ".join(map(str, [u, *chosen[:9]])))
        test_lines.append(" ".join(map(str, [u, *chosen[9:]])) if u != 5 else "5")
    test_lines.append(f"0 {num_items + 2}")  # replaced below: user 0 gets an item never seen in training
    test_lines = test_lines[:-1]
    test_lines[0] += f" {num_items + 2}"
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    with gzip.open(root / "test.txt.gz", "wt") as f:
        f.write("\n".join(test_lines) + "\n")
    return root


@pytest.mark.parametrize("config", ["gowalla_lightgcn_tiny.yaml", "gowalla_ngcf_tiny.yaml"])
def test_tiny_config_end_to_end_learns_communities(tmp_path: Path, config: str) -> None:
    data = write_community_graph(tmp_path / "graph")
    cfg = load_config(GraphExperimentConfig, REPO / "configs" / config,
                      [f"data.path={data}", "train.epochs=3", "train.eval_every=3"])
    metrics = train_graph(cfg, tmp_path / "run")
    best = metrics["best"]["test"]
    assert best["users_skipped_no_test"] == 1
    # random ranking of the 71 non-training items would find ~20/71 of 3 test items in the top 20;
    # the community structure lets the model do much better (all test items are in the user's half).
    assert best["recall@20"] > 0.5
    users, items = load_graph_embeddings(tmp_path / "run")
    assert users.shape[0] == 120 and items.shape[0] == 83  # items only seen in test are nodes too
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "checkpoint.pt").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["best_epoch"] == metrics["best_epoch"]


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    data = write_community_graph(tmp_path / "graph", seed=1)
    overrides = [f"data.path={data}", "train.epochs=2", "train.max_steps_per_epoch=3", "train.eval_max_users=50"]
    cfg = load_config(GraphExperimentConfig, REPO / "configs" / "gowalla_ngcf_tiny.yaml", overrides)
    straight = train_graph(cfg, tmp_path / "a")
    first = load_config(GraphExperimentConfig, REPO / "configs" / "gowalla_ngcf_tiny.yaml", [*overrides, "train.epochs=1"])
    train_graph(first, tmp_path / "b")
    resumed = train_graph(cfg, tmp_path / "b", resume=True)
    for r1, r2 in zip(straight["history"], resumed["history"]):
        assert r1["loss"] == r2["loss"] and r1["test"] == r2["test"]
    with pytest.raises(FileExistsError):
        train_graph(cfg, tmp_path / "a")


def test_run_graph_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_community_graph(tmp_path / "graph", seed=2)
    parser = argparse.ArgumentParser()
    add_graph_arguments(parser)
    args = parser.parse_args(["--config", str(REPO / "configs" / "gowalla_lightgcn_tiny.yaml"), "--data", str(data),
                              "--run-dir", str(tmp_path / "run"), "--set", "train.epochs=1"])
    assert run_graph(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["best_epoch"] == 1 and "recall@20" in out["test"]


def test_time_budget_stops_after_an_evaluated_epoch_and_resume_continues(tmp_path: Path) -> None:
    """train.max_minutes: a budget no epoch fits stops after epoch 1 (evaluated although eval_every
    skips it, files written); resuming with a generous budget runs the remaining epochs, and the
    history equals an uninterrupted run's."""
    data = write_community_graph(tmp_path / "graph", seed=3)
    overrides = [f"data.path={data}", "train.epochs=3", "train.eval_every=3", "train.max_steps_per_epoch=3",
                 "train.eval_max_users=50"]
    tiny = REPO / "configs" / "gowalla_lightgcn_tiny.yaml"
    straight = train_graph(load_config(GraphExperimentConfig, tiny, overrides), tmp_path / "a")
    assert straight["stopped"] is None and straight["epochs_run"] == 3
    assert "test" not in straight["history"][0] and straight["history"][0]["train_cpu_seconds"] >= 0
    stopped = train_graph(load_config(GraphExperimentConfig, tiny, [*overrides, "train.max_minutes=1e-9"]), tmp_path / "b")
    assert stopped["epochs_run"] == 1 and stopped["best_epoch"] == 1 and "time budget" in stopped["stopped"]
    assert stopped["history"][0]["test"]["recall@20"] >= 0 and (tmp_path / "b" / "embeddings.pt").is_file()
    resumed = train_graph(load_config(GraphExperimentConfig, tiny, [*overrides, "train.max_minutes=600"]), tmp_path / "b",
                          resume=True)
    assert resumed["epochs_run"] == 3 and resumed["stopped"] is None
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    assert resumed["history"][-1]["test"] == straight["history"][-1]["test"]
    with pytest.raises(ValueError, match="max_minutes"):
        load_config(GraphExperimentConfig, tiny, [*overrides, "train.max_minutes=0"])


def test_graph_cf_benchmark_summarises_run_dirs_and_reuses_results(tmp_path: Path) -> None:
    """benchmarks/graph_cf.py --from-runs: mean/std over seeds equal numpy's on the runs' metrics;
    --reuse with no models merges earlier results, relabelling a model that appears twice."""
    bench = load_benchmark("graph_cf")
    data = write_community_graph(tmp_path / "graph", seed=4)
    tiny = REPO / "configs" / "gowalla_lightgcn_tiny.yaml"
    runs = []
    for seed in (0, 1):
        cfg = load_config(GraphExperimentConfig, tiny, [f"data.path={data}", "train.epochs=2", f"train.seed={seed}",
                                                        "train.max_steps_per_epoch=2", "train.eval_max_users=40"])
        runs.append(train_graph(cfg, tmp_path / f"run{seed}"))
    out = tmp_path / "res" / "summary"
    assert bench.main(["--from-runs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--train-command", "CMD",
                       "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    values = np.array([[r["test"]["recall@20"] for r in m["history"]] for m in runs])
    s = result["summary"]["lightgcn"]
    assert s["epochs_evaluated"] == [1, 2] and s["seeds"] == 2
    np.testing.assert_allclose(s["recall@20"]["mean"], values.mean(0))
    np.testing.assert_allclose(s["recall@20"]["std"], values.std(0))
    assert "Training command: `CMD`" in out.with_suffix(".md").read_text()
    merged = tmp_path / "res" / "merged"
    assert bench.main(["--data", str(data), "--models", "--reuse", str(out.with_suffix(".json")), str(out.with_suffix(".json")),
                       "--out", str(merged)]) == 0
    summary = json.loads(merged.with_suffix(".json").read_text())["summary"]
    assert list(summary) == ["lightgcn", "lightgcn (lr 0.01, 2 ep)"]
    assert bench._lr_of_command("x --lr 0.5 --model-lr mf=0.003 ngcf=1e-4 --out y", "ngcf") == 1e-4
    assert bench._lr_of_command("x --lr 0.5 --model-lr mf=0.003 --out y", "lightgcn") == 0.5


def _fake_result(path: Path, seeds: list[int], layers: int = 3) -> list[list[float]]:
    """A benchmark result file of NGCF runs (random metrics), as one invocation per seed list writes it;
    returns each run's recall@20 curve."""
    rng = np.random.default_rng(seeds[0] + 10 * layers)
    metrics = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50")
    runs = [{"history": [{"epoch": e, "loss": 0.5, "train_seconds": float(rng.uniform(50, 200)), "train_cpu_seconds": 80.0,
                          "eval_seconds": 5.0, "test": {m: float(rng.uniform()) for m in metrics}} for e in (1, 2)],
             "best_epoch": 2, "wall_seconds": 300.0, "epochs_run": 2} for _ in seeds]
    command = (f"python benchmarks/graph_cf.py --data D --models ngcf --seeds {' '.join(map(str, seeds))} --epochs 2 "
               f"--layers {layers} --model-lr ngcf=0.003 --out {path.stem}")
    summary = {"ngcf": {"model": "ngcf", "lr": 0.003, "source": {"command": command, "load_start": [1.0], "load_end": [2.0],
                                                                 "threads": 1}}}
    path.write_text(json.dumps({"command": command, "summary": summary, "runs": {"ngcf": runs}, "threads": [1],
                                "load_start": [1.0], "load_end": [2.0]}))
    return [[r["test"]["recall@20"] for r in run["history"]] for run in runs]


def test_graph_cf_benchmark_pools_per_seed_result_files(tmp_path: Path) -> None:
    """--merge-seeds: result files of one invocation per seed become one entry whose mean/std equal
    numpy's over all the runs; a repeated seed or a different setting is not pooled."""
    bench = load_benchmark("graph_cf")
    curves = []
    for seeds in ([0], [1], [2, 3]):
        curves += _fake_result(tmp_path / f"s{seeds[0]}.json", seeds)
    files = [str(tmp_path / f"s{s}.json") for s in (0, 1, 2)]
    out = tmp_path / "merged"
    assert bench.main(["--data", "D", "--models", "--merge-seeds", "--reuse", *files, "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    s = result["summary"]["ngcf"]
    assert list(result["summary"]) == ["ngcf"] and s["seeds"] == 4
    np.testing.assert_allclose(s["recall@20"]["mean"], np.mean(curves, 0))
    np.testing.assert_allclose(s["recall@20"]["std"], np.std(curves, 0))
    assert [r["seed"] for r in result["runs"]["ngcf"]] == [0, 1, 2, 3] and len(s["source"]["parts"]) == 3
    assert "3 result files pooled over seeds" in out.with_suffix(".md").read_text()
    again = tmp_path / "again"  # merging the merged file with one more seed keeps all parts
    _fake_result(tmp_path / "s4.json", [4])
    assert bench.main(["--data", "D", "--models", "--merge-seeds", "--reuse", str(out.with_suffix(".json")),
                       str(tmp_path / "s4.json"), "--out", str(again)]) == 0
    s = json.loads(again.with_suffix(".json").read_text())["summary"]["ngcf"]
    assert s["seeds"] == 5 and len(s["source"]["parts"]) == 4
    with pytest.raises(ValueError, match="seed \\[0\\] occurs twice"):
        bench.main(["--data", "D", "--models", "--merge-seeds", "--reuse", files[0], files[0], "--out", str(out)])
    _fake_result(tmp_path / "l2.json", [5], layers=2)  # another setting: kept apart, relabelled
    assert bench.main(["--data", "D", "--models", "--merge-seeds", "--reuse", files[0], str(tmp_path / "l2.json"),
                       "--out", str(out)]) == 0
    assert list(json.loads(out.with_suffix(".json").read_text())["summary"]) == ["ngcf", "ngcf (lr 0.003, 2 ep)"]
    with pytest.raises(ValueError, match="appears twice"):  # without --merge-seeds: never pooled
        bench.main(["--data", "D", "--models", "--reuse", *files, "--out", str(out)])


def _sharded_overrides(data: Path, sharding_type: str) -> list[str]:
    return [f"data.path={data}", "train.epochs=2", "model.propagation=neighbor", "train.optimizer=adagrad",
            "train.lr=0.1", f"sharding.type={sharding_type}"]


def test_sharded_training_single_process_learns_and_resumes(tmp_path: Path) -> None:
    """DMP-sharded tables (neighbour mode, FBGEMM fused Adagrad), DCP checkpoints, exact resume."""
    data = write_community_graph(tmp_path / "graph", seed=3)
    tiny = REPO / "configs" / "gowalla_lightgcn_tiny.yaml"
    cfg = load_config(GraphExperimentConfig, tiny, _sharded_overrides(data, "row_wise"))
    straight = train_graph(cfg, tmp_path / "a")
    assert straight["sharded"] and straight["best"]["test"]["recall@20"] > 0.5
    assert (tmp_path / "a" / "checkpoint").is_dir() and (tmp_path / "a" / "embeddings.pt").is_file()
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)  # consolidated: unsharded keys
    assert sorted(state) == ["tables.embedding_bags.item.weight", "tables.embedding_bags.user.weight"]
    first = load_config(GraphExperimentConfig, tiny, [*_sharded_overrides(data, "row_wise"), "train.epochs=1"])
    train_graph(first, tmp_path / "b")
    resumed = train_graph(cfg, tmp_path / "b", resume=True)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    assert resumed["history"][-1]["test"] == straight["history"][-1]["test"]


def test_sharding_requires_neighbor_mode(tmp_path: Path) -> None:
    from recsys_emb.config.io import ConfigError

    with pytest.raises(ConfigError, match="propagation: neighbor"):
        load_config(GraphExperimentConfig, REPO / "configs" / "gowalla_lightgcn_tiny.yaml", ["sharding.type=row_wise"])


def _two_rank_training(rank: int, world_size: int, data: str, run_dir: str) -> None:
    cfg = load_config(GraphExperimentConfig, REPO / "configs" / "gowalla_ngcf_tiny.yaml", _sharded_overrides(Path(data), "row_wise"))
    metrics = train_graph(cfg, Path(run_dir))
    assert metrics["world_size"] == 2
    assert metrics["best"]["test"]["recall@20"] > 0.5  # every rank computes the same full-ranking metrics


@pytest.mark.slow  # two spawned processes: ~30 s idle, minutes on the busy 2-core machine
def test_sharded_training_two_ranks(tmp_path: Path) -> None:
    from tests.distributed.multiprocess import run_ranks

    data = write_community_graph(tmp_path / "graph", seed=4)
    run_ranks(_two_rank_training, 2, str(data), str(tmp_path / "run"))
    users, items = load_graph_embeddings(tmp_path / "run")
    assert users.shape == (120, 16 + 16 + 16) and items.shape[0] == 83
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["sharded"] is True
