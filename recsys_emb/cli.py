"""The ``recsys-emb`` command (also ``python -m recsys_emb``).

Sub-commands::

    recsys-emb synth criteo --rows N --out DIR [--test-rows M] [--seed S]
    recsys-emb prepare criteo --data FILE... --out DIR [--vocab-from DIR] [--min-count N | --hash-buckets N] [--strict]
    recsys-emb train --config CFG [--train PATH] [--valid PATH] [--test PATH] [--data DIR] [--run-dir DIR] [--set k=v ...] [--resume]
    recsys-emb evaluate --run-dir DIR --data PATH [--checkpoint]
    recsys-emb plan --config CFG --world-size N [--device cpu|cuda] [--set k=v ...]
    recsys-emb prepare movielens --data DIR --out DIR          (MovieLens-100K CTR data)
    recsys-emb prepare table --schema S --data FILE... --out DIR [--vocab-from DIR] [--strict]  (CSV/TSV/Parquet)
    recsys-emb search dnis|optembed --config CFG ...           (learned embedding dimensions)
    recsys-emb sid embed|train|assign ...                      (semantic IDs)
    recsys-emb retrieve --config CFG ...                       (exact/FAISS + kNN-Embed)
    recsys-emb recommend --config CFG [--retrieval-run RUN] [--ranker-run RUN|none]  (retrieve, then rank)
    recsys-emb export --run-dir RUN --out DIR [--quantize none|fp16|int8|int4] [--format pt2|torchscript] [--aoti]
    recsys-emb predict --model DIR --data FILE... --out FILE [--batch-size N] [--top-k K]
    recsys-emb report RUN... [--out DIR]                        (curves.png + report.md of runs)
    recsys-emb doctor [--json]

Every command also takes --quiet, --verbose and --no-progress (recsys_emb/console.py).

Heavy imports happen inside each command so ``recsys-emb --help`` and ``doctor`` stay fast and
``doctor`` works even when torch/fbgemm/torchrec do not import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from recsys_emb.console import add_common_arguments, configure_from


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train any model family from a YAML experiment (task: ctr | sequence | graph | two_tower)",
                       description="Train, validate and test a model: CTR, sequence ranking, graph CF or two-tower (the config's task:).")
    p.add_argument("--config", type=Path, help="experiment YAML (e.g. configs/criteo_dcnv2.yaml); required unless --resume")
    p.add_argument("--train", help="ctr: training data, raw Criteo TSV(.gz) or a prepared folder (overrides data.train)")
    p.add_argument("--valid", help="ctr: validation data (overrides data.valid; default: last data.valid_fraction of train)")
    p.add_argument("--test", help="ctr: test data (overrides data.test)")
    p.add_argument("--data", help="sequence / graph / two_tower: the data folder (overrides data.path)")
    p.add_argument("--run-dir", type=Path, help="output folder (default: runs/<config name>-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on a data set", description="Evaluate RUN_DIR/model.pt on data.")
    p.add_argument("--run-dir", type=Path, required=True, help="a finished `recsys-emb train` run folder")
    p.add_argument("--data", required=True, help="raw Criteo TSV(.gz) (encoded with the run's vocabulary) or a prepared folder")
    p.add_argument("--batch-size", type=int, default=16384, help="evaluation batch size")
    p.add_argument("--checkpoint", action="store_true",
                   help="score RUN_DIR/checkpoint sharded on the current world (works under torchrun, any number of "
                        "ranks) instead of the exported best model.pt")


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print the sharding plan and per-rank memory of a config",
                       description="Plan the embedding tables of an experiment for N ranks without training.")
    p.add_argument("--config", type=Path, required=True, help="experiment YAML")
    p.add_argument("--world-size", type=int, required=True, help="number of ranks (processes) to plan for")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="device type to plan for (default: from the config)")
    p.add_argument("--train", help="ctr: training data (overrides data.train): needed for the vocabulary sizes")
    p.add_argument("--data", help="sequence / graph / two_tower: the data folder (overrides data.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set sharding.type=row_wise (repeatable)")
    p.add_argument("--out", type=Path, help="also write the plan to this file")


# Technique sub-commands: name -> (module, add-arguments function, run function, help). Their modules
# are imported only when that sub-command runs, so `recsys-emb --help` stays fast.
TECHNIQUE_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "search": ("recsys_emb.search.cli", "add_search_arguments", "run_search",
               "learned embedding dimensions: DNIS / OptEmbed search -> real smaller tables -> retrain"),
    "sid": ("recsys_emb.semantic_ids.cli", "add_sid_arguments", "run_sid",
            "semantic IDs: embed item text, train the RQ-VAE, assign IDs"),
    "retrieve": ("recsys_emb.retrieval.driver", "add_retrieve_arguments", "run_retrieve",
                 "candidate retrieval: exact/FAISS single-vector vs kNN-Embed"),
    "recommend": ("recsys_emb.retrieval.pipeline", "add_recommend_arguments", "run_recommend",
                  "retrieve, then rank: stage-1 candidates ordered by a trained DIN / two-stage ranker, evaluated end to end"),
    "export": ("recsys_emb.inference.cli", "add_export_arguments", "run_export",
               "a trained run -> a torch.export (or TorchScript) artefact for serving (unsharded, optionally quantised tables)"),
    "predict": ("recsys_emb.inference.cli", "add_predict_arguments", "run_predict",
                "score raw rows (Criteo TSV, sequences, user ids) with an exported artefact"),
    "report": ("recsys_emb.report", "add_report_arguments", "run_report",
               "training / validation curves of one or several runs as a PNG + a markdown summary"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from recsys_emb import __version__

    parser = argparse.ArgumentParser(prog="recsys-emb", description="Embedding techniques for recommender systems on TorchRec.")
    parser.add_argument("--version", action="version", version=f"recsys-emb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate synthetic data sets").add_subparsers(dest="dataset", required=True)
    from recsys_emb.data.synthetic import add_synth_criteo_arguments

    add_synth_criteo_arguments(synth.add_parser("criteo", help="Criteo-like TSV with a known oracle"))

    prepare = sub.add_parser("prepare", help="prepare raw data into columnar arrays").add_subparsers(dest="dataset", required=True)
    from recsys_emb.data.criteo import add_prepare_criteo_arguments

    add_prepare_criteo_arguments(prepare.add_parser("criteo", help="Criteo TSV(.gz) -> arrays + meta.json"))
    from recsys_emb.data.movielens import add_movielens_arguments

    add_movielens_arguments(prepare.add_parser("movielens", help="MovieLens-100K ratings -> CTR train/valid/test arrays"))
    from recsys_emb.data.tabular import add_prepare_table_arguments

    add_prepare_table_arguments(prepare.add_parser(
        "table", help="any CTR table (CSV/TSV(.gz)/Parquet) + a feature schema -> arrays + meta.json"))

    _add_train(sub)
    _add_evaluate(sub)
    _add_plan(sub)
    doctor = sub.add_parser("doctor", help="check the installed torch / fbgemm_gpu / torchrec stack",
                            description="Check the installed torch / fbgemm_gpu / torchrec stack, the compiled kernels "
                                        "and the dependency lock, and say what to fix.")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    chosen = argv[0] if argv else None
    for name, (module, add_fn, _, help_text) in TECHNIQUE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=chosen == name)
        if chosen == name:
            import importlib

            getattr(importlib.import_module(module), add_fn)(p)
    for leaf in _leaf_parsers(parser):
        add_common_arguments(leaf)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the commands that run (``train``, ``prepare criteo``, ``sid embed``, ...); a command
    without a description gets its help line as one."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    leaves = []
    for action in subs:
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if not child.description and helps.get(name):
                child.description = helps[name][0].upper() + helps[name][1:] + "."
            leaves += _leaf_parsers(child)
    return leaves


def cmd_train(args: argparse.Namespace) -> int:
    from recsys_emb.config.io import run_config_and_dir
    from recsys_emb.train.tasks import load_experiment, train
    from recsys_emb.utils import log

    overrides = list(args.overrides)
    for key in ("train", "valid", "test"):
        if getattr(args, key) is not None:
            overrides.append(f"data.{key}={getattr(args, key)}")
    config_path, run_dir = run_config_and_dir(
        args.config, args.run_dir, args.resume, example="configs/criteo_dcnv2_tiny.yaml", tag="train"
    )
    if args.data is not None:
        overrides.append(f"{_data_path_key(config_path)}={args.data}")
    cfg = load_experiment(config_path, overrides)
    log(f"[train] {cfg.task} run dir: {run_dir}")
    results = train(cfg, run_dir, resume=args.resume)
    if "interrupted_at_step" in results:  # Ctrl-C / SIGTERM: stopped after a checkpoint (the trainer said how to resume)
        return 143 if results.get("signal") == "SIGTERM" else 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results.get("test") or results[results["selected_on"]]), flush=True)  # the best model's test metrics
    return 0


def _data_path_key(config_path: Path) -> str:
    """The key ``--data`` sets: ``data.path``, or ``data.sequence.path`` for a graph / two-tower experiment that
    reads behaviour sequences (docs/techniques/retrieve_rank.md)."""
    from recsys_emb.config.io import load_yaml

    data = load_yaml(config_path).get("data")
    return "data.sequence.path" if isinstance(data, dict) and isinstance(data.get("sequence"), dict) else "data.path"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys_emb.evaluate import evaluate_checkpoint, evaluate_run

    if args.checkpoint:
        result = evaluate_checkpoint(args.run_dir, args.data, batch_size=args.batch_size)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return 0
    print(json.dumps(evaluate_run(args.run_dir, args.data, batch_size=args.batch_size)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.distributed.plan_cli import plan_experiment

    overrides = list(args.overrides) + ([f"data.train={args.train}"] if args.train else []) + (
        [f"data.path={args.data}"] if args.data else [])
    cfg = load_config(ExperimentConfig, args.config, overrides)
    text, warnings = plan_experiment(cfg, args.world_size, args.device)
    print(text)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if args.out is not None:
        from recsys_emb.utils import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["doctor"] and not {"-h", "--help"} & set(argv):  # must work even when torch & co. do not import
        from recsys_emb.doctor import run_doctor

        return run_doctor(as_json="--json" in argv)
    args = build_parser(argv).parse_args(argv)
    try:
        configure_from(args)
    except ValueError as e:
        print(f"recsys-emb {args.command}: error: {e}", file=sys.stderr)
        return 2
    from recsys_emb.config.io import ConfigError

    try:
        if args.command == "synth":
            from recsys_emb.data.synthetic import run_synth_criteo

            return run_synth_criteo(args)
        if args.command == "prepare" and args.dataset == "table":
            from recsys_emb.data.tabular import run_prepare_table

            return run_prepare_table(args)
        if args.command == "prepare" and args.dataset == "movielens":
            from recsys_emb.data.movielens import run_movielens

            return run_movielens(args)
        if args.command == "prepare":
            from recsys_emb.data.criteo import run_prepare_criteo

            return run_prepare_criteo(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command in TECHNIQUE_COMMANDS:
            import importlib

            module, _, run_fn, _ = TECHNIQUE_COMMANDS[args.command]
            return int(getattr(importlib.import_module(module), run_fn)(args))
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"recsys-emb {args.command}: error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


def run() -> None:
    """The ``recsys-emb`` console script (and ``python -m recsys_emb``): :func:`main`, then exit.

    A process that trained or evaluated through a process group ends without interpreter finalization
    (:func:`recsys_emb.train.env.exit_process` says why); the others exit normally.
    """
    code = main()
    if "recsys_emb.train.env" in sys.modules:
        from recsys_emb.train.env import exit_process, used_process_group

        if used_process_group():
            exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
