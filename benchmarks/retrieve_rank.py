"""Retrieve, then rank, end to end: {single-vector, kNN-Embed} x {no ranker, DIN, DIN + hard negatives} x N.

Per seed: a two-tower (MF) retrieval model trained on the sequences (configs/<dataset>_two_tower.yaml, stage 1),
a DIN trained with popularity negatives and a DIN trained with hard negatives from that retrieval run
(``data.hard_negatives``), all on the same vocabulary; then every pipeline cell is evaluated on the same
seeded subset of users (leave-last-out test item): final recall@K / NDCG@K, candidate recall@N, diversity
(distinct clusters / categories, intra-list distance) of stage 1's top K and of the final list, and per-user
latency on one thread. Differences are paired bootstrap intervals over users (per-user values averaged over
the seeds first). Runs are kept under --work and reused when finished (delete them to retrain).

    python benchmarks/retrieve_rank.py --dataset amazon_beauty --path ../shared/datasets/amazon_seq_s3rec \\
        --seeds 0 1 2 --candidates 100 500 --max-users 2000 --out benchmarks/results/retrieve_rank_beauty

MovieLens-1M needs the GroupLens ``ratings.dat`` + ``movies.dat`` (``--dataset movielens_1m --path ml-1m``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_emb.retrieval.pipeline import (  # noqa: E402
    PipelineEvalConfig, SequenceRanker, StageOne, StageOneConfig, StageOneOrder, load_stage_one_run, paired_bootstrap,
    run_pipeline, check_same_vocabulary, read_vocabulary,
)
from recsys_emb.retrieval.index import Csr  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

RANKERS = ("none", "din", "din_hard")
METRICS = ("candidates/recall@{n}", "candidates/clusters@{n}", "candidates/categories@{n}", "candidates/ild@{n}",
           "final/recall@{k}", "final/ndcg@{k}", "final/clusters@{k}", "final/categories@{k}", "final/ild@{k}")
COMPARED = METRICS[4:]  # the final list's metrics (candidate metrics do not depend on the ranker)


def train_run(config: str, overrides: list[str], run_dir: Path) -> Path:
    """Train once: a finished run (metrics.json) is reused."""
    from recsys_emb.train.tasks import load_experiment, train

    if (run_dir / "metrics.json").is_file():
        print(f"[retrieve_rank] reusing {run_dir}", flush=True)
        return run_dir
    t0 = time.perf_counter()
    train(load_experiment(config, overrides), run_dir)
    print(f"[retrieve_rank] trained {run_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def seed_runs(args: argparse.Namespace, seed: int) -> dict[str, Path]:
    work = Path(args.work) / args.dataset / f"seed{seed}"
    data = [f"dataset={args.dataset}", f"path={Path(args.path).resolve()}", f"max_history={args.max_history}"]
    tt = train_run(args.retrieval_config, [f"data.sequence.{d}" for d in data] + [f"train.seed={seed}", "train.progress=false"],
                   work / "two_tower")
    din_common = [f"data.{d}" for d in data] + [f"train.seed={seed}", f"data.seed={seed}", f"train.epochs={args.ranker_epochs}",
                                                "train.progress=false", "train.tensorboard=false", "train.num_threads=1"]
    din = train_run(args.ranker_config, din_common, work / "din")
    hard = train_run(args.ranker_config, din_common + [f"data.hard_negatives={tt}", f"data.hard_negative_pool={args.hard_pool}",
                                                       f"data.hard_negative_fraction={args.hard_fraction}"], work / "din_hard")
    return {"two_tower": tt, "din": din, "din_hard": hard}


def evaluate_seed(args: argparse.Namespace, runs: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Every (method, N, ranker) cell of one seed: per-user metric arrays (and latency under '_latency')."""
    vocab = read_vocabulary(runs["two_tower"])
    for name in ("din", "din_hard"):
        check_same_vocabulary((str(runs["two_tower"]), vocab), (str(runs[name]), read_vocabulary(runs[name])))
    user, item, _, _ = load_stage_one_run(runs["two_tower"])
    rankers = {"none": StageOneOrder(), "din": SequenceRanker.load(runs["din"]), "din_hard": SequenceRanker.load(runs["din_hard"])}
    ds = rankers["din"].ds
    indptr, items = ds.split_items("train")
    history = Csr(torch.from_numpy(indptr), torch.from_numpy(items))
    ev = PipelineEvalConfig(split="test", k=args.k, max_users=args.max_users, seed=0, latency_users=args.latency_users)
    cells: dict[str, dict[str, np.ndarray]] = {}
    assignments = None
    for method in ("single", "knn_embed"):
        for n in args.candidates:
            cfg = StageOneConfig(method=method, candidates=n)
            cfg.knn_embed.num_clusters = args.clusters
            stage1 = StageOne(cfg, user, item, history, torch.from_numpy(ds.popularity), assignments)
            assignments = stage1.assignments  # one clustering for every cell (the diversity metrics' clusters)
            for name, ranker in rankers.items():
                t0 = time.perf_counter()
                result = run_pipeline(stage1, ranker, ds, ev)
                cells[f"{method}|{n}|{name}"] = {**result.per_user, "_latency": result.latency_ms,
                                                 "_seconds": time.perf_counter() - t0}
                print(f"[retrieve_rank] {method} N={n} {name}: final recall@{args.k} "
                      f"{result.per_user[f'final/recall@{args.k}'].mean():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return cells


def aggregate(args: argparse.Namespace, per_seed: list[dict[str, dict]]) -> dict:
    """Means ± std over seeds per cell, and the paired bootstrap comparisons (per-user means over seeds)."""
    k = args.k
    out: dict = {"cells": {}, "comparisons": []}
    user_means: dict[str, dict[str, np.ndarray]] = {}
    for cell in per_seed[0]:
        method, n, ranker = cell.split("|")
        keys = [m.format(n=n, k=k) for m in METRICS]
        row: dict = {"method": method, "candidates": int(n), "ranker": ranker, "seeds": len(per_seed)}
        user_means[cell] = {}
        for key in keys:
            values = np.stack([s[cell][key] for s in per_seed])  # (seeds, users)
            seed_means = values.mean(1)
            row[key] = {"mean": float(seed_means.mean()), "std": float(seed_means.std(ddof=1)) if len(per_seed) > 1 else 0.0}
            user_means[cell][key] = values.mean(0)
        for stage in ("stage1", "stage2", "pipeline"):
            lat = [s[cell]["_latency"][stage] for s in per_seed if stage in s[cell]["_latency"]]
            if lat:
                row[f"latency_ms/{stage}"] = {q: float(np.mean([x[q] for x in lat])) for q in ("p50", "p99", "mean")}
        out["cells"][cell] = row

    def compare(a: str, b: str, what: str, metrics: tuple[str, ...] = COMPARED, into: str = "comparisons") -> None:
        n = a.split("|")[1]
        entry = {"a": a, "b": b, "what": what}
        for m in metrics:
            key = m.format(n=n, k=k)
            entry[key] = paired_bootstrap(user_means[a][key], user_means[b][key], samples=args.bootstrap, seed=0)
        out.setdefault(into, []).append(entry)

    for n in args.candidates:
        compare(f"knn_embed|{n}|none", f"single|{n}|none", "kNN-Embed - single-vector", METRICS[:4], "candidate_comparisons")
        for ranker in RANKERS:
            compare(f"knn_embed|{n}|{ranker}", f"single|{n}|{ranker}", "kNN-Embed - single-vector")
        for method in ("single", "knn_embed"):
            compare(f"{method}|{n}|din", f"{method}|{n}|none", "DIN - no ranker")
            compare(f"{method}|{n}|din_hard", f"{method}|{n}|din", "DIN hard negatives - DIN")
    return out


def fmt(x: dict) -> str:
    return f"{x['mean']:.4f} ± {x['std']:.4f}"


def interval(c: dict) -> str:
    star = " *" if c["lo"] > 0 or c["hi"] < 0 else ""
    return f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]{star}"


