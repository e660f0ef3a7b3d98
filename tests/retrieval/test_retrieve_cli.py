"""`recsys-emb retrieve` end to end on a small synthetic interaction folder (the *_tiny configs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from recsys_emb.retrieval.driver import add_retrieve_arguments, load_embeddings, run_retrieve

REPO = Path(__file__).resolve().parents[2]


def _write_folder(root: Path, n_users: int = 60, n_items: int = 80, seed: int = 0) -> Path:
    """Users engage with items of 2 of 4 item groups; ~20% of each user's items are held out."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for u in range(n_users):
        groups = torch.randperm(4, generator=g)[:2]
        pool = torch.cat([torch.arange(gr * 20, gr * 20 + 20) for gr in groups.tolist()])
        items = pool[torch.randperm(pool.numel(), generator=g)[:12]].tolist()
        train.append(f"{u} " + " ".join(map(str, items[:9])))
        test.append(f"{u} " + " ".join(map(str, items[9:])))
    train.append(f"{n_users}")  # a user without history (still evaluated: it has test items)
    test.append(f"{n_users} 1 2")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_retrieve_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("config", ["retrieval_gowalla_tiny.yaml", "retrieval_ml1m_tiny.yaml"])
def test_retrieve_tiny_config_end_to_end(tmp_path, config, capsys):
    pytest.importorskip("faiss")  # kNN-Embed clusters items with FAISS k-means
    data = _write_folder(tmp_path / "data")
    run = tmp_path / "run"
    sets = ["--set", "base.two_tower.train.epochs=2", "--set", "base.two_tower.train.batch_size=64", "--set", "knn_embed.num_clusters=4",
            "--set", "eval.ks=[5,10]", "--set", "show_progress=false", "--set", "index.kind=exact"]
    assert run_retrieve(_args("--config", str(REPO / "configs" / config), "--data", str(data), "--run-dir", str(run), *sets)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["users"] == 61
    methods = metrics["methods"]
    assert set(methods) == {"single[exact]", "knn_embed[exact]"}
    for m in methods.values():
        for key in ("recall@5", "recall@10", "ndcg@10", "clusters@10", "entropy@10", "ild@10", "queries_per_second"):
            assert key in m and m[key] is not None
    assert metrics["knn_embed"]["users_without_history"] == 1
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["methods"].keys() == methods.keys()
    user, item = load_embeddings(run / "embeddings.pt")
    assert user.shape[0] == 61 and item.shape[0] == 80

    # second run: load the embeddings instead of training; same embeddings -> same single-vector metrics
    run2 = tmp_path / "run2"
    assert run_retrieve(_args("--config", str(REPO / "configs" / config), "--data", str(data), "--run-dir", str(run2),
                              "--embeddings", str(run / "embeddings.pt"), *sets)) == 0
    again = json.loads((run2 / "metrics.json").read_text())["methods"]["single[exact]"]
    assert again["recall@10"] == methods["single[exact]"]["recall@10"]


def test_retrieve_with_faiss_index(tmp_path):
    pytest.importorskip("faiss")
    data = _write_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert run_retrieve(_args("--config", str(REPO / "configs" / "retrieval_ml1m_tiny.yaml"), "--data", str(data),
                              "--run-dir", str(run), "--set", "base.two_tower.train.epochs=1", "--set", "eval.ks=[10]",
                              "--set", "knn_embed.num_clusters=4", "--set", "index.kind=hnsw",
                              "--set", "show_progress=false")) == 0
    methods = json.loads((run / "metrics.json").read_text())["methods"]
    assert set(methods) == {"single[exact]", "single[hnsw]", "knn_embed[exact]", "knn_embed[hnsw]"}
    assert methods["single[hnsw]"]["overlap@10"] > 0.9


def test_retrieve_config_errors(tmp_path):
    from recsys_emb.config.io import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'num_clusters'"):
        run_retrieve(_args("--config", str(REPO / "configs" / "retrieval_ml1m_tiny.yaml"), "--run-dir", str(tmp_path),
                           "--set", "knn_embed.num_cluster=3"))
    bad = tmp_path / "e.pt"
    torch.save({"user": torch.zeros(2, 3)}, bad)
    with pytest.raises(ValueError, match="'user' and 'item'"):
        load_embeddings(bad)
