"""A small reader for user -> items interaction lists in the NGCF/LightGCN text format.

Each line is ``user_id item_id item_id ...`` (space separated, 0-based ids); a line with only a
user id is a user without interactions in that split. Files may be plain (``train.txt``, as in the
public LightGCN/NGCF repositories) or gzip-compressed (``train.txt.gz``).

Parsing (and its errors naming file, line and token) is shared with the graph-CF reader
(:func:`recsys_emb.data.graphs.read_interactions`). Retrieval keeps its own CSR type,
:class:`Interactions`, because its item lists stay in FILE order (the validation holdout draws from
that order), where ``GraphSplit`` sorts every user's items.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recsys_emb.data.availability import require_data
from recsys_emb.data.graphs import find_split_file, read_interactions
from recsys_emb.retrieval.index import Csr


@dataclass(frozen=True)
class Interactions:
    """Per-user item lists in CSR form.

    Attributes:
        offsets: (U + 1,) int64; user ``u``'s items are ``items[offsets[u]:offsets[u + 1]]``.
        items: (nnz,) int64 item ids (deduplicated per user, in file order).
        num_items: size of the item catalogue these ids index into.
    """

    offsets: Tensor
    items: Tensor
    num_items: int

    @property
    def num_users(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def csr(self) -> Csr:
        """All users' lists as a :class:`~recsys_emb.retrieval.index.Csr`."""
        return Csr(self.offsets, self.items)

    def counts(self) -> Tensor:
        """(U,) number of items per user."""
        return self.offsets[1:] - self.offsets[:-1]

    def user_items(self, user: int) -> Tensor:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def select(self, users: Tensor) -> Csr:
        """CSR ``(offsets (B + 1,), items)`` of the given users, in the given order."""
        users = users.long()
        starts, ends = self.offsets[users], self.offsets[users + 1]
        lengths = ends - starts  # (B,)
        out_offsets = torch.zeros(users.numel() + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=out_offsets[1:])
        if int(out_offsets[-1]) == 0:
            return Csr(out_offsets, torch.zeros(0, dtype=torch.long))
        # position of every output element inside self.items
        row = torch.repeat_interleave(torch.arange(users.numel()), lengths)
        pos = torch.arange(int(out_offsets[-1])) - out_offsets[row] + starts[row]
        return Csr(out_offsets, self.items[pos])

    def pairs(self) -> tuple[Tensor, Tensor]:
        """``(users (nnz,), items (nnz,))`` of every interaction."""
        users = torch.repeat_interleave(torch.arange(self.num_users), self.counts())
        return users, self.items

    @staticmethod
    def from_lists(lists: list[list[int]], num_items: int) -> Interactions:
        """Build from one item list per user (test helper)."""
        lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        items = torch.tensor([i for x in lists for i in x], dtype=torch.long)
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= num_items):
            raise ValueError(f"item ids must be in [0, {num_items}), got [{int(items.min())}, {int(items.max())}]")
        return Interactions(offsets, items, num_items)


def resolve_split(folder: str | Path, split: str) -> Path:
    """``folder/split.txt`` or ``folder/split.txt.gz``, whichever exists."""
    path = find_split_file(folder, split)
    if path is not None:
        return path
    raise FileNotFoundError(f"no {split}.txt or {split}.txt.gz in {folder}")


def read_user_item_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one ``user item item ...`` file: ``(line_users, users, items)`` in file order.

    A repeated item on a user's line is kept once (its first position), and a warning counts them.
    Bad input raises :class:`~recsys_emb.data.graphs.GraphFormatError` (a ``ValueError``) naming
    file, line and token; a user id on two lines is an error too.
    """
    line_users, users, items = read_interactions(path)
    if len(items):
        stride = int(items.max()) + 1
        _, first = np.unique(users * stride + items, return_index=True)
        if len(first) < len(items):
            repeat = np.setdiff1d(np.arange(len(items)), first)[0]
            warnings.warn(f"{path}: {len(items) - len(first)} repeated item(s) on a user's line kept once "
                          f"(first: user {users[repeat]}, item {items[repeat]})", stacklevel=2)
        keep = np.sort(first)
        users, items = users[keep], items[keep]
    return line_users, users, items


@dataclass(frozen=True)
class InteractionData:
    """A train/test pair read from a LightGCN-format folder (same user and item id spaces).

    ``test`` is the split that is evaluated (the test file, or a validation split when tuning);
    ``extra_exclude`` holds interactions that are neither trained on nor evaluated but must be
    removed from the ranking too (the validation file when ``test`` is the test file).
    """

    train: Interactions
    test: Interactions
    num_users: int
    num_items: int
    source: str
    extra_exclude: Interactions | None = None

    def exclusions(self, users: Tensor) -> Csr:
        """Items removed from the given users' rankings: training items (+ ``extra_exclude``)."""
        train = self.train.select(users)
        if self.extra_exclude is None:
            return train
        return concat_csr(train, self.extra_exclude.select(users))


