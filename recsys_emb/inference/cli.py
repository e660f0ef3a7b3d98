"""``recsys-emb export`` and ``recsys-emb predict`` (argparse lives here; the work in export / predictor)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys_emb.utils import log

QUANTIZE = ("none", "fp16", "int8", "int4")


def _quantize(text: str) -> str | dict[str, str]:
    """``int8`` for every table, or per table ``t_C1=int4,t_C2=fp16,*=int8``."""
    if "=" not in text:
        if text not in QUANTIZE:
            raise argparse.ArgumentTypeError(f"--quantize: {text!r} is not one of {', '.join(QUANTIZE)} (or TABLE=DTYPE,...)")
        return text
    out: dict[str, str] = {}
    for part in text.split(","):
        table, _, dtype = part.partition("=")
        if not table or dtype not in QUANTIZE:
            raise argparse.ArgumentTypeError(f"--quantize: {part!r} is not TABLE=DTYPE with DTYPE one of {', '.join(QUANTIZE)}")
        out[table] = dtype
    return out


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Unshard a finished run (trained on any number of ranks), optionally quantise its tables, and "
                     "write a torch.export (or TorchScript) artefact + its input encodings + manifest.json to --out "
                     "(see docs/serving.md).")
    p.add_argument("--run-dir", type=Path, required=True, help="a finished `recsys-emb train` run folder")
    p.add_argument("--out", type=Path, required=True, help="the artefact folder to create")
    p.add_argument("--quantize", type=_quantize, default="none", metavar="DTYPE",
                   help="table dtype: none (fp32), fp16, int8 or int4; or per table, e.g. t_C1=int4,*=int8 (default: none)")
    p.add_argument("--row-alignment", type=int, choices=[16, 1], default=16,
                   help="quantised rows padded to 16 bytes (default; GPU kernels need it) or 1 (unpadded, CPU serving only)")
    p.add_argument("--format", choices=["pt2", "torchscript"], default="pt2",
                   help="pt2 (default): torch.export program (model.pt2), every model; torchscript: TorchRec fx tracing + "
                        "torch.jit.script (model.torchscript.pt; C++: torch::jit::load after loading fbgemm_gpu's op libraries), "
                        "every model family and technique chain (a model fx cannot trace is refused, naming why)")
    p.add_argument("--aoti", action="store_true",
                   help="also compile an AOTInductor package (model.aoti.pt2) where the model allows (--format pt2 only)")
    p.add_argument("--checkpoint", choices=["best", "checkpoint"], default="best",
                   help="best: the selected model (default); checkpoint: the last training state")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run_export(args: argparse.Namespace) -> int:
    from recsys_emb.inference.export import export_run

    manifest = export_run(args.run_dir, args.out, quantize=args.quantize, checkpoint=args.checkpoint, format=args.format,
                          aoti=args.aoti, overwrite=args.overwrite, row_alignment=args.row_alignment)
    total = sum(manifest["bytes"].values())
    log(f"[export] {manifest['task']}/{manifest['model']} -> {args.out} ({manifest['format']}, {total / 2**20:.2f} MiB, tables "
          f"{manifest['quantize']}, export == eager within {manifest['export_parity_max_abs']:.2g})")
    if manifest.get("aoti_error") and args.aoti:
        log(f"[export] no AOTInductor package: {manifest['aoti_error']}", important=True)
    return 0


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Score raw rows with an exported artefact: Criteo TSV or, for runs on schema'd data, CSV / TSV / "
                     "Parquet (ctr), JSON lines {user, history, target} (sequence) or one user index per line "
                     "(graph / two-tower: top-k items).")
    p.add_argument("--model", type=Path, required=True, help="an artefact folder written by `recsys-emb export`")
    p.add_argument("--data", nargs="+", required=True, help="input file(s)")
    p.add_argument("--out", type=Path, required=True, help="output TSV: one line per scored row")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per batch (default 4096)")
    p.add_argument("--top-k", type=int, default=20, help="graph / two-tower: items per user (default 20)")
    p.add_argument("--aoti", action="store_true", help="run the artefact's AOTInductor package")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_predict(args: argparse.Namespace) -> int:
    from recsys_emb.inference.predictor import Predictor

    if args.batch_size < 1 or args.top_k < 1:
        raise ValueError("--batch-size and --top-k must be >= 1")
    predictor = Predictor.load(args.model, aoti=True if args.aoti else None)
    result = predictor.predict_file(args.data, args.out, batch_size=args.batch_size, top_k=args.top_k,
                                    progress=not args.no_progress)
    log(f"[predict] scored {result['scored']:,} rows -> {args.out}; {result['summary']}", important=bool(result['skipped']))
    for example in result["examples"]:
        log(f"[predict]   {example}", important=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "summary")}))
    return 0
