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
- ``--folds K`` (cross-validation, for samples whose single test split is too small to separate the two
  sides): all labelled rows of the sample (Criteo: the 7,500; Avazu: ``train_part`` then ``test_part``,
  9,999) in file order, cut into K contiguous blocks; fold k tests on block k, validates on block k+1
  (mod K) and trains on the rest, so every row is a test row exactly once. Each fold prepares its own
  vocabularies from its training rows; both sides run every (fold, seed) and the comparison adds the
  paired difference ours - peer per fold (mean over seeds) with its standard error over the K folds.

    python benchmarks/ctr_peers.py [--dataset criteo|avazu] [--models dcnv2 deepfm dlrm lr] [--seeds 0 1 2]
        [--peer-python /work/peers_venv/bin/python] [--tag NAME] [--set KEY=VALUE ...] [--peer-from JSON] [--folds K]

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


def labelled_rows(dataset: str, data: Path) -> tuple[list[str], list[str], str]:
    """(header lines, every labelled row in file order, file extension) of a sample, for ``--folds``."""
    if dataset == "criteo":
        with gzip.open(data, "rt", newline="") as f:
            return [], [line for line in f if line.strip()], "txt.gz"
    with gzip.open(data / "train_part.csv.gz", "rt", newline="") as f:
        header, *rows = [line for line in f if line.strip()]
    with gzip.open(data / "test_part.csv.gz", "rt", newline="") as f:
        rows += [line for line in f if line.strip()]
    return [header], rows, "csv.gz"


def split_fold(header: list[str], rows: list[str], folds: int, fold: int, out: Path, ext: str) -> dict[str, Path]:
    """Fold ``fold`` of ``folds`` contiguous blocks: test = block ``fold``, valid = the next block, train = the rest."""
    bounds = np.linspace(0, len(rows), folds + 1).round().astype(int)
    block = [rows[bounds[i]:bounds[i + 1]] for i in range(folds)]
    valid = (fold + 1) % folds
    train = [r for i, b in enumerate(block) if i not in (fold, valid) for r in b]
    return _write_parts({"train": header + train, "valid": header + block[valid], "test": header + block[fold]}, out, ext)


def paired_folds(ours: list[dict], peer: list[dict]) -> dict:
    """ours - peer test AUC / logloss per fold (each side's mean over its seeds), and the mean's standard error."""
    def per_fold(runs: list[dict], key: str) -> dict[int, float]:
        out: dict[int, list[float]] = {}
        for r in runs:
            out.setdefault(r["fold"], []).append(r["test"][key])
        return {k: statistics.mean(v) for k, v in out.items()}

    result = {}
    for key in ("auc", "logloss"):
        a, b = per_fold(ours, key), per_fold(peer, key)
        diffs = [a[k] - b[k] for k in sorted(a) if k in b]
        result[f"fold_{key}_diffs"] = diffs
        result[f"{key}_diff_mean"] = statistics.mean(diffs)
        result[f"{key}_diff_se"] = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    result["folds_ours_at_or_above"] = sum(d >= 0 for d in result["fold_auc_diffs"])
    return result


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


def run_ours(config: Path, paths: dict[str, Path], cache: Path, seed: int, extra: list[str], run_dir: Path,
             fold: int | None = None) -> dict:
    overrides = [f"data.train={paths['train']}", f"data.valid={paths['valid']}", f"data.test={paths['test']}",
                 f"data.cache_dir={cache}", f"train.seed={seed}", *extra]
    cfg = load_config(ExperimentConfig, config, overrides)
    t0 = time.perf_counter()
    m = train(cfg, run_dir)
    return {"seed": seed, "fold": fold, "test": m["test"], "valid": m["valid"], "best_step": m["best_step"], "best_epoch": m["best_epoch"],
            "steps": m["steps"], "epochs_completed": m["epochs_completed"], "stop_reason": m["stop_reason"],
            "schedule": m.get("schedule"), "seconds": round(time.perf_counter() - t0, 2)}


