"""SID tokenisers: turn each item's semantic ID into pieces, and pieces into embedding-table rows.

Following Singh et al., "Better Generalization with Semantic IDs" (RecSys 2024), an item is
represented by the SUM of the embeddings of pieces of its ID ``(c_1, ..., c_L)``:

* ``unigram``: one piece per level, ``(l, c_l)``; dense rows ``sum_l K_l`` (equivalent to one table
  per level, stacked row-wise, sum-pooled);
* ``bigram``: consecutive pairs ``(l, c_l, c_{l+1})``; dense rows ``sum_l K_l * K_{l+1}``;
* ``prefix_ngram``: every prefix ``(c_1..c_n)``, n = 1..L; dense rows ``sum_n prod_{j<=n} K_j``;
* ``sentencepiece``: a SentencePiece model trained on SID sequences written as level-offset symbols
  (symbol of code c at level l = ``off_l + c``, one Unicode character each), each item one sentence
  weighted by its frequency; pieces never cross item boundaries because items are encoded one by one.

Piece -> row mapping (``mapping``): ``dense`` (the exact index in the tokeniser's piece space,
injective; for sentencepiece the piece id), ``vocab`` (pieces observed on the given items, in first-
seen order; unseen pieces of new items go to row 0), or ``hash`` (a salted blake2b hash into
``num_rows - 1`` rows). In every mode row 0 is reserved for "unknown": ids outside the code table
and unseen pieces. Deviation from the paper: it hashes n-grams straight into a fixed table; the
``dense``/``vocab`` modes are added so that small codebooks get collision-free tables.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsys_emb.utils import atomic_write_bytes

Piece = tuple[int, ...]

MAX_DENSE_ROWS = 1 << 31
_SYMBOL_BASE = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points, one per (level, code)


class NgramTokenizer:
    """unigram | bigram | prefix_ngram over the first ``levels`` levels of the IDs.

    Args:
        kind: unigram, bigram or prefix_ngram.
        level_sizes: K_l of every level of the IDs (the suffix level included).
        levels: how many leading levels to use (None = all).
    """

    def __init__(self, kind: str, level_sizes: Sequence[int], levels: int | None = None) -> None:
        if kind not in ("unigram", "bigram", "prefix_ngram"):
            raise ValueError(f"unknown n-gram tokeniser '{kind}' (unigram | bigram | prefix_ngram)")
        n = len(level_sizes) if levels is None else levels
        if not 1 <= n <= len(level_sizes):
            raise ValueError(f"levels must be in 1..{len(level_sizes)}, got {levels}")
        if kind == "bigram" and n < 2:
            raise ValueError("the bigram tokeniser needs IDs with at least 2 levels")
        self.kind = kind
        self.sizes = [int(k) for k in level_sizes[:n]]
        self.levels = n
        if kind == "unigram":
            block = self.sizes
        elif kind == "bigram":
            block = [a * b for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        else:
            block = [math.prod(self.sizes[: m + 1]) for m in range(n)]
        self._offsets = [sum(block[:m]) for m in range(len(block))]  # python ints: no overflow
        self._dense_rows = int(sum(block))

    def dense_rows(self) -> int:
        """Size of the exact piece space (rows of a dense table, row 0 excluded)."""
        return self._dense_rows

    def pieces(self, codes: np.ndarray) -> list[list[Piece]]:
        """Pieces of every item of ``codes`` (N, >= levels), as tuples ``(slot, *codes)``."""
        codes = np.asarray(codes, dtype=np.int64)[:, : self.levels].tolist()
        if self.kind == "unigram":
            return [[(lvl, c) for lvl, c in enumerate(row)] for row in codes]
        if self.kind == "bigram":
            return [[(lvl, row[lvl], row[lvl + 1]) for lvl in range(self.levels - 1)] for row in codes]
        return [[(m, *row[: m + 1]) for m in range(self.levels)] for row in codes]

    def dense_index(self, piece: Piece) -> int:
        """Exact index of ``piece`` in ``[0, dense_rows())``."""
        slot, *cs = piece
        if self.kind == "unigram":
            radices = [self.sizes[slot]]
        elif self.kind == "bigram":
            radices = [self.sizes[slot], self.sizes[slot + 1]]
        else:
            radices = self.sizes[: slot + 1]
        if len(cs) != len(radices) or any(not 0 <= c < k for c, k in zip(cs, radices)):
            raise ValueError(f"{self.kind} piece {piece} does not fit level sizes {self.sizes}")
        local = 0
        for c, k in zip(cs, radices):
            local = local * k + c
        return int(self._offsets[slot]) + int(local)


def _strip_paths(proto: bytes) -> bytes:
    """Drop the temporary input path SentencePiece records in the model, so equal training gives equal bytes."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # protobuf missing: the model still works, only its bytes carry the temp path
        return proto
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    del model.trainer_spec.input[:]
    return model.SerializeToString()


