"""Unified Embedding (feature multiplexing) on MovieLens-100K: one shared table vs per-feature hashing.

1. Prepares MovieLens-100K as CTR data (rating >= 4 -> 1, <= 2 -> 0, 3 dropped; 80/10/10 split).
2. Shows what the module does on one batch: raw ids -> salted rows of the shared table -> one
   pooled vector per feature, and the exact table bytes.
3. Trains DCN-v2 with ``recsys_emb.train.tasks.train`` (the pipeline of ``recsys-emb train``) three
   times at the same byte budget: multiplexed (one shared table), per-feature hashing (budget split by
   vocabulary size), and the collisionless full tables for reference; prints test AUC and bytes.

    python examples/unified_embedding.py --data PATH/ml-100k --budget 0.04 --epochs 1

``--data`` defaults to ``../shared/datasets/movielens_100k`` (the project machines' copy). Without the
data the script stops at once (exit status 2) and says where to download ``ml-100k.zip``
(datasets/movielens/README.md). The default run takes about 15 s on 2 cores (benchmarks/results/example_timings.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "movielens_100k", help="the ml-100k folder")
    p.add_argument("--out", type=Path, default=Path("runs/unified_example"), help="folder for data and runs (replaced)")
    p.add_argument("--budget", type=float, default=0.04, help="table bytes as a fraction of the collisionless tables")
    p.add_argument("--probes", type=int, default=1, help="probes per feature (1 = the paper's Table 1 setting)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def show_one_batch(train_dir: Path, budget: float, probes: int) -> None:
    """Print the hashed rows of one batch and the module's byte report."""
    from recsys_emb.data.dataset import PreparedCTRData
    from recsys_emb.modules.spec import build_embedding
    from recsys_emb.train.tasks.ctr import table_configs

    data = PreparedCTRData.open(train_dir)
    tables = table_configs(data, embedding_dim=16)  # the plain per-feature tables the model would use
    module = build_embedding([{"unified": {"budget_fraction": budget, "probes": probes}}], tables)
    batch = data.batch(slice(0, 4))
    hashed = module.lookup.transform(batch.sparse_features)  # KJT over the shared table's rows
    print("raw ids (first row):   ", {k: int(v.values()[0]) for k, v in batch.sparse_features.to_dict().items()})
    print("shared rows (first row):", {k: int(v.values()[0]) for k, v in hashed.to_dict().items()})
    pooled = module(batch.sparse_features)  # KeyedTensor, one key per original feature
    print("output dims:", module.output_feature_dims(), "values", tuple(pooled.values().shape))
    print("bytes:", json.dumps(module.byte_report()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from recsys_emb.data.availability import MissingDataError, require_data

    try:
        require_data(args.data, "movielens", where="--data")  # before anything is written or trained
    except MissingDataError as err:
        print(f"unified_embedding.py: error: {err}", file=sys.stderr)
        return 2
    import torch

    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.data.movielens import prepare_movielens_100k
    from recsys_emb.train.tasks import train

    shutil.rmtree(args.out, ignore_errors=True)
    paths = prepare_movielens_100k(args.data, args.out / "data", seed=args.seed)
    show_one_batch(paths["train"], args.budget, args.probes)

    layouts = {
        "multiplexed": {"layout": "multiplexed", "budget_fraction": args.budget, "probes": args.probes},
        "per_feature_hashing": {"layout": "per_feature_hashing", "budget_fraction": args.budget, "probes": args.probes},
        "collisionless": {"layout": "collisionless"},
    }
    results = {}
    for name, options in layouts.items():
        cfg = load_config(
            ExperimentConfig,
            REPO / "configs" / "ml100k_unified.yaml",
            [*(f"data.{role}={p}" for role, p in paths.items()), f"train.epochs={args.epochs}", f"train.seed={args.seed}",
             "train.tensorboard=false", f"embedding.groups.0.chain.0.unified={json.dumps({**options, 'hash_seed': args.seed})}"],
        )
        torch.manual_seed(args.seed)
        metrics = train(cfg, args.out / name)
        results[name] = {"test_auc": round(metrics["test"]["auc"], 4), "table_parameters": metrics["embedding_parameters"]}
    print(f"\nDCN-v2 on MovieLens-100K, budget {args.budget:g} x collisionless bytes, {args.epochs} epoch(s):")
    for name, r in results.items():
        print(f"  {name:20s} test AUC {r['test_auc']:.4f}   table floats {r['table_parameters']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
