"""DIN, the coupled two-stage model and DARE on behaviour sequences, side by side.

Without ``--data`` it writes a small synthetic S3-Rec-format data set (users prefer two item
categories) into a temporary folder and says so; with ``--data FOLDER --dataset amazon_beauty`` it uses
the real Amazon files (see datasets/amazon_seq/README.md). A ``--data`` folder without the data set's
files stops the script at once (exit status 2) with where to download them. ``--data-path`` is the old
spelling of ``--data`` (accepted for one release, with a note).

    python examples/din_dare.py                                  # synthetic, ~35 s on 2 cores (example_timings.md)
    python examples/din_dare.py --data ../shared/datasets/amazon_seq_s3rec --dataset amazon_beauty \
        --max-users 3000 --epochs 2

What it shows:
* the same jagged KJT batch (histories of item / category / recency-position ids, no padding) feeds
  every model;
* the tables come from the ``embedding:`` section: no groups = one table per field (item, category,
  position) serving attention and representation; a group whose chain has the ``dare`` technique,
  ``{name: all, chain: [{dare: {attention_dim: 4}}]}``, swaps them for DARE's attention +
  representation tables (``attention_dim`` may be smaller than ``embedding_dim``); nothing else changes;
* test AUC / GAUC per model and the search-stage time of the two-stage models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.io import from_dict  # noqa: E402
from recsys_emb.console import deprecated_alias  # noqa: E402
from recsys_emb.data.availability import MissingDataError  # noqa: E402
from recsys_emb.data.sequences import (  # noqa: E402
    SequenceDataConfig, SequenceDataset, load_raw, require_sequence_data, write_synthetic_s3rec,
)
from recsys_emb.config.sequence import SequenceExperimentConfig  # noqa: E402
from recsys_emb.train.tasks.sequence import SequenceTask  # noqa: E402
from recsys_emb.train.trainer import fit  # noqa: E402

TWO_STAGE = {"name": "two_stage", "embedding_dim": 16, "two_stage": {"top_k": 20, "mlp": [64, 32]}}
PLAIN: dict = {"groups": []}  # one table per field, shared by attention and representation


def dare(attention_dim: int) -> dict:
    """DARE on every field: the ``dare`` chain entry builds attention and representation tables."""
    return {"groups": [{"name": "all", "chain": [{"dare": {"attention_dim": attention_dim}}]}]}


# label -> (model section, embedding section)
MODELS = {
    "DIN (Dice + MBA L2)": ({"name": "din", "embedding_dim": 8, "din": {"attention_hidden": [32], "mlp": [64, 32], "mba_lambda": 0.01}}, PLAIN),
    "two-stage, coupled": (TWO_STAGE, PLAIN),
    "DARE, attention dim 16": (TWO_STAGE, dare(16)),
    "DARE, attention dim 4": (TWO_STAGE, dare(4)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with S3-Rec / MovieLens files (default: synthetic data)")
    p.add_argument("--dataset", default="amazon_beauty", help="amazon_beauty | amazon_sports | movielens_100k (with --data)")
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    deprecated_alias(p, "--data-path", "--data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            print("data: synthetic S3-Rec-format sequences (pass --data FOLDER --dataset NAME for a real data set)")
            folder = write_synthetic_s3rec(Path(tmp) / "synth", users=1500, items=300, categories=12, seed=args.seed)
            data = {"dataset": "s3rec", "stem": "Synth", "path": str(folder)}
        else:
            data = {"dataset": args.dataset, "path": args.data}
        data.update(max_users=args.max_users, max_history=args.max_history, seed=args.seed)
        data_cfg = from_dict(SequenceDataConfig, data)
        try:
            require_sequence_data(data_cfg)  # the folder and the data set's files, before any parsing
        except MissingDataError as err:
            print(f"din_dare.py: error: {err}", file=sys.stderr)
            return 2
        dataset = SequenceDataset(load_raw(data_cfg), data_cfg)  # parsed once, shared by every model
        print(f"data: {dataset.summary()}")
        rows = []
        for label, (model, embedding) in MODELS.items():
            cfg = from_dict(SequenceExperimentConfig, {
                "task": "sequence", "name": label, "data": data, "model": model, "embedding": embedding,
                "train": {"epochs": args.epochs, "batch_size": 256, "eval_batch_size": 2048, "seed": args.seed, "tensorboard": False,
                          "num_threads": 1, "progress": not args.no_progress},
            })
            res = fit(SequenceTask(cfg, dataset=dataset), cfg, Path(tmp) / label)
            rows.append((label, res["test"]))
    print(f"\n{'model':<26} {'test AUC':>9} {'test GAUC':>10} {'search ms/batch':>16}")
    for label, test in rows:
        search = f"{test['search_ms_per_batch']:.2f}" if "search_ms_per_batch" in test else "-"
        print(f"{label:<26} {test['auc']:>9.4f} {test['gauc']:>10.4f} {search:>16}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
