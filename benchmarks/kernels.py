"""Kernel benchmark: the fused multiplexed lookup ``recsys_emb::hashed_embedding_bag`` vs the torch
reference vs FBGEMM TBE, on the same lookups, with a memory-bandwidth probe as the ceiling.

Workload (Unified Embedding, single probe): F features (default 26) share ONE table of M rows x D
(fp32); batch B, P ids per bag (pooling 1 or 20); random int64 raw ids, salted hash per feature.
Per shape, in the same process, the variants are timed round-robin over several rounds (fused,
torch_ref, fbgemm_tbe, torch_gather, hash_only, fused, ...; each gets one warm-up call and a few timed calls per
round), so that a load change on a shared machine hits all variants alike:

* ``fused``: ``recsys_emb.ops.hashed_embedding_bag`` on raw ids = salted hash + gather + pooled sum in
  one op (the compiled CPU kernel when ``recsys_emb._C`` is built; otherwise the torch reference and
  the row is labelled so). INCLUDES THE HASH.
* ``torch_ref``: the pure-PyTorch path: the hash in torch int64 ops (the registered reference of
  ``recsys_emb::multi_probe_hash``) + ``torch.nn.functional.embedding_bag`` (sum, CPU fbgemm-backed).
  INCLUDES THE HASH.
* ``fbgemm_tbe``: FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` (one table, ``feature_table_map``
  = [0] * F, ``ComputeDevice.CPU``, fp32, SUM) forward on the PRE-HASHED rows: EXCLUDES THE HASH
  (hashing is not something TBE does; its input is the hash output, computed once outside the timer).
* ``hash_only``: ``recsys_emb.ops.multi_probe_hash`` alone (what the hash costs inside ``fused``).
* ``torch_gather`` (pooling 1 only): ``torch.index_select(weight, 0, rows, out=buf)`` on the pre-hashed
  rows into a preallocated output: the bare random-row copy, no hash, no pooling, no allocation. With
  one id per bag it moves exactly the bytes ``fused`` moves, so it is the machine's ceiling for
  random row reads, the counterpart of the ``copy`` probe for sequential ones.
* ``copy``: ``dst.copy_(src)`` of a large fp32 tensor (default 1 GiB): the measured memory-bandwidth
  ceiling (bytes read + written / time), same threads.

Reported per variant: lookups/s (ids x probes / s, from the median time over rounds) and effective GB/s = (rows read N*D*4 + output
written F*B*D*4 + ids/offsets read) / time, and that as % of the copy bandwidth. Every variant's
output is checked against ``fused`` (allclose) before timing. The speedups of ``fused`` over
``torch_ref`` and ``fbgemm_tbe`` are the MEDIAN OF THE PER-ROUND RATIOS (other's time / fused time in
the same round), with their min and max over rounds (``speedup_vs_*_min/_max/_per_round`` in the JSON).

    python benchmarks/kernels.py --quick --threads 1       # small sanity run (~1 min)
    python benchmarks/kernels.py --threads N               # full: rows 1e5,1e6,1e7 x dim 16,64 x pooling 1,20

    python benchmarks/kernels.py --device cuda --batch 4096 65536   # on a GPU: same grid, CUDA kernels,
                                                                    # TBE on the device, device-copy probe

Full mode needs ~2 x M x D x 4 bytes of memory for the largest table (about 5.2 GB at 1e7 x 64).
Writes benchmarks/results/kernels.{json,md} (``--device cuda``: kernels_cuda.*; ``--out`` to change).
On CUDA every timed call ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import recsys_emb.ops as ops  # noqa: E402
from recsys_emb.modules.unified import hash_coefficients  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

FULL = {"rows": [100_000, 1_000_000, 10_000_000], "dims": [16, 64], "pooling": [1, 20]}
QUICK = {"rows": [100_000], "dims": [16, 64], "pooling": [1, 20]}


def machine(device: torch.device) -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    thp = None
    try:  # e.g. "always [madvise] never": torch asks for huge pages only with THP_MEM_ALLOC_ENABLE=1 and madvise/always
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "transparent_hugepage": thp,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "logical_cores": os.cpu_count(),
        "memory_bytes": mem,
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "extension": ops.extension_status(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def timeit(fn, reps: int, device: torch.device, min_seconds: float = 0.0) -> float:
    """Median seconds of ``reps`` calls (after one warm-up call), or of as many more calls as fill
    ``min_seconds`` (estimated from the warm-up call); on CUDA each call is synchronised."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    warm = time.perf_counter() - t0
    if min_seconds > 0 and warm > 0:
        reps = max(reps, min(1000, math.ceil(min_seconds / warm)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(variants: dict, rounds: int, calls: int, device: torch.device, min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Round-robin timing: in each of ``rounds`` rounds every variant in turn gets one warm-up call and
    ``calls`` timed calls (more for fast variants, to fill ``min_seconds``); their median is the
    variant's time in that round. A load change on the shared machine then hits all variants of the
    round alike, and ratios are taken round by round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timeit(fn, calls, device, min_seconds))
    return times


def ratio_stats(baseline: list[float], fused: list[float]) -> dict[str, object]:
    """Speedup of ``fused`` over ``baseline`` per round (baseline time / fused time of the same round):
    the median over rounds, the min and max, and every round's ratio."""
    per_round = [b / f for b, f in zip(baseline, fused)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "per_round": per_round}


def copy_bandwidth(nbytes: int, reps: int, device: torch.device) -> float:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), reps, device)
    return 2 * nbytes / t / 1e9  # read + write


