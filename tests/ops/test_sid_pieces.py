"""recsys_emb::sid_pieces equals SemanticIdTransform.pieces and an independent per-id Python reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys_emb.ops as ops
from recsys_emb.modules.semantic_ids import SemanticIdTransform


@st.composite
def sid_case(draw):
    pieces = draw(st.lists(st.lists(st.integers(1, 50), max_size=4), min_size=1, max_size=6))  # rows per known item
    id_offset = draw(st.integers(0, 3))
    lengths = draw(st.lists(st.integers(0, 4), max_size=5))
    ids = draw(st.lists(st.integers(-3, len(pieces) + id_offset + 2), min_size=sum(lengths), max_size=sum(lengths)))
    return pieces, id_offset, lengths, ids, draw(st.sampled_from([torch.int32, torch.int64])), draw(st.booleans())


def python_reference(pieces, id_offset, lengths, ids):
    values, owner, new_lengths, i = [], [], [], 0
    for length in lengths:
        total = 0
        for _ in range(length):
            item = ids[i] - id_offset
            rows = pieces[item] if 0 <= item < len(pieces) else [0]  # unknown items -> shared row 0
            values += rows
            owner += [i] * len(rows)
            total += len(rows)
            i += 1
        new_lengths.append(total)
    return values, new_lengths, owner


@settings(max_examples=60, deadline=None)
@given(sid_case())
def test_matches_transform_and_python_reference(case):
    pieces, id_offset, lengths, ids, id_dtype, weighted = case
    item_offsets = torch.tensor([0, *torch.tensor([len(p) for p in pieces]).cumsum(0).tolist()], dtype=torch.int64)
    item_rows = torch.tensor([r for p in pieces for r in p], dtype=torch.int64)
    t = SemanticIdTransform(item_offsets, item_rows, ["item"], id_offset=id_offset)
    ids_t = torch.tensor(ids, dtype=id_dtype)
    lengths_t = torch.tensor(lengths, dtype=torch.int32)
    weights = torch.rand(len(ids)) if weighted else None
    values, new_lengths, owner = ops.sid_pieces(ids_t, lengths_t, t.item_offsets, t.item_rows, id_offset)
    mv, ml, mw = t.pieces(ids_t, lengths_t, weights)
    assert torch.equal(values, mv) and torch.equal(new_lengths, ml) and new_lengths.dtype == lengths_t.dtype
    if weighted:
        assert torch.equal(weights[owner], mw)
    ev, el, eo = python_reference(pieces, id_offset, lengths, ids)
    assert values.tolist() == ev and new_lengths.tolist() == el and owner.tolist() == eo


def test_torch_compile_with_data_dependent_size():
    ids, lengths, item_offsets, item_rows, off = (
        torch.tensor([0, 2, 9, 1]), torch.tensor([1, 3]), torch.tensor([0, 2, 3, 5, 6]), torch.tensor([4, 5, 6, 7, 8, 0]), 0
    )

    def fn(i, ln, io, ir):
        values, new_lengths, owner = ops.sid_pieces(i, ln, io, ir, off)
        return values * 2, new_lengths, owner

    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(ids, lengths, item_offsets, item_rows)
    expected = fn(ids, lengths, item_offsets, item_rows)
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
