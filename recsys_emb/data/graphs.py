"""User-item interaction graphs in the NGCF/LightGCN text format, and their normalised adjacency.

File format (NGCF, Wang et al. SIGIR 2019; LightGCN, He et al. SIGIR 2020; also LightGCN++):
``train.txt`` / ``valid.txt`` / ``test.txt`` hold one line per user, ``user item item ...``,
space-separated, 0-based integer ids. A line with only a user id (no items) is allowed. Files may be
gzipped (``train.txt.gz``). Malformed lines (a non-integer or negative token, a user id seen twice
in the same file) raise :class:`GraphFormatError` naming file, line and token; repeated items on
one line are kept once and counted (``GraphSplit.duplicates``), never silently dropped.

``load_graph_dataset(root)`` reads every split found in ``root``; the number of users/items is the
largest id in ANY split + 1, so items that occur only in valid/test exist as (isolated) nodes.

Normalised adjacency. Nodes are ``[users..., items...]`` (N = U + I). ``A`` is the symmetric 0/1
bipartite adjacency of the training interactions. ``normalized_adjacency(graph, kind)`` returns a
:class:`NormalizedAdjacency`: the off-diagonal part as CSR (row = receiving node, columns = its
neighbours, values = weights) plus a per-node self-loop weight ``diag``, so that
``P @ E == csr @ E + diag[:, None] * E``. Kinds:

- ``sym``: ``D^-1/2 A D^-1/2`` (LightGCN; NGCF paper's Laplacian ``L``). ``diag = 0``.
- ``sym_self_loop``: ``D~^-1/2 (A + I) D~^-1/2`` with ``D~ = D + I`` (GCN renormalisation).
- ``row_self_loop``: ``D~^-1 (A + I)``: the NGCF reference code's default (``adj_type=norm``).
- ``row``: ``D^-1 A`` (NGCF reference ``adj_type=gcmc``, the "mean" adjacency).
- ``row_plus_identity``: ``D^-1 A + I`` (NGCF reference code's fallback ``mean_adj + I``).
- ``plain``: ``A`` itself (NGCF reference ``adj_type=plain``).

Isolated nodes (degree 0) get ``D^-1/2 = D^-1 = 0`` instead of ``inf``: their rows and columns are
zero (plus their self-loop where the kind has one), never NaN.

BPR sampling (:class:`BPRSampler`, batches of :class:`BPRBatch`): every training interaction once per
epoch in a seeded random order, each with one uniform negative the user never interacted with.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from recsys_emb.data.availability import require_data
from recsys_emb.utils import open_text, plain_or_gz

AdjacencyKind = Literal["sym", "sym_self_loop", "row_self_loop", "row", "row_plus_identity", "plain"]
ADJACENCY_KINDS: tuple[str, ...] = ("sym", "sym_self_loop", "row_self_loop", "row", "row_plus_identity", "plain")
SYMMETRIC_KINDS: tuple[str, ...] = ("sym", "sym_self_loop", "plain")  # P == P^T
SPLITS = ("train", "valid", "test")


class GraphFormatError(ValueError):
    """A graph text file is malformed; the message names file, line and the offending token."""


@dataclass
class GraphSplit:
    """One split as CSR over users: items of user ``u`` are ``indices[indptr[u]:indptr[u+1]]`` (sorted).

    Shapes: ``indptr`` (U + 1,), ``indices`` (nnz,), both int64.
    """

    indptr: np.ndarray
    indices: np.ndarray
    path: str = ""
    lines: int = 0  # user lines read from the file
    duplicates: int = 0  # repeated (user, item) pairs within a line, kept once

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def users(self) -> np.ndarray:
        """The user id of every interaction, aligned with ``indices`` (nnz,)."""
        return np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.indptr))

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def resized(self, num_users: int) -> GraphSplit:
        """The same split with ``num_users`` rows (extra users have no items)."""
        if num_users < self.num_users:
            raise ValueError(f"cannot shrink a split from {self.num_users} to {num_users} users")
        pad = np.full(num_users - self.num_users, self.indptr[-1], dtype=np.int64)
        return GraphSplit(np.concatenate([self.indptr, pad]), self.indices, self.path, self.lines, self.duplicates)


@dataclass
class GraphDataset:
    """All splits of one data set with a common user/item id space."""

    num_users: int
    num_items: int
    splits: dict[str, GraphSplit] = field(default_factory=dict)
    root: str = ""
    vocabulary: dict | None = None  # built from behaviour sequences: their id maps (SequenceDataset.vocabulary)

    @property
    def train(self) -> GraphSplit:
        return self.splits["train"]

    def summary(self) -> dict[str, object]:
        items_in_train = np.zeros(self.num_items, dtype=bool)
        items_in_train[self.train.indices] = True
        out: dict[str, object] = {
            "root": self.root, "num_users": self.num_users, "num_items": self.num_items,
            "items_not_in_train": int((~items_in_train).sum()),
            "users_without_train_items": int((np.diff(self.train.indptr) == 0).sum()),
        }
        for name, split in self.splits.items():
            out[name] = {"interactions": split.nnz, "lines": split.lines, "duplicates_removed": split.duplicates}
        return out


def _parse_lines(lines: list[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (user of every line, user of every interaction, item of every interaction).

    Fast path: all tokens converted by numpy at once; any error is then located line by line.
    """
    counts = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    # np.fromstring's text mode (sep given) is not deprecated (only its binary mode is); a bad token ends
    # the parse early (numpy 1.x: a warning, 2.x: ValueError), so a count mismatch sends us to the slow path.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ids = np.fromstring(" ".join(lines), dtype=np.int64, sep=" ")
        except ValueError:
            ids = np.zeros(0, dtype=np.int64)
    if len(ids) != counts.sum() or (ids < 0).any():
        _locate_error(lines, where)
    line_of = np.flatnonzero(counts)  # 0-based line index of every non-blank line
    starts = np.concatenate([[0], np.cumsum(counts[line_of])[:-1]]).astype(np.int64)
    users = ids[starts]
    uniq, first = np.unique(users, return_index=True)
    if len(uniq) != len(users):
        dup = np.setdiff1d(np.arange(len(users)), first)[0]
        earlier = int(first[np.searchsorted(uniq, users[dup])])
        raise GraphFormatError(f"{where}:{line_of[dup] + 1}: user {users[dup]} already has a line ({where}:{line_of[earlier] + 1})")
    item_counts = counts[line_of] - 1  # (lines,)
    is_item = np.ones(len(ids), dtype=bool)
    is_item[starts] = False
    return users, np.repeat(users, item_counts), ids[is_item]


