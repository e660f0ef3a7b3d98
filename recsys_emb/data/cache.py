"""Parse once, memory-map after: the cache of parsed raw files (sequences, graphs; Criteo has its own
prepared folders, :mod:`recsys_emb.data.resolve`).

An entry is a folder ``CACHE/<kind>/<name>-<hash>/`` holding one ``.npy`` per array and a
``meta.json``. It is written under a temporary name and published by one rename, so a crash at any
moment leaves either no entry or a complete one, and two processes building the same entry at once
both end with the same result. The hash covers the caller's key (a format version, the options that
change the parse) and the path, size and modification time of every input file, so an edited or
replaced file is parsed again. ``CACHE`` is ``$RECSYS_EMB_CACHE`` or ``~/.cache/recsys_emb``; a data
section's ``cache_dir`` overrides it and ``cache: false`` bypasses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_EMB_CACHE", Path.home() / ".cache" / "recsys_emb"))


def file_fingerprint(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: an edited or replaced file gets another one."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def file_fingerprints(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """:func:`file_fingerprint` of each file, sorted: a changed file changes the key."""
    return sorted(file_fingerprint(path) for path in paths)


Parsed = tuple[dict[str, np.ndarray], dict[str, Any]]


def cached_arrays(kind: str, name: str, key: dict[str, Any], build: Callable[[], Parsed],
                  cache_dir: str | Path | None = None) -> Parsed:
    """``build()``'s ``(arrays, meta)``, from the cache entry of ``key`` when there is one.

    Args:
        kind: the cache sub-folder (``sequences``, ``graphs``).
        name: a readable prefix of the entry's folder name (the data set).
        key: everything the parse depends on (JSON-serialisable; include the input files'
            :func:`file_fingerprints` and a format version).
        build: parses the raw files; ``arrays`` are written as ``.npy``, ``meta`` as JSON.
        cache_dir: the cache root (None = :func:`default_cache_dir`).

    Returns:
        ``(arrays, meta)``; read from a cache entry, the arrays are read-only memory maps.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / kind / f"{name}-{digest}"
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        arrays = {n: np.load(root / f"{n}.npy", mmap_mode="r") for n in meta.pop("_arrays")}
        return arrays, meta
    arrays, meta = build()
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n, array in arrays.items():
        np.save(tmp / f"{n}.npy", np.ascontiguousarray(array))
    (tmp / "meta.json").write_text(json.dumps({**meta, "_arrays": list(arrays)}) + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another process published the same entry first (same content)
        shutil.rmtree(tmp, ignore_errors=True)
    return arrays, meta
