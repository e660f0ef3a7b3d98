"""Size-aware training schedule: the batch size and epoch budget a run uses for its number of training rows.

A config tuned for tens of millions of rows (batch 2048, 3 epochs) gives a few thousand rows a handful of
optimizer steps (6,000 rows: 3 steps an epoch, 9 in all), far too few to train anything. Two optional
``train:`` keys size the schedule from the data, and leave large data untouched:

- ``min_steps_per_epoch: S``: the global batch is halved (not below :data:`MIN_BATCH_SIZE`) until an epoch
  has at least ``S`` steps;
- ``min_steps: N``: epochs are added beyond ``train.epochs`` until the run may take ``N`` steps (early
  stopping on the validation metric still ends it; ``max_steps`` / ``max_minutes`` still cap it).

Example (the shipped Criteo configs: ``batch_size: 2048, epochs: 3, min_steps_per_epoch: 20,
min_steps: 300``): 6,000 training rows -> batch 256, 24 steps an epoch, 13 epochs; 270,000 rows -> batch
2048, 132 steps an epoch, 3 epochs (as configured).
"""

from __future__ import annotations

import dataclasses
import math

from recsys_emb.config.experiment import TrainConfig

MIN_BATCH_SIZE = 64  # the smallest global batch min_steps_per_epoch halves down to


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``rows`` rows (the last, partial batch counts)."""
    return max(1, math.ceil(rows / batch_size))


def sized_schedule(tc: TrainConfig, rows: int, world_size: int = 1) -> TrainConfig:
    """``tc`` with ``batch_size`` and ``epochs`` sized to ``rows`` training rows (unchanged when neither
    ``min_steps_per_epoch`` nor ``min_steps`` is set, or when the data is large enough).

    Args:
        tc: the configured training settings.
        rows: training rows of one epoch.
        world_size: ranks; the batch is never below it (every rank needs a row).
    """
    batch, epochs = tc.batch_size, tc.epochs
    if tc.min_steps_per_epoch is not None:
        floor = max(MIN_BATCH_SIZE, world_size)
        while batch // 2 >= floor and steps_per_epoch(rows, batch) < tc.min_steps_per_epoch:
            batch //= 2
    if tc.min_steps is not None:
        epochs = max(epochs, math.ceil(tc.min_steps / steps_per_epoch(rows, batch)))
    if (batch, epochs) == (tc.batch_size, tc.epochs):
        return tc
    return dataclasses.replace(tc, batch_size=batch, epochs=epochs)
