"""Behaviour sequences for DIN / two-stage / DARE ranking: raw files -> jagged KJT batches.

Sources (see datasets/amazon_seq/README.md):

* Amazon review sequences in the S3-Rec format (``Beauty.txt``: ``user item item ...`` per line, in
  chronological order; ``Beauty_item2attributes.json``: ``{item: [attribute ids]}``); the category
  of an item is its FIRST attribute id.
* MovieLens-100K (``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, ``u.item``: genre flags);
  a user's sequence is their ratings sorted by (timestamp, line number); the category of a movie is
  its first genre flag.
* MovieLens-1M (``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, ``movies.dat``:
  ``MovieID::Title::Genre|Genre``, Latin-1), ordered the same way; categories are genres (ids in
  alphabetical order of the 18 names), the category of a movie is its first listed genre.

Protocol (leave-last-out), per user with ``n`` interactions ``x_0 .. x_{n-1}``:

* ``x_{n-1}`` is the TEST target, ``x_{n-2}`` the VALIDATION target, ``x_0 .. x_{n-3}`` are TRAINING
  targets (``min_history`` drops training targets with fewer earlier items; the default 0 keeps the
  first interaction, whose history is empty);
* the history of the target at position ``t`` is ``x_{max(0, t-L)} .. x_{t-1}`` (the most recent ``L``);
* every positive gets ``N`` negatives: items drawn by training popularity, excluding every item of the
  user's whole sequence, sharing the positive's history. Validation/test negatives are drawn once
  with ``seed``; training negatives are redrawn every epoch with ``(seed, epoch)``.

Ids: item/category ``0`` = missing (an item without attributes has category 0), ``1`` = OOV (an item
or category never seen at a training position: unseen items at test time), known ids from ``2`` in
ascending raw-id order. Recency positions: ``1`` = the most recent behaviour, ``L`` = the oldest kept;
``0`` is the target's own position.

A batch is a :class:`SequenceBatch` (a ``torchrec`` ``Batch`` with ``users``): its KJT holds eight keys,
``hist_item, hist_cat, hist_pos`` (jagged, the history, oldest first), ``target_item, target_cat,
target_pos`` (one id per example), and the side features ``user`` (the user index) and ``target_attrs``
(jagged: every attribute id of the target item, e.g. Amazon category and brand ids, MovieLens genres).
Nothing is padded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.data.availability import require_data
from recsys_emb.utils import open_text, plain_or_gz

if TYPE_CHECKING:
    from recsys_emb.data.graphs import GraphDataset

MISSING_ID = 0
OOV_ID = 1
FIRST_ID = 2
HISTORY_KEYS = ("hist_item", "hist_cat", "hist_pos")
TARGET_KEYS = ("target_item", "target_cat", "target_pos")
# pooled per-example features in every batch: the user index, and the target item's attribute ids (a bag:
# Amazon category + brand ids, MovieLens genres; known = seen on a training item, else OOV; none: empty bag)
SIDE_FEATURES = ("user", "target_attrs")
FEATURE_KEYS = HISTORY_KEYS + TARGET_KEYS + SIDE_FEATURES
# fields: a behaviour-history key and a target key that share one embedding (model.fields picks the token's)
FIELDS = {"item": ("hist_item", "target_item"), "category": ("hist_cat", "target_cat"), "position": ("hist_pos", "target_pos")}

# dataset name -> (file stem of the sequences, kind)
AMAZON_STEMS = {"amazon_beauty": "Beauty", "amazon_sports": "Sports_and_Outdoors", "amazon_lastfm": "LastFM"}
DATASETS = (*AMAZON_STEMS, "movielens_100k", "movielens_1m", "s3rec", "unisrec")


class SequenceDataError(ValueError):
    """A raw sequence file is malformed; the message names file, line and field."""


@dataclass
class SequenceDataConfig:
    """Which behaviour-sequence data set to load and how to turn it into examples."""

    dataset: str = "amazon_beauty"  # amazon_beauty | amazon_sports | amazon_lastfm | movielens_100k | movielens_1m | s3rec | unisrec
    path: str | None = None  # folder holding the raw files (plain or .gz)
    stem: str | None = None  # s3rec: STEM.txt + STEM_item2attributes.json; unisrec: STEM.{train,valid,test}.inter
    max_history: int = 50  # L: the most recent L behaviours are kept
    num_negatives: int = 1  # N negatives per training positive
    eval_negatives: int | None = None  # N per validation/test positive (None = num_negatives)
    min_history: int = 0  # training targets need at least this many earlier behaviours
    max_users: int | None = None  # keep only the first users (quick runs); None = all
    seed: int = 0  # seeds negative sampling
    holdout_items: float = 0.0  # cold start: fraction of items held out of training (recsys_emb/data/cold_start.py)
    holdout_seed: int = 0  # which items are held out
    cache: bool = True  # parse the raw files once into cache_dir, memory-map them on later runs
    cache_dir: str | None = None  # None = $RECSYS_EMB_CACHE or ~/.cache/recsys_emb
    # hard negatives (docs/techniques/retrieve_rank.md): a stage-1 run (task graph / two_tower trained on these
    # sequences, `data.sequence`); each TRAINING negative is, with probability hard_negative_fraction, drawn
    # uniformly from the user's top hard_negative_pool items of that model (never an item of the user's
    # sequence), else by popularity as usual. Validation / test negatives stay popularity negatives.
    hard_negatives: str | None = None
    hard_negative_pool: int = 100
    hard_negative_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.hard_negative_pool < 1 or not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(f"data.hard_negative_pool must be >= 1 and data.hard_negative_fraction in [0, 1], got "
                             f"{self.hard_negative_pool} and {self.hard_negative_fraction}")
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset: unknown '{self.dataset}' (choose from {list(DATASETS)})")
        if self.dataset in ("s3rec", "unisrec") and not self.stem:
            raise ValueError(f"data.stem is required with dataset={self.dataset} (e.g. Beauty for Beauty.txt, Scientific for Scientific.train.inter)")
        if not 0.0 <= self.holdout_items < 1.0:
            raise ValueError(f"data.holdout_items must be in [0, 1), got {self.holdout_items}")
        if self.max_history < 1:
            raise ValueError(f"data.max_history must be >= 1, got {self.max_history}")
        if self.num_negatives < 1 or (self.eval_negatives is not None and self.eval_negatives < 1):
            raise ValueError("data.num_negatives / data.eval_negatives must be >= 1")
        if self.min_history < 0:
            raise ValueError(f"data.min_history must be >= 0, got {self.min_history}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"data.max_users must be >= 1 or null, got {self.max_users}")


@dataclass
class RawSequences:
    """Chronological per-user item sequences (raw ids) in CSR form, plus item -> raw category."""

    users: np.ndarray  # (U,) raw user ids
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (total,) int64 raw item ids, user-major, oldest first
    item_category: dict[int, int]  # raw item -> raw category (items absent here have no category)
    source: str = ""
    item_attributes: dict[int, list[int]] = field(default_factory=dict)  # raw item -> all its raw attribute ids

    def __post_init__(self) -> None:
        if self.offsets.shape != (len(self.users) + 1,) or int(self.offsets[-1]) != len(self.items):
            raise ValueError("RawSequences: offsets must have U + 1 entries ending at len(items)")

    def head(self, num_users: int) -> RawSequences:
        """The first ``num_users`` users."""
        n = min(num_users, len(self.users))
        end = int(self.offsets[n])
        return RawSequences(self.users[:n], self.offsets[: n + 1].copy(), self.items[:end], self.item_category, self.source,
                            self.item_attributes)


# ------------------------------------------------------------------------------------------ readers


def _find(folder: Path, name: str) -> Path:
    if (path := plain_or_gz(folder, name)) is not None:
        return path
    raise FileNotFoundError(f"{folder}: neither {name} nor {name}.gz exists")


def read_s3rec(sequences: str | Path, attributes: str | Path | None) -> RawSequences:
    """Read an S3-Rec ``user item item ...`` file and its ``{item: [attribute ids]}`` JSON.

    Raises:
        SequenceDataError: a non-integer token, a line without items, or a repeated user (file:line).
    """
    sequences = Path(sequences)
    users: list[int] = []
    lengths: list[int] = []
    items: list[np.ndarray] = []
    seen: dict[int, int] = {}
    with open_text(sequences) as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = np.array([int(t) for t in tokens], dtype=np.int64)
            except ValueError:
                bad = next(i for i, t in enumerate(tokens) if not t.lstrip("-").isdigit())
                field_name = "user id" if bad == 0 else f"item #{bad}"
                raise SequenceDataError(f"{sequences}:{line_no}: {field_name} {tokens[bad]!r} is not an integer") from None
            if len(ids) < 2:
                raise SequenceDataError(f"{sequences}:{line_no}: user {tokens[0]} has no items")
            if int(ids[0]) in seen:
                raise SequenceDataError(f"{sequences}:{line_no}: user {ids[0]} already appeared on line {seen[int(ids[0])]}")
            seen[int(ids[0])] = line_no
            users.append(int(ids[0]))
            lengths.append(len(ids) - 1)
            items.append(ids[1:])
    categories: dict[int, int] = {}
    all_attributes: dict[int, list[int]] = {}
    if attributes is not None:
        attributes = Path(attributes)
        with open_text(attributes) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise SequenceDataError(f"{attributes}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise SequenceDataError(f"{attributes}: expected a JSON object {{item: [attribute ids]}}")
        for key, attrs in raw.items():
            if not isinstance(attrs, list) or not all(isinstance(a, int) for a in attrs) or not key.lstrip("-").isdigit():
                raise SequenceDataError(f"{attributes}: item {key!r}: expected an integer key and a list of integer attribute ids")
            if attrs:
                categories[int(key)] = int(attrs[0])
                all_attributes[int(key)] = [int(a) for a in attrs]
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    return RawSequences(np.array(users, dtype=np.int64), offsets, flat, categories, str(sequences), all_attributes)


def read_movielens_100k(folder: str | Path) -> RawSequences:
    """MovieLens-100K as sequences: every rating of ``u.data`` is an interaction (any value), ordered per
    user by (timestamp, line); an item's category is its first genre flag in ``u.item``.

    Parsing is :func:`recsys_emb.data.movielens.read_ratings` / ``read_items`` (the one ml-100k parser).
    """
    from recsys_emb.data.movielens import _find as find_ml, read_items, read_ratings

    ratings = read_ratings(folder)  # (N, 4): user, item, rating, timestamp
    order = np.lexsort((np.arange(len(ratings)), ratings[:, 3], ratings[:, 0]))  # user, then timestamp, then line
    ratings = ratings[order]
    users, counts = np.unique(ratings[:, 0], return_counts=True)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    genres_of = {item: list(genres) for item, (_, genres) in read_items(folder).items() if genres}
    categories = {item: genres[0] for item, genres in genres_of.items()}
    return RawSequences(users, offsets, ratings[:, 1].copy(), categories, str(find_ml(Path(folder), "u.data")), genres_of)


def _dat_fields(path: Path, line_no: int, line: str, names: tuple[str, ...]) -> list[str]:
    fields = line.rstrip("\r\n").split("::")
    if len(fields) != len(names):
        raise SequenceDataError(f"{path}:{line_no}: expected {len(names)} '::'-separated fields ({', '.join(names)}), got {len(fields)}")
    return fields


def read_movielens_1m(folder: str | Path) -> RawSequences:
    """MovieLens-1M as sequences: every rating of ``ratings.dat`` is an interaction, ordered per user by
    (timestamp, line); genres of ``movies.dat`` (Latin-1) are the attributes, the first one the category.

    Raises:
        SequenceDataError: a line with the wrong number of fields or a non-integer id/timestamp (file:line:field).
    """
    folder = Path(folder)
    ratings_path, movies_path = _find(folder, "ratings.dat"), _find(folder, "movies.dat")
    rows: list[tuple[int, int, int]] = []
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    with open_text(ratings_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = _dat_fields(ratings_path, line_no, line, names)
            try:
                rows.append((int(fields[0]), int(fields[1]), int(fields[3])))
            except ValueError:
                bad = next(i for i in (0, 1, 3) if not fields[i].strip().lstrip("-").isdigit())
                raise SequenceDataError(f"{ratings_path}:{line_no}: {names[bad]} {fields[bad]!r} is not an integer") from None
    genres_of: dict[int, list[str]] = {}
    with open_text(movies_path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            movie, _, genres = _dat_fields(movies_path, line_no, line, ("MovieID", "Title", "Genres"))
            if not movie.isdigit():
                raise SequenceDataError(f"{movies_path}:{line_no}: MovieID {movie!r} is not an integer")
            genres_of[int(movie)] = [g for g in genres.split("|") if g]
    vocab = {g: i for i, g in enumerate(sorted({g for gs in genres_of.values() for g in gs}))}
    attributes = {m: [vocab[g] for g in gs] for m, gs in genres_of.items() if gs}
    r = np.array(rows, dtype=np.int64).reshape(-1, 3)
    r = r[np.lexsort((np.arange(len(r)), r[:, 2], r[:, 0]))]  # user, then timestamp, then line
    users, counts = np.unique(r[:, 0], return_counts=True)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    categories = {m: a[0] for m, a in attributes.items()}
    return RawSequences(users, offsets, r[:, 1].copy(), categories, str(ratings_path), attributes)


RAW_CACHE_VERSION = 2  # bump when a reader's output changes: older cache entries are then ignored
_RAW_ARRAYS = ("users", "offsets", "items", "category_items", "category_values", "attribute_items", "attribute_offsets",
               "attribute_values")


def sequence_files(cfg: SequenceDataConfig) -> tuple[str, tuple[str, ...]]:
    """The public data set (a :data:`recsys_emb.data.availability.REGISTRY` key) of ``cfg.dataset`` and the
    files its reader cannot do without (attribute files and the UniSRec train/valid splits are optional)."""
    if cfg.dataset == "movielens_100k":
        return "movielens", ("u.data", "u.item")
    if cfg.dataset == "movielens_1m":
        return "movielens_1m_meta", ("ratings.dat", "movies.dat")
    if cfg.dataset == "unisrec":
        return "amazon_scientific_text", (f"{cfg.stem}.test.inter",)
    stem = cfg.stem if cfg.dataset == "s3rec" else AMAZON_STEMS[cfg.dataset]
    return "amazon_seq", (f"{stem}.txt",)


def require_sequence_data(cfg: SequenceDataConfig) -> Path:
    """``cfg.path`` as a folder, checked to hold the files of ``cfg.dataset`` (:func:`sequence_files`).

    Raises:
        ValueError: ``data.path`` is not set.
        MissingDataError: the folder or a needed file is absent; the message names them, the download
            location and the ``datasets/<name>/README.md`` to read.
    """
    if cfg.path is None:
        raise ValueError(f"data.path is not set: point it at the folder with the {cfg.dataset} files (see datasets/amazon_seq/README.md)")
    dataset, files = sequence_files(cfg)
    return require_data(cfg.path, dataset, files, where="data.path")


def load_raw(cfg: SequenceDataConfig) -> RawSequences:
    """The raw sequences of the files ``cfg`` names (``cfg.path`` must be set).

    With ``cfg.cache`` (default) the files are parsed once into ``CACHE/sequences/`` and
    memory-mapped on later runs (:func:`recsys_emb.data.cache.cached_arrays`: the key covers the
    dataset, the stem, the reader version and every file in ``cfg.path``). A missing folder or file is a
    :class:`~recsys_emb.data.availability.MissingDataError` (:func:`require_sequence_data`).
    """
    folder = require_sequence_data(cfg)
    if cfg.cache:
        from recsys_emb.data.cache import cached_arrays, file_fingerprints

        key = {"version": RAW_CACHE_VERSION, "dataset": cfg.dataset, "stem": cfg.stem,
               "files": file_fingerprints(p for p in folder.iterdir() if p.is_file())}
        arrays, meta = cached_arrays("sequences", cfg.dataset, key, lambda: _raw_arrays(_read_raw(cfg, folder)), cfg.cache_dir)
        users, offsets, items, keys, values, attr_items, attr_offsets, attr_values = (arrays[name] for name in _RAW_ARRAYS)
        attr_offsets, attr_values = np.asarray(attr_offsets), np.asarray(attr_values)
        attributes = {int(item): attr_values[attr_offsets[i]:attr_offsets[i + 1]].tolist() for i, item in enumerate(attr_items.tolist())}
        raw = RawSequences(users, np.asarray(offsets), items, dict(zip(keys.tolist(), values.tolist())), meta["source"], attributes)
    else:
        raw = _read_raw(cfg, folder)
    return raw.head(cfg.max_users) if cfg.max_users is not None else raw


def _raw_arrays(raw: RawSequences) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    keys = np.fromiter(raw.item_category.keys(), dtype=np.int64, count=len(raw.item_category))
    values = np.fromiter(raw.item_category.values(), dtype=np.int64, count=len(raw.item_category))
    attr_items = np.fromiter(raw.item_attributes.keys(), dtype=np.int64, count=len(raw.item_attributes))
    attr_offsets = np.zeros(len(attr_items) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in raw.item_attributes.values()], out=attr_offsets[1:])
    attr_values = np.array([a for v in raw.item_attributes.values() for a in v], dtype=np.int64)
    arrays = dict(zip(_RAW_ARRAYS, (np.asarray(raw.users), raw.offsets, raw.items, keys, values, attr_items, attr_offsets, attr_values)))
    return arrays, {"source": raw.source}


def _read_raw(cfg: SequenceDataConfig, folder: Path) -> RawSequences:
    if cfg.dataset == "movielens_100k":
        return read_movielens_100k(folder)
    if cfg.dataset == "movielens_1m":
        return read_movielens_1m(folder)
    if cfg.dataset == "unisrec":
        from recsys_emb.data.cold_start import read_unisrec_sequences

        return read_unisrec_sequences(folder, cfg.stem)
    stem = cfg.stem if cfg.dataset == "s3rec" else AMAZON_STEMS[cfg.dataset]
    seq = _find(folder, f"{stem}.txt")
    try:
        attrs: Path | None = _find(folder, f"{stem}_item2attributes.json")
    except FileNotFoundError:
        attrs = None
    return read_s3rec(seq, attrs)


def write_synthetic_s3rec(folder: str | Path, *, users: int = 300, items: int = 120, categories: int = 8, seed: int = 0) -> Path:
    """Write a small S3-Rec-format data set (``Synth.txt`` + ``Synth_item2attributes.json``) with learnable structure.

    Each user prefers two categories; each next item is drawn from a preferred category with
    probability 0.8 (popular items more often). Used by the tests and the example.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    item_cat = rng.integers(0, categories, size=items)
    popularity = rng.zipf(1.6, size=items).astype(np.float64)
    lines = []
    for u in range(users):
        liked = rng.choice(categories, size=2, replace=False)
        n = int(rng.integers(3, 25))
        seq = []
        for _ in range(n):
            pool = np.flatnonzero(np.isin(item_cat, liked)) if rng.random() < 0.8 else np.arange(items)
            p = popularity[pool] / popularity[pool].sum()
            seq.append(int(rng.choice(pool, p=p)) + 1)
        lines.append(" ".join(map(str, [u + 1, *seq])))
    (folder / "Synth.txt").write_text("\n".join(lines) + "\n")
    attrs = {str(i + 1): [int(item_cat[i]) + 1, 1000 + int(i % 5)] for i in range(items)}
    (folder / "Synth_item2attributes.json").write_text(json.dumps(attrs))
    return folder


