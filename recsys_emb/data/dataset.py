"""Batches over a prepared (columnar, memory-mapped) CTR data set.

A prepared directory (``recsys-emb prepare criteo``) holds ``dense.npy`` (N, D) float32,
``sparse.npy`` (N, F) int32 per-feature ids, ``labels.npy`` (N,) float32 and ``meta.json``. This
module turns row ranges of it into :class:`torchrec.datasets.utils.Batch` objects with a
feature-major :class:`~torchrec.KeyedJaggedTensor`, without re-parsing text.

Multi-valued (jagged) features, format version 2 (e.g. MovieLens genres, ``recsys-emb prepare
movielens``): ``meta.json`` lists them in ``jagged_features``; they come LAST in ``sparse_features``
(so column ``i`` of ``sparse.npy`` is still ``sparse_features[i]`` for the single-valued ones, and
``sparse.npy`` has ``F - J`` columns). Each is stored CSR-style as ``jagged/<name>.values.npy``
(nnz,) int32 ids and ``jagged/<name>.offsets.npy`` (N + 1,) int64: row ``r`` has the bag
``values[offsets[r]:offsets[r + 1]]`` (possibly empty). Single-valued features give one id per bag,
jagged ones bags of any length. Data without jagged features keeps format version 1 and the
one-id-per-bag fast path.

Glossary: B = batch size, D = number of dense features, F = number of sparse features, J = number
of jagged features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

FORMAT_VERSION = 1  # one id per bag for every sparse feature
JAGGED_FORMAT_VERSION = 2  # some sparse features multi-valued (``jagged_features`` in meta.json)


def sparse_tables(meta: dict) -> dict[str, str]:
    """Sparse feature -> the table (vocabulary) it uses, from a ``meta.json`` dict.

    ``prepare table`` records ``tables`` (a schema's ``table:``; features naming the same table share its
    ids, and the models give them one embedding table); other preparers (and older folders) do not: every
    feature then uses a table of its own, named after it.
    """
    recorded = meta.get("tables") or {}
    return {f: str(recorded.get(f, f)) for f in meta["sparse_features"]}


@dataclass
class PreparedCTRData:
    """A prepared CTR data set opened read-only with memory maps.

    Args:
        root: the prepared directory.
        meta: its parsed ``meta.json``.
        dense: (N, D) float32 memmap.
        sparse: (N, F - J) int32 memmap of the single-valued features' ids.
        labels: (N,) float32 memmap, or None for unlabeled data (e.g. Kaggle test).
        jagged: per multi-valued feature, ``(values (nnz,) int32, offsets (N + 1,) int64)`` memmaps.
    """

    root: Path
    meta: dict
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray | None
    jagged: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> PreparedCTRData:
        """Open a prepared directory, checking its format version, array shapes and dtypes."""
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{root} is not a prepared data directory (no meta.json); "
                "prepare raw Criteo TSV with `recsys-emb prepare criteo --data FILE --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        version = meta.get("format_version")
        if version not in (FORMAT_VERSION, JAGGED_FORMAT_VERSION):
            raise ValueError(
                f"{meta_path}: format_version {version!r} is not supported "
                f"(expected {FORMAT_VERSION} or {JAGGED_FORMAT_VERSION}); re-run `recsys-emb prepare`"
            )
        rows = int(meta["rows"])
        features = list(meta["sparse_features"])
        jagged_names = list(meta.get("jagged_features", []))
        if jagged_names and version != JAGGED_FORMAT_VERSION:
            raise ValueError(f"{meta_path}: jagged_features need format_version {JAGGED_FORMAT_VERSION}, found {version!r}")
        if jagged_names != features[len(features) - len(jagged_names):]:
            raise ValueError(
                f"{meta_path}: jagged_features {jagged_names} must be the LAST entries of sparse_features {features}, in order"
            )
        n_dense, n_sparse = len(meta["dense_features"]), len(features) - len(jagged_names)

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
        jagged = {}
        for name in jagged_names:
            offsets = load(f"jagged/{name}.offsets.npy", np.dtype(np.int64), (rows + 1,))
            values_path = root / "jagged" / f"{name}.values.npy"
            if not values_path.is_file():
                raise FileNotFoundError(f"{values_path} is missing (meta.json promises it)")
            values = np.load(values_path, mmap_mode="r")
            _check_jagged(values_path, name, values, offsets, int(meta["vocab_sizes"][features.index(name)]))
            jagged[name] = (values, offsets)
        return cls(root=root, meta=meta, dense=dense, sparse=sparse, labels=labels, jagged=jagged)

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

    @property
    def tables(self) -> dict[str, str]:
        """Sparse feature -> the table (vocabulary) it uses (:func:`sparse_tables`)."""
        return sparse_tables(self.meta)

    @property
    def jagged_features(self) -> list[str]:
        """The multi-valued features (the last ``J`` of :attr:`sparse_features`)."""
        return list(self.meta.get("jagged_features", []))

    def bags(self, name: str, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """``(values (nnz,) int64, lengths (B,) int64)`` of feature ``name`` for ``rows`` (any feature)."""
        if name not in self.jagged:
            ids = np.asarray(self.sparse[rows, self.sparse_features.index(name)], dtype=np.int64)
            return ids, np.ones(len(ids), dtype=np.int64)
        values, offsets = self.jagged[name]
        if isinstance(rows, slice):
            lo, hi, step = rows.indices(len(self))
            if step != 1:
                rows = np.arange(lo, hi, step)
            else:
                bounds = np.asarray(offsets[lo : hi + 1]) if hi > lo else np.zeros(1, dtype=np.int64)
                return np.asarray(values[bounds[0] : bounds[-1]], dtype=np.int64), np.diff(bounds)
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = np.asarray(offsets[rows]), np.asarray(offsets[rows + 1])
        lengths = ends - starts
        total = int(lengths.sum())
        # positions: for each output slot, start of its row + rank inside the row
        index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total, dtype=np.int64)
        return np.asarray(values[index], dtype=np.int64), lengths

    def batch(self, rows: np.ndarray | slice) -> Batch:
        """Build one :class:`Batch` from row indices (or a slice); unlabeled data get label -1."""
        dense = torch.from_numpy(np.array(self.dense[rows]))  # (B, D), a writable copy of the memmap rows
        ids = np.ascontiguousarray(self.sparse[rows].T)  # (F - J, B): feature-major
        batch_size = dense.shape[0]
        values = torch.from_numpy(ids.reshape(-1).astype(np.int64))  # ((F - J) * B,)
        lengths = torch.ones(ids.shape[0] * batch_size, dtype=torch.int64)  # one id per bag
        if self.jagged:  # multi-valued features follow, one bag per row
            parts = [self.bags(name, rows) for name in self.jagged_features]
            values = torch.cat([values, *(torch.from_numpy(v) for v, _ in parts)])
            lengths = torch.cat([lengths, *(torch.from_numpy(n) for _, n in parts)])
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


def _check_jagged(path: Path, name: str, values: np.ndarray, offsets: np.ndarray, vocab_size: int) -> None:
    """Validate one jagged feature's CSR arrays; errors name the file, the row and the field."""
    if values.ndim != 1 or values.dtype != np.int32:
        raise ValueError(f"{path}: field {name!r}: expected 1-D int32 values, found {values.dtype} {values.shape}")
    off = np.asarray(offsets)
    if off[0] != 0 or off[-1] != len(values):
        raise ValueError(f"{path}: field {name!r}: offsets must run from 0 to {len(values)} (the values' length), got {off[0]}..{off[-1]}")
    bad = np.flatnonzero(np.diff(off) < 0)
    if len(bad):
        raise ValueError(f"{path}: field {name!r}: row {int(bad[0])} has a negative length (offsets decrease)")
    out = np.flatnonzero((np.asarray(values) < 0) | (np.asarray(values) >= vocab_size))
    if len(out):
        row = int(np.searchsorted(off, out[0], side="right")) - 1
        raise ValueError(
            f"{path}: field {name!r}: row {row} holds id {int(values[out[0]])}, outside the vocabulary [0, {vocab_size})"
        )


def write_jagged(root: Path, name: str, bags: list[list[int]] | list[tuple[int, ...]]) -> None:
    """Write one multi-valued feature of a prepared directory: ``root/jagged/<name>.{values,offsets}.npy``."""
    lengths = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    offsets = np.zeros(len(bags) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter((v for b in bags for v in b), dtype=np.int32, count=int(offsets[-1]))
    (root / "jagged").mkdir(parents=True, exist_ok=True)
    np.save(root / "jagged" / f"{name}.values.npy", values)
    np.save(root / "jagged" / f"{name}.offsets.npy", offsets)


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
