"""``python -m recsys_emb`` == ``recsys-emb`` (also works under ``torchrun -m recsys_emb``)."""

import sys

from recsys_emb.cli import main

sys.exit(main())
