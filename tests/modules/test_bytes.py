"""Bytes of built embedding modules for every layout (hand-computed sizes) and the budget frontier's settings."""

from __future__ import annotations

import copy

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from recsys_emb.modules.budget import FRONTIER_FRACTIONS, budget_options, embedding_bytes
from recsys_emb.modules.spec import build_embedding
from recsys_emb.search.derive import compact_module, derive_tables, full_embedding_bytes
from recsys_emb.train.trainer import embedding_parameter_count

DIM = 8
VOCAB = {"a": 100, "b": 7}


def plain_tables(vocab: dict[str, int] = VOCAB, dim: int = DIM) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=v, feature_names=[f]) for f, v in vocab.items()]


def check_agrees(module: torch.nn.Module, expected: int) -> None:
    """The counter, the derive module's total and the trainer's parameter count say the same."""
    assert embedding_bytes(module).embedding == expected
    assert full_embedding_bytes(module) == expected
    assert 4 * embedding_parameter_count(module) == expected


def test_plain_tables() -> None:
    ebc = EmbeddingBagCollection(plain_tables())
    got = embedding_bytes(ebc)
    assert got.tables == {"t_a": 100 * 8 * 4, "t_b": 7 * 8 * 4} == {"t_a": 3200, "t_b": 224}
    assert got.dense == {} and got.buffers == {}
    check_agrees(ebc, 3424)
    assert embedding_bytes(ebc, bytes_per_value=2).embedding == 1712  # e.g. fp16 rows


def test_hash_and_unified_tables() -> None:
    hashed = build_embedding([{"hash": {"num_rows": [10, 3]}}], plain_tables())
    got = embedding_bytes(hashed)
    assert got.tables == {"hashed_a": 10 * 8 * 4, "hashed_b": 3 * 8 * 4} == {"hashed_a": 320, "hashed_b": 96}
    assert got.dense == {} and got.buffer_total > 0  # hash coefficients: not trained, needed to serve
    check_agrees(hashed, 416)
    unified = build_embedding([{"unified": {"num_rows": 20}}], plain_tables())
    assert embedding_bytes(unified).tables == {"unified": 20 * 8 * 4} == {"unified": 640}
    two_probes = build_embedding([{"unified": {"num_rows": 20, "probes": 2}}], plain_tables())  # chunks 4 wide
    assert embedding_bytes(two_probes).tables == {"unified": 20 * 4 * 4} == {"unified": 320}


def test_qr_tables() -> None:
    qr = build_embedding([{"qr": {"collisions": [10, 3]}}], plain_tables())
    # a: ceil(100 / 10) = 10 quotient rows + 10 remainder rows; b: ceil(7 / 3) = 3 + 3
    assert embedding_bytes(qr).tables == {"t_a_q": 10 * 8 * 4, "t_b_q": 3 * 8 * 4, "t_a_r": 10 * 8 * 4, "t_b_r": 3 * 8 * 4} \
        == {"t_a_q": 320, "t_b_q": 96, "t_a_r": 320, "t_b_r": 96}
    check_agrees(qr, 832)
    concat = build_embedding([{"qr": {"collisions": [10, 3], "operation": "concat"}}], plain_tables())  # tables 4 wide
    check_agrees(concat, (10 + 10 + 3 + 3) * 4 * 4)
    assert embedding_bytes(concat).embedding == 416


