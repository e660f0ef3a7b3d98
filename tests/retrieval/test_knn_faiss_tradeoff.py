"""benchmarks/knn_faiss_tradeoff.py: effective efSearch bookkeeping, point selection, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.retrieval.index import Csr, IndexConfig, build_index
from tests.conftest import load_benchmark
from tests.retrieval.conftest import write_random_splits


def _bench():  # noqa: ANN202
    return load_benchmark("knn_faiss_tradeoff")


def test_effective_ef_matches_what_the_index_sets() -> None:
    pytest.importorskip("faiss")
    bench = _bench()
    g = torch.Generator().manual_seed(0)
    n_items, n_q, batch = 400, 37, 8
    item = torch.randn(n_items, 6, generator=g)
    lengths = torch.randint(0, 60, (n_q,), generator=g)
    offsets = torch.zeros(n_q + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    ids = torch.cat([torch.randperm(n_items, generator=g)[:int(n)] for n in lengths])
    exclude = Csr(offsets, ids)
    for ef, floor in ((1, True), (130, True), (500, True), (16, False), (130, False)):
        index = build_index(item, IndexConfig(kind="hnsw", mips_transform="augment", hnsw_m=8, ef_search=ef,
                                              ef_search_floor=floor, query_batch_size=batch, threads=1))
        seen: list[tuple[int, int]] = []  # (queries in the batch, efSearch the index used)
        inner = index._search_local

        def spy(q, k, ex_rows, ex_local, inner=inner, index=index, seen=seen):  # noqa: ANN001, ANN202
            out = inner(q, k, ex_rows, ex_local)
            seen.append((q.shape[0], int(index.index.hnsw.efSearch)))
            return out

        index._search_local = spy
        res = index.search(torch.randn(n_q, 6, generator=g), bench.K, exclude)
        expected = sum(b * e for b, e in seen) / n_q
        assert bench.effective_ef(exclude, n_items, batch, ef, floor) == pytest.approx(expected)
        if not floor:  # efSearch below K: as given; rows may come back short (-1), never with excluded items
            assert expected == ef
            for row, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
                assert not set(res.ids[row].tolist()) & set(ids[lo:hi].tolist())


def test_choose_picks_fastest_point_above_target() -> None:
    bench = _bench()
    pts = [{"hnsw_m": 8, "ef_construction": 200, "ef_search": 1, "recall_ratio": 0.90, "speed_ratio_cpu": 9.0},
           {"hnsw_m": 16, "ef_construction": 200, "ef_search": 1, "recall_ratio": 0.951, "speed_ratio_cpu": 6.0},
           {"hnsw_m": 32, "ef_construction": 200, "ef_search": 1, "recall_ratio": 0.99, "speed_ratio_cpu": 4.0}]
    assert bench.choose({"valid": {"points": pts}}, "valid", 0.95)["hnsw_m"] == 16
    assert bench.choose({"valid": {"points": pts}}, "valid", 0.999) is None
    assert bench.choose({"test": {"points": pts}}, "valid", 0.95) is None
    paired = [dict(pts[2], speed_ratio_cpu=7.0)]  # the paired section wins when present
    assert bench.choose({"valid": {"points": pts}, "valid_paired": {"points": paired}}, "valid", 0.95)["hnsw_m"] == 32


def test_end_to_end_tiny(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    bench = _bench()
    g = torch.Generator().manual_seed(1)
    n_users, n_items = 40, 150
    data = write_random_splits(tmp_path / "data", n_users, n_items, {"train": 9, "test": 3}, g)
    train, test = ((data / f"{name}.txt").read_text().splitlines() for name in ("train", "test"))
    emb = tmp_path / "emb.npz"
    np.savez(emb, user=torch.randn(n_users, 8, generator=g).numpy(),
             item=(torch.randn(n_items, 8, generator=g) * torch.rand(n_items, 1, generator=g) * 3).numpy())
    out = tmp_path / "out"
    common = ["--data", str(data), "--embeddings", str(emb), "--hnsw-m", "8", "--ef-search", "1", "400",
              "--out", str(out), "--merge"]
    assert bench.main(["--split", "test", *common]) == 0
    res = json.loads((out / "knn_faiss_tradeoff.json").read_text())
    run = res["test"]
    assert run["users"] == n_users and len(run["points"]) == 2
    # exact recall recomputed independently: hits of the exact top-100 among the test items
    scores = torch.from_numpy(np.load(emb)["user"]) @ torch.from_numpy(np.load(emb)["item"]).T
    recalls = []
    for u in range(n_users):
        tr = [int(x) for x in train[u].split()[1:]]
        te = {int(x) for x in test[u].split()[1:]}
        s = scores[u].clone()
        s[tr] = float("-inf")
        top = set(torch.topk(s, 100).indices.tolist())
        recalls.append(len(top & te) / len(te))
    assert run["exact"]["recall@100"] == pytest.approx(sum(recalls) / n_users, abs=1e-6)
    big = next(p for p in run["points"] if p["ef_search"] == 400)  # efSearch >= catalogue: exhaustive
    assert big["overlap@100"] == pytest.approx(1.0) and big["recall_ratio"] == pytest.approx(1.0)
    assert "## test, base-model seed 0: 40 users" in (out / "knn_faiss_tradeoff.md").read_text()
    # --paired: a separate section whose ratios use the exact run timed right before each point
    assert bench.main(["--split", "test", "--paired", *common]) == 0
    res = json.loads((out / "knn_faiss_tradeoff.json").read_text())
    assert set(res) == {"test", "test_paired"} and len(res["test"]["points"]) == 2
    for p in res["test_paired"]["points"]:
        assert p["speed_ratio_cpu"] == pytest.approx(p["exact_cpu_seconds"] / p["cpu_seconds"])
    assert "paired timing" in (out / "knn_faiss_tradeoff.md").read_text()
    # IVF-Flat points (augmented items, L2 lists), another base seed in its own section, HNSW points kept
    ivf = ["--data", str(data), "--embeddings", str(emb), "--hnsw-m", "--ivf-nprobe", "1", "3",
           "--out", str(out), "--merge", "--paired"]
    assert bench.main(["--split", "test", "--seed", "1", *ivf]) == 0
    assert bench.main(["--split", "test", *ivf]) == 0
    res = json.loads((out / "knn_faiss_tradeoff.json").read_text())
    assert set(res) == {"test", "test_paired", "test_paired_s1"} and res["test_paired_s1"]["seed"] == 1
    kinds = [p.get("kind") for p in res["test_paired"]["points"]]
    assert kinds.count("hnsw") == 2 and kinds.count("ivf_flat") == 2  # merged, HNSW points not lost
    for sec in ("test_paired", "test_paired_s1"):
        pts = {p["nprobe"]: p for p in res[sec]["points"] if p.get("kind") == "ivf_flat"}
        assert set(pts) == {1, 3} and all(p["nlist"] == 3 and p["mips_transform"] == "augment" for p in pts.values())
        assert pts[3]["overlap@100"] == pytest.approx(1.0)  # nprobe = nlist: exhaustive, the exact top-100
        assert pts[3]["recall_ratio"] == pytest.approx(1.0)
    text = (out / "knn_faiss_tradeoff.md").read_text()
    assert "| L2, augmented items | 3 | 3 |" in text and "base-model seed 1" in text


def test_choose_by_kind_and_sections_order() -> None:
    bench = _bench()
    pts = [{"kind": "ivf_flat", "mips_transform": "augment", "nlist": 8, "nprobe": 2, "recall_ratio": 0.96,
            "speed_ratio_cpu": 12.0},
           {"kind": "ivf_flat", "mips_transform": "augment", "nlist": 8, "nprobe": 4, "recall_ratio": 0.975,
            "speed_ratio_cpu": 9.0},
           {"hnsw_m": 24, "ef_construction": 200, "ef_search": 96, "recall_ratio": 0.99, "speed_ratio_cpu": 10.0}]
    res = {"valid": {"points": pts}}
    assert bench.choose(res, "valid", 0.95)["speed_ratio_cpu"] == 12.0
    assert bench.choose(res, "valid", 0.97, kind="ivf_flat")["nprobe"] == 4  # margin 0.02 over 0.95
    assert bench.choose(res, "valid", 0.95, kind="hnsw")["hnsw_m"] == 24  # old points without "kind" are HNSW
    assert not bench.same_point(pts[0], pts[1]) and bench.same_point(pts[1], dict(pts[1]))
    assert not bench.same_point(pts[0], pts[2])
    assert bench.section_key("test", True, 2) == "test_paired_s2" and bench.section_key("valid", False, 0) == "valid"
    secs = {k: {"points": []} for k in ("test_paired_s2", "test_s1", "valid", "test_paired", "test")}
    assert bench.sections(secs) == ["valid", "test", "test_paired", "test_s1", "test_paired_s2"]


@pytest.mark.parametrize("dataset, name, other", [("gowalla", "(Gowalla, LightGCN)", "ML-1M"),
                                                  ("ml1m", "(ML-1M, LightGCN)", "Gowalla")])
def test_markdown_describes_the_data_set_it_ran_on(dataset: str, name: str, other: str) -> None:
    bench = _bench()
    args = bench.parse_args(["--dataset", dataset])
    run = {"command": "x", "users": 3, "base": {}, "machine": "m", "seed": 0, "points": [],
           "exact": {"recall@100": 0.5, "qps_wall": 1.0, "qps_cpu": 1.0, "wall_seconds": [1.0], "cpu_seconds": [1.0]}}
    text = bench.markdown({"valid": run}, args)
    header = text.split("## validation")[0]
    assert name in text.splitlines()[0] and f"configs/retrieval_{dataset}_lightgcn.yaml" in header
    assert other not in text.splitlines()[0] and f"{dataset}_lightgcn_{{holdout,train}}" in header
