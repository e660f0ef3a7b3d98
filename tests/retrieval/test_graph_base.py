"""Graph-CF base embeddings for retrieval, validation splits and the augmented (MIPS -> L2) HNSW index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from recsys_emb.retrieval.data import Interactions, concat_csr, holdout_split, load_split_data
from recsys_emb.retrieval.driver import (RetrieveConfig, add_retrieve_arguments, evaluation_users, load_data,
                                         load_embeddings, run_retrieve, set_base_seed)
from recsys_emb.retrieval.index import Csr, IndexConfig, build_index, load_index
from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def _lists(x: Interactions) -> list[list[int]]:
    return [x.user_items(u).tolist() for u in range(x.num_users)]


def _write_folder(root: Path, n_users: int = 50, n_items: int = 60, seed: int = 0, valid: bool = True) -> Path:
    """Users engage with 2 of 3 item groups; 10 train, 2 valid, 3 test items each."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        groups = torch.randperm(3, generator=g)[:2]
        pool = torch.cat([torch.arange(gr * 20, gr * 20 + 20) for gr in groups.tolist()])
        items = pool[torch.randperm(pool.numel(), generator=g)[:15]].tolist()
        files["train"].append(f"{u} " + " ".join(map(str, items[:10])))
        files["valid"].append(f"{u} " + " ".join(map(str, items[10:12])))
        files["test"].append(f"{u} " + " ".join(map(str, items[12:])))
    for name, lines in files.items():
        if name != "valid" or valid:
            (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------


def test_holdout_split_partitions_each_user():
    lists = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [3], [], [4, 5], list(range(20, 40))]
    train = Interactions.from_lists(lists, 50)
    kept, held = holdout_split(train, 0.3, seed=1)
    for u, items in enumerate(lists):
        k, h = kept.user_items(u).tolist(), held.user_items(u).tolist()
        assert sorted(k + h) == sorted(items) and not set(k) & set(h)
        expected = min(round(len(items) * 0.3), max(len(items) - 1, 0))
        assert len(h) == expected  # round(fraction * n), but at least one item kept
        if items:
            assert k
    again = holdout_split(train, 0.3, seed=1)
    assert torch.equal(again[1].items, held.items)
    other = holdout_split(train, 0.3, seed=2)
    assert not torch.equal(other[1].items, held.items)
    with pytest.raises(ValueError):
        holdout_split(train, 1.0, 0)


def test_concat_csr_matches_python():
    a = Csr(torch.tensor([0, 2, 2, 3]), torch.tensor([5, 6, 7]))
    b = Csr(torch.tensor([0, 1, 3, 3]), torch.tensor([1, 2, 3]))
    out = concat_csr(a, b)
    rows = [out.ids[out.offsets[i]:out.offsets[i + 1]].tolist() for i in range(3)]
    assert rows == [[5, 6, 1], [2, 3], [7]]


def test_load_split_data_protocols(tmp_path):
    folder = _write_folder(tmp_path / "d")
    test = load_split_data(folder, "test")
    assert test.extra_exclude is not None
    assert _lists(test.extra_exclude) == _lists(load_split_data(folder, "valid").test)
    users = torch.arange(test.num_users)
    ex = test.exclusions(users)
    for u in range(test.num_users):
        got = sorted(ex.ids[ex.offsets[u]:ex.offsets[u + 1]].tolist())
        assert got == sorted(test.train.user_items(u).tolist() + test.extra_exclude.user_items(u).tolist())
    # no valid file: a holdout of the training items is the validation split
    folder2 = _write_folder(tmp_path / "d2", valid=False)
    val = load_split_data(folder2, "valid", holdout_fraction=0.2, holdout_seed=3)
    full = load_split_data(folder2, "test")
    assert full.extra_exclude is None
    for u in range(full.num_users):
        tr, he = val.train.user_items(u).tolist(), val.test.user_items(u).tolist()
        assert sorted(tr + he) == sorted(full.train.user_items(u).tolist())
        assert len(he) == 2  # round(0.2 * 10)
        assert not set(he) & set(full.test.user_items(u).tolist()) or True  # test items are separate lines
    assert val.num_items == full.num_items and val.num_users == full.num_users


