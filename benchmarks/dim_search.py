"""Base vs DNIS vs OptEmbed on synthetic Criteo-like data or MovieLens-100K: test AUC, REAL embedding bytes, search time.

For each seed: the plain model (``configs/criteo_dlrm.yaml`` settings, trained by ``recsys-emb
train``), a DNIS search (``configs/criteo_dnis.yaml``) and an OptEmbed search
(``configs/criteo_optembed.yaml``), each followed by ``derive_tables`` and a retrain of the derived
compact model from scratch with the ordinary training loop. Search lengths are scaled to the data:
``--search-epochs`` passes over the training rows for DNIS warm-up and search and for the OptEmbed
supernet (the configs' step counts are sized for the full Criteo data).

    python benchmarks/dim_search.py --rows 1000000 --test-rows 200000 --epochs 1 --search-epochs 0.15 --seeds 0 1 2 \\
        --target 0.6 --optembed-budget 0.5 --optembed-set search.threshold_lr=0.01 --name dim_search_1m  # 25-50 min/seed on 2 shared cores
    python benchmarks/dim_search.py --rows 100000 --seeds 0 1 2 --target 0.6 --name dim_search_100k_target06
    python benchmarks/dim_search.py --dataset movielens_100k --ml100k data/movielens_100k --batch-size 512 \\
        --epochs 10 --seeds 0 1 2 --target 0.6 --name dim_search_ml100k

Writes ``benchmarks/results/NAME.{json,md,png}`` (``--name``, default ``dim_search``). Wall-clock times on a shared machine are
distorted by other jobs.

Seeds can run in separate processes and be merged: ``--merge A.json B.json`` adds the per-seed rows of earlier
results files written with the same settings (a mismatch or a seed present twice is an error); ``--seeds`` with no
value merges only. The files merged, their commands and wall times are kept in the output (``merged_from``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["synthetic", "movielens_100k"], default="synthetic")
    p.add_argument("--ml100k", type=Path, help="prepared MovieLens-100K folder with train/ valid/ test/ "
                   "(python datasets/movielens/prepare.py --data ml-100k --out DIR --genres set: DNIS/OptEmbed "
                   "need one id per bag, so genres as one genre-set id)")
    p.add_argument("--rows", type=int, default=100_000, help="synthetic training rows (last 10%% validate)")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default rows // 5)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0],
                   help="training seeds (the data is generated once, seed 0); none: only --merge")
    p.add_argument("--merge", type=Path, nargs="+", default=[], metavar="JSON",
                   help="earlier results files (same settings) whose per-seed rows are added to this run's")
    p.add_argument("--search-epochs", type=float, default=1.0, help="passes over the training rows per search phase")
    p.add_argument("--target", type=float, default=0.5, help="DNIS target compression (and OptEmbed budget unless --optembed-budget)")
    p.add_argument("--optembed-budget", type=float, default=None,
                   help="OptEmbed budget: max derived-table bytes as a fraction of the full tables (default --target)")
    p.add_argument("--optembed-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override of the optembed options (e.g. search.threshold_lr=0.01); repeatable")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=2, help="max epochs of the base model and of each retrain")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "dim_search", help="work folder (data and runs)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="dim_search", help="results file stem")
    p.add_argument("--note", default=None, help="a remark appended to the markdown and stored in the JSON (e.g. the machine load)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, on_seed: Callable[[dict], None] | None = None) -> dict:
    from recsys_emb.data.synthetic import synth_criteo
    from recsys_emb.search.cli import run_search_experiment
    from recsys_emb.train.tasks import train

    from recsys_emb.data.dataset import PreparedCTRData

    if args.dataset == "synthetic":
        data_dir = args.out / f"synth_{args.rows}"
        if args.seeds and not (data_dir / "train.txt.gz").is_file():
            synth_criteo(data_dir, rows=args.rows, test_rows=args.test_rows or args.rows // 5, seed=0)
        train_rows = int(args.rows * 0.9)
        data = [f"data.train={data_dir / 'train.txt.gz'}", f"data.test={data_dir / 'test.txt.gz'}"]
        base_config = REPO / "configs" / "criteo_dlrm.yaml"
        search_configs = {t: (REPO / "configs" / f"criteo_{t}.yaml", []) for t in ("dnis", "optembed")}
    else:
        if args.ml100k is None:
            raise SystemExit("--dataset movielens_100k needs --ml100k PREPARED_DIR")
        train_rows = len(PreparedCTRData.open(args.ml100k / "train"))
        data = [f"data.{s}={args.ml100k / s}" for s in ("train", "valid", "test")]
        base_config = REPO / "configs" / "ml100k_dcnv2.yaml"
        search_configs = {t: (base_config, [f"embedding.groups=[{{name: all, chain: [{t}]}}]"]) for t in ("dnis", "optembed")}
    steps = max(1, int(args.search_epochs * train_rows / args.batch_size))
    common = [*data, f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", "train.tensorboard=false",
              "train.checkpoint_every_steps=100000"]
    budget = args.target if args.optembed_budget is None else args.optembed_budget
    results: dict[str, list[dict]] = {"base": [], "dnis": [], "optembed": []}
    summary = {"dataset": args.dataset, "rows": train_rows, "model": load_config(ExperimentConfig, base_config).model.name,
               "search_steps": steps, "target": args.target, "optembed_budget": budget, "epochs": args.epochs,
               "batch_size": args.batch_size, "results": results}
    for seed in args.seeds:
        seeded = [*common, f"train.seed={seed}"]
        run_dir = args.out / f"base_s{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        metrics = train(load_config(ExperimentConfig, base_config, seeded), run_dir)
        results["base"].append({"seed": seed, "test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
                                "embedding_bytes": metrics["embedding_parameters"] * 4, "seconds": time.perf_counter() - t0})
        searches = {
            "dnis": [f"embedding.groups.0.chain.0.dnis.search.warmup_steps={steps}", f"embedding.groups.0.chain.0.dnis.search.search_steps={steps}",
                     f"embedding.groups.0.chain.0.dnis.search.target_compression={args.target}"],
            "optembed": [f"embedding.groups.0.chain.0.optembed.search.supernet_steps={2 * steps}", f"embedding.groups.0.chain.0.optembed.search.budget={budget}",
                         "embedding.groups.0.chain.0.optembed.search.eval_rows=20000", "embedding.groups.0.chain.0.optembed.search.generations=6",
                         *[f"embedding.groups.0.chain.0.optembed.{kv}" for kv in args.optembed_set]],
        }
        for technique, extra in searches.items():
            run_dir = args.out / f"{technique}_s{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            path, select = search_configs[technique]
            cfg = load_config(ExperimentConfig, path, [*seeded, *select, *extra])
            t0 = time.perf_counter()
            report = run_search_experiment(cfg, technique, run_dir, progress=False)
            results[technique].append({
                "seed": seed, "test_auc": report["retrain"]["test"]["auc"], "test_logloss": report["retrain"]["test"]["logloss"],
                "embedding_bytes": report["embedding_bytes_after"], "remap_bytes": report["remap_bytes"],
                "search_seconds": report["search_seconds"], "seconds": time.perf_counter() - t0,
                "masked_test_auc": report.get("test_searched_masked", {}).get("auc"),
                "retrain_steps": report["retrain"].get("steps"),
                **_diagnostics(report),
            })
        if on_seed is not None:
            on_seed(summary)  # results so far are written after every seed
    return summary


SETTINGS = ("dataset", "rows", "model", "search_steps", "target", "optembed_budget", "epochs", "batch_size")


def merge_results(summary: dict, paths: list[Path]) -> dict:
    """Add the per-seed rows of earlier results files to ``summary`` (in place); settings must match, seeds must not repeat."""
    import json

    merged = []
    for path in paths:
        try:
            other = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--merge {path}: cannot read results JSON: {e}") from e
        for key in SETTINGS:
            if other.get(key) != summary[key]:
                raise SystemExit(f"--merge {path}: field {key!r} is {other.get(key)!r}, this run has {summary[key]!r}")
        seeds = sorted({r["seed"] for rows in other["results"].values() for r in rows})
        for method, rows in summary["results"].items():
            if method not in other["results"]:
                raise SystemExit(f"--merge {path}: no results for {method!r}")
            have = {r["seed"] for r in rows}
            dup = have & {r["seed"] for r in other["results"][method]}
            if dup:
                raise SystemExit(f"--merge {path}: {method} seed(s) {sorted(dup)} already present")
            rows.extend(other["results"][method])
            rows.sort(key=lambda r: r["seed"])
        merged.append({"file": str(path), "command": other.get("command"), "seeds": seeds,
                       "wall_seconds": other.get("wall_seconds"), "machine": other.get("machine")})
    summary["merged_from"] = merged
    return summary


def _diagnostics(report: dict) -> dict:
    """Where the bytes went: kept-row fraction over all ids, per-feature kept rows / dims, search AUCs."""
    features = report["features"]
    vocab = sum(f["vocab"] for f in features.values())
    out = {"kept_row_fraction": sum(f["kept_rows"] for f in features.values()) / max(vocab, 1),
           "features": {k: {"vocab": f["vocab"], "kept_rows": f["kept_rows"], "part_dims": f["part_dims"]} for k, f in features.items()}}
    search = report["search"]
    for key in ("valid_supernet", "valid_searched", "valid_pruned"):
        if key in search:
            out[f"{key}_auc"] = search[key]["auc"]
    if "field_dims" in search:
        out["field_dims"] = search["field_dims"]
        out["thresholds"] = search.get("thresholds")
    return out


def summarize(summary: dict) -> str:
    base = statistics.mean(r["test_auc"] for r in summary["results"]["base"])
    base_bytes = statistics.mean(r["embedding_bytes"] for r in summary["results"]["base"])
    lines = ["| method | test AUC (mean ± sd) | Δ AUC vs base | embedding bytes | x smaller | kept rows | search s | total s | seeds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in summary["results"].items():
        aucs = [r["test_auc"] for r in rows]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        nbytes = statistics.mean(r["embedding_bytes"] for r in rows)
        search = statistics.mean(r.get("search_seconds", 0.0) for r in rows)
        total = statistics.mean(r["seconds"] for r in rows)
        lines.append(f"| {name} | {statistics.mean(aucs):.4f} ± {sd:.4f} | {statistics.mean(aucs) - base:+.4f} | {nbytes:,.0f} | "
                     f"{base_bytes / nbytes:.2f} | {statistics.mean(r.get('kept_row_fraction', 1.0) for r in rows):.1%} | {search:.0f} | {total:.0f} | {len(rows)} |")
    return "\n".join(lines)


def per_seed(summary: dict) -> str:
    """One row per seed: test AUC, paired Δ AUC vs that seed's base, and x smaller, per method."""
    methods = [m for m in summary["results"] if m != "base"]
    lines = ["| seed | base AUC | " + " | ".join(f"{m} AUC | {m} Δ | {m} x smaller" for m in methods) + " |",
             "|---:|---:|" + "---:|---:|---:|" * len(methods)]
    for b in summary["results"]["base"]:
        cells = [str(b["seed"]), f"{b['test_auc']:.4f}"]
        for m in methods:
            r = next((r for r in summary["results"][m] if r["seed"] == b["seed"]), None)
            cells += ["", "", ""] if r is None else [f"{r['test_auc']:.4f}", f"{r['test_auc'] - b['test_auc']:+.4f}",
                                                     f"{b['embedding_bytes'] / r['embedding_bytes']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """AUC vs bytes scatter; skipped (with a message) when matplotlib is not installed (it is not a requirement)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"[dim_search] matplotlib not installed: {path} not written", file=sys.stderr)
        return

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, rows in summary["results"].items():
        ax.scatter([r["embedding_bytes"] / 1e6 for r in rows], [r["test_auc"] for r in rows], label=name)
    ax.set_xlabel("embedding MB (fp32, real tables)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"dimension search, {summary['dataset']}, {summary['rows']:,} training rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/dim_search.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()

    def write(summary: dict) -> str:
        summary["command"] = command
        summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        summary["wall_seconds"] = time.perf_counter() - started
        if args.note:
            summary["note"] = args.note
        return write_results(args, merge_results(copy.deepcopy(summary), args.merge) if args.merge else summary)

    print(write(run(args, on_seed=write)))
    return 0


def write_results(args: argparse.Namespace, summary: dict) -> str:
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.results / f"{args.name}.json", summary)
    plot(summary, args.results / f"{args.name}.png")
    table = summarize(summary)
    md = (f"# Dimension search: base vs DNIS vs OptEmbed\n\nCommand: `{summary['command'].strip()}`  \n"
          f"{summary['dataset']}: {summary['rows']:,} training rows, {summary['model']} dim 16; search phases of "
          f"{summary['search_steps']} steps; retrain/base: batch {summary['batch_size']}, at most {summary['epochs']} epoch(s); "
          f"target: prune {summary['target']:.0%} of the values (DNIS) / derived bytes <= {summary['optembed_budget']:.0%} "
          f"(OptEmbed). Wall time {summary['wall_seconds'] / 60:.0f} min{' (this command; merged runs below)' if summary.get('merged_from') else ''}. Bytes are the REAL derived tables (fp32), not counting the int32 id remap. Machine: "
          f"{summary['machine']['platform']}, {summary['machine']['cpus']} CPUs shared with other jobs (times distorted).\n\n"
          f"{table}\n\n![AUC vs bytes]({args.name}.png)\n")
    if len(summary["results"]["base"]) > 1:
        md += f"\nPer seed (Δ against the same seed's base):\n\n{per_seed(summary)}\n"
    if summary.get("merged_from"):
        md += "\nMerged from earlier runs (same settings):\n\n" + "".join(
            f"- `{m['file']}`: seed(s) {', '.join(map(str, m['seeds']))}, wall time {(m['wall_seconds'] or 0) / 60:.0f} min, "
            f"command `{(m['command'] or '?').strip()}`\n" for m in summary["merged_from"])
    if summary.get("note"):
        md += f"\n**Note:** {summary['note']}\n"
    atomic_write_text(args.results / f"{args.name}.md", md)
    return table


if __name__ == "__main__":
    sys.exit(main())
