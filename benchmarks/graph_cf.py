"""Graph CF benchmark: BPR-MF vs LightGCN vs NGCF (quality per epoch and time per epoch).

Every (model, seed) is a real ``train_graph`` run (full-ranking test metrics after every epoch,
training items and validation items excluded). Writes ``OUT.json``, ``OUT.md`` and, when matplotlib
is installed, ``OUT.png`` (test recall@20 against epochs, mean over seeds).

    python benchmarks/graph_cf.py --data ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m \\
        --models mf lightgcn ngcf --seeds 0 1 2 --epochs 2 --threads 1 \\
        --out benchmarks/results/graph_cf_ml1m

All models share the LightGCN settings (dim 64, 3 layers, Adam lr 1e-3, batch 2048); L2 1e-4 on the
layer-0 batch embeddings for MF/LightGCN, 1e-5 on the final ones for NGCF (its reference code).
Wall-clock figures depend on the machine's load: the JSON records threads and the host's load.

Step timing only (CPU seconds per BPR step, much less distorted by other jobs than wall time):

    python benchmarks/graph_cf.py --timing-data ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m \
        ../shared/datasets/gowalla_lightgcn --models lightgcn ngcf --threads 1 \
        --out benchmarks/results/graph_cf_step_timing
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_emb.models.graph import GraphModelConfig  # noqa: E402
from recsys_emb.train.graph_loop import GraphDataConfig, GraphExperimentConfig, GraphTrainConfig, train_graph  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def experiment(model: str, args: argparse.Namespace, seed: int) -> GraphExperimentConfig:
    model_cfg = GraphModelConfig(name=model, embedding_dim=args.dim, num_layers=args.layers, propagation=args.propagation,
                                 message_dropout=[0.1] if model == "ngcf" else [0.0])
    train_cfg = GraphTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
        l2=1e-5 if model == "ngcf" else 1e-4, l2_on="final" if model == "ngcf" else "ego",
        optimizer=args.optimizer, eval_every=1, num_threads=args.threads, progress=args.progress,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    sharding = None
    if args.sharding:
        from recsys_emb.config.experiment import ShardingConfig

        sharding = ShardingConfig(type=args.sharding)
    return GraphExperimentConfig(data=GraphDataConfig(path=args.data, valid=True), model=model_cfg, train=train_cfg,
                                 sharding=sharding)


def summarize(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    curves = np.array([[r["test"][metric] for r in run["history"]] for run in runs])  # (seeds, epochs)
    return {"mean": curves.mean(0).tolist(), "std": curves.std(0).tolist()}


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    lines = [
        f"# Graph CF on {Path(result['data']).name}: {', '.join(result['models'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']}; torch threads {result['threads']}; load average at start "
        f"{result['load_start']}, at end {result['load_end']} (shared 2-core machine: wall-clock numbers are "
        "inflated by other jobs).",
        "",
        f"Optimizer: {result['optimizer']}, batch {result.get('batch_size', '')}.",
        "",
        "Test metrics after the last epoch (mean ± std over seeds; training and validation items excluded):",
        "",
        "| model | propagation | epochs | seeds | s/epoch (train) | recall@20 | ndcg@20 | recall@50 | ndcg@50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {result['propagation']} | {result['epochs']} | {len(result['seeds'])} | {s['seconds_per_epoch']:.1f} "
            + " ".join(f"| {s[m]['mean'][-1]:.4f} ± {s[m]['std'][-1]:.4f}" for m in ("recall@20", "ndcg@20", "recall@50", "ndcg@50"))
            + " |"
        )
    lines += ["", "Test recall@20 by epoch (mean over seeds):", "", "| model | " + " | ".join(f"ep {e + 1}" for e in range(result["epochs"])) + " |",
              "|---|" + "---|" * result["epochs"]]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in s["recall@20"]["mean"]) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(path: Path, result: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in result["summary"].items():
        mean, std = np.array(s["recall@20"]["mean"]), np.array(s["recall@20"]["std"])
        epochs = np.arange(1, len(mean) + 1)
        ax.plot(epochs, mean, marker="o", label=name)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test recall@20")
    ax.set_title(Path(result["data"]).name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def step_timing(args: argparse.Namespace) -> dict[str, Any]:
    """CPU and wall seconds per BPR step (process_time is far less distorted by other jobs than wall time)."""
    import torch

    from recsys_emb.data.graphs import load_graph_dataset
    from recsys_emb.models.graph import GraphBPRTrain
    from recsys_emb.train.graph_loop import BPRSampler, build_graph_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    for data in args.timing_data:
        graph = load_graph_dataset(data, ("train", "test"))
        for model_name in args.models:
            cfg = experiment(model_name, args, 0)
            model = build_graph_model(cfg, graph)
            loss_fn = GraphBPRTrain(model, cfg.train.l2, cfg.train.l2_on)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
            sampler = BPRSampler(graph.train, graph.num_items, args.batch_size, 0)
            batches = sampler.epoch(0)

            def step() -> None:
                loss, _ = loss_fn(*next(batches))
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.timing_steps):
                step()
            cpu_step = (time.process_time() - cpu) / args.timing_steps
            out[f"{Path(data).name}/{model_name}"] = {
                "steps_per_epoch": len(sampler), "cpu_s_per_step": round(cpu_step, 3),
                "wall_s_per_step": round((time.perf_counter() - wall) / args.timing_steps, 3),
                "cpu_s_per_epoch": round(cpu_step * len(sampler), 1), "load": [round(x, 1) for x in os.getloadavg()],
            }
            print(f"{data} {model_name}: {out[f'{Path(data).name}/{model_name}']}", flush=True)
    return out


def write_timing(args: argparse.Namespace, timing: dict[str, Any], argv: list[str] | None) -> None:
    command = "python benchmarks/graph_cf.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "propagation": args.propagation, "threads": args.threads, "batch_size": args.batch_size,
              "dim": args.dim, "layers": args.layers, "steps_timed": args.timing_steps, "timing": timing}
    atomic_save_json(args.out.with_suffix(".json"), result)
    lines = [f"# Graph CF step timing ({args.propagation} propagation, dim {args.dim}, {args.layers} layers, batch {args.batch_size})",
             "", f"Command: `{command}`", "",
             f"torch threads {args.threads}; {args.timing_steps} steps after one warm-up step. CPU seconds (process_time) are the",
             "cost on one core; wall seconds show the share the busy shared machine gave the process.", "",
             "| graph/model | steps/epoch | CPU s/step | wall s/step | CPU s/epoch | load avg |", "|---|---|---|---|---|---|"]
    for key, t in timing.items():
        lines.append(f"| {key} | {t['steps_per_epoch']} | {t['cpu_s_per_step']} | {t['wall_s_per_step']} | {t['cpu_s_per_epoch']} | {t['load'][0]} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="graph folder (train/valid/test.txt[.gz]) for the training runs")
    p.add_argument("--timing-data", nargs="+", help="instead of training runs: time BPR steps on these graph folders")
    p.add_argument("--timing-steps", type=int, default=6)
    p.add_argument("--models", nargs="+", default=["mf", "lightgcn", "ngcf"], choices=["mf", "lightgcn", "ngcf"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adagrad", "rowwise_adagrad", "sgd"])
    p.add_argument("--propagation", default="full", choices=["full", "neighbor"])
    p.add_argument("--sharding", help="shard the tables with DMP (e.g. row_wise; implies --propagation neighbor; "
                                      "CPU fused optimizers: adagrad, rowwise_adagrad, sgd)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="output prefix (writes .json, .md, .png)")
    args = p.parse_args(argv)
    if args.sharding:
        args.propagation = "neighbor"
    if args.timing_data:
        write_timing(args, step_timing(args), argv)
        print(f"wrote {args.out}.json and {args.out}.md")
        return 0
    if not args.data:
        p.error("--data (or --timing-data) is required")
    load_start = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {}
    for model in args.models:
        for seed in args.seeds:
            run_dir = Path(tempfile.mkdtemp(prefix=f"graph_cf_{model}_{seed}_"))
            try:
                t0 = time.perf_counter()
                metrics = train_graph(experiment(model, args, seed), run_dir)
                metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            runs.setdefault(model, []).append(metrics)
            print(f"{model} seed {seed}: test recall@20 {metrics['history'][-1]['test']['recall@20']:.4f} "
                  f"({metrics['mean_train_seconds_per_epoch']:.1f} s/epoch)", flush=True)
    summary = {
        model: {
            "seconds_per_epoch": float(np.mean([m["mean_train_seconds_per_epoch"] for m in ms])),
            **{metric: summarize(ms, metric) for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50")},
        }
        for model, ms in runs.items()
    }
    result = {
        "command": "python benchmarks/graph_cf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": args.data, "models": args.models, "seeds": args.seeds, "epochs": args.epochs,
        "propagation": args.propagation + (f" (sharded {args.sharding}, 1 process)" if args.sharding else ""),
        "optimizer": f"{args.optimizer} lr {args.lr}", "batch_size": args.batch_size, "threads": runs[args.models[0]][0]["torch_threads"],
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "load_start": [round(x, 1) for x in load_start],
        "load_end": [round(x, 1) for x in os.getloadavg()], "summary": summary,
        "runs": {k: [{key: m[key] for key in ("history", "best_epoch", "wall_seconds")} for m in v] for k, v in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out.with_suffix(".json"), result)
    write_markdown(args.out.with_suffix(".md"), result)
    if plot(args.out.with_suffix(".png"), result):
        print(f"wrote {args.out}.png")
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
