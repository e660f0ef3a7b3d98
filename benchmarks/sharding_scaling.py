"""Sharded training throughput: 1 vs 2 processes for each sharding type, with communication volume.

A Criteo-shaped DLRM (13 dense, 26 sparse features, one id per bag, Zipf-distributed ids, dim 16,
``--rows-per-table`` rows per table) is trained with TorchRec DistributedModelParallel + FBGEMM fused
row-wise Adagrad on the SAME global batches, once in one process and once in ``--world-size``
processes (gloo on CPU, NCCL on CUDA), for table_wise, row_wise and column_wise sharding. For each
run we report samples/s (global batch / step time, median over timed steps) and the bytes each rank
sends per step through torch.distributed collectives (input and output all-to-alls of the sharded
tables, counted by wrapping ``torch.distributed``'s collective functions) plus the dense gradient
all-reduce done by DDP (parameter count x 4 bytes, computed).

On CPU the processes share the machine's cores: ``--threads`` (default: cores / processes) threads
per process, so 1- and 2-process runs use the same number of cores.

    python benchmarks/sharding_scaling.py [--world-size 2] [--rows-per-table 100000] [--batch-size 4096] [--steps 30]

Writes benchmarks/results/sharding_scaling.{json,md} (``--device cuda`` writes *_cuda.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.experiment import ShardingConfig, TrainConfig  # noqa: E402
from recsys_emb.config.model import DLRMConfig  # noqa: E402
from recsys_emb.models.dlrm import DLRM  # noqa: E402
from recsys_emb.models.train import CTRTrain  # noqa: E402
from recsys_emb.train.env import init_distributed, shutdown  # noqa: E402
from recsys_emb.train.optim import build_optimizer  # noqa: E402
from recsys_emb.train.parallel import shard_model  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

N_DENSE, N_SPARSE, DIM = 13, 26, 16
_COLLECTIVES = ("all_to_all_single", "all_to_all", "reduce_scatter_tensor", "reduce_scatter", "all_gather",
                "all_gather_into_tensor", "all_reduce")


class CommCounter:
    """Counts bytes of tensors handed to torch.distributed collectives (this rank's send side)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.active = False

    def install(self) -> None:
        for name in _COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue

            def wrapped(*args, _orig=original, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
                if self.active:
                    self.bytes += _payload(_name, args, kwargs)
                return _orig(*args, **kwargs)

            setattr(dist, name, wrapped)


def _payload(name: str, args: tuple, kwargs: dict) -> int:
    def size(t: object) -> int:
        if isinstance(t, torch.Tensor):
            return t.numel() * t.element_size()
        if isinstance(t, (list, tuple)):
            return sum(size(x) for x in t)
        return 0

    if name in ("all_to_all_single", "reduce_scatter_tensor", "all_gather_into_tensor"):
        return size(args[1] if len(args) > 1 else kwargs.get("input"))
    if name in ("all_to_all", "reduce_scatter"):
        return size(args[1] if len(args) > 1 else kwargs.get("input_list") or kwargs.get("input_tensor_list"))
    if name == "all_gather":
        return size(args[1] if len(args) > 1 else kwargs.get("tensor"))
    return size(args[0] if args else kwargs.get("tensor"))


def make_batches(n: int, batch_size: int, rows: int, seed: int, rank: int, world_size: int) -> list[Batch]:
    """Global batches drawn from one seed; this rank keeps its contiguous part of each."""
    rng = np.random.default_rng(seed)
    part = batch_size // world_size
    out = []
    for _ in range(n):
        dense = rng.exponential(1.0, size=(batch_size, N_DENSE)).astype(np.float32)
        ids = (rng.zipf(1.2, size=(N_SPARSE, batch_size)) - 1) % rows
        labels = (rng.random(batch_size) < 0.25).astype(np.float32)
        lo, hi = rank * part, (rank + 1) * part
        kjt = KeyedJaggedTensor(
            keys=[f"C{i + 1}" for i in range(N_SPARSE)],
            values=torch.from_numpy(np.ascontiguousarray(ids[:, lo:hi]).reshape(-1)),
            lengths=torch.ones(N_SPARSE * part, dtype=torch.int32),
        )
        out.append(Batch(torch.from_numpy(dense[lo:hi]), kjt, torch.from_numpy(labels[lo:hi])))
    return out


def worker(rank: int, world_size: int, args: argparse.Namespace, sharding_type: str, out_file: str) -> None:
    if world_size > 1 or args.device == "cuda":
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // world_size))
    counter = CommCounter()
    counter.install()
    env = init_distributed(args.device)
    try:
        torch.manual_seed(0)
        tables = [EmbeddingBagConfig(name=f"t_C{i + 1}", embedding_dim=DIM, num_embeddings=args.rows_per_table,
                                     feature_names=[f"C{i + 1}"]) for i in range(N_SPARSE)]
        from torchrec import EmbeddingBagCollection

        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        model = CTRTrain(DLRM(ebc, N_DENSE, DLRMConfig(dense_arch_layer_sizes=[512, 256], over_arch_layer_sizes=[512, 256]),
                              device=torch.device("meta")))
        train_cfg = TrainConfig(batch_size=args.batch_size)
        dmp, unfused = shard_model(model, env, train_cfg, ShardingConfig(type=sharding_type))
        optimizer = build_optimizer(dmp, unfused, train_cfg)
        dense_params = sum(p.numel() for n, p in dmp.named_parameters() if not getattr(p, "_in_backward_optimizers", None))
        batches = make_batches(args.warmup + args.steps, args.batch_size, args.rows_per_table, 1, env.rank, env.world_size)
        times = []
        for i, batch in enumerate(batches):
            counter.active = i == args.warmup  # count one step
            if env.world_size > 1:
                dist.barrier()
            t0 = time.perf_counter()
            loss, _ = dmp(batch.to(env.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            counter.active = False
        step = torch.tensor([statistics.median(times)])
        if env.world_size > 1:
            dist.all_reduce(step, op=dist.ReduceOp.MAX)
        if env.rank == 0:
            ddp_bytes = dense_params * 4 if env.world_size > 1 else 0
            Path(out_file).write_text(json.dumps({
                "sharding": sharding_type, "world_size": env.world_size, "step_seconds": float(step),
                "samples_per_second": args.batch_size / float(step),
                "sparse_comm_bytes_per_step_rank0": counter.bytes, "dense_allreduce_bytes_per_step": ddp_bytes,
            }))
    finally:
        shutdown(env)


def run_case(args: argparse.Namespace, sharding_type: str, world_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        if world_size == 1 and args.device != "cuda":
            ctx = mp.get_context("spawn")
            p = ctx.Process(target=worker, args=(0, 1, args, sharding_type, out))
            p.start()
            p.join()
            if p.exitcode:
                raise RuntimeError(f"{sharding_type} on 1 process failed (exit {p.exitcode})")
        else:
            from tests.distributed.multiprocess import _free_port

            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            mp.spawn(worker, args=(world_size, args, sharding_type, out), nprocs=world_size, join=True)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = cores / processes)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--types", nargs="+", default=["table_wise", "row_wise", "column_wise"])
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    rows = []
    for sharding_type in args.types:
        for world_size in sorted({1, args.world_size}):  # --world-size 1: one process only (e.g. one GPU)
            result = run_case(args, sharding_type, world_size)
            rows.append(result)
            print(json.dumps(result), flush=True)
    base = {r["sharding"]: r["samples_per_second"] for r in rows if r["world_size"] == 1}
    for r in rows:
        r["speedup_vs_1_process"] = r["samples_per_second"] / base[r["sharding"]]
    command = "python benchmarks/sharding_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": command.strip(), "device": args.device, "batch_size": args.batch_size,
               "rows_per_table": args.rows_per_table, "tables": N_SPARSE, "dim": DIM, "steps": args.steps,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "results": rows}
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.results / f"sharding_scaling{suffix}.json", summary)
    lines = [f"# Sharded DLRM training throughput ({args.device})", "", f"Command: `{summary['command']}`  ",
             f"{N_SPARSE} tables x {args.rows_per_table:,} rows x {DIM}, global batch {args.batch_size}, "
             f"median of {args.steps} steps; machine: {summary['machine']['platform']}, {os.cpu_count()} CPUs.", "",
             "| sharding | processes | samples/s | vs 1 process | sparse comm / step (rank 0) | dense all-reduce / step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sharding']} | {r['world_size']} | {r['samples_per_second']:,.0f} | {r['speedup_vs_1_process']:.2f}x | "
                     f"{r['sparse_comm_bytes_per_step_rank0'] / 2**20:.2f} MiB | {r['dense_allreduce_bytes_per_step'] / 2**20:.2f} MiB |")
    atomic_write_text(args.results / f"sharding_scaling{suffix}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