def make_tbe(num_rows: int, dim: int, features: int, weight: torch.Tensor):
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

    on_gpu = weight.device.type == "cuda"
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(num_rows, dim, EmbeddingLocation.DEVICE if on_gpu else EmbeddingLocation.HOST,
          ComputeDevice.CUDA if on_gpu else ComputeDevice.CPU)],
        feature_table_map=[0] * features,
        pooling_mode=PoolingMode.SUM,
        device=weight.device,
    )
    with torch.no_grad():
        tbe.split_embedding_weights()[0].copy_(weight)
    return tbe


def run_shape(num_rows: int, dim: int, pooling: int, features: int, batch: int, rounds: int, calls: int, bandwidth: float,
              seed: int, device: torch.device, tbe: bool = True, min_round_seconds: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    nbags = features * batch
    n = nbags * pooling
    weight = torch.randn(num_rows, dim, generator=g).to(device)
    values = torch.randint(-(2**62), 2**62, (n,), generator=g).to(device)
    offsets = torch.arange(0, n + 1, pooling, dtype=torch.int64, device=device)  # (F B + 1,), feature-major like a KJT
    feature_index = torch.arange(features, device=device).repeat_interleave(batch * pooling)  # (N,)
    coefficients = torch.tensor([[hash_coefficients(0, f"f{t}", 0)] for t in range(features)], dtype=torch.int64, device=device)  # (F, 1, 3)
    table_rows = torch.full((features,), num_rows, dtype=torch.int64, device=device)
    hash_ref = ops.OPS["multi_probe_hash"].reference

    def fused():
        return ops.hashed_embedding_bag(weight, values, offsets, feature_index, coefficients, table_rows, "sum", None)[:, 0]

    def torch_ref():
        rows = hash_ref(values, feature_index, coefficients, table_rows)[:, 0]
        return F.embedding_bag(rows, weight, offsets, mode="sum", include_last_offset=True)

    def hash_only():
        return ops.multi_probe_hash(values, feature_index, coefficients, table_rows)

    rows = ops.multi_probe_hash(values, feature_index, coefficients, table_rows)[:, 0].contiguous()
    variants = {"fused": fused, "torch_ref": torch_ref}  # round-robin order: fused, torch_ref, fbgemm_tbe, torch_gather, hash_only
    module = None
    if tbe:
        try:
            module = make_tbe(num_rows, dim, features, weight)
            variants["fbgemm_tbe"] = lambda: module(rows, offsets)  # (B, F D), pre-hashed rows
        except Exception as exc:  # fbgemm missing / API change: report, keep the rest
            print(f"[kernels] FBGEMM TBE unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    gather_out = None
    if pooling == 1:  # one row per bag: the bare gather writes exactly fused's output
        gather_out = torch.empty(nbags, dim, device=device)
        variants["torch_gather"] = lambda: torch.index_select(weight, 0, rows, out=gather_out)
    variants["hash_only"] = hash_only

    with torch.no_grad():
        want = fused()  # (F B, D)
        torch.testing.assert_close(torch_ref(), want, rtol=1e-5, atol=1e-5)
        if module is not None:
            got = module(rows, offsets).view(batch, features, dim).transpose(0, 1).reshape(nbags, dim)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if gather_out is not None:
            torch.testing.assert_close(variants["torch_gather"](), want, rtol=1e-5, atol=1e-5)
        times = interleaved(variants, rounds, calls, device, min_round_seconds)
    bytes_moved = n * dim * 4 + nbags * dim * 4 + n * 8 + (nbags + 1) * 8  # rows + output + ids + offsets
    result = {"rows": num_rows, "dim": dim, "pooling": pooling, "features": features, "batch": batch, "lookups": n,
              "rounds": rounds, "calls_per_round": calls, "min_round_seconds": min_round_seconds, "variants": {}}
    for name, ts in times.items():
        t = statistics.median(ts)
        entry = {"seconds": t, "lookups_per_s": n / t, "seconds_per_round": ts}
        if name != "hash_only":
            gbs = bytes_moved / t / 1e9
            entry.update({"effective_GBps": gbs, "pct_of_copy_bandwidth": 100 * gbs / bandwidth})
        result["variants"][name] = entry
    # Speedups: median over rounds of the per-round ratio (both variants timed back to back in that round).
    for other, key in (("torch_ref", "speedup_vs_torch_ref"), ("fbgemm_tbe", "speedup_vs_fbgemm_tbe"),
                       ("torch_gather", "speedup_vs_torch_gather")):
        if other in times:
            stats = ratio_stats(times[other], times["fused"])
            result[key] = stats["median"]
            result[key + "_min"], result[key + "_max"], result[key + "_per_round"] = stats["min"], stats["max"], stats["per_round"]
    return result


def rounds_text(report: dict) -> str:
    if "rounds" not in report:  # results written before the per-round ratios
        return "rounds not recorded"
    text = f"{report['rounds']} rounds x {report['calls_per_round']} timed call(s) per variant"
    if report.get("min_round_seconds"):
        text += f", or more calls for a fast variant, to fill {report['min_round_seconds'] * 1e3:.0f} ms per round"
    return text


def ratio_text(result: dict, key: str) -> str:
    """``1.23x (1.10-1.31)``: the median per-round speedup and its range (older results: the median only)."""
    text = f"{result[key]:.2f}x"
    if key + "_min" in result:
        text += f" ({result[key + '_min']:.2f}-{result[key + '_max']:.2f})"
    return text


def markdown(report: dict) -> str:
    m = report["machine"]
    on_gpu = report.get("device", "cpu") == "cuda"
    lines = [
        f"# Kernel benchmark: fused multiplexed lookup vs torch reference vs FBGEMM TBE ({'CUDA' if on_gpu else 'CPU'})",
        "",
        f"Command: `{report['command']}` ({report['mode']} mode)",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {(m['memory_bytes'] or 0) / 2**30:.0f} GiB; "
        f"torch {m['torch']} with {report['threads']} thread(s); load average at start {m['load_average_at_start']}."
        + ("" if on_gpu else f" Huge pages: THP_MEM_ALLOC_ENABLE={m.get('THP_MEM_ALLOC_ENABLE') or 'unset'} "
           f"(kernel setting: {m.get('transparent_hugepage') or 'unknown'}).")
        + (f" GPU: {m['gpu']} (CUDA {m['cuda']}); all variants run on the GPU." if on_gpu else ""),
        f"Extension: {m['extension']}",
        "",
        f"Memory-bandwidth probe ({'device-to-device ' if on_gpu else ''}fp32 copy of {report['copy_bytes'] / 2**30:.2f} GiB, read + write): "
        f"**{report['copy_GBps']:.1f} GB/s**.",
        "",
        "Variants: `fused` = recsys_emb::hashed_embedding_bag on raw ids (hash + gather + sum, INCLUDES the hash); "
        "`torch_ref` = hash in torch int64 ops + F.embedding_bag (INCLUDES the hash); `fbgemm_tbe` = FBGEMM "
        f"SplitTableBatchedEmbeddingBagsCodegen ({'CUDA, device-resident' if on_gpu else 'CPU'}, fp32, SUM, one shared table) on pre-hashed rows (EXCLUDES the hash); "
        "`hash_only` = recsys_emb::multi_probe_hash alone. Effective GB/s = (rows read + output written + ids/offsets read) / time.",
        "",
        f"Timing: per shape the variants run round-robin ({rounds_text(report)}); every round gives each variant one "
        "warm-up call and then times it (median of its calls in that round). Lookups/s use the median over rounds; "
        "the speedups are the median of the per-round ratios (both variants timed back to back), with their min-max over rounds.",
        "",
        "| rows | dim | pooling | batch | lookups | fused Mlookups/s | fused GB/s (% copy) | torch_ref Mlookups/s | fbgemm_tbe Mlookups/s | fbgemm_tbe GB/s (% copy) | hash_only Mlookups/s | fused / torch_ref (min-max) | fused / fbgemm_tbe (min-max) | fused / torch_gather (min-max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        v = r["variants"]
        tbe = v.get("fbgemm_tbe")
        lines.append(
            f"| {r['rows']:.0e} | {r['dim']} | {r['pooling']} | {r['batch']} | {r['lookups']} | {v['fused']['lookups_per_s'] / 1e6:.1f} | "
            f"{v['fused']['effective_GBps']:.2f} ({v['fused']['pct_of_copy_bandwidth']:.0f}%) | {v['torch_ref']['lookups_per_s'] / 1e6:.1f} | "
            + (f"{tbe['lookups_per_s'] / 1e6:.1f} | {tbe['effective_GBps']:.2f} ({tbe['pct_of_copy_bandwidth']:.0f}%) | " if tbe else "n/a | n/a | ")
            + f"{v['hash_only']['lookups_per_s'] / 1e6:.1f} | {ratio_text(r, 'speedup_vs_torch_ref')} | "
            + (f"{ratio_text(r, 'speedup_vs_fbgemm_tbe')} |" if tbe else "n/a |")
            + (f" {ratio_text(r, 'speedup_vs_torch_gather')} |" if "speedup_vs_torch_gather" in r else " - |")
        )
    goal = ("Goal (issue 10, GPU): fused >= 60% of the measured device bandwidth at large batch." if on_gpu
            else "Goals (issue 10, CPU): fused >= 2x torch_ref and >= 1.2x fbgemm_tbe forward.")
    lines += ["", goal, ""]
    if any("speedup_vs_torch_gather" in r for r in report["results"]):
        lines += ["`torch_gather` (pooling 1 only): torch.index_select of the pre-hashed rows into a preallocated "
                  "output, i.e. the bare random-row copy without hash, pooling or allocation; fused / torch_gather "
                  "near 1 means the fused op runs at the machine's random-read ceiling for that shape.", ""]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sanity run (1e5 rows only, fewer repetitions)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--features", type=int, default=26)
    parser.add_argument("--batch", type=int, nargs="+", default=[4096], help="batch size(s) B (bags per feature)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where tables, ids and every variant live")
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="override the table sizes")
    parser.add_argument("--dims", type=int, nargs="*", default=None)
    parser.add_argument("--pooling", type=int, nargs="*", default=None)
    parser.add_argument("--reps", type=int, default=None, help="timed calls per variant in all (default 6 quick, 12 full)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="round-robin rounds per shape; the reps are split evenly over them (default 3 quick, 6 full)")
    parser.add_argument("--min-round-ms", type=float, default=100.0,
                        help="a fast variant gets more timed calls per round, to fill this many ms (default 100)")
    parser.add_argument("--no-tbe", action="store_true", help="skip the FBGEMM TBE variant")
    parser.add_argument("--copy-gib", type=float, default=1.0, help="size of the bandwidth-probe copy")
    parser.add_argument("--note", default="", help="free text added to the markdown (e.g. 'idle machine')")
    parser.add_argument("--out", type=Path, default=None, help="results stem (default benchmarks/results/kernels[_cuda])")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    out = args.out or REPO / "benchmarks" / "results" / ("kernels_cuda" if device.type == "cuda" else "kernels")
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = dict(QUICK if args.quick else FULL)
    for key in ("rows", "dims", "pooling"):
        if getattr(args, key):
            grid[key] = getattr(args, key)
    reps = args.reps or (6 if args.quick else 12)
    rounds = max(1, min(reps, args.rounds or (3 if args.quick else 6)))
    calls = -(-reps // rounds)  # timed calls per variant per round
    command = "python benchmarks/kernels.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"[kernels] {command}\n[kernels] {ops.extension_status()}")
    copy_bytes = int(args.copy_gib * 2**30)
    bandwidth = copy_bandwidth(copy_bytes, 5, device)
    print(f"[kernels] copy bandwidth {bandwidth:.1f} GB/s ({args.device}, {torch.get_num_threads()} threads)")
    results = []
    shapes = [(r, d, p, b) for r in grid["rows"] for d in grid["dims"] for p in grid["pooling"] for b in args.batch]
    for num_rows, dim, pooling, batch in shapes:
        r = run_shape(num_rows, dim, pooling, args.features, batch, rounds, calls, bandwidth, seed=len(results), device=device,
                      tbe=not args.no_tbe, min_round_seconds=args.min_round_ms / 1e3)
        v = r["variants"]
        print(
            f"[kernels] rows={num_rows:.0e} dim={dim} pooling={pooling} batch={batch}: fused {v['fused']['lookups_per_s'] / 1e6:.1f} M/s "
            f"({v['fused']['pct_of_copy_bandwidth']:.0f}% bw), torch_ref {v['torch_ref']['lookups_per_s'] / 1e6:.1f} M/s, "
            + (f"tbe {v['fbgemm_tbe']['lookups_per_s'] / 1e6:.1f} M/s, " if "fbgemm_tbe" in v else "")
            + f"x{r['speedup_vs_torch_ref']:.2f} ({r['speedup_vs_torch_ref_min']:.2f}-{r['speedup_vs_torch_ref_max']:.2f}) vs torch_ref"
            + (f", x{r['speedup_vs_fbgemm_tbe']:.2f} ({r['speedup_vs_fbgemm_tbe_min']:.2f}-{r['speedup_vs_fbgemm_tbe_max']:.2f}) vs TBE"
               if "fbgemm_tbe" in v else ""),
            flush=True,
        )
        results.append(r)
    report = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "calls_per_round": calls,
        "min_round_seconds": args.min_round_ms / 1e3,
        "device": args.device,
        "machine": machine(device),
        "copy_bytes": copy_bytes,
        "copy_GBps": bandwidth,
        "note": args.note,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(f"[kernels] wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
