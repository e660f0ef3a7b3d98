"""Retrieval metrics against straightforward per-user loops; the interaction reader's errors."""

from __future__ import annotations

import gzip
import math

import pytest
import torch

from recsys_emb.retrieval.data import load_interaction_data, read_user_item_pairs
from recsys_emb.retrieval.evaluate import diversity_metrics, ranking_metrics
from recsys_emb.retrieval.index import Csr


def _csr(lists):
    lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)
    offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return Csr(offsets, torch.tensor([i for x in lists for i in x], dtype=torch.long))


def test_recall_and_ndcg_match_loops():
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(50, generator=g)[:10] for _ in range(20)])
    ids[3, 7:] = -1
    test = [torch.randperm(50, generator=g)[: int(n)].tolist() for n in torch.randint(0, 8, (20,), generator=g)]
    got = ranking_metrics(ids, _csr(test), [5, 10])
    for k in (5, 10):
        rec, ndcg = [], []
        for row, t in zip(ids.tolist(), test):
            if not t:
                continue
            hits = [1.0 if i in t else 0.0 for i in row[:k]]
            rec.append(sum(hits) / len(t))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
            ndcg.append(dcg / idcg)
        assert abs(got[f"recall@{k}"] - sum(rec) / len(rec)) < 1e-6
        assert abs(got[f"ndcg@{k}"] - sum(ndcg) / len(ndcg)) < 1e-6


def test_diversity_matches_loops():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(30, 5, generator=g)
    assign = torch.randint(0, 4, (30,), generator=g)
    ids = torch.stack([torch.randperm(30, generator=g)[:6] for _ in range(8)])
    ids[0, 4:] = -1
    got = diversity_metrics(ids, assign, 4, emb, [6])
    unit = torch.nn.functional.normalize(emb, dim=1)
    dist, ent, ild = [], [], []
    for row in ids.tolist():
        row = [i for i in row if i >= 0]
        cl = [int(assign[i]) for i in row]
        dist.append(len(set(cl)))
        ent.append(-sum((cl.count(c) / len(cl)) * math.log(cl.count(c) / len(cl)) for c in set(cl)))
        sims = [float(unit[a] @ unit[b]) for x, a in enumerate(row) for y, b in enumerate(row) if x != y]
        ild.append(1 - sum(sims) / len(sims))
    assert abs(got["clusters@6"] - sum(dist) / 8) < 1e-6
    assert abs(got["entropy@6"] - sum(ent) / 8) < 1e-5
    assert abs(got["ild@6"] - sum(ild) / 8) < 1e-5


def test_reader_plain_and_gz_and_errors(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 2\n1 0\n2\n")
    with gzip.open(tmp_path / "test.txt.gz", "wt") as f:
        f.write("0 3\n1 4 1\n")
    with pytest.warns(UserWarning, match=r"train.txt: 1 repeated item\(s\) .* \(first: user 0, item 2\)"):
        data = load_interaction_data(tmp_path)
    assert (data.num_users, data.num_items) == (3, 5)
    assert data.train.user_items(0).tolist() == [1, 2] and data.train.user_items(2).tolist() == []
    assert data.test.user_items(1).tolist() == [4, 1]
    sel = data.train.select(torch.tensor([2, 0]))
    assert sel.offsets.tolist() == [0, 0, 2] and sel.ids.tolist() == [1, 2]
    (tmp_path / "bad.txt").write_text("0 1\n1 x 2\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: 'x' is not an integer id"):
        read_user_item_pairs(tmp_path / "bad.txt")
    (tmp_path / "neg.txt").write_text("0 1\n1 2 -3\n")
    with pytest.raises(ValueError, match=r"neg.txt:2: negative item id \(field 3\) -3"):
        read_user_item_pairs(tmp_path / "neg.txt")
    (tmp_path / "dup.txt").write_text("0 1\n0 2\n")
    with pytest.raises(ValueError, match=r"dup.txt:2: user 0 already has a line"):
        read_user_item_pairs(tmp_path / "dup.txt")


def test_reader_keeps_file_order_and_first_of_repeated_items(tmp_path):
    # users out of order, items unsorted, a repeated item, an empty line and a user without items
    (tmp_path / "train.txt").write_text("3 9 2 9 5\n\n0 4 1\n2\n1 7 7 0\n")
    (tmp_path / "test.txt").write_text("0 8\n")
    with pytest.warns(UserWarning, match=r"train.txt: 2 repeated item\(s\) on a user's line kept once \(first: user 3, item 9\)"):
        line_users, users, items = read_user_item_pairs(tmp_path / "train.txt")
    assert line_users.tolist() == [3, 0, 2, 1]
    assert list(zip(users.tolist(), items.tolist())) == [(3, 9), (3, 2), (3, 5), (0, 4), (0, 1), (1, 7), (1, 0)]
    with pytest.warns(UserWarning, match="2 repeated"):
        data = load_interaction_data(tmp_path)
    assert (data.num_users, data.num_items) == (4, 10)
    expect = {0: [4, 1], 1: [7, 0], 2: [], 3: [9, 2, 5]}  # each user's items in file order, repeats once
    assert {u: data.train.user_items(u).tolist() for u in range(4)} == expect
