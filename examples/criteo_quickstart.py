"""Quickstart: synthetic Criteo-like data -> DCN-v2 on TorchRec tables -> metrics vs. the oracle.

Generates a Criteo-format data set whose true click probabilities are known (so the best
possible AUC is known), trains DCN-v2 and a logistic-regression baseline with the same pipeline
as ``recsys-emb train``, and prints both next to the oracle ceiling. This is what ``make demo`` runs.

    python examples/criteo_quickstart.py --rows 300000 --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="training rows to generate (the last 10%% validate)")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default rows // 5)")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="folder for data and runs (replaced)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "criteo_dcnv2.yaml", help="model config")
    p.add_argument("--no-baseline", action="store_true", help="skip the logistic-regression baseline")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    return p.parse_args(argv)


def lift(auc: float, oracle_auc: float) -> float:
    """Share of the achievable AUC gain over chance: (AUC - 0.5) / (oracle AUC - 0.5)."""
    return (auc - 0.5) / (oracle_auc - 0.5)


def run(args: argparse.Namespace) -> dict:
    """Generate the data, train each model, and return the oracle and per-model test metrics."""
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.data.synthetic import synth_criteo
    from recsys_emb.train.tasks import train

    shutil.rmtree(args.out, ignore_errors=True)
    data_dir = args.out / "data"
    t0 = time.perf_counter()
    synth_criteo(data_dir, rows=args.rows, test_rows=args.test_rows or args.rows // 5, seed=args.seed)
    synth_seconds = time.perf_counter() - t0
    oracle = json.loads((data_dir / "oracle.json").read_text())
    print(f"[quickstart] generated {args.rows:,} train rows in {synth_seconds:.0f}s", file=sys.stderr)

    runs = [("dcnv2", args.config)] + ([] if args.no_baseline else [("lr", REPO / "configs" / "criteo_lr.yaml")])
    models = []
    for label, config in runs:
        data = [f"data.train={data_dir / 'train.txt.gz'}", f"data.test={data_dir / 'test.txt.gz'}",
                f"data.cache_dir={args.out / 'cache'}", f"train.seed={args.seed}"]
        cfg = load_config(ExperimentConfig, config, data + (args.overrides if label == "dcnv2" else []))
        t0 = time.perf_counter()
        result = train(cfg, args.out / label)
        models.append({
            "name": f"{cfg.model.name} ({Path(config).name})", "test": result["test"], "valid": result["valid"],
            "lift": lift(result["test"]["auc"], oracle["oracle_auc"]), "seconds": time.perf_counter() - t0,
            "samples_per_second": result["samples_per_second"], "epochs_completed": result["epochs_completed"],
        })
    truth = {"auc": oracle["oracle_auc"], "logloss": oracle["oracle_logloss"]}
    return {"rows": args.rows, "synth_seconds": synth_seconds, "oracle": truth, "models": models}


def format_table(summary: dict) -> str:
    """The metrics table printed by ``main`` (markdown-compatible)."""
    oracle = summary["oracle"]
    lines = ["| model | test AUC | test logloss | lift | train time |", "|---|---|---|---|---|",
             f"| oracle (true probabilities) | {oracle['auc']:.4f} | {oracle['logloss']:.4f} | 1.000 | |"]
    for m in summary["models"]:
        lines.append(f"| {m['name']} | {m['test']['auc']:.4f} | {m['test']['logloss']:.4f} | {m['lift']:.3f} | {m['seconds']:.0f}s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print()
    print(format_table(summary))
    print("\nlift = (AUC - 0.5) / (oracle AUC - 0.5): the share of the achievable AUC gain a model reaches.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
