"""DIN, the coupled two-stage model and DARE on Amazon Beauty / Sports (leave-last-out, popularity negatives).

Every (dataset, variant, seed) run trains with the one trainer (recsys_emb.train.trainer.fit, task: sequence) and appends one JSON line
to ``OUT.jsonl``; runs already there are skipped, so the benchmark can be split over several
invocations. Then ``OUT.json`` (all runs + aggregates) and ``OUT.md`` (mean +- std) are rewritten.

Variants:
  twin      two-stage model, coupled tables (attention = representation), dim D (no embedding groups)
  dare_1    two-stage model, DARE tables (embedding group `all`, chain [{dare: {attention_dim: D}}])
  dare_1/2  ... attention dim D/2
  dare_1/4  ... attention dim D/4
  din       DIN with Dice + mini-batch-aware L2 (lambda = --mba-lambda)
  din_plain DIN with PReLU and no regulariser

Example::

    python benchmarks/din_dare.py --data ../shared/datasets/amazon_seq_s3rec \
        --datasets amazon_beauty amazon_sports --seeds 0 1 2 --max-users 3000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.io import from_dict  # noqa: E402
from recsys_emb.console import deprecated_alias  # noqa: E402
from recsys_emb.data.availability import MissingDataError  # noqa: E402
from recsys_emb.data.sequences import SequenceDataConfig, SequenceDataset, load_raw, require_sequence_data  # noqa: E402
from recsys_emb.config.sequence import SequenceExperimentConfig  # noqa: E402
from recsys_emb.train.tasks.sequence import SequenceTask  # noqa: E402
from recsys_emb.train.trainer import fit  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

VARIANTS = ("twin", "dare_1", "dare_1/2", "dare_1/4", "din", "din_plain")


def model_section(variant: str, dim: int, din_dim: int, mba_lambda: float, top_k: int) -> dict:
    if variant == "twin" or variant.startswith("dare_"):  # DARE differs only in its tables (embedding_section)
        return {"name": "two_stage", "embedding_dim": dim, "two_stage": {"top_k": top_k}}
    if variant == "din":
        return {"name": "din", "embedding_dim": din_dim, "din": {"attention_activation": "dice", "mlp_activation": "dice", "mba_lambda": mba_lambda}}
    if variant == "din_plain":
        return {"name": "din", "embedding_dim": din_dim, "din": {"attention_activation": "prelu", "mlp_activation": "prelu", "mba_lambda": 0.0}}
    raise ValueError(f"unknown variant {variant} (choose from {VARIANTS})")


def embedding_section(variant: str, dim: int) -> dict:
    """The ``embedding:`` section: DARE (attention dim ``dim / frac``) on every field for ``dare_*``, else plain tables."""
    if variant.startswith("dare_"):
        frac = {"dare_1": 1, "dare_1/2": 2, "dare_1/4": 4}[variant]
        return {"groups": [{"name": "all", "chain": [{"dare": {"attention_dim": dim // frac}}]}]}
    return {"groups": []}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with the raw files (required unless --report-only)")
    p.add_argument("--datasets", nargs="+", default=["amazon_beauty", "amazon_sports"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max-users", type=int, default=None, help="first N users only (quick runs)")
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dim", type=int, default=16, help="representation dim of the two-stage models")
    p.add_argument("--din-dim", type=int, default=8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--mba-lambda", type=float, default=0.01)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "din_dare"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP oversubscription on a busy CPU)")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new runs after this many seconds")
    p.add_argument("--report-only", action="store_true", help="only rewrite OUT.json / OUT.md from OUT.jsonl")
    deprecated_alias(p, "--data-path", "--data")  # the old spelling, for one release
    return p.parse_args(argv)


SCALE_KEYS = ("max_users", "max_history", "epochs", "batch_size", "dim", "din_dim", "top_k", "mba_lambda")


def run_key(r: dict) -> tuple:
    """A run's identity: data set, variant, seed and every setting that changes its result."""
    return (r["dataset"], r["variant"], r["seed"], *(r["config"][k] for k in SCALE_KEYS))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data is None and not args.report_only:
        raise SystemExit("din_dare.py: --data is required (unless --report-only)")
    try:  # every data set's files, before the first run
        for dataset in [] if args.report_only else args.datasets:
            require_sequence_data(from_dict(SequenceDataConfig, {"dataset": dataset, "path": args.data}))
    except MissingDataError as err:
        print(f"din_dare.py: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    done = {run_key(json.loads(line)) for line in jsonl.read_text().splitlines()} if jsonl.exists() else set()
    start = time.perf_counter()
    for dataset in [] if args.report_only else args.datasets:
        data = {"dataset": dataset, "path": args.data, "max_users": args.max_users, "max_history": args.max_history, "num_negatives": 1}
        ds = None
        for seed in args.seeds:
            for variant in args.variants:
                settings = {"max_users": args.max_users, "max_history": args.max_history, "epochs": args.epochs,
                            "batch_size": args.batch_size, "dim": args.dim, "din_dim": args.din_dim, "top_k": args.top_k,
                            "mba_lambda": args.mba_lambda, "threads": args.threads}
                if run_key({"dataset": dataset, "variant": variant, "seed": seed, "config": settings}) in done:
                    continue
                if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    print("[bench] time budget spent; rerun to continue", file=sys.stderr)
                    return _report(args, jsonl, out)
                if ds is None:
                    dcfg = from_dict(SequenceDataConfig, data)
                    ds = SequenceDataset(load_raw(dcfg), dcfg)
                cfg = from_dict(SequenceExperimentConfig, {
                    "task": "sequence", "name": f"{dataset}_{variant}", "data": data,
                    "model": model_section(variant, args.dim, args.din_dim, args.mba_lambda, args.top_k),
                    "embedding": embedding_section(variant, args.dim),
                    "train": {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": 4096, "seed": seed,
                              "early_stopping_patience": 1, "tensorboard": False, "progress": False, "num_threads": args.threads},
                })
                tick = time.perf_counter()
                with tempfile.TemporaryDirectory() as run_dir:
                    res = fit(SequenceTask(cfg, dataset=ds), cfg, run_dir)
                row = {"dataset": dataset, "variant": variant, "seed": seed, "seconds": time.perf_counter() - tick,
                       "test": res["test"], "valid": res["valid"], "best_epoch": res["best_epoch"],
                       "samples_per_second": res["samples_per_second"], "data": res["data"], "config": settings,
                       "valid_history": [{k: h[k] for k in ("epoch", "auc", "gauc")} for h in res["history"]],
                       "stop_reason": res["stop_reason"]}
                with jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"[bench] {dataset} {variant} seed {seed}: test auc {res['test']['auc']:.4f} gauc {res['test']['gauc']:.4f}", file=sys.stderr)
    return _report(args, jsonl, out)


