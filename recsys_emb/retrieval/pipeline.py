"""Retrieve, then rank: stage-1 candidates (single-vector or kNN-Embed) ordered by a trained ranker (DIN / two-stage).

``recsys-emb recommend --config CFG`` (docs/techniques/retrieve_rank.md). Shape glossary: B evaluated
users, N candidates per user (stage 1), K recommended items per user (the final list), D embedding dim.

* **One vocabulary.** Both stages are runs of ``recsys-emb train`` on the SAME behaviour sequences: the
  ranker a ``task: sequence`` run, the retrieval model a ``task: graph`` / ``two_tower`` run with
  ``data.sequence`` (the sequences as a graph in their ids, :meth:`SequenceDataset.to_graph`). Each run
  writes ``vocabulary.json`` (:meth:`SequenceDataset.vocabulary`: the id maps and their sha256); two runs
  whose fingerprints differ are refused naming both (:func:`check_same_vocabulary`).
* **Stage 1** (:class:`StageOne`): the retrieval run's final ``embeddings.pt``, an item index (exact or
  FAISS, :mod:`recsys_emb.retrieval.index`) and single-vector top-N or kNN-Embed's mixture retrieval
  (:mod:`recsys_emb.retrieval.knn_embed`, budget N). Items of the user's sequence before the evaluated
  target and the reserved ids 0 / 1 are never candidates.
* **Stage 2** (:class:`SequenceRanker`): the ranker scores each candidate as the target of the user's
  history (its most recent ``max_history`` behaviours before the evaluated position), exactly as its
  training and evaluation examples are built; the final list is the K best by that score (ties: stage-1
  order). With :class:`StageOneOrder` (no ranker) the final list is stage 1's own top K: the first K of
  the single-vector top N, or kNN-Embed run with budget K (which spreads K, not N, over the clusters).
* **Evaluation** (:func:`run_pipeline`, :func:`list_metrics`): leave-last-out next item of every evaluated
  user (``test``: the last one, ``valid``: the one before). Per user, for the N candidates
  (``candidates/``: recall@N is the ceiling of stage 2), stage 1's own top K (``stage1/``) and the final
  list (``final/``): recall and NDCG, diversity (distinct kNN-Embed item clusters, distinct item
  categories, intra-list distance). Differences between pipelines are tested with a paired bootstrap
  over users (:func:`paired_bootstrap`).
* **Hard negatives**: :func:`hard_negative_pool` gives every user the top items of a retrieval run
  (none of the user's sequence); ``data.hard_negatives`` of a sequence experiment trains the ranker on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_emb.console import known_warnings, tqdm
from recsys_emb.retrieval.index import Csr, IndexConfig, build_index
from recsys_emb.retrieval.knn_embed import KnnEmbed, KnnEmbedConfig, kmeans_items
from recsys_emb.train.ranking_metrics import recall_ndcg
from recsys_emb.utils import atomic_save_json, atomic_write_text, log

METHODS = ("single", "knn_embed")


# --------------------------------------------------------------------------------------------- config
@dataclass
class StageOneConfig:
    """Stage 1: which retrieval run, how candidates are generated, how many."""

    run: str = ""  # a `task: graph | two_tower` run trained with data.sequence (embeddings.pt + vocabulary.json)
    method: str = "single"  # single (top-N by the user vector) | knn_embed (mixture over item clusters)
    candidates: int = 100  # N per user
    index: IndexConfig = field(default_factory=lambda: IndexConfig(kind="exact"))
    knn_embed: KnnEmbedConfig = field(default_factory=KnnEmbedConfig)  # also the clustering of the diversity metrics

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"retrieval.method {self.method!r} is not one of {list(METHODS)}")
        if self.candidates < 1:
            raise ValueError(f"retrieval.candidates must be >= 1, got {self.candidates}")


@dataclass
class RankerConfig:
    """Stage 2: a trained sequence ranker, or none (the stage-1 order is final)."""

    run: str | None = None  # a `task: sequence` run (DIN / two-stage, any table spec) on the same sequences
    batch_size: int = 8192  # (user, candidate) rows scored at once


@dataclass
class PipelineEvalConfig:
    """What is evaluated and how."""

    split: str = "test"  # test (last item) | valid (the one before; the history then ends before it)
    k: int = 20  # length of the final list
    max_users: int = 0  # a seeded random subset of the users (0 = all)
    seed: int = 0  # of that subset
    latency_users: int = 100  # users run one at a time to time each stage (0 = not timed)

    def __post_init__(self) -> None:
        if self.split not in ("test", "valid"):
            raise ValueError(f"eval.split {self.split!r} is not one of ['test', 'valid']")
        if self.k < 1 or self.max_users < 0 or self.latency_users < 0:
            raise ValueError("eval.k must be >= 1, eval.max_users and eval.latency_users >= 0")


@dataclass
class RecommendConfig:
    """A retrieve-then-rank experiment (configs/retrieve_rank_beauty.yaml)."""

    name: str = "recommend"
    retrieval: StageOneConfig = field(default_factory=StageOneConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    threads: int = 1  # torch threads (the latency figures are per thread)
    show_progress: bool = True


# ----------------------------------------------------------------------------------------- vocabulary
def read_vocabulary(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/vocabulary.json``; missing = the run was not trained on behaviour sequences."""
    from recsys_emb.train.tasks.graph import VOCABULARY_FILE

    path = Path(run_dir) / VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a run trained on behaviour sequences (a `task: sequence` "
                                "run, or a graph / two-tower run with data.sequence), so its ids cannot be matched")
    return json.loads(path.read_text())