def test_dnis_derived_compact_tables_and_dense_weights() -> None:
    """DNIS over a: 8 ids, b: 6 ids (2 frequency blocks each); block 1 of a loses dims 4..7 -> a 4 x 4 part."""
    tables = plain_tables({"a": 8, "b": 6})
    dnis = build_embedding([{"dnis": {"num_blocks": 2, "frequency": "index"}}], tables)
    got = embedding_bytes(dnis)
    assert got.tables == {"t_a": 8 * 8 * 4, "t_b": 6 * 8 * 4} == {"t_a": 256, "t_b": 192}
    assert got.dense == {"alpha_0": 2 * 8 * 4, "alpha_1": 2 * 8 * 4} == {"alpha_0": 64, "alpha_1": 64}  # (blocks, dim)
    assert got.buffers == {"block_0": 8 * 8, "block_1": 6 * 8}  # int64 id -> block maps
    with torch.no_grad():
        dnis.alphas()["a"][1, 4:] = 0.0
    layout, weights = derive_tables(dnis)
    compact = compact_module(layout, weights)
    got = embedding_bytes(compact)
    # a: block 0 = 4 rows x 8 dims, block 1 = 4 rows x 4 dims; b: 3 x 8 + 3 x 8
    assert sorted(got.tables.values()) == sorted([4 * 8 * 4, 4 * 4 * 4, 3 * 8 * 4, 3 * 8 * 4]) == [64, 96, 96, 128]
    assert got.embedding == 384 == layout.embedding_bytes()
    assert got.dense == {}
    assert got.buffers["remap.codes"] == (8 + 6) * 4 == layout.remap_bytes()  # one int32 per original id
    check_agrees(compact, 384)


def test_stored_bytes_dispatch_to_the_quantised_table_counter() -> None:
    """bytes_per_value=None: what the tables store (inference.quantize.table_bytes), e.g. int8 rows."""
    from recsys_emb.inference.quantize import quantize_tables, table_bytes

    module = build_embedding([{"qr": {"collisions": [10, 3]}}], plain_tables())
    assert embedding_bytes(module, bytes_per_value=None).tables == embedding_bytes(module).tables
    quantised = quantize_tables(copy.deepcopy(module), "int8")
    got = embedding_bytes(quantised, bytes_per_value=None)
    assert got.tables == table_bytes(quantised)
    # int8 rows of 8 values + fp16 scale and bias = 12 bytes, padded to 16
    assert got.tables == {"t_a_q": 10 * 16, "t_b_q": 3 * 16, "t_a_r": 10 * 16, "t_b_r": 3 * 16}


# ------------------------------------------------------------------------------------------ frontier
FRONTIER_VOCAB = {"big": 200_000, "mid": 30_000, "small": 50}
FRONTIER_DIM = 16


@pytest.mark.parametrize("operation", ["mult", "concat"])
@pytest.mark.parametrize("fraction", FRONTIER_FRACTIONS)
def test_budget_options_hit_the_budget_within_one_row(fraction: float, operation: str) -> None:
    tables = plain_tables(FRONTIER_VOCAB, FRONTIER_DIM)
    plain = embedding_bytes(EmbeddingBagCollection(tables, device=torch.device("meta"))).embedding
    assert plain == (200_000 + 30_000 + 50) * 16 * 4
    row = FRONTIER_DIM * 4
    target = int(fraction * plain)
    options = budget_options(tables, fraction, operation=operation)
    assert set(options) == {"hash", "unified", "qr"}
    if operation == "concat" and fraction > 0.5:  # half-wide rows: at most (V + 1) / 2 plain rows per feature
        assert options.pop("qr") is None
    for technique, opts in options.items():
        assert opts is not None, technique
        module = build_embedding([{technique: opts}], tables, device="meta")
        counted = embedding_bytes(module).embedding
        assert target - row < counted <= target, (technique, opts, counted, target)


def test_budget_options_below_a_techniques_fewest_rows_is_none() -> None:
    options = budget_options(plain_tables({"a": 1000}, 8), 1 / 64)  # 15 rows: qr needs 2 sqrt(1000) ~ 63
    assert options["qr"] is None and options["hash"] == {"num_rows": [15]} and options["unified"] == {"num_rows": 15}
    tiny = budget_options(plain_tables({"a": 10, "b": 10}, 8), 1 / 16)  # 1 row: not one per hashed table
    assert tiny["hash"] is None and tiny["unified"] == {"num_rows": 1} and tiny["qr"] is None