def _locate_error(lines: list[str], where: str) -> None:
    """Raise a :class:`GraphFormatError` for the first bad token (slow path, only on errors)."""
    for lineno, line in enumerate(lines, start=1):
        for col, token in enumerate(line.split()):
            try:
                value = int(token)
            except ValueError:
                raise GraphFormatError(f"{where}:{lineno}: '{token}' is not an integer id (expected 'user item item ...')") from None
            if value < 0:
                field_name = "user id" if col == 0 else f"item id (field {col + 1})"
                raise GraphFormatError(f"{where}:{lineno}: negative {field_name} {value} (ids are 0-based)")
    raise GraphFormatError(f"{where}: could not parse (expected 'user item item ...' lines)")


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2's hash-based unique is several times slower on 1M ints)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _to_split(line_users: np.ndarray, users: np.ndarray, items: np.ndarray, num_users: int | None, path: str) -> GraphSplit:
    n = int(line_users.max()) + 1 if len(line_users) else 0
    if num_users is not None:
        if n > num_users:
            raise GraphFormatError(f"{path}: user id {n - 1} >= num_users={num_users}")
        n = num_users
    stride = int(items.max()) + 1 if len(items) else 1
    keys = _sorted_unique(users * stride + items)  # sorted by (user, item), duplicates removed
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // stride, minlength=n), out=indptr[1:])
    return GraphSplit(indptr, keys % stride, path, len(line_users), len(items) - len(keys))