def concat_csr(a: Csr, b: Csr) -> Csr:
    """Row-wise concatenation of two CSRs over the same rows (``a``'s ids first in each row)."""
    la, lb = a.offsets[1:] - a.offsets[:-1], b.offsets[1:] - b.offsets[:-1]
    rows = torch.cat([torch.repeat_interleave(torch.arange(la.numel()), la),
                      torch.repeat_interleave(torch.arange(lb.numel()), lb)])
    ids = torch.cat([a.ids, b.ids])
    order = torch.argsort(rows, stable=True)
    offsets = torch.zeros(la.numel() + 1, dtype=torch.long)
    torch.cumsum(la + lb, 0, out=offsets[1:])
    return Csr(offsets, ids[order])


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # read_user_item_pairs: (line_users, users, items)


def _id_spaces(splits: list[Pairs]) -> tuple[int, int]:
    """(num_users, num_items) = largest user / item id over all splits + 1."""
    num_users = 1 + max((int(p[0].max()) for p in splits if len(p[0])), default=-1)
    num_items = 1 + max((int(p[2].max()) for p in splits if len(p[2])), default=-1)
    return num_users, num_items


def _to_csr(pairs: Pairs, num_users: int, num_items: int) -> Interactions:
    """Group the interactions by user (stable: every user's items stay in file order)."""
    _, users, items = pairs
    order = np.argsort(users, kind="stable")
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=offsets[1:])
    return Interactions(torch.from_numpy(offsets), torch.from_numpy(items[order]), num_items)


def load_interaction_data(folder: str | Path, train: str = "train", test: str = "test") -> InteractionData:
    """Read ``folder/{train,test}.txt[.gz]``; id spaces are ``max id + 1`` over both files.

    Items that occur only in the test file are part of the catalogue (they can be retrieved, but a
    model trained on the train file has never seen them). A missing folder or file is a
    :class:`~recsys_emb.data.availability.MissingDataError` (download location, datasets/gowalla/README.md).
    """
    require_data(folder, "gowalla", (f"{train}.txt", f"{test}.txt"))
    train_pairs = read_user_item_pairs(resolve_split(folder, train))
    test_pairs = read_user_item_pairs(resolve_split(folder, test))
    num_users, num_items = _id_spaces([train_pairs, test_pairs])
    return InteractionData(
        train=_to_csr(train_pairs, num_users, num_items),
        test=_to_csr(test_pairs, num_users, num_items),
        num_users=num_users,
        num_items=num_items,
        source=str(folder),
    )


def holdout_split(train: Interactions, fraction: float, seed: int) -> tuple[Interactions, Interactions]:
    """Split every user's training items into ``(kept, held out)``: ``round(fraction * n)`` random items
    of a user with ``n`` items are held out, but at least one item is always kept (seeded, reproducible)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    counts = train.counts()
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty_like(train.items)
    users = torch.repeat_interleave(torch.arange(train.num_users), counts)
    # random rank of every interaction within its user: sort by (user, random key)
    key = torch.rand(train.items.numel(), generator=g, dtype=torch.float64)
    order = torch.argsort(users.double() * 2.0 + key)
    rank[order] = torch.arange(train.items.numel()) - train.offsets[users[order]]
    n_out = torch.clamp(torch.round(counts.double() * fraction).long(), max=(counts - 1).clamp_min(0))
    held = rank < n_out[users]

    def part(mask: Tensor) -> Interactions:
        lengths = torch.bincount(users[mask], minlength=train.num_users)
        offsets = torch.zeros(train.num_users + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return Interactions(offsets, train.items[mask], train.num_items)

    return part(~held), part(held)


def load_split_data(folder: str | Path, split: str = "test", train: str = "train", test: str = "test",
                    valid: str | None = "valid", holdout_fraction: float = 0.1, holdout_seed: int = 0) -> InteractionData:
    """The train/evaluation pair for evaluating on ``split`` (``test`` or ``valid``); one id space.

    * ``split='test'``: train on ``train``, evaluate ``test``; the ``valid`` file's items (when the
      folder has one) are excluded from the ranking like training items (LightGCN++ protocol).
    * ``split='valid'`` and a ``valid`` file exists: train on ``train``, evaluate ``valid``.
    * ``split='valid'`` and no ``valid`` file (Gowalla): ``holdout_fraction`` of each user's training
      items (:func:`holdout_split`) become the validation split; training uses the rest. The test
      file is read only for the id space.

    A missing folder, train or test file is a :class:`~recsys_emb.data.availability.MissingDataError`.
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    require_data(folder, "gowalla", (f"{train}.txt", f"{test}.txt"))
    pairs = {"train": read_user_item_pairs(resolve_split(folder, train)),
             "test": read_user_item_pairs(resolve_split(folder, test))}
    has_valid = False
    if valid:
        try:
            pairs["valid"] = read_user_item_pairs(resolve_split(folder, valid))
            has_valid = True
        except FileNotFoundError:
            pass
    num_users, num_items = _id_spaces(list(pairs.values()))
    csr = {name: _to_csr(p, num_users, num_items) for name, p in pairs.items()}
    if split == "test":
        return InteractionData(csr["train"], csr["test"], num_users, num_items, str(folder), csr.get("valid"))
    if has_valid:
        return InteractionData(csr["train"], csr["valid"], num_users, num_items, str(folder))
    kept, held = holdout_split(csr["train"], holdout_fraction, holdout_seed)
    return InteractionData(kept, held, num_users, num_items, f"{folder} (holdout {holdout_fraction} seed {holdout_seed})")