# ------------------------------------------------------------------------------------------ examples


@dataclass
class Examples:
    """Rows of one split: which user, which target position, which target item, label."""

    user: np.ndarray  # (R,) user index (0..U-1)
    position: np.ndarray  # (R,) position of the POSITIVE in the user's sequence (history = before it)
    target_item: np.ndarray  # (R,) encoded target item
    target_cat: np.ndarray  # (R,) encoded target category
    label: np.ndarray  # (R,) float32 in {0, 1}

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Examples:
        return Examples(self.user[index], self.position[index], self.target_item[index], self.target_cat[index], self.label[index])


@dataclass
class SequenceBatch(Batch):
    """A ``torchrec`` ``Batch`` (empty dense features) plus the user index of every row (for GAUC)."""

    users: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device: torch.device, non_blocking: bool = False) -> SequenceBatch:
        return SequenceBatch(
            dense_features=self.dense_features.to(device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            users=self.users.to(device, non_blocking=non_blocking),
        )


class SequenceDataset:
    """Encoded sequences + the leave-last-out protocol + popularity negatives + jagged batches.

    Args:
        raw: the per-user sequences.
        cfg: protocol settings (L, N, min_history, seed).

    Example::

        ds = SequenceDataset(load_raw(cfg), cfg)
        for batch in ds.batches(ds.examples("train", epoch=0), batch_size=256, shuffle=True, seed=0):
            batch.sparse_features["hist_item"]   # JaggedTensor: lengths (B,), values (sum of lengths,)
    """

    def __init__(self, raw: RawSequences, cfg: SequenceDataConfig) -> None:
        self.cfg = cfg
        self.raw_users = raw.users
        self.offsets = raw.offsets.astype(np.int64)
        lengths = np.diff(self.offsets)
        self.num_users = len(lengths)
        user_of = np.repeat(np.arange(self.num_users), lengths)
        pos_in_user = np.arange(len(raw.items)) - self.offsets[user_of]
        # training positions: all but each user's last two
        train_pos = pos_in_user < (lengths[user_of] - 2)
        known_items = np.unique(raw.items[train_pos])
        self.item_raw_ids = known_items  # encoded id i >= 2 is raw id item_raw_ids[i - 2]
        self.items = self._encode(raw.items, known_items)  # (total,)
        raw_cat = np.array([raw.item_category.get(int(i), -1) for i in raw.items], dtype=np.int64)
        known_cats = np.unique(raw_cat[train_pos & (raw_cat >= 0)])
        self.category_raw_ids = known_cats
        self.categories = np.where(raw_cat < 0, MISSING_ID, self._encode(raw_cat, known_cats))  # per interaction
        self.num_items = len(known_items) + FIRST_ID  # table rows (0 missing, 1 OOV)
        self.num_categories = len(known_cats) + FIRST_ID
        self.num_positions = cfg.max_history + 1
        # category of every encoded item (for negatives: always known items)
        self.item_cat = np.zeros(self.num_items, dtype=np.int64)
        self.item_cat[self.items[train_pos]] = self.categories[train_pos]
        self.popularity = np.bincount(self.items[train_pos], minlength=self.num_items).astype(np.float64)
        self.popularity[:FIRST_ID] = 0.0
        self.raw_item_attributes = raw.item_attributes
        trained_attrs = [a for i in known_items.tolist() for a in raw.item_attributes.get(int(i), ())]
        self.attribute_raw_ids = np.unique(np.asarray(trained_attrs, dtype=np.int64))
        self.num_attributes = len(self.attribute_raw_ids) + FIRST_ID
        self.set_item_attributes()
        self.lengths = lengths
        self._user_item_keys = np.unique(user_of * self.num_items + self.items)  # (user, item) pairs, sorted
        self._train_mask = train_pos
        self._user_of = user_of
        self._pos_in_user = pos_in_user
        self._hard_pool: np.ndarray | None = None  # (U, M), built by hard_pool on the first training draw

    @property
    def hard_pool(self) -> np.ndarray | None:
        """(U, M) hard-negative candidates per user from ``cfg.hard_negatives`` (None without it), built on first
        use: only training draws need it, so restoring a trained model never reads the retrieval run."""
        if self._hard_pool is None and self.cfg.hard_negatives:
            from recsys_emb.retrieval.pipeline import hard_negative_pool

            self._hard_pool = hard_negative_pool(self, self.cfg.hard_negatives, self.cfg.hard_negative_pool)
        return self._hard_pool

    # -------------------------------------------------------------------------------- vocabulary
    def vocabulary(self) -> dict[str, object]:
        """What fixes the user and item ids of this data set, with a fingerprint (sha256) of both id maps.

        Every run trained on these sequences (the ranker, and a retrieval model trained with
        ``data.sequence``) writes it to ``vocabulary.json``; the pipeline refuses two runs whose
        fingerprints differ (their ids would mean different users / items)."""
        import hashlib

        h = hashlib.sha256()
        for part in (np.asarray(self.raw_users, dtype=np.int64), np.asarray(self.item_raw_ids, dtype=np.int64)):
            h.update(np.ascontiguousarray(part).tobytes())
            h.update(b"|")
        return {"dataset": self.cfg.dataset, "source": str(self.cfg.path or ""), "users": int(self.num_users),
                "items": int(self.num_items), "fingerprint": h.hexdigest()}

    def split_items(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr (U + 1,), items)`` of every user's encoded items of ``split``: ``train`` = the training
        positions (the history before the validation target), ``valid`` / ``test`` = the one target."""
        n = self.lengths[self._user_of]
        p = self._pos_in_user
        mask = {"train": p < n - 2, "valid": p == n - 2, "test": p == n - 1}[split]
        indptr = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self._user_of[mask], minlength=self.num_users), out=indptr[1:])
        return indptr, self.items[mask]

    def to_graph(self) -> "GraphDataset":
        """The leave-last-out protocol as a user-item graph in THIS data set's ids (a retrieval model trained
        on it shares the ranker's vocabulary): ``train`` = training positions, ``valid`` / ``test`` = the
        validation / test targets. Items are the encoded ids (rows 0 and 1, missing / OOV, are isolated
        nodes; an OOV target cannot be retrieved and counts as a miss)."""
        from recsys_emb.data.graphs import GraphDataset, GraphSplit

        splits = {}
        for split in ("train", "valid", "test"):
            indptr, items = self.split_items(split)
            users = np.repeat(np.arange(self.num_users), np.diff(indptr))
            keys = np.unique(users * self.num_items + items)  # sorted per user, repeats kept once
            ip = np.zeros(self.num_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(keys // self.num_items, minlength=self.num_users), out=ip[1:])
            splits[split] = GraphSplit(ip, keys % self.num_items, f"{self.cfg.dataset}:{split}", int((np.diff(ip) > 0).sum()),
                                       len(items) - len(keys))
        return GraphDataset(self.num_users, self.num_items, splits, f"{self.cfg.dataset} sequences ({self.cfg.path})")

    def set_item_attributes(self) -> None:
        """The encoded attribute ids of every encoded item (CSR over ``item_raw_ids``; ids 0/1 have none)."""
        per_item = [self.raw_item_attributes.get(int(i), []) for i in self.item_raw_ids]
        counts = np.array([0] * FIRST_ID + [len(a) for a in per_item], dtype=np.int64)
        self.item_attr_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.item_attr_offsets[1:])
        flat = np.array([a for attrs in per_item for a in attrs], dtype=np.int64)
        self.item_attr_values = self._encode(flat, self.attribute_raw_ids)

    @staticmethod
    def _encode(values: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Raw ids -> ``FIRST_ID + position in known`` (sorted), or ``OOV_ID`` when not in ``known``."""
        if len(known) == 0:
            return np.full(len(values), OOV_ID, dtype=np.int64)
        idx = np.minimum(np.searchsorted(known, values), len(known) - 1)
        return np.where(known[idx] == values, idx + FIRST_ID, OOV_ID).astype(np.int64)

    # -------------------------------------------------------------------------------- protocol
    def positives(self, split: str) -> Examples:
        """The positive examples of ``split`` (train | valid | test) in user order."""
        n = self.lengths[self._user_of]
        p = self._pos_in_user
        if split == "train":
            mask = (p < n - 2) & (p >= self.cfg.min_history)
        elif split == "valid":
            mask = p == n - 2
        elif split == "test":
            mask = p == n - 1
        else:
            raise ValueError(f"split must be train, valid or test, got '{split}'")
        rows = np.flatnonzero(mask)
        return Examples(
            self._user_of[rows], p[rows], self.items[rows], self.categories[rows], np.ones(len(rows), dtype=np.float32)
        )

    def sample_negatives(self, user: np.ndarray, num: int, rng: np.random.Generator, hard: bool = False) -> np.ndarray:
        """(len(user), num) items drawn by training popularity, none of them in the user's sequence.

        ``hard`` (training, with ``cfg.hard_negatives``): each draw is, with probability
        ``hard_negative_fraction``, a uniform pick from the user's hard-negative pool instead (the pool
        holds no item of the user's sequence)."""
        prob = self.popularity / self.popularity.sum()
        out = rng.choice(self.num_items, size=(len(user), num), p=prob)
        if hard and self.cfg.hard_negatives and self.cfg.hard_negative_fraction > 0:  # 0: exactly the popularity draws
            pool = self.hard_pool[user]  # (R, M)
            pick = pool[np.arange(len(user))[:, None], rng.integers(0, pool.shape[1], size=(len(user), num))]
            take = (rng.random((len(user), num)) < self.cfg.hard_negative_fraction) & (pick >= FIRST_ID)
            out = np.where(take, pick, out)
        users = np.repeat(user, num).reshape(len(user), num)
        for _ in range(1000):
            keys = users * self.num_items + out
            pos = np.searchsorted(self._user_item_keys, keys)
            bad = self._user_item_keys[np.minimum(pos, len(self._user_item_keys) - 1)] == keys
            if not bad.any():
                return out
            out[bad] = rng.choice(self.num_items, size=int(bad.sum()), p=prob)
        stuck = sorted({int(self.raw_users[u]) for u in users[bad][:5]})
        raise RuntimeError(f"could not sample negatives outside the sequences of users {stuck} (raw ids): their items cover (almost) every sampleable item")

    def examples(self, split: str, epoch: int = 0) -> Examples:
        """Positives of ``split`` plus N negatives each (interleaved: positive, its negatives, next ...).

        Validation/test negatives depend only on ``seed``; training negatives on ``(seed, epoch)``.
        """
        pos = self.positives(split)
        num = self.cfg.num_negatives if split == "train" else (self.cfg.eval_negatives or self.cfg.num_negatives)
        salt = {"train": 0, "valid": 1, "test": 2}[split]
        rng = np.random.default_rng([self.cfg.seed, salt, epoch if split == "train" else 0])
        neg = self.sample_negatives(pos.user, num, rng, hard=split == "train")  # (R, N)
        group = 1 + num
        items = np.concatenate([pos.target_item[:, None], neg], axis=1).reshape(-1)
        cats = np.concatenate([pos.target_cat[:, None], self.item_cat[neg]], axis=1).reshape(-1)
        labels = np.zeros((len(pos), group), dtype=np.float32)
        labels[:, 0] = 1.0
        return Examples(np.repeat(pos.user, group), np.repeat(pos.position, group), items, cats, labels.reshape(-1))

    # -------------------------------------------------------------------------------- batches
    def make_batch(self, ex: Examples) -> SequenceBatch:
        """One jagged batch: history = the most recent ``L`` behaviours before each target."""
        L = self.cfg.max_history
        end = self.offsets[ex.user] + ex.position  # (B,) exclusive end of the history
        start = np.maximum(self.offsets[ex.user], end - L)
        lens = end - start  # (B,)
        total = int(lens.sum())
        row_start = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=row_start[1:])
        flat = np.repeat(start - row_start, lens) + np.arange(total)  # (total,) interaction indices
        recency = np.repeat(end, lens) - flat  # 1 = most recent
        ones = np.ones(len(lens), dtype=np.int64)
        a_start, a_len = self.item_attr_offsets[ex.target_item], np.diff(self.item_attr_offsets)[ex.target_item]  # (B,)
        a_row = np.zeros(len(a_len), dtype=np.int64)
        np.cumsum(a_len[:-1], out=a_row[1:])
        attrs = self.item_attr_values[np.repeat(a_start - a_row, a_len) + np.arange(int(a_len.sum()))]
        values = np.concatenate(
            [self.items[flat], self.categories[flat], recency, ex.target_item, ex.target_cat, np.zeros(len(lens), dtype=np.int64), ex.user,
             attrs]
        )
        lengths = np.concatenate([lens, lens, lens, ones, ones, ones, ones, a_len])
        kjt = KeyedJaggedTensor(
            keys=list(FEATURE_KEYS), values=torch.from_numpy(values.astype(np.int64)), lengths=torch.from_numpy(lengths.astype(np.int32))
        )
        return SequenceBatch(
            dense_features=torch.zeros(len(lens), 0),
            sparse_features=kjt,
            labels=torch.from_numpy(ex.label.astype(np.float32)),
            users=torch.from_numpy(ex.user.astype(np.int64)),
        )

    def batches(self, ex: Examples, batch_size: int, *, shuffle: bool = False, seed: int = 0, skip: int = 0) -> Iterator[SequenceBatch]:
        """Batches over ``ex`` (shuffled by ``seed`` when asked); the last one may be smaller.

        ``skip`` leaves out the first ``skip`` batches of that order (resuming mid-epoch) without building them.
        """
        order = np.random.default_rng(seed).permutation(len(ex)) if shuffle else np.arange(len(ex))
        for lo in range(skip * batch_size, len(ex), batch_size):
            yield self.make_batch(ex.take(order[lo : lo + batch_size]))

    # -------------------------------------------------------------------------------- statistics
    def table_sizes(self) -> dict[str, int]:
        """Rows per field (item, category, position) and side feature (user, target_attrs)."""
        return {"item": self.num_items, "category": self.num_categories, "position": self.num_positions, "user": self.num_users,
                "target_attrs": self.num_attributes}

    def feature_frequencies(self) -> dict[str, np.ndarray]:
        """n_j per table row: occurrences in the POSITIVE training examples (as target or behaviour).

        Used by the mini-batch-aware regulariser. A behaviour at position ``t`` of a user with ``T``
        training targets (positions ``min_history .. T-1``) appears in the histories of the targets
        ``max(t+1, min_history) .. min(t+L, T-1)``. Negatives are ignored (they change every epoch).
        """
        L, m = self.cfg.max_history, self.cfg.min_history
        T = np.maximum(self.lengths[self._user_of] - 2, 0)  # training targets per user, per interaction
        t = self._pos_in_user
        as_hist = np.clip(np.minimum(t + L, T - 1) - np.maximum(t + 1, m) + 1, 0, None)
        as_target = ((t < T) & (t >= m)).astype(np.int64)
        weight = as_hist + as_target
        item = np.bincount(self.items, weights=weight, minlength=self.num_items)
        cat = np.bincount(self.categories, weights=weight, minlength=self.num_categories)
        # position r >= 1 is used by every training target with at least r earlier behaviours; 0 by every target
        pos_train = self.positives("train").position
        hist_len = np.minimum(pos_train, L)
        position = np.bincount(hist_len, minlength=L + 1)[::-1].cumsum()[::-1].astype(np.float64)
        position[0] = len(pos_train)
        return {"item": item, "category": cat, "position": position}

    def summary(self) -> dict[str, float | int]:
        return {
            "users": self.num_users,
            "interactions": int(self.offsets[-1]),
            "item_rows": self.num_items,
            "category_rows": self.num_categories,
            "train_positives": len(self.positives("train")),
            "mean_history_train": float(np.minimum(self.positives("train").position, self.cfg.max_history).mean())
            if len(self.positives("train"))
            else 0.0,
            "oov_test_targets": int((self.positives("test").target_item == OOV_ID).sum()),
        }
