"""Graph CF benchmark: BPR-MF vs LightGCN vs NGCF (quality per epoch and time per epoch).

Every (model, seed) is a real ``recsys-emb train`` run of a ``task: graph`` experiment through the
one trainer (:mod:`recsys_emb.train.tasks.graph`; full-ranking test metrics after every epoch, training
items and validation items excluded: ``evaluation.track_test`` when the data has a validation split). Writes ``OUT.json``, ``OUT.md`` and, when matplotlib
is installed, ``OUT.png`` (test recall@20 against epochs, mean ± std over seeds, published numbers
as dashed lines for Gowalla). Per epoch, wall and CPU seconds (``time.process_time``) are recorded:
on a shared machine CPU seconds are the process's own cost, wall seconds include waiting.

The ML-1M comparison in ``benchmarks/results/graph_cf_ml1m_compare`` was made in steps: MF
trained (LightGCN / NGCF reused from earlier result files with the same settings; every reused
entry names the file and command that produced it), LightGCN at lr 3e-3 trained, merged; then NGCF
at lr 3e-3 (chosen on valid recall@20, seed 0, 1e-3 / 3e-3 / 1e-2) trained one invocation per
seed and pooled over seeds with ``--merge-seeds``:

    D=../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m; R=benchmarks/results
    python benchmarks/graph_cf.py --data $D --models mf --seeds 0 1 2 --epochs 6 --threads 1 \\
        --model-lr mf=0.003 --reuse $R/graph_cf_ml1m.json $R/graph_cf_ml1m_lightgcn_6ep.json \\
        --out $R/graph_cf_ml1m_compare
    python benchmarks/graph_cf.py --data $D --models lightgcn --seeds 0 1 2 --epochs 6 --threads 1 \\
        --model-lr lightgcn=0.003 --out $R/graph_cf_ml1m_lightgcn_lr3e-3
    python benchmarks/graph_cf.py --data $D --models --reuse $R/graph_cf_ml1m_compare.json \\
        $R/graph_cf_ml1m_lightgcn_lr3e-3.json --out $R/graph_cf_ml1m_compare
    for s in 0 1 2; do python benchmarks/graph_cf.py --data $D --models ngcf --seeds $s --epochs 6 \\
        --threads 1 --model-lr ngcf=0.003 --out /tmp/ngcf_ml1m_lr3e-3_seed$s; done
    python benchmarks/graph_cf.py --data $D --models --merge-seeds --reuse /tmp/ngcf_ml1m_lr3e-3_seed{0,1,2}.json \\
        $R/graph_cf_ml1m_compare.json --out $R/graph_cf_ml1m_compare

All models share the LightGCN settings (dim 64, 3 layers, Adam, batch 2048; lr ``--lr``, per model
``--model-lr MODEL=LR``); L2 1e-4 on the layer-0 batch embeddings for MF/LightGCN, 1e-5 on the
final ones for NGCF (its reference code). ``--models`` with no names and ``--reuse`` only merges.

Summarise finished ``recsys-emb train`` run folders of graph configs (e.g. the Gowalla runs, CPU or GPU):

    python benchmarks/graph_cf.py --from-runs runs/gowalla_lgcn runs/gowalla_ngcf \\
        --train-command "recsys-emb train --config configs/gowalla_lightgcn.yaml ..." \\
        --out benchmarks/results/graph_cf_gowalla_gpu

Result files written before the port to the one trainer (``benchmarks/results/graph_cf_*``) came
from the former ``recsys-emb train-graph`` loop (full propagation, the same BPR sampling, init and
optimizer); ``--reuse`` still reads them.

Timing only (CPU and wall seconds per BPR step; ``--timing-steps 0`` times a whole epoch):

    python benchmarks/graph_cf.py --timing-data ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m \\
        ../shared/datasets/gowalla_lightgcn --models lightgcn ngcf --threads 1 \\
        --out benchmarks/results/graph_cf_step_timing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_emb.config.experiment import OptimizerConfig, ShardingConfig  # noqa: E402
from recsys_emb.config.graph import (  # noqa: E402
    GraphDataConfig, GraphEvalConfig, GraphExperimentConfig, GraphTrainConfig,
)
from recsys_emb.config.io import to_dict  # noqa: E402
from recsys_emb.models.graph import GraphModelConfig  # noqa: E402
from recsys_emb.train.tasks import train as train_experiment  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def model_lr(model: str, args: argparse.Namespace) -> float:
    """The learning rate of ``model``: ``--model-lr MODEL=LR`` if given, else ``--lr``."""
    return dict(args.model_lr).get(model, args.lr)


def parse_model_value(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in ("mf", "lightgcn", "ngcf"):
        raise argparse.ArgumentTypeError(f"expected MODEL=VALUE with MODEL in mf/lightgcn/ngcf, got '{text}'")
    return name, float(value)


def model_config(model: str, args: argparse.Namespace) -> GraphModelConfig:
    """LightGCN settings for every model; L2 1e-4 on layer-0 rows (MF/LightGCN), 1e-5 on final ones (NGCF)."""
    return GraphModelConfig(name=model, embedding_dim=args.dim, num_layers=args.layers, propagation=args.propagation,
                            message_dropout=[0.1] if model == "ngcf" else [0.0],
                            l2=1e-5 if model == "ngcf" else 1e-4, l2_on="final" if model == "ngcf" else "ego")


def experiment(model: str, args: argparse.Namespace, seed: int) -> GraphExperimentConfig:
    """The ``task: graph`` experiment of one (model, seed): the tables and NGCF layers share the optimizer
    (``--optimizer``; row-wise Adagrad has no dense form, the layers then use Adagrad)."""
    model_cfg = model_config(model, args)
    lr = model_lr(model, args)
    dense = "adagrad" if args.optimizer == "rowwise_adagrad" else args.optimizer
    train_cfg = GraphTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, seed=seed, embedding_optimizer=OptimizerConfig(args.optimizer, lr),
        dense_optimizer=OptimizerConfig(dense, lr), num_threads=args.threads, progress=args.progress,
        max_steps_per_epoch=args.max_steps_per_epoch, tensorboard=False,
    )
    return GraphExperimentConfig(name=f"graph_cf_{model}", data=GraphDataConfig(path=args.data, valid=True), model=model_cfg,
                                 train=train_cfg, sharding=ShardingConfig(type=args.sharding or "data_parallel"),
                                 evaluation=GraphEvalConfig(track_test=True))


def run_record(metrics: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """One benchmark run from a graph run's ``metrics.json`` (and its ``config.yaml`` as a dict): a record per
    epoch (``epoch``, ``loss``, wall/CPU ``train_seconds``, and ``test`` metrics where that epoch was evaluated)."""
    selected_on = metrics["selected_on"]
    evaluated = {h["epoch"]: h for h in metrics["history"]}  # the epoch-end evaluation is each epoch's last
    history = []
    for e in metrics["epochs"]:
        record: dict[str, Any] = {"epoch": e["epoch"], "loss": e["mean_loss"], "train_seconds": e["train_seconds"],
                                  "train_cpu_seconds": e["train_cpu_seconds"]}
        h = evaluated.get(e["epoch"])
        test = (h if selected_on == "test" else h.get("test")) if h is not None else None
        if test:
            record["test"] = {k: v for k, v in test.items() if k not in ("epoch", "step", "test")}
        history.append(record)
    return {"model": metrics["model"], "history": history, "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_completed"], "stopped": None if metrics["stop_reason"] == "epochs" else metrics["stop_reason"],
            "selected_on": selected_on, "torch_threads": metrics["torch_threads"], "dataset": cfg["data"]["path"],
            "propagation": cfg["model"]["propagation"]}


def _mean(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


PUBLISHED = {  # test recall@20 / ndcg@20 reported by the papers (Gowalla, the split in datasets/gowalla)
    "gowalla": {"lightgcn": {"recall@20": 0.1830, "ndcg@20": 0.1554, "source": "He et al., SIGIR 2020"},
                "ngcf": {"recall@20": 0.1569, "ndcg@20": 0.1327, "source": "Wang et al., SIGIR 2019"}},
}
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50")
DEFAULT_LR = 1e-3


def published_for(data: str) -> dict[str, dict[str, Any]]:
    name = Path(data).name.lower()
    return next((v for k, v in PUBLISHED.items() if k in name), {})


def summarize_model(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over seeds of every metric at the epochs evaluated in all runs, and the costs."""
    evaluated = [[r["epoch"] for r in m["history"] if "test" in r] for m in runs]
    epochs = [e for e in evaluated[0] if all(e in ev for ev in evaluated)]
    out: dict[str, Any] = {"seeds": len(runs), "epochs": max(m["epochs_run"] if "epochs_run" in m else len(m["history"]) for m in runs),
                           "epochs_evaluated": epochs}
    for metric in METRICS:
        curves = np.array([[next(r for r in m["history"] if r["epoch"] == e)["test"][metric] for e in epochs] for m in runs])
        out[metric] = {"mean": curves.mean(0).tolist(), "std": curves.std(0).tolist()}
    hist = [r for m in runs for r in m["history"]]
    out["seconds_per_epoch"] = float(np.mean([r["train_seconds"] for r in hist]))
    cpu = [r.get("train_cpu_seconds") for r in hist]
    out["cpu_seconds_per_epoch"] = float(np.mean(cpu)) if all(c is not None for c in cpu) else None
    evals = [r["eval_seconds"] for r in hist if "eval_seconds" in r]
    out["eval_seconds"] = float(np.mean(evals)) if evals else None
    walls = [m.get("wall_seconds") for m in runs]
    out["wall_seconds_per_run"] = float(np.mean(walls)) if all(w is not None for w in walls) else None
    return out


