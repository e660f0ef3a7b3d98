"""Unified Embedding (feature multiplexing) vs per-feature hashing vs collisionless, at equal bytes.

Quality: DCN-v2 test AUC (at the best validation step), mean +- std over seeds, at several byte
budgets given as fractions of the collisionless tables' bytes, on

* MovieLens-100K CTR (``recsys-emb prepare movielens``: genres MULTI-VALUED, a jagged bag per
  movie), configs/ml100k_unified.yaml;
* synthetic Criteo-like data (``recsys-emb synth criteo`` output folder, ``--synth DIR``: its
  ``train.txt.gz`` / ``test.txt.gz``, the last 10% of the training rows validate), with
  configs/criteo_unified.yaml.

Every run is ``recsys_emb.train.tasks.train`` -- the function ``recsys-emb train`` calls (DMP,
FBGEMM fused row-wise Adagrad on the tables, Adam on the dense part, validation + early stopping,
best-validation weights restored for the test) -- on the config plus ``--set``-style overrides; the
three layouts differ only in the options of the ``unified`` chain entry. Run folders are temporary (deleted after each
run); the JSON keeps every run's metrics.

Overhead: forward time of the multiplexed module (hash transform + lookup + regrouping) against a
plain ``EmbeddingBagCollection`` with one table of the same number of rows fed pre-hashed ids, on a
Criteo-shaped batch (26 features, one id per bag), measured in the same process.

    python benchmarks/unified_budget.py                                  # MovieLens + overhead
    recsys-emb synth criteo --rows 1120000 --test-rows 200000 --out runs/unified_budget/synth
    python benchmarks/unified_budget.py --skip-movielens --skip-overhead --synth runs/unified_budget/synth \
        --synth-set train.epochs=1 --synth-budgets 1 0.04 0.2 --max-runs 7   # resumable chunks

Results go to benchmarks/results/unified_budget.{json,md,png}; finished runs in the JSON are kept
and skipped when the command is repeated (so long sweeps can be run in chunks). Every sweep setting,
collision analysis and overhead entry records the hash it ran with (``HASH``); entries without it
come from the hash before the splitmix64 premix and the markdown labels them so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.data.dataset import PreparedCTRData  # noqa: E402
from recsys_emb.data.movielens import prepare_movielens_100k  # noqa: E402
from recsys_emb.data.resolve import resolve_data  # noqa: E402
from recsys_emb.train.tasks import train  # noqa: E402
from recsys_emb.train.tasks.ctr import build_ctr_model  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

# The hash of recsys_emb.modules.unified the entries are produced with (recorded in the JSON).
HASH = "splitmix64 premix + salted multilinear"
OLD_HASH = "old hash (before the splitmix64 premix), not re-run"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "movielens_100k", help="ml-100k folder")
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.2, 0.04], help="fractions of collisionless bytes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--movielens-name", default="movielens_100k", help="result label of the MovieLens sweep (to keep protocols apart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="MovieLens config overrides")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ml100k_unified.yaml")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (resume later)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-movielens", action="store_true")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--synth", type=Path, default=None, metavar="DIR",
                   help="a `recsys-emb synth criteo` output folder (train.txt.gz, test.txt.gz): run the sweep there too")
    p.add_argument("--synth-config", type=Path, default=REPO / "configs" / "criteo_unified.yaml")
    p.add_argument("--synth-set", action="append", default=[], metavar="KEY=VALUE", help="overrides of the synthetic run's config")
    p.add_argument("--synth-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--synth-budgets", type=float, nargs="+", default=None, help="budgets of the synthetic sweep (default: --budgets)")
    p.add_argument("--analyse", action="store_true",
                   help="with --synth: collision statistics of the hashed layouts on the synthetic training data (no training)")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="result JSONs of other chunks (e.g. run in parallel) to merge in")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the quality runs (1 = steadiest on a shared CPU)")
    return p.parse_args(argv)


def _rows(split) -> int:  # noqa: ANN001
    _, start, stop = split.open()
    return stop - start


def train_once(cfg: ExperimentConfig) -> dict:
    """One ``recsys-emb train`` run in a temporary folder; returns its metrics, table bytes and seconds."""
    data, _, _ = resolve_data(cfg.data)["train"].open()
    table_bytes = build_ctr_model(cfg, data, "meta").model.embedding.parameter_bytes()  # exact M * d * dtype
    with tempfile.TemporaryDirectory(prefix="unified_budget_") as tmp:
        start = time.perf_counter()
        m = train(cfg, Path(tmp) / "run")
        seconds = time.perf_counter() - start
    return {
        "test_auc": m["test"]["auc"], "test_logloss": m["test"]["logloss"], "valid_auc": m["valid"]["auc"],
        "train_auc": m["train"]["auc"], "train_logloss": m["train"]["logloss"], "best_step": m["best_step"], "steps": m["steps"],
        "epochs_completed": m["epochs_completed"], "stop_reason": m["stop_reason"], "table_bytes": table_bytes,
        "embedding_parameters": m["embedding_parameters"], "samples_per_second": m["samples_per_second"], "seconds": seconds,
    }


def sweep(name: str, config: Path, overrides: list[str], seeds: list[int], budgets: list[float],
          results: dict, save, budget: list[int]) -> None:  # noqa: ANN001
    """Train every (layout, budget, seed) not yet in ``results``; ``budget[0]`` counts the new runs left.

    Order: the collisionless runs of every seed, then budget by budget (in the given order) every seed
    of both layouts, so a sweep cut short has complete seed sets of the budgets it reached.
    """
    common = ["train.tensorboard=false", "train.device=cpu"]
    base = load_config(ExperimentConfig, config, [*overrides, *common])
    results.setdefault("settings", {})[name] = {
        "config": str(config.relative_to(REPO)), "overrides": [o for o in overrides if not o.startswith("data.")],
        "model": base.model.name, "embedding_dim": base.model.embedding_dim, "epochs": base.train.epochs,
        "early_stopping_patience": base.train.early_stopping_patience, "batch_size": base.train.batch_size,
        "budgets": budgets, "seeds": seeds, "train_rows": _rows(resolve_data(base.data)["train"]),
        "trainer": "recsys_emb.train.tasks.train (the `recsys-emb train` code path)", "hash": HASH,
    }
    jobs = [(("collisionless", None), seed) for seed in seeds]
    jobs += [((layout, b), seed) for b in budgets for seed in seeds for layout in ("multiplexed", "per_feature_hashing")]
    for (layout, fraction), seed in jobs:
        key = f"{name}|{layout}|{fraction}|{seed}"
        if key in results["runs"]:
            continue
        if budget[0] <= 0:
            return
        options = {"layout": layout, "hash_seed": seed, "budget_fraction": fraction}
        cfg = load_config(ExperimentConfig, config, [*overrides, *common, f"train.seed={seed}", f"embedding.groups.0.chain.0.unified={json.dumps(options)}"])
        r = train_once(cfg)
        r.update(dataset=name, layout=layout, budget_fraction=fraction, seed=seed)
        results["runs"][key] = r
        print(f"[unified-bench] {key}: test AUC {r['test_auc']:.4f} ({r['table_bytes']} B, {r['seconds']:.0f} s)", file=sys.stderr, flush=True)
        budget[0] -= 1
        save()


def run_quality(args: argparse.Namespace, results: dict, save) -> None:  # noqa: ANN001
    torch.set_num_threads(args.threads)
    budget = [args.max_runs if args.max_runs is not None else 10**9]
    if args.synth is not None:
        data = [f"data.train={args.synth / 'train.txt.gz'}", f"data.test={args.synth / 'test.txt.gz'}",
                f"data.cache_dir={args.synth / 'cache'}", "data.valid=null"]
        sweep("synthetic_criteo", args.synth_config, [*data, *args.synth_set], args.synth_seeds,
              args.synth_budgets or args.budgets, results, save, budget)
    if args.skip_movielens:
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare_movielens_100k(args.data, Path(tmp) / "ml100k")  # genres multi-valued (jagged bags)
        data = [f"data.{role}={p}" for role, p in paths.items()]
        sweep(args.movielens_name, args.config, [*data, *args.overrides], args.seeds, args.budgets, results, save, budget)


def collision_analysis(data: PreparedCTRData, dim: int, budgets: list[float], hash_seeds: list[int],
                       min_counts: tuple[int, ...] = (500, 5000)) -> dict:
    """How much of the training traffic on FREQUENT values shares a table row with another frequent value.

    For each hashed layout and budget, every (feature, id) of the training vocabulary is pushed
    through the layout's real hash transform (each of ``hash_seeds``, the seeds of the sweep). A value is "frequent" when it occurs at
    least ``c`` times in the training rows (``c`` in ``min_counts``; in the synthetic generator a
    value with ``n`` expected occurrences per 1M rows keeps ``n / (n + 5000)`` of its own effect, so
    500 ~ 9 % and 5000 = 50 %; rarer values carry ~only their column's shared tail effect, and merging
    them loses little). Reported: the number of frequent values, the table rows, the fraction of
    occurrences of frequent values whose row also holds another frequent value ("head collision
    traffic"), and the same fraction against ANY value of the vocabulary.
    """
    from torchrec import KeyedJaggedTensor

    from recsys_emb.modules.unified import UnifiedOptions, unified_from_tables
    from recsys_emb.train.tasks.ctr import table_configs

    tables = table_configs(data, dim)
    features, vocab = data.sparse_features, data.vocab_sizes
    counts = [np.bincount(np.asarray(data.jagged[name][0] if name in data.jagged else data.sparse[:, f]), minlength=v)
              for f, (name, v) in enumerate(zip(features, vocab))]  # occurrences of every id (jagged: every bag entry)
    stride = max(vocab)
    lengths = torch.cat([torch.cat([torch.ones(v, dtype=torch.int64), torch.zeros(stride - v, dtype=torch.int64)]) for v in vocab])
    kjt = KeyedJaggedTensor(keys=features, values=torch.cat([torch.arange(v) for v in vocab]), lengths=lengths, stride=stride)
    out: dict = {"min_counts": list(min_counts), "vocab_total": int(sum(vocab)), "rows": int(len(data)), "layouts": [], "hash": HASH}
    for fraction, layout, seed in [(b, lay, h) for b in budgets for lay in ("multiplexed", "per_feature_hashing") for h in hash_seeds]:
        emb = unified_from_tables(UnifiedOptions(layout=layout, budget_fraction=fraction, hash_seed=seed), tables)
        hashed = emb.lookup.transform(kjt).to_dict()
        sizes = {c.name: c.num_embeddings for c in emb.embedding_bag_configs()}
        table_of = {f: c.name for c in emb.embedding_bag_configs() for f in c.feature_names}
        offset, base = {}, 0
        for name, size in sizes.items():  # one global row id per (table, row)
            offset[name] = base
            base += size
        assert list(hashed) == [f"{f}@0" for f in features], list(hashed)  # one probe per feature
        rows = [hashed[k].values().numpy() + offset[table_of[k]] for k in hashed]  # per feature, ids 0..vocab-1 in order
        entry = {"layout": layout, "budget_fraction": fraction, "hash_seed": seed, "table_rows": int(sum(sizes.values())), "by_min_count": {}}
        all_rows = np.concatenate(rows)
        occupancy = np.bincount(all_rows, minlength=base)  # vocabulary values per row
        for c in min_counts:
            frequent = [cnt >= c for cnt in counts]
            f_rows = np.concatenate([r[m] for r, m in zip(rows, frequent)])
            f_cnt = np.concatenate([cnt[m] for cnt, m in zip(counts, frequent)]).astype(np.float64)
            f_occ = np.bincount(f_rows, minlength=base)
            f_feat = np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(frequent)])
            per_row_feature = np.unique(f_rows * len(features) + f_feat, return_counts=True)[1]
            # birthday reference for a uniform hash: value of table t collides w.p. 1 - (1 - 1/R_t)^(n_t - 1)
            n_t = {name: 0 for name in sizes}
            for f, m in zip(features, frequent):
                n_t[table_of[f"{f}@0"]] += int(m.sum())
            expected = sum(n * (1 - (1 - 1 / sizes[t]) ** max(n - 1, 0)) for t, n in n_t.items()) / max(len(f_rows), 1)
            entry["by_min_count"][str(c)] = {
                "frequent_values": int(len(f_rows)),
                "traffic_share_of_frequent": float(f_cnt.sum() / sum(int(cnt.sum()) for cnt in counts)),
                "head_collision_traffic": float(f_cnt[f_occ[f_rows] > 1].sum() / max(f_cnt.sum(), 1.0)),
                "any_collision_traffic": float(f_cnt[occupancy[f_rows] > 1].sum() / max(f_cnt.sum(), 1.0)),
                "head_collision_values": float((f_occ[f_rows] > 1).mean()) if len(f_rows) else 0.0,
                "head_collision_values_birthday": float(expected),
                "colliding_pairs": int((f_occ * (f_occ - 1) // 2).sum()),
                "same_feature_pairs": int((per_row_feature * (per_row_feature - 1) // 2).sum()),
            }
        out["layouts"].append(entry)
    return out


def run_overhead(results: dict, repeats: int = 20) -> None:
    """Forward time: multiplexed module vs a plain one-table EBC on pre-hashed ids (same rows)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

    from recsys_emb.modules.unified import MultiplexGroup, UnifiedEmbeddingBagCollection

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    features, batch, rows, dim = [f"C{i}" for i in range(1, 27)], 4096, 1_000_000, 16
    unified = UnifiedEmbeddingBagCollection([MultiplexGroup("unified", features, rows)], chunk_dim=dim)
    plain = EmbeddingBagCollection([EmbeddingBagConfig(name="unified", embedding_dim=dim, num_embeddings=rows, feature_names=unified.lookup.transform.output_keys)])
    plain.load_state_dict(unified.lookup.ebc.state_dict())
    g = torch.Generator().manual_seed(0)
    kjt = KeyedJaggedTensor(keys=features, values=torch.randint(0, 10**12, (26 * batch,), generator=g), lengths=torch.ones(26 * batch, dtype=torch.int64), stride=batch)
    hashed = unified.lookup.transform(kjt)
    assert torch.equal(plain(hashed).values(), unified(kjt).values())

    def timed(fn) -> float:  # noqa: ANN001
        fn()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    with torch.no_grad():
        t_plain = timed(lambda: plain(hashed))
        t_unified = timed(lambda: unified(kjt))
        t_hash = timed(lambda: unified.lookup.transform(kjt))
    results["overhead"] = {
        "batch": batch, "features": 26, "rows": rows, "dim": dim, "threads": torch.get_num_threads(), "repeats": repeats,
        "plain_ebc_ms": 1e3 * t_plain, "unified_ms": 1e3 * t_unified, "hash_transform_ms": 1e3 * t_hash,
        "overhead_ratio": t_unified / t_plain, "hash": HASH,
    }


def summarize(results: dict) -> list[dict]:
    groups: dict[tuple[str, str, float | None], list[dict]] = {}
    for r in results["runs"].values():
        groups.setdefault((r["dataset"], r["layout"], r["budget_fraction"]), []).append(r)
    rows = []
    for (dataset, layout, budget), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], -(kv[0][2] or 2.0), kv[0][1])):
        aucs = [r["test_auc"] for r in runs]
        rows.append({"dataset": dataset, "layout": layout, "budget_fraction": budget, "table_bytes": runs[0]["table_bytes"], "n": len(aucs),
                     "test_auc_mean": statistics.mean(aucs), "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0})
    return rows


def gap_rows(results: dict, dataset: str) -> list[dict]:
    """Paired (same seed) AUC differences multiplexed - per-feature hashing, per budget."""
    runs = results["runs"]
    out = []
    for b in sorted({r["budget_fraction"] for r in runs.values() if r["dataset"] == dataset and r["budget_fraction"] is not None}, reverse=True):
        diffs = [runs[f"{dataset}|multiplexed|{b}|{s}"]["test_auc"] - runs[f"{dataset}|per_feature_hashing|{b}|{s}"]["test_auc"]
                 for s in sorted({r["seed"] for r in runs.values() if r["dataset"] == dataset})
                 if f"{dataset}|multiplexed|{b}|{s}" in runs and f"{dataset}|per_feature_hashing|{b}|{s}" in runs]
        if diffs:
            out.append({"budget_fraction": b, "n": len(diffs), "gap_mean": statistics.mean(diffs),
                        "gap_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0})
    return out


def markdown(results: dict) -> str:
    lines = ["# Unified Embedding vs baselines at equal bytes", "",
             "Commands (chunks of one resumable sweep): " + ", ".join(f"`{c}`" for c in results["commands"]) + "  ",
             f"Machine: {results['machine']} (shared by other jobs: wall times are distorted).", ""]
    for dataset, s in sorted(results.get("settings", {}).items()):
        if "model" not in s:
            continue
        lines += [f"## {dataset}", "", f"{s['model']} ({s['config']} {' '.join(s.get('overrides', []))}), embedding dim {s['embedding_dim']}, "
                  f"{s['train_rows']:,} training rows, at most {s['epochs']} epoch(s) (early-stopping patience "
                  f"{s['early_stopping_patience']}; test AUC at the best validation step), batch {s['batch_size']}, "
                  f"seeds {s['seeds']}; trainer: {s['trainer']}; hash: {s.get('hash', '**' + OLD_HASH + '**')}.", "",
                  "| layout | budget (x collisionless) | table bytes | runs | test AUC (mean +- std) |", "|---|---|---|---|---|"]
        for r in summarize(results):
            if r["dataset"] != dataset:
                continue
            budget = "1 (full)" if r["budget_fraction"] is None else f"{r['budget_fraction']:g}"
            lines.append(f"| {r['layout']} | {budget} | {r['table_bytes']:,} | {r['n']} | {r['test_auc_mean']:.4f} +- {r['test_auc_std']:.4f} |")
        lines.append("")
        gaps = gap_rows(results, dataset)
        if gaps:
            lines += ["Multiplexed minus per-feature hashing, same seeds (AUC points, mean +- std of the paired differences):", "",
                      "| budget | gap | pairs |", "|---|---|---|"]
            lines += [f"| {g['budget_fraction']:g} | {100 * g['gap_mean']:+.2f} +- {100 * g['gap_std']:.2f} | {g['n']} |" for g in gaps]
            lines.append("")
    for key, title in (("synthetic_analysis", "Synthetic data"), ("movielens_analysis", "MovieLens-100K")):
        if key not in results:
            continue
        a = results[key]
        lines += [f"## {title}: collisions of frequent values", "", f"Hash: {a.get('hash', '**' + OLD_HASH + '**')}.", "",
                  f"Training split ({a['rows']:,} rows, {a['vocab_total']:,} vocabulary ids), "
                  "every id pushed through the layout's hash (the hash seeds of the sweep). `frequent` = at least c occurrences in training; "
                  "`head coll.` = share of the frequent values' occurrences whose row also holds another frequent value; "
                  "`any coll.` = ... another value of any frequency; `values coll. (birthday)` = share of the frequent VALUES "
                  "colliding with another frequent value, and its expectation under a uniform random hash (a degenerate hash "
                  "would show far more).", "",
                  "| layout | budget | hash seed | table rows | c | frequent values | their traffic share | head coll. | any coll. | values coll. (birthday) | frequent pairs in one row / of them same feature |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in a["layouts"]:
            for c, m in e["by_min_count"].items():
                lines.append(f"| {e['layout']} | {e['budget_fraction']:g} | {e['hash_seed']} | {e['table_rows']:,} | {c} | {m['frequent_values']:,} | "
                             f"{m['traffic_share_of_frequent']:.3f} | {m['head_collision_traffic']:.3f} | {m['any_collision_traffic']:.3f} | "
                             f"{m['head_collision_values']:.3f} ({m['head_collision_values_birthday']:.3f}) | "
                             f"{m['colliding_pairs']} / {m['same_feature_pairs']} |")
        lines.append("")
    if "overhead" in results:
        o = results["overhead"]
        lines += ["## Lookup overhead", "", f"Hash: {o.get('hash', '**' + OLD_HASH + '**')}. Forward, batch {o['batch']}, {o['features']} features, {o['rows']:,} rows x {o['dim']}, "
                  f"{o['threads']} threads, median of {o['repeats']}: plain EBC on pre-hashed ids {o['plain_ebc_ms']:.2f} ms, "
                  f"unified (hash + lookup + regroup) {o['unified_ms']:.2f} ms (x{o['overhead_ratio']:.2f}), "
                  f"hash transform alone {o['hash_transform_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in summarize(results)})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for layout, marker in (("multiplexed", "o"), ("per_feature_hashing", "s"), ("collisionless", "*")):
            rows = sorted((r for r in summarize(results) if r["layout"] == layout and r["dataset"] == dataset), key=lambda r: r["table_bytes"])
            if rows:
                ax.errorbar([r["table_bytes"] for r in rows], [r["test_auc_mean"] for r in rows],
                            yerr=[r["test_auc_std"] for r in rows], marker=marker, capsize=3, label=layout)
        ax.set_xscale("log")
        ax.set_xlabel("embedding table bytes")
        ax.set_ylabel("test AUC")
        old = "" if results["settings"][dataset].get("hash") else "\n(old hash, before the splitmix64 premix)"
        ax.set_title(f"{dataset}, {results['settings'][dataset]['model']}{old}", fontsize=9 if old else None)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "unified_budget.json"
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    command = "python benchmarks/unified_budget.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["commands"] = [*results.get("commands", []), command.strip()]  # every (chunked) invocation, in order
    results.pop("command", None)
    results["machine"] = f"{platform.platform()}, {os.cpu_count()} CPUs"

    def save() -> None:
        atomic_save_json(out, results)

    if not args.skip_overhead:
        run_overhead(results)
        save()
    for other in args.merge:  # runs of chunks run in parallel into other result files
        extra = json.loads(other.read_text())
        results["runs"].update(extra["runs"])
        results.setdefault("settings", {}).update(extra.get("settings", {}))
        results["commands"] = [*extra.get("commands", []), *results["commands"]]
        for key in ("synthetic_analysis", "movielens_analysis", "overhead"):
            if key in extra:
                results[key] = extra[key]
    if args.analyse and args.synth is not None:
        cfg = load_config(ExperimentConfig, args.synth_config, [f"data.train={args.synth / 'train.txt.gz'}", f"data.test={args.synth / 'test.txt.gz'}",
                                                                f"data.cache_dir={args.synth / 'cache'}", "data.valid=null", *args.synth_set])
        train_data, _, stop = resolve_data(cfg.data)["train"].open()
        results["synthetic_analysis"] = collision_analysis(train_data, cfg.model.embedding_dim, args.synth_budgets or args.budgets, args.synth_seeds)
        save()
    if args.analyse and not args.skip_movielens:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(ExperimentConfig, args.config, args.overrides)
            data = PreparedCTRData.open(prepare_movielens_100k(args.data, Path(tmp) / "ml100k")["train"])
            results["movielens_analysis"] = collision_analysis(data, cfg.model.embedding_dim, args.budgets, args.seeds, min_counts=(50, 500))
        save()
    if not args.skip_quality:
        run_quality(args, results, save)
    save()
    if results["runs"]:
        plot(results, args.results / "unified_budget.png")
    atomic_write_text(args.results / "unified_budget.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