class SentencePieceTokenizer:
    """SentencePiece over SID sequences (level-offset symbols); ``dense`` rows = piece ids.

    Train with :meth:`train`; the model is kept as bytes (``model_proto``) and saved as a ``.model``.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, level_sizes: Sequence[int], levels: int | None = None) -> None:
        import sentencepiece as spm

        self.sizes = [int(k) for k in level_sizes]
        self.levels = len(self.sizes) if levels is None else levels
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @staticmethod
    def symbols(codes: np.ndarray, level_sizes: Sequence[int], levels: int) -> list[str]:
        """Each item's ID as a string of level-offset symbols, one character per level."""
        offsets = np.r_[0, np.cumsum(level_sizes)[:-1]]
        if int(sum(level_sizes[:levels])) > 65534:
            raise ValueError(f"sentencepiece tokeniser supports at most 65,534 (level, code) symbols, got {sum(level_sizes)}")
        sym = np.asarray(codes, dtype=np.int64)[:, :levels] + offsets[None, :levels] + _SYMBOL_BASE  # (N, levels)
        return ["".join(map(chr, row)) for row in sym.tolist()]

    @classmethod
    def train(
        cls,
        codes: np.ndarray,
        level_sizes: Sequence[int],
        *,
        vocab_size: int = 512,
        model_type: str = "bpe",
        item_counts: np.ndarray | None = None,
        levels: int | None = None,
        seed: int = 0,
    ) -> SentencePieceTokenizer:
        """Train on the items' SID strings, each weighted by ``item_counts`` (floored at 1)."""
        import sentencepiece as spm

        levels = len(level_sizes) if levels is None else levels
        strings = cls.symbols(codes, level_sizes, levels)
        counts = np.ones(len(strings), np.int64) if item_counts is None else np.maximum(np.asarray(item_counts, np.int64), 1)
        if len(counts) != len(strings):
            raise ValueError(f"item_counts has {len(counts)} entries for {len(strings)} items")
        freq: dict[str, int] = {}
        for s, c in zip(strings, counts.tolist()):
            freq[s] = freq.get(s, 0) + int(c)
        n_symbols = len({ch for s in freq for ch in s})
        vocab_size = max(vocab_size, n_symbols + 2)  # every symbol + <unk> (+1: BPE needs one merge slot)
        spm.set_random_generator_seed(seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sids.tsv")
            with open(path, "w", encoding="utf-8") as f:
                for s in sorted(freq):
                    f.write(f"{s}\t{freq[s]}\n")
            model = io.BytesIO()
            spm.SentencePieceTrainer.train(
                input=path, input_format="tsv", model_writer=model, vocab_size=vocab_size, model_type=model_type,
                character_coverage=1.0, add_dummy_prefix=False, normalization_rule_name="identity",
                split_by_whitespace=False, split_by_unicode_script=False, remove_extra_whitespaces=False,
                hard_vocab_limit=False, num_threads=1, minloglevel=2, max_sentencepiece_length=max(levels, 2),
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            )
        return cls(_strip_paths(model.getvalue()), level_sizes, levels)

    def dense_rows(self) -> int:
        return int(self.sp.get_piece_size())

    def pieces(self, codes: np.ndarray) -> list[list[Piece]]:
        strings = self.symbols(codes, self.sizes, self.levels)
        return [[(pid,) for pid in self.sp.encode(s)] for s in strings]

    def piece_strings(self, codes: np.ndarray) -> list[list[str]]:
        """The pieces as symbol strings (for inspection and tests)."""
        return [self.sp.encode(s, out_type=str) for s in self.symbols(codes, self.sizes, self.levels)]

    def dense_index(self, piece: Piece) -> int:
        return int(piece[0])

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.model_proto)

    @classmethod
    def load(cls, path: str | Path, level_sizes: Sequence[int], levels: int | None = None) -> SentencePieceTokenizer:
        return cls(Path(path).read_bytes(), level_sizes, levels)


