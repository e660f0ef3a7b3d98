"""Real-data check: DCN-v2, DeepFM, DLRM and the logistic-regression baseline on the Criteo Kaggle head sample.

Protocol: the first 7,500 rows of Kaggle ``train.txt`` (``../shared/datasets/criteo_dac_kaggle_head``;
see datasets/criteo/README.md for the full files); the LAST 10% (750 rows, later in time) validate;
vocabulary with min-count 2 counted on the training rows, OOV/missing ids, log(1+x) dense features;
embedding dim 16; the same optimizer settings for every model; early stopping on validation AUC.
750 validation rows make single figures noisy, so every model runs with several seeds and the mean
and standard deviation are reported.

    python benchmarks/criteo_head.py [--data PATH] [--seeds 0 1 2]

Writes benchmarks/results/criteo_head.{json,md}.
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

from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.train.tasks import train  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "criteo_dac_kaggle_head" / "train_rows_00001-07500.txt.gz"
# Small data: smaller batches and more epochs than the full-data configs; identical for every model.
SMALL_DATA_OVERRIDES = [
    "train.batch_size=256", "train.epochs=15", "train.early_stopping_patience=2", "train.checkpoint_every_steps=null",
    "train.tensorboard=false", "data.min_count=2", "data.valid_fraction=0.1", "model.embedding_dim=16",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Criteo TSV(.gz) with labels")
    p.add_argument("--models", nargs="+", default=["dcnv2", "deepfm", "dlrm", "lr"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: pass --data with the Criteo head sample (see datasets/criteo/README.md)")

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            runs = []
            for seed in args.seeds:
                overrides = [f"data.train={args.data}", f"data.cache_dir={tmp}/cache", f"train.seed={seed}",
                             *SMALL_DATA_OVERRIDES, *args.overrides]
                cfg = load_config(ExperimentConfig, REPO / "configs" / f"criteo_{model}.yaml", overrides)
                t0 = time.perf_counter()
                result = train(cfg, Path(tmp) / f"{model}-{seed}")
                runs.append({"seed": seed, "valid": result["valid"], "train": result["train"],
                             "best_step": result["best_step"], "seconds": time.perf_counter() - t0})
            aucs = [r["valid"]["auc"] for r in runs]
            losses = [r["valid"]["logloss"] for r in runs]
            rows[model] = {
                "valid_auc_mean": statistics.mean(aucs), "valid_auc_std": statistics.pstdev(aucs),
                "valid_logloss_mean": statistics.mean(losses), "valid_logloss_std": statistics.pstdev(losses),
                "runs": runs,
            }
    base = rows.get("lr", {}).get("valid_auc_mean")
    result = {
        "benchmark": "criteo_head",
        "command": "python benchmarks/criteo_head.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": str(args.data), "protocol": "first 90% train, last 10% validation (temporal), min-count 2, dim 16",
        "overrides": SMALL_DATA_OVERRIDES + args.overrides, "models": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / "criteo_head.json", result)
    lines = [
        "# Criteo Kaggle head sample (7,500 rows): validation on the last 750 rows\n",
        f"Command: `{result['command'].strip()}`  \nProtocol: {result['protocol']}; seeds {args.seeds}; "
        f"overrides `{' '.join(SMALL_DATA_OVERRIDES + args.overrides)}`.\n",
        "| model | valid AUC (mean ± std) | valid logloss | AUC - LR AUC |",
        "|---|---|---|---|",
    ]
    for model, r in rows.items():
        delta = f"{r['valid_auc_mean'] - base:+.4f}" if base is not None else "n/a"
        lines.append(f"| {model} | {r['valid_auc_mean']:.4f} ± {r['valid_auc_std']:.4f} | "
                     f"{r['valid_logloss_mean']:.4f} ± {r['valid_logloss_std']:.4f} | {delta} |")
    atomic_write_text(args.out / "criteo_head.md", "\n".join(lines) + "\n")
    print(json.dumps({m: round(r["valid_auc_mean"], 4) for m, r in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
