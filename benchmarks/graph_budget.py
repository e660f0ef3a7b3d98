"""LightGCN under a memory budget: multiplexed user/item tables (``unified``) vs per-feature hashing (``hash``).

ML-1M (LightGCN++ split, ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m), LightGCN (dim 64, 3 layers,
Adam lr 3e-3, batch 2048: the settings of benchmarks/results/graph_cf_ml1m_compare), every run a real ``recsys-emb train`` of a
``task: graph`` experiment through the one trainer. Variants at the same bytes (a fraction of the
full user + item tables' bytes, optimizer state excluded; both split rows in proportion to the
vocabularies, ``recsys_emb/modules/unified.py`` ``split_rows``):

* ``full``: the plain tables (1x);
* ``unified@f``: users and items multiplexed into ONE shared table (Coleman et al. 2023, one probe);
* ``hash@f``: the hashing trick, one smaller table per feature.

Test recall@20 / NDCG@20 after the last epoch (no selection), training and validation items excluded.
The grid is resumable: each (variant, seed) writes ``<work>/cells/<variant>_s<seed>.json``; a rerun
skips finished cells, and ``--merge`` pools whatever is there into ``<out>.json`` / ``<out>.md``.

    python benchmarks/graph_budget.py [--seeds 0 1 2] [--fractions 0.5 0.25 0.125] [--epochs 6]
    python benchmarks/graph_budget.py --merge
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "lightgcnpp_ml1m_lastfm" / "ml-1m"


def variants(fractions: list[float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"full": {"groups": []}}
    for f in fractions:
        out[f"unified@{f:g}"] = {"groups": [{"name": "ids", "chain": [{"unified": {"budget_fraction": f}}]}]}
        out[f"hash@{f:g}"] = {"groups": [{"name": "ids", "chain": [{"hash": {"budget_fraction": f}}]}]}
    return out


def run_cell(name: str, embedding: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = {
        "task": "graph", "name": f"graph_budget_{name}",
        "data": {"path": str(args.data), "valid": True},
        "model": {"name": "lightgcn", "embedding_dim": 64, "num_layers": 3},
        "embedding": embedding,
        "train": {"epochs": args.epochs, "seed": seed, "progress": False, "tensorboard": False, "num_threads": args.threads,
                  "embedding_optimizer": {"name": "adam", "lr": args.lr}, "dense_optimizer": {"name": "adam", "lr": args.lr},
                  **({"max_steps_per_epoch": args.max_steps_per_epoch} if args.max_steps_per_epoch else {})},
        "evaluation": {"ks": [20], "select_metric": None, "max_users": args.max_users},
    }
    work = args.work / "runs"
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{name}_s{seed}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = work / f"{name}_s{seed}"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recsys_emb", "train", "--config", str(config), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"variant": name, "seed": seed, "recall@20": m["test"]["recall@20"], "ndcg@20": m["test"]["ndcg@20"],
            "embedding_bytes": 4 * m["embedding_parameters"], "epochs": m.get("epochs_completed"),
            "seconds": time.perf_counter() - t0}


def merge(args: argparse.Namespace, order: list[str]) -> dict[str, Any]:
    cells = [json.loads(p.read_text()) for p in sorted((args.work / "cells").glob("*.json"))]
    rows = []
    for name in order:
        mine = [c for c in cells if c["variant"] == name]
        if not mine:
            continue
        def stat(key: str) -> list[float]:
            v = [c[key] for c in mine]
            return [statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0]
        rows.append({"variant": name, "seeds": sorted(c["seed"] for c in mine), "recall@20": stat("recall@20"),
                     "ndcg@20": stat("ndcg@20"), "embedding_bytes": mine[0]["embedding_bytes"], "seconds": stat("seconds")})
    return {"command": "python benchmarks/graph_budget.py " + " ".join(sys.argv[1:]), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "threads": args.threads, "epochs": args.epochs, "lr": args.lr, "data": str(args.data), "cells": cells, "summary": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = result["summary"]
    full = next((r for r in rows if r["variant"] == "full"), None)
    lines = ["# LightGCN under a memory budget: unified vs hash (benchmarks/graph_budget.py)", "",
             f"Command: `{result['command']}`", "",
             f"ML-1M, LightGCN dim 64, 3 layers, Adam lr {result['lr']:g}, {result['epochs']} epoch(s), test metrics after the last epoch; mean ± std over "
             f"seeds. Machine: {result['machine']}, {result['threads']} torch thread(s).", "",
             "| variant | seeds | recall@20 | NDCG@20 | embedding bytes | bytes vs full | seconds/run |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['embedding_bytes'] / full['embedding_bytes']:.3f}" if full else "-"
        lines.append(f"| {r['variant']} | {','.join(map(str, r['seeds']))} | {r['recall@20'][0]:.4f} ± {r['recall@20'][1]:.4f} | "
                     f"{r['ndcg@20'][0]:.4f} ± {r['ndcg@20'][1]:.4f} | {r['embedding_bytes']:,} | {ratio} | {r['seconds'][0]:.0f} |")
    lines += ["", "What this does not show: one data set, a fixed short training budget, no tuning per budget."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam lr (3e-3: the best LightGCN lr of benchmarks/results/graph_cf_ml1m_compare)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="quick runs only")
    p.add_argument("--max-users", type=int, default=None, help="score only the first N users (quick runs only)")
    p.add_argument("--merge", action="store_true", help="only pool the finished cells into the output files")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "graph_budget")
    p.add_argument("--work", type=Path, default=Path("/tmp/graph_budget"), help="cell results and run folders")
    args = p.parse_args()
    table = variants(args.fractions)
    (args.work / "cells").mkdir(parents=True, exist_ok=True)
    if not args.merge:
        if not (args.data / "train.txt").is_file() and not (args.data / "train.txt.gz").is_file():
            raise SystemExit(f"{args.data}: no train.txt[.gz] (see datasets/gowalla/README.md for the format)")
        for seed in args.seeds:
            for name, embedding in table.items():
                cell = args.work / "cells" / f"{name}_s{seed}.json"
                if cell.is_file():
                    continue
                result = run_cell(name, embedding, seed, args)
                atomic_save_json(cell, result)
                print(f"[graph_budget] {name} seed {seed}: recall@20 {result['recall@20']:.4f}", flush=True)
    result = merge(args, list(table))
    atomic_save_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))


if __name__ == "__main__":
    main()
