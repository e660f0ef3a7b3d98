"""``recsys-emb search dnis|optembed --config CFG``: search -> derive real tables -> retrain -> report.

Run folder (``--run-dir``):

- ``config.yaml``: the search config; ``search_state.pt``: resumable search checkpoint (``--resume``);
- ``layout.pt``, ``derived_config.yaml``, ``derived_model.pt``: the REAL compact model (a config that
  any process can build with ``build_ctr_model`` and a plain state dict);
- ``retrain/``: an ordinary ``recsys-emb train`` run of the derived config (from scratch, shardable);
- ``report.json`` / ``report.md``: params, embedding bytes before/after, AUCs, per-feature dims and
  kept rows; ``tensorboard/``: alpha / threshold / sparsity curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import from_dict, load_config, run_config_and_dir, save_config
from recsys_emb.search.common import load_state, save_state, setup
from recsys_emb.utils import atomic_save_json, atomic_write_text, log

TECHNIQUES = ("dnis", "optembed")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys-emb search`` (the lead wires this as a sub-command)."""
    parser.add_argument("technique", choices=TECHNIQUES, help="which search to run")
    parser.add_argument("--config", type=Path, help="experiment YAML (e.g. configs/criteo_dnis_tiny.yaml); required unless --resume")
    parser.add_argument("--train", help="training data (overrides data.train)")
    parser.add_argument("--valid", help="validation data (overrides data.valid)")
    parser.add_argument("--test", help="test data (overrides data.test)")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config>-search-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. --set embedding.groups.0.chain.0.dnis.search.target_compression=0.75")
    parser.add_argument("--resume", action="store_true", help="continue the search in --run-dir from search_state.pt")
    parser.add_argument("--no-retrain", action="store_true", help="stop after deriving the compact model")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="search steps between search_state.pt writes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _options_cls(technique: str) -> type:
    if technique == "dnis":
        from recsys_emb.modules.dnis import DNISOptions

        return DNISOptions
    from recsys_emb.modules.optembed import OptEmbedOptions

    return OptEmbedOptions


def search_config(cfg: ExperimentConfig, technique: str) -> tuple[ExperimentConfig, Any]:
    """``cfg`` as one group of every feature whose chain is ``[technique]`` (a plain config gets default options).

    A search prices every id's own row, so it runs over plain tables covering every feature: a config
    with other groups or techniques is refused with the form it needs."""
    from recsys_emb.config.embedding import EmbeddingSpec, TableGroup, technique_entry

    groups = cfg.embedding.groups
    if not groups or (len(groups) == 1 and groups[0].features is None
                      and all(technique_entry(e, groups[0].name)[0] == "plain" for e in groups[0].chain)):
        cfg = dataclasses.replace(cfg, embedding=EmbeddingSpec(groups=[TableGroup(name="all", chain=[technique])]))
    entries = [technique_entry(e, g.name) for g in cfg.embedding.groups for e in g.chain]
    group = cfg.embedding.groups[0]
    if len(cfg.embedding.groups) != 1 or group.features is not None or [n for n, _ in entries if n != "plain"] != [technique]:
        raise ValueError(
            f"search {technique}: the embedding section must be one group of every feature with chain [{technique}] "
            f"(the search prices each id's own row of plain tables); got "
            f"{[(g.name, g.features, g.chain) for g in cfg.embedding.groups]}"
        )
    options = from_dict(_options_cls(technique), dict(dict(entries)[technique]), where=f"embedding group '{group.name}': {technique}")
    if options.compact_layout is not None:
        raise ValueError(f"search: {technique}.compact_layout is set; that config is already a derived model")
    return cfg, options


