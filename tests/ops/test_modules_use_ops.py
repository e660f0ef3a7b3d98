"""The unified-embedding and semantic-ID modules run through the recsys_emb::* ops and stay bit-identical.

UnifiedEmbeddingBagCollection's single-device path (one fused hashed_embedding_bag per group) must give
exactly the stock path (MultiProbeHash transform + TorchRec EmbeddingBagCollection); it runs with the
compiled kernels when recsys_emb._C is built and with the torch references otherwise (the tests force
the fused path so the reference is checked too; the module itself takes it only with a compiled kernel).
"""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import recsys_emb.modules.unified as unified
from recsys_emb.modules.semantic_ids import SemanticIdTransform
from recsys_emb.modules.unified import MultiplexGroup, UnifiedEmbeddingBagCollection


def _kjt(keys, batch, seed, weighted=False, max_len=4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (len(keys) * batch,), generator=g)  # empty bags included
    values = torch.randint(-(2**40), 2**40, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights, stride=batch)


def _stock(m: UnifiedEmbeddingBagCollection, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """The pre-ops path: transform + EBC, then the column permutation to the output order."""
    pooled = m.lookup(kjt).values()
    return pooled.index_select(1, torch.tensor(m._columns)) if not m._identity_columns else pooled


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = unified.hashed_embedding_bag

    def wrapper(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(unified, "hashed_embedding_bag", wrapper)
    monkeypatch.setattr(unified, "has_compiled_kernel", lambda op, device_type: True)  # fused path, compiled or reference
    return calls


def test_fused_path_only_where_the_op_is_compiled(monkeypatch, counted):
    asked = []

    def compiled(op, device_type):
        asked.append((op, device_type))
        return False

    monkeypatch.setattr(unified, "has_compiled_kernel", compiled)
    m = UnifiedEmbeddingBagCollection([MultiplexGroup("shared", ["a", "b"], 50)], chunk_dim=4, probes=2)
    kjt = _kjt(["a", "b"], batch=8, seed=5)
    assert torch.equal(m(kjt).values(), _stock(m, kjt))
    assert asked == [("hashed_embedding_bag", "cpu")] and not counted


def test_has_compiled_kernel_follows_the_dispatcher():
    from recsys_emb.ops import OPS, has_compiled_kernel

    for name, spec in OPS.items():
        for device in ("cpu", "cuda"):
            want = torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, device.upper())
            assert has_compiled_kernel(name, device) == want
        assert not has_compiled_kernel(name, "meta")


@pytest.mark.parametrize("keys", [["a", "b", "c", "d"], ["d", "b", "a", "c"]])  # group features split in the KJT
def test_fused_path_is_bit_identical_to_transform_plus_ebc(keys, counted):
    groups = [MultiplexGroup("g0", ["b", "a", "d"], 97), MultiplexGroup("g1", ["c"], 31)]
    probes = {"a": 1, "b": 3, "c": 2, "d": 2}
    m = UnifiedEmbeddingBagCollection(groups, chunk_dim=8, probes=probes, feature_order=["a", "b", "c", "d"], hash_seed=4)
    kjt = _kjt(keys, batch=64, seed=1)
    out = m(kjt)
    assert len(counted) == 2  # one fused op per group
    want = _stock(m, kjt)
    assert torch.equal(out.values(), want)
    assert out.keys() == ["a", "b", "c", "d"]


def test_fused_path_gradient_equals_stock_gradient(counted):
    m = UnifiedEmbeddingBagCollection([MultiplexGroup("shared", ["a", "b"], 13)], chunk_dim=4, probes=2)  # many collisions
    kjt = _kjt(["a", "b"], batch=32, seed=2)
    upstream = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    (m(kjt).values() * upstream).sum().backward()
    weight = m.lookup.ebc.embedding_bags["shared"].weight
    fused = weight.grad.clone()
    weight.grad = None
    (_stock(m, kjt) * upstream).sum().backward()
    assert counted
    torch.testing.assert_close(fused, weight.grad)  # same sums, another reduction order


def test_weighted_and_identity_inputs_take_the_stock_path(counted):
    m = UnifiedEmbeddingBagCollection([MultiplexGroup("shared", ["a", "b"], 50)], chunk_dim=4, probes=2)
    kjt = _kjt(["a", "b"], batch=8, seed=3, weighted=True)
    assert torch.equal(m(kjt).values(), _stock(m, kjt))
    vocab = {"a": 10, "b": 10}
    ident = UnifiedEmbeddingBagCollection([MultiplexGroup("s", ["a", "b"], 20)], chunk_dim=4, hashing="identity", vocab_sizes=vocab)
    ident(KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 1, 1, 0]), stride=2))
    assert not counted


def test_semantic_id_pieces_use_the_op():
    t = SemanticIdTransform(torch.tensor([0, 2, 3, 3]), torch.tensor([7, 8, 9]), ["item"], id_offset=1)
    ids = torch.tensor([1, 2, 3, 9, 0], dtype=torch.int32)
    values, lengths, weights = t.pieces(ids, torch.tensor([2, 0, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    # item 0 -> rows 7, 8; item 1 -> 9; item 2 -> no pieces; ids 9 and 0 are unknown -> row 0
    assert values.tolist() == [7, 8, 9, 0, 0] and lengths.tolist() == [3, 0, 2]
    assert weights.tolist() == [1.0, 1.0, 2.0, 4.0, 5.0]
