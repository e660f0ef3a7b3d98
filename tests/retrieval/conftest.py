"""Retrieval tests run single-threaded: these tiny problems only lose to OpenMP oversubscription on shared CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def write_random_splits(root: Path, n_users: int, n_items: int, sizes: dict[str, int], g: torch.Generator) -> Path:
    """``root/<split>.txt`` in the LightGCN format: every user draws ``sum(sizes)`` distinct random items,
    split in order over ``sizes`` (e.g. ``{"train": 9, "test": 3}``)."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {name: [] for name in sizes}
    for u in range(n_users):
        items = torch.randperm(n_items, generator=g)[:sum(sizes.values())].tolist()
        start = 0
        for name, size in sizes.items():
            files[name].append(f"{u} " + " ".join(map(str, items[start:start + size])))
            start += size
    for name, lines in files.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
