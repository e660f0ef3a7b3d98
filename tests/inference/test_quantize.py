"""Inference quantisation of the embedding tables (recsys_emb/inference/quantize.py).

Every CTR and sequence cell of the composition matrix quantises (fp16, int8, int4, int2) and its
logits stay close to the fp32 model (fp16 closest); the bytes of every table follow FBGEMM's row
format, checked against the TBE's allocation and a hand dequantisation of the stored rows;
per-table dtypes work and bad names / dims are refused by name; quantised plain and unified DLRM
go through non-strict ``torch.export`` (static and dynamic batch), equal the eager quantised model,
and load in a fresh process that imports only torch + fbgemm_gpu (+ recsys_emb.ops).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.inference.quantize import packs, quantize_tables, row_bytes, table_bytes, table_dtypes
from recsys_emb.modules.matrix import FAMILIES
from tests.conftest import REPO
from tests.modules.test_composition import TESTED, batch, build, make_data, spec_for

# max |logit - fp32 logit| over the 58 cells (batch of 16), measured: fp16 3.0e-4, int8 3.3e-3,
# int4 7.9e-2, int2 3.1e-1 (all DeepFM: its FM term sums products of rows); bounds ~3x that
BOUND = {"fp16": 1e-3, "int8": 1e-2, "int4": 0.25, "int2": 1.0}
BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4, "int2": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_data(tmp_path_factory.mktemp("quantize"))


def float_model(model: str, chain: str, paths: dict[str, str]) -> nn.Module:
    """The cell's eval model; lr's zero-initialised tables and weights get random values (else every dtype is exact)."""
    m = build(model, spec_for(model, chain, paths), paths).eval().model
    if model == "lr":
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-0.2, 0.2, generator=gen))
    return m


def logits(model: str, module: nn.Module, b: Any) -> Tensor:
    with torch.no_grad():
        return module(b.dense_features, b.sparse_features) if FAMILIES[model] == "ctr" else module(b.sparse_features)


def stock(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if type(m) in (EmbeddingBagCollection, EmbeddingCollection)]


# ------------------------------------------------------------------------------------------ every cell
@pytest.mark.parametrize("model,chain", TESTED)
def test_quantised_cell_is_close_to_fp32(model: str, chain: str, data: dict[str, str]) -> None:
    fp32 = float_model(model, chain, data)
    b = batch(model, data, size=16)
    ref = logits(model, fp32, b)
    tables = table_dtypes(fp32)
    assert set(tables.values()) == {"fp32"}
    err = {}
    for dtype in ("fp16", "int8", "int4", "int2"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = quantize_tables(copy.deepcopy(fp32), dtype)
        fell_back = [str(w.message) for w in caught if str(w.message).startswith("quantize_tables")]
        assert not stock(q), f"{model}/{chain} {dtype}: a stock collection was left"
        if dtype != "int2":  # every dim here is 8 or 4: packs down to int4 (int2: dim-4 tables fall back to int4)
            assert not fell_back and table_dtypes(q) == dict.fromkeys(tables, dtype)
        out = logits(model, q, b)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        err[dtype] = float((out - ref).abs().max())
    assert all(err[d] <= BOUND[d] for d in BOUND), f"{model}/{chain}: max |logit diff| {err} above {BOUND}"
    assert 0 < err["fp16"] < err["int8"], f"{model}/{chain}: {err}"


def test_fp32_is_a_no_op_and_the_model_is_left_in_eval(data: dict[str, str]) -> None:
    fp32 = float_model("dlrm", "unified", data)
    fp32.train()
    b = batch("dlrm", data, size=16)
    same = quantize_tables(copy.deepcopy(fp32), "fp32")
    assert not same.training and len(stock(same)) == 1
    fp32.eval()
    torch.testing.assert_close(logits("dlrm", same, b), logits("dlrm", fp32, b), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ bytes
def expected_row(dim: int, dtype: str, align: int) -> int:
    """FBGEMM's row: packed values, then (intN) an fp16 scale and an fp16 bias, padded to ``align`` bytes."""
    raw = (dim * BITS[dtype] + 7) // 8 + (4 if dtype.startswith("int") else 0)
    return (raw + align - 1) // align * align


