"""Graph CF on the one trainer (``task: graph``): full-ranking metrics against brute force, BPR sampling,
the trainer against a plain PyTorch loop, tiny configs learning, exact resume, the CLI, the time budget,
2 ranks against 1, and the benchmark's summaries."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.config.io import ConfigError
from recsys_emb.data.graphs import BPRSampler, graph_from_interactions, parse_graph_text
from recsys_emb.models.graph import GraphBPRTrain
from recsys_emb.train.tasks import load_experiment, train
from recsys_emb.train.tasks.graph import build_graph_model, load_graph, load_graph_embeddings
from recsys_emb.train.ranking_metrics import full_ranking_metrics
from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[3]
LIGHTGCN_TINY = REPO / "configs" / "gowalla_lightgcn_tiny.yaml"
NGCF_TINY = REPO / "configs" / "gowalla_ngcf_tiny.yaml"


# ---------------------------------------------------------------------------------------------
# full-ranking metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_hand_computed_case() -> None:
    # user 0: scores 0.9 0.8 0.7 0.1 over items 0..3; item 0 is a training item; test = {2, 3}.
    # Ranking without item 0: [1, 2, 3] -> hit at rank 2 (K=2), hits at ranks 2 and 3 (K=3).
    # user 1: no test items -> skipped and counted.
    user_emb = torch.tensor([[1.0], [1.0]])
    item_emb = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    train_split = parse_graph_text("0 0\n1 1\n")
    test = parse_graph_text("0 2 3\n1\n")
    m = full_ranking_metrics(user_emb, item_emb, test, [train_split], ks=[1, 2, 3])
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
    train_split, test = parse_graph_text(to_text(train_rows)), parse_graph_text(to_text(test_rows))
    expected, n = _brute_force(user_emb, item_emb, test_rows, train_rows, ks)
    for chunk in (1, 7, 1000):
        got = full_ranking_metrics(user_emb, item_emb, test, [train_split], ks=ks, chunk=chunk)
        assert got["users_evaluated"] == n
        assert got["users_skipped_no_test"] == sum(1 for v in test_rows.values() if not v)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (chunk, key)


# ---------------------------------------------------------------------------------------------
# BPR sampling
# ---------------------------------------------------------------------------------------------


def test_bpr_sampler_never_samples_positives_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    num_users, num_items = 50, 12  # dense: ~60% of items are positives, so rejection is exercised
    users = np.repeat(np.arange(num_users), 7)
    items = np.concatenate([rng.choice(num_items, 7, replace=False) for _ in range(num_users)])
    graph = graph_from_interactions(users, items, num_users, num_items)
    positives = set(zip(users.tolist(), items.tolist()))
    sampler = BPRSampler(graph.train, num_items, batch_size=64, seed=3)
    assert len(sampler) == math.ceil(350 / 64)
    for epoch in range(3):
        batches = list(sampler.epoch(epoch))
        u = torch.cat([b.users for b in batches]).tolist()
        p = torch.cat([b.pos for b in batches]).tolist()
        n = torch.cat([b.neg for b in batches]).tolist()
        assert sorted(zip(u, p)) == sorted(positives)  # every interaction exactly once per epoch
        assert not any((a, b) in positives for a, b in zip(u, n))
        assert all(0 <= x < num_items for x in n)
    again = BPRSampler(graph.train, num_items, batch_size=64, seed=3)
    for b1, b2 in zip(sampler.epoch(1), again.epoch(1)):
        assert torch.equal(b1.users, b2.users) and torch.equal(b1.pos, b2.pos) and torch.equal(b1.neg, b2.neg)
    skipped = list(sampler.epoch(1, skip=2))  # resuming mid-epoch: the same later batches
    assert [torch.equal(a.neg, b.neg) for a, b in zip(skipped, list(sampler.epoch(1))[2:])] == [True] * (len(sampler) - 2)
    other = torch.cat([b.neg for b in BPRSampler(graph.train, num_items, 64, seed=4).epoch(1)])
    assert not torch.equal(other, torch.cat([b.neg for b in sampler.epoch(1)]))
    assert not torch.equal(torch.cat([b.neg for b in sampler.epoch(0)]), torch.cat([b.neg for b in sampler.epoch(1)]))


def test_bpr_sampler_rejects_user_with_every_item() -> None:
    graph = graph_from_interactions(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2)
    with pytest.raises(ValueError, match="user 0 interacted with every item"):
        BPRSampler(graph.train, 2, 4, 0)


# ---------------------------------------------------------------------------------------------
# training through the one trainer
# ---------------------------------------------------------------------------------------------


def write_community_graph(root: Path, seed: int = 0, num_users: int = 120, num_items: int = 80) -> Path:
    """Two communities (users/items split in halves); a user's items come from its own half.
    train.txt plain, test.txt.gz; one user (5) without test items, an item only in test (82) exists."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    train_lines, test_lines = [], []
    half_u, half_i = num_users // 2, num_items // 2
    for u in range(num_users):
        pool = np.arange(half_i) + (half_i if u >= half_u else 0)
        chosen = rng.choice(pool, 12, replace=False)
        train_lines.append(" ".join(map(str, [u, *chosen[:9]])))
        test_lines.append(" ".join(map(str, [u, *chosen[9:]])) if u != 5 else "5")
    test_lines[0] += f" {num_items + 2}"  # user 0 gets an item never seen in training
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    with gzip.open(root / "test.txt.gz", "wt") as f:
        f.write("\n".join(test_lines) + "\n")
    return root


