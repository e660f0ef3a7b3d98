"""recsys_emb::multi_probe_hash is bit-exact with the hash of recsys_emb.modules.unified."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys_emb.ops as ops
from recsys_emb.modules.unified import MultiProbeHash, salted_hash

P61 = (1 << 61) - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
EXTREME_IDS = [0, 1, -1, I64_MIN, I64_MAX, I64_MIN + 1, I64_MAX - 1, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32,
               2**32 + 1, -(2**32), 2**61 - 1, 2**61, 2**62, -(2**62), P61 * 3]

ids = st.integers(I64_MIN, I64_MAX) | st.sampled_from(EXTREME_IDS)
coefficient = st.integers(0, P61 - 1) | st.sampled_from([0, 1, P61 - 1, P61 - 2, 2**31, 2**30 - 1])
rows = st.integers(1, I64_MAX) | st.integers(1, 1000) | st.sampled_from([1, 2, 2**31, 2**61 - 1, 2**61, I64_MAX])


@st.composite
def hash_case(draw):
    f = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    n = draw(st.integers(0, 12))
    values = draw(st.lists(ids, min_size=n, max_size=n))
    feature_index = draw(st.lists(st.integers(0, f - 1), min_size=n, max_size=n))
    coefficients = draw(st.lists(coefficient, min_size=f * k * 3, max_size=f * k * 3))
    num_rows = draw(st.lists(rows, min_size=f, max_size=f))
    return (torch.tensor(values, dtype=torch.int64), torch.tensor(feature_index, dtype=torch.int64),
            torch.tensor(coefficients, dtype=torch.int64).reshape(f, k, 3), torch.tensor(num_rows, dtype=torch.int64))


def _python_hash(v: int, a0: int, a1: int, b: int, m: int) -> int:
    """Big-integer Python: the definition in the unified module's docstring, independently of torch."""
    u = v % (1 << 64)  # splitmix64 finaliser of the unsigned 64-bit id, then the multilinear hash
    u = ((u ^ (u >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    u = ((u ^ (u >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    u ^= u >> 31
    return ((a0 * (u & 0xFFFFFFFF) + a1 * (u >> 32) + b) % P61) % m


@settings(max_examples=60, deadline=None)
@given(hash_case())
def test_matches_unified_salted_hash_and_big_integer_definition(case):
    values, feature_index, coefficients, num_rows = case
    out = ops.multi_probe_hash(values, feature_index, coefficients, num_rows)
    expected = salted_hash(values, coefficients[feature_index], num_rows[feature_index])
    assert out.dtype == torch.int64 and out.shape == (values.numel(), coefficients.shape[1])
    assert torch.equal(out, expected)
    for i in range(values.numel()):
        f = int(feature_index[i])
        for j in range(coefficients.shape[1]):
            a0, a1, b = (int(x) for x in coefficients[f, j])
            assert int(out[i, j]) == _python_hash(int(values[i]), a0, a1, b, int(num_rows[f]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20), st.integers(0, 2**31))
def test_int32_ids_hash_like_their_int64_value(values, seed):
    coefficients = torch.randint(0, P61, (2, 2, 3), generator=torch.Generator().manual_seed(seed))
    v32 = torch.tensor(values, dtype=torch.int32)
    fi = torch.arange(len(values), dtype=torch.int64) % 2
    num_rows = torch.tensor([97, 2**40])
    assert torch.equal(ops.multi_probe_hash(v32, fi, coefficients, num_rows),
                       ops.multi_probe_hash(v32.long(), fi, coefficients, num_rows))


def test_matches_multi_probe_hash_module_rows():
    """The module's own coefficients/num_rows buffers, random and extreme ids, several probes."""
    t = MultiProbeHash(["a", "b", "c"], num_rows=[1000, 1000, 7], probes=[3, 1, 2], hash_seed=5)
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randint(I64_MIN, I64_MAX, (500,), generator=g), torch.tensor(EXTREME_IDS)])
    feature_index = torch.randint(0, 3, (values.numel(),), generator=g)
    out = ops.multi_probe_hash(values, feature_index, t.coefficients, t.num_rows)
    # row_ids calls the op itself now: compare both with the module's torch hash
    expected = salted_hash(values, t.coefficients[feature_index], t.num_rows[feature_index])
    assert torch.equal(out, expected) and torch.equal(t.row_ids(feature_index, values), expected)
    assert int(out.min()) >= 0 and bool((out < t.num_rows[feature_index].unsqueeze(1)).all())