@pytest.mark.parametrize("align", [16, 1])
def test_table_bytes_follow_the_fbgemm_row_format(align: int) -> None:
    specs = [("a", 37, 8, "int8"), ("b", 11, 6, "int8"), ("c", 23, 16, "int4"), ("d", 9, 8, "int2"), ("e", 5, 3, "fp16"),
             ("f", 13, 4, "fp32")]
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name=n, embedding_dim=d, num_embeddings=r, feature_names=[n])
                                  for n, r, d, _ in specs])
    weights = {n: ebc.embedding_bags[n].weight.detach().clone() for n, *_ in specs}
    assert table_bytes(ebc) == {n: r * d * 4 for n, r, d, _ in specs}
    q = quantize_tables(ebc, {n: t for n, _, _, t in specs}, row_alignment=align, weight_views=True)
    got = table_bytes(q)
    assert got == {n: r * expected_row(d, t, align) for n, r, d, t in specs}
    assert all(row_bytes(d, t, align) == expected_row(d, t, align) for _, _, d, t in specs)
    if align == 16:  # int8 dim 8: 8 + 4 bytes -> 16; int4 dim 16: 8 + 4 -> 16; int2 dim 8: 2 + 4 -> 16
        assert got["a"] == 37 * 16 and got["c"] == 23 * 16 and got["d"] == 9 * 16
    # what the TBE allocates: every table's rows, each table's region padded to 128 bytes
    (tbe,) = q._emb_modules
    assert tbe.weights_host.numel() == sum((got[n] + 127) // 128 * 128 for n, *_ in specs)
    # the stored int8 rows: [fp16 scale | fp16 bias | dim uint8 values | padding]; dequantised within scale / 2
    for name in ("a", "b"):
        rows = q.embedding_bags[name].weight
        assert rows.shape == (weights[name].shape[0], expected_row(weights[name].shape[1], "int8", align))
        scale, bias = (rows[:, i:i + 2].contiguous().view(torch.float16).float() for i in (0, 2))
        dequant = scale * rows[:, 4:4 + weights[name].shape[1]].float() + bias
        assert ((dequant - weights[name]).abs() <= scale / 2 + 1e-3).all()


def test_cell_table_bytes(data: dict[str, str]) -> None:
    fp32 = float_model("deepfm", "plain", data)  # t_C* 30 x 8, t_C*_first_order 30 x 4
    assert table_bytes(fp32) == {**{f"t_C{i}": 30 * 8 * 4 for i in range(1, 5)}, **{f"t_C{i}_first_order": 30 * 4 * 4 for i in range(1, 5)}}
    q = quantize_tables(copy.deepcopy(fp32), "int8")
    # a dim-8 int8 row is 8 + 4 = 12 bytes, 16 with the row alignment (2x smaller than fp32, not 4x);
    # a dim-4 row is 4 + 4 = 8 -> 16 bytes: as large as its fp32 row
    assert table_bytes(q) == {**{f"t_C{i}": 30 * 16 for i in range(1, 5)}, **{f"t_C{i}_first_order": 30 * 16 for i in range(1, 5)}}
    q1 = quantize_tables(copy.deepcopy(fp32), "int8", row_alignment=1)
    assert table_bytes(q1) == {**{f"t_C{i}": 30 * 12 for i in range(1, 5)}, **{f"t_C{i}_first_order": 30 * 8 for i in range(1, 5)}}
    b = batch("deepfm", data, size=16)
    torch.testing.assert_close(logits("deepfm", q1, b), logits("deepfm", q, b), rtol=0, atol=0)  # same values, other layout


# ------------------------------------------------------------------------------------------ per-table dtypes
def test_per_table_dtypes(data: dict[str, str]) -> None:
    fp32 = float_model("deepfm", "plain", data)
    b = batch("deepfm", data, size=16)
    ref = logits("deepfm", fp32, b)
    q = quantize_tables(copy.deepcopy(fp32), {"*": "int8", "t_C1": "fp16", "t_C2": "int4", "t_C1_first_order": "fp32"})
    assert table_dtypes(q) == {"t_C1": "fp16", "t_C2": "int4", "t_C3": "int8", "t_C4": "int8",
                               "t_C1_first_order": "fp32", "t_C2_first_order": "int8", "t_C3_first_order": "int8",
                               "t_C4_first_order": "int8"}
    assert table_bytes(q)["t_C1_first_order"] == 30 * 4 * 4 and table_bytes(q)["t_C2"] == 30 * 16
    assert float((logits("deepfm", q, b) - ref).abs().max()) <= BOUND["int4"]
    # without "*" the unnamed tables stay fp32; a collection of fp32 tables only stays the stock module
    q = quantize_tables(copy.deepcopy(fp32), {"t_C3": "int8"})
    assert type(q.first_order) is EmbeddingBagCollection and table_dtypes(q)["t_C3"] == "int8"
    assert set(table_dtypes(q).values()) == {"fp32", "int8"}


def test_bad_names_and_dims_are_refused_by_name(data: dict[str, str]) -> None:
    fp32 = float_model("deepfm", "plain", data)
    with pytest.raises(ValueError, match=r"unknown table name\(s\) \['t_C9', 'typo'\]; the model's tables are \['t_C1'"):
        quantize_tables(copy.deepcopy(fp32), {"t_C9": "int8", "typo": "fp16", "t_C1": "int8"})
    with pytest.raises(ValueError, match=r"unknown dtype 'int3' for table 't_C1'"):
        quantize_tables(copy.deepcopy(fp32), {"t_C1": "int3"})
    with pytest.raises(ValueError, match=r"unknown dtype 'bf16' for all tables"):
        quantize_tables(copy.deepcopy(fp32), "bf16")
    # named explicitly: an error naming the table; by default ("*" or one dtype): a fallback, with a warning
    with pytest.raises(ValueError, match=r"table 't_C2_first_order' \(dim 4\) cannot be stored as int2: .* multiple of 16"):
        quantize_tables(copy.deepcopy(fp32), {"t_C2_first_order": "int2"})
    with pytest.warns(UserWarning, match=r"t_C1_first_order \(dim 4\) -> int4, .*t_C4_first_order \(dim 4\) -> int4"):
        q = quantize_tables(copy.deepcopy(fp32), {"*": "int2"})
    assert table_dtypes(q)["t_C1"] == "int2" and table_dtypes(q)["t_C1_first_order"] == "int4"
    assert [d for d in range(1, 17) if packs(d, "int8")] == list(range(2, 17, 2))
    assert [d for d in range(1, 17) if packs(d, "int4")] == [4, 8, 12, 16] and [d for d in range(1, 17) if packs(d, "int2")] == [8, 16]
    for dtype, bits in (("int8", 8), ("int4", 4), ("int2", 2)):  # the rule is FBGEMM's quantiser's
        for dim in range(1, 17):
            try:
                torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(torch.randn(3, dim), bits)
                quantised = True
            except RuntimeError:
                quantised = False
            assert quantised == packs(dim, dtype), (dtype, dim)
    odd = EmbeddingBagCollection([EmbeddingBagConfig(name="odd", embedding_dim=3, num_embeddings=4, feature_names=["f"])])
    with pytest.warns(UserWarning, match=r"odd \(dim 3\) -> fp16"):
        assert table_dtypes(quantize_tables(odd, "int8")) == {"odd": "fp16"}
    with pytest.raises(ValueError, match="no stock TorchRec EmbeddingBagCollection"):
        quantize_tables(q, "int8")  # already quantised
    meta = build("dlrm", spec_for("dlrm", "plain", data), data, device="meta").model
    with pytest.raises(ValueError, match=r"tables \['t_C1', 't_C2', 't_C3', 't_C4'\] are on the meta device"):
        quantize_tables(meta, "int8")


def test_embedding_collection_and_weight_readers(data: dict[str, str]) -> None:
    """Stock EmbeddingCollections are swapped too; DNIS / OptEmbed's search-time table readers refuse quantised tables."""
    torch.manual_seed(0)
    ec = EmbeddingCollection([EmbeddingConfig(name="a", embedding_dim=8, num_embeddings=11, feature_names=["f"]),
                              EmbeddingConfig(name="b", embedding_dim=8, num_embeddings=5, feature_names=["g"])])
    kjt = KeyedJaggedTensor.from_lengths_sync(["f", "g"], torch.tensor([1, 2, 3, 4, 0]), torch.tensor([1, 2, 0, 2]))
    ref = ec(kjt)
    q = quantize_tables(ec, {"a": "int8", "b": "fp16"})
    out = q(kjt)
    assert table_dtypes(q) == {"a": "int8", "b": "fp16"} and table_bytes(q) == {"a": 11 * 16, "b": 5 * 16}
    for key in ("f", "g"):
        torch.testing.assert_close(out[key].values(), ref[key].values(), rtol=0, atol=2e-3)
    for chain in ("dnis", "optembed"):
        q = quantize_tables(float_model("dlrm", chain, data), "int8")
        with pytest.raises(TypeError, match="per-feature table weights exist only over plain tables"):
            q.embedding.table_weight("C1")


# ------------------------------------------------------------------------------------------ export
class CTRServing(nn.Module):
    """``(dense (B, D), values (N,), lengths (F, B)) -> logits (B,)``: tensors in, the model's KJT built inside."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, dense: Tensor, values: Tensor, lengths: Tensor) -> Tensor:
        return self.model(dense, KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths.reshape(-1)))


def serving_args(b: Any) -> tuple[Tensor, Tensor, Tensor]:
    kjt = b.sparse_features
    return b.dense_features, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), -1)


LOAD = """
import json, sys, torch, fbgemm_gpu
import recsys_emb.ops  # the compiled / fake recsys_emb ops (multi_probe_hash of unified)
out = {}
for name in sys.argv[1:]:
    program = torch.export.load(name + ".pt2")
    args, expected = torch.load(name + ".io", weights_only=True)
    out[name] = float((program.module()(*args) - expected).abs().max())
out["modules"] = sorted(m for m in ("torchrec", "recsys_emb.modules", "recsys_emb.models") if m in sys.modules)
print(json.dumps(out))
"""


def test_quantised_dlrm_exports_and_loads_without_torchrec(data: dict[str, str], tmp_path: Path) -> None:
    b, other = batch("dlrm", data, size=16), batch("dlrm", data, rank=3, size=5)
    names = []
    for chain in ("plain", "unified"):
        serving = CTRServing(quantize_tables(float_model("dlrm", chain, data), "int8"), b.sparse_features.keys()).eval()
        args = serving_args(b)
        with torch.no_grad():
            eager = serving(*args)
        program = torch.export.export(serving, args, strict=False)  # static batch
        ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        assert "fbgemm.int_nbit_split_embedding_codegen_lookup_function.default" in ops, ops
        assert "fbgemm.bounds_check_indices.default" in ops
        assert ("recsys_emb.multi_probe_hash.default" in ops) == (chain == "unified")
        torch.testing.assert_close(program.module()(*args), eager, rtol=0, atol=1e-6)
        # dynamic batch and id count: one program for batches of 16 and 5
        batch_dim = torch.export.Dim("b")
        dynamic = torch.export.export(serving, args, strict=False,
                                      dynamic_shapes=({0: batch_dim}, {0: torch.export.Dim("n")}, {1: batch_dim}))
        for x in (args, serving_args(other)):
            with torch.no_grad():
                torch.testing.assert_close(dynamic.module()(*x), serving(*x), rtol=0, atol=1e-6)
        name = str(tmp_path / chain)
        torch.export.save(program, name + ".pt2")
        torch.save((args, eager), name + ".io")
        names.append(name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", LOAD, *names], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded.pop("modules") == [], "loading the program imported torchrec / the model code"
    assert all(v <= 1e-6 for v in loaded.values()), loaded


def test_exported_program_stores_each_table_once(tmp_path: Path) -> None:
    """TorchRec's per-table byte views alias the TBE buffer; export would store both (weight_views=True)."""
    tables = [EmbeddingBagConfig(name="t", embedding_dim=64, num_embeddings=20000, feature_names=["f"])]

    class Lookup(nn.Module):
        def __init__(self, ebc: nn.Module) -> None:
            super().__init__()
            self.ebc = ebc

        def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
            return self.ebc(KeyedJaggedTensor(keys=["f"], values=values, lengths=lengths)).values()

    args = (torch.tensor([1, 5, 19999]), torch.tensor([2, 1]))
    sizes = {}
    for views in (False, True):
        torch.manual_seed(0)
        q = quantize_tables(EmbeddingBagCollection(tables), "int8", weight_views=views)
        assert ("embedding_bags.t.weight" in q.state_dict()) == views
        path = tmp_path / f"views_{views}.pt2"
        torch.export.save(torch.export.export(Lookup(q), args, strict=False), str(path))
        sizes[views] = path.stat().st_size
    rows = table_bytes(q)["t"]  # 20000 x (64 + 4 -> 80) bytes
    assert rows == 20000 * 80
    assert sizes[False] < 1.2 * rows < 1.8 * rows < sizes[True], sizes
