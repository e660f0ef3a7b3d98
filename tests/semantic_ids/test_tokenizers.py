"""SID tokenisers against hand-worked examples; piece->row mappings; SentencePiece."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_emb.semantic_ids.tokenizers import NgramTokenizer, PieceTable, SentencePieceTokenizer

CODES = np.array([[1, 2, 0], [1, 0, 1]])
SIZES = [3, 4, 2]


def rows(kind: str, mapping: str = "dense", **kw) -> tuple[list[list[int]], int]:
    tok = NgramTokenizer(kind, SIZES, kw.pop("levels", None))
    pieces = tok.pieces(CODES)
    table = PieceTable(tok, mapping, **kw).fit(pieces)
    offsets, flat = table.item_rows(pieces)
    return [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(CODES))], table.num_rows


def test_unigram_hand_worked():
    tok = NgramTokenizer("unigram", SIZES)
    assert tok.pieces(CODES)[0] == [(0, 1), (1, 2), (2, 0)]
    got, n = rows("unigram")
    # row = 1 + level offset (0, 3, 7) + code
    assert got == [[2, 6, 8], [2, 4, 9]]
    assert n == 1 + 3 + 4 + 2


def test_bigram_hand_worked():
    tok = NgramTokenizer("bigram", SIZES)
    assert tok.pieces(CODES)[1] == [(0, 1, 0), (1, 0, 1)]
    got, n = rows("bigram")
    # level pair 0: offset 0, index c0*4 + c1; pair 1: offset 12, index c1*2 + c2
    assert got == [[1 + 1 * 4 + 2, 1 + 12 + 2 * 2 + 0], [1 + 4, 1 + 12 + 1]]
    assert n == 1 + 3 * 4 + 4 * 2


def test_prefix_ngram_hand_worked():
    tok = NgramTokenizer("prefix_ngram", SIZES)
    assert tok.pieces(CODES)[0] == [(0, 1), (1, 1, 2), (2, 1, 2, 0)]
    got, n = rows("prefix_ngram")
    # prefixes of length 1 (3 rows), 2 (12 rows), 3 (24 rows); mixed-radix index inside each block
    assert got == [[1 + 1, 1 + 3 + (1 * 4 + 2), 1 + 15 + (1 * 4 + 2) * 2 + 0],
                   [1 + 1, 1 + 3 + (1 * 4 + 0), 1 + 15 + (1 * 4 + 0) * 2 + 1]]
    assert n == 1 + 3 + 12 + 24
    got2, _ = rows("prefix_ngram", levels=2)
    assert got2 == [[2, 10], [2, 8]]


def test_vocab_and_hash_mappings():
    got, n = rows("prefix_ngram", "vocab")
    # first-seen order: (0,1) -> 1, (1,1,2) -> 2, (2,1,2,0) -> 3, (1,1,0) -> 4, (2,1,0,1) -> 5
    assert got == [[1, 2, 3], [1, 4, 5]] and n == 6
    tok = NgramTokenizer("prefix_ngram", SIZES)
    table = PieceTable(tok, "vocab").fit(tok.pieces(CODES))
    assert table.row((0, 2)) == 0  # unseen piece of a new item -> unknown row
    got_h, n_h = rows("unigram", "hash", num_rows=1000, seed=3)
    assert n_h == 1000 and all(1 <= r < 1000 for item in got_h for r in item)
    assert got_h[0][0] == got_h[1][0]  # same piece, same row
    assert rows("unigram", "hash", num_rows=1000, seed=3)[0] == got_h  # deterministic


def test_table_row_counts_and_bad_pieces():
    assert NgramTokenizer("unigram", [256] * 3 + [5]).dense_rows() == 3 * 256 + 5
    assert NgramTokenizer("bigram", [256] * 3 + [5]).dense_rows() == 2 * 256 * 256 + 256 * 5
    assert NgramTokenizer("prefix_ngram", [8, 8, 2]).dense_rows() == 8 + 64 + 128
    with pytest.raises(ValueError, match="use mapping 'vocab'"):
        PieceTable(NgramTokenizer("prefix_ngram", [256] * 4 + [3]), "dense")
    with pytest.raises(ValueError, match="does not fit"):
        NgramTokenizer("unigram", SIZES).dense_index((0, 3))
    with pytest.raises(ValueError, match="at least 2 levels"):
        NgramTokenizer("bigram", [4])


def _sp_data() -> tuple[np.ndarray, list[int], np.ndarray]:
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 6, 300), rng.integers(0, 6, 300), rng.integers(0, 3, 300)], 1)
    codes[:100, :2] = [2, 4]  # a frequent prefix
    counts = rng.integers(1, 10, 300)
    return codes, [6, 6, 3], counts


def test_sentencepiece_deterministic_and_within_items(tmp_path):
    codes, sizes, counts = _sp_data()
    a = SentencePieceTokenizer.train(codes, sizes, vocab_size=40, item_counts=counts, seed=7)
    b = SentencePieceTokenizer.train(codes, sizes, vocab_size=40, item_counts=counts, seed=7)
    assert a.model_proto == b.model_proto
    assert a.pieces(codes) == b.pieces(codes)
    strings = SentencePieceTokenizer.symbols(codes, sizes, 3)
    for s, parts in zip(strings, a.piece_strings(codes)):
        assert "".join(parts) == s  # pieces tile the item's own symbols: never cross item boundaries
    # level-offset symbols: code c at level l is chr(base + offset_l + c)
    assert ord(strings[0][1]) - ord(strings[0][0]) == (sizes[0] + codes[0, 1]) - codes[0, 0]
    # the frequent prefix (2, 4) became one piece
    assert any(len(p) >= 2 for p in a.piece_strings(codes[:1])[0])
    a.save(tmp_path / "sp.model")
    c = SentencePieceTokenizer.load(tmp_path / "sp.model", sizes)
    assert c.pieces(codes) == a.pieces(codes)
    table = PieceTable(a, "dense")
    offsets, flat = table.item_rows(a.pieces(codes))
    assert flat.max() < table.num_rows == a.dense_rows() + 1


def test_sentencepiece_uses_item_frequency():
    codes, sizes, _ = _sp_data()
    heavy = np.ones(300, np.int64)
    heavy[200:] = 1000  # make other items dominate
    light = SentencePieceTokenizer.train(codes, sizes, vocab_size=25)
    weighted = SentencePieceTokenizer.train(codes, sizes, vocab_size=25, item_counts=heavy)
    assert light.model_proto != weighted.model_proto
