"""Quality vs. the known ceiling: DCN-v2 and logistic regression on synthetic Criteo-like data.

Generates ``--rows`` training and ``--test-rows`` test rows with ``recsys-emb synth criteo`` (true
click probabilities known), trains DCN-v2 (configs/criteo_dcnv2.yaml, defaults) and the LR baseline
(configs/criteo_lr.yaml) exactly as ``examples/criteo_quickstart.py`` does, and reports test AUC,
logloss, lift = (AUC - 0.5) / (oracle AUC - 0.5) and wall time, side by side.

    python benchmarks/synthetic_oracle.py --rows 1000000 --test-rows 200000

Writes benchmarks/results/synthetic_oracle.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))

from criteo_quickstart import format_table, parse_args, run  # noqa: E402

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    own, rest = p.parse_known_args(argv if argv is not None else sys.argv[1:])
    args = parse_args(["--out", "runs/synthetic_oracle", *rest])
    summary = run(args)
    summary["command"] = "python benchmarks/synthetic_oracle.py " + " ".join(rest)
    summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    own.results.mkdir(parents=True, exist_ok=True)
    atomic_save_json(own.results / "synthetic_oracle.json", summary)
    md = (f"# Synthetic Criteo-like data: models vs. the oracle ceiling\n\nCommand: `{summary['command'].strip()}`  \n"
          f"{args.rows:,} training rows (last 10% validate), {args.test_rows or args.rows // 5:,} test rows; "
          f"machine: {summary['machine']['platform']}, {summary['machine']['cpus']} CPUs.\n\n{format_table(summary)}\n")
    atomic_write_text(own.results / "synthetic_oracle.md", md)
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
