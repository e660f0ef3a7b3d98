"""Our shipped CTR configs against DeepCTR-Torch on the same rows, the same split and the same features.

Protocol (one for both sides):

- Criteo: the 7,500 labelled rows of the Kaggle head (``../shared/datasets/criteo_dac_kaggle_head``),
  in file (= time) order: rows 1-6,000 train, 6,001-6,750 validation (model selection, early
  stopping), 6,751-7,500 test. Avazu (``--dataset avazu``): ``train_part.csv`` rows 1-8,000 train,
  8,001-8,999 validation, ``test_part.csv`` (1,000 rows) test.
- Features: the project prepares the three files (dense ``log1p(max(x, 0))``, missing = 0;
  categorical vocabularies with min-count 2 fitted on the training rows, 0 = missing, 1 = OOV) and
  the peer reads exactly those arrays (an ``.npz`` written here from our prepared splits).
- Ours: ``recsys_emb.train.tasks.train`` with ``configs/<dataset>_<model>.yaml`` as shipped, only the
  data paths and ``train.seed`` overridden (``--set`` adds overrides for before/after experiments;
  they are recorded). Selection: validation AUC; the test split is scored with the selected weights.
- Peer: benchmarks/peers/deepctr_criteo.py under the peer venv (benchmarks/peers/README.md),
  DeepCTR-Torch's documented defaults (Adam 1e-3, batch 256), at most ``--peer-epochs`` epochs with
  early stopping after ``--peer-patience`` epochs without a validation-AUC gain, best weights restored.
- 3 seeds, run one after the other with ``--threads`` torch threads (the machine is shared).

    python benchmarks/ctr_peers.py [--dataset criteo|avazu] [--models dcnv2 deepfm dlrm lr] [--seeds 0 1 2]
        [--peer-python /work/peers_venv/bin/python] [--tag NAME] [--set KEY=VALUE ...] [--peer-from JSON]

Writes benchmarks/results/ctr_peers[_<dataset>][_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.data.resolve import resolve_data  # noqa: E402
from recsys_emb.train.tasks import train  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CRITEO = SHARED / "criteo_dac_kaggle_head" / "train_rows_00001-07500.txt.gz"
AVAZU = SHARED / "avazu_ctr_sample"
PEER_PYTHON = Path("/work/peers_venv/bin/python")
PEER_SCRIPT = REPO / "benchmarks" / "peers" / "deepctr_criteo.py"
# the peer model each of ours is compared with (DeepCTR-Torch has no DLRM: the best peer model is the bar)
PEER_OF = {"dcnv2": "dcnv2", "deepfm": "deepfm", "lr": "lr", "dlrm": "best"}
PEER_MODELS = ("dcnv2", "dcnmix", "deepfm", "lr")


def split_criteo(src: Path, out: Path) -> dict[str, Path]:
    """Rows 1-6,000 / 6,001-6,750 / 6,751-7,500 of the Criteo head into three gzipped TSV files."""
    with gzip.open(src, "rt", newline="") as f:
        lines = [line for line in f if line.strip()]
    if len(lines) != 7500:
        raise SystemExit(f"{src}: expected 7,500 rows, found {len(lines)}")
    parts = {"train": lines[:6000], "valid": lines[6000:6750], "test": lines[6750:]}
    return _write_parts(parts, out, "txt.gz")


def split_avazu(root: Path, out: Path) -> dict[str, Path]:
    """``train_part.csv`` rows 1-8,000 train, 8,001-8,999 validation; ``test_part.csv`` (no header) test."""
    with gzip.open(root / "train_part.csv.gz", "rt", newline="") as f:
        header, *rows = [line for line in f if line.strip()]
    with gzip.open(root / "test_part.csv.gz", "rt", newline="") as f:
        test = [line for line in f if line.strip()]
    parts = {"train": [header, *rows[:8000]], "valid": [header, *rows[8000:]], "test": [header, *test]}
    return _write_parts(parts, out, "csv.gz")


def _write_parts(parts: dict[str, list[str]], out: Path, ext: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in parts.items():
        paths[name] = out / f"{name}.{ext}"
        with gzip.open(paths[name], "wt", newline="") as f:
            f.writelines(lines)
    return paths


def export_prepared(cfg: ExperimentConfig, path: Path) -> dict:
    """Our prepared splits of ``cfg.data`` as one ``.npz`` for the peer (the same ids and dense values)."""
    splits = resolve_data(cfg.data)
    arrays: dict[str, np.ndarray] = {}
    for name in ("train", "valid", "test"):
        data, start, stop = splits[name].open()
        arrays[f"{name}_dense"] = np.asarray(data.dense[start:stop], dtype=np.float32)
        arrays[f"{name}_sparse"] = np.asarray(data.sparse[start:stop], dtype=np.int64)
        arrays[f"{name}_labels"] = np.asarray(data.labels[start:stop], dtype=np.float32)
    train_data = splits["train"].open()[0]
    arrays["vocab_sizes"] = np.asarray(train_data.vocab_sizes, dtype=np.int64)
    arrays["dense_names"] = np.asarray(train_data.dense_features)
    arrays["sparse_names"] = np.asarray(train_data.sparse_features)
    np.savez(path, **arrays)
    return {"source": "ours (prepared splits)", **{f"{n}_rows": int(len(arrays[f"{n}_labels"])) for n in ("train", "valid", "test")},
            "dense_features": len(arrays["dense_names"]), "sparse_features": len(arrays["sparse_names"])}


def export_avazu_own(paths: dict[str, Path], path: Path, min_count: int = 2) -> dict:
    """Avazu arrays for the peer while our Avazu reader is absent: every column but ``id``/``click`` is
    categorical (``hour`` -> hour of day), vocabularies with min-count ``min_count`` on the training rows,
    0 = missing, 1 = OOV, ids by descending frequency; no dense features."""
    def read(p: Path) -> tuple[list[str], list[list[str]]]:
        with gzip.open(p, "rt", newline="") as f:
            header, *rows = list(csv.reader(f))
        return header, rows

    header, train_rows = read(paths["train"])
    features = [c for c in header if c not in ("id", "click")]
    cols = [header.index(c) for c in features]
    label = header.index("click")

    def value(row: list[str], i: int) -> str:
        v = row[i]
        return v[-2:] if header[i] == "hour" else v

    vocabs = []
    for i in cols:
        counts: dict[str, int] = {}
        for row in train_rows:
            v = value(row, i)
            if v != "":
                counts[v] = counts.get(v, 0) + 1
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        vocabs.append({v: k + 2 for k, v in enumerate(kept)})
    arrays: dict[str, np.ndarray] = {}
    for name in ("train", "valid", "test"):
        rows = train_rows if name == "train" else read(paths[name])[1]
        arrays[f"{name}_sparse"] = np.asarray(
            [[0 if value(r, i) == "" else vocab.get(value(r, i), 1) for i, vocab in zip(cols, vocabs)] for r in rows], dtype=np.int64)
        arrays[f"{name}_dense"] = np.zeros((len(rows), 0), dtype=np.float32)
        arrays[f"{name}_labels"] = np.asarray([float(r[label]) for r in rows], dtype=np.float32)
    arrays["vocab_sizes"] = np.asarray([len(v) + 2 for v in vocabs], dtype=np.int64)
    arrays["dense_names"] = np.asarray([], dtype=str)
    arrays["sparse_names"] = np.asarray(features)
    np.savez(path, **arrays)
    return {"source": "ctr_peers.export_avazu_own (our Avazu reader absent)",
            **{f"{n}_rows": int(len(arrays[f"{n}_labels"])) for n in ("train", "valid", "test")},
            "dense_features": 0, "sparse_features": len(features)}


def run_ours(config: Path, paths: dict[str, Path], cache: Path, seed: int, extra: list[str], run_dir: Path) -> dict:
    overrides = [f"data.train={paths['train']}", f"data.valid={paths['valid']}", f"data.test={paths['test']}",
                 f"data.cache_dir={cache}", f"train.seed={seed}", *extra]
    cfg = load_config(ExperimentConfig, config, overrides)
    t0 = time.perf_counter()
    m = train(cfg, run_dir)
    return {"seed": seed, "test": m["test"], "valid": m["valid"], "best_step": m["best_step"], "best_epoch": m["best_epoch"],
            "steps": m["steps"], "epochs_completed": m["epochs_completed"], "stop_reason": m["stop_reason"],
            "schedule": m.get("schedule"), "seconds": round(time.perf_counter() - t0, 2)}


def run_peer(python: Path, npz: Path, model: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    cmd = [str(python), str(PEER_SCRIPT), "--data", str(npz), "--model", model, "--seed", str(seed),
           "--epochs", str(args.peer_epochs), "--patience", str(args.peer_patience), "--threads", str(args.threads),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    r = json.loads(out.read_text())
    return {k: r[k] for k in ("seed", "test", "valid", "best_epoch", "epochs_run", "seconds", "settings", "deepctr_torch", "torch")}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for split in ("test", "valid"):
        for key in ("auc", "logloss"):
            vals = [r[split][key] for r in runs]
            out[f"{split}_{key}_mean"] = statistics.mean(vals)
            out[f"{split}_{key}_std"] = statistics.pstdev(vals)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["criteo", "avazu"], default="criteo")
    p.add_argument("--data", type=Path, default=None, help="Criteo head .txt.gz or the Avazu sample folder")
    p.add_argument("--models", nargs="+", default=None, help="ours (default: dcnv2 deepfm dlrm lr; avazu: dcnv2 deepfm)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for OUR configs (before/after experiments; recorded)")
    p.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    p.add_argument("--peer-models", nargs="+", default=list(PEER_MODELS))
    p.add_argument("--peer-epochs", type=int, default=15)
    p.add_argument("--peer-patience", type=int, default=2)
    p.add_argument("--peer-from", type=Path, default=None, help="reuse the peer results of an earlier output JSON")
    p.add_argument("--no-peer", action="store_true", help="ours only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="output name suffix")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--render", type=Path, default=None, help="only rewrite the markdown of this results JSON")
    args = p.parse_args(argv)
    if args.render is not None:
        atomic_write_text(args.render.with_suffix(".md"), markdown(json.loads(args.render.read_text())))
        return 0
    models = args.models or (["dcnv2", "deepfm", "dlrm", "lr"] if args.dataset == "criteo" else ["dcnv2", "deepfm"])
    data = args.data or (CRITEO if args.dataset == "criteo" else AVAZU)
    if not data.exists():
        raise SystemExit(f"{data} not found: pass --data")
    torch.set_num_threads(args.threads)
    stem = "ctr_peers" + ("" if args.dataset == "criteo" else f"_{args.dataset}") + (f"_{args.tag}" if args.tag else "")

    ours: dict[str, dict] = {}
    peer: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = split_criteo(data, tmp / "splits") if args.dataset == "criteo" else split_avazu(data, tmp / "splits")
        npz = tmp / "splits.npz"
        features = None
        for model in models:
            config = REPO / "configs" / f"{args.dataset}_{model}.yaml"
            if not config.is_file():
                notes.append(f"ours/{model}: {config.relative_to(REPO)} does not exist yet: not run")
                continue
            runs = []
            for seed in args.seeds:
                runs.append(run_ours(config, paths, tmp / "cache", seed, args.overrides, tmp / f"ours-{model}-{seed}"))
                print(f"[ours] {model} seed {seed}: test AUC {runs[-1]['test']['auc']:.4f} (best step {runs[-1]['best_step']})",
                      flush=True)
            ours[model] = {"config": str(config.relative_to(REPO)), **summarise(runs), "runs": runs}
            if features is None:
                cfg = load_config(ExperimentConfig, config, [f"data.train={paths['train']}", f"data.valid={paths['valid']}",
                                                             f"data.test={paths['test']}", f"data.cache_dir={tmp / 'cache'}"])
                features = export_prepared(cfg, npz)
        if args.peer_from is not None:
            previous = json.loads(args.peer_from.read_text())
            peer, features = previous["peer"], features or previous.get("features")
            notes.append(f"peer results reused from {args.peer_from.name}")
        elif not args.no_peer:
            if features is None:
                if args.dataset != "avazu":
                    raise SystemExit("no model of ours ran: nothing to export for the peer")
                features = export_avazu_own(paths, npz)
            for model in args.peer_models:
                runs = [run_peer(args.peer_python, npz, model, seed, args, tmp / f"peer-{model}-{seed}.json") for seed in args.seeds]
                for r in runs:
                    print(f"[peer] {model} seed {r['seed']}: test AUC {r['test']['auc']:.4f} (best epoch {r['best_epoch']})", flush=True)
                peer[model] = {**summarise(runs), "runs": runs}

    rows = {}
    best_peer = max(peer, key=lambda m: peer[m]["test_auc_mean"]) if peer else None
    for model, r in ours.items():
        ref = PEER_OF.get(model, model)
        ref = best_peer if ref == "best" else ref
        row = {"ours_test_auc": r["test_auc_mean"], "ours_test_auc_std": r["test_auc_std"],
               "ours_test_logloss": r["test_logloss_mean"], "ours_test_logloss_std": r["test_logloss_std"], "peer_model": ref}
        if ref in peer:
            q = peer[ref]
            row.update(peer_test_auc=q["test_auc_mean"], peer_test_auc_std=q["test_auc_std"], peer_test_logloss=q["test_logloss_mean"],
                       peer_test_logloss_std=q["test_logloss_std"], auc_diff=r["test_auc_mean"] - q["test_auc_mean"],
                       logloss_diff=r["test_logloss_mean"] - q["test_logloss_mean"])
        rows[model] = row
    command = "python benchmarks/ctr_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "ctr_peers", "dataset": args.dataset, "data": str(data), "command": command.strip(),
        "protocol": ("criteo: rows 1-6000 train, 6001-6750 valid, 6751-7500 test" if args.dataset == "criteo" else
                     "avazu: train_part rows 1-8000 train, 8001-8999 valid, test_part (1000) test")
        + "; min-count 2 vocab on train; selection on valid AUC; test scored with the selected weights",
        "seeds": args.seeds, "our_overrides": args.overrides, "features": features,
        "peer_settings": {"epochs": args.peer_epochs, "patience": args.peer_patience, "batch_size": 256, "optimizer": "adam 1e-3",
                          "embedding_dim": 16},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
        "notes": notes, "comparison": rows, "ours": ours, "peer": peer,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / f"{stem}.json", result)
    atomic_write_text(args.out / f"{stem}.md", markdown(result))
    print(json.dumps({m: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for m, r in rows.items()}))
    return 0


def markdown(result: dict) -> str:
    def pm(mean: float, std: float) -> str:
        return f"{mean:.4f} ± {std:.4f}"

    lines = [
        f"# Ours vs DeepCTR-Torch on the {result['dataset']} sample (test split, {len(result['seeds'])} seeds)\n",
        f"Command: `{result['command']}`  ",
        f"Protocol: {result['protocol']}.  ",
        f"Ours: shipped `configs/{result['dataset']}_<model>.yaml`, data paths and seed overridden"
        + (f", plus `{' '.join(result['our_overrides'])}`" if result["our_overrides"] else "") + ".  ",
        f"Peer: DeepCTR-Torch {_peer_version(result)}, batch {result['peer_settings']['batch_size']}, "
        f"{result['peer_settings']['optimizer']}, at most {result['peer_settings']['epochs']} epochs, early stopping patience "
        f"{result['peer_settings']['patience']} on valid AUC, best weights restored (benchmarks/peers/deepctr_criteo.py).  ",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs (shared), torch {result['machine']['torch']}, "
        f"{result['machine']['torch_threads']} threads, seeds run sequentially.\n",
        "| ours | test AUC | peer (DeepCTR-Torch) | peer test AUC | AUC diff | test logloss | peer logloss | logloss diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, r in result["comparison"].items():
        if "peer_test_auc" in r:
            lines.append(f"| {model} | {pm(r['ours_test_auc'], r['ours_test_auc_std'])} | {r['peer_model']} | "
                         f"{pm(r['peer_test_auc'], r['peer_test_auc_std'])} | {r['auc_diff']:+.4f} | "
                         f"{pm(r['ours_test_logloss'], r['ours_test_logloss_std'])} | "
                         f"{pm(r['peer_test_logloss'], r['peer_test_logloss_std'])} | {r['logloss_diff']:+.4f} |")
        else:
            lines.append(f"| {model} | {pm(r['ours_test_auc'], r['ours_test_auc_std'])} | - | - | - | "
                         f"{pm(r['ours_test_logloss'], r['ours_test_logloss_std'])} | - | - |")
    if result["peer"]:
        lines += ["", "All peer models (s / epoch: the peer's fit time over its epochs run, validation included):", "",
                  "| peer model | test AUC | test logloss | valid AUC | best epochs | s / epoch |", "|---|---|---|---|---|---|"]
        for model, q in result["peer"].items():
            lines.append(f"| {model} | {pm(q['test_auc_mean'], q['test_auc_std'])} | {pm(q['test_logloss_mean'], q['test_logloss_std'])} | "
                         f"{pm(q['valid_auc_mean'], q['valid_auc_std'])} | {[r['best_epoch'] for r in q['runs']]} | "
                         f"{_per_epoch(q['runs'], 'epochs_run')} |")
    if result["ours"]:
        lines += ["", "Our runs (s / epoch: the whole `train` call over its epochs, data loading, validation, checkpoints and "
                  "the final test included):", "",
                  "| ours | valid AUC | best step / steps run | schedule (batch, epochs) | s / epoch |", "|---|---|---|---|---|"]
        for model, o in result["ours"].items():
            sched = [(r["schedule"] or {}).get("batch_size") for r in o["runs"]][:1]
            epochs = [(r["schedule"] or {}).get("epochs") for r in o["runs"]][:1]
            steps = ", ".join(f"{r['best_step']}/{r['steps']}" for r in o["runs"])
            lines.append(f"| {model} | {pm(o['valid_auc_mean'], o['valid_auc_std'])} | "
                         f"{steps} | {sched[0]}, {epochs[0]} | {_per_epoch(o['runs'], 'epochs_completed')} |")
    if result["notes"]:
        lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def _per_epoch(runs: list[dict], epochs_key: str) -> str:
    """Mean wall seconds per epoch over seeds (runs of an older JSON without the keys: '-')."""
    values = [r["seconds"] / r[epochs_key] for r in runs if r.get("seconds") and r.get(epochs_key)]
    return f"{statistics.mean(values):.2f}" if values else "-"


def _peer_version(result: dict) -> str:
    for q in result["peer"].values():
        return f"{q['runs'][0]['deepctr_torch']} (torch {q['runs'][0]['torch']})"
    return "(not run)"


if __name__ == "__main__":
    sys.exit(main())