def markdown(args: argparse.Namespace, result: dict) -> str:
    k = args.k
    lines = [f"# Retrieve, then rank: {args.dataset} (benchmarks/retrieve_rank.py)", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; {result['threads']} torch thread; {result['users']} test users (a seeded subset, the same "
             f"for every cell), {len(args.seeds)} seeds (each: its own two-tower retrieval model, DIN and DIN with hard negatives). "
             f"K = {k}. Stage 1 is a two-tower / MF model (in-batch softmax + logQ) with an exact index; kNN-Embed uses "
             f"{args.clusters} clusters. Hard negatives: each training negative is, with probability {args.hard_fraction}, drawn from "
             f"the user's top {args.hard_pool} items of that seed's retrieval model (else by popularity).", "",
             "Means ± std over seeds. Candidates: the N items of stage 1 (recall@N is the ceiling of stage 2). Final: the K "
             "items shown; with ranker `none` that is stage 1's own top K (single-vector: its first K; kNN-Embed: run with "
             "budget K, so it is the same for every N). Diversity: distinct k-means item clusters (kNN-Embed's "
             f"{args.clusters} clusters, the same for every cell), distinct item categories, intra-list distance (1 - mean "
             "pairwise cosine of the retrieval item embeddings). Latency: per user, one user per call, one thread "
             "(p50 / p99 ms); stage 2 = scoring and ordering the N candidates.", "",
             "| method | N | ranker | cand. recall@N | cand. clusters@N | cand. categories@N | cand. ILD@N |"
             f" final recall@{k} | final NDCG@{k} | clusters@{k} | categories@{k} | ILD@{k} | "
             "stage 1 p50/p99 ms | stage 2 p50/p99 ms | pipeline p50/p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, row in result["cells"].items():
        n = row["candidates"]
        lat = [row.get(f"latency_ms/{s}") for s in ("stage1", "stage2", "pipeline")]
        lat_s = [f"{x['p50']:.2f} / {x['p99']:.2f}" if x else "-" for x in lat]
        values = [fmt(row[m.format(n=n, k=k)]) for m in METRICS]
        lines.append(f"| {row['method']} | {n} | {row['ranker']} | " + " | ".join(values + lat_s) + " |")
    lines += ["", f"Paired bootstrap ({args.bootstrap} resamples of the users; per-user values averaged over the seeds): "
              "difference of the means and its 95% interval; * = the interval excludes 0.", "",
              f"| comparison | A | B | recall@{k} | NDCG@{k} | clusters@{k} | categories@{k} | ILD@{k} |", "|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | " + " | ".join(
            interval(c[m.format(k=k)]) for m in COMPARED) + " |")
    lines += ["", "The N candidates themselves (they do not depend on the ranker), same bootstrap:", "",
              "| comparison | A | B | recall@N | clusters@N | categories@N | ILD@N |", "|---|---|---|---|---|---|---|"]
    for c in result.get("candidate_comparisons", []):
        n = c["a"].split("|")[1]
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | " + " | ".join(interval(c[m.format(n=n, k=k)]) for m in METRICS[:4]) + " |")
    lines += ["", "## Reading", "", result.get("reading", "(see the JSON)"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="amazon_beauty")
    p.add_argument("--path", default="../shared/datasets/amazon_seq_s3rec")
    p.add_argument("--retrieval-config", default="configs/beauty_two_tower.yaml")
    p.add_argument("--ranker-config", default="configs/amazon_beauty_din.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--max-users", type=int, default=2000)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--ranker-epochs", type=int, default=3)
    p.add_argument("--hard-pool", type=int, default=100)
    p.add_argument("--hard-fraction", type=float, default=0.5)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--latency-users", type=int, default=100)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--work", default="runs/retrieve_rank")
    p.add_argument("--out", default="benchmarks/results/retrieve_rank_beauty")
    p.add_argument("--reading", type=Path, help="re-render --out's markdown from its JSON with this text as the Reading section "
                                                 "(no training, no evaluation)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.reading:
        result = json.loads(out.with_suffix(".json").read_text())
        result["reading"] = args.reading.read_text().strip()
        saved = argparse.Namespace(**result["settings"])
        atomic_save_json(out.with_suffix(".json"), result)
        atomic_write_text(out.with_suffix(".md"), markdown(saved, result))
        return 0
    torch.set_num_threads(1)
    per_seed = []
    for seed in args.seeds:
        runs = seed_runs(args, seed)
        per_seed.append(evaluate_seed(args, runs))
    result = {"command": "python benchmarks/retrieve_rank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or platform.platform()})",
              "threads": 1, "users": len(next(iter(per_seed[0].values()))[f"final/recall@{args.k}"]),
              "settings": {k: v for k, v in vars(args).items() if k != "reading"}, **aggregate(args, per_seed)}
    atomic_save_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(args, result))
    print(f"[retrieve_rank] wrote {out.with_suffix('.json')} and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
