"""The budget frontier: DCN-v2 test AUC of every embedding technique at 1, 1/4, 1/16 and 1/64 of the plain bytes.

One resumable grid per data set. A cell is (data set, technique, fraction, seed); it trains DCN-v2 with the
shipped config of the data (configs/criteo_dcnv2.yaml, configs/avazu_dcnv2.yaml) plus the technique's chain at
the budget, through ``recsys_emb.train.tasks.train`` (the ``recsys-emb train`` code path: DMP, FBGEMM fused
row-wise Adagrad on the tables, Adam on the dense part, validation + early stopping, test at the best
validation step), sharded on ``--ranks`` gloo processes (``torchrun -m recsys_emb train``; 1 rank: in process).

Techniques and how each is fitted to ``target = int(fraction x plain table bytes)``:

* ``plain``: stock tables, 1x only (other fractions: recorded ``unreachable``);
* ``hash`` / ``unified`` / ``qr``: the explicit options of :func:`recsys_emb.modules.budget.budget_options`
  (rows per table, rows of the one shared table, collisions per feature): within one row of the target,
  never above (None there: ``unreachable`` with the reason: below the fewest rows, or qr above its most);
* ``dnis`` / ``optembed``: the search (unsharded, CPU, its search phase sized by ``SEARCH_STEPS``), then
  REAL compact tables (``recsys_emb.search.derive``), retrained from scratch sharded like every cell.
  DNIS prunes ``1 - fraction`` of the values by (frequency block, dim) columns; derived dims are rounded
  up to 4 (FBGEMM), so the prune target is raised (bisection) until the derived tables fit the target.
  OptEmbed: ``search.budget = fraction`` bounds every candidate's derived bytes; a fraction below its
  smallest candidate is ``unreachable``. At 1x both are the plain model (nothing is pruned): ``unreachable``;
* ``int8_plain`` / ``int4_plain`` / ``int8_unified`` / ``int4_unified``: the trained plain (1x) or unified
  model of the same seed and fraction (trained here when its run is missing), tables quantised by
  :func:`recsys_emb.inference.quantize.quantize_tables` (row-wise, fp16 scale + bias per row, rows unpadded:
  ``row_alignment=1``, what the CPU kernels take); the cell's fraction is its SOURCE's, its bytes are the
  quantised tables' measured bytes (about 0.31x / 0.19x of fp32 at dim 16), where it is placed on the curve.

Bytes: :func:`recsys_emb.modules.budget.embedding_bytes` of the built (unsharded) model: fp32 table rows
(quantised cells: the stored bytes), the embedding module's dense technique weights and buffers (id remap
codes, hash coefficients, qr counts) apart, and the MLPs apart. Optimizer state is never counted.

Per cell: test AUC / logloss at the best validation step, lift ``(AUC - .5) / (oracle AUC - .5)`` where the
data has an ``oracle.json`` (``recsys-emb synth criteo``), train samples/s (the trainer's, all ranks),
inference latency of the unsharded model at batch 512 (median of ``LATENCY_REPEATS``, one thread).

Data (``--dataset``):

* ``synth``: a ``recsys-emb synth criteo`` folder (``--data DIR``: train.txt.gz, test.txt.gz, oracle.json;
  the last 10% of the training rows validate);
* ``criteo_head``: the 7,500 labelled rows of the Kaggle head in file order: 1-6,000 train, 6,001-6,750
  valid, 6,751-7,500 test (the protocol of benchmarks/ctr_peers.py);
* ``avazu``: ``train_part.csv`` rows 1-8,000 train, 8,001-8,999 valid, ``test_part.csv`` test.

    python benchmarks/frontier.py --dataset avazu --seeds 0 --work runs/frontier [--max-cells 10]
    python benchmarks/frontier.py --dataset avazu --work runs/frontier --merge

Each cell writes ``WORK/cells/<dataset>__<technique>__<fraction>__s<seed>.json`` atomically; a rerun skips
cells whose file exists, ``--max-cells N`` stops after N new cells, ``--merge`` pools the cell files into
``benchmarks/results/frontier_<dataset>.{json,md,png}`` (``--results``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup  # noqa: E402
from recsys_emb.config.experiment import ExperimentConfig  # noqa: E402
from recsys_emb.config.io import apply_overrides, load_config, load_yaml, save_config  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
DATA = {"synth": None, "criteo_head": SHARED / "criteo_dac_kaggle_head", "avazu": SHARED / "avazu_ctr_sample"}
CONFIG = {"synth": "criteo_dcnv2.yaml", "criteo_head": "criteo_dcnv2.yaml", "avazu": "avazu_dcnv2.yaml"}
TECHNIQUES = ("plain", "hash", "qr", "unified", "dnis", "optembed", "int8_plain", "int4_plain", "int8_unified", "int4_unified")
FRACTIONS = ("1", "1/4", "1/16", "1/64")
# The searches' own phase, sized for these data sets (the shipped criteo_dnis / criteo_optembed configs run
# 4,000 search steps on 1M rows); every other option comes from those configs. ``--set dnis.search.X=...``.
SEARCH_STEPS = {"dnis": {"warmup_steps": 200, "search_steps": 400, "retrain": False},
                "optembed": {"supernet_steps": 600, "generations": 10, "keep": 4, "mutations": 8, "crossovers": 8,
                             "eval_rows": 20000, "retrain": False}}
QUANT_ROW_ALIGNMENT = 1
LATENCY_BATCH, LATENCY_REPEATS = 512, 7
BISECTION_STEPS = 12  # DNIS: prune-target bisection steps (each derives the tables once)


class Unreachable(Exception):
    """A cell whose technique has no setting at its budget (the message says why)."""


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DATA), required=True)
    p.add_argument("--data", type=Path, default=None, help="the data folder (synth: required; others: the shared sample)")
    p.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    p.add_argument("--fractions", nargs="+", default=list(FRACTIONS), help="of the plain tables' bytes, e.g. 1 1/4 0.1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ranks", type=int, choices=(1, 2), default=2, help="gloo processes per training run")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "frontier", help="cell files, splits, kept source runs")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML (default: the shipped DCN-v2 config of the data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every cell (dnis.X / optembed.X: that technique's chain options)")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells (resume later)")
    p.add_argument("--merge", action="store_true", help="pool the cell files into the result json / md / png and exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return p.parse_args(argv)


def fraction_label(f: str) -> str:
    return str(Fraction(f).limit_denominator(1 << 20)).replace("/", "_")


def cell_path(work: Path, dataset: str, technique: str, fraction: str, seed: int) -> Path:
    return work / "cells" / f"{dataset}__{technique}__{fraction_label(fraction)}__s{seed}.json"


# ------------------------------------------------------------------------------------------------ data
def _write(lines: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        with gzip.open(tmp, "wt", newline="") as f:
            f.writelines(lines)
        tmp.replace(path)
    return path


def data_overrides(dataset: str, data: Path, work: Path) -> tuple[list[str], dict[str, Any] | None]:
    """``data.*`` overrides of the data set's splits (written once under ``work``) and its oracle, if any."""
    root = work / dataset
    if dataset == "synth":
        oracle = data / "oracle.json"
        return ([f"data.train={data / 'train.txt.gz'}", f"data.test={data / 'test.txt.gz'}", "data.valid=null",
                 f"data.cache_dir={root / 'cache'}"], json.loads(oracle.read_text()) if oracle.is_file() else None)
    if dataset == "criteo_head":
        with gzip.open(data / "train_rows_00001-07500.txt.gz", "rt", newline="") as f:
            rows = [line for line in f if line.strip()]
        if len(rows) != 7500:
            raise SystemExit(f"{data}: expected 7,500 labelled rows, found {len(rows)}")
        parts, ext = {"train": rows[:6000], "valid": rows[6000:6750], "test": rows[6750:]}, "txt.gz"
    else:
        with gzip.open(data / "train_part.csv.gz", "rt", newline="") as f:
            header, *rows = [line for line in f if line.strip()]
        with gzip.open(data / "test_part.csv.gz", "rt", newline="") as f:
            test = [line for line in f if line.strip()]
        parts, ext = {"train": [header, *rows[:8000]], "valid": [header, *rows[8000:]], "test": [header, *test]}, "csv.gz"
    paths = {k: _write(v, root / "splits" / f"{k}.{ext}") for k, v in parts.items()}
    return [f"data.{k}={p}" for k, p in paths.items()] + [f"data.cache_dir={root / 'cache'}"], None