# ---------------------------------------------------------------------------------------------
# augmented HNSW
# ---------------------------------------------------------------------------------------------


def test_hnsw_augment_is_exact_mips_order(tmp_path):
    faiss = pytest.importorskip("faiss")
    del faiss
    g = torch.Generator().manual_seed(0)
    items = torch.randn(600, 16, generator=g) * torch.rand(600, 1, generator=g).mul(5).add(0.1)  # norms vary 50x
    queries = torch.randn(40, 16, generator=g) * 3
    exclude = [torch.randint(0, 600, (5,), generator=g) for _ in range(40)]
    ref = build_index(items, IndexConfig(kind="exact")).search(queries, 10, exclude)
    cfg = IndexConfig(kind="hnsw", mips_transform="augment", hnsw_m=16, ef_construction=200, ef_search=600)
    aug = build_index(items, cfg)
    res = aug.search(queries, 10, exclude)
    # efSearch = N: the L2 graph search is exhaustive enough to return the exact MIPS top-10
    assert (res.ids == ref.ids).float().mean() > 0.99
    ok = res.ids >= 0
    direct = (queries.unsqueeze(1) * items[res.ids.clamp_min(0)]).sum(2)
    torch.testing.assert_close(res.scores[ok], direct[ok], rtol=1e-4, atol=1e-3)  # scores are inner products
    for b in range(40):
        assert not set(res.ids[b].tolist()) & set(exclude[b].tolist())
    aug.save(tmp_path / "aug.idx")
    back = load_index(tmp_path / "aug.idx")
    again = back.search(queries, 10, exclude)
    assert torch.equal(again.ids, res.ids)
    torch.testing.assert_close(again.scores, res.scores)


def test_mips_transform_validated():
    with pytest.raises(ValueError, match="mips_transform"):
        IndexConfig(kind="hnsw", mips_transform="nope")


# ---------------------------------------------------------------------------------------------
# retrieve with LightGCN / MF base embeddings
# ---------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_retrieve_arguments(p)
    return p.parse_args(list(argv))


TINY_GRAPH = ["--set", "base.graph.model.embedding_dim=8", "--set", "base.graph.model.num_layers=2",
              "--set", "base.graph.train.epochs=2", "--set", "base.graph.train.batch_size=128",
              "--set", "base.graph.train.progress=false", "--set", "knn_embed.num_clusters=3",
              "--set", "eval.ks=[5,10]", "--set", "show_progress=false", "--set", "index.kind=exact",
              "--set", "eval.max_users=0"]