def _config(path: Path, data: Path, *overrides: str):  # noqa: ANN202
    return load_experiment(path, [f"data.path={data}", *overrides])


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("config", [LIGHTGCN_TINY, NGCF_TINY], ids=["lightgcn", "ngcf"])
def test_tiny_config_end_to_end_learns_communities(tmp_path: Path, config: Path) -> None:
    data = write_community_graph(tmp_path / "graph")
    cfg = _config(config, data, "train.epochs=3")
    metrics = train(cfg, tmp_path / "run")
    test = metrics["test"]
    assert metrics["task"] == "graph" and metrics["selected_on"] == "test" and metrics["select_metric"] == "recall@20"
    assert test["users_skipped_no_test"] == 1 and test["users_evaluated"] == 119
    # random ranking of the ~71 non-training items would find ~20/71 of 3 test items in the top 20;
    # the community structure lets the model do much better (all test items are in the user's half).
    assert test["recall@20"] > 0.5
    assert metrics["steps"] == 3 * 5  # ceil(1080 triples / 256) = 5 steps per epoch
    users, items = load_graph_embeddings(tmp_path / "run")
    assert users.shape[0] == 120 and items.shape[0] == 83  # items only seen in test are nodes too
    # embeddings.pt = the final embeddings of the saved best model, recomputed here unsharded in full mode
    reference = build_graph_model(dataclasses.replace(cfg.model, propagation="full"), load_graph(cfg), seed=0)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in _state(tmp_path / "run").items()})
    ref_users, ref_items = reference.user_item_embeddings()
    torch.testing.assert_close(users, ref_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, ref_items, rtol=1e-5, atol=1e-6)
    # ... and the reported test metrics are those of these embeddings
    graph = load_graph(cfg)
    again = full_ranking_metrics(users, items, graph.splits["test"], [graph.train], cfg.evaluation.ks,
                                 max_users=cfg.evaluation.max_users)
    assert again == pytest.approx(test)
    assert (tmp_path / "run" / "checkpoint").is_dir() and (tmp_path / "run" / "config.yaml").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["best_epoch"] == metrics["best_epoch"] and saved["test"] == pytest.approx(test)


@pytest.mark.parametrize("config,model", [(LIGHTGCN_TINY, "lightgcn"), (NGCF_TINY, "ngcf"), (LIGHTGCN_TINY, "mf")],
                         ids=["lightgcn", "ngcf", "mf"])