def _fmt(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _report(args: argparse.Namespace, jsonl: Path, out: Path) -> int:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # runs with different settings are never averaged together
        groups.setdefault((r["dataset"], r["variant"], *(r["config"][k] for k in SCALE_KEYS)), []).append(r)
    agg = []
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][0], json.dumps(kv[0][2:]), VARIANTS.index(kv[0][1]))):
        rs = sorted(rs, key=lambda r: r["seed"])  # per-seed lists aligned with "seeds" (runs may finish out of order)
        search = [r["test"]["search_ms_per_batch"] for r in rs if "search_ms_per_batch" in r["test"]]
        agg.append({
            "dataset": key[0], "variant": key[1], "seeds": sorted(r["seed"] for r in rs),
            "test_auc": [r["test"]["auc"] for r in rs], "test_gauc": [r["test"]["gauc"] for r in rs],
            "search_ms_per_batch": search, "seconds": [r["seconds"] for r in rs], "best_epoch": [r["best_epoch"] for r in rs],
            "config": rs[0]["config"], "users": rs[0]["data"]["users"],
        })
    atomic_save_json(out.with_suffix(".json"), {"runs": rows, "aggregates": agg})
    lines = [
        "# DIN / two-stage / DARE (benchmarks/din_dare.py)", "",
        "Test metrics at the best-validation epoch, mean ± std over seeds (1 positive + 1 popularity negative",
        "per validation/test user). Search time: wall time of the search stage (scores + jagged top-k) per",
        "evaluation batch of 4096 rows, measured during the test pass; seconds: wall time of one run (training +",
        "validation + test). All on the shared 2-core CPU machine with other jobs running, 1 torch thread: the",
        "times are noisy (benchmarks/results/din_dare_search.md has the controlled search figures).", "",
        "| dataset | users | variant | seeds | epochs (best) | test AUC | test GAUC | search ms/batch | seconds/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in agg:
        lines.append(f"| {a['dataset']} | {a['users']} | {a['variant']} | {len(a['seeds'])} | {a['config']['epochs']} "
                     f"({','.join(str(e) for e in a['best_epoch'])}) | {_fmt(a['test_auc'])} | {_fmt(a['test_gauc'])} | "
                     f"{_fmt(a['search_ms_per_batch'], 2)} | {_fmt(a['seconds'], 0)} |")
    subsets = sorted({a["config"]["max_users"] for a in agg if a["config"]["max_users"] is not None})
    if subsets:
        lines[1:1] = ["", f"**SUBSET runs: only the first {', '.join(map(str, subsets))} users of each data set** (`--max-users`)."]
    settings = sorted({json.dumps(a["config"], sort_keys=True) for a in agg})
    if settings:
        lines += ["", "Settings:", *(f"* `{c}`" for c in settings)]
    goals = _goals(agg)
    if goals:
        lines += ["", "Goals (differences of the mean test AUC; same data set and settings):", *goals]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _paired(a: dict, b: dict) -> str:
    """Per-seed test-AUC differences a - b over the seeds both have: mean +- std and the list."""
    pa, pb = dict(zip(a["seeds"], a["test_auc"])), dict(zip(b["seeds"], b["test_auc"]))
    d = [pa[s] - pb[s] for s in sorted(pa.keys() & pb.keys())]
    if not d:
        return "no common seeds"
    spread = f" ± {statistics.stdev(d):.4f}" if len(d) > 1 else ""
    return f"paired per seed {statistics.mean(d):+.4f}{spread} [{', '.join(f'{x:+.4f}' for x in d)}]"


def _goals(agg: list[dict]) -> list[str]:
    """One line per data set: DARE vs coupled, halved attention dim, DIN with vs without Dice + MBA."""
    by = {(a["dataset"], json.dumps({k: a["config"][k] for k in SCALE_KEYS}), a["variant"]): a for a in agg}
    out = []
    for dataset, cfg in sorted({(k[0], k[1]) for k in by}):
        get = lambda v: by.get((dataset, cfg, v))  # noqa: E731
        parts = []
        if get("twin") and get("dare_1"):
            d = _mean(get("dare_1")["test_auc"]) - _mean(get("twin")["test_auc"])
            parts.append(f"DARE - coupled = {d:+.4f} ({'holds' if d >= 0 else 'FAILS'}; {_paired(get('dare_1'), get('twin'))})")
        if get("dare_1") and get("dare_1/2"):
            d = _mean(get("dare_1/2")["test_auc"]) - _mean(get("dare_1")["test_auc"])
            s1, s2 = _mean(get("dare_1")["search_ms_per_batch"]), _mean(get("dare_1/2")["search_ms_per_batch"])
            parts.append(f"half attention dim: AUC {d:+.4f} ({'holds' if d >= -0.001 else 'FAILS'}: loss <= 0.001; "
                         f"{_paired(get('dare_1/2'), get('dare_1'))}), "
                         f"search {s1:.1f} -> {s2:.1f} ms ({'faster' if s2 < s1 else 'NOT faster'})")
        if get("din") and get("din_plain"):
            d = _mean(get("din")["test_auc"]) - _mean(get("din_plain")["test_auc"])
            parts.append(f"DIN Dice+MBA - plain = {d:+.4f} ({'holds' if d >= 0 else 'FAILS'}; {_paired(get('din'), get('din_plain'))})")
        if parts:
            users = next(a["users"] for k, a in by.items() if k[:2] == (dataset, cfg))
            out.append(f"* {dataset} ({users} users, {json.loads(cfg)['epochs']} epoch(s)): " + "; ".join(parts))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