@pytest.mark.parametrize("base_type", ["lightgcn", "mf"])
def test_retrieve_graph_base_end_to_end(tmp_path, base_type):
    pytest.importorskip("faiss")  # k-means
    data = _write_folder(tmp_path / "data")
    run = tmp_path / "run"
    cfg = REPO / "configs" / "retrieval_ml1m_lightgcn.yaml"
    assert run_retrieve(_args("--config", str(cfg), "--data", str(data), "--run-dir", str(run),
                              "--set", f"base.type={base_type}", *TINY_GRAPH)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["base"]["source"] == base_type and metrics["base"]["epochs"] == 2
    assert metrics["base"]["num_layers"] == (0 if base_type == "mf" else 2)
    assert set(metrics["methods"]) == {"single[exact]", "knn_embed[exact]"}
    assert metrics["users"] == 50 and metrics["split"] == "test"
    user, item = load_embeddings(run / "embeddings.pt")
    assert user.shape == (50, 8) and item.shape == (60, 8)
    assert (run / "base" / "metrics.json").is_file()
    # the graph trainer's own evaluation (training and valid items excluded) equals ours on the exact index
    own = json.loads((run / "base" / "metrics.json").read_text())["test"]["recall@10"]
    assert own == pytest.approx(metrics["methods"]["single[exact]"]["recall@10"], abs=1e-6)


def test_retrieve_base_model_takes_an_embedding_spec(tmp_path):
    """``base.graph.embedding``: the base LightGCN's item table is multiplexed (a quarter of the rows)."""
    pytest.importorskip("faiss")  # k-means
    data = _write_folder(tmp_path / "data")
    run = tmp_path / "run"
    cfg = REPO / "configs" / "retrieval_ml1m_lightgcn.yaml"
    spec = "base.graph.embedding.groups=[{name: ids, features: [item], chain: [{unified: {num_rows: 15}}]}, {name: rest}]"
    assert run_retrieve(_args("--config", str(cfg), "--data", str(data), "--run-dir", str(run),
                              "--set", "base.type=lightgcn", "--set", spec, *TINY_GRAPH)) == 0
    state = torch.load(run / "base" / "model.pt", weights_only=True)
    (item_rows,) = [v for k, v in state.items() if k.endswith("unified_ids.weight")]
    assert item_rows.shape == (15, 8)
    user, item = load_embeddings(run / "embeddings.pt")
    assert user.shape == (50, 8) and item.shape == (60, 8)


def test_validation_split_never_reads_test_items(tmp_path):
    pytest.importorskip("faiss")
    data = _write_folder(tmp_path / "data", valid=False)
    cfg_path = REPO / "configs" / "retrieval_gowalla_lightgcn.yaml"
    from recsys_emb.config.io import load_config

    cfg = load_config(RetrieveConfig, cfg_path, [f"data.path={data}", "eval.split=valid", "data.holdout_fraction=0.2"])
    set_base_seed(cfg, 7)
    assert cfg.base.graph.train.seed == 7
    d = load_data(cfg)
    full = load_split_data(data, "test")
    users = evaluation_users(d, cfg.eval)
    for u in users.tolist():
        assert not set(d.test.user_items(u).tolist()) & set(full.test.user_items(u).tolist())
        assert set(d.test.user_items(u).tolist()) <= set(full.train.user_items(u).tolist())


def test_benchmark_tune_picks_best_validation_row(tmp_path):
    pytest.importorskip("faiss")
    bench = load_benchmark("knn_embed")
    data_dir = _write_folder(tmp_path / "data")
    from recsys_emb.config.io import load_config

    cfg = load_config(RetrieveConfig, REPO / "configs" / "retrieval_ml1m_lightgcn.yaml",
                      [f"data.path={data_dir}", "eval.split=valid", "eval.ks=[10]"])
    d = load_data(cfg)
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(d.num_users, 8, generator=g), torch.randn(d.num_items, 8, generator=g)
    grid = {"num_clusters": [1, 3], "smoothing_lambda": [0.0, 0.5], "num_neighbors": [2, 5]}
    out = bench.select_setting(bench.tune(cfg, d, user, item, grid), "recall")
    # lambda = 0 is run once per C (k irrelevant): 2 x (1 + 2) rows
    assert len(out["rows"]) == 6
    best = max(r["knn_embed"]["recall@10"] for r in out["rows"])
    assert out["chosen_metrics"]["recall@10"] == best
    # C = 1 is single-vector retrieval (the tested reduction)
    c1 = [r for r in out["rows"] if r["num_clusters"] == 1]
    assert all(r["knn_embed"]["recall@10"] == pytest.approx(r["single"]["recall@10"]) for r in c1)


def test_benchmark_dataset_overrides_win():
    bench = load_benchmark("knn_embed")
    args = bench.parse_args(["--max-users", "0", "--set", "knn_embed.num_clusters=5",
                             "--set-ds", "gowalla:eval.max_users=123", "--set-ds", "ml1m:knn_embed.num_clusters=7"])
    g, m = bench.make_config("gowalla", args, []), bench.make_config("ml1m", args, ["eval.max_users=9"])
    assert g.eval.max_users == 123 and g.knn_embed.num_clusters == 5 and g.base.type == "lightgcn"
    assert m.eval.max_users == 9 and m.knn_embed.num_clusters == 7
