"""Shared fixtures: small prepared CTR data sets built directly as arrays (no text parsing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Data caches (prepared Criteo, parsed sequences, graphs) go to a per-session temp folder, never ~/.cache."""
    import os

    if "RECSYS_EMB_CACHE" not in os.environ:
        os.environ["RECSYS_EMB_CACHE"] = str(tmp_path_factory.mktemp("recsys_emb_cache"))


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as module ``bench_<name>``, registered in sys.modules
    (dataclasses and pickling look their module up there)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shared_dataset(*parts: str) -> Path:
    """Path under ../shared/datasets, or skip the test when that folder is absent (e.g. user machines)."""
    path = SHARED_DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not available: {path}")
    return path


def make_prepared(root: Path, rows: int, *, seed: int = 0, vocab: int = 50, n_dense: int = 3, n_sparse: int = 4) -> Path:
    """Write a prepared-format folder whose labels depend on one sparse feature and one dense feature."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sparse = rng.integers(0, vocab, size=(rows, n_sparse)).astype(np.int32)
    dense = rng.exponential(1.0, size=(rows, n_dense)).astype(np.float32)
    effect = np.sin(np.arange(vocab)) * 2.0
    logit = effect[sparse[:, 0]] + 0.8 * (dense[:, 0] - 1.0) - 1.0
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    np.save(root / "sparse.npy", sparse)
    np.save(root / "dense.npy", dense)
    np.save(root / "labels.npy", labels)
    meta = {
        "format_version": 1, "dataset": "criteo", "rows": rows, "has_labels": True,
        "positives": int(labels.sum()), "ctr": float(labels.mean()),
        "dense_features": [f"I{i + 1}" for i in range(n_dense)],
        "sparse_features": [f"C{i + 1}" for i in range(n_sparse)],
        "vocab_sizes": [vocab] * n_sparse, "categorical_encoding": "vocab", "min_count": 1, "hash_buckets": None,
        "dense_transform": "log1p(max(x, 0))", "sources": [], "skipped_rows": 0, "malformed_examples": [], "vocab_from": None,
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def prepared_dir(tmp_path: Path) -> Path:
    return make_prepared(tmp_path / "prepared", 3000)