def test_trainer_follows_plain_pytorch_loop(tmp_path: Path, config: Path, model: str) -> None:
    """The trainer (DMP with data-parallel tables, ``lookup`` propagation, node and message dropout on)
    takes the same steps as a hand-written loop on an unsharded ``full``-mode model with torch's Adam:
    the papers' init from the seed, BPR triples from the sampler, dropout seeded per epoch."""
    data = write_community_graph(tmp_path / "graph", seed=5)
    cfg = _config(config, data, "train.epochs=1", "train.max_steps_per_epoch=4", f"model.name={model}")
    train(cfg, tmp_path / "run")
    graph = load_graph(cfg)
    reference = build_graph_model(dataclasses.replace(cfg.model, propagation="full"), graph, seed=cfg.train.seed)
    loss_fn = GraphBPRTrain(reference, cfg.model.l2, cfg.model.l2_on)
    opt = torch.optim.Adam(reference.parameters(), lr=cfg.train.embedding_optimizer.lr)
    assert cfg.train.dense_optimizer.lr == cfg.train.embedding_optimizer.lr
    torch.manual_seed(cfg.train.seed * 1_000_003 + 0)  # the trainer's dropout seed of epoch 0
    for step, batch in enumerate(BPRSampler(graph.train, graph.num_items, cfg.train.batch_size, cfg.train.seed).epoch(0)):
        if step == 4:
            break
        loss, _ = loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = _state(tmp_path / "run")
    expected = reference.state_dict()
    assert sorted(got) == sorted(f"model.{k}" for k in expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[f"model.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(expected["tables.embedding_bags.user.weight"],
                           build_graph_model(cfg.model, graph, seed=cfg.train.seed).tables.embedding_bags["user"].weight)


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """Killed mid-epoch 2 right after a checkpoint, then resumed: the same weights and metrics as a run
    that was never interrupted (NGCF: node and message dropout, Adam state, BPR order all restored)."""
    data = write_community_graph(tmp_path / "graph", seed=1)
    cfg = _config(NGCF_TINY, data, "train.epochs=2", "train.max_steps_per_epoch=3", "train.checkpoint_every_steps=2",
                  "train.log_every_steps=1", "evaluation.max_users=50")
    straight = train(cfg, tmp_path / "a")
    partial = train(cfg, tmp_path / "b", _interrupt_at_step=4)  # step 4 = the first of epoch 2's
    assert partial == {"interrupted_at_step": 4} and not (tmp_path / "b" / "metrics.json").exists()
    resumed = train(cfg, tmp_path / "b", resume=True)
    for key in ("test", "history", "train_loss", "best_step", "steps"):
        assert resumed[key] == straight[key], key
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ua, ia = load_graph_embeddings(tmp_path / "a")
    ub, ib = load_graph_embeddings(tmp_path / "b")
    assert torch.equal(ua, ub) and torch.equal(ia, ib)
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path / "a")


