"""Prepare Criteo TSV files (Kaggle DAC or Terabyte) for training.

A thin script over :func:`recsys_emb.data.criteo.run_prepare_criteo`; the same as
``recsys-emb prepare criteo``. See datasets/criteo/README.md.

Example::

    python datasets/criteo/prepare.py --data train.txt.gz --out data/criteo_kaggle
"""

from __future__ import annotations

import argparse
import sys

from recsys_emb.data.criteo import add_prepare_criteo_arguments, run_prepare_criteo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (the options of ``recsys-emb prepare criteo``).

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_prepare_criteo_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; returns the exit status.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.
    """
    return run_prepare_criteo(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
