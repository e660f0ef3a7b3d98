"""Unified Embedding (feature multiplexing) vs per-feature hashing vs collisionless, at equal bytes.

Quality: DCN-v2 on MovieLens-100K CTR (recsys_emb/data/movielens.py), test AUC at the epoch of best
validation AUC, mean +- std over seeds, at several byte budgets given as fractions of the
collisionless tables' bytes. All three layouts are the same module (``embedding.type: unified``)
built through the registry and the trainer's own model builder; training is a short plain-PyTorch
loop on the unsharded model (Adagrad on the tables, Adam on the dense part) so that many short runs
fit on a small CPU machine, not ``recsys-emb train`` (which adds DMP, checkpoints and train-split
re-scoring per run).

Overhead: forward time of the multiplexed module (hash transform + lookup + regrouping) against a
plain ``EmbeddingBagCollection`` with one table of the same number of rows fed pre-hashed ids, on a
Criteo-shaped batch (26 features, one id per bag), measured in the same process.

    python benchmarks/unified_budget.py --data /path/to/ml-100k            # quality + overhead
    python benchmarks/unified_budget.py --data /path/to/ml-100k --max-runs 8  # resumable chunks

Results go to benchmarks/results/unified_embedding.{json,md,png}; finished runs in the JSON are kept
and skipped when the command is repeated (so long sweeps can be run in chunks).
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

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.data.dataset import BatchIterator, PreparedCTRData  # noqa: E402
from recsys_emb.data.movielens import prepare_movielens_100k  # noqa: E402
from recsys_emb.train.loop import build_ctr_model  # noqa: E402
from recsys_emb.train.metrics import CTRMetrics  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "movielens_100k", help="ml-100k folder")
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.2, 0.04], help="fractions of collisionless bytes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ml100k_unified.yaml")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (resume later)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-movielens", action="store_true")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--criteo", type=Path, nargs=3, default=None, metavar=("TRAIN", "VALID", "TEST"),
                   help="prepared Criteo-format dirs (e.g. synthetic, `recsys-emb synth criteo` + prepare): run the sweep there too")
    p.add_argument("--criteo-config", type=Path, default=REPO / "configs" / "criteo_unified.yaml")
    p.add_argument("--criteo-set", action="append", default=[], metavar="KEY=VALUE", help="overrides of the Criteo config")
    p.add_argument("--criteo-epochs", type=int, default=1)
    p.add_argument("--criteo-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-progress", action="store_true", help="hide the per-epoch progress bars")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the quality runs (1 = steadiest on a shared CPU)")
    return p.parse_args(argv)


def evaluate(model: torch.nn.Module, data: PreparedCTRData) -> float:
    model.eval()
    metrics = CTRMetrics()
    with torch.no_grad():
        for batch in BatchIterator(data, 8192).epoch():
            _, (_, logits, labels) = model(batch)
            metrics.update(logits, labels)
    model.train()
    return metrics.compute()["auc"]


def train_once(cfg: ExperimentConfig, splits: dict[str, PreparedCTRData], epochs: int, seed: int, progress: bool = True) -> dict[str, float]:
    """Short training run; returns best-valid epoch, its valid/test AUC, table bytes and seconds."""
    torch.manual_seed(seed)
    model = build_ctr_model(cfg, splits["train"], "cpu")
    emb = model.model.embedding
    table_params = [p for n, p in model.named_parameters() if "embedding_bags" in n]
    ids = {id(p) for p in table_params}
    dense_params = [p for p in model.parameters() if id(p) not in ids]
    opt_tables = torch.optim.Adagrad(table_params, lr=cfg.train.embedding_optimizer.lr)
    opt_dense = torch.optim.Adam(dense_params, lr=cfg.train.dense_optimizer.lr)
    loader = BatchIterator(splits["train"], cfg.train.batch_size, shuffle=True, seed=seed)
    best = {"valid_auc": -1.0}
    start = time.perf_counter()
    for epoch in range(epochs):
        bar = tqdm(loader.epoch(epoch), total=loader.num_batches(), desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
        for batch in bar:
            loss, _ = model(batch)
            opt_tables.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_tables.step()
            opt_dense.step()
        valid = evaluate(model, splits["valid"])
        if valid > best["valid_auc"]:
            best = {"valid_auc": valid, "test_auc": evaluate(model, splits["test"]), "epoch": epoch + 1}
    best["seconds"] = time.perf_counter() - start
    best["table_bytes"] = emb.parameter_bytes()
    best["deepfm_first_order_excluded"] = cfg.model.name == "deepfm"
    return best


def sweep(name: str, splits: dict[str, PreparedCTRData], config: Path, overrides: list[str], epochs: int, seeds: list[int],
          args: argparse.Namespace, results: dict, save, budget: list[int]) -> None:  # noqa: ANN001
    """Train every (seed, layout, budget) not yet in ``results``; ``budget[0]`` counts the new runs left."""
    base = load_config(ExperimentConfig, config, overrides)
    results.setdefault("settings", {})[name] = {
        "config": str(config.relative_to(REPO)), "overrides": overrides, "model": base.model.name,
        "embedding_dim": base.model.embedding_dim, "epochs": epochs, "batch_size": base.train.batch_size,
        "budgets": args.budgets, "seeds": seeds, "train_rows": len(splits["train"]),
    }
    jobs = [("collisionless", None)] + [(layout, b) for b in args.budgets for layout in ("multiplexed", "per_feature_hashing")]
    for seed in seeds:
        for layout, fraction in jobs:
            key = f"{layout}|{fraction}|{seed}" if name == "movielens_100k" else f"{name}|{layout}|{fraction}|{seed}"
            if key in results["runs"]:
                continue
            if budget[0] <= 0:
                return
            options = {"layout": layout, "hash_seed": seed}
            if fraction is not None:
                options["budget_fraction"] = fraction
            cfg = load_config(ExperimentConfig, config, [*overrides, f"embedding.options={json.dumps(options)}"])
            r = train_once(cfg, splits, epochs, seed, progress=not args.no_progress)
            r.update(dataset=name, layout=layout, budget_fraction=fraction, seed=seed)
            results["runs"][key] = r
            print(f"[unified-bench] {key}: test AUC {r['test_auc']:.4f} ({r['table_bytes']} B, {r['seconds']:.0f} s)", file=sys.stderr)
            budget[0] -= 1
            save()


def run_quality(args: argparse.Namespace, results: dict, save) -> None:  # noqa: ANN001
    torch.set_num_threads(args.threads)
    budget = [args.max_runs if args.max_runs is not None else 10**9]
    if args.criteo is not None:
        splits = {role: PreparedCTRData.open(p) for role, p in zip(("train", "valid", "test"), args.criteo)}
        sweep("synthetic_criteo", splits, args.criteo_config, args.criteo_set, args.criteo_epochs, args.criteo_seeds, args, results, save, budget)
    if args.skip_movielens:
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare_movielens_100k(args.data, Path(tmp) / "ml100k")
        splits = {role: PreparedCTRData.open(p) for role, p in paths.items()}
        sweep("movielens_100k", splits, args.config, [], args.epochs, args.seeds, args, results, save, budget)


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
        "overhead_ratio": t_unified / t_plain,
    }


def summarize(results: dict) -> list[dict]:
    groups: dict[tuple[str, str, float | None], list[dict]] = {}
    for r in results["runs"].values():
        groups.setdefault((r.get("dataset", "movielens_100k"), r["layout"], r["budget_fraction"]), []).append(r)
    rows = []
    for (dataset, layout, budget), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], -(kv[0][2] or 2.0), kv[0][1])):
        aucs = [r["test_auc"] for r in runs]
        rows.append({"dataset": dataset, "layout": layout, "budget_fraction": budget, "table_bytes": runs[0]["table_bytes"], "n": len(aucs),
                     "test_auc_mean": statistics.mean(aucs), "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0})
    return rows


def markdown(results: dict) -> str:
    lines = ["# Unified Embedding vs baselines at equal bytes", "",
             "Commands (chunks of one resumable sweep): " + ", ".join(f"`{c}`" for c in results["commands"]) + "  ",
             f"Machine: {results['machine']} (shared by other jobs: wall times are distorted).", ""]
    for dataset, s in sorted(results.get("settings", {}).items()):
        if "model" not in s:
            continue
        lines += [f"## {dataset}", "", f"{s['model']} ({s['config']} {' '.join(s.get('overrides', []))}), embedding dim {s['embedding_dim']}, "
                  f"{s['train_rows']:,} training rows, {s['epochs']} epoch(s) (test AUC at best valid epoch), batch {s['batch_size']}, "
                  f"seeds {s['seeds']}.", "",
                  "| layout | budget (x collisionless) | table bytes | runs | test AUC (mean +- std) |", "|---|---|---|---|---|"]
        for r in summarize(results):
            if r["dataset"] != dataset:
                continue
            budget = "1 (full)" if r["budget_fraction"] is None else f"{r['budget_fraction']:g}"
            lines.append(f"| {r['layout']} | {budget} | {r['table_bytes']:,} | {r['n']} | {r['test_auc_mean']:.4f} +- {r['test_auc_std']:.4f} |")
        lines.append("")
    if "overhead" in results:
        o = results["overhead"]
        lines += ["## Lookup overhead", "", f"Forward, batch {o['batch']}, {o['features']} features, {o['rows']:,} rows x {o['dim']}, "
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
        ax.set_title(f"{dataset}, {results['settings'][dataset]['model']}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "unified_embedding.json"
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
    if not args.skip_quality:
        run_quality(args, results, save)
    save()
    if results["runs"]:
        plot(results, args.results / "unified_embedding.png")
    atomic_write_text(args.results / "unified_embedding.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