def reuse_results(paths: list[Path], taken: set[str], merge_seeds: bool = False
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Summaries and runs of the models of earlier result files, with where they came from. An entry
    whose name is ``taken`` (run now, or in an earlier file) is labelled ``MODEL (lr LR, N ep)``.

    ``merge_seeds``: an entry whose label is already used by an entry of an earlier file with the same
    model, lr and epochs, made by the same command except ``--seeds`` / ``--out`` (e.g. one
    invocation per seed), is pooled with it (its runs added, mean/std over all of them); a seed that
    occurs twice is an error."""
    summary: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        old = json.loads(path.read_text())
        for label, model_runs in old["runs"].items():
            prev = old["summary"][label]
            model = prev.get("model", label)
            entry = summarize_model(model_runs)
            entry["model"] = model
            entry["lr"] = prev.get("lr", _lr_of_command(old["command"], model))
            src = prev.get("source", {})  # the run that produced it (kept through repeated merges)
            entry["source"] = {"file": src.get("file", str(path)), "command": src.get("command", old["command"]),
                               "load_start": src.get("load_start", old.get("load_start")),
                               "load_end": src.get("load_end", old.get("load_end")),
                               "threads": src.get("threads", old.get("threads"))}
            if "parts" in src:
                entry["source"]["parts"] = src["parts"]
            model_runs = _with_seeds(model_runs, entry["source"]["command"])
            relabelled = f"{model} (lr {entry['lr']:g}, {entry['epochs']} ep)"
            target = next((k for k in (label, relabelled) if k in summary and _same_setting(summary[k], entry)), None)
            if merge_seeds and target is not None:
                _merge_into(summary, runs, target, entry, model_runs, path)
                continue
            if label in taken or label in summary:
                label = relabelled
            if label in taken or label in summary:
                raise ValueError(f"{path}: {label} appears twice in the reused results")
            summary[label], runs[label] = entry, model_runs
    return summary, runs


def _with_seeds(model_runs: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    """The runs with their ``seed`` (recorded since the per-seed merging; older files: from ``--seeds``)."""
    words = command.split()
    seeds: list[int] = []
    if "--seeds" in words:
        for w in words[words.index("--seeds") + 1:]:
            if w.startswith("--"):
                break
            seeds.append(int(w))
    elif "--from-runs" not in words:
        seeds = [0, 1, 2]  # the default of --seeds
    return [{**r, "seed": r.get("seed", seeds[i] if i < len(seeds) else None)} for i, r in enumerate(model_runs)]


def _setting(command: str) -> list[str]:
    """A benchmark command without ``--seeds S...``, ``--out X``, ``--reuse F...`` and ``--progress``."""
    out, skip = [], False
    for w in command.split():
        if w.startswith("--"):
            skip = w in ("--seeds", "--out", "--reuse")
            if skip or w == "--progress":
                continue
        if not skip:
            out.append(w)
    return out


def _same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return ((a["model"], a["lr"], a["epochs"]) == (b["model"], b["lr"], b["epochs"])
            and _setting(a["source"]["command"]) == _setting(b["source"]["command"]))


def _merge_into(summary: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]], label: str,
                entry: dict[str, Any], model_runs: list[dict[str, Any]], path: Path) -> None:
    seen = {r["seed"] for r in runs[label]}
    twice = sorted(r["seed"] for r in model_runs if r["seed"] in seen)
    if twice or None in seen or any(r["seed"] is None for r in model_runs):
        raise ValueError(f"{path}: cannot pool {label} over seeds: seed {twice or 'unknown'} occurs twice or is not recorded")
    merged_runs = runs[label] + model_runs
    old_src = summary[label]["source"]
    parts = old_src.get("parts") or [{k: v for k, v in old_src.items() if k != "parts"}]
    parts = parts + (entry["source"].get("parts") or [{k: v for k, v in entry["source"].items() if k != "parts"}])
    merged = summarize_model(merged_runs)
    merged.update(model=entry["model"], lr=entry["lr"])
    merged["source"] = {"file": " + ".join(p["file"] for p in parts), "command": parts[0]["command"],
                        "load_start": parts[0]["load_start"], "load_end": parts[-1]["load_end"],
                        "threads": parts[0]["threads"], "parts": parts}
    summary[label], runs[label] = merged, merged_runs


def _lr_of_command(command: str, model: str) -> float:
    """The learning rate a model had in an earlier benchmark command (``--model-lr`` > ``--lr`` > default)."""
    words = command.split()
    lr = DEFAULT_LR
    for i, w in enumerate(words[:-1]):
        if w == "--lr":
            lr = float(words[i + 1])
    for i, w in enumerate(words):
        if w == "--model-lr":
            for arg in words[i + 1:]:
                if arg.startswith("--"):
                    break
                name, _, value = arg.partition("=")
                if name == model:
                    return float(value)
    return lr


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    lines = [
        f"# Graph CF on {Path(result['data']).name}: {', '.join(result['summary'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        (f"Machine (where the runs trained): {result['machine_note']}." if result.get("machine_note") else
         f"Machine: {result['machine']}; torch threads {result['threads']}; load average at start "
         f"{result['load_start']}, at end {result['load_end']} (shared 2-core machine: wall-clock numbers are "
         "inflated by other jobs; CPU seconds = time.process_time of the training process, its own cost)."),
        "",
        f"Optimizer: {result['optimizer']}, batch {result.get('batch_size', '')}, propagation {result['propagation']}.",
        "",
    ]
    for cmd in result.get("train_commands", []):
        lines += [f"Training command: `{cmd}`", ""]
    reused = {m: s["source"] for m, s in result["summary"].items() if s.get("source", {}).get("file")}
    for m, src in reused.items():
        if src.get("parts"):
            lines.append(f"- `{m}`: {len(src['parts'])} result files pooled over seeds:")
            lines += [f"  - `{p['file']}` (command `{p['command']}`, load {p['load_start']} -> {p['load_end']})." for p in src["parts"]]
        else:
            lines.append(f"- `{m}`: reused from `{src['file']}` (command `{src['command']}`, load {src['load_start']} -> {src['load_end']}).")
    if reused:
        lines.append("")
    published = result.get("published", {})
    lines += [
        "Test metrics after the last epoch (mean ± std over seeds; training"
        + (" and validation" if result.get("has_valid", True) else "") + " items excluded):",
        "",
        "| model | lr | epochs | seeds | train wall s/epoch | train CPU s/epoch | eval wall s | recall@20 | ndcg@20 | recall@50 | ndcg@50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {s['lr']:g} | {s['epochs']} | {s['seeds']} | {_fmt(s['seconds_per_epoch'])} | {_fmt(s['cpu_seconds_per_epoch'])} "
            f"| {_fmt(s['eval_seconds'])} "
            + " ".join(f"| {s[m]['mean'][-1]:.4f} ± {s[m]['std'][-1]:.4f}" for m in ("recall@20", "ndcg@20", "recall@50", "ndcg@50"))
            + " |"
        )
    for name, ref in published.items():
        lines.append(f"| {name} (published: {ref['source']}) | | | | | | | {ref['recall@20']:.4f} | {ref['ndcg@20']:.4f} | | |")
    all_epochs = sorted({e for s in result["summary"].values() for e in s["epochs_evaluated"]})
    lines += ["", "Test recall@20 by epoch (mean over seeds):", "", "| model | " + " | ".join(f"ep {e}" for e in all_epochs) + " |",
              "|---|" + "---|" * len(all_epochs)]
    for name, s in result["summary"].items():
        by_epoch = dict(zip(s["epochs_evaluated"], s["recall@20"]["mean"]))
        lines.append(f"| {name} | " + " | ".join(f"{by_epoch[e]:.4f}" if e in by_epoch else "" for e in all_epochs) + " |")
    if "train_commands" in result:  # summarised run folders: every epoch's cost
        lines += ["", "Per epoch (seconds: wall / CPU = process_time of the training process):", "",
                  "| model | run | epoch | loss | train wall s | train CPU s | eval wall s | eval CPU s | recall@20 | ndcg@20 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, model_runs in result["runs"].items():
            for i, run in enumerate(model_runs):
                for r in run["history"]:
                    test = r.get("test", {})
                    lines.append(f"| {name} | {i} | {r['epoch']} | {r['loss']:.4f} | {r['train_seconds']:.0f} | {_fmt(r.get('train_cpu_seconds'), 0)} "
                                 f"| {_fmt(r.get('eval_seconds'), 0)} | {_fmt(r.get('eval_cpu_seconds'), 0)} "
                                 f"| {_fmt(test.get('recall@20'), 4)} | {_fmt(test.get('ndcg@20'), 4)} |")
            stopped = [x for x in result["summary"][name].get("stopped", []) if x]
            if stopped:
                lines.append(f"\n{name}: stopped early ({stopped[0]}).")
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(path: Path, result: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (name, s) in enumerate(result["summary"].items()):
        mean, std = np.array(s["recall@20"]["mean"]), np.array(s["recall@20"]["std"])
        epochs = np.array(s["epochs_evaluated"])
        label = f"{s.get('model', name)} (lr {s['lr']:g}, {s['seeds']} seed{'s' if s['seeds'] > 1 else ''})"
        ax.plot(epochs, mean, marker="o", label=label, color=f"C{i}")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=f"C{i}")
        ref = result.get("published", {}).get(name)
        if ref is not None:
            ax.axhline(ref["recall@20"], ls="--", color=f"C{i}", lw=1, label=f"{name} published ({ref['recall@20']:.4f})")
    for name, ref in result.get("published", {}).items():
        if name not in result["summary"]:
            ax.axhline(ref["recall@20"], ls=":", color="gray", lw=1, label=f"{name} published ({ref['recall@20']:.4f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test recall@20")
    ax.set_title(Path(result["data"]).name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_result(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_json(out.with_suffix(".json"), result)
    write_markdown(out.with_suffix(".md"), result)
    if plot(out.with_suffix(".png"), result):
        print(f"wrote {out}.png")
    print(f"wrote {out}.json and {out}.md")


def from_run_dirs(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """A result from finished ``recsys-emb train`` graph run folders (config.yaml + metrics.json each)."""
    import yaml

    runs: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run_dir in args.from_runs:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        metrics = run_record(json.loads((run_dir / "metrics.json").read_text()), cfg)
        metrics["run_dir"] = str(run_dir)
        runs.setdefault(metrics["model"], []).append(metrics)
        configs.setdefault(metrics["model"], cfg)
    summary = {}
    for model, ms in runs.items():
        summary[model] = {**summarize_model(ms), "model": model, "lr": configs[model]["train"]["embedding_optimizer"]["lr"],
                          "run_dirs": [m["run_dir"] for m in ms],
                          "config": configs[model], "stopped": [m.get("stopped") for m in ms]}
    first = next(iter(runs.values()))[0]
    data = first["dataset"]
    return {
        "command": "python benchmarks/graph_cf.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "train_commands": args.train_command, "data": data, "has_valid": first["selected_on"] == "valid",
        "propagation": first["propagation"],
        "optimizer": ", ".join(f"{m}: {c['train']['embedding_optimizer']['name']}" for m, c in configs.items()),
        "batch_size": per_model_value(configs, "batch_size"),
        "threads": per_model_value({m: {"train": {"threads": ms[0]["torch_threads"]}} for m, ms in runs.items()}, "threads"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "machine_note": args.machine,
        "load_start": args.load_start or "see run logs",
        "load_end": [round(x, 1) for x in os.getloadavg()], "published": published_for(data), "summary": summary,
        "runs": {k: [{key: m.get(key) for key in ("history", "best_epoch", "epochs_run", "stopped", "run_dir")} for m in v]
                 for k, v in runs.items()},
    }


def per_model_value(configs: dict[str, dict[str, Any]], key: str) -> Any:
    """``train.KEY`` shared by every model's config, else ``"model: value, ..."`` (e.g. NGCF's batch 1024 vs 2048)."""
    values = {m: c["train"][key] for m, c in configs.items()}
    distinct = set(map(str, values.values()))
    return next(iter(values.values())) if len(distinct) == 1 else ", ".join(f"{m}: {v}" for m, v in values.items())


def step_timing(args: argparse.Namespace) -> dict[str, Any]:
    """CPU and wall seconds per BPR step (process_time is far less distorted by other jobs than wall time)."""
    import torch

    from recsys_emb.data.graphs import load_graph_dataset
    from recsys_emb.models.graph import GraphBPRTrain
    from recsys_emb.data.graphs import BPRSampler
    from recsys_emb.train.tasks.graph import build_graph_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    for data in args.timing_data:
        graph = load_graph_dataset(data, ("train", "test"))
        for model_name in args.models:
            model_cfg = model_config(model_name, args)
            model = build_graph_model(model_cfg, graph, seed=0)
            loss_fn = GraphBPRTrain(model, model_cfg.l2, model_cfg.l2_on)
            opt = torch.optim.Adam(model.parameters(), lr=model_lr(model_name, args))
            sampler = BPRSampler(graph.train, graph.num_items, args.batch_size, 0)
            batches = sampler.epoch(0)

            def step() -> None:
                loss, _ = loss_fn(next(batches))
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()  # warm-up
            n_steps = args.timing_steps or len(sampler) - 1  # 0: the rest of the epoch after the warm-up step
            load_before = [round(x, 1) for x in os.getloadavg()]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n_steps):
                step()
            cpu_step = (time.process_time() - cpu) / n_steps
            wall_step = (time.perf_counter() - wall) / n_steps
            out[f"{Path(data).name}/{model_name}"] = {
                "steps_per_epoch": len(sampler), "steps_timed": n_steps, "threads": torch.get_num_threads(),
                "cpu_s_per_step": round(cpu_step, 3), "wall_s_per_step": round(wall_step, 3),
                "cpu_s_per_epoch": round(cpu_step * len(sampler), 1), "wall_s_per_epoch": round(wall_step * len(sampler), 1),
                "load": [round(x, 1) for x in os.getloadavg()], "load_before": load_before,
            }
            print(f"{data} {model_name}: {out[f'{Path(data).name}/{model_name}']}", flush=True)
    return out


def write_timing(args: argparse.Namespace, timing: dict[str, Any], argv: list[str] | None) -> None:
    command = "python benchmarks/graph_cf.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "propagation": args.propagation, "threads": args.threads, "batch_size": args.batch_size,
              "dim": args.dim, "layers": args.layers, "steps_timed": args.timing_steps, "timing": timing}
    atomic_save_json(args.out.with_suffix(".json"), result)
    lines = [f"# Graph CF step timing ({args.propagation} propagation, dim {args.dim}, {args.layers} layers, batch {args.batch_size})",
             "", f"Command: `{command}`", "",
             f"torch threads {args.threads}; " + (f"{args.timing_steps} steps" if args.timing_steps else "a whole epoch (all steps)")
             + " after one warm-up step; per-epoch figures = per-step x steps/epoch. CPU seconds (process_time) sum over the",
             "process's threads: its own cost, little affected by other jobs; wall seconds also show the share of the cores the",
             "machine gave the process (on an idle machine, wall s/epoch is what a user waits).", "",
             "| graph/model | threads | steps/epoch | steps timed | CPU s/step | wall s/step | CPU s/epoch | wall s/epoch | load avg (1 min) before -> after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, t in timing.items():
        lines.append(f"| {key} | {t.get('threads', args.threads)} | {t['steps_per_epoch']} | {t.get('steps_timed', args.timing_steps)} "
                     f"| {t['cpu_s_per_step']} | {t['wall_s_per_step']} | {t['cpu_s_per_epoch']} | {t.get('wall_s_per_epoch', '-')} "
                     f"| {t.get('load_before', ['-'])[0]} -> {t['load'][0]} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="graph folder (train/valid/test.txt[.gz]) for the training runs")
    p.add_argument("--timing-data", nargs="+", help="instead of training runs: time BPR steps on these graph folders")
    p.add_argument("--timing-steps", type=int, default=6, help="BPR steps timed after one warm-up step (0: a whole epoch)")
    p.add_argument("--models", nargs="*", default=["mf", "lightgcn", "ngcf"], choices=["mf", "lightgcn", "ngcf"],
                   help="models to train (none with --reuse: only merge earlier result files)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adagrad", "rowwise_adagrad", "sgd"])
    p.add_argument("--propagation", default="lookup", choices=["lookup", "neighbor", "full"],
                   help="lookup / neighbor for training runs; full only with --timing-data (an unsharded GraphCF)")
    p.add_argument("--sharding", help="shard the tables with DMP (e.g. row_wise; default data_parallel replicas; "
                                      "CPU fused optimizers: adagrad, rowwise_adagrad, sgd)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--model-lr", type=parse_model_value, nargs="+", default=[], metavar="MODEL=LR",
                   help="learning rate of one model (e.g. mf=0.003); others use --lr")
    p.add_argument("--reuse", type=Path, nargs="+", default=[], metavar="RESULT.json",
                   help="add the models of earlier result files that this command does not run (recorded as reused)")
    p.add_argument("--merge-seeds", action="store_true",
                   help="with --reuse: pool entries of the same model/lr/epochs/command that differ only in --seeds "
                        "(one invocation per seed) into one entry")
    p.add_argument("--from-runs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="instead of training: summarise finished `recsys-emb train` graph run folders")
    p.add_argument("--train-command", action="append", default=[], help="with --from-runs: the command(s) that made the runs")
    p.add_argument("--load-start", help="with --from-runs: the load average when the runs started (for the record)")
    p.add_argument("--machine", help="with --from-runs: where the runs trained, when not this machine (e.g. a GPU)")
    p.add_argument("--out", type=Path, required=True, help="output prefix (writes .json, .md, .png)")
    args = p.parse_args(argv)
    if args.from_runs:
        write_result(args.out, from_run_dirs(args, argv))
        return 0
    if args.timing_data:
        write_timing(args, step_timing(args), argv)
        print(f"wrote {args.out}.json and {args.out}.md")
        return 0
    if not args.data:
        p.error("--data (or --timing-data) is required")
    if not args.models and not args.reuse:
        p.error("--models is empty: give models to train or --reuse files to merge")
    load_start = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {}
    for model in args.models:
        for seed in args.seeds:
            run_dir = Path(tempfile.mkdtemp(prefix=f"graph_cf_{model}_{seed}_"))
            cfg = experiment(model, args, seed)
            try:
                t0 = time.perf_counter()
                metrics = run_record(train_experiment(cfg, run_dir), to_dict(cfg))
                metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            metrics["seed"] = seed
            runs.setdefault(model, []).append(metrics)
            hist = metrics["history"]
            print(f"{model} seed {seed}: test recall@20 {hist[-1]['test']['recall@20']:.4f} "
                  f"({_mean([r['train_seconds'] for r in hist]):.1f} s/epoch, "
                  f"{_mean([r['train_cpu_seconds'] for r in hist]):.1f} CPU s/epoch)", flush=True)
    command = "python benchmarks/graph_cf.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    load_end = [round(x, 1) for x in os.getloadavg()]
    summary = {model: {**summarize_model(ms), "model": model, "lr": model_lr(model, args),
                       "source": {"command": command, "load_start": [round(x, 1) for x in load_start], "load_end": load_end,
                                  "threads": ms[0]["torch_threads"]}}
               for model, ms in runs.items()}
    reused_summary, reused_runs = reuse_results(args.reuse, set(runs), args.merge_seeds)
    model_order = ("mf", "lightgcn", "ngcf")
    order = sorted([*summary, *reused_summary], key=lambda k: (model_order.index(k.split()[0]), k in reused_summary, k))
    summary = {k: summary.get(k) or reused_summary[k] for k in order}
    runs_out = {k: [{key: m.get(key) for key in ("history", "best_epoch", "wall_seconds", "epochs_run", "seed")} for m in v]
                for k, v in runs.items()}
    result = {
        "command": command, "data": args.data, "models": order, "seeds": args.seeds, "epochs": args.epochs,
        "reused": {k: s["source"]["file"] for k, s in reused_summary.items()},
        "propagation": args.propagation + (f" (sharded {args.sharding}, 1 process)" if args.sharding else ""),
        "optimizer": args.optimizer, "batch_size": args.batch_size, "threads": sorted({s["source"].get("threads") for s in summary.values()}, key=str),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "load_start": [round(x, 1) for x in load_start],
        "load_end": load_end, "published": published_for(args.data), "summary": summary,
        "runs": {k: runs_out.get(k) or reused_runs[k] for k in order},
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