def check_same_vocabulary(a: tuple[str, dict[str, Any]], b: tuple[str, dict[str, Any]]) -> None:
    """Refuse two (name, vocabulary) whose user/item id maps differ, naming both."""
    (name_a, va), (name_b, vb) = a, b
    if va.get("fingerprint") != vb.get("fingerprint"):
        def describe(v: dict[str, Any]) -> str:
            return f"{v.get('dataset')} at {v.get('source')}: {v.get('users')} users, {v.get('items')} item ids, fingerprint {str(v.get('fingerprint'))[:12]}"

        raise ValueError(f"the two stages use different vocabularies, so their user / item ids do not match:\n"
                         f"  {name_a}: {describe(va)}\n  {name_b}: {describe(vb)}\n"
                         "train both on the same sequences (same data section: dataset, path, max_users, holdout)")


def load_stage_one_run(run_dir: str | Path) -> tuple[Tensor, Tensor, dict[str, Any], Any]:
    """``(user (U, D), item (I, D), vocabulary, data config)`` of a retrieval run trained with ``data.sequence``."""
    from recsys_emb.train.tasks import load_experiment
    from recsys_emb.train.tasks.graph import load_graph_embeddings

    run_dir = Path(run_dir)
    vocab = read_vocabulary(run_dir)
    cfg = load_experiment(run_dir / "config.yaml")
    if getattr(cfg, "task", None) not in ("graph", "two_tower"):
        raise ValueError(f"{run_dir}: a retrieval stage must be a graph or two_tower run, this one is task {cfg.task!r}")
    user, item = load_graph_embeddings(run_dir)
    if user.shape[0] != vocab["users"] or item.shape[0] != vocab["items"]:
        raise ValueError(f"{run_dir}: embeddings.pt has {user.shape[0]} users / {item.shape[0]} items, vocabulary.json "
                         f"{vocab['users']} / {vocab['items']}")
    return user.float(), item.float(), vocab, cfg.data.sequence


# ------------------------------------------------------------------------------------ exclusions etc.
def seen_before(ds: Any, users: np.ndarray, split: str) -> Csr:
    """Per user, the items never recommended when evaluating ``split``: the reserved ids 0 / 1 and every
    item of the sequence before the target (test: training items + the validation item)."""
    end = ds.lengths[users] - (1 if split == "test" else 2)  # exclusive end of the known prefix
    starts = ds.offsets[users]
    lens = end + 2
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int64)
    for r in range(len(users)):  # B small lists; the seen prefix is copied, not searched
        ids[offsets[r] : offsets[r] + 2] = (0, 1)
        ids[offsets[r] + 2 : offsets[r + 1]] = ds.items[starts[r] : starts[r] + end[r]]
    return Csr(torch.from_numpy(offsets), torch.from_numpy(ids))


