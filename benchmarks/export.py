"""Exported artefacts vs the eager TorchRec model: bytes, quality and one-thread latency, side by side.

Three trained runs (each a real ``recsys-emb train`` through the one trainer, cached in ``--work``):

* ``dcnv2``: DCN-v2 (dim 16) on synthetic Criteo (``recsys-emb synth criteo``, 1M training rows, 100k
  test rows), 1 epoch; quality = test AUC of ``Predictor.predict_file`` on the RAW test TSV;
* ``din_dare``: DIN + DARE (attention dim 8, representation dim 16, user side feature) on Amazon Beauty
  (../shared/datasets), 2 epochs; quality = test AUC of the artefact on the test examples;
* ``lightgcn``: LightGCN (dim 64, 3 layers) on ML-1M (LightGCN++ split), 6 epochs; quality = test
  recall@20 of the artefact's scores (train and valid items excluded).

For each: ``export_run`` at fp32, fp16, int8 and int4 tables (16-byte rows, TorchRec's default) and
int8 with unpadded rows (``int8/1``, CPU only), each with an AOTInductor package where it compiles;
table bytes (what FBGEMM allocates) and artefact file bytes; quality; then p50 / p99 latency of one
call at batch 1, 64 and 512 with ONE torch thread, for the eager unsharded TorchRec model (fp32), each
exported program (``torch.export.load(...).module()``) and each AOTInductor package, interleaved
round-robin in the same process.

    python benchmarks/export.py [--models dcnv2 din_dare lightgcn] [--reps 200] [--work /tmp/export_bench]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
# variant -> (quantize, row_alignment); "int8/1": int8 rows unpadded (CPU serving only)
VARIANTS = {"fp32": ("none", 16), "fp16": ("fp16", 16), "int8": ("int8", 16), "int4": ("int4", 16), "int8/1": ("int8", 1)}
BATCHES = (1, 64, 512)


# ------------------------------------------------------------------------------------------ runs
def configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    train = {"progress": False, "tensorboard": False, "num_threads": 2, "seed": 0}
    return {
        "dcnv2": {
            "task": "ctr", "name": "export_dcnv2",
            "data": {"train": str(args.work / "synth" / "train.txt.gz"), "test": str(args.work / "synth" / "test.txt.gz"),
                     "min_count": 2, "valid_fraction": 0.1, "cache_dir": str(args.work / "cache")},
            "model": {"name": "dcnv2", "embedding_dim": 16},
            "train": {**train, "epochs": 1, "batch_size": 2048, "eval_batch_size": 8192,
                      "embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05}, "dense_optimizer": {"name": "adam", "lr": 0.001}},
        },
        "din_dare": {
            "task": "sequence", "name": "export_din_dare",
            "data": {"dataset": "amazon_beauty", "path": str(SHARED / "amazon_seq_s3rec"), "max_history": 50,
                     "num_negatives": 1, "eval_negatives": 1, "seed": 0},
            "model": {"name": "din", "embedding_dim": 16, "side_features": ["user"],
                      "din": {"attention_hidden": [80, 40], "mlp": [200, 80], "mba_lambda": 0.0}},
            "embedding": {"groups": [{"name": "fields", "features": ["item", "category", "position"],
                                      "chain": [{"dare": {"attention_dim": 8}}]}, {"name": "side", "features": ["user"], "chain": ["plain"]}]},
            "train": {**train, "epochs": 2, "batch_size": 1024, "eval_batch_size": 4096,
                      "embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05}, "dense_optimizer": {"name": "adam", "lr": 0.001}},
        },
        "lightgcn": {
            "task": "graph", "name": "export_lightgcn",
            "data": {"path": str(SHARED / "lightgcnpp_ml1m_lastfm" / "ml-1m"), "valid": True},
            "model": {"name": "lightgcn", "embedding_dim": 64, "num_layers": 3},
            "train": {**train, "epochs": 6, "embedding_optimizer": {"name": "adam", "lr": 3e-3},
                      "dense_optimizer": {"name": "adam", "lr": 3e-3}},
            "evaluation": {"ks": [20], "select_metric": None},
        },
    }


def train_run(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> tuple[Path, float]:
    run_dir = args.work / name / "run"
    if (run_dir / "metrics.json").is_file():
        return run_dir, json.loads((args.work / name / "train_seconds.json").read_text())
    if name == "dcnv2" and not (args.work / "synth" / "test.txt.gz").is_file():
        from recsys_emb.data.synthetic import synth_criteo

        synth_criteo(args.work / "synth", rows=args.criteo_rows, test_rows=args.criteo_rows // 10, seed=0, progress=False)
    config = args.work / name / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recsys_emb", "train", "--config", str(config), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} training failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    atomic_save_json(args.work / name / "train_seconds.json", seconds)
    return run_dir, seconds


# --------------------------------------------------------------------------------------- quality
def sequence_auc(call: Any, task: Any, batch_size: int = 4096) -> float:
    from recsys_emb.inference.export import kjt_inputs
    from recsys_emb.metrics import roc_auc

    ds = task.ds
    ex = ds.examples("test")
    scores, labels = [], []
    for start in range(0, len(ex.label), batch_size):
        kjt = ds.make_batch(ex.take(np.arange(start, min(start + batch_size, len(ex.label))))).sparse_features
        with torch.no_grad():
            scores.append(call(*kjt_inputs(kjt)).numpy())
        labels.append(ex.label[start:start + batch_size])
    return roc_auc(torch.from_numpy(np.concatenate(scores)), torch.from_numpy(np.concatenate(labels)))


def graph_recall(serving: Any, task: Any) -> float:
    """Test recall@20 of a (possibly quantised) retrieval serving module: the rows it looks up score exactly
    like the artefact (checked at export), ranked with the trainer's own full-ranking metric."""
    from recsys_emb.train.tasks.graph import split_exclusions
    from recsys_emb.train.ranking_metrics import full_ranking_metrics

    graph = task.graph
    with torch.no_grad():
        users = serving._lookup("user", torch.arange(graph.num_users))
        items = serving._lookup("item", torch.arange(graph.num_items))
    return full_ranking_metrics(users, items, graph.splits["test"], split_exclusions(graph, "test"), [20])["recall@20"]


