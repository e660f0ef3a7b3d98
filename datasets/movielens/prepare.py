"""Prepare MovieLens-100K as CTR data (train/valid/test prepared directories).

A thin script over :func:`recsys_emb.data.movielens.run_movielens`. See datasets/movielens/README.md.

Example::

    python datasets/movielens/prepare.py --data ml-100k --out data/movielens_100k
"""

from __future__ import annotations

import argparse
import sys

from recsys_emb.data.movielens import add_movielens_arguments, run_movielens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_movielens_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; returns the exit status."""
    return run_movielens(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