def target_items(ds: Any, users: np.ndarray, split: str) -> np.ndarray:
    """(B,) the encoded next item of every user (OOV = 1 when never seen in training)."""
    pos = ds.lengths[users] - (1 if split == "test" else 2)
    return ds.items[ds.offsets[users] + pos]


def hard_negative_pool(ds: Any, run_dir: str | Path, size: int, chunk: int = 2048) -> np.ndarray:
    """(U, size) the best-scored items of a retrieval run per user, none of them in the user's sequence
    (-1 pads users with fewer eligible items); the run must share ``ds``'s vocabulary."""
    user, item, vocab, _ = load_stage_one_run(run_dir)
    check_same_vocabulary((str(run_dir), vocab), (f"the sequences being trained on ({ds.cfg.path})", ds.vocabulary()))
    size = min(size, ds.num_items)
    out = np.empty((ds.num_users, size), dtype=np.int64)
    keys = ds._user_item_keys  # sorted user * num_items + item of every (user, item) of the sequences
    for lo in range(0, ds.num_users, chunk):
        hi = min(lo + chunk, ds.num_users)
        scores = user[lo:hi] @ item.T  # (b, I)
        scores[:, :2] = -torch.inf
        sel = keys[(keys >= lo * ds.num_items) & (keys < hi * ds.num_items)]
        scores[torch.from_numpy(sel // ds.num_items - lo), torch.from_numpy(sel % ds.num_items)] = -torch.inf
        top = torch.topk(scores, size, dim=1)
        out[lo:hi] = torch.where(torch.isfinite(top.values), top.indices, -1).numpy()
    return out


# --------------------------------------------------------------------------------------------- stages
class StageOne:
    """Candidate generation over fixed user/item embeddings (see the module docstring)."""

    def __init__(self, cfg: StageOneConfig, user_emb: Tensor, item_emb: Tensor, history: Csr, popularity: Tensor,
                 assignments: Tensor | None = None) -> None:
        self.cfg, self.user_emb, self.item_emb = cfg, user_emb, item_emb
        kc = cfg.knn_embed
        if assignments is None:
            _, assignments = kmeans_items(item_emb, kc.num_clusters, iters=kc.kmeans_iters, spherical=kc.spherical, seed=kc.seed)
        self.assignments = assignments.long()
        if cfg.method == "single":
            self.index = build_index(item_emb, cfg.index)
        else:
            self.knn = KnnEmbed(item_emb, self.assignments, kc.num_clusters, kc, cfg.index, popularity)
            self.knn.fit_users(user_emb, history)

    def candidates(self, users: Tensor, exclude: Csr, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``(ids (B, n), scores (B, n))`` best first (n = N by default); -1 / -inf pad users with fewer eligible
        items. kNN-Embed spends the budget n over the user's clusters, so its list at n = K is not the first K of
        its list at N."""
        n = self.cfg.candidates if n is None else n
        if self.cfg.method == "single":
            res = self.index.search(self.user_emb[users], n, exclude)
        else:
            res = self.knn.retrieve_users(users, self.user_emb[users], n, exclude)
        return res.ids, res.scores


class StageOneOrder:
    """A 'ranker' that returns the stage-1 scores: the final list is stage 1's top K."""

    def score(self, users: np.ndarray, split: str, ids: Tensor, stage1: Tensor) -> Tensor:
        return stage1


class SequenceRanker:
    """A trained ``task: sequence`` model (restored unsharded, eval mode) scoring (user, candidate) rows."""

    def __init__(self, train_module: torch.nn.Module, ds: Any, batch_size: int = 8192) -> None:
        self.module, self.ds, self.batch_size = train_module.eval(), ds, batch_size

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int = 8192) -> SequenceRanker:
        from recsys_emb.inference.export import unshard

        un = unshard(run_dir)
        if un.task.name != "sequence":
            raise ValueError(f"{run_dir}: the ranker must be a `task: sequence` run, this one is task {un.task.name!r}")
        return cls(un.train_module, un.task.ds, batch_size)

    @torch.no_grad()
    def score(self, users: np.ndarray, split: str, ids: Tensor, stage1: Tensor) -> Tensor:
        """(B, N) logits of every candidate as the target at the evaluated position (-inf for padding)."""
        from recsys_emb.data.sequences import Examples

        b, n = ids.shape
        valid = ids >= 0
        rows, cols = torch.nonzero(valid, as_tuple=True)
        item = ids[rows, cols].numpy()
        user = users[rows.numpy()]
        pos = self.ds.lengths[user] - (1 if split == "test" else 2)
        ex = Examples(user, pos, item, self.ds.item_cat[item], np.zeros(len(user), dtype=np.float32))
        out = torch.full((b, n), -torch.inf)
        logits = [self.module.model(batch.sparse_features) for batch in self.ds.batches(ex, self.batch_size)]
        if logits:
            out[rows, cols] = torch.cat(logits).float()
        return out


def rank(ids: Tensor, stage1: Tensor, stage2: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The K best candidates by ``stage2`` (stable: ties keep the stage-1 order); returns their ids, stage-1
    and stage-2 scores (B, K), padded with -1 / -inf."""
    order = torch.sort(stage2, dim=1, descending=True, stable=True).indices[:, :k]
    top_ids, s1, s2 = ids.gather(1, order), stage1.gather(1, order), stage2.gather(1, order)
    pad = k - top_ids.shape[1]
    if pad > 0:
        top_ids = torch.nn.functional.pad(top_ids, (0, pad), value=-1)
        s1, s2 = (torch.nn.functional.pad(x, (0, pad), value=-torch.inf) for x in (s1, s2))
    return top_ids, s1, s2


# ------------------------------------------------------------------------------------------- metrics
def list_metrics(ids: Tensor, target: np.ndarray, k: int, assignments: Tensor, item_cat: np.ndarray,
                 item_emb: Tensor) -> dict[str, np.ndarray]:
    """Per user (B,): recall@K, NDCG@K (one held-out item: recall = hit), distinct clusters / categories
    and intra-list distance (1 - mean pairwise cosine) of the top K of ``ids`` (-1 pads ignored)."""
    top = ids[:, :k]
    ok = top >= 0
    safe = top.clamp_min(0)
    hits = ((top == torch.from_numpy(target).unsqueeze(1)) & ok).float()
    m = recall_ndcg(hits, torch.ones(len(target)), [k])
    distinct_clusters = torch.tensor([len(set(assignments[r[o]].tolist())) for r, o in zip(safe, ok)], dtype=torch.float32)
    cats = torch.from_numpy(item_cat)[safe]
    distinct_cats = torch.tensor([len(set(c[o & (c > 0)].tolist())) for c, o in zip(cats, ok)], dtype=torch.float32)
    unit = torch.nn.functional.normalize(item_emb.float(), dim=1)[safe] * ok.unsqueeze(2)
    s, n = unit.sum(1), ok.sum(1).float()
    pair = ((s * s).sum(1) - n) / (n * (n - 1)).clamp_min(1.0)
    ild = torch.where(n > 1, 1.0 - pair, torch.zeros_like(pair))
    return {f"recall@{k}": m[f"recall@{k}"].numpy(), f"ndcg@{k}": m[f"ndcg@{k}"].numpy(),
            f"clusters@{k}": distinct_clusters.numpy(), f"categories@{k}": distinct_cats.numpy(), f"ild@{k}": ild.numpy()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over users and its percentile bootstrap interval (users resampled with replacement,
    the same resample for both sides: the pairing is kept)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D arrays of per-user values, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for s in range(samples):  # one resample at a time: O(len(d)) memory
        means[s] = d[rng.integers(0, len(d), len(d))].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "samples": samples, "users": len(d)}


# -------------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineResult:
    users: np.ndarray  # (B,) evaluated user indices
    candidates: Tensor  # (B, N) stage-1 ids
    final: Tensor  # (B, K) final ids
    stage1_scores: Tensor  # (B, K) of the final items
    stage2_scores: Tensor  # (B, K)
    per_user: dict[str, np.ndarray]  # "<candidates|stage1|final>/<metric>@<N|K>" -> (B,)
    latency_ms: dict[str, dict[str, float]]  # stage -> {mean, p50, p99} per user, one thread


def evaluation_users(ds: Any, cfg: PipelineEvalConfig) -> np.ndarray:
    users = np.arange(ds.num_users)
    if cfg.max_users and cfg.max_users < len(users):
        users = np.sort(np.random.default_rng(cfg.seed).permutation(len(users))[: cfg.max_users])
    return users


def recommend_users(stage1: StageOne, ranker: Any, ds: Any, users: np.ndarray, split: str,
                    k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One pass for ``users``: ``(candidates (B, N), stage-1 list (B, K), final (B, K), its stage-1 and stage-2
    scores (B, K))``. The stage-1 list is what stage 1 alone shows (its top K; kNN-Embed with budget K). Without a
    ranker (:class:`StageOneOrder`) it is the final list."""
    exclude = seen_before(ds, users, split)
    ids, s1 = stage1.candidates(torch.from_numpy(users), exclude)
    alone, alone_scores = stage1.candidates(torch.from_numpy(users), exclude, k) if stage1.cfg.method != "single" \
        else (ids[:, :k], s1[:, :k])  # single-vector: the top K is the first K of the top N
    if isinstance(ranker, StageOneOrder):
        return ids, alone, alone, alone_scores, alone_scores
    final, t1, t2 = rank(ids, s1, ranker.score(users, split, ids, s1), k)
    return ids, alone, final, t1, t2


def run_pipeline(stage1: StageOne, ranker: Any, ds: Any, cfg: PipelineEvalConfig, chunk: int = 512,
                 progress: bool = False) -> PipelineResult:
    """Stage 1 + stage 2 for the evaluated users (in chunks), their per-user metrics and latency."""
    users = evaluation_users(ds, cfg)
    k, split = cfg.k, cfg.split
    parts: list[tuple[Tensor, ...]] = []
    for lo in tqdm(range(0, len(users), chunk), desc="recommend", disable=not progress, file=sys.stderr, leave=False):
        parts.append(recommend_users(stage1, ranker, ds, users[lo : lo + chunk], split, k))
    cand, alone, final, s1, s2 = (torch.cat(column) for column in zip(*parts))
    target = target_items(ds, users, split)
    per_user: dict[str, np.ndarray] = {}
    for stage, ids, cut in (("candidates", cand, cand.shape[1]), ("stage1", alone, k), ("final", final, k)):
        for key, v in list_metrics(ids, target, cut, stage1.assignments, ds.item_cat, stage1.item_emb).items():
            per_user[f"{stage}/{key}"] = v
    return PipelineResult(users, cand, final, s1, s2, per_user, time_per_user(stage1, ranker, ds, users, cfg))


def time_per_user(stage1: StageOne, ranker: Any, ds: Any, users: np.ndarray, cfg: PipelineEvalConfig) -> dict[str, dict[str, float]]:
    """Per-user wall time (ms) of each stage and of the pipeline, one user per call, on the current threads
    (stage 1 = candidate generation; stage 2 = scoring and ordering the N candidates)."""
    times: dict[str, list[float]] = {"stage1": [], "stage2": [], "pipeline": []}
    for u in users[: cfg.latency_users]:
        one = np.array([u])
        t0 = time.perf_counter()
        ids, s1 = stage1.candidates(torch.from_numpy(one), seen_before(ds, one, cfg.split))
        t1 = time.perf_counter()
        rank(ids, s1, ranker.score(one, cfg.split, ids, s1), cfg.k)
        t2 = time.perf_counter()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t2 - t0)):
            times[key].append(1000.0 * seconds)
    return {key: {"mean": float(np.mean(v)), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                  "users": len(v)} for key, v in times.items() if v}


def summarize(result: PipelineResult) -> dict[str, float]:
    return {key: float(v.mean()) for key, v in result.per_user.items()}


def write_recommendations(path: str | Path, result: PipelineResult, ds: Any) -> None:
    """``user item rank stage1_score stage2_score`` per line (raw user / item ids of the data set), atomically."""
    from recsys_emb.data.sequences import FIRST_ID

    lines = ["user\titem\trank\tstage1_score\tstage2_score"]
    for r, u in enumerate(result.users):
        for j in range(result.final.shape[1]):
            i = int(result.final[r, j])
            if i < FIRST_ID:
                continue
            lines.append(f"{int(ds.raw_users[u])}\t{int(ds.item_raw_ids[i - FIRST_ID])}\t{j + 1}\t"
                         f"{float(result.stage1_scores[r, j]):.6g}\t{float(result.stage2_scores[r, j]):.6g}")
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------- build + CLI
def build_pipeline(cfg: RecommendConfig) -> tuple[StageOne, Any, Any]:
    """``(stage 1, ranker, data set)`` of a config: both runs loaded, their vocabularies checked."""
    from recsys_emb.data.cold_start import make_sequence_dataset

    if not cfg.retrieval.run:
        raise ValueError("retrieval.run is empty: set it to a graph / two-tower run trained with data.sequence")
    user, item, vocab, data_cfg = load_stage_one_run(cfg.retrieval.run)
    if cfg.ranker.run:
        check_same_vocabulary((f"retrieval run {cfg.retrieval.run}", vocab), (f"ranker run {cfg.ranker.run}", read_vocabulary(cfg.ranker.run)))
        ranker: Any = SequenceRanker.load(cfg.ranker.run, cfg.ranker.batch_size)
        ds = ranker.ds
    else:
        ranker, ds = StageOneOrder(), make_sequence_dataset(data_cfg)
    check_same_vocabulary((f"retrieval run {cfg.retrieval.run}", vocab), (f"its data now ({data_cfg.path})", ds.vocabulary()))
    indptr, items = ds.split_items("train")
    history = Csr(torch.from_numpy(indptr), torch.from_numpy(items))
    stage1 = StageOne(cfg.retrieval, user, item, history, torch.from_numpy(ds.popularity))
    return stage1, ranker, ds


@known_warnings("forward", "sharded_tensor")
def recommend(cfg: RecommendConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the pipeline; writes ``recommendations.tsv``, ``per_user.npz`` and ``metrics.json`` to ``run_dir``."""
    from recsys_emb.config.io import save_config

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        stage1, ranker, ds = build_pipeline(cfg)
        result = run_pipeline(stage1, ranker, ds, cfg.eval, progress=cfg.show_progress)
    finally:
        torch.set_num_threads(previous)
    write_recommendations(run_dir / "recommendations.tsv", result, ds)
    np.savez(run_dir / "per_user.npz", users=result.users, **{k.replace("/", "__"): v for k, v in result.per_user.items()})
    metrics = {"name": cfg.name, "split": cfg.eval.split, "users": len(result.users), "k": cfg.eval.k,
               "candidates": cfg.retrieval.candidates, "method": cfg.retrieval.method, "ranker": cfg.ranker.run,
               "retrieval": cfg.retrieval.run, "metrics": summarize(result), "latency_ms": result.latency_ms,
               "threads": cfg.threads}
    atomic_save_json(run_dir / "metrics.json", metrics)
    log(f"[recommend] {len(result.users)} users -> {run_dir / 'recommendations.tsv'}")
    return metrics


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="pipeline YAML (e.g. configs/retrieve_rank_beauty.yaml)")
    parser.add_argument("--retrieval-run", help="stage-1 run folder (overrides retrieval.run)")
    parser.add_argument("--ranker-run", help="stage-2 run folder (overrides ranker.run; 'none' = no ranker)")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value with a dotted key, e.g. --set retrieval.candidates=500")


def run_recommend(args: argparse.Namespace) -> int:
    """Entry point of ``recsys-emb recommend``; prints the metrics as one JSON line."""
    from recsys_emb.config.io import load_config

    overrides = list(args.overrides)
    if args.retrieval_run:
        overrides.append(f"retrieval.run={args.retrieval_run}")
    if args.ranker_run:
        overrides.append("ranker.run=null" if args.ranker_run == "none" else f"ranker.run={args.ranker_run}")
    cfg = load_config(RecommendConfig, args.config, overrides)
    run_dir = args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = recommend(cfg, run_dir)
    print(json.dumps({k: metrics[k] for k in ("name", "users", "metrics", "latency_ms")}))
    return 0


__all__ = ["RecommendConfig", "StageOne", "StageOneOrder", "SequenceRanker", "check_same_vocabulary", "hard_negative_pool",
           "paired_bootstrap", "rank", "recommend", "run_pipeline"]