def latency_inputs(name: str, unsharded: Any, batch: int) -> tuple[torch.Tensor, ...]:
    from recsys_emb.inference.export import kjt_inputs

    task = unsharded.task
    if name == "dcnv2":
        data = task.splits["test"].open()[0]
        b = data.batch(slice(0, batch))
        kjt = b.sparse_features
        return (b.dense_features, *kjt_inputs(kjt))
    if name == "din_dare":
        ex = task.ds.examples("test")
        kjt = task.ds.make_batch(ex.take(np.arange(batch))).sparse_features
        return kjt_inputs(kjt)
    return (torch.arange(batch, dtype=torch.int64),)


def time_calls(fns: dict[str, Any], inputs: tuple[torch.Tensor, ...], reps: int) -> dict[str, dict[str, float]]:
    """p50 / p99 milliseconds per call of every fn, interleaved round-robin (same machine state for all)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn(*inputs)  # warm-up
        for _ in range(reps):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn(*inputs)
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))} for k, v in times.items()}


# ------------------------------------------------------------------------------------------ main
def bench_model(name: str, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from recsys_emb.inference.export import export_run, serving_module, unshard
    from recsys_emb.inference.predictor import Predictor
    from recsys_emb.inference.quantize import quantize_tables

    run_dir, train_seconds = train_run(name, cfg, args)
    unsharded = unshard(run_dir)
    eager, _, _ = serving_module(unsharded)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    quality_key = "recall@20" if name == "lightgcn" else "auc"
    out: dict[str, Any] = {"model": name, "train_seconds": train_seconds, "quality_metric": f"test {quality_key}",
                           "trainer_test": metrics["test"].get(quality_key), "variants": {}}
    programs = {"eager": eager}
    for variant, (dtype, alignment) in VARIANTS.items():
        art = args.work / name / f"art_{variant.replace('/', '_a')}"
        manifest = export_run(run_dir, art, quantize=dtype, unsharded=unsharded, overwrite=True, row_alignment=alignment,
                              aoti=not args.no_aoti)
        predictor = Predictor.load(art, aoti=False)
        if name == "dcnv2":
            quality = predictor.predict_file(cfg["data"]["test"], args.work / name / "scores.tsv", batch_size=8192,
                                             progress=False)["auc"]
        elif name == "din_dare":
            quality = sequence_auc(predictor, unsharded.task)
        else:
            quantised = eager if dtype == "none" else quantize_tables(copy.deepcopy(eager), dtype, row_alignment=alignment)
            quality = graph_recall(quantised, unsharded.task)
        out["variants"][variant] = {"table_bytes": sum(manifest["tables"].values()), "artefact_bytes": manifest["bytes"]["model.pt2"],
                                    "quality": quality, "export_seconds": manifest["export_seconds"],
                                    "aoti_error": manifest["aoti_error"]}
        programs[f"pt2 {variant}"] = predictor.program
        if manifest["aoti"]:
            aoti = Predictor.load(art, aoti=True)
            with torch.no_grad():
                sample = latency_inputs(name, unsharded, 64)
                out["variants"][variant]["aoti_max_abs_vs_pt2"] = float((aoti(*sample) - predictor(*sample)).abs().max())
            programs[f"aoti {variant}"] = aoti.program
        print(f"[export] {name} {variant}: {quality_key} {quality:.4f}, tables {out['variants'][variant]['table_bytes']:,} B, "
              f"aoti {'ok' if manifest['aoti'] else manifest['aoti_error']}", flush=True)
    out["eager_quality"] = out["variants"]["fp32"]["quality"]  # the fp32 program equals eager (checked at export)
    torch.set_num_threads(1)
    out["latency"] = {}
    for batch in BATCHES:
        inputs = latency_inputs(name, unsharded, batch)
        reps = max(20, args.reps // (1 if batch == 1 else 2 if batch == 64 else 8))
        out["latency"][str(batch)] = time_calls(programs, inputs, reps)
        print(f"[export] {name} batch {batch}: " + ", ".join(f"{k} p50 {v['p50_ms']:.3f} ms"
                                                            for k, v in out["latency"][str(batch)].items()), flush=True)
    torch.set_num_threads(args.threads)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Exported artefacts vs eager TorchRec (benchmarks/export.py)", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; latency with 1 torch thread (p50 / p99 of one call, interleaved); "
             f"torch {result['torch']}.", ""]
    for m in result["models"]:
        base = m["variants"]["fp32"]
        lines += [f"## {m['model']} ({m['quality_metric']}; trainer's own test figure {m['trainer_test']:.4f})", "",
                  "| tables | table bytes | fp32 / this | artefact bytes | quality | Δ vs fp32 | AOTInductor |",
                  "|---|---|---|---|---|---|---|"]
        for variant, v in m["variants"].items():
            aoti = "compiled" if v["aoti_error"] is None else v["aoti_error"].split(":")[0]
            lines.append(f"| {variant} | {v['table_bytes']:,} | {base['table_bytes'] / v['table_bytes']:.2f}x "
                         f"| {v['artefact_bytes']:,} | {v['quality']:.4f} | {v['quality'] - base['quality']:+.4f} | {aoti} |")
        lines += ["", "p50 / p99 milliseconds per call, one thread:", "",
                  "| batch | " + " | ".join(m["latency"]["1"]) + " |", "|---|" + "---|" * len(m["latency"]["1"])]
        for batch, row in m["latency"].items():
            lines.append(f"| {batch} | " + " | ".join(f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f}" for v in row.values()) + " |")
        lines.append("")
    lines += ["Goals:", ""] + [f"- {g}" for g in result["goals"]] + ["", "What this does not show: " + result["limits"]]
    return "\n".join(lines) + "\n"


def goals(models: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in models:
        v = m["variants"]
        for variant in ("int8", "int8/1"):
            ratio = v["fp32"]["table_bytes"] / v[variant]["table_bytes"]
            loss = v["fp32"]["quality"] - v[variant]["quality"]
            out.append(f"{m['model']}: {variant} tables {ratio:.2f}x smaller than fp32 (goal >= 3.5x: "
                       f"{'holds' if ratio >= 3.5 else 'FAILS'}), {m['quality_metric']} loss {loss:+.4f} (goal <= 0.001: "
                       f"{'holds' if loss <= 0.001 else 'FAILS'})")
        for program in ("pt2 fp32", "aoti fp32"):
            if program not in m["latency"]["1"]:
                continue
            slower = [f"batch {b} ({row[program]['p50_ms'] / row['eager']['p50_ms']:.2f}x)" for b, row in m["latency"].items()
                      if row[program]["p50_ms"] > row["eager"]["p50_ms"]]
            out.append(f"{m['model']}: {program} p50 latency no worse than eager at every batch size: "
                       + ("holds" if not slower else "FAILS at " + ", ".join(slower)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["dcnv2", "din_dare", "lightgcn"], choices=["dcnv2", "din_dare", "lightgcn"])
    p.add_argument("--criteo-rows", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=200, help="timed calls at batch 1 (fewer at larger batches)")
    p.add_argument("--threads", type=int, default=2, help="torch threads outside the latency measurement")
    p.add_argument("--work", type=Path, default=Path("/tmp/export_bench"), help="runs, artefacts and cached results")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export")
    p.add_argument("--train-only", action="store_true", help="only train (and cache) the runs")
    p.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor packages (about a minute of compilation each)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table = configs(args)
    if args.train_only:
        for name in args.models:
            print(f"[export] {name}: trained in {train_run(name, table[name], args)[1]:.0f} s", flush=True)
        return
    models = []
    for name in args.models:
        cached = args.work / name / "result.json"
        if cached.is_file():
            models.append(json.loads(cached.read_text()))
            continue
        result = bench_model(name, table[name], args)
        atomic_save_json(cached, result)
        models.append(result)
    result = {"command": "python benchmarks/export.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__, "threads_latency": 1,
              "models": models, "goals": goals(models),
              "limits": ("one seed and short training per model; synthetic Criteo; CPU only (no GPU serving figures); "
                         "the Python-side call overhead of every program is included; int8/1 rows are CPU-only.")}
    atomic_save_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
