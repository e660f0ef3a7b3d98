"""The compiled kernels (recsys_emb._C, csrc/) against the registered pure-PyTorch references.

Skipped as a whole when the extension is not built (``RECSYS_EMB_NO_EXT=1`` installs, or
``RECSYS_EMB_DISABLE_KERNELS=1``); the other files of tests/ops then test the references, and with the
extension built they test the compiled kernels through the dispatcher. Here: the CPU (and, on a GPU
machine, CUDA) dispatch really goes to the compiled kernel; integer ops are bit-exact with the
reference, float ops within tolerance, on large multi-threaded batches (many more bags than one
parallel task) and with heavily duplicated rows in the backward; the kernels are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recsys_emb.ops as ops
from recsys_emb.ops import _loader

P61 = (1 << 61) - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

pytestmark = pytest.mark.skipif(
    _loader.extension_error() is not None, reason=f"compiled kernels not loaded: {_loader.extension_error()}"
)


def ref(name):
    return ops.OPS[name].reference


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_dispatch_goes_to_the_compiled_kernels():
    status = ops.kernel_status()
    assert set(status) == set(ops.OPS)
    assert all(devices["CPU"] == "compiled" for devices in status.values()), status
    assert "cpu=compiled" in ops.extension_status()


def _hash_case(n, f=4, k=3, seed=0, id_dtype=torch.int64, extreme_coefficients=False):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(I64_MIN, I64_MAX, (n,), generator=g)
    values[: min(n, 8)] = torch.tensor([0, -1, I64_MIN, I64_MAX, 2**32, -(2**32), 2**61 - 1, 2**31][: min(n, 8)])
    fi = torch.randint(0, f, (n,), generator=g)
    if extreme_coefficients:  # outside [0, p), negative: the kernel repeats the reference's int64 ops exactly
        coefficients = torch.randint(I64_MIN, I64_MAX, (f, k, 3), generator=g)
    else:
        coefficients = torch.randint(0, P61, (f, k, 3), generator=g)
    num_rows = torch.tensor([1, 97, 2**40, I64_MAX][:f] + [1000] * max(0, f - 4), dtype=torch.int64)
    return values.to(id_dtype), fi, coefficients, num_rows


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("extreme", [False, True])
def test_hash_bit_exact_multithreaded(id_dtype, extreme, two_threads):
    args = _hash_case(200_003, id_dtype=id_dtype, extreme_coefficients=extreme)  # >> one parallel task
    out = ops.multi_probe_hash(*args)
    assert torch.equal(out, ref("multi_probe_hash")(*args))


def test_hash_rejects_bad_feature_index_and_table_size():
    values, fi, coefficients, num_rows = _hash_case(10)
    with pytest.raises(RuntimeError, match="feature_index"):
        ops.multi_probe_hash(values, torch.full_like(fi, 4), coefficients, num_rows)
    with pytest.raises(RuntimeError, match="num_rows"):
        ops.multi_probe_hash(values, fi, coefficients, torch.zeros_like(num_rows))


def _bag_case(nbags, m, d, max_len=6, k=2, f=3, dtype=torch.float32, weighted=True, seed=0, offsets_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (nbags,), generator=g)
    n = int(lengths.sum())
    values = torch.randint(-(2**40), 2**40, (n,), generator=g)
    fi = torch.randint(0, f, (n,), generator=g)
    coefficients = torch.randint(0, P61, (f, k, 3), generator=g)
    num_rows = torch.randint(1, m + 1, (f,), generator=g)
    weight = (torch.rand(m, d, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(offsets_dtype)
    psw = torch.rand(n, generator=g, dtype=torch.float64).to(dtype) if weighted else None
    return weight, values, offsets, fi, coefficients, num_rows, psw


TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_large_batch_matches_reference(dtype, mode, weighted, two_threads):
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(6000, m=500, d=16, dtype=dtype, weighted=weighted)
    out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, mode, psw)
    expected = ref("hashed_embedding_bag")(weight.double(), values, offsets, fi, coefficients, num_rows, mode,
                                           None if psw is None else psw.double())
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_forward_pooling_one_and_wide_rows(two_threads):
    """One id per bag (pooling 1) and a dim that is not a multiple of any vector width."""
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(20000, m=1000, d=67, max_len=1, k=1, weighted=False)
    offsets = torch.arange(values.numel() + 1)
    args = (weight, values, offsets, fi, coefficients, num_rows, "sum", None)
    out = ops.hashed_embedding_bag(*args)
    assert torch.equal(out, ref("hashed_embedding_bag")(*args))  # one term per bag: exact


def test_unweighted_fp32_sum_is_bit_identical_to_embedding_bag(two_threads):
    """Unweighted float32 sums add the rows in bag order, like nn.EmbeddingBag: bit-identical."""
    weight, values, offsets, fi, coefficients, num_rows, _ = _bag_case(3000, m=300, d=32, k=1, f=1, weighted=False)
    out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "sum", None)
    rows = ops.multi_probe_hash(values, fi, coefficients, num_rows)[:, 0]
    expected = torch.nn.functional.embedding_bag(rows, weight, offsets, mode="sum", include_last_offset=True)
    assert torch.equal(out[:, 0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_backward_duplicate_rows_matches_reference_and_is_deterministic(dtype, mode, two_threads):
    # 40 rows for ~15000 (id, probe) pairs: every row is hit hundreds of times.
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(5000, m=40, d=8, dtype=dtype)
    grad = torch.randn(offsets.numel() - 1, coefficients.shape[1], 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    args = (grad, values, offsets, fi, coefficients, num_rows, 40, mode, psw)
    out = ops.OPS["hashed_embedding_bag_backward"].op(*args)
    expected = ref("hashed_embedding_bag_backward")(grad.double(), *args[1:8], psw.double())
    rel = TOL[dtype] * 100  # sums of ~400 rounded terms
    torch.testing.assert_close(out.double(), expected, rtol=rel, atol=rel * float(expected.abs().max()))
    assert torch.equal(out, ops.OPS["hashed_embedding_bag_backward"].op(*args))
    torch.set_num_threads(1)
    assert torch.equal(out, ops.OPS["hashed_embedding_bag_backward"].op(*args))  # same bits on 1 thread


def test_backward_untouched_rows_are_zero_and_gradient_flows():
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(50, m=5000, d=4)
    weight.requires_grad_(True)
    psw.requires_grad_(True)
    out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "sum", psw)
    out.sum().backward()
    rows = ops.multi_probe_hash(values, fi, coefficients, num_rows).unique()
    touched = torch.zeros(5000, dtype=torch.bool)
    touched[rows] = True
    assert bool((weight.grad[~touched] == 0).all()) and bool((weight.grad[touched] != 0).any())
    expected_psw = weight.detach()[ops.multi_probe_hash(values, fi, coefficients, num_rows)].sum(dim=(1, 2))
    torch.testing.assert_close(psw.grad, expected_psw)


def test_forward_rejects_rows_beyond_the_table_and_bad_offsets():
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(20, m=50, d=4)
    with pytest.raises(RuntimeError, match="weight rows"):
        ops.hashed_embedding_bag(weight[:1], values, offsets, fi, coefficients, num_rows + 10**6, "sum", psw)
    bad = offsets.clone()
    bad[-1] += 1
    with pytest.raises(RuntimeError, match="offsets"):
        ops.hashed_embedding_bag(weight, values, bad, fi, coefficients, num_rows, "sum", psw)


# ------------------------------------------------------- KJT-like inputs: features in contiguous runs
# The forward hashes blocks of 8 ids of one feature together (AVX2: 4 ids in SIMD lanes + 4 scalar) and
# falls back to id-by-id hashing when a block crosses a feature boundary; the random feature_index of
# _bag_case never takes the block path, these cases mostly do.
EDGE_IDS = [0, -1, I64_MIN, I64_MAX, 2**32, -(2**32), 2**61 - 1, 2**31, 2**32 - 1, -(2**61)]


def _runs_case(nbags, d, num_rows, k=2, max_len=5, seed=0, table_rows=None, id_dtype=torch.int64):
    """Bags of F = len(num_rows) features, feature-major like a KJT; edge ids; coefficients 0, p - 1 and random."""
    g = torch.Generator().manual_seed(seed)
    f = len(num_rows)
    lengths = torch.randint(0, max_len + 1, (nbags,), generator=g)
    bag_feature = torch.arange(nbags) * f // nbags  # feature of each bag, non-decreasing
    n = int(lengths.sum())
    fi = bag_feature.repeat_interleave(lengths)
    values = torch.randint(I64_MIN, I64_MAX, (n,), generator=g)
    values[: min(n, len(EDGE_IDS))] = torch.tensor(EDGE_IDS[: min(n, len(EDGE_IDS))])
    coefficients = torch.randint(0, P61, (f, k, 3), generator=g)
    coefficients[0, 0] = P61 - 1
    if f > 1:
        coefficients[1, -1] = 0
    m = table_rows or max(num_rows)
    weight = torch.randn(m, d, generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return weight, values.to(id_dtype), offsets, fi, coefficients, torch.tensor(num_rows, dtype=torch.int64)


@pytest.mark.parametrize("d", [16, 32, 64, 128, 24, 8])
def test_forward_feature_runs_bit_identical_to_embedding_bag(d, two_threads):
    """Every specialised dim (16/32/64/128: AVX2 register accumulators) and generic ones (24, 8): unweighted
    float32 sums equal F.embedding_bag over the REFERENCE hash bit for bit, with many parallel ranges and
    empty bags; same bits on 1 and 2 threads."""
    weight, values, offsets, fi, coefficients, num_rows = _runs_case(9000, d, [1, 3, 97, 4099, 65537, 100_003])
    out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "sum", None)
    rows = ref("multi_probe_hash")(values, fi, coefficients, num_rows)
    for j in range(coefficients.shape[1]):
        expected = torch.nn.functional.embedding_bag(rows[:, j], weight, offsets, mode="sum", include_last_offset=True)
        assert torch.equal(out[:, j], expected), j
    mean = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "mean", None)
    expected_mean = ref("hashed_embedding_bag")(weight.double(), values, offsets, fi, coefficients, num_rows, "mean", None)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
    torch.set_num_threads(1)
    assert torch.equal(out, ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "sum", None))


def test_forward_feature_runs_weighted_and_int32_ids(two_threads):
    weight, values, offsets, fi, coefficients, num_rows = _runs_case(5000, 64, [5, 4099, 70_001], id_dtype=torch.int32)
    psw = torch.rand(values.numel(), generator=torch.Generator().manual_seed(3))
    out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, "sum", psw)
    expected = ref("hashed_embedding_bag")(weight.double(), values, offsets, fi, coefficients, num_rows, "sum", psw.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_hash_feature_runs_bit_exact(k, id_dtype, two_threads):
    """multi_probe_hash on runs of one feature (block path) for table sizes from 1 to 2^63 - 1 (the SIMD
    modulo's 64-bit reciprocal and m >= 2^32 products) and a feature with out-of-range coefficients
    (the exact limb path, id by id)."""
    num_rows = [1, 3, 97, 2**32 - 1, 2**32 + 1, 2**40, P61, 2**62 + 3, I64_MAX, 1000]
    _, values, offsets, fi, coefficients, nr = _runs_case(4000, 4, num_rows, k=k, max_len=30, table_rows=1, id_dtype=id_dtype)
    coefficients[-1] = torch.randint(I64_MIN, I64_MAX, (k, 3), generator=torch.Generator().manual_seed(5))  # outside [0, p)
    out = ops.multi_probe_hash(values, fi, coefficients, nr)
    assert torch.equal(out, ref("multi_probe_hash")(values, fi, coefficients, nr))


def test_forward_pooling_one_large_output_streams(two_threads):
    """An output above 8 MiB is written with non-temporal stores (AVX2, float32 dims 16/32/64/128): same values."""
    weight, values, offsets, fi, coefficients, num_rows = _runs_case(1, 64, [50_000, 60_000], k=1)
    n = 45_000
    g = torch.Generator().manual_seed(7)
    values = torch.randint(I64_MIN, I64_MAX, (n,), generator=g)
    fi = torch.arange(n) * 2 // n
    offsets = torch.arange(n + 1)  # 45000 bags x 64 floats = 11.5 MB of output
    for mode in ("sum", "mean"):
        out = ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, num_rows, mode, None)
        rows = ref("multi_probe_hash")(values, fi, coefficients, num_rows)[:, 0]
        assert torch.equal(out[:, 0], weight[rows]), mode  # one id per bag: exact


def test_forward_errors_inside_feature_runs():
    weight, values, offsets, fi, coefficients, num_rows = _runs_case(2000, 16, [300, 400, 500])
    bad = fi.clone()
    bad[bad.numel() // 2] = 3  # one bad feature index in the middle of a run
    with pytest.raises(RuntimeError, match="feature_index 3 out of range"):
        ops.hashed_embedding_bag(weight, values, offsets, bad, coefficients, num_rows, "sum", None)
    with pytest.raises(RuntimeError, match="feature_index 3 out of range"):
        ops.multi_probe_hash(values, bad, coefficients, num_rows)
    # num_rows above the table: an error only when some id really hashes beyond it
    big = torch.tensor([300, 400, 5000])
    with pytest.raises(RuntimeError, match="weight rows"):
        ops.hashed_embedding_bag(weight, values, offsets, fi, coefficients, big, "sum", None)
    rows = ref("multi_probe_hash")(values, fi, coefficients, big)
    keep = (rows < weight.shape[0]).all(dim=1)
    kept_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(torch.stack(
        [keep[a:b].sum() for a, b in zip(offsets[:-1], offsets[1:])]), 0)])
    args = (weight, values[keep], kept_offsets, fi[keep], coefficients, big, "sum", None)
    torch.testing.assert_close(ops.hashed_embedding_bag(*args), ref("hashed_embedding_bag")(*args))


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_sid_pieces_bit_exact_large(id_dtype, two_threads):
    g = torch.Generator().manual_seed(0)
    items = 5000
    counts = torch.randint(0, 5, (items,), generator=g)
    item_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0), counts.sum().reshape(1) + 1])
    item_rows = torch.cat([torch.randint(1, 10**6, (int(counts.sum()),), generator=g), torch.zeros(1, dtype=torch.int64)])
    lengths = torch.randint(0, 8, (30000,), generator=g).to(torch.int32)
    ids = torch.randint(-5, items + 20, (int(lengths.sum()),), generator=g).to(id_dtype) + 3
    got = ops.sid_pieces(ids, lengths, item_offsets, item_rows, 3)
    expected = ref("sid_pieces")(ids, lengths, item_offsets, item_rows, 3)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))
    with pytest.raises(RuntimeError, match="lengths"):
        ops.sid_pieces(ids, lengths[:-1], item_offsets, item_rows, 3)


# ------------------------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_dispatch_goes_to_the_compiled_kernels():
    assert all(devices["CUDA"] == "compiled" for devices in ops.kernel_status().values()), ops.kernel_status()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_cuda_forward_backward_large_match_cpu(dtype, mode):
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(20000, m=300, d=70, dtype=dtype)
    cpu_args = (weight, values, offsets, fi, coefficients, num_rows, mode, psw)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in cpu_args)
    torch.testing.assert_close(ops.hashed_embedding_bag(*cuda_args).cpu(), ops.hashed_embedding_bag(*cpu_args),
                               rtol=TOL[dtype], atol=TOL[dtype])
    grad = torch.randn(offsets.numel() - 1, coefficients.shape[1], 70).to(dtype)
    back = ops.OPS["hashed_embedding_bag_backward"].op
    cpu = back(grad, values, offsets, fi, coefficients, num_rows, 300, mode, psw)
    cuda = back(grad.cuda(), *cuda_args[1:6], 300, mode, cuda_args[7])
    torch.testing.assert_close(cuda.cpu().double(), cpu.double(), rtol=TOL[dtype] * 100, atol=TOL[dtype] * 100 * float(cpu.abs().max()))
    assert torch.equal(cuda, back(grad.cuda(), *cuda_args[1:6], 300, mode, cuda_args[7]))  # deterministic


@needs_cuda
def test_cuda_hash_and_sid_pieces_bit_exact():
    args = _hash_case(100_000, extreme_coefficients=True)
    assert torch.equal(ops.multi_probe_hash(*[a.cuda() for a in args]).cpu(), ops.multi_probe_hash(*args))
    item_offsets = torch.tensor([0, 2, 2, 5, 6])
    item_rows = torch.tensor([4, 5, 6, 7, 8, 0])
    lengths = torch.randint(0, 5, (10000,), dtype=torch.int32)
    ids = torch.randint(-2, 6, (int(lengths.sum()),))
    cpu = ops.sid_pieces(ids, lengths, item_offsets, item_rows, 0)
    cuda = ops.sid_pieces(ids.cuda(), lengths.cuda(), item_offsets.cuda(), item_rows.cuda(), 0)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))


@needs_cuda
def test_cuda_kernels_reject_a_cpu_tensor_among_cuda_ones():
    # One CUDA argument sends the call to the CUDA kernel; a CPU tensor among the others must be a clear error,
    # not a host pointer read on the device (an illegal memory access that poisons the CUDA context).
    weight, values, offsets, fi, coefficients, num_rows, psw = _bag_case(200, m=50, d=8)
    cuda = [a.cuda() for a in (weight, values, offsets, fi, coefficients, num_rows)]
    for i, name in ((1, "values"), (2, "offsets")):
        args = list(cuda)
        args[i] = args[i].cpu()
        with pytest.raises(RuntimeError, match=f"{name} is on cpu but weight is on cuda"):
            ops.hashed_embedding_bag(*args, "sum", None)
    with pytest.raises(RuntimeError, match="item_rows is on cpu but ids is on cuda"):
        ops.sid_pieces(torch.tensor([0, 1]).cuda(), torch.tensor([2]).cuda(), torch.tensor([0, 1, 2]).cuda(), torch.tensor([3, 4]), 0)
    torch.cuda.synchronize()  # the context is still healthy


def test_baseline_and_avx2_pooling_loops_agree(tmp_path):
    """The forward and the hash have a baseline and an AVX2+FMA engine (chosen at run time; AVX2 hashes 4 ids of a
    block in SIMD lanes); run the baseline one in a subprocess (RECSYS_EMB_NO_AVX2=1) and compare: hashes and
    unweighted sums bit-identical (random features and feature runs), weighted within tolerance."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch, recsys_emb.ops as ops\n"
        "from tests.ops.test_compiled import _bag_case, _runs_case\n"
        "out = {}\n"
        "for d in (16, 64, 24):\n"
        "    for weighted in (False, True):\n"
        "        w, v, o, f, c, r, p = _bag_case(300, m=200, d=d, weighted=weighted)\n"
        "        out[(d, weighted)] = ops.hashed_embedding_bag(w, v, o, f, c, r, 'sum', p)\n"
        "    w, v, o, f, c, r = _runs_case(2000, d, [7, 4099, 2**32 + 1], table_rows=5000)\n"
        "    r = r.clamp(max=5000)\n"
        "    out[(d, 'runs')] = ops.hashed_embedding_bag(w, v, o, f, c, r, 'sum', None)\n"
        "    out[(d, 'hash')] = ops.multi_probe_hash(v, f, c, torch.tensor([7, 2**40, 2**63 - 1]))\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = {}
    for flag in ("0", "1"):
        path = tmp_path / f"out{flag}.pt"
        env = {**os.environ, "RECSYS_EMB_NO_AVX2": flag, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(path)], check=True, env=env,
                       cwd=Path(__file__).resolve().parents[2])
        results[flag] = torch.load(path, weights_only=False)
    for key, fast in results["0"].items():
        base = results["1"][key]
        if key[1] is True:
            torch.testing.assert_close(fast, base, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(fast, base), key
