"""Benchmark: single-vector retrieval (exact, FAISS HNSW, FAISS IVF-Flat) vs kNN-Embed at equal K.

For each data set (Gowalla and the ML-1M graph, their test splits; training items, and ML-1M's
validation items, excluded) and each seed, this reports recall@{20,50,100}, NDCG, diversity
(distinct clusters, cluster entropy, intra-list distance) and speed (queries/s, ms per query
amortised over batched queries) for

* ``single[exact]``: exact inner-product top-K (torch reference),
* ``single[hnsw]``: FAISS HNSW with the config's ``index.mips_transform`` (``augment`` in the
  LightGCN configs: L2 graph on ``[x, sqrt(M^2 - |x|^2)]``), ``single[hnsw_ip]``: FAISS HNSW on
  raw inner products (``mips_transform: none``), ``single[ivf_flat]``: FAISS IVF-Flat,
* ``knn_embed[exact]``: kNN-Embed with exact per-cluster search (``--knn-faiss`` adds
  ``knn_embed[hnsw]``, per-cluster HNSW indexes).

Base model (``--base``): ``lightgcn`` (default; ``configs/retrieval_<ds>_lightgcn.yaml``),
``mf`` (BPR-MF = LightGCN with 0 layers, same config) or ``two_tower`` (in-batch softmax,
``configs/retrieval_<ds>.yaml``). Every seed trains its own base model (``base`` seed = the seed)
and runs its own k-means and IVF quantizer (seed = the seed); ``--embeddings DATASET=FILE`` skips
training and reuses one embedding file for all seeds.

Tuning (``--tune``, on validation data only): before the test runs, for each data set the base
model is trained with seed ``seeds[0]`` on the validation configuration (``eval.split: valid``:
ML-1M's ``valid.txt``; Gowalla has none, so 10 % of every user's training items are held out) and
kNN-Embed's C, lambda and k are chosen on a grid (K = 100, exact search) and the test runs use the
chosen values. ``--select recall`` (default) takes the highest validation recall@100;
``--select constrained`` takes the highest validation recall@100 among the grid points whose
validation lists have strictly more distinct clusters@100 *and* higher cluster entropy@100 than the
single-vector (exact) lists, i.e. the issue's goal imposed on validation; when no point qualifies it
says so and falls back to ``recall``. The grid rows are cached (``--work-dir``) and a later
invocation only computes the missing points, so a large grid can be split over several runs (e.g.
one ``--grid`` per C). When the validation configuration trains on exactly the
test configuration's training data (ML-1M), the tuning model is reused for the test seed
``seeds[0]`` (its training never saw validation or test items).

Usage::

    python benchmarks/knn_embed.py --datasets ml1m gowalla --seeds 0 1 2 --base lightgcn --tune \\
        [--max-users 5000] [--set-ds gowalla:eval.max_users=10000] [--out benchmarks/results]

Long runs can be split into several invocations (one seed each): ``--merge`` keeps the runs of other
(data set, seed) pairs already in the output JSON, and the base-model trainings and the tuning
result are cached under ``--work-dir`` (reused when the same data set, base model, training split
and seed come again with the same base-model settings; a cache trained with other settings is an
error naming the differences, not silently reused; ``--no-reuse`` retrains).

``--train-only`` trains (or finds cached) the base models of the given seeds and stops, so that a
long training and the evaluation can be separate invocations. ``--per-user`` adds a per-user
comparison of kNN-Embed (exact) with single-vector (exact) recall@100, binned by history size and by
the number of distinct clusters in the user's training history.

Writes ``knn_embed.json`` (every run, the tuning grid) and ``knn_embed.md`` (mean ± std over seeds
and per-seed recall@100). With ``--merge`` the output JSON is read again just before writing, so
invocations for *different* data sets may run at the same time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.retrieval.data import InteractionData  # noqa: E402
from recsys_emb.retrieval.driver import (  # noqa: E402
    RetrieveConfig, base_embeddings, base_section, evaluate_methods, evaluation_users, load_data, load_embeddings, set_base_seed)
from recsys_emb.retrieval.evaluate import _hits, diversity_metrics, ranking_metrics  # noqa: E402
from recsys_emb.retrieval.index import IndexConfig, build_index  # noqa: E402
from recsys_emb.retrieval.knn_embed import KnnEmbed, _select_csr, cluster_counts  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

CONFIGS = {("gowalla", "two_tower"): "configs/retrieval_gowalla.yaml",
           ("ml1m", "two_tower"): "configs/retrieval_ml1m.yaml",
           ("gowalla", "graph"): "configs/retrieval_gowalla_lightgcn.yaml",
           ("ml1m", "graph"): "configs/retrieval_ml1m_lightgcn.yaml"}
SHOW = ["recall@20", "recall@50", "recall@100", "ndcg@100", "clusters@100", "entropy@100", "ild@100",
        "overlap@100", "queries_per_second", "ms_per_query"]
GRID = {"num_clusters": [4, 8, 16, 32, 64], "smoothing_lambda": [0.0, 0.5, 0.9], "num_neighbors": [10, 50]}
SELECT_MODES = ("recall", "constrained")
TUNED = ["num_clusters", "smoothing_lambda", "num_neighbors"]  # the kNN-Embed settings the grid varies


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["ml1m", "gowalla"], choices=["gowalla", "ml1m"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--base", default="lightgcn", choices=["lightgcn", "mf", "two_tower"], help="base model")
    p.add_argument("--embeddings", nargs="*", default=[], metavar="DATASET=FILE", help="reuse base embeddings")
    p.add_argument("--tune", action="store_true", help="choose C, lambda, k on validation data first")
    p.add_argument("--grid", default=json.dumps(GRID), help="tuning grid as JSON {knn_embed field: [values]}")
    p.add_argument("--max-users", type=int, default=0, help="evaluate a seeded random subset of users (0 = all)")
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    p.add_argument("--knn-faiss", action="store_true", help="also run kNN-Embed with per-cluster HNSW indexes")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (all data sets)")
    p.add_argument("--set-ds", dest="ds_overrides", action="append", default=[], metavar="DATASET:KEY=VALUE",
                   help="config override for one data set")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "knn_embed_bench", help="base-model training files")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="knn_embed", help="output file stem")
    p.add_argument("--merge", action="store_true", help="keep other (data set, seed) runs of the output JSON")
    p.add_argument("--no-reuse", action="store_true", help="retrain base models even when cached in --work-dir")
    p.add_argument("--tune-seed", type=int, default=0, help="base-model seed of the tuning run")
    p.add_argument("--tune-max-users", type=int, default=None,
                   help="validation users of the tuning grid (default: the evaluation's max users)")
    p.add_argument("--select", default="recall", choices=list(SELECT_MODES),
                   help="tuning rule: recall = best validation recall@100; constrained = best recall@100 among "
                        "points with strictly more distinct clusters and higher entropy than single-vector")
    p.add_argument("--tune-only", action="store_true", help="run (or complete) the tuning grid and stop")
    p.add_argument("--train-only", action="store_true", help="train/cache the base models of --seeds and stop")
    p.add_argument("--per-user", action="store_true",
                   help="per-user recall@100 comparison of kNN-Embed and single-vector (binned)")
    p.add_argument("--oracle-mixture", action="store_true",
                   help="diagnostic (uses test labels, not a method): kNN-Embed's budget split by the cluster "
                        "histogram of each user's test items, and by the unsmoothed history mixture (lambda 0)")
    return p.parse_args(argv)


def make_config(ds: str, args: argparse.Namespace, extra: list[str]) -> RetrieveConfig:
    key = (ds, "two_tower" if args.base == "two_tower" else "graph")
    ds_over = [x.split(":", 1)[1] for x in args.ds_overrides if x.split(":", 1)[0] == ds]
    # order: generic flags, then --set, then --set-ds (most specific wins), then the caller's extras
    cfg = load_config(RetrieveConfig, REPO / CONFIGS[key], [
        f"base.type={args.base}", f"eval.max_users={args.max_users}", f"threads={args.threads}",
        f"index.threads={args.threads}", "show_progress=false", *args.overrides, *ds_over, *extra])
    if not Path(cfg.data.path).is_absolute():
        cfg.data.path = str((REPO / cfg.data.path).resolve())
    return cfg


RUNTIME_ONLY = {"progress", "show_progress", "num_threads", "threads", "device", "eval_batch_size", "evaluation",
                "tensorboard", "log_every_steps", "checkpoint_every_steps"}  # base-config fields that do not change the model


def base_signature(cfg: RetrieveConfig) -> dict:
    """The base-model settings a cached model must have been trained with: ``base.type`` and its
    ``two_tower`` or ``graph`` section, without run-time-only fields (progress bars, threads,
    evaluation cut-offs)."""
    def clean(x):  # noqa: ANN001, ANN202
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in RUNTIME_ONLY}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x if x is None or isinstance(x, (bool, int, float, str)) else str(x)
    section = base_section(cfg)
    return {"type": cfg.base.type, **clean(dataclasses.asdict(section))}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: cached {x!r}, asked {y!r}")
    return out


def check_base_signature(where: Path, cached: dict | None, signature: dict, what: str) -> None:
    """Refuse a cache (``what`` at ``where``) made with other base-model settings than ``signature``;
    a cache without a signature (written before they existed) is reused unchecked, with a note."""
    if cached is None:
        print(f"{where}: this {what} has no base-model signature (older cache): reused unchecked", file=sys.stderr)
    elif cached != signature:
        raise ValueError(f"{where}: this {what} was made with other base-model settings "
                         f"({'; '.join(_differences(cached, signature))}); use another --work-dir, or --no-reuse "
                         "to recompute it")


def cached_base(cfg: RetrieveConfig, data: InteractionData, ds: str, seed: int, args: argparse.Namespace) -> tuple:
    """Base embeddings for (data set, base model, training split, seed), trained once and cached.

    A cached model is reused only when it was trained with the same base settings
    (:func:`base_signature`); otherwise this raises, naming the differences, rather than evaluate a
    model of another configuration (use another ``--work-dir``, or ``--no-reuse`` to retrain over it).
    Caches written before signatures existed are reused unchecked, with a note.
    """
    split = "holdout" if "(holdout" in data.source else "train"
    work = args.work_dir / f"{ds}_{args.base}_{split}_s{seed}"
    info_path = work / "base_info.json"
    signature = base_signature(cfg)
    if not args.no_reuse and info_path.is_file() and (work / "embeddings.pt").is_file():
        info = json.loads(info_path.read_text())
        check_base_signature(work, info.get("signature"), signature, "cached base model")
        user, item = load_embeddings(work / "embeddings.pt")
        return user, item, {**info, "cached": True}
    if work.exists():
        shutil.rmtree(work)
    user, item, info = base_embeddings(cfg, data, work)
    if args.base == "two_tower":  # graph models write embeddings.pt themselves
        work.mkdir(parents=True, exist_ok=True)
        torch.save({"user": user, "item": item}, work / "embeddings.pt")
    atomic_write_text(info_path, json.dumps({**{k: v for k, v in info.items() if k != "epoch_loss"},
                                             "signature": signature}))
    return user, item, info


def _setting_key(row: dict) -> str:
    return json.dumps({f: row.get(f) for f in TUNED}, sort_keys=True)


def tune(cfg: RetrieveConfig, data: InteractionData, user: torch.Tensor, item: torch.Tensor, grid: dict,
         done: list[dict] | None = None, save=None) -> dict:  # noqa: ANN001
    """Validation recall@100 (and diversity) of kNN-Embed over the grid, exact search, K = max(eval.ks).

    ``done``: rows of an earlier (partial) run on the same validation users; their settings are not
    recomputed. ``save(result)``, when given, is called after every C (a killed run keeps its rows).
    Returns every row (old and new); the selection is :func:`select_setting`'s job.
    """
    k = max(cfg.eval.ks)
    users = evaluation_users(data, cfg.eval)
    exclude, test, q = data.exclusions(users), data.test.select(users), user[users]
    exact = build_index(item, IndexConfig(kind="exact"))
    single_ids = exact.search(q, k, exclude).ids
    icfg = IndexConfig(kind="exact", threads=cfg.index.threads)
    rows = list(done or [])
    have = {_setting_key(r) for r in rows}
    missing = [pt for pt in grid_points(grid, {f: getattr(cfg.knn_embed, f) for f in TUNED})
               if _setting_key(pt) not in have]
    t0 = time.perf_counter()
    for c in dict.fromkeys(pt["num_clusters"] for pt in missing):  # one k-means per C, in grid order
        todo = [pt for pt in missing if pt["num_clusters"] == c]
        kcfg = copy.deepcopy(cfg.knn_embed)
        kcfg.num_clusters = c
        knn = KnnEmbed.fit(item, kcfg, icfg)
        single = {**ranking_metrics(single_ids, test, [k]),
                  **diversity_metrics(single_ids, knn.assignments, c, item, [k])}
        for setting in todo:
            t1 = time.perf_counter()
            kcfg.smoothing_lambda, kcfg.num_neighbors = setting["smoothing_lambda"], setting["num_neighbors"]
            knn.config = kcfg
            knn.fit_users(user, data.train.csr, users=users)
            ids = knn.retrieve_users(users, q, k, exclude).ids
            m = {**ranking_metrics(ids, test, [k]), **diversity_metrics(ids, knn.assignments, c, item, [k])}
            rows.append({**setting, "knn_embed": m, "single": single, "seconds": time.perf_counter() - t1})
            print(f"[tune] {setting} recall@{k} {m[f'recall@{k}']:.4f} (single {single[f'recall@{k}']:.4f}) "
                  f"clusters {m[f'clusters@{k}']:.2f} vs {single[f'clusters@{k}']:.2f} "
                  f"entropy {m[f'entropy@{k}']:.3f} vs {single[f'entropy@{k}']:.3f} "
                  f"({time.perf_counter() - t1:.1f} s)", file=sys.stderr, flush=True)
        if save is not None:
            save({"users": int(users.numel()), "k": k, "grid": grid, "rows": rows})
    return {"users": int(users.numel()), "k": k, "grid": grid, "rows": rows,
            "seconds": time.perf_counter() - t0 + sum(r.get("seconds", 0.0) for r in (done or []))}


def in_grid(row: dict, grid: dict) -> bool:
    """Whether a tuning row is a point of ``grid`` (rows of other grids may be cached alongside)."""
    return all(row.get(f) in vals for f, vals in grid.items())


def select_setting(t: dict, mode: str) -> dict:
    """Pick the setting from the tuning rows of ``t['grid']``; adds ``chosen``, ``chosen_metrics`` etc. to ``t``.

    ``recall``: highest validation recall@K (ties: higher entropy). ``constrained``: the same among
    rows whose kNN-Embed lists have strictly more distinct clusters@K and higher entropy@K than the
    single-vector lists; with no such row, falls back to ``recall`` and records it.
    """
    k = t["k"]
    rows = [r for r in t["rows"] if in_grid(r, t["grid"])]

    def more_diverse(r: dict) -> bool:
        kn, si = r["knn_embed"], r["single"]
        return kn[f"clusters@{k}"] > si[f"clusters@{k}"] and kn[f"entropy@{k}"] > si[f"entropy@{k}"]

    def best(cands: list[dict]) -> dict:
        return max(cands, key=lambda r: (round(r["knn_embed"][f"recall@{k}"], 6), r["knn_embed"][f"entropy@{k}"]))

    qualifying = [r for r in rows if more_diverse(r)]
    if mode == "constrained" and qualifying:
        pick, rule = best(qualifying), "constrained"
    else:
        pick = best(rows)
        rule = "recall" if mode == "recall" else "recall (fallback: no grid point was more diverse than single-vector)"
    beat = [r for r in qualifying if r["knn_embed"][f"recall@{k}"] >= r["single"][f"recall@{k}"]]
    t.update({"select": mode, "rule_applied": rule, "chosen": {f: pick[f] for f in TUNED},
              "chosen_metrics": pick["knn_embed"], "single_metrics": pick["single"],
              "points": len(rows), "points_more_diverse": len(qualifying),
              "points_more_diverse_and_recall_ge_single": len(beat)})
    return t


def mixture_diagnostic(cfg: RetrieveConfig, data: InteractionData, user: torch.Tensor, item: torch.Tensor,
                       keep: dict) -> dict:
    """kNN-Embed (exact, same clusters) with two fixed mixtures instead of the smoothed P~(c|u).

    ``oracle_test_mixture``: P(c|u) = cluster histogram of the user's *test* items. It uses the labels
    being evaluated, so it is not a method: it bounds what any mixture estimate could do with this
    budget split and these per-cluster rankings. ``history_mle``: P(c|u) from the training items
    (lambda = 0). Both at budget K = max(eval.ks).
    """
    k = max(cfg.eval.ks)
    users, assign, c = keep["users"], keep["assignments"], cfg.knn_embed.num_clusters
    knn = KnnEmbed(item, assign, c, cfg.knn_embed, IndexConfig(kind="exact", threads=cfg.index.threads))
    q, exclude, test = user[users], data.exclusions(users), data.test.select(users)
    out: dict = {"k": k}
    for name, csr in (("oracle_test_mixture", test), ("history_mle", _select_csr(data.train.csr, users))):
        counts = cluster_counts(csr, assign, c).float()
        p = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
        ids = knn.retrieve(q, p, k, exclude).ids
        out[name] = {**ranking_metrics(ids, test, [k]), **diversity_metrics(ids, assign, c, item, [k])}
    return out


def per_user_analysis(data: InteractionData, keep: dict, num_clusters: int, k: int) -> dict:
    """Per-user recall@k of kNN-Embed (exact) minus single-vector (exact), binned.

    Bins: history size (distinct training items; quartiles of the evaluated users) and the number of
    distinct clusters among the training items. Per bin: users, mean recall of both, mean delta,
    share of users where kNN-Embed is better / worse, mean test hits gained / lost per user.
    """
    users = keep["users"]
    test = data.test.select(users)
    assign = keep["assignments"]
    n_test = (test.offsets[1:] - test.offsets[:-1]).float().clamp_min(1.0)
    hs, hk = _hits(keep["single[exact]"][:, :k], test), _hits(keep["knn_embed[exact]"][:, :k], test)
    rs, rk = hs.sum(1) / n_test, hk.sum(1) / n_test
    # test items found by only one of the two lists
    si, ki = keep["single[exact]"][:, :k], keep["knn_embed[exact]"][:, :k]
    width = int(assign.numel()) + 1
    row_key = (torch.arange(si.shape[0]) * width).unsqueeze(1)
    ks_, kk_ = si + row_key, ki + row_key
    lost = (hs & ~torch.isin(ks_, kk_[ki >= 0])).sum(1).float()
    gained = (hk & ~torch.isin(kk_, ks_[si >= 0])).sum(1).float()
    counts = cluster_counts(_select_csr(data.train.csr, users), assign, num_clusters)  # (B, C)
    hsize = counts.sum(1)
    ncl = (counts > 0).sum(1)
    # test items whose cluster has no training item of the user: reachable by kNN-Embed only through smoothing
    tcl = assign[test.ids.clamp_min(0)]
    trow = torch.repeat_interleave(torch.arange(users.numel()), test.offsets[1:] - test.offsets[:-1])
    novel = (counts[trow, tcl] == 0).float()
    novel_share = float(novel.mean()) if novel.numel() else float("nan")

    def table(key: Tensor, edges: list[int], label: str) -> list[dict]:
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (key >= lo) & (key < hi)
            n = int(m.sum())
            if n == 0:
                continue
            d = rk[m] - rs[m]
            out.append({label: f"{lo}-{hi - 1}" if hi - lo > 1 else f"{lo}", "users": n,
                        "single": float(rs[m].mean()), "knn": float(rk[m].mean()), "delta": float(d.mean()),
                        "knn_better": float((d > 0).float().mean()), "knn_worse": float((d < 0).float().mean()),
                        "hits_gained": float(gained[m].mean()), "hits_lost": float(lost[m].mean())})
        return out

    q = torch.quantile(hsize.float(), torch.tensor([0.25, 0.5, 0.75])).round().long().tolist()
    size_edges = sorted(set([int(hsize.min()), *q, int(hsize.max()) + 1]))
    cl_edges = [e for e in [1, 2, 3, 5, 9, 17, 33, 65, 129, 257] if e <= num_clusters] + [num_clusters + 1]
    cl_edges = sorted(set([int(ncl.min()), *[e for e in cl_edges if e > int(ncl.min())]]))
    return {"k": k, "users": int(users.numel()), "delta_mean": float((rk - rs).mean()),
            "knn_better": float((rk > rs).float().mean()), "knn_worse": float((rk < rs).float().mean()),
            "hits_gained_total": int(gained.sum()), "hits_lost_total": int(lost.sum()),
            "test_items_in_clusters_outside_history": novel_share,
            "by_history_size": table(hsize, size_edges, "history"),
            "by_history_clusters": table(ncl, cl_edges, "clusters")}


def aggregate(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in runs[0]["methods"]:
        out[name] = {}
        for key in runs[0]["methods"][name]:
            vals = [r["methods"][name][key] for r in runs if r["methods"][name].get(key) is not None]
            if vals and all(isinstance(v, (int, float)) for v in vals):
                out[name][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def goal_check(runs: list[dict]) -> dict:
    """Per seed: kNN-Embed (exact) recall@100 >= single (exact) and strictly more distinct clusters / entropy."""
    per_seed = []
    for r in runs:
        s, kn = r["methods"]["single[exact]"], r["methods"]["knn_embed[exact]"]
        per_seed.append({"seed": r["seed"], "single_recall@100": s["recall@100"], "knn_recall@100": kn["recall@100"],
                         "delta_recall@100": kn["recall@100"] - s["recall@100"],
                         "single_clusters@100": s["clusters@100"], "knn_clusters@100": kn["clusters@100"],
                         "single_entropy@100": s["entropy@100"], "knn_entropy@100": kn["entropy@100"],
                         "holds": kn["recall@100"] >= s["recall@100"] and kn["clusters@100"] > s["clusters@100"]
                         and kn["entropy@100"] > s["entropy@100"]})
    deltas = [p["delta_recall@100"] for p in per_seed]
    return {"per_seed": per_seed, "holds_all_seeds": all(p["holds"] for p in per_seed),
            "delta_mean": statistics.mean(deltas), "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0}


def _fmt(key: str, mu: float, sd: float) -> str:
    fmt = ".1f" if key == "queries_per_second" else (".3f" if key == "ms_per_query" else ".4f")
    return f"{mu:{fmt}} ± {sd:{fmt}}"


def per_user_markdown(runs: list[dict]) -> list[str]:
    """Per-user tables (kNN-Embed exact minus single exact), pooled over the seeds that have them."""
    have = [r for r in runs if "per_user" in r]
    if not have:
        return []
    k = have[0]["per_user"]["k"]
    lines = [f"Per user (recall@{k}, kNN-Embed exact minus single-vector exact; mean over seeds "
             f"{[r['seed'] for r in have]} of the per-bin means; bins of seed {have[0]['seed']}'s users): "
             + "; ".join(f"seed {r['seed']}: better for {r['per_user']['knn_better']:.1%}, worse for "
                         f"{r['per_user']['knn_worse']:.1%} of users, test hits gained {r['per_user']['hits_gained_total']}"
                         f" / lost {r['per_user']['hits_lost_total']}, "
                         f"{r['per_user']['test_items_in_clusters_outside_history']:.1%} of test items in clusters "
                         f"outside the user's history" for r in have) + ".", ""]
    for key, label in (("by_history_size", "history"), ("by_history_clusters", "clusters")):
        title = "training items" if label == "history" else "distinct clusters in the training history"
        lines += [f"| {title} | users | single | kNN-Embed | delta | kNN better | kNN worse | hits gained / user | hits lost / user |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, row in enumerate(have[0]["per_user"][key]):
            same = [r["per_user"][key][i] for r in have if len(r["per_user"][key]) > i
                    and r["per_user"][key][i][label] == row[label]]
            def mu(f: str) -> float:
                return statistics.mean(x[f] for x in same)
            lines.append(f"| {row[label]} | {row['users']} | {mu('single'):.4f} | {mu('knn'):.4f} | {mu('delta'):+.4f} | "
                         f"{mu('knn_better'):.1%} | {mu('knn_worse'):.1%} | {mu('hits_gained'):.3f} | {mu('hits_lost'):.3f} |")
        lines.append("")
    return lines


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = ["# kNN-Embed vs single-vector retrieval", "",
             "Commands (one invocation per data set and seed; OMP_NUM_THREADS=1):", ""]
    for ds, res in results.items():
        for r in res["runs"]:
            lines.append(f"- {ds} seed {r['seed']}: `python benchmarks/knn_embed.py {shlex.join(r.get('argv', []))}`")
    lines += ["",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); the 2-core "
             "machine was shared with other jobs, so absolute timings are noisy (compare methods within a run).", "",
             "Mean ± std over seeds (each seed: its own base-model training, k-means and IVF quantizer); K = 100 "
             "retrieved per user, training (and ML-1M validation) items excluded; kNN-Embed is run with budget "
             "K = 20, 50 and 100 separately for the @20/@50/@100 metrics. `overlap@100`: share of the exact "
             "single-vector top-100 that the method returns. Speed: batched queries (1024 per batch), "
             "ms/query = wall time / users, index build excluded.", ""]
    for ds, res in results.items():
        lines += [f"## {ds} ({res['users']} test users, {res['num_items']} items, seeds {res['seeds']})", "",
                  f"Base model: `{json.dumps(res['base'])}`", "",
                  f"kNN-Embed settings: `{json.dumps(res['knn_embed_config'])}`", ""]
        if "tuning" in res:
            t = res["tuning"]
            k = t.get("k", 100)
            cm, sm = t["chosen_metrics"], t["single_metrics"]
            lines += [f"Tuned on validation ({t['users']} users, {t['split_info']}), selection "
                      f"`{t.get('select', 'recall')}` (rule applied: {t.get('rule_applied', 'recall')}): chosen "
                      f"{t['chosen']} with validation recall@{k} {cm[f'recall@{k}']:.4f} vs single-vector "
                      f"{sm[f'recall@{k}']:.4f}, clusters@{k} {cm[f'clusters@{k}']:.2f} vs {sm[f'clusters@{k}']:.2f}, "
                      f"entropy@{k} {cm[f'entropy@{k}']:.3f} vs {sm[f'entropy@{k}']:.3f}; grid {t['grid']} "
                      f"({t.get('points', '?')} points, {t.get('points_more_diverse', '?')} more diverse than "
                      f"single-vector on both measures, {t.get('points_more_diverse_and_recall_ge_single', '?')} of "
                      f"them also with recall@{k} >= single-vector).", ""]
        lines += ["| method | " + " | ".join(SHOW) + " |", "|---|" + "---|" * len(SHOW)]
        for name, vals in res["aggregate"].items():
            cells = [_fmt(key, *vals[key]) if key in vals else "-" for key in SHOW]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        g = res["goal"]
        lines += ["", "Goal (kNN-Embed exact vs single exact: recall@100 >= and strictly more clusters and entropy), per seed:", "",
                  "| seed | single recall@100 | kNN-Embed recall@100 | delta | clusters single / kNN | entropy single / kNN | holds |",
                  "|---|---|---|---|---|---|---|"]
        for p in g["per_seed"]:
            lines.append(f"| {p['seed']} | {p['single_recall@100']:.4f} | {p['knn_recall@100']:.4f} | "
                         f"{p['delta_recall@100']:+.4f} | {p['single_clusters@100']:.2f} / {p['knn_clusters@100']:.2f} | "
                         f"{p['single_entropy@100']:.3f} / {p['knn_entropy@100']:.3f} | {'yes' if p['holds'] else 'NO'} |")
        lines += ["", f"Delta recall@100 mean {g['delta_mean']:+.4f} ± {g['delta_std']:.4f}; goal holds on every seed: "
                  f"**{'yes' if g['holds_all_seeds'] else 'no'}**.", ""]
        diag = [r for r in res["runs"] if "mixture_diagnostic" in r]
        if diag:
            def mu(key: str, metric: str) -> str:
                vals = [r["mixture_diagnostic"][key][metric] for r in diag]
                return f"{statistics.mean(vals):.4f}" if "recall" in metric else f"{statistics.mean(vals):.2f}"
            single = statistics.mean(r["methods"]["single[exact]"]["recall@100"] for r in diag)
            lines += [f"Mixture diagnostic (seeds {[r['seed'] for r in diag]}, exact, K = 100; not a method: the "
                      f"oracle uses the test labels): budget split by the cluster histogram of each user's *test* "
                      f"items: recall@100 {mu('oracle_test_mixture', 'recall@100')} (clusters "
                      f"{mu('oracle_test_mixture', 'clusters@100')}); by the unsmoothed history mixture (λ = 0): "
                      f"{mu('history_mle', 'recall@100')} (clusters {mu('history_mle', 'clusters@100')}); "
                      f"single-vector {single:.4f}.", ""]
        lines += per_user_markdown(res["runs"])
    return "\n".join(lines) + "\n"


def grid_points(grid: dict, defaults: dict) -> list[dict]:
    """Every (C, lambda, k) point of ``grid`` (missing fields: ``defaults``); lambda = 0 once per C (first k)."""
    vals = [grid.get(f, [defaults[f]]) for f in TUNED]
    return [dict(zip(TUNED, v)) for v in itertools.product(*vals) if not (v[1] == 0.0 and v[2] != vals[2][0])]


def run_tuning(ds: str, args: argparse.Namespace, grid: dict, given: dict) -> dict:
    """Tuning rows for ``grid`` (cached rows reused, missing points computed), then the selection."""
    tune_path = args.work_dir / f"{ds}_{args.base}_tuning.json"
    tcfg = make_config(ds, args, ["eval.split=valid", "eval.seed=0",
                                  *([f"eval.max_users={args.tune_max_users}"] if args.tune_max_users else [])])
    set_base_seed(tcfg, args.tune_seed)
    cached = json.loads(tune_path.read_text()) if not args.no_reuse and tune_path.is_file() else None
    if cached is not None and (cached.get("max_users") != tcfg.eval.max_users or cached.get("tune_seed", 0) != args.tune_seed):
        print(f"[{ds}] cached tuning rows are for other validation users: recomputed", file=sys.stderr)
        cached = None
    signature = base_signature(tcfg)
    if cached is not None:
        check_base_signature(tune_path, cached.get("base_signature"), signature, "tuning cache")
    rows = cached["rows"] if cached else []
    have = {_setting_key(r) for r in rows}
    defaults = {f: getattr(tcfg.knn_embed, f) for f in TUNED}
    missing = [pt for pt in grid_points(grid, defaults) if _setting_key(pt) not in have]
    if cached is None or missing:
        vdata = load_data(tcfg)
        if ds in given:
            user, item = load_embeddings(given[ds])
            info = {"source": given[ds]}
        else:
            user, item, info = cached_base(tcfg, vdata, ds, args.tune_seed, args)
        extra = {"split_info": vdata.source.split(" ", 1)[1] if " (" in vdata.source else "valid.txt",
                 "base": info, "max_users": tcfg.eval.max_users, "tune_seed": args.tune_seed,
                 "base_signature": signature}
        args.work_dir.mkdir(parents=True, exist_ok=True)
        t = tune(tcfg, vdata, user, item, grid, done=rows,
                 save=lambda part: atomic_write_text(tune_path, json.dumps({**part, **extra, "partial": True})))
        t.update(extra)
        atomic_write_text(tune_path, json.dumps(t))
    else:
        t = cached
    t = {**t, "grid": grid}
    return select_setting(t, args.select)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = dict(x.split("=", 1) for x in args.embeddings)
    grid = json.loads(args.grid)
    out_json = args.out / f"{args.name}.json"
    results: dict = json.loads(out_json.read_text())["results"] if args.merge and out_json.is_file() else {}
    done: list[str] = []
    for ds in args.datasets:
        res: dict = results.get(ds, {}) if args.merge else {}
        chosen: list[str] = []
        if args.tune:
            t = run_tuning(ds, args, grid, given)
            res["tuning"] = t
            chosen = [f"knn_embed.{f}={v}" for f, v in t["chosen"].items()]
            print(f"[{ds}] tuned ({t['rule_applied']}): {t['chosen']}; {t['points_more_diverse']} of {t['points']} "
                  f"points more diverse than single-vector, {t['points_more_diverse_and_recall_ge_single']} of them "
                  f"also with recall@{t['k']} >= single", file=sys.stderr)
            if args.tune_only:
                continue
        runs = {r["seed"]: r for r in res.get("runs", [])}
        for seed in args.seeds:
            cfg = make_config(ds, args, [*chosen, f"knn_embed.seed={seed}", f"index.seed={seed}"])
            set_base_seed(cfg, seed)
            knn_kind = "hnsw" if args.knn_faiss else "exact"
            hnsw_cfg = copy.deepcopy(cfg.index)
            hnsw_cfg.kind = "hnsw"
            extra = {"hnsw": hnsw_cfg, "hnsw_ip": IndexConfig(**{**vars(hnsw_cfg), "mips_transform": "none"}),
                     "ivf_flat": IndexConfig(**{**vars(hnsw_cfg), "kind": "ivf_flat"})}
            cfg.index = IndexConfig(**{**vars(hnsw_cfg), "kind": knn_kind})
            data = load_data(cfg)
            if ds in given:
                user, item = load_embeddings(given[ds])
                info = {"source": given[ds]}
            else:
                user, item, info = cached_base(cfg, data, ds, seed, args)
            if args.train_only:
                print(f"[{ds} seed {seed}] base model ready: {json.dumps(info.get('eval_split_metrics'))}", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            keep: dict = {}
            m = evaluate_methods(cfg, data, user, item, extra_single={k: v for k, v in extra.items() if k != knn_kind},
                                 keep=keep)
            m["seed"], m["base"], m["eval_seconds"], m["argv"] = seed, info, time.perf_counter() - t0, argv
            m["index"] = {k: v for k, v in vars(hnsw_cfg).items() if k not in ("kind", "show_progress")}
            if args.per_user:
                m["per_user"] = per_user_analysis(data, keep, cfg.knn_embed.num_clusters, max(cfg.eval.ks))
            if args.oracle_mixture:
                m["mixture_diagnostic"] = mixture_diagnostic(cfg, data, user, item, keep)
            runs[seed] = m
            print(f"[{ds} seed {seed}] " + json.dumps({n: {k: round(v, 4) for k, v in x.items() if k in SHOW[:3] + ['clusters@100']}
                                                      for n, x in m["methods"].items()}), file=sys.stderr)
        if args.tune_only or args.train_only or not runs:
            continue
        ordered = [runs[k] for k in sorted(runs)]
        base_info = {k: v for k, v in ordered[0]["base"].items()
                     if k not in ("epoch_loss", "eval_split_metrics", "cached", "signature")}
        res.update({"runs": ordered, "seeds": sorted(runs), "aggregate": aggregate(ordered), "goal": goal_check(ordered),
                    "users": ordered[0]["users"], "num_items": ordered[0]["num_items"], "base": base_info,
                    "knn_embed_config": vars(make_config(ds, args, chosen).knn_embed) | {"seed": "= run seed"}})
        results[ds] = res
        done.append(ds)
    if not done:
        return 0
    if args.merge and out_json.is_file():  # another data set's invocation may have written meanwhile
        latest = json.loads(out_json.read_text())["results"]
        results = {**latest, **{ds: results[ds] for ds in done}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(out_json, {"results": results})
    atomic_write_text(args.out / f"{args.name}.md", markdown(results, args))
    print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
