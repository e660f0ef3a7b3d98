"""UniSRec sequence files and the cold-start (held-out items) protocol for sequence rankers.

UniSRec ``*.inter`` files (``datasets/amazon_scientific_text/README.md``) hold one prediction per row,
``user_id<TAB>item_id_list<TAB>item_id`` (space-separated history of item indices, then the target),
with a ``user_id:token ...`` header. :func:`read_unisrec_sequences` rebuilds every user's full
chronological sequence from them: the longest row of a user (its test row) is ``history + target``, and
every other row of the user must be a prefix of it (checked, file:line on error). Raw item ids are the
item indices, i.e. the row numbers of ``*.item2index`` / of the item-text file; there are no categories.

Cold-start protocol (:class:`ColdStartSequenceDataset`, ``data.holdout_items > 0``):

1. a seeded fraction of the catalogue (the distinct items of all sequences) is HELD OUT: these "new"
   items never occur in training. Every interaction with a held-out item is removed from the users'
   sequences, so held-out items are never training targets, never training negatives (their training
   popularity is 0) and never in any history;
2. the usual leave-last-out protocol (recsys_emb/data/sequences.py) runs on these filtered sequences:
   training / validation / test targets on known ("warm") items, popularity negatives;
3. every removed interaction ``(u, t)`` becomes a NEW-ITEM test positive: target = the held-out item,
   history = ``u``'s (filtered) behaviours before ``t`` (the most recent ``L``); its negatives are
   drawn uniformly from the held-out items outside ``u``'s original sequence (held-out items are the
   candidates), with ``(seed, 3)``;
4. the vocabulary covers the whole catalogue: ids ``2 ..`` are the items seen at training positions,
   then every other item (held-out items and items first seen at validation/test positions) gets its
   own id, whose table row is never trained. Content features (semantic IDs) can be looked up for them.

Test splits: ``test`` = warm test examples followed by the new-item examples (the "overall" AUC),
``test_warm`` and ``test_new`` separately (:meth:`ColdStartSequenceDataset.extra_test_splits`).
Validation (early stopping) uses warm items only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_emb.data.sequences import FIRST_ID, Examples, RawSequences, SequenceDataConfig, SequenceDataError, SequenceDataset
from recsys_emb.utils import open_text


def _read_inter(path: Path) -> list[tuple[int, list[int], int]]:
    rows: list[tuple[int, list[int], int]] = []
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip() or (line_no == 1 and line.startswith("user_id:")):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise SequenceDataError(f"{path}:{line_no}: expected 3 tab-separated fields (user, item list, item), got {len(parts)}")
            try:
                user = int(parts[0])
                hist = [int(t) for t in parts[1].split()]
                target = int(parts[2])
            except ValueError:
                raise SequenceDataError(f"{path}:{line_no}: user, item list and item must be integers") from None
            rows.append((user, hist, target))
    return rows


def read_unisrec_sequences(folder: str | Path, stem: str) -> RawSequences:
    """Full per-user sequences from ``STEM.{train,valid,test}.inter`` (plain or .gz) in ``folder``.

    Raises:
        SequenceDataError: a malformed row, or a row that is not a prefix of the user's longest row.
    """
    from recsys_emb.data.sequences import _find

    folder = Path(folder)
    longest: dict[int, list[int]] = {}
    rows_of: list[tuple[Path, int, list[int]]] = []
    for split in ("train", "valid", "test"):
        try:
            path = _find(folder, f"{stem}.{split}.inter")
        except FileNotFoundError:
            if split == "test":
                raise
            continue
        for user, hist, target in _read_inter(path):
            seq = [*hist, target]
            rows_of.append((path, user, seq))
            if len(seq) > len(longest.get(user, [])):
                longest[user] = seq
    for path, user, seq in rows_of:
        if longest[user][: len(seq)] != seq:
            raise SequenceDataError(f"{path}: user {user}: row {seq[:5]}... is not a prefix of the user's longest row")
    users = np.array(sorted(longest), dtype=np.int64)
    lengths = np.array([len(longest[u]) for u in users.tolist()], dtype=np.int64)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.concatenate([np.array(longest[u], dtype=np.int64) for u in users.tolist()]) if len(users) else np.zeros(0, np.int64)
    return RawSequences(users, offsets, items, {}, str(folder / stem))


def holdout_item_set(raw: RawSequences, fraction: float, seed: int) -> np.ndarray:
    """Sorted raw ids of ``round(fraction * catalogue)`` items drawn without replacement with ``seed``."""
    catalogue = np.unique(raw.items)
    n = int(round(fraction * len(catalogue)))
    rng = np.random.default_rng([seed, 17])
    return np.sort(rng.choice(catalogue, size=n, replace=False)) if n else np.zeros(0, np.int64)


class ColdStartSequenceDataset(SequenceDataset):
    """Leave-last-out on sequences without the held-out items, plus new-item test examples (module docstring).

    Args:
        raw: the full per-user sequences.
        cfg: protocol settings; ``cfg.holdout_items`` (fraction) and ``cfg.holdout_seed`` choose the items.
        holdout: explicit raw ids to hold out instead (tests).
    """

    def __init__(self, raw: RawSequences, cfg: SequenceDataConfig, holdout: np.ndarray | None = None) -> None:
        held = np.unique(np.asarray(holdout, dtype=np.int64)) if holdout is not None else holdout_item_set(raw, cfg.holdout_items, cfg.holdout_seed)
        unknown = np.setdiff1d(held, raw.items)
        if len(unknown):
            raise ValueError(f"held-out items {unknown[:10].tolist()} occur in no sequence of {raw.source}")
        self.holdout_raw_ids = held
        is_held = np.isin(raw.items, held)  # (total,) over the original interactions
        lengths = np.diff(raw.offsets)
        user_of = np.repeat(np.arange(len(lengths)), lengths)
        kept_lengths = np.bincount(user_of[~is_held], minlength=len(lengths))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(kept_lengths, out=offsets[1:])
        filtered = RawSequences(raw.users, offsets, raw.items[~is_held], raw.item_category, raw.source, raw.item_attributes)
        super().__init__(filtered, cfg)
        # ---- vocabulary over the whole catalogue: trained ids first (as the base class), then the rest
        trained = self.item_raw_ids
        others = np.setdiff1d(np.unique(raw.items), trained)
        self.item_raw_ids = np.concatenate([trained, others])
        self.num_items = len(self.item_raw_ids) + FIRST_ID
        order = np.argsort(self.item_raw_ids, kind="stable")
        sorted_ids = self.item_raw_ids[order]

        def encode(values: np.ndarray) -> np.ndarray:
            return order[np.searchsorted(sorted_ids, values)] + FIRST_ID

        self.items = encode(filtered.items)
        self.set_item_attributes()  # over the whole catalogue (attribute ids seen on training items only)
        train_pos = self._train_mask
        cat_raw = np.array([raw.item_category.get(int(i), -1) for i in self.item_raw_ids], dtype=np.int64)
        self.item_cat = np.zeros(self.num_items, dtype=np.int64)  # 0 = missing, 1 = category never seen in training
        if len(cat_raw):
            self.item_cat[FIRST_ID:] = np.where(cat_raw < 0, 0, self._encode(cat_raw, self.category_raw_ids))
        self.popularity = np.bincount(self.items[train_pos], minlength=self.num_items).astype(np.float64)
        self.popularity[:FIRST_ID] = 0.0
        full_user_items = user_of * self.num_items + encode(raw.items)
        self._user_item_keys = np.unique(np.concatenate([self._user_of * self.num_items + self.items, full_user_items]))
        self.holdout_ids = encode(held) if len(held) else np.zeros(0, np.int64)
        # ---- new-item test positives: each removed interaction, history = kept behaviours before it
        kept_before = np.cumsum(~is_held) - (~is_held)  # kept interactions before each original one (global)
        pos_f = kept_before - offsets[user_of]  # position in the user's filtered sequence
        rows = np.flatnonzero(is_held)
        new_items = encode(raw.items[rows])
        self._new_positives = Examples(
            user_of[rows], pos_f[rows], new_items, self.item_cat[new_items], np.ones(len(rows), dtype=np.float32)
        )

    def _new_examples(self) -> Examples:
        pos = self._new_positives
        num = self.cfg.eval_negatives or self.cfg.num_negatives
        if len(pos) == 0:
            return pos
        rng = np.random.default_rng([self.cfg.seed, 3, 0])
        cand = self.holdout_ids
        neg = cand[rng.integers(0, len(cand), size=(len(pos), num))]  # (R, N) uniform over held-out items
        users = np.repeat(pos.user, num).reshape(len(pos), num)
        for _ in range(1000):
            keys = users * self.num_items + neg
            idx = np.searchsorted(self._user_item_keys, keys)
            bad = self._user_item_keys[np.minimum(idx, len(self._user_item_keys) - 1)] == keys
            if not bad.any():
                break
            neg[bad] = cand[rng.integers(0, len(cand), size=int(bad.sum()))]
        else:
            raise RuntimeError("could not sample held-out negatives outside some users' sequences: hold out more items")
        group = 1 + num
        items = np.concatenate([pos.target_item[:, None], neg], axis=1).reshape(-1)
        cats = self.item_cat[items]
        labels = np.zeros((len(pos), group), dtype=np.float32)
        labels[:, 0] = 1.0
        return Examples(np.repeat(pos.user, group), np.repeat(pos.position, group), items, cats, labels.reshape(-1))

    def examples(self, split: str, epoch: int = 0) -> Examples:
        """``train`` / ``valid`` / ``test_warm`` as the base protocol; ``test_new``; ``test`` = warm + new."""
        if split == "test_warm":
            return super().examples("test", epoch)
        if split == "test_new":
            return self._new_examples()
        if split == "test":
            warm, new = super().examples("test", epoch), self._new_examples()
            return Examples(*(np.concatenate([getattr(warm, f), getattr(new, f)]) for f in ("user", "position", "target_item", "target_cat", "label")))
        return super().examples(split, epoch)

    def extra_test_splits(self) -> dict[str, Examples]:
        """Reported next to ``test`` by the sequence trainer: warm items only, new (held-out) items only."""
        return {"warm": self.examples("test_warm"), "new_items": self.examples("test_new")}

    def summary(self) -> dict[str, float | int]:
        out = super().summary()
        out.update(holdout_items=len(self.holdout_raw_ids), new_item_test_positives=len(self._new_positives),
                   catalogue_items=len(self.item_raw_ids))
        return out


def make_sequence_dataset(cfg: SequenceDataConfig) -> SequenceDataset:
    """The plain leave-last-out data set, or the cold-start one when ``cfg.holdout_items > 0``."""
    from recsys_emb.data.sequences import load_raw

    raw = load_raw(cfg)
    if cfg.holdout_items > 0:
        return ColdStartSequenceDataset(raw, cfg)
    return SequenceDataset(raw, cfg)
