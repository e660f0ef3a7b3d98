"""recsys_emb::hashed_embedding_bag vs an independent reference (unified hash + F.embedding_bag in float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys_emb.ops as ops
from recsys_emb.modules.unified import salted_hash

P61 = (1 << 61) - 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@st.composite
def bag_case(draw):
    f = draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    m = draw(st.integers(1, 40))
    d = draw(st.sampled_from([1, 4, 8]))
    lengths = draw(st.lists(st.integers(0, 5), min_size=0, max_size=6))  # B = 0 and empty bags included
    n = sum(lengths)
    pool = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4))
    values = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))  # duplicate ids in a bag
    feature_index = draw(st.lists(st.integers(0, f - 1), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31))
    return dict(
        f=f, k=k, m=m, d=d, lengths=lengths, values=values, feature_index=feature_index, seed=seed,
        dtype=draw(st.sampled_from(sorted(DTYPES))), id_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        mode=draw(st.sampled_from(["sum", "mean"])), weighted=draw(st.booleans()),
        offsets_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
    )


def _build(case, requires_grad=False):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    n = len(case["values"])
    values = torch.tensor(case["values"], dtype=torch.int64)
    if case["id_dtype"] == torch.int32:
        values = values.to(torch.int32)  # wraps to the low 32 bits: still an arbitrary int32 id
    feature_index = torch.tensor(case["feature_index"], dtype=torch.int64)
    coefficients = torch.randint(0, P61, (case["f"], case["k"], 3), generator=g)
    num_rows = torch.randint(1, case["m"] + 1, (case["f"],), generator=g)
    weight = (torch.rand(case["m"], case["d"], generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    psw = (torch.rand(n, generator=g, dtype=torch.float64) * 2).to(dtype) if case["weighted"] else None
    offsets = torch.tensor([0, *torch.tensor(case["lengths"], dtype=torch.int64).cumsum(0).tolist()],
                           dtype=case.get("offsets_dtype", torch.int64))
    if requires_grad:
        weight.requires_grad_(True)
        if psw is not None:
            psw.requires_grad_(True)
    return weight, values, offsets, feature_index, coefficients, num_rows, case["mode"], psw


def reference(weight, values, offsets, feature_index, coefficients, num_rows, mode, psw):
    """(B, K, D) float64: rows from the unified module's hash, pooled per probe with F.embedding_bag."""
    rows = salted_hash(values.long(), coefficients[feature_index], num_rows[feature_index])  # (N, K)
    offsets = offsets.long()
    w = weight.double()
    counts = offsets[1:] - offsets[:-1]
    scale = psw.double() if psw is not None else torch.ones(values.numel(), dtype=torch.float64)
    if mode == "mean":
        bag = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        scale = scale / counts.clamp(min=1).double()[bag]
    probes = [
        F.embedding_bag(rows[:, j], w, offsets, mode="sum", per_sample_weights=scale, include_last_offset=True)
        for j in range(coefficients.shape[1])
    ]
    return torch.stack(probes, dim=1)


def _tolerance(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


@settings(max_examples=60, deadline=None)
@given(bag_case())
def test_forward_matches_reference(case):
    args = _build(case)
    out = ops.hashed_embedding_bag(*args)
    weight, offsets, coefficients = args[0], args[2], args[4]
    assert out.dtype == weight.dtype
    assert out.shape == (offsets.numel() - 1, coefficients.shape[1], weight.shape[1])
    tol = _tolerance(weight.dtype)
    torch.testing.assert_close(out.double(), reference(*args), rtol=tol, atol=tol)


@settings(max_examples=40, deadline=None)
@given(bag_case())
def test_gradients_match_reference(case):
    args = _build(case, requires_grad=True)
    ref_args = list(args)
    ref_args[0] = args[0].detach().double().requires_grad_(True)
    if args[7] is not None:
        ref_args[7] = args[7].detach().double().requires_grad_(True)
    out = ops.hashed_embedding_bag(*args)
    ref = reference(*ref_args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad.to(out.dtype))
    ref.backward(grad.to(out.dtype).double())
    tol = _tolerance(args[0].dtype) * 10  # the gradient sums several rounded terms
    torch.testing.assert_close(args[0].grad.double(), ref_args[0].grad, rtol=tol, atol=tol)
    if args[7] is not None:
        # the reference gradient w.r.t. psw is a dot product over K * D terms
        torch.testing.assert_close(args[7].grad.double(), ref_args[7].grad, rtol=tol, atol=tol * args[0].shape[1])


def test_weight_gradient_is_reduced_per_unique_row():
    """Two ids hashed to the same row: that row's gradient is the sum of both contributions."""
    coefficients = torch.zeros(1, 1, 3, dtype=torch.int64)
    coefficients[0, 0, 0] = 1  # h(v) = lo(splitmix64(v)) mod M

    def row(v: int) -> int:  # big-int splitmix64 finaliser, low 32 bits, mod 5
        z = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
        return ((z ^ (z >> 31)) & 0xFFFFFFFF) % 5

    a = 3
    b = next(v for v in range(a + 1, 1000) if row(v) == row(a))  # shares a's row
    c = next(v for v in range(1000) if row(v) != row(a))  # another row
    weight = torch.zeros(5, 2, requires_grad=True)
    values = torch.tensor([a, b, c])
    out = ops.hashed_embedding_bag(weight, values, torch.tensor([0, 2, 3]), torch.zeros(3, dtype=torch.int64),
                                   coefficients, torch.tensor([5]), "sum", None)
    out.backward(torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]]]))
    expected = torch.zeros(5, 2)
    expected[row(a)] = torch.tensor([2.0, 4.0])
    expected[row(c)] = torch.tensor([10.0, 20.0])
    assert torch.equal(weight.grad, expected)


def test_rejects_a_bad_mode():
    args = list(_build(dict(f=1, k=1, m=4, d=2, lengths=[1], values=[1], feature_index=[0], seed=0, dtype="float32",
                            id_dtype=torch.int64, mode="sum", weighted=False)))
    args[6] = "max"
    with pytest.raises(RuntimeError, match="mode"):
        ops.hashed_embedding_bag(*args)


def test_torch_compile_and_export():
    case = dict(f=2, k=2, m=9, d=4, lengths=[2, 0, 3], values=[5, 5, -7, 2**40, 3], feature_index=[0, 1, 1, 0, 1],
                seed=3, dtype="float32", id_dtype=torch.int64, mode="mean", weighted=True)
    weight, values, offsets, fi, coeff, rows, mode, psw = _build(case, requires_grad=True)

    def fn(w, v, o, f, c, r, p):
        return ops.hashed_embedding_bag(w, v, o, f, c, r, "mean", p).sum(dim=1)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out = compiled(weight, values, offsets, fi, coeff, rows, psw)
    out.square().sum().backward()
    grad_compiled = weight.grad.clone()
    weight.grad = None
    eager = fn(weight, values, offsets, fi, coeff, rows, psw)
    eager.square().sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad_compiled, weight.grad)

    class M(torch.nn.Module):
        def forward(self, w, v, o, f, c, r, p):
            return fn(w, v, o, f, c, r, p)

    exported = torch.export.export(M(), (weight.detach(), values, offsets, fi, coeff, rows, psw.detach()))
    assert any("recsys_emb.hashed_embedding_bag" in str(node.target) for node in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(weight.detach(), values, offsets, fi, coeff, rows, psw.detach()), eager.detach())