Tokenizer = NgramTokenizer | SentencePieceTokenizer


def _hash_piece(piece: Piece, salt: int, buckets: int) -> int:
    data = salt.to_bytes(8, "little", signed=True) + b"".join(int(x).to_bytes(8, "little", signed=True) for x in piece)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % buckets


class PieceTable:
    """Maps pieces to table rows (row 0 = unknown); see the module docstring for the modes.

    Args:
        tokenizer: provides ``dense_index`` / ``dense_rows`` for ``dense``.
        mapping: dense | vocab | hash.
        num_rows: table rows for ``hash`` (row 0 included).
        seed: hash salt.
    """

    def __init__(self, tokenizer: Tokenizer, mapping: str = "dense", num_rows: int | None = None, seed: int = 0) -> None:
        if mapping not in ("dense", "vocab", "hash"):
            raise ValueError(f"unknown piece mapping '{mapping}' (dense | vocab | hash)")
        if mapping == "hash" and (num_rows is None or num_rows < 2):
            raise ValueError("mapping 'hash' needs num_rows >= 2")
        if mapping == "dense" and tokenizer.dense_rows() + 1 > MAX_DENSE_ROWS:
            raise ValueError(
                f"a dense {tokenizer.kind} table would have {tokenizer.dense_rows() + 1:,} rows; use mapping 'vocab' "
                "(rows only for observed pieces) or 'hash' with num_rows"
            )
        self.tokenizer = tokenizer
        self.mapping = mapping
        self.seed = seed
        self.vocab: dict[Piece, int] = {}
        self._num_rows = num_rows

    def fit(self, pieces: list[list[Piece]]) -> PieceTable:
        """Record observed pieces (``vocab`` mode); a no-op otherwise."""
        if self.mapping == "vocab":
            for item in pieces:
                for p in item:
                    if p not in self.vocab:
                        self.vocab[p] = len(self.vocab) + 1
        return self

    @property
    def num_rows(self) -> int:
        if self.mapping == "dense":
            return self.tokenizer.dense_rows() + 1
        if self.mapping == "vocab":
            return len(self.vocab) + 1
        return int(self._num_rows)

    def row(self, piece: Piece) -> int:
        if self.mapping == "dense":
            return 1 + self.tokenizer.dense_index(piece)
        if self.mapping == "vocab":
            return self.vocab.get(piece, 0)
        return 1 + _hash_piece(piece, self.seed, self.num_rows - 1)

    def item_rows(self, pieces: list[list[Piece]]) -> tuple[np.ndarray, np.ndarray]:
        """Jagged rows of every item: ``offsets`` (N + 1,) and ``rows`` (total pieces,), int64."""
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        rows = np.fromiter((self.row(p) for item in pieces for p in item), dtype=np.int64, count=int(offsets[-1]))
        return offsets, rows


def build_tokenizer(
    kind: str,
    codes: np.ndarray,
    level_sizes: Sequence[int],
    *,
    levels: int | None = None,
    sentencepiece_model: str | Path | None = None,
    vocab_size: int = 512,
    model_type: str = "bpe",
    item_counts: np.ndarray | None = None,
    seed: int = 0,
) -> Tokenizer:
    """An n-gram tokeniser, or a SentencePiece one (loaded from ``sentencepiece_model`` or trained on ``codes``)."""
    if kind != "sentencepiece":
        return NgramTokenizer(kind, level_sizes, levels)
    if sentencepiece_model is not None:
        return SentencePieceTokenizer.load(sentencepiece_model, level_sizes, levels)
    return SentencePieceTokenizer.train(codes, level_sizes, vocab_size=vocab_size, model_type=model_type,
                                       item_counts=item_counts, levels=levels, seed=seed)
