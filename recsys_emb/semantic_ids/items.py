"""Item text for content embeddings: readers for the item files the semantic-ID pipeline supports.

Every reader returns an :class:`ItemTexts` (item keys in a fixed order + one text per item). The
order matters: row ``i`` of the embedding matrix, of the RQ-VAE codes and of the SID code table is
item ``keys[i]``. Items without text are listed in ``missing``; :func:`check_missing` turns them into
a clear error (default) or, with ``missing_text: empty``, keeps them with an empty text (they then
share one content vector, and the collision suffix still gives them distinct IDs).

Formats (where to get the public files: datasets/*/README.md; a missing file of a public data set
raises :class:`~recsys_emb.data.availability.MissingDataError`, which says so):

* ``unisrec``: ``item_id<TAB>text`` with an optional ``item_id:token<TAB>text:token_seq`` header
  (UniSRec ``*.text``); with ``index`` (a ``*.item2index`` file, ``item<TAB>index``) the rows follow
  that index, and indexed items absent from the text file are missing.
* ``amazon_json``: MiniOneRec ``*.item.json``: ``{id: {title, description, brand, categories}}``;
  text = ``title. brand. categories. description`` (non-empty fields); items sorted by integer id.
* ``movielens``: ``movies.dat`` (``MovieID::Title::Genres``, Latin-1); text = ``Title. Genres: ...``.
* ``tsv``: ``item_id<TAB>text`` without a header, file order.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from recsys_emb.data.availability import ITEM_TEXT_FORMATS, require_file
from recsys_emb.utils import open_text


@dataclass
class ItemTexts:
    """Item keys (in row order) and their texts; ``missing`` are keys without text."""

    keys: list[str]
    texts: list[str]
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


class MissingTextError(ValueError):
    """Some items have no text; the message lists them."""


def _resolve(path: str | Path) -> Path:
    """``path``, or ``path + .gz`` when only the compressed copy exists."""
    p = Path(path)
    if not p.exists() and Path(str(p) + ".gz").exists():
        return Path(str(p) + ".gz")
    if not p.exists():
        raise FileNotFoundError(f"item text file not found: {p}")
    return p


def _read_tsv(path: Path, *, header_prefix: str | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if lineno == 1 and header_prefix and line.startswith(header_prefix):
                continue
            if not line:
                continue
            key, sep, text = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected 'item_id<TAB>text', found no tab in {line[:60]!r}")
            rows.append((key.strip(), text.strip()))
    return rows


def read_unisrec(path: str | Path, index: str | Path | None = None) -> ItemTexts:
    """UniSRec ``*.text`` (+ optional ``*.item2index`` fixing the order)."""
    p = _resolve(path)
    rows = _read_tsv(p, header_prefix="item_id:")
    text_of: dict[str, str] = {}
    for key, text in rows:
        if key in text_of:
            raise ValueError(f"{p}: item '{key}' appears twice")
        text_of[key] = text
    if index is None:
        keys = [k for k, _ in rows]
    else:
        ip = _resolve(index)
        pairs = _read_tsv(ip, header_prefix=None)
        order: dict[int, str] = {}
        for lineno, (key, idx) in enumerate(pairs, start=1):
            try:
                order[int(idx)] = key
            except ValueError:
                raise ValueError(f"{ip}:{lineno}: index field {idx!r} of item '{key}' is not an integer") from None
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"{ip}: indices must be 0..{len(order) - 1} without gaps")
        keys = [order[i] for i in range(len(order))]
    texts = [text_of.get(k, "") for k in keys]
    missing = [k for k, t in zip(keys, texts) if not t]
    return ItemTexts(keys, texts, missing)


def _field_text(value: object) -> str:
    """A MiniOneRec field: a plain string, or the repr of a list of strings (descriptions)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v).strip() for v in value if str(v).strip())
    s = str(value).strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return s
        if isinstance(parsed, list):
            return " ".join(str(v).strip() for v in parsed if str(v).strip())
    return s


def read_amazon_json(path: str | Path) -> ItemTexts:
    """MiniOneRec ``*.item.json``: title, brand, categories, description joined with '. '."""
    p = _resolve(path)
    with open_text(p) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object {{item_id: {{title, ...}}}}")
    def order(k: str) -> tuple[int, int | str]:
        return (0, int(k)) if k.isdigit() else (1, k)
    keys = sorted(data, key=order)
    texts = []
    for k in keys:
        rec = data[k]
        if not isinstance(rec, dict):
            raise ValueError(f"{p}: item '{k}' is not an object")
        parts = [_field_text(rec.get(name)) for name in ("title", "brand", "categories", "description")]
        texts.append(". ".join(x for x in parts if x))
    missing = [k for k, t in zip(keys, texts) if not t]
    return ItemTexts(keys, texts, missing)


def read_movielens(path: str | Path) -> ItemTexts:
    """MovieLens ``movies.dat`` (``MovieID::Title::Genres``, Latin-1)."""
    p = _resolve(path)
    keys, texts = [], []
    with open_text(p, encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != 3:
                raise ValueError(f"{p}:{lineno}: expected 'MovieID::Title::Genres', got {line[:60]!r}")
            movie, title, genres = parts
            keys.append(movie)
            genre_text = ", ".join(g for g in genres.split("|") if g and g != "(no genres listed)")
            texts.append(f"{title.strip()}. Genres: {genre_text}" if genre_text else title.strip())
    missing = [k for k, t in zip(keys, texts) if not t]
    return ItemTexts(keys, texts, missing)


def read_items(fmt: str, path: str | Path, index: str | Path | None = None) -> ItemTexts:
    """Dispatch on ``fmt`` (unisrec | amazon_json | movielens | tsv).

    Raises:
        MissingDataError: a file of a public data set (the formats of
            :data:`~recsys_emb.data.availability.ITEM_TEXT_FORMATS`) is absent;
            the message says where to download it and which datasets/<name>/README.md explains it.
        FileNotFoundError: a ``tsv`` file (your own data) is absent.
    """
    if fmt in ITEM_TEXT_FORMATS:
        path = require_file(path, ITEM_TEXT_FORMATS[fmt])
        if index is not None and fmt == "unisrec":
            index = require_file(index, ITEM_TEXT_FORMATS[fmt])
    if fmt == "unisrec":
        return read_unisrec(path, index)
    if index is not None:
        raise ValueError(f"items.index is only supported for format 'unisrec', not '{fmt}'")
    if fmt == "amazon_json":
        return read_amazon_json(path)
    if fmt == "movielens":
        return read_movielens(path)
    if fmt == "tsv":
        rows = _read_tsv(_resolve(path), header_prefix=None)
        keys = [k for k, _ in rows]
        texts = [t for _, t in rows]
        return ItemTexts(keys, texts, [k for k, t in rows if not t])
    raise ValueError(f"unknown item text format '{fmt}' (unisrec | amazon_json | movielens | tsv)")


def check_missing(items: ItemTexts, policy: str = "error", *, where: str = "") -> ItemTexts:
    """Raise :class:`MissingTextError` listing items without text, or (``empty``) keep them as ``""``."""
    if not items.missing:
        return items
    if policy == "empty":
        return items
    shown = ", ".join(items.missing[:20]) + (" ..." if len(items.missing) > 20 else "")
    raise MissingTextError(
        f"{where + ': ' if where else ''}{len(items.missing)} of {len(items)} items have no text: {shown}. "
        "Add their text, drop them from the item list, or set items.missing_text: empty "
        "(they are encoded as the empty string and told apart by the collision suffix)"
    )
