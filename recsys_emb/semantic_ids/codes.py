"""Semantic-ID code tables: collision suffix, quality metrics, save/load.

Collision resolution (TIGER): items whose L RQ-VAE codes coincide get an extra suffix level
``0, 1, 2, ...`` in item order; all other items get suffix 0. The (L + 1)-level IDs are then unique
by construction, and the suffix level has as many codes as the largest collision group.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_emb.utils import atomic_write_bytes


def add_collision_suffix(codes: np.ndarray) -> np.ndarray:
    """(N, L) codes -> (N, L + 1) unique IDs: the last column counts earlier items with the same codes."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.shape[0]
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # groups together, item order inside a group
    group_sorted = inverse[order]
    starts = np.r_[0, np.nonzero(np.diff(group_sorted))[0] + 1]  # first position of each group
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - group_start
    return np.concatenate([codes, suffix[:, None]], axis=1)


def code_metrics(codes: np.ndarray, level_sizes: Sequence[int]) -> dict:
    """Quality of (N, L) codes (without suffix).

    Returns:
        ``collision_rate``: share of items whose L codes are shared with another item;
        ``unique_id_ratio``: distinct code tuples / items; ``max_collision``: largest group;
        ``usage`` per level: share of the level's K codes used; ``perplexity`` per level:
        exp(entropy) of the code distribution (K when perfectly balanced).
    """
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    if n == 0:
        return {"items": 0, "collision_rate": 0.0, "unique_id_ratio": 1.0, "max_collision": 0,
                "usage": [0.0] * levels, "perplexity": [0.0] * levels}
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    usage, perplexity = [], []
    for lvl in range(levels):
        hist = np.bincount(codes[:, lvl], minlength=int(level_sizes[lvl])).astype(np.float64)
        usage.append(float((hist > 0).sum() / level_sizes[lvl]))
        p = hist[hist > 0] / n
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return {
        "items": int(n),
        "collision_rate": float(shared.mean()),
        "unique_id_ratio": float(len(counts) / n),
        "max_collision": int(counts.max()),
        "usage": usage,
        "perplexity": perplexity,
    }


@dataclass
class SemanticIds:
    """Item keys and their unique semantic IDs.

    Attributes:
        keys: item keys; row ``i`` of ``codes`` is item ``keys[i]``.
        codes: (N, L + 1) int64; the last column is the collision suffix.
        level_sizes: codes per level (K for the RQ-VAE levels, the largest group for the suffix).
    """

    keys: list[str]
    codes: np.ndarray
    level_sizes: list[int]

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2 or self.codes.shape[0] != len(self.keys):
            raise ValueError(f"codes must be (items={len(self.keys)}, levels), got {self.codes.shape}")
        if self.codes.shape[1] != len(self.level_sizes):
            raise ValueError(f"{self.codes.shape[1]} code levels but {len(self.level_sizes)} level sizes")
        if self.codes.size and ((self.codes < 0).any() or (self.codes >= np.asarray(self.level_sizes)).any()):
            raise ValueError("codes out of range of level_sizes")

    @property
    def num_items(self) -> int:
        return len(self.keys)

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @classmethod
    def from_codes(cls, keys: Sequence[str], codes: np.ndarray, codebook_size: int | Sequence[int]) -> SemanticIds:
        """Add the collision suffix to (N, L) RQ-VAE codes."""
        codes = np.asarray(codes, dtype=np.int64)
        sizes = [int(codebook_size)] * codes.shape[1] if np.isscalar(codebook_size) else [int(k) for k in codebook_size]
        full = add_collision_suffix(codes)
        suffix_size = int(full[:, -1].max()) + 1 if len(full) else 1
        return cls(list(keys), full, sizes + [suffix_size])

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(self.keys, dtype=str), codes=self.codes,
                 level_sizes=np.asarray(self.level_sizes, dtype=np.int64))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> SemanticIds:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"semantic-ID file not found: {p} (write one with `recsys-emb sid assign`)")
        with np.load(p, allow_pickle=False) as f:
            return cls([str(k) for k in f["keys"]], f["codes"], [int(k) for k in f["level_sizes"]])

    def as_strings(self) -> list[str]:
        """IDs as ``<a_1><b_7><c_3><d_0>`` strings (level letters, as in MiniOneRec)."""
        letters = "abcdefghijklmnopqrstuvwxyz"
        return ["".join(f"<{letters[lvl]}_{c}>" for lvl, c in enumerate(row)) for row in self.codes.tolist()]
