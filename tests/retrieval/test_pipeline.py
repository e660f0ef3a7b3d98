"""Retrieve, then rank (recsys_emb/retrieval/pipeline.py): exact reduction to full ranking, one vocabulary for
both stages, hard negatives, the paired bootstrap, the MovieLens-1M reader and ``recsys-emb recommend``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.data.sequences import (
    FIRST_ID, SequenceDataConfig, SequenceDataError, SequenceDataset, load_raw, read_movielens_1m, write_synthetic_s3rec,
)
from recsys_emb.retrieval.index import Csr
from recsys_emb.retrieval.pipeline import (
    PipelineEvalConfig, RecommendConfig, StageOne, StageOneConfig, StageOneOrder, build_pipeline, check_same_vocabulary,
    hard_negative_pool, paired_bootstrap, rank, run_pipeline, seen_before,
)


def data_config(folder: Path, **kw) -> SequenceDataConfig:
    return SequenceDataConfig(**{"dataset": "s3rec", "stem": "Synth", "path": str(folder), "cache": False, "max_history": 20, **kw})


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_synthetic_s3rec(tmp_path_factory.mktemp("synth"), users=300, items=120)


@pytest.fixture(scope="module")
def ds(synth) -> SequenceDataset:
    return SequenceDataset(load_raw(data_config(synth)), data_config(synth))


def _history(ds: SequenceDataset) -> Csr:
    indptr, items = ds.split_items("train")
    return Csr(torch.from_numpy(indptr), torch.from_numpy(items))


def _random_embeddings(ds: SequenceDataset, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ds.num_users, dim, generator=g), torch.randn(ds.num_items, dim, generator=g)


# ------------------------------------------------------------------------------ reduction to full ranking
@pytest.mark.parametrize("split", ["test", "valid"])
def test_full_catalogue_exact_index_and_stage1_scores_reproduce_full_ranking(ds, split):
    """N = every item, exact index, a ranker returning the stage-1 scores: the final top K is plain full-ranking
    retrieval (reference: all scores, the user's earlier items and ids 0/1 masked, torch.topk), item for item."""
    user, item = _random_embeddings(ds)
    cfg = StageOneConfig(method="single", candidates=ds.num_items)
    cfg.knn_embed.num_clusters = 4
    stage1 = StageOne(cfg, user, item, _history(ds), torch.from_numpy(ds.popularity))
    ev = PipelineEvalConfig(split=split, k=20, latency_users=0)
    result = run_pipeline(stage1, StageOneOrder(), ds, ev, chunk=64)

    scores = user @ item.T
    scores[:, :FIRST_ID] = -torch.inf
    cut = 1 if split == "test" else 2
    for u in range(ds.num_users):  # independent of the pipeline's exclusion code: slice the raw sequence
        seq = ds.items[ds.offsets[u] : ds.offsets[u + 1]]
        scores[u, torch.from_numpy(seq[: len(seq) - cut])] = -torch.inf
    reference = torch.topk(scores, 20, dim=1).indices
    assert torch.equal(result.final, reference)
    target = np.array([ds.items[ds.offsets[u + 1] - cut] for u in range(ds.num_users)])
    hit = (reference == torch.from_numpy(target)[:, None]).any(1).numpy().astype(np.float32)
    np.testing.assert_array_equal(result.per_user["final/recall@20"], hit)
    np.testing.assert_array_equal(result.per_user["final/recall@20"], result.per_user["stage1/recall@20"])


def test_rank_orders_by_stage2_and_keeps_stage1_order_on_ties():
    ids = torch.tensor([[5, 6, 7, 8]])
    s1 = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    s2 = torch.tensor([[0.25, 2.0, 0.25, 0.5]])
    top, t1, t2 = rank(ids, s1, s2, 3)
    assert top.tolist() == [[6, 8, 5]] and t1.tolist() == [[3.0, 1.0, 4.0]] and t2.tolist() == [[2.0, 0.5, 0.25]]
    padded, _, _ = rank(ids, s1, s2, 6)
    assert padded.tolist() == [[6, 8, 5, 7, -1, -1]]


def test_candidates_never_include_seen_items_and_knn_embed_fills_the_budget(ds):
    user, item = _random_embeddings(ds, seed=1)
    users = np.arange(40)
    exclude = seen_before(ds, users, "test")
    for method in ("single", "knn_embed"):
        cfg = StageOneConfig(method=method, candidates=30)
        cfg.knn_embed.num_clusters = 4
        stage1 = StageOne(cfg, user, item, _history(ds), torch.from_numpy(ds.popularity))
        ids, _ = stage1.candidates(torch.from_numpy(users), exclude)
        assert ids.shape == (40, 30) and bool((ids >= FIRST_ID).all())
        for r, u in enumerate(users):
            seen = set(ds.items[ds.offsets[u] : ds.offsets[u + 1] - 1].tolist())
            assert not seen & set(ids[r].tolist()) and len(set(ids[r].tolist())) == 30


# ---------------------------------------------------------------------------------------- vocabulary
def test_vocabulary_fingerprint_depends_on_the_id_maps_only(synth, ds):
    same = SequenceDataset(load_raw(data_config(synth)), data_config(synth, max_history=5, num_negatives=3))
    fewer = SequenceDataset(load_raw(data_config(synth, max_users=200)), data_config(synth, max_users=200))
    assert same.vocabulary() == ds.vocabulary()
    assert fewer.vocabulary()["fingerprint"] != ds.vocabulary()["fingerprint"]
    with pytest.raises(ValueError, match=r"(?s)run_a.*200 users.*run_b.*300 users"):
        check_same_vocabulary(("run_a", fewer.vocabulary()), ("run_b", ds.vocabulary()))


def test_graph_of_the_sequences_is_the_leave_last_out_split(ds):
    graph = ds.to_graph()
    assert (graph.num_users, graph.num_items) == (ds.num_users, ds.num_items)
    for u in (0, 7, 123):
        seq = ds.items[ds.offsets[u] : ds.offsets[u + 1]]
        assert graph.splits["train"].items_of(u).tolist() == sorted(set(seq[:-2].tolist()))
        assert graph.splits["valid"].items_of(u).tolist() == [seq[-2]]
        assert graph.splits["test"].items_of(u).tolist() == [seq[-1]]


# ------------------------------------------------------------------------------------ bootstrap helper
def test_paired_bootstrap_hand_computed():
    """d = a - b = [0, 1]: a resample of 2 users has mean 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    95% interval is [0, 1] and the 40% interval (quantiles 0.3 and 0.7, inside the 0.5 block) is [0.5, 0.5]."""
    a, b = np.array([1.0, 1.0]), np.array([1.0, 0.0])
    wide = paired_bootstrap(a, b, samples=4000, seed=0)
    assert wide["diff"] == 0.5 and (wide["lo"], wide["hi"]) == (0.0, 1.0)
    narrow = paired_bootstrap(a, b, samples=4000, seed=0, level=0.4)
    assert (narrow["lo"], narrow["hi"]) == (0.5, 0.5)
    const = paired_bootstrap(np.full(50, 0.3), np.zeros(50), samples=200)
    assert const["lo"] == pytest.approx(0.3) and const["hi"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(np.zeros(0), np.zeros(0))


# ----------------------------------------------------------------------------------- MovieLens-1M reader
def test_movielens_1m_reader_orders_by_time_and_names_bad_lines(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::300\n1::11::3::100\n2::10::4::50\n1::12::4::100\n")
    (tmp_path / "movies.dat").write_bytes("10::Caf\xe9 (1995)::Drama|Comedy\n11::B (1996)::Action\n12::C (1997)::\n".encode("latin-1"))
    raw = read_movielens_1m(tmp_path)
    assert raw.users.tolist() == [1, 2] and raw.offsets.tolist() == [0, 3, 4]
    assert raw.items.tolist() == [11, 12, 10, 10]  # user 1 by (timestamp, line): 100 (line 2), 100 (line 4), 300
    # genres in alphabetical order: Action 0, Comedy 1, Drama 2; the category is the first listed genre
    assert raw.item_attributes == {10: [2, 1], 11: [0]} and raw.item_category == {10: 2, 11: 0}
    (tmp_path / "ratings.dat").write_text("1::10::5::300\n1::x::3::100\n")
    with pytest.raises(SequenceDataError, match=r"ratings.dat:2: MovieID 'x' is not an integer"):
        read_movielens_1m(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::10::5\n")
    with pytest.raises(SequenceDataError, match=r"ratings.dat:1: expected 4"):
        read_movielens_1m(tmp_path)


# ------------------------------------------------------------------------------ trained runs (one module)
def _train(config: str, overrides: list[str], run_dir: Path) -> Path:
    from recsys_emb.train.tasks import load_experiment, train

    train(load_experiment(config, overrides), run_dir)
    return run_dir


def _sequence_overrides(prefix: str, synth: Path) -> list[str]:
    return [f"{prefix}dataset=s3rec", f"{prefix}stem=Synth", f"{prefix}path={synth}", f"{prefix}max_users=null"]


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    mf = _train("configs/gowalla_lightgcn_tiny.yaml", _sequence_overrides("data.sequence.", synth) + [
        "data.valid=true", "model.name=mf", "evaluation.max_users=null", "train.epochs=3"], root / "mf")
    din = _train("configs/amazon_beauty_din_tiny.yaml", _sequence_overrides("data.", synth), root / "din")
    dare = _train("configs/amazon_beauty_dare_tiny.yaml", _sequence_overrides("data.", synth) + ["train.epochs=1"], root / "dare")
    return {"mf": mf, "din": din, "dare": dare}


def test_hard_negative_pool_and_sampling(synth, ds, runs):
    pool = hard_negative_pool(ds, runs["mf"], 10)
    user, item = torch.load(runs["mf"] / "embeddings.pt", weights_only=True).values()
    for u in (0, 50, 299):
        seq = set(ds.items[ds.offsets[u] : ds.offsets[u + 1]].tolist())
        eligible = [i for i in range(FIRST_ID, ds.num_items) if i not in seq]
        scores = (user[u] @ item.T)[eligible]
        assert pool[u].tolist() == [eligible[j] for j in torch.topk(scores, 10).indices.tolist()]
    every = SequenceDataset(load_raw(data_config(synth)), data_config(synth, hard_negatives=str(runs["mf"]), hard_negative_pool=10))
    ex = every.examples("train", epoch=0)
    negatives = ex.label == 0
    assert all(i in set(pool[u].tolist()) for u, i in zip(ex.user[negatives], ex.target_item[negatives]))
    np.testing.assert_array_equal(every.examples("test").target_item, ds.examples("test").target_item)  # eval: popularity
    none = SequenceDataset(load_raw(data_config(synth)), data_config(synth, hard_negatives=str(runs["mf"]), hard_negative_fraction=0.0))
    np.testing.assert_array_equal(none.examples("train", epoch=1).target_item, ds.examples("train", epoch=1).target_item)
    fewer = SequenceDataset(load_raw(data_config(synth, max_users=100)), data_config(synth, max_users=100))
    with pytest.raises(ValueError, match=r"different vocabularies"):
        hard_negative_pool(fewer, runs["mf"], 10)
    # the pool is built by the first training draw only: a data set (e.g. of a restored ranker) whose retrieval run
    # is gone still builds and scores; training from it says which run is missing
    gone = SequenceDataset(load_raw(data_config(synth)), data_config(synth, hard_negatives=str(synth / "no_such_run")))
    np.testing.assert_array_equal(gone.examples("test").target_item, ds.examples("test").target_item)
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        gone.examples("train")


def test_recommend_cli_writes_ranked_lists_and_refuses_mismatched_runs(runs, tmp_path, synth):
    from recsys_emb.cli import main

    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text("name: t\nretrieval: {method: knn_embed, candidates: 40, knn_embed: {num_clusters: 4}}\n"
                        "eval: {k: 10, latency_users: 5}\nshow_progress: false\n")
    out = tmp_path / "rec"
    assert main(["recommend", "--config", str(cfg_path), "--retrieval-run", str(runs["mf"]), "--ranker-run", str(runs["din"]),
                 "--run-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert metrics["users"] == 300 and set(metrics["latency_ms"]) == {"stage1", "stage2", "pipeline"}
    assert m["final/recall@10"] <= m["candidates/recall@40"] and m["stage1/recall@10"] <= m["candidates/recall@40"]
    lines = (out / "recommendations.tsv").read_text().splitlines()
    assert lines[0] == "user\titem\trank\tstage1_score\tstage2_score" and len(lines) == 1 + 300 * 10
    rows = [line.split("\t") for line in lines[1:11]]
    raw_items = set(load_raw(data_config(synth)).items.tolist())
    assert {r[0] for r in rows} == {"1"} and all(int(r[1]) in raw_items for r in rows)
    assert [int(r[2]) for r in rows] == list(range(1, 11))
    s2 = [float(r[4]) for r in rows]
    assert s2 == sorted(s2, reverse=True)
    per_user = np.load(out / "per_user.npz")
    np.testing.assert_allclose(per_user["final__recall@10"].mean(), m["final/recall@10"], rtol=1e-6)

    other = tmp_path / "din_other"
    shutil.copytree(runs["din"], other)
    vocab = json.loads((other / "vocabulary.json").read_text())
    (other / "vocabulary.json").write_text(json.dumps({**vocab, "fingerprint": "0" * 64}))
    cfg = RecommendConfig(retrieval=StageOneConfig(run=str(runs["mf"])))
    cfg.ranker.run = str(other)
    with pytest.raises(ValueError, match=rf"(?s)retrieval run {runs['mf']}.*ranker run {other}"):
        build_pipeline(cfg)
    cfg.ranker.run = None
    cfg.retrieval.run = str(runs["din"])
    with pytest.raises(ValueError, match="must be a graph or two_tower run"):
        build_pipeline(cfg)


def test_any_ranker_and_a_faiss_index(runs):
    """Stage 2 may be any sequence run (here the two-stage model on DARE tables); stage 1 any index (HNSW here):
    the ranker reorders the same candidates, and HNSW finds (almost) the exact candidates on this tiny catalogue."""
    pytest.importorskip("faiss")
    base = RecommendConfig(retrieval=StageOneConfig(run=str(runs["mf"]), candidates=30), eval=PipelineEvalConfig(k=10, latency_users=0))
    base.retrieval.knn_embed.num_clusters = 4
    stage1, _, ds = build_pipeline(base)
    exact = run_pipeline(stage1, StageOneOrder(), ds, base.eval)
    base.ranker.run = str(runs["dare"])
    stage1, ranker, ds = build_pipeline(base)
    ranked = run_pipeline(stage1, ranker, ds, base.eval)
    assert torch.equal(ranked.candidates, exact.candidates) and not torch.equal(ranked.final, exact.final)
    assert all(set(f.tolist()) <= set(c.tolist()) for f, c in zip(ranked.final, ranked.candidates))
    base.ranker.run = None
    base.retrieval.index.kind = "hnsw"
    stage1, _, ds = build_pipeline(base)
    approx = run_pipeline(stage1, StageOneOrder(), ds, base.eval)
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 30 for a, b in zip(approx.candidates, exact.candidates)])
    assert overlap > 0.95


def test_train_data_option_points_at_the_sequences_of_a_retrieval_config(tmp_path):
    """``recsys-emb train --data DIR`` sets data.sequence.path when the graph / two-tower config reads sequences
    (setting data.path there would be silently ignored)."""
    from recsys_emb.cli import _data_path_key

    assert _data_path_key(Path("configs/beauty_two_tower.yaml")) == "data.sequence.path"
    assert _data_path_key(Path("configs/ml1m_two_tower_tiny.yaml")) == "data.path"
    assert _data_path_key(Path("configs/amazon_beauty_din.yaml")) == "data.path"


def test_without_a_ranker_knn_embed_shows_its_own_budget_k_list(ds):
    """No ranker: kNN-Embed's final list is kNN-Embed run with budget K (its clusters share K), not the first K of
    its N candidates; the candidate metrics are of all N."""
    user, item = _random_embeddings(ds, seed=2)
    cfg = StageOneConfig(method="knn_embed", candidates=40)
    cfg.knn_embed.num_clusters = 4
    stage1 = StageOne(cfg, user, item, _history(ds), torch.from_numpy(ds.popularity))
    ev = PipelineEvalConfig(k=10, max_users=50, latency_users=0)
    result = run_pipeline(stage1, StageOneOrder(), ds, ev)
    users = torch.from_numpy(result.users)
    direct = stage1.knn.retrieve_users(users, user[users], 10, seen_before(ds, result.users, "test")).ids
    assert torch.equal(result.final, direct) and result.candidates.shape == (50, 40)
    assert not torch.equal(result.final, result.candidates[:, :10])
    assert set(result.per_user) >= {"candidates/recall@40", "candidates/clusters@40", "stage1/ild@10", "final/categories@10"}
