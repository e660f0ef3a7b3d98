"""Dimension search: DNIS and OptEmbed on small synthetic Criteo-like data, ending in REAL smaller tables.

1. generate ``--rows`` synthetic Criteo-like rows (``recsys-emb synth criteo``) unless ``--train`` is given;
2. DNIS (configs/criteo_dnis_tiny.yaml): warm start, bi-level search, prune half of the values;
3. OptEmbed (configs/criteo_optembed_tiny.yaml): supernet with row thresholds, evolutionary dim search;
4. each result -> ``derive_tables()`` -> a compact model with mixed-dim stock tables and an id remap,
   saved as ``derived_config.yaml`` + ``layout.pt`` + ``derived_model.pt``, then reloaded here from
   those files alone and compared with the masked model.

    python examples/dimension_search.py                  # ~25 s on 2 CPU cores (benchmarks/results/example_timings.md)
    python examples/dimension_search.py --retrain        # also retrain the derived models (sharded loop)
    python examples/dimension_search.py --train train.txt.gz   # real Criteo rows (datasets/criteo/README.md)

A ``--train`` file that does not exist stops the script at once (exit status 2) with where to download
Criteo; without ``--train`` the data are synthetic, and the script says so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000, help="synthetic training rows to generate")
    p.add_argument("--train", help="use this Criteo TSV(.gz) or prepared folder instead of synthetic data")
    p.add_argument("--out", type=Path, default=Path("runs/dimension_search_example"), help="output folder")
    p.add_argument("--retrain", action="store_true", help="retrain the derived compact models")
    p.add_argument("--steps", type=int, default=100, help="search steps per phase")
    return p.parse_args(argv)


def reload_and_compare(run_dir: Path, searched_auc: float) -> float:
    """Build the derived model from its files only (as a fresh process would) and score it."""
    import torch

    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.search.common import CPU_ENV
    from recsys_emb.train.tasks.ctr import build_ctr_model, evaluate

    cfg = load_config(ExperimentConfig, run_dir / "derived_config.yaml")
    splits = resolve_data(cfg.data)
    model = build_ctr_model(cfg, splits["train"].open()[0])
    model.load_state_dict(torch.load(run_dir / "derived_model.pt", weights_only=True))
    auc = evaluate(model, splits["valid"], cfg.train.eval_batch_size, CPU_ENV)["auc"]
    print(f"  reloaded derived model: valid AUC {auc:.5f} (masked model: {searched_auc:.5f})")
    return auc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from recsys_emb.data.availability import MissingDataError, require_data

    train_path = args.train
    if train_path is not None and not Path(train_path).is_dir():  # a folder is a prepared directory
        try:
            require_data(train_path, "criteo", where="--train")
        except MissingDataError as err:
            print(f"dimension_search.py: error: {err}", file=sys.stderr)
            return 2
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.search.cli import run_search_experiment

    if train_path is None:
        from recsys_emb.data.synthetic import synth_criteo

        print(f"data: {args.rows:,} synthetic Criteo-like rows (pass --train FILE for real Criteo data)")
        data_dir = args.out / "data"
        if not (data_dir / "train.txt.gz").is_file():
            synth_criteo(data_dir, rows=args.rows, test_rows=args.rows // 5, seed=0)
        train_path = str(data_dir / "train.txt.gz")

    steps = args.steps
    settings = {
        "dnis": [f"embedding.groups.0.chain.0.dnis.search.warmup_steps={steps}", f"embedding.groups.0.chain.0.dnis.search.search_steps={steps}"],
        "optembed": [f"embedding.groups.0.chain.0.optembed.search.supernet_steps={2 * steps}", "embedding.groups.0.chain.0.optembed.search.budget=0.5"],
    }
    for technique, extra in settings.items():
        run_dir = args.out / technique
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(
            ExperimentConfig, REPO / "configs" / f"criteo_{technique}_tiny.yaml",
            [f"data.train={train_path}", "data.min_count=2", "model.embedding_dim=16", *extra],
        )
        report = run_search_experiment(cfg, technique, run_dir, retrain=args.retrain)
        masked = report["search"]["valid_pruned" if technique == "dnis" else "valid_searched"]["auc"]
        print(f"{technique}: embedding bytes {report['embedding_bytes_before']:,} -> {report['embedding_bytes_after']:,} "
              f"({report['compression']:.2f}x smaller), report in {run_dir / 'report.md'}")
        reload_and_compare(run_dir, masked)
        if "retrain" in report:
            print(f"  retrained derived model: valid AUC {report['retrain']['valid']['auc']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
