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
kNN-Embed's C, lambda and k are chosen on a grid by validation recall@100 (K = 100, exact search);
the test runs then use the chosen values. When the validation configuration trains on exactly the
test configuration's training data (ML-1M), the tuning model is reused for the test seed
``seeds[0]`` (its training never saw validation or test items).

Usage::

    python benchmarks/knn_embed.py --datasets ml1m gowalla --seeds 0 1 2 --base lightgcn --tune \\
        [--max-users 5000] [--set-ds gowalla:eval.max_users=10000] [--out benchmarks/results]

Long runs can be split into several invocations (one seed each): ``--merge`` keeps the runs of other
(data set, seed) pairs already in the output JSON, and the base-model trainings and the tuning
result are cached under ``--work-dir`` (reused when the same data set, base model, training split
and seed come again; ``--no-reuse`` retrains).

Writes ``knn_embed.json`` (every run, the tuning grid) and ``knn_embed.md`` (mean ± std over seeds
and per-seed recall@100).
"""

from __future__ import annotations

import argparse
import copy
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
    RetrieveConfig, base_embeddings, evaluate_methods, evaluation_users, load_data, load_embeddings, set_base_seed)
from recsys_emb.retrieval.evaluate import ranking_metrics, diversity_metrics  # noqa: E402
from recsys_emb.retrieval.index import IndexConfig, build_index  # noqa: E402
from recsys_emb.retrieval.knn_embed import KnnEmbed  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

CONFIGS = {("gowalla", "two_tower"): "configs/retrieval_gowalla.yaml",
           ("ml1m", "two_tower"): "configs/retrieval_ml1m.yaml",
           ("gowalla", "graph"): "configs/retrieval_gowalla_lightgcn.yaml",
           ("ml1m", "graph"): "configs/retrieval_ml1m_lightgcn.yaml"}
SHOW = ["recall@20", "recall@50", "recall@100", "ndcg@100", "clusters@100", "entropy@100", "ild@100",
        "overlap@100", "queries_per_second", "ms_per_query"]
GRID = {"num_clusters": [4, 8, 16, 32, 64], "smoothing_lambda": [0.0, 0.5, 0.9], "num_neighbors": [10, 50]}


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


def cached_base(cfg: RetrieveConfig, data: InteractionData, ds: str, seed: int, args: argparse.Namespace) -> tuple:
    """Base embeddings for (data set, base model, training split, seed), trained once and cached."""
    split = "holdout" if "(holdout" in data.source else "train"
    work = args.work_dir / f"{ds}_{args.base}_{split}_s{seed}"
    info_path = work / "base_info.json"
    if not args.no_reuse and info_path.is_file() and (work / "embeddings.pt").is_file():
        user, item = load_embeddings(work / "embeddings.pt")
        return user, item, {**json.loads(info_path.read_text()), "cached": True}
    if work.exists():
        shutil.rmtree(work)
    user, item, info = base_embeddings(cfg, data, work)
    if args.base == "two_tower":  # graph models write embeddings.pt themselves
        work.mkdir(parents=True, exist_ok=True)
        torch.save({"user": user, "item": item}, work / "embeddings.pt")
    atomic_write_text(info_path, json.dumps({k: v for k, v in info.items() if k != "epoch_loss"}))
    return user, item, info


def tune(cfg: RetrieveConfig, data: InteractionData, user: torch.Tensor, item: torch.Tensor, grid: dict) -> dict:
    """Validation recall@100 (and diversity) of kNN-Embed over the grid, exact search, K = max(eval.ks)."""
    k = max(cfg.eval.ks)
    users = evaluation_users(data, cfg.eval)
    exclude, test, q = data.exclusions(users), data.test.select(users), user[users]
    exact = build_index(item, IndexConfig(kind="exact"))
    single_ids = exact.search(q, k, exclude).ids
    icfg = IndexConfig(kind="exact", threads=cfg.index.threads)
    rows = []
    fields = list(grid)
    t0 = time.perf_counter()
    for c in grid.get("num_clusters", [cfg.knn_embed.num_clusters]):
        kcfg = copy.deepcopy(cfg.knn_embed)
        kcfg.num_clusters = c
        knn = KnnEmbed.fit(item, kcfg, icfg)
        single = {**ranking_metrics(single_ids, test, [k]),
                  **diversity_metrics(single_ids, knn.assignments, c, item, [k])}
        rest = [f for f in fields if f != "num_clusters"]
        for values in itertools.product(*(grid[f] for f in rest)):
            setting = dict(zip(rest, values))
            if setting.get("smoothing_lambda", 1.0) == 0.0 and setting.get("num_neighbors") not in (None, grid.get("num_neighbors", [None])[0]):
                continue  # lambda = 0 ignores the neighbours: one k suffices
            for f, v in setting.items():
                setattr(kcfg, f, v)
            knn.config = kcfg
            knn.fit_users(user, data.train.csr, users=users)
            ids = knn.retrieve_users(users, q, k, exclude).ids
            m = {**ranking_metrics(ids, test, [k]), **diversity_metrics(ids, knn.assignments, c, item, [k])}
            rows.append({"num_clusters": c, **setting, "knn_embed": m, "single": single})
            print(f"[tune] C={c} {setting} recall@{k} {m[f'recall@{k}']:.4f} (single {single[f'recall@{k}']:.4f}) "
                  f"clusters {m[f'clusters@{k}']:.2f} vs {single[f'clusters@{k}']:.2f}", file=sys.stderr)
    best = max(rows, key=lambda r: (round(r["knn_embed"][f"recall@{k}"], 6), r["knn_embed"][f"entropy@{k}"]))
    chosen = {f: best[f] for f in fields}
    return {"users": int(users.numel()), "k": k, "grid": grid, "rows": rows, "chosen": chosen,
            "chosen_metrics": best["knn_embed"], "single_metrics": best["single"], "seconds": time.perf_counter() - t0}


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
            lines += [f"Tuned on validation ({t['users']} users, {t['split_info']}): chosen {t['chosen']} with "
                      f"validation recall@100 {t['chosen_metrics']['recall@100']:.4f} vs single-vector "
                      f"{t['single_metrics']['recall@100']:.4f}; grid {t['grid']}.", ""]
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = dict(x.split("=", 1) for x in args.embeddings)
    grid = json.loads(args.grid)
    out_json = args.out / f"{args.name}.json"
    results: dict = json.loads(out_json.read_text())["results"] if args.merge and out_json.is_file() else {}
    for ds in args.datasets:
        res: dict = results.get(ds, {}) if args.merge else {}
        chosen: list[str] = []
        if args.tune:
            tune_path = args.work_dir / f"{ds}_{args.base}_tuning.json"
            if not args.no_reuse and tune_path.is_file():
                t = json.loads(tune_path.read_text())
            else:
                tcfg = make_config(ds, args, ["eval.split=valid", "eval.seed=0",
                                              *([f"eval.max_users={args.tune_max_users}"] if args.tune_max_users else [])])
                set_base_seed(tcfg, args.tune_seed)
                vdata = load_data(tcfg)
                if ds in given:
                    user, item = load_embeddings(given[ds])
                    info = {"source": given[ds]}
                else:
                    user, item, info = cached_base(tcfg, vdata, ds, args.tune_seed, args)
                t = tune(tcfg, vdata, user, item, grid)
                t["split_info"] = vdata.source.split(" ", 1)[1] if " (" in vdata.source else "valid.txt"
                t["base"] = info
                args.work_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(tune_path, json.dumps(t))
            res["tuning"] = t
            chosen = [f"knn_embed.{f}={v}" for f, v in t["chosen"].items()]
            print(f"[{ds}] tuned: {t['chosen']}", file=sys.stderr)
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
            t0 = time.perf_counter()
            m = evaluate_methods(cfg, data, user, item, extra_single={k: v for k, v in extra.items() if k != knn_kind})
            m["seed"], m["base"], m["eval_seconds"], m["argv"] = seed, info, time.perf_counter() - t0, argv
            runs[seed] = m
            print(f"[{ds} seed {seed}] " + json.dumps({n: {k: round(v, 4) for k, v in x.items() if k in SHOW[:3] + ['clusters@100']}
                                                      for n, x in m["methods"].items()}), file=sys.stderr)
        ordered = [runs[k] for k in sorted(runs)]
        base_info = {k: v for k, v in ordered[0]["base"].items() if k not in ("epoch_loss", "eval_split_metrics", "cached")}
        res.update({"runs": ordered, "seeds": sorted(runs), "aggregate": aggregate(ordered), "goal": goal_check(ordered),
                    "users": ordered[0]["users"], "num_items": ordered[0]["num_items"], "base": base_info,
                    "knn_embed_config": vars(make_config(ds, args, chosen).knn_embed) | {"seed": "= run seed"}})
        results[ds] = res
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(out_json, {"results": results})
    atomic_write_text(args.out / f"{args.name}.md", markdown(results, args))
    print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
