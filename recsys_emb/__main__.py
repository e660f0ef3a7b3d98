"""``python -m recsys_emb`` == ``recsys-emb`` (also works under ``torchrun -m recsys_emb``)."""

from recsys_emb.cli import run

run()
