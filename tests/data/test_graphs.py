"""NGCF/LightGCN graph files and normalised adjacency, against independent dense references."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.data.graphs import (
    ADJACENCY_KINDS,
    GraphFormatError,
    graph_from_interactions,
    load_graph_dataset,
    normalized_adjacency,
    parse_graph_text,
    read_graph_file,
)
from tests.conftest import shared_dataset


def test_parse_lines_users_items_and_duplicates() -> None:
    split = parse_graph_text("0 3 1 3\n\n2 0\n1\n")
    assert split.num_users == 3
    assert split.items_of(0).tolist() == [1, 3]  # sorted, the repeated 3 kept once ...
    assert split.duplicates == 1  # ... and counted
    assert split.items_of(1).tolist() == []  # a user line without items is valid
    assert split.items_of(2).tolist() == [0]
    assert split.lines == 3 and split.nnz == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0 1 2\n1 2 x3\n", ":2: 'x3' is not an integer"),
        ("0 1\n1 2\n2 1.5\n", ":3: '1.5' is not an integer"),
        ("0 1\n-1 2\n", ":2: negative user id -1"),
        ("0 1 -4\n", ":1: negative item id (field 3) -4"),
        ("0 1\n1 2\n\n0 3\n", ":4: user 0 already has a line"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "train.txt"
    path.write_text(text)
    with pytest.raises(GraphFormatError) as err:
        read_graph_file(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_graph_file_with_tabs_blank_lines_and_leading_zeros() -> None:
    rng = np.random.default_rng(1)
    lines, expected = [], {}
    for user in rng.permutation(200):
        items = rng.integers(0, 100_000, size=int(rng.integers(0, 6))).tolist()
        tokens = [str(user).zfill(3), *(str(i).zfill(int(rng.integers(1, 8))) for i in items)]
        seps = rng.choice([" ", "  ", "\t", " \t "], size=len(tokens))
        lines.append("".join(s + t for s, t in zip(seps, tokens)) + str(rng.choice(["", " ", "\t"])))
        if rng.random() < 0.1:
            lines.append(" ")
        expected[int(user)] = sorted(set(items))
    split = parse_graph_text("\n".join(lines))
    assert split.lines == 200
    for user, items in expected.items():
        assert split.items_of(user).tolist() == items


def test_load_dataset_gz_and_items_only_in_test(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 0 1\n1 1 2\n")
    with gzip.open(tmp_path / "test.txt.gz", "wt") as f:
        f.write("0 4\n2 3\n")  # item 4 and 3 never in train; user 2 has no train items
    graph = load_graph_dataset(tmp_path)
    assert (graph.num_users, graph.num_items) == (3, 5)
    assert graph.train.num_users == graph.splits["test"].num_users == 3
    summary = graph.summary()
    assert summary["items_not_in_train"] == 2 and summary["users_without_train_items"] == 1
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_graph_dataset(tmp_path / "missing")


def _dense_reference(users: list[int], items: list[int], num_users: int, num_items: int, kind: str) -> np.ndarray:
    """P built entry by entry in float64 from the formulas (0 where a degree is 0)."""
    n = num_users + num_items
    a = np.zeros((n, n))
    for u, i in zip(users, items):
        a[u, num_users + i] = a[num_users + i, u] = 1.0
    deg = a.sum(1)
    inv = lambda d, p: np.array([x**p if x > 0 else 0.0 for x in d])  # noqa: E731
    eye = np.eye(n)
    if kind == "sym":
        return np.diag(inv(deg, -0.5)) @ a @ np.diag(inv(deg, -0.5))
    if kind == "sym_self_loop":
        return np.diag(inv(deg + 1, -0.5)) @ (a + eye) @ np.diag(inv(deg + 1, -0.5))
    if kind == "row_self_loop":
        return np.diag(inv(deg + 1, -1.0)) @ (a + eye)
    if kind == "row":
        return np.diag(inv(deg, -1.0)) @ a
    if kind == "row_plus_identity":
        return np.diag(inv(deg, -1.0)) @ a + eye
    return a


@pytest.mark.parametrize("kind", ADJACENCY_KINDS)
def test_normalized_adjacency_matches_dense_reference_with_isolated_nodes(kind: str) -> None:
    # user 3 has no items, item 4 is never interacted with: both isolated nodes.
    users = [0, 0, 1, 2, 2, 2, 0]
    items = [0, 1, 1, 0, 2, 3, 0]  # (0, 0) twice: kept once
    graph = graph_from_interactions(np.array(users), np.array(items), num_users=4, num_items=5)
    adj = normalized_adjacency(graph, kind)
    expected = _dense_reference(users, items, 4, 5, kind)
    got = adj.to_dense().double().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    isolated = [3, 4 + 4]
    off_diag = got - np.diag(np.diag(got))
    assert np.all(off_diag[isolated] == 0) and np.all(off_diag[:, isolated] == 0)


def test_unknown_adjacency_kind() -> None:
    graph = graph_from_interactions(np.array([0]), np.array([0]), 1, 1)
    with pytest.raises(ValueError, match="row_self_loop"):
        normalized_adjacency(graph, "laplace")


def test_gowalla_counts_match_provenance() -> None:
    root = shared_dataset("gowalla_lightgcn")
    graph = load_graph_dataset(root)
    assert (graph.num_users, graph.num_items) == (29858, 40981)
    assert graph.train.nnz == 810128 and graph.splits["test"].nnz == 217242
    assert graph.train.duplicates == 0
    adj = normalized_adjacency(graph, "sym")
    assert adj.values.shape == (2 * 810128,) and torch.isfinite(adj.values).all()


def test_graph_files_are_parsed_once_then_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cache the first load parses, later loads memory-map the same CSR; an edited file is parsed again."""
    from recsys_emb.data import graphs

    (tmp_path / "train.txt").write_text("0 0 1 1\n1 1 2\n3 2\n")
    (tmp_path / "test.txt").write_text("0 4\n2 3\n")
    reads: list[Path] = []
    real = graphs.read_graph_file
    monkeypatch.setattr(graphs, "read_graph_file", lambda p: reads.append(p) or real(p))
    cache = tmp_path / "cache"
    uncached = load_graph_dataset(tmp_path)
    assert len(reads) == 2
    first = load_graph_dataset(tmp_path, cache=True, cache_dir=cache)
    again = load_graph_dataset(tmp_path, cache=True, cache_dir=cache)
    assert len(reads) == 4 and isinstance(again.train.indices, np.memmap)
    for graph in (first, again):
        assert (graph.num_users, graph.num_items) == (uncached.num_users, uncached.num_items) == (4, 5)
        assert graph.summary() == uncached.summary()  # counts, duplicates, lines, path
        for name, split in uncached.splits.items():
            assert np.array_equal(graph.splits[name].indptr, split.indptr)
            assert np.array_equal(graph.splits[name].indices, split.indices)
    assert len(list((cache / "graphs").iterdir())) == 1  # one published entry, no temporary folder left
    # a graph split's users/ids from the memory map work in the adjacency
    assert torch.equal(normalized_adjacency(again).values, normalized_adjacency(uncached).values)
    (tmp_path / "test.txt").write_text("0 4\n2 3 0\n")  # edited: a new key, parsed again
    assert load_graph_dataset(tmp_path, cache=True, cache_dir=cache).splits["test"].nnz == 3
    assert len(reads) == 6