# ------------------------------------------------------------------------------------------------ configs
def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` entries: experiment overrides, and ``dnis.`` / ``optembed.`` ones per technique."""
    plain, tech = [], {"dnis": [], "optembed": []}
    for o in overrides:
        head = o.split(".", 1)[0]
        (tech[head] if head in tech else plain).append(o.split(".", 1)[1] if head in tech else o)
    return plain, tech


def technique_options(technique: str, tech_overrides: list[str]) -> dict[str, Any]:
    """The chain options of a search technique: the shipped search config's, the frontier's search steps, ``--set``."""
    shipped = load_yaml(REPO / "configs" / f"criteo_{technique}.yaml")["embedding"]["groups"][0]["chain"][0][technique]
    options = copy.deepcopy(shipped)
    options["search"] = {**options.get("search", {}), **SEARCH_STEPS[technique]}
    return apply_overrides(options, tech_overrides)


def with_chain(cfg: ExperimentConfig, technique: str, options: dict[str, Any]) -> ExperimentConfig:
    return dataclasses.replace(cfg, embedding=EmbeddingSpec(groups=[TableGroup(name="all", chain=[{technique: options}])]))


# ------------------------------------------------------------------------------------------------ one run
def train_run(cfg: ExperimentConfig, run_dir: Path, ranks: int, threads: int) -> dict[str, Any]:
    """``recsys-emb train`` of ``cfg`` into ``run_dir`` on ``ranks`` gloo processes; its metrics.json."""
    from recsys_emb.train.tasks import train
    from recsys_emb.train.tasks.ctr import absolute_paths

    cfg = absolute_paths(cfg)
    fewest = min((c.num_embeddings for c in table_list(cfg)), default=ranks)
    if ranks > 1 and fewest < ranks and cfg.sharding.type == "auto":
        # The auto planner used to row-shard tables of fewer rows than ranks (an empty shard, which FBGEMM's CPU
        # row-wise Adagrad rejects); it no longer does, but such cells stay table-wise, as the measured ones ran
        # (recorded as cfg.sharding).
        cfg = dataclasses.replace(cfg, sharding=dataclasses.replace(cfg.sharding, type="table_wise"))
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a cell cut short is redone from scratch
    if ranks == 1:
        torch.set_num_threads(threads)
        return train(cfg, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    save_config(cfg, config)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "recsys_emb", "train", "--config", str(config), "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def table_list(cfg: ExperimentConfig) -> list[Any]:
    """The table configs of every collection of ``cfg``'s model (built on ``meta``)."""
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.modules.budget import _configs, _table_holders
    from recsys_emb.train.tasks.ctr import build_ctr_model

    data, _, _ = resolve_data(cfg.data)["train"].open()
    model = build_ctr_model(cfg, data, "meta")
    return [c for _, holder in _table_holders(model) for c in _configs(holder)]


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, ExperimentConfig]:
    """The unsharded best model of a finished run (config.yaml + model.pt)."""
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.train.checkpoint import load_model_state
    from recsys_emb.train.tasks.ctr import build_ctr_model

    cfg = load_config(ExperimentConfig, run_dir / "config.yaml")
    data, _, _ = resolve_data(cfg.data)["train"].open()
    model = build_ctr_model(cfg, data, "cpu")
    model.load_state_dict(load_model_state(run_dir / "model.pt"))
    return model.eval(), cfg


def latency_ms(model: torch.nn.Module, cfg: ExperimentConfig) -> float:
    """Median forward time (ms) of the unsharded model on one test batch of 512 rows, one thread."""
    from recsys_emb.data.dataset import BatchIterator
    from recsys_emb.data.resolve import resolve_data

    data, start, stop = resolve_data(cfg.data)["test"].open()
    batch = next(iter(BatchIterator(data, LATENCY_BATCH, start=start, stop=stop, rank=0, world_size=1).epoch()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model(batch)
            times = []
            for _ in range(LATENCY_REPEATS):
                t = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(times)


def bytes_of(model: torch.nn.Module, quantised: bool = False) -> dict[str, Any]:
    """Table / technique-dense / buffer bytes of the embedding module, and the rest of the model (MLPs)."""
    from recsys_emb.modules.budget import embedding_bytes

    emb = embedding_bytes(model.model.embedding, None if quantised else 4)
    total = embedding_bytes(model, None if quantised else 4)
    return {**{k: v for k, v in emb.as_dict().items() if k.endswith("_bytes")},
            "model_dense_bytes": total.dense_total - emb.dense_total, "tables": emb.tables}


def plain_table_bytes(cfg: ExperimentConfig) -> tuple[int, list[Any]]:
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.modules.budget import embedding_bytes
    from recsys_emb.train.tasks.ctr import build_ctr_model

    data, _, _ = resolve_data(cfg.data)["train"].open()
    model = build_ctr_model(dataclasses.replace(cfg, embedding=EmbeddingSpec()), data, "meta")
    return embedding_bytes(model.model.embedding).embedding, list(model.model.embedding.embedding_bag_configs())


# ------------------------------------------------------------------------------------------------ searches
def derive_search(cfg: ExperimentConfig, technique: str, options: dict[str, Any], fraction: float, target: int,
                  run_dir: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Search, then derive compact tables within ``target`` bytes; the derived config and a search report."""
    from recsys_emb.search import dnis as dnis_search
    from recsys_emb.search import optembed as optembed_search
    from recsys_emb.search.cli import search_config
    from recsys_emb.search.common import setup
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.search.derive import derive_tables, save_derived
    from recsys_emb.train.schedule import sized_schedule

    options = copy.deepcopy(options)
    if technique == "dnis":
        options["search"]["target_compression"] = 1.0 - fraction
    else:
        options["search"]["budget"] = fraction
    scfg, opts = search_config(with_chain(cfg, technique, options), technique)
    # the search steps take the batch the trainer would use on these rows (small data: smaller batches)
    _, start, stop = resolve_data(scfg.data)["train"].open()
    scfg = dataclasses.replace(scfg, train=sized_schedule(scfg.train, stop - start))
    s = setup(scfg, ("alpha_",) if technique == "dnis" else ("threshold",))
    started = time.perf_counter()
    try:
        result = (dnis_search if technique == "dnis" else optembed_search).run(s, opts.search, None, None, False)
    except ValueError as e:
        if technique == "optembed" and "budget" in str(e):
            raise Unreachable(f"optembed: {e}") from None
        raise
    layout, weights = derive_tables(s.embedding)
    prune = 1.0 - fraction
    if technique == "dnis" and layout.embedding_bytes() > target:  # dims rounded up to 4: prune more until it fits
        from recsys_emb.search.dnis import prune_masks

        lo, hi, best = prune, 1.0, None
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            masks, _ = prune_masks(s.embedding, mid, opts.search.prune_by)
            s.embedding.set_entry_masks(masks)
            cand = derive_tables(s.embedding)
            if cand[0].embedding_bytes() <= target:
                hi, best = mid, (mid, cand)
            else:
                lo = mid
        if best is None:
            raise Unreachable(f"dnis: no pruning target below 1 gives derived tables of at most {target} bytes")
        prune, (layout, weights) = best[0], best[1]
    if technique == "optembed" and layout.embedding_bytes() > target:
        raise Unreachable(f"optembed: derived tables {layout.embedding_bytes()} B exceed the target {target} B")
    derived_cfg, _ = save_derived(run_dir / "search", scfg, s.model, layout, weights)
    derived_cfg = dataclasses.replace(derived_cfg, train=cfg.train)  # retrained like every cell
    report = {"search_seconds": time.perf_counter() - started, "search_batch_size": scfg.train.batch_size, "derived_bytes": layout.embedding_bytes(),
              "remap_bytes": layout.remap_bytes(), "prune_target": prune if technique == "dnis" else None,
              "search": {k: v for k, v in result.items() if k.startswith("valid") or k in ("threshold", "best")},
              "options": options}
    return derived_cfg, report


# ------------------------------------------------------------------------------------------------ cells
def chain_options(technique: str, fraction: float, configs: list[Any], seed: int) -> dict[str, Any]:
    from recsys_emb.modules.budget import budget_options

    if technique == "plain":
        if fraction != 1.0:
            raise Unreachable("plain tables exist at 1x only")
        return {}
    options = budget_options(configs, fraction)[technique]
    if options is None:
        raise Unreachable(f"{technique}: no setting fills {fraction:g} of the plain bytes (see budget.budget_options: "
                          "below its fewest rows" + (", or above its most (m = V)" if technique == "qr" else "") + ")")
    if technique == "unified":
        return {"layout": "multiplexed", "hash_seed": seed, **options}
    if technique == "hash":
        return {"hash_seed": seed, **options}
    return options


def run_cell(ctx: dict[str, Any], technique: str, fraction_text: str, seed: int) -> dict[str, Any]:
    """Train / derive / quantise one cell and return its record (status ok or unreachable)."""
    fraction = float(Fraction(fraction_text))
    base: ExperimentConfig = load_config(ExperimentConfig, ctx["config"], [*ctx["overrides"], f"train.seed={seed}"])
    target = int(fraction * ctx["plain_bytes"])
    record: dict[str, Any] = {"dataset": ctx["dataset"], "technique": technique, "fraction": fraction,
                              "fraction_label": fraction_text, "seed": seed, "plain_bytes": ctx["plain_bytes"],
                              "target_bytes": target, "ranks": ctx["ranks"], "config": str(ctx["config"]),
                              "overrides": ctx["user_overrides"], "command": ctx["command"], "machine": ctx["machine"],
                              "threads": ctx["threads"], "row_bytes": ctx["row_bytes"]}
    started = time.perf_counter()
    keep = technique in ("plain", "unified")  # sources of the quantised cells
    run_dir = ctx["work"] / ctx["dataset"] / "runs" / f"{technique}__{fraction_label(fraction_text)}__s{seed}"
    try:
        if technique.startswith(("int8_", "int4_")):
            dtype, source = technique.split("_")
            src_dir = ctx["work"] / ctx["dataset"] / "runs" / f"{source}__{fraction_label(fraction_text)}__s{seed}"
            if not (src_dir / "metrics.json").is_file():
                chain_options(source, fraction, ctx["configs"], seed)  # unreachable source -> unreachable cell
                src = ensure_cell(ctx, source, fraction_text, seed)
                if src.get("status") != "ok":
                    raise Unreachable(f"source {source} at {fraction_text}: {src.get('reason')}")
                if not (src_dir / "metrics.json").is_file():
                    raise RuntimeError(f"{technique} at {fraction_text}: the source run {src_dir} is gone but its cell file exists; "
                                       f"delete {cell_path(ctx['work'], ctx['dataset'], source, fraction_text, seed)} to retrain it")
            record.update(quantise_cell(src_dir, dtype, ctx))
            record["source"] = {"technique": source, "fraction": fraction, "run": str(src_dir)}
            keep = True
        else:
            if technique in ("dnis", "optembed"):
                if fraction >= 1.0:
                    raise Unreachable(f"{technique} at 1x prunes nothing: the derived model is the plain model")
                cfg, record["search"] = derive_search(base, technique, technique_options(technique, ctx["tech_overrides"][technique]),
                                                      fraction, target, run_dir)
            else:
                options = chain_options(technique, fraction, ctx["configs"], seed)
                cfg = base if technique == "plain" else with_chain(base, technique, options)
                record["options"] = options
            metrics = train_run(cfg, run_dir / "train" if technique in ("dnis", "optembed") else run_dir, ctx["ranks"], ctx["threads"])
            trained = run_dir / "train" if technique in ("dnis", "optembed") else run_dir
            model, mcfg = load_run_model(trained)
            record.update(status="ok", bytes=bytes_of(model), latency_ms_b512=latency_ms(model, mcfg),
                          test_auc=metrics["test"]["auc"], test_logloss=metrics["test"]["logloss"],
                          valid_auc=metrics["valid"]["auc"], best_step=metrics["best_step"], steps=metrics["steps"],
                          stop_reason=metrics["stop_reason"], samples_per_second=metrics["samples_per_second"],
                          sharding=mcfg.sharding.type)
    except Unreachable as e:
        record.update(status="unreachable", reason=str(e))
    finally:
        if not keep and run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
    if record["status"] == "ok":
        record["embedding_bytes"] = record["bytes"]["embedding_bytes"]
        record["byte_ratio"] = record["embedding_bytes"] / ctx["plain_bytes"]
        if ctx["oracle"] is not None:
            from recsys_emb.data.synthetic import oracle_lift

            record["oracle_auc"] = ctx["oracle"]["oracle_auc"]
            record["lift"] = oracle_lift(record["test_auc"], ctx["oracle"]["oracle_auc"])
    record["seconds"] = time.perf_counter() - started
    return record


def quantise_cell(src_dir: Path, dtype: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """Quantise a finished run's tables and score it on the test / valid splits (unsharded)."""
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.inference.quantize import quantize_tables
    from recsys_emb.search.common import CPU_ENV
    from recsys_emb.train.tasks.ctr import evaluate

    model, cfg = load_run_model(src_dir)
    source = json.loads((src_dir / "metrics.json").read_text())
    model = quantize_tables(model, dtype, row_alignment=QUANT_ROW_ALIGNMENT)
    splits = resolve_data(cfg.data)
    test = evaluate(model, splits["test"], cfg.train.eval_batch_size, CPU_ENV)
    valid = evaluate(model, splits["valid"], cfg.train.eval_batch_size, CPU_ENV)
    return {"status": "ok", "bytes": bytes_of(model, quantised=True), "latency_ms_b512": latency_ms(model, cfg),
            "test_auc": test["auc"], "test_logloss": test["logloss"], "valid_auc": valid["auc"],
            "best_step": source["best_step"], "steps": source["steps"], "stop_reason": source["stop_reason"],
            "samples_per_second": source["samples_per_second"], "quant": {"dtype": dtype, "row_alignment": QUANT_ROW_ALIGNMENT}}


def ensure_cell(ctx: dict[str, Any], technique: str, fraction: str, seed: int) -> dict[str, Any]:
    """The cell's record: its file if it exists, else run it and write the file."""
    path = cell_path(ctx["work"], ctx["dataset"], technique, fraction, seed)
    if path.is_file():
        return json.loads(path.read_text())
    record = run_cell(ctx, technique, fraction, seed)
    atomic_save_json(path, record)
    ctx["new_cells"].append(path)
    auc = f"test AUC {record['test_auc']:.4f}, {record['embedding_bytes']:,} B ({record['byte_ratio']:.4f}x)" \
        if record["status"] == "ok" else f"unreachable: {record['reason']}"
    print(f"[frontier] {path.stem}: {auc} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return record


# ------------------------------------------------------------------------------------------------ merge
def load_cells(work: Path, dataset: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((work / "cells").glob(f"{dataset}__*.json"))]


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (technique, fraction): means over seeds (unreachable cells: their reason)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["technique"], c["fraction"]), []).append(c)
    rows = []
    for (tech, frac), cs in sorted(groups.items(), key=lambda kv: (TECHNIQUES.index(kv[0][0]), -kv[0][1])):
        ok = [c for c in cs if c["status"] == "ok"]
        row: dict[str, Any] = {"technique": tech, "fraction": frac, "fraction_label": cs[0]["fraction_label"],
                               "seeds": sorted(c["seed"] for c in ok), "target_bytes": cs[0]["target_bytes"]}
        if not ok:
            rows.append({**row, "status": "unreachable", "reason": cs[0].get("reason")})
            continue

        def mean_std(key: str) -> tuple[float, float]:
            vals = [c[key] for c in ok]
            return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0

        row.update(status="ok", embedding_bytes=ok[0]["embedding_bytes"], byte_ratio=ok[0]["byte_ratio"],
                   buffer_bytes=ok[0]["bytes"]["buffer_bytes"], dense_bytes=ok[0]["bytes"]["dense_bytes"])
        for key in ("test_auc", "test_logloss", "samples_per_second", "latency_ms_b512", "lift"):
            if all(key in c for c in ok):
                row[key], row[f"{key}_std"] = mean_std(key)
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows, ds = result["rows"], result["dataset"]
    lines = [f"# Budget frontier: {ds}", "",
             f"DCN-v2 ({result['config']}{' ' + ' '.join(result['overrides']) if result['overrides'] else ''}), "
             f"trained on {sorted(result['ranks'])} gloo rank(s); test AUC / logloss at the best validation step, "
             f"mean +- std over the seeds listed. Plain tables: {result['plain_bytes']:,} bytes (fp32).  ",
             "Bytes: `embedding_bytes` of the built model: table rows only (fp32; int8/int4 rows: stored bytes with "
             "their fp16 scale + bias, unpadded); the embedding module's buffers (id remap codes of DNIS/OptEmbed, hash "
             "coefficients, qr counts) and dense technique weights are listed apart; MLPs are not counted; "
             "**optimizer state is excluded**. int8/int4 cells: the fraction is their source model's, they sit at "
             "their measured bytes. Latency: unsharded forward of 512 test rows, one thread, median of "
             f"{LATENCY_REPEATS}. samples/s: training throughput of all ranks together (shared CPU: noisy).  ",
             f"Machine: {result['machine']}.", ""]
    lift = any("lift" in r for r in rows)
    head = "| technique | fraction (int8/int4: of the source) | seeds | table bytes | x plain | buffers | test AUC | test logloss |" + (" lift |" if lift else "") \
        + " train samples/s | latency ms (b512) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["status"] != "ok":
            continue
        lines.append(f"| {r['technique']} | {r['fraction_label']} | {','.join(map(str, r['seeds']))} | {r['embedding_bytes']:,} | "
                     f"{r['byte_ratio']:.4f} | {r['buffer_bytes']:,} | {r['test_auc']:.4f} +- {r['test_auc_std']:.4f} | "
                     f"{r['test_logloss']:.4f} +- {r['test_logloss_std']:.4f} |" + (f" {r['lift']:.3f} |" if lift and "lift" in r else " |" if lift else "")
                     + f" {r['samples_per_second']:,.0f} | {r['latency_ms_b512']:.2f} |")
    un = [r for r in rows if r["status"] != "ok"]
    if un:
        lines += ["", "Unreachable cells:", ""] + [f"- {r['technique']} at {r['fraction_label']}: {r['reason']}" for r in un]
    lines += ["", "Commands: " + ", ".join(f"`{c}`" for c in result["commands"])]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tech in TECHNIQUES:
        rows = sorted((r for r in result["rows"] if r["technique"] == tech and r["status"] == "ok"), key=lambda r: r["embedding_bytes"])
        if rows:
            ax.errorbar([r["embedding_bytes"] for r in rows], [r["test_auc"] for r in rows], yerr=[r["test_auc_std"] for r in rows],
                        marker="o" if len(rows) > 1 else "*", markersize=8 if len(rows) == 1 else 5, capsize=3, label=tech)
    ax.set_xscale("log")
    ax.set_xlabel("embedding table bytes (optimizer state excluded)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"frontier: {result['dataset']}, DCN-v2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(args: argparse.Namespace) -> dict[str, Any]:
    cells = load_cells(args.work, args.dataset)
    if not cells:
        raise SystemExit(f"--merge: no cell files for {args.dataset} under {args.work / 'cells'}")
    first = cells[0]
    result = {"dataset": args.dataset, "config": first["config"], "overrides": first["overrides"], "plain_bytes": first["plain_bytes"],
              "ranks": sorted({c["ranks"] for c in cells}), "machine": first["machine"],
              "commands": sorted({c["command"] for c in cells}), "rows": summarise(cells), "cells": cells}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"frontier_{args.dataset}"
    atomic_save_json(stem.with_suffix(".json"), result)
    atomic_write_text(stem.with_suffix(".md"), markdown(result))
    if any(r["status"] == "ok" for r in result["rows"]):
        plot(result, stem.with_suffix(".png"))
    return result


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        result = merge(args)
        print(markdown(result))
        return 0
    data = args.data or DATA[args.dataset]
    if data is None:
        raise SystemExit("--dataset synth needs --data DIR (a `recsys-emb synth criteo` folder)")
    for f in args.fractions:
        if not 0 < Fraction(f) <= 1:
            raise SystemExit(f"--fractions: {f} is not in (0, 1]")
    torch.set_num_threads(args.threads)  # searches, quantised evaluation (training ranks set their own)
    user, tech = split_overrides(args.overrides)
    data_set, oracle = data_overrides(args.dataset, data, args.work)
    config = args.config or REPO / "configs" / CONFIG[args.dataset]
    common = [*data_set, "train.tensorboard=false", "train.device=cpu", *user]
    base = load_config(ExperimentConfig, config, common)
    if base.embedding.groups:
        raise SystemExit(f"{config}: the frontier adds each technique's chain to a plain config; this one has an embedding section")
    plain_bytes, configs = plain_table_bytes(base)
    ctx = {"dataset": args.dataset, "config": config, "overrides": common, "user_overrides": args.overrides, "tech_overrides": tech,
           "work": args.work, "ranks": args.ranks, "threads": args.threads, "oracle": oracle, "plain_bytes": plain_bytes,
           "configs": configs, "row_bytes": base.model.embedding_dim * 4, "new_cells": [],
           "command": "python benchmarks/frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s) per rank"}
    left = args.max_cells if args.max_cells is not None else 10**9
    for seed in args.seeds:
        for fraction in args.fractions:
            for technique in args.techniques:
                if len(ctx["new_cells"]) >= left:
                    print(f"[frontier] --max-cells {args.max_cells} reached; rerun to continue", file=sys.stderr)
                    return 0
                ensure_cell(ctx, technique, fraction, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