def run_peer(python: Path, npz: Path, model: str, seed: int, args: argparse.Namespace, out: Path, fold: int | None = None) -> dict:
    cmd = [str(python), str(PEER_SCRIPT), "--data", str(npz), "--model", model, "--seed", str(seed),
           "--epochs", str(args.peer_epochs), "--patience", str(args.peer_patience), "--threads", str(args.threads),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    r = json.loads(out.read_text())
    return {"fold": fold, **{k: r[k] for k in ("seed", "test", "valid", "best_epoch", "epochs_run", "seconds", "settings",
                                             "deepctr_torch", "torch")}}


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
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation over all labelled rows instead of the fixed split (see the module docstring)")
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
    if args.folds and args.folds < 3:
        raise SystemExit("--folds: K must be at least 3 (a test, a validation and a training block; 0: the fixed split)")
    stem = ("ctr_peers" + ("" if args.dataset == "criteo" else f"_{args.dataset}") + (f"_cv{args.folds}" if args.folds else "")
            + (f"_{args.tag}" if args.tag else ""))

    ours: dict[str, dict] = {}
    peer: dict[str, dict] = {}
    notes: list[str] = []
    our_runs: dict[str, list[dict]] = {}
    peer_runs: dict[str, list[dict]] = {}
    features = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folds: list[int | None] = list(range(args.folds)) if args.folds else [None]
        if args.folds:
            header, labelled, ext = labelled_rows(args.dataset, data)
        for fold in folds:
            where = tmp / ("all" if fold is None else f"fold{fold}")
            if fold is None:
                paths = split_criteo(data, where / "splits") if args.dataset == "criteo" else split_avazu(data, where / "splits")
            else:
                paths = split_fold(header, labelled, args.folds, fold, where / "splits", ext)
            tag = "" if fold is None else f" fold {fold}"
            npz, fold_features = where / "splits.npz", None
            for model in models:
                config = REPO / "configs" / f"{args.dataset}_{model}.yaml"
                if not config.is_file():
                    if fold in (None, 0):
                        notes.append(f"ours/{model}: {config.relative_to(REPO)} does not exist yet: not run")
                    continue
                for seed in args.seeds:
                    r = run_ours(config, paths, where / "cache", seed, args.overrides, where / f"ours-{model}-{seed}", fold)
                    our_runs.setdefault(model, []).append(r)
                    print(f"[ours] {model}{tag} seed {seed}: test AUC {r['test']['auc']:.4f} (best step {r['best_step']})", flush=True)
                if fold_features is None:
                    cfg = load_config(ExperimentConfig, config, [f"data.train={paths['train']}", f"data.valid={paths['valid']}",
                                                                 f"data.test={paths['test']}", f"data.cache_dir={where / 'cache'}"])
                    fold_features = export_prepared(cfg, npz)
            if args.peer_from is None and not args.no_peer:
                if fold_features is None:
                    if args.dataset != "avazu":
                        raise SystemExit("no model of ours ran: nothing to export for the peer")
                    fold_features = export_avazu_own(paths, npz)
                for model in args.peer_models:
                    for seed in args.seeds:
                        r = run_peer(args.peer_python, npz, model, seed, args, where / f"peer-{model}-{seed}.json", fold)
                        peer_runs.setdefault(model, []).append(r)
                        print(f"[peer] {model}{tag} seed {seed}: test AUC {r['test']['auc']:.4f} (best epoch {r['best_epoch']})",
                              flush=True)
            if features is None and fold_features is not None:  # row counts of the first fold (the others differ by one)
                features = {**fold_features, **({"rows_of": "fold 0"} if fold is not None else {})}
        for model, runs in our_runs.items():
            ours[model] = {"config": f"configs/{args.dataset}_{model}.yaml", **summarise(runs), "runs": runs}
        for model, runs in peer_runs.items():
            peer[model] = {**summarise(runs), "runs": runs}
        if args.peer_from is not None:
            previous = json.loads(args.peer_from.read_text())
            peer, features = previous["peer"], features or previous.get("features")
            notes.append(f"peer results reused from {args.peer_from.name}")

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
            if args.folds:
                row.update(paired_folds(r["runs"], q["runs"]))
        rows[model] = row
    command = "python benchmarks/ctr_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "ctr_peers", "dataset": args.dataset, "data": str(data), "command": command.strip(),
        "folds": args.folds,
        "protocol": (f"{args.folds}-fold cross-validation over every labelled row in file order (fold k: test block k, "
                     "valid block k+1 mod K, train the rest)" if args.folds else
                     "criteo: rows 1-6000 train, 6001-6750 valid, 6751-7500 test" if args.dataset == "criteo" else
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
        f"# Ours vs DeepCTR-Torch on the {result['dataset']} sample ("
        + (f"{result['folds']}-fold cross-validation, " if result.get("folds") else "test split, ")
        + f"{len(result['seeds'])} seed(s){' per fold' if result.get('folds') else ''})\n",
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
    paired = {m: r for m, r in result["comparison"].items() if "auc_diff_se" in r}
    if paired:
        lines += ["", "Paired by fold (each side's mean over seeds in a fold; mean ± standard error over the folds):", "",
                  "| ours | peer | AUC diff | folds with ours >= peer | logloss diff |", "|---|---|---|---|---|"]
        for model, r in paired.items():
            lines.append(f"| {model} | {r['peer_model']} | {r['auc_diff_mean']:+.4f} ± {r['auc_diff_se']:.4f} | "
                         f"{r['folds_ours_at_or_above']} / {len(r['fold_auc_diffs'])} | "
                         f"{r['logloss_diff_mean']:+.4f} ± {r['logloss_diff_se']:.4f} |")
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
