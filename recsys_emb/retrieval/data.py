"""A small reader for user -> items interaction lists in the NGCF/LightGCN text format.

Each line is ``user_id item_id item_id ...`` (space separated, 0-based ids); a line with only a
user id is a user without interactions in that split. Files may be plain (``train.txt``, as in the
public LightGCN/NGCF repositories) or gzip-compressed (``train.txt.gz``).

This reader lives in ``recsys_emb/retrieval/`` because the shared graph-data module
(``recsys_emb/data/graphs.py``) was not there yet when retrieval was written; it keeps its own
small CSR type so retrieval does not depend on it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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
    folder = Path(folder)
    for name in (f"{split}.txt", f"{split}.txt.gz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no {split}.txt or {split}.txt.gz in {folder}")


def read_user_item_lists(path: str | Path) -> dict[int, list[int]]:
    """Read one ``user item item ...`` file into ``{user: [items]}`` (duplicates within a line dropped).

    Raises:
        ValueError: naming the file and line for non-integer or negative ids and repeated users.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[int, list[int]] = {}
    with opener(path, "rt") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                ids = [int(x) for x in fields]
            except ValueError:
                bad = next(x for x in fields if not x.lstrip("-").isdigit())
                raise ValueError(f"{path}:{lineno}: expected integer ids, got {bad!r}") from None
            if min(ids) < 0:
                raise ValueError(f"{path}:{lineno}: negative id {min(ids)}")
            user = ids[0]
            if user in out:
                raise ValueError(f"{path}:{lineno}: user {user} appears on more than one line")
            out[user] = list(dict.fromkeys(ids[1:]))
    return out


@dataclass(frozen=True)
class InteractionData:
    """A train/test pair read from a LightGCN-format folder (same user and item id spaces)."""

    train: Interactions
    test: Interactions
    num_users: int
    num_items: int
    source: str


def _to_csr(lists: dict[int, list[int]], num_users: int, num_items: int) -> Interactions:
    lengths = np.zeros(num_users, dtype=np.int64)
    for u, items in lists.items():
        lengths[u] = len(items)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int64)
    for u, items in lists.items():
        flat[offsets[u] : offsets[u + 1]] = items
    return Interactions(torch.from_numpy(offsets), torch.from_numpy(flat), num_items)


def load_interaction_data(folder: str | Path, train: str = "train", test: str = "test") -> InteractionData:
    """Read ``folder/{train,test}.txt[.gz]``; id spaces are ``max id + 1`` over both files.

    Items that occur only in the test file are part of the catalogue (they can be retrieved, but a
    model trained on the train file has never seen them).
    """
    train_lists = read_user_item_lists(resolve_split(folder, train))
    test_lists = read_user_item_lists(resolve_split(folder, test))
    all_lists = list(train_lists.items()) + list(test_lists.items())
    num_users = 1 + max((u for u, _ in all_lists), default=-1)
    num_items = 1 + max((max(x) for _, x in all_lists if x), default=-1)
    return InteractionData(
        train=_to_csr(train_lists, num_users, num_items),
        test=_to_csr(test_lists, num_users, num_items),
        num_users=num_users,
        num_items=num_items,
        source=str(folder),
    )