def read_interactions(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one ``user item item ...`` file (plain or .gz), keeping file order and repeated items.

    Returns:
        ``(line_users (L,), users (N,), items (N,))``: the user of every non-blank line, and the user
        and item of every interaction, in file order. Raises :class:`GraphFormatError` on bad input.
    """
    path = Path(path)
    with open_text(path) as f:
        return _parse_lines(f.read().splitlines(), str(path))


def read_graph_file(path: str | Path, num_users: int | None = None) -> GraphSplit:
    """Read one ``user item item ...`` file (plain or .gz) into a :class:`GraphSplit`."""
    return _to_split(*read_interactions(path), num_users, str(path))


def parse_graph_text(text: str, where: str = "<text>") -> GraphSplit:
    """Parse the file format from a string (tests, small examples)."""
    return _to_split(*_parse_lines(text.splitlines(), where), None, where)


def find_split_file(root: str | Path, split: str) -> Path | None:
    """``root/split.txt`` or ``root/split.txt.gz``, or None."""
    return plain_or_gz(root, f"{split}.txt")


GRAPH_CACHE_VERSION = 1  # bump when the reader's output changes: older cache entries are then ignored


def load_graph_dataset(root: str | Path, splits: tuple[str, ...] = SPLITS, cache: bool = False,
                       cache_dir: str | Path | None = None) -> GraphDataset:
    """Read ``train`` (required) and whichever of the other ``splits`` exist in ``root``.

    Item ids must be < the common item count, which is the largest id seen in any split + 1.
    With ``cache`` the files are parsed once into ``CACHE/graphs/`` and memory-mapped on later runs
    (:func:`recsys_emb.data.cache.cached_arrays`; the key covers the split files' names, sizes and
    modification times).

    Raises:
        MissingDataError: ``root`` or its ``train.txt[.gz]`` is absent (the message says where to download
            the NGCF/LightGCN files and points to datasets/gowalla/README.md).
    """
    root = require_data(root, "gowalla", ("train.txt",))
    files = {s: p for s in splits if (p := find_split_file(root, s)) is not None}
    if not cache:
        return _graph_from_splits({s: read_graph_file(p) for s, p in files.items()}, root)
    from recsys_emb.data.cache import cached_arrays, file_fingerprints

    def parse() -> tuple[dict[str, np.ndarray], dict]:
        graph = _graph_from_splits({s: read_graph_file(p) for s, p in files.items()}, root)
        arrays = {f"{s}_{part}": getattr(sp, part) for s, sp in graph.splits.items() for part in ("indptr", "indices")}
        meta = {"num_users": graph.num_users, "num_items": graph.num_items,
                "splits": {s: [sp.path, sp.lines, sp.duplicates] for s, sp in graph.splits.items()}}
        return arrays, meta

    key = {"version": GRAPH_CACHE_VERSION, "splits": sorted(files), "files": file_fingerprints(files.values())}
    arrays, meta = cached_arrays("graphs", root.resolve().name, key, parse, cache_dir)
    parts = {s: GraphSplit(arrays[f"{s}_indptr"], arrays[f"{s}_indices"], *info) for s, info in meta["splits"].items()}
    return GraphDataset(meta["num_users"], meta["num_items"], parts, str(root))


def _graph_from_splits(raw: dict[str, GraphSplit], root: Path) -> GraphDataset:
    num_users = max(sp.num_users for sp in raw.values())
    num_items = max((int(sp.indices.max()) + 1 for sp in raw.values() if sp.nnz), default=0)
    return GraphDataset(num_users, num_items, {s: sp.resized(num_users) for s, sp in raw.items()}, str(root))


def graph_from_interactions(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> GraphDataset:
    """A one-split (train) data set from interaction arrays (duplicates kept once and counted)."""
    keys = _sorted_unique(np.asarray(users, dtype=np.int64) * num_items + np.asarray(items, dtype=np.int64))
    u, i = keys // num_items, keys % num_items
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=num_users), out=indptr[1:])
    split = GraphSplit(indptr, i, "<arrays>", int(len(np.unique(u))), int(len(users) - len(keys)))
    return GraphDataset(num_users, num_items, {"train": split})


# --------------------------------------------------------------------------------------------
# Normalised adjacency
# --------------------------------------------------------------------------------------------


@dataclass
class NormalizedAdjacency:
    """``P = csr + diag(diag)`` over N = U + I nodes (users first).

    ``indptr`` (N + 1,), ``indices`` (nnz,) int64 and ``values`` (nnz,) float32 are the off-diagonal
    part in CSR (row = receiving node); ``diag`` (N,) float32 holds the self-loop weights.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    diag: torch.Tensor
    num_users: int
    num_items: int
    kind: str

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def has_diag(self) -> bool:
        return bool((self.diag != 0).any())

    def to_sparse_csr(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The off-diagonal part as a ``torch.sparse_csr_tensor`` (optionally with replaced values)."""
        n = self.num_nodes
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            return torch.sparse_csr_tensor(self.indptr, self.indices, self.values if values is None else values, (n, n),
                                           check_invariants=False)

    def to_dense(self) -> torch.Tensor:
        """Dense (N, N) ``P`` (small graphs / tests only)."""
        dense = torch.diag(self.diag)
        dense[self.row_ids(), self.indices] += self.values
        return dense

    def row_ids(self) -> torch.Tensor:
        """The receiving node of every off-diagonal entry (nnz,)."""
        return torch.repeat_interleave(torch.arange(self.num_nodes), self.indptr.diff())


def bipartite_edges(graph: GraphDataset, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every interaction as node ids: (rows, cols), each (2 * nnz,)."""
    sp = graph.splits[split]
    u = sp.users()
    i = sp.indices + graph.num_users
    return np.concatenate([u, i]), np.concatenate([i, u])


def _safe_power(deg: np.ndarray, p: float) -> np.ndarray:
    out = np.zeros_like(deg, dtype=np.float64)
    nz = deg > 0
    out[nz] = deg[nz] ** p
    return out


def normalized_adjacency(graph: GraphDataset, kind: str = "sym", split: str = "train") -> NormalizedAdjacency:
    """Build ``P`` of the given ``kind`` (see the module docstring) from the ``split`` interactions."""
    if kind not in ADJACENCY_KINDS:
        raise ValueError(f"unknown adjacency kind '{kind}' (choose from {list(ADJACENCY_KINDS)})")
    n = graph.num_users + graph.num_items
    rows, cols = bipartite_edges(graph, split)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    deg = np.bincount(rows, minlength=n).astype(np.float64)  # D (self-loops excluded)
    ones = np.ones(n)
    if kind == "sym":
        d = _safe_power(deg, -0.5)
        values, diag = d[rows] * d[cols], 0.0 * ones
    elif kind == "sym_self_loop":
        d = _safe_power(deg + 1.0, -0.5)
        values, diag = d[rows] * d[cols], d * d
    elif kind == "row_self_loop":
        d = _safe_power(deg + 1.0, -1.0)
        values, diag = d[rows], d
    elif kind == "row":
        d = _safe_power(deg, -1.0)
        values, diag = d[rows], 0.0 * ones
    elif kind == "row_plus_identity":
        d = _safe_power(deg, -1.0)
        values, diag = d[rows], ones
    else:  # plain
        values, diag = np.ones(len(rows)), 0.0 * ones
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return NormalizedAdjacency(
        indptr=torch.from_numpy(indptr),
        indices=torch.from_numpy(cols.astype(np.int64)),
        values=torch.from_numpy(values.astype(np.float32)),
        diag=torch.from_numpy(diag.astype(np.float32)),
        num_users=graph.num_users,
        num_items=graph.num_items,
        kind=kind,
    )


# --------------------------------------------------------------------------------------------
# BPR sampling
# --------------------------------------------------------------------------------------------


@dataclass
class BPRBatch:
    """BPR triples ``(user, positive item, negative item)``: aligned (B,) int64 tensors (``neg`` is None for
    positive pairs only, :class:`BPRSampler` with ``negatives=False``)."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.users.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BPRBatch:
        return BPRBatch(*(x if x is None else x.to(device, non_blocking=non_blocking) for x in (self.users, self.pos, self.neg)))

    def part(self, rows: slice) -> BPRBatch:
        """The triples of ``rows`` (e.g. one rank's part of a global batch)."""
        return BPRBatch(self.users[rows], self.pos[rows], None if self.neg is None else self.neg[rows])


class BPRSampler:
    """Every training interaction once per epoch, each with one uniform negative; batches of :class:`BPRBatch`.

    Epoch ``e`` shuffles the interactions with ``np.random.default_rng([seed, e])`` and pairs each
    ``(u, i)`` with an item drawn uniformly from the items ``u`` never interacted with in training
    (vectorised rejection sampling: only collisions are redrawn), so order and negatives depend on
    ``(seed, epoch)`` only. LightGCN's PyTorch code samples users uniformly instead; the number of
    BPR triples per epoch is the same.

    Args:
        train: the training split (CSR over users).
        num_items: the item count of the id space (negatives are drawn from ``[0, num_items)``).
        batch_size: triples per (global) batch.
        seed: with the epoch number, fixes order and negatives exactly.
        negatives: False = positive pairs only (``neg`` None; the two-tower's in-batch softmax).

    Raises:
        ValueError: a user interacted with every item (no negative exists).
    """

    def __init__(self, train: GraphSplit, num_items: int, batch_size: int, seed: int, negatives: bool = True) -> None:
        self.users = train.users()  # (nnz,)
        self.items = train.indices  # (nnz,)
        self.num_items, self.batch_size, self.seed, self.negatives = num_items, batch_size, seed, negatives
        self.keys = np.sort(self.users * num_items + self.items)  # (nnz,) sorted (user, item) keys
        full = np.diff(train.indptr) >= num_items
        if negatives and full.any():
            raise ValueError(f"user {int(np.argmax(full))} interacted with every item: no negative exists")

    @property
    def num_triples(self) -> int:
        return len(self.users)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = rng.integers(0, self.num_items, size=len(users))
        bad = np.flatnonzero(self.is_positive(users, neg))
        while len(bad):  # redraw only the collisions
            neg[bad] = rng.integers(0, self.num_items, size=len(bad))
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[BPRBatch]:
        """The batches of ``epoch`` in order, after the first ``skip`` (the same ones either way)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = self.sample_negatives(users, rng) if self.negatives else None
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield BPRBatch(torch.from_numpy(users[sl]), torch.from_numpy(pos[sl]), None if neg is None else torch.from_numpy(neg[sl]))