def run_search_experiment(cfg: ExperimentConfig, technique: str, run_dir: str | Path, *, resume: bool = False,
                          retrain: bool | None = None, checkpoint_every: int = 100, progress: bool = True) -> dict[str, Any]:
    """Search -> derive -> (retrain) -> report. Returns the report (also written to ``run_dir``)."""
    from recsys_emb.search import dnis as dnis_search
    from recsys_emb.search import optembed as optembed_search
    from recsys_emb.search.derive import derive_tables, layout_report, save_derived
    from recsys_emb.train.tasks import train
    from recsys_emb.train.tasks.ctr import absolute_paths as _absolute_paths

    run_dir = Path(run_dir)
    state_path = run_dir / "search_state.pt"
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume: {state_path} does not exist")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run dir {run_dir} is not empty: pass --resume or choose another --run-dir")
    cfg, options = search_config(_absolute_paths(cfg), technique)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    sc = options.search
    retrain = sc.retrain if retrain is None else retrain

    started = time.perf_counter()
    s = setup(cfg, ("alpha_",) if technique == "dnis" else ("threshold",))
    writer = None
    if cfg.train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    state = load_state(state_path) if resume else None
    driver = dnis_search if technique == "dnis" else optembed_search
    result = driver.run(s, sc, state, writer, progress, lambda st: save_state(state_path, st), checkpoint_every)
    search_seconds = time.perf_counter() - started

    layout, weights = derive_tables(s.embedding)
    derived_cfg, _ = save_derived(run_dir, cfg, s.model, layout, weights)
    sizes = layout_report(s.embedding, layout)
    report: dict[str, Any] = {"technique": technique, "name": cfg.name, "model": cfg.model.name, "search": result,
                              "search_seconds": search_seconds, **sizes}
    report["valid_derived"] = _derived_valid(derived_cfg, run_dir, s)
    if "test" in s.splits:
        report["test_searched_masked"] = s.evaluate("test")
    if writer is not None:
        writer.add_scalar("search/compression", sizes["compression"], 0)
        writer.close()
    if retrain:
        retrain_cfg = dataclasses.replace(derived_cfg, train=dataclasses.replace(derived_cfg.train, device=cfg.train.device))
        metrics = train(retrain_cfg, run_dir / "retrain")
        report["retrain"] = {k: metrics.get(k) for k in ("valid", "test", "embedding_parameters", "steps", "stop_reason")}
    atomic_save_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", report_markdown(report))
    log(f"[search] report: {run_dir / 'report.md'}")
    return report


def _derived_valid(derived_cfg: ExperimentConfig, run_dir: Path, s: Any) -> dict[str, float]:
    """Validation metrics of the derived model rebuilt from its files (config + layout + state)."""
    from recsys_emb.search.common import CPU_ENV
    from recsys_emb.train.tasks.ctr import build_ctr_model, evaluate

    model = build_ctr_model(derived_cfg, s.train_data, device="cpu")
    model.load_state_dict(torch.load(run_dir / "derived_model.pt", map_location="cpu", weights_only=True))
    return evaluate(model, s.splits["valid"], s.cfg.train.eval_batch_size, CPU_ENV)


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# {report['technique']} search: {report['name']} ({report['model']})", "",
        f"- embedding bytes: {report['embedding_bytes_before']:,} -> {report['embedding_bytes_after']:,} "
        f"({report['compression']:.2f}x smaller; id remap {report['remap_bytes']:,} bytes)",
        f"- search time: {report['search_seconds']:.1f} s (CPU, shared machine)",
    ]
    for key in ("valid_searched", "valid_pruned", "valid_supernet"):
        if key in report["search"]:
            lines.append(f"- {key.replace('_', ' ')} AUC: {report['search'][key]['auc']:.5f}")
    lines.append(f"- derived model valid AUC (rebuilt from files): {report['valid_derived']['auc']:.5f}")
    if "retrain" in report:
        r = report["retrain"]
        lines.append(f"- retrained valid AUC: {r['valid']['auc']:.5f}" + (f", test AUC: {r['test']['auc']:.5f}" if r.get("test") else ""))
    lines += ["", "| feature | vocab | kept rows | part dims |", "|---|---:|---:|---|"]
    for f, info in report["features"].items():
        lines.append(f"| {f} | {info['vocab']} | {info['kept_rows']} | {info['part_dims']} |")
    return "\n".join(lines) + "\n"


def run_search(args: argparse.Namespace) -> int:
    """Entry point of ``recsys-emb search`` (see :func:`add_search_arguments`)."""
    overrides = list(args.overrides)
    for key in ("train", "valid", "test"):
        if getattr(args, key, None) is not None:
            overrides.append(f"data.{key}={getattr(args, key)}")
    config_path, run_dir = run_config_and_dir(
        args.config, args.run_dir, args.resume, example="configs/criteo_dnis_tiny.yaml", suffix="-search", tag="search"
    )
    cfg = load_config(ExperimentConfig, config_path, overrides)
    log(f"[search] run dir: {run_dir}")
    report = run_search_experiment(
        cfg, args.technique, run_dir, resume=args.resume, retrain=False if args.no_retrain else None,
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
    )
    print(json.dumps({k: report[k] for k in ("embedding_bytes_before", "embedding_bytes_after", "compression")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_emb.search.cli", description=__doc__.splitlines()[0])
    add_search_arguments(parser)
    return run_search(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