def test_train_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.cli import main

    data = write_community_graph(tmp_path / "graph", seed=2)
    assert main(["train", "--config", str(LIGHTGCN_TINY), "--data", str(data), "--run-dir", str(tmp_path / "run"),
                 "--set", "train.epochs=1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the best model's test metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert out == saved["test"] and out["recall@20"] > 0
    assert saved["data"]["root"] == str(data.resolve()) and saved["data"]["num_items"] == 83
    # --resume reads RUN_DIR/config.yaml (absolute data path) and extends the finished run by an epoch
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--resume", "--set", "train.epochs=2"]) == 0
    extended = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert extended["epochs_completed"] == 2 and [h["epoch"] for h in extended["history"]] == [1, 2]


def test_removed_train_graph_command_is_gone() -> None:
    from recsys_emb.cli import TECHNIQUE_COMMANDS, main

    assert "train-graph" not in TECHNIQUE_COMMANDS
    with pytest.raises(SystemExit):
        main(["train-graph", "--config", str(LIGHTGCN_TINY)])


def test_time_budget_stops_after_an_evaluated_epoch_and_resume_continues(tmp_path: Path) -> None:
    """train.max_minutes: a budget no epoch fits stops after epoch 1 (evaluated, files written);
    resuming with a generous budget runs the remaining epochs, ending like an uninterrupted run."""
    data = write_community_graph(tmp_path / "graph", seed=3)
    overrides = ("train.epochs=3", "train.max_steps_per_epoch=3", "evaluation.max_users=50")
    straight = train(_config(LIGHTGCN_TINY, data, *overrides), tmp_path / "a")
    assert straight["stop_reason"] == "epochs" and straight["epochs_completed"] == 3
    stopped = train(_config(LIGHTGCN_TINY, data, *overrides, "train.max_minutes=1e-9"), tmp_path / "b")
    assert stopped["stop_reason"] == "max_minutes" and stopped["epochs_completed"] == 1 and stopped["best_epoch"] == 1
    assert stopped["test"]["recall@20"] >= 0 and (tmp_path / "b" / "embeddings.pt").is_file()
    assert [h["recall@20"] for h in stopped["history"]] == [straight["history"][0]["recall@20"]]
    resumed = train(_config(LIGHTGCN_TINY, data, *overrides, "train.max_minutes=600"), tmp_path / "b", resume=True)
    assert resumed["epochs_completed"] == 3 and resumed["stop_reason"] == "epochs"
    assert resumed["history"] == straight["history"] and resumed["test"] == straight["test"]
    with pytest.raises(ConfigError, match="max_minutes"):
        _config(LIGHTGCN_TINY, data, "train.max_minutes=0")


# ---------------------------------------------------------------------------------------------
# configuration errors and sharded tables
# ---------------------------------------------------------------------------------------------


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="propagation: full reads the table weights directly"):
        load_experiment(LIGHTGCN_TINY, ["model.propagation=full"])
    with pytest.raises(ConfigError, match=r"select_metric 'recall@30' must be recall@K or ndcg@K with K in"):
        load_experiment(LIGHTGCN_TINY, ["evaluation.select_metric=recall@30"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lr'"):  # the former train-graph schema
        load_experiment(LIGHTGCN_TINY, ["train.lr=0.1"])
    # partial train sections keep the graph defaults, not the CTR ones
    cfg = load_experiment(REPO / "configs" / "gowalla_lightgcn.yaml", [])
    assert cfg.train.seed == 2020 and cfg.train.early_stopping_patience == 0
    # Adam cannot be fused into sharded CPU tables: the error names the way out
    data = write_community_graph(tmp_path / "graph")
    with pytest.raises(ValueError, match="set sharding.type: data_parallel"):
        train(_config(LIGHTGCN_TINY, data, "sharding.type=row_wise"), tmp_path / "run")


def test_sharded_tables_single_process_learn_and_resume(tmp_path: Path) -> None:
    """Row-wise sharded tables (FBGEMM fused Adagrad inside backward), DCP checkpoints, exact resume."""
    data = write_community_graph(tmp_path / "graph", seed=3)
    overrides = ("train.epochs=2", "sharding.type=row_wise", "train.embedding_optimizer.name=adagrad",
                 "train.embedding_optimizer.lr=0.1", "train.checkpoint_every_steps=3")
    cfg = _config(LIGHTGCN_TINY, data, *overrides)
    straight = train(cfg, tmp_path / "a")
    assert straight["test"]["recall@20"] > 0.5
    assert "row_wise" in (tmp_path / "a" / "plan.txt").read_text()
    assert sorted(_state(tmp_path / "a")) == ["model.tables.embedding_bags.item.weight", "model.tables.embedding_bags.user.weight"]
    assert train(cfg, tmp_path / "b", _interrupt_at_step=6) == {"interrupted_at_step": 6}
    resumed = train(cfg, tmp_path / "b", resume=True)
    assert resumed["history"] == straight["history"] and resumed["test"] == straight["test"]


# ---------------------------------------------------------------------------------------------
# 2 ranks vs 1
# ---------------------------------------------------------------------------------------------

TWO_RANK_RUNS = {  # name -> (config, overrides)
    "lightgcn_data_parallel_adam": (LIGHTGCN_TINY, ["train.epochs=1", "train.max_steps_per_epoch=4", "train.log_every_steps=1"]),
    "ngcf_row_wise_adagrad": (NGCF_TINY, ["train.epochs=1", "train.max_steps_per_epoch=4", "train.log_every_steps=1",
                                          "sharding.type=row_wise", "train.embedding_optimizer.name=adagrad",
                                          "train.embedding_optimizer.lr=0.1"]),
}


def _two_rank_runs(rank: int, world_size: int, data: str, root: str) -> None:
    for name, (config, overrides) in TWO_RANK_RUNS.items():
        metrics = train(_config(config, Path(data), *overrides), Path(root) / name)
        assert metrics["world_size"] == world_size


def test_two_ranks_follow_one_process(tmp_path: Path) -> None:
    """The same global BPR batches (256 = 2 x 128 triples) on 2 spawned gloo ranks and on 1 process.

    Stated tolerance: only float summation order differs (the 2-rank gradient is the mean of two
    128-row means, all-reduced; the tables' sharded backward sums the ranks' contributions), so after
    4 Adam / Adagrad steps weights, embeddings and losses agree to rtol 1e-4 / atol 1e-5, and the
    metrics to 1e-3 (a swap of two items whose scores differ by less than the weights' error could
    move one user's hit in or out of the top K: 1/357 of recall@K here; it does not happen in this case).
    """
    from tests.distributed.multiprocess import run_ranks

    data = write_community_graph(tmp_path / "graph", seed=6)
    run_ranks(_two_rank_runs, 2, str(data), str(tmp_path / "two"))
    for name, (config, overrides) in TWO_RANK_RUNS.items():
        single = train(_config(config, data, *overrides), tmp_path / "one" / name)
        double = json.loads((tmp_path / "two" / name / "metrics.json").read_text())
        assert (single["world_size"], double["world_size"], single["steps"], double["steps"]) == (1, 2, 4, 4)
        one, two = _state(tmp_path / "one" / name), _state(tmp_path / "two" / name)
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        for a, b in zip(load_graph_embeddings(tmp_path / "one" / name), load_graph_embeddings(tmp_path / "two" / name)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        assert [s for s, _ in double["train_loss"]] == [s for s, _ in single["train_loss"]] == [1, 2, 3, 4]
        for (_, l1), (_, l2) in zip(single["train_loss"], double["train_loss"]):
            assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5)
        for key, value in single["test"].items():
            assert double["test"][key] == pytest.approx(value, abs=1e-3), (name, key)
        # the 2 ranks each scored half of the users: their all-reduced metrics are the unsplit metrics of the
        # 2-rank embeddings (only float summation order differs)
        cfg = _config(config, data, *overrides)
        graph = load_graph(cfg)
        users, items = load_graph_embeddings(tmp_path / "two" / name)
        unsplit = full_ranking_metrics(users, items, graph.splits["test"], [graph.train], cfg.evaluation.ks,
                                       max_users=cfg.evaluation.max_users)
        assert double["test"] == pytest.approx(unsplit, rel=1e-12, abs=1e-12), name


# ---------------------------------------------------------------------------------------------
# benchmarks/graph_cf.py
# ---------------------------------------------------------------------------------------------


def test_graph_cf_benchmark_summarises_run_dirs_and_reuses_results(tmp_path: Path) -> None:
    """benchmarks/graph_cf.py --from-runs: mean/std over seeds equal numpy's on the runs' metrics;
    --reuse with no models merges earlier results, relabelling a model that appears twice."""
    bench = load_benchmark("graph_cf")
    data = write_community_graph(tmp_path / "graph", seed=4)
    runs = []
    for seed in (0, 1):
        cfg = _config(LIGHTGCN_TINY, data, "train.epochs=2", f"train.seed={seed}", "train.max_steps_per_epoch=2",
                      "evaluation.max_users=40")
        runs.append(train(cfg, tmp_path / f"run{seed}"))
    out = tmp_path / "res" / "summary"
    assert bench.main(["--from-runs", str(tmp_path / "run0"), str(tmp_path / "run1"), "--train-command", "CMD",
                       "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    values = np.array([[h["recall@20"] for h in m["history"]] for m in runs])  # Gowalla-like: evaluated on test
    s = result["summary"]["lightgcn"]
    assert s["epochs_evaluated"] == [1, 2] and s["seeds"] == 2 and s["lr"] == 0.01
    np.testing.assert_allclose(s["recall@20"]["mean"], values.mean(0))
    np.testing.assert_allclose(s["recall@20"]["std"], values.std(0))
    cpu = [e["train_cpu_seconds"] for m in runs for e in m["epochs"]]
    assert s["cpu_seconds_per_epoch"] == pytest.approx(np.mean(cpu))
    assert "Training command: `CMD`" in out.with_suffix(".md").read_text()
    merged = tmp_path / "res" / "merged"
    assert bench.main(["--data", str(data), "--models", "--reuse", str(out.with_suffix(".json")), str(out.with_suffix(".json")),
                       "--out", str(merged)]) == 0
    summary = json.loads(merged.with_suffix(".json").read_text())["summary"]
    assert list(summary) == ["lightgcn", "lightgcn (lr 0.01, 2 ep)"]
    assert bench._lr_of_command("x --lr 0.5 --model-lr mf=0.003 ngcf=1e-4 --out y", "ngcf") == 1e-4
    assert bench._lr_of_command("x --lr 0.5 --model-lr mf=0.003 --out y", "lightgcn") == 0.5


def with_valid_split(data: Path) -> Path:
    """Move every user's last training item of ``data`` into a new valid.txt."""
    lines = (data / "train.txt").read_text().splitlines()
    (data / "train.txt").write_text("\n".join(" ".join(line.split()[:-1]) for line in lines) + "\n")
    (data / "valid.txt").write_text("\n".join(" ".join([line.split()[0], line.split()[-1]]) for line in lines) + "\n")
    return data


def test_validation_split_selects_on_valid_and_tracks_test(tmp_path: Path) -> None:
    """With valid.txt: the model is selected on valid, test excludes valid items, and the test metrics
    tracked at the best evaluation (evaluation.track_test) equal the final test scoring of the restored
    best model."""
    data = with_valid_split(write_community_graph(tmp_path / "graph", seed=8))
    cfg = _config(LIGHTGCN_TINY, data, "data.valid=true", "train.epochs=3", "evaluation.track_test=true")
    metrics = train(cfg, tmp_path / "run")
    assert metrics["selected_on"] == "valid" and set(metrics["data"]) >= {"train", "valid", "test"}
    best = next(h for h in metrics["history"] if h["step"] == metrics["best_step"])
    assert best["recall@20"] == max(h["recall@20"] for h in metrics["history"]) == metrics["valid"]["recall@20"]
    assert best["test"] == pytest.approx(metrics["test"])
    graph = load_graph(cfg)
    users, items = load_graph_embeddings(tmp_path / "run")
    expected = full_ranking_metrics(users, items, graph.splits["test"], [graph.train, graph.splits["valid"]],
                                    cfg.evaluation.ks, max_users=cfg.evaluation.max_users)
    assert metrics["test"] == pytest.approx(expected)
    without = train(_config(LIGHTGCN_TINY, data, "data.valid=false", "train.epochs=1"), tmp_path / "no_valid")
    assert without["selected_on"] == "test" and "valid" not in without["data"]


def test_graph_cf_benchmark_trains_with_a_validation_split(tmp_path: Path) -> None:
    """A benchmark training run on a graph with valid.txt: selection on valid, and a test curve
    recorded for every epoch (evaluation.track_test)."""
    bench = load_benchmark("graph_cf")
    data = with_valid_split(write_community_graph(tmp_path / "graph", seed=7))
    out = tmp_path / "res"
    assert bench.main(["--data", str(data), "--models", "mf", "--seeds", "0", "--epochs", "2", "--dim", "8",
                       "--batch-size", "256", "--lr", "0.01", "--threads", "1", "--max-steps-per-epoch", "2",
                       "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    (run,) = result["runs"]["mf"]
    assert [r["epoch"] for r in run["history"]] == [1, 2] and all(0 <= r["test"]["recall@20"] <= 1 for r in run["history"])
    assert result["summary"]["mf"]["epochs_evaluated"] == [1, 2]


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
