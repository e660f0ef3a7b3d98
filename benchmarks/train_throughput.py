"""Training throughput: our DLRM (TorchRec DMP + FBGEMM fused row-wise Adagrad) vs. the same DLRM
with plain-PyTorch ``nn.EmbeddingBag`` tables (sparse gradients + ``torch.optim.Adagrad``).

Both use the same dense network, batch, table sizes and data (Criteo-shaped: 13 dense, 26 sparse
features, one id per bag, Zipf-distributed ids); only the embedding tables and their optimizer
differ. Each configuration is timed in the same process, interleaved over several rounds, and the
result is reported as samples/s and the ratio ours / baseline.

    python benchmarks/train_throughput.py [--rows-per-table 100000] [--dim 16] [--batch-size 4096]

Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor
from torchrec.datasets.utils import Batch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.experiment import TrainConfig  # noqa: E402
from recsys_emb.config.model import DLRMConfig  # noqa: E402
from recsys_emb.models.dlrm import DLRM  # noqa: E402
from recsys_emb.models.train import CTRTrain  # noqa: E402
from recsys_emb.train.env import init_distributed, shutdown  # noqa: E402
from recsys_emb.train.optim import build_optimizer  # noqa: E402
from recsys_emb.train.parallel import shard_model  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


class PlainEmbeddingBags(nn.Module):
    """The baseline: one ``nn.EmbeddingBag(mode="sum", sparse=True)`` per table, EBC-compatible."""

    def __init__(self, tables: list[EmbeddingBagConfig]) -> None:
        super().__init__()
        self.tables = tables
        self.bags = nn.ModuleList(nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode="sum", sparse=True, include_last_offset=True) for t in tables)
        for bag, t in zip(self.bags, tables):
            bound = (1.0 / t.num_embeddings) ** 0.5  # TorchRec's default init range
            nn.init.uniform_(bag.weight, -bound, bound)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.tables

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        per_key = kjt.to_dict()
        outs = [bag(per_key[t.feature_names[0]].values(), per_key[t.feature_names[0]].offsets()) for bag, t in zip(self.bags, self.tables)]
        return KeyedTensor.from_tensor_list([t.feature_names[0] for t in self.tables], outs)


def make_batches(n: int, batch_size: int, rows: int, n_sparse: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    keys = [f"C{i + 1}" for i in range(n_sparse)]
    out = []
    for _ in range(n):
        ids = (rng.zipf(1.2, size=(n_sparse, batch_size)) - 1) % rows  # heavy-tailed like Criteo
        kjt = KeyedJaggedTensor(
            keys=keys, values=torch.from_numpy(ids.reshape(-1).astype(np.int64)),
            lengths=torch.ones(n_sparse * batch_size, dtype=torch.int64), stride=batch_size,
        )
        dense = torch.from_numpy(rng.exponential(1.0, size=(batch_size, 13)).astype(np.float32))
        labels = torch.from_numpy((rng.random(batch_size) < 0.25).astype(np.float32))
        out.append(Batch(dense_features=dense, sparse_features=kjt, labels=labels))
    return out


def time_steps(model: nn.Module, optimizer, batches: list[Batch]) -> float:  # noqa: ANN001
    """Seconds per training step over ``batches`` (after the caller's warm-up)."""
    start = time.perf_counter()
    for batch in batches:
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    tables = [
        EmbeddingBagConfig(name=f"t_C{i + 1}", embedding_dim=args.dim, num_embeddings=args.rows_per_table, feature_names=[f"C{i + 1}"])
        for i in range(args.tables)
    ]
    dlrm_cfg = DLRMConfig(dense_arch_layer_sizes=[512, 256, 64], over_arch_layer_sizes=[512, 256])
    train_cfg = TrainConfig()  # rowwise_adagrad lr 0.05 for tables, adam 1e-3 for dense
    batches = make_batches(args.steps + 2, args.batch_size, args.rows_per_table, args.tables, seed=0)

    env = init_distributed("cpu")
    ours_model = CTRTrain(DLRM(_meta_ebc(tables), 13, dlrm_cfg, device="meta"))
    ours, unfused = shard_model(ours_model, env, train_cfg)
    ours_opt = build_optimizer(ours, unfused, train_cfg)

    base = CTRTrain(DLRM(PlainEmbeddingBags(tables), 13, dlrm_cfg))
    table_params = [p for n, p in base.named_parameters() if ".bags." in n]
    dense_params = [p for n, p in base.named_parameters() if ".bags." not in n]
    base_opt = _Both(torch.optim.Adagrad(table_params, lr=0.05, eps=1e-8), torch.optim.Adam(dense_params, lr=1e-3))

    for model, opt in ((ours, ours_opt), (base, base_opt)):
        time_steps(model, opt, batches[:2])  # warm-up
    timings: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(args.rounds):
        timings["ours"].append(time_steps(ours, ours_opt, batches[2:]))
        timings["baseline"].append(time_steps(base, base_opt, batches[2:]))
    shutdown(env)

    sps = {k: args.batch_size / statistics.median(v) for k, v in timings.items()}
    result = {
        "benchmark": "train_throughput",
        "command": "python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {
            "model": "DLRM bottom 13-512-256-64-D, top 512-256-1, dot interaction",
            "tables": args.tables, "rows_per_table": args.rows_per_table, "dim": args.dim,
            "batch_size": args.batch_size, "steps_per_round": args.steps, "rounds": args.rounds,
            "ours": "TorchRec DistributedModelParallel (1 process, gloo), FBGEMM TBE, fused EXACT_ROWWISE_ADAGRAD; Adam dense",
            "baseline": "26 x nn.EmbeddingBag(sum, sparse=True), torch.optim.Adagrad (sparse grads); Adam dense",
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "samples_per_second": sps,
        "seconds_per_step": {k: [round(t, 5) for t in v] for k, v in timings.items()},
        "ratio_ours_over_baseline": sps["ours"] / sps["baseline"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / "train_throughput.json", result)
    md = (
        "# Training throughput: DLRM, TorchRec/FBGEMM vs plain nn.EmbeddingBag\n\n"
        f"Command: `{result['command'].strip()}`  \nMachine: {result['machine']['platform']}, "
        f"{result['machine']['cpus']} CPUs, torch {result['machine']['torch']}\n\n"
        f"{args.tables} tables x {args.rows_per_table:,} rows x dim {args.dim}, batch {args.batch_size}, "
        f"median of {args.rounds} interleaved rounds of {args.steps} steps.\n\n"
        "| embedding path | samples/s |\n|---|---|\n"
        f"| ours: TorchRec DMP + FBGEMM fused row-wise Adagrad | {sps['ours']:,.0f} |\n"
        f"| baseline: nn.EmbeddingBag(sparse) + torch Adagrad | {sps['baseline']:,.0f} |\n"
        f"| **ratio ours / baseline** | **{result['ratio_ours_over_baseline']:.2f}x** |\n"
    )
    atomic_write_text(args.out / "train_throughput.md", md)
    print(json.dumps({"samples_per_second": sps, "ratio": result["ratio_ours_over_baseline"]}))
    return 0


def _meta_ebc(tables: list[EmbeddingBagConfig]) -> nn.Module:
    from torchrec import EmbeddingBagCollection

    return EmbeddingBagCollection(tables, device=torch.device("meta"))


class _Both:
    """Two torch optimizers stepped together (baseline)."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.opts:
            o.step()


if __name__ == "__main__":
    sys.exit(main())
