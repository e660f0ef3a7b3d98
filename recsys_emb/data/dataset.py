"""Batches over a prepared (columnar, memory-mapped) CTR data set.

A prepared directory (``recsys-emb prepare criteo``) holds ``dense.npy`` (N, D) float32,
``sparse.npy`` (N, F) int32 per-feature ids, ``labels.npy`` (N,) float32 and ``meta.json``. This
module turns row ranges of it into :class:`torchrec.datasets.utils.Batch` objects with a
feature-major :class:`~torchrec.KeyedJaggedTensor` (one id per bag), without re-parsing text.

Glossary: B = batch size, D = number of dense features, F = number of sparse features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

FORMAT_VERSION = 1


@dataclass
class PreparedCTRData:
    """A prepared CTR data set opened read-only with memory maps.

    Args:
        root: the prepared directory.
        meta: its parsed ``meta.json``.
        dense: (N, D) float32 memmap.
        sparse: (N, F) int32 memmap of per-feature ids.
        labels: (N,) float32 memmap, or None for unlabeled data (e.g. Kaggle test).
    """

    root: Path
    meta: dict
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def open(cls, root: str | Path) -> PreparedCTRData:
        """Open a prepared directory, checking its format version, array shapes and dtypes."""
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{root} is not a prepared data directory (no meta.json); "
                "prepare raw Criteo TSV with `recsys-emb prepare criteo --input FILE --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
                f"(expected {FORMAT_VERSION}); re-run `recsys-emb prepare`"
            )
        rows = int(meta["rows"])
        n_dense, n_sparse = len(meta["dense_features"]), len(meta["sparse_features"])

        def load(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (meta.json promises it)")
            array = np.load(path, mmap_mode="r")
            if array.dtype != dtype or array.shape != shape:
                raise ValueError(f"{path}: expected {np.dtype(dtype).name} {shape}, found {array.dtype} {array.shape}")
            return array

        dense = load("dense.npy", np.dtype(np.float32), (rows, n_dense))
        sparse = load("sparse.npy", np.dtype(np.int32), (rows, n_sparse))
        labels = load("labels.npy", np.dtype(np.float32), (rows,)) if meta.get("has_labels") else None
        return cls(root=root, meta=meta, dense=dense, sparse=sparse, labels=labels)

    def __len__(self) -> int:
        return int(self.meta["rows"])

    @property
    def dense_features(self) -> list[str]:
        return list(self.meta["dense_features"])

    @property
    def sparse_features(self) -> list[str]:
        return list(self.meta["sparse_features"])

    @property
    def vocab_sizes(self) -> list[int]:
        return [int(v) for v in self.meta["vocab_sizes"]]

    def batch(self, rows: np.ndarray | slice) -> Batch:
        """Build one :class:`Batch` from row indices (or a slice); unlabeled data get label -1."""
        dense = torch.from_numpy(np.array(self.dense[rows]))  # (B, D), a writable copy of the memmap rows
        ids = np.ascontiguousarray(self.sparse[rows].T)  # (F, B): feature-major
        batch_size = ids.shape[1]
        values = torch.from_numpy(ids.reshape(-1).astype(np.int64))  # (F * B,)
        lengths = torch.ones(len(self.sparse_features) * batch_size, dtype=torch.int64)  # one id per bag
        kjt = KeyedJaggedTensor(
            keys=self.sparse_features,
            values=values,
            lengths=lengths,
            stride=batch_size,
        )
        if self.labels is not None:
            labels = torch.from_numpy(np.array(self.labels[rows]))  # (B,)
        else:
            labels = torch.full((batch_size,), -1.0)
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)


class BatchIterator:
    """Yields :class:`Batch` objects over a row range of a :class:`PreparedCTRData`.

    Each epoch visits rows ``[start, stop)`` in an order that depends only on ``(seed, epoch)``, cut
    into GLOBAL batches of ``batch_size`` rows. With ``world_size`` ranks, every global batch is split
    into ``world_size`` contiguous parts and rank ``r`` yields part ``r``, so step ``s`` of a sharded
    run sees exactly the rows of step ``s`` of a one-process run, ranks see disjoint rows, and every
    rank yields the SAME number of batches (a sharded forward is a collective: a rank that ran out of
    batches would leave the others waiting).

    Part sizes: with ``equal_parts=True`` (training: TorchRec's sharded backward needs equal per-rank
    batch sizes) every part has ``len(global batch) // world_size`` rows and the at most
    ``world_size - 1`` leftover rows of a final, incomplete global batch are not used this epoch
    (:attr:`rows_left_out` counts them; with shuffling they are different rows every epoch). With
    ``equal_parts=False`` (evaluation: forward only) parts differ by at most one row and every row is
    used; a part may then be empty (0 rows) when a global batch has fewer rows than ranks.

    Args:
        data: the prepared data.
        batch_size: rows per GLOBAL batch (all ranks together).
        start, stop: the row range to use (default: all rows).
        shuffle: permute the rows every epoch; otherwise keep file order (evaluation).
        seed: base seed of the permutation.
        rank, world_size: this process' slice.
        drop_last: drop a final incomplete global batch.
        equal_parts: give every rank the same number of rows per batch (see above).
    """

    def __init__(
        self,
        data: PreparedCTRData,
        batch_size: int,
        *,
        start: int = 0,
        stop: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        equal_parts: bool = False,
    ) -> None:
        stop = len(data) if stop is None else stop
        if not 0 <= start <= stop <= len(data):
            raise ValueError(f"row range [{start}, {stop}) is outside the data's {len(data)} rows")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if equal_parts and batch_size % world_size:
            raise ValueError(
                f"global batch size {batch_size} is not divisible by the world size {world_size}: "
                f"ranks need equal batch sizes (choose a multiple of {world_size})"
            )
        self.data, self.batch_size = data, batch_size
        self.start, self.stop = start, stop
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.equal_parts = equal_parts

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def _bounds(self) -> list[tuple[int, int]]:
        """Row bounds (relative to ``start``) of this rank's part of every global batch."""
        bounds = []
        for lo in range(0, self.rows, self.batch_size):
            hi = min(lo + self.batch_size, self.rows)
            size = hi - lo
            if size < self.batch_size and self.drop_last:
                break
            if self.equal_parts:
                part = size // self.world_size
                if part == 0:
                    break
                bounds.append((lo + self.rank * part, lo + (self.rank + 1) * part))
            else:
                base, extra = divmod(size, self.world_size)
                a = lo + self.rank * base + min(self.rank, extra)
                bounds.append((a, a + base + (1 if self.rank < extra else 0)))
        return bounds

    def num_batches(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return len(self._bounds())

    @property
    def rows_left_out(self) -> int:
        """Rows per epoch no rank sees (``drop_last`` / ``equal_parts`` remainders), over all ranks."""
        used = 0
        for lo in range(0, self.rows, self.batch_size):
            size = min(self.batch_size, self.rows - lo)
            if size < self.batch_size and self.drop_last:
                break
            used += (size // self.world_size) * self.world_size if self.equal_parts else size
        return self.rows - used

    def epoch(self, epoch: int = 0, skip: int = 0) -> Iterator[Batch]:
        """Iterate over one epoch, skipping the first ``skip`` batches (for resuming)."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = self.start + rng.permutation(self.rows)
        else:
            order = None
        for lo, hi in self._bounds()[skip:]:
            if order is None:
                yield self.data.batch(slice(self.start + lo, self.start + hi))
            else:
                # Sorting the indices keeps memmap reads mostly sequential; order inside a batch is irrelevant.
                yield self.data.batch(np.sort(order[lo:hi]))
