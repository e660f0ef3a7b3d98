"""Benchmark: single-vector retrieval (exact, FAISS HNSW, FAISS IVF-Flat) vs kNN-Embed at equal K.

For each data set (Gowalla and the ML-1M graph, their test splits, training items excluded) and each
seed, this reports recall@{20,50,100}, NDCG, diversity (distinct clusters, cluster entropy, intra-list
distance) and speed (queries/s, ms per query amortised over batched queries) for

* ``single[exact]``: exact inner-product top-K (torch reference),
* ``single[hnsw]``, ``single[ivf_flat]``: FAISS single-vector search,
* ``knn_embed[exact]``, ``knn_embed[hnsw]``: kNN-Embed with exact / HNSW per-cluster search.

The base embeddings come from ``configs/retrieval_<dataset>.yaml`` (two-tower/MF trained with
in-batch softmax) or from ``--embeddings DATASET=FILE`` (e.g. the ``embeddings.pt`` of an earlier
``recsys-emb retrieve`` run, or LightGCN embeddings). The seed changes the k-means clustering and the
IVF coarse quantizer; the base model is trained once per data set unless ``--train-per-seed``.

Usage::

    python benchmarks/knn_embed.py --datasets gowalla ml1m --seeds 0 1 2 \\
        [--embeddings gowalla=runs/knn_gowalla_s0/embeddings.pt] [--out benchmarks/results]

Writes ``knn_embed.json`` (every run) and ``knn_embed.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.retrieval.data import load_interaction_data  # noqa: E402
from recsys_emb.retrieval.driver import RetrieveConfig, base_embeddings, evaluate_methods, load_embeddings  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

CONFIGS = {"gowalla": "configs/retrieval_gowalla.yaml", "ml1m": "configs/retrieval_ml1m.yaml"}
SHOW = ["recall@20", "recall@50", "recall@100", "ndcg@100", "clusters@100", "entropy@100", "ild@100",
        "overlap@100", "queries_per_second", "ms_per_query"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["gowalla", "ml1m"], choices=sorted(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--embeddings", nargs="*", default=[], metavar="DATASET=FILE", help="reuse base embeddings")
    p.add_argument("--train-per-seed", action="store_true", help="retrain the base model for every seed")
    p.add_argument("--max-users", type=int, default=0, help="evaluate a random subset of users (0 = all)")
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (all data sets)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def aggregate(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in runs[0]["methods"]:
        out[name] = {}
        for key in runs[0]["methods"][name]:
            vals = [r["methods"][name][key] for r in runs if r["methods"][name].get(key) is not None]
            if vals and all(isinstance(v, (int, float)) for v in vals):
                out[name][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = ["# kNN-Embed vs single-vector retrieval", "",
             f"Command: `python benchmarks/knn_embed.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); the 2-core "
             "machine was shared with other jobs, so absolute timings are noisy (compare methods within a run).", "",
             "Mean ± std over seeds (k-means / IVF seed); K = 100 retrieved per user, training items excluded; "
             "kNN-Embed is run with budget K = 20, 50 and 100 separately for the @20/@50/@100 metrics. "
             "`overlap@100`: share of the exact single-vector top-100 that the method returns. "
             "Speed: batched queries (1024 per batch), ms/query = wall time / users.", ""]
    for ds, res in results.items():
        agg = res["aggregate"]
        lines += [f"## {ds} ({res['users']} test users, {res['num_items']} items, seeds {res['seeds']})", "",
                  f"Base model: {res['base']}", "",
                  "| method | " + " | ".join(SHOW) + " |", "|---|" + "---|" * len(SHOW)]
        for name, vals in agg.items():
            cells = []
            for key in SHOW:
                if key in vals:
                    mu, sd = vals[key]
                    fmt = ".1f" if key == "queries_per_second" else (".3f" if key == "ms_per_query" else ".4f")
                    cells.append(f"{mu:{fmt}} ± {sd:{fmt}}")
                else:
                    cells.append("-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = dict(x.split("=", 1) for x in args.embeddings)
    results: dict = {}
    for ds in args.datasets:
        runs = []
        emb = None
        for seed in args.seeds:
            cfg = load_config(RetrieveConfig, REPO / CONFIGS[ds], [
                *args.overrides, f"knn_embed.seed={seed}", f"eval.max_users={args.max_users}",
                f"threads={args.threads}", f"index.threads={args.threads}", f"index.seed={seed}",
                "show_progress=false"])
            cfg.data.path = str((REPO / cfg.data.path).resolve()) if not Path(cfg.data.path).is_absolute() else cfg.data.path
            data = load_interaction_data(cfg.data.path, cfg.data.train, cfg.data.test)
            if ds in given:
                user, item = load_embeddings(given[ds])
                info = {"source": given[ds]}
            elif emb is None or args.train_per_seed:
                if args.train_per_seed:
                    cfg.base.model.seed = seed
                user, item, info = base_embeddings(cfg, data)
            else:
                user, item, info = emb
            emb = (user, item, info)
            t0 = time.perf_counter()
            m = evaluate_methods(cfg, data, user, item, extra_single_kinds=("ivf_flat",))
            m["seed"], m["base"], m["eval_seconds"] = seed, info, time.perf_counter() - t0
            runs.append(m)
            print(f"[{ds} seed {seed}] " + json.dumps({n: {k: v for k, v in x.items() if k in SHOW[:3]}
                                                      for n, x in m["methods"].items()}), file=sys.stderr)
        results[ds] = {"runs": runs, "aggregate": aggregate(runs), "seeds": args.seeds, "users": runs[0]["users"],
                       "num_items": runs[0]["num_items"],
                       "base": {k: v for k, v in runs[0]["base"].items() if k != "epoch_loss"}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / "knn_embed.json", {"argv": sys.argv[1:], "results": results})
    atomic_write_text(args.out / "knn_embed.md", markdown(results, args))
    print((args.out / "knn_embed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
