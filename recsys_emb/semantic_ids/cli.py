"""``recsys-emb sid embed|train|assign``: item text -> content vectors -> RQ-VAE -> unique semantic IDs.

    recsys-emb sid embed  --config configs/sid_scientific.yaml --out runs/sid/emb.npy
    recsys-emb sid train  --config configs/sid_scientific.yaml --embeddings runs/sid/emb.npy --out runs/sid/rqvae.pt
    recsys-emb sid assign --model runs/sid/rqvae.pt --embeddings runs/sid/emb.npy --out runs/sid/sids.npz \
        [--sentencepiece-out runs/sid/sp.model --sentencepiece-vocab-size 512 --item-counts counts.tsv]

``assign`` works for items the RQ-VAE never saw (new items): embed them, then assign with the frozen
model. Every command prints one JSON line (what it wrote, metrics) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def add_sid_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``embed`` / ``train`` / ``assign`` sub-commands to ``parser`` (the ``sid`` parser)."""
    from recsys_emb.console import deprecated_alias

    sub = parser.add_subparsers(dest="sid_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="SID YAML (e.g. configs/sid_scientific.yaml); defaults otherwise")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value with a dotted key, e.g. --set rqvae.codebook_size=64")

    e = sub.add_parser("embed", help="encode item text into content vectors (cached)")
    common(e)
    e.add_argument("--data", dest="items", help="item text file (overrides items.path)")
    deprecated_alias(e, "--items", "--data")
    e.add_argument("--format", dest="items_format", help="unisrec | amazon_json | movielens | tsv (overrides items.format)")
    e.add_argument("--index", help="UniSRec item2index file fixing the item order (overrides items.index)")
    e.add_argument("--out", type=Path, required=True, help="output .npy (item keys go to OUT.keys.json)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    t = sub.add_parser("train", help="train the RQ-VAE on content vectors")
    common(t)
    t.add_argument("--embeddings", type=Path, required=True, help="(items, dim) .npy from `sid embed` or your own")
    t.add_argument("--out", type=Path, required=True, help="output RQ-VAE file (.pt); metrics go to OUT.metrics.json")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    a = sub.add_parser("assign", help="assign unique semantic IDs with a trained RQ-VAE (new items too)")
    a.add_argument("--model", type=Path, required=True, help="RQ-VAE file from `sid train`")
    a.add_argument("--embeddings", type=Path, required=True, help="(items, dim) .npy of the items to assign")
    a.add_argument("--keys", type=Path, help="item keys, one per line (default: EMBEDDINGS.keys.json, else 0..N-1)")
    a.add_argument("--out", type=Path, required=True, help="output SID file (.npz); metrics go to OUT.metrics.json")
    a.add_argument("--sentencepiece-out", type=Path, help="also train a SentencePiece model on the IDs and write it here")
    a.add_argument("--sentencepiece-vocab-size", type=int, default=512, help="SentencePiece vocabulary size")
    a.add_argument("--sentencepiece-model-type", default="bpe", choices=["bpe", "unigram"], help="SentencePiece model type")
    a.add_argument("--item-counts", type=Path, help="TSV item_key<TAB>count weighting SentencePiece training (default 1 each)")
    a.add_argument("--seed", type=int, default=0, help="SentencePiece seed")


def _config(args: argparse.Namespace):
    from recsys_emb.config.io import load_config
    from recsys_emb.semantic_ids.config import SIDConfig

    return load_config(SIDConfig, args.config, list(getattr(args, "overrides", [])))


def cmd_embed(args: argparse.Namespace) -> dict:
    from recsys_emb.semantic_ids.embed import build_encoder, embed_texts, load_matrix, save_embeddings
    from recsys_emb.semantic_ids.items import check_missing, read_items

    cfg = _config(args)
    path = args.items or cfg.items.path
    fmt = args.items_format or cfg.items.format
    index = args.index or cfg.items.index
    if path is None:
        raise SystemExit("sid embed: no item text file (give --data or items.path in the config)")
    items = check_missing(read_items(fmt, path, index), cfg.items.missing_text, where=str(path))
    if cfg.embed.encoder == "matrix":
        if not cfg.embed.model:
            raise SystemExit("sid embed: embed.encoder 'matrix' needs embed.model (a .npy file)")
        matrix = load_matrix(cfg.embed.model, len(items))
        encoder_id = f"matrix:{cfg.embed.model}"
    else:
        encoder, encoder_id = build_encoder(cfg.embed)
        matrix = embed_texts(items.texts, encoder, encoder_id=encoder_id, batch_size=cfg.embed.batch_size,
                             cache_dir=cfg.embed.cache_dir, progress=cfg.embed.progress and not args.no_progress)
    save_embeddings(args.out, matrix, items.keys, {"encoder": encoder_id, "source": str(path), "format": fmt,
                                                   "missing_text": items.missing})
    return {"out": str(args.out), "items": len(items), "dim": int(matrix.shape[1]), "encoder": encoder_id,
            "items_without_text": len(items.missing)}


def cmd_train(args: argparse.Namespace) -> dict:
    from recsys_emb.semantic_ids.embed import load_matrix
    from recsys_emb.semantic_ids.train import evaluate_rqvae, save_rqvae, train_rqvae
    from recsys_emb.utils import atomic_save_json

    cfg = _config(args)
    if args.no_progress:
        cfg.train.progress = False
    x = load_matrix(args.embeddings)
    model, history = train_rqvae(x, cfg.rqvae, cfg.train)
    save_rqvae(model, args.out)
    metrics = evaluate_rqvae(model, x)
    atomic_save_json(Path(str(args.out) + ".metrics.json"), {"metrics": metrics, "history": history})
    return {"out": str(args.out), **metrics, "collapsed_levels": history[-1]["collapsed_levels"]}


def _read_counts(path: Path, keys: list[str]) -> np.ndarray:
    pos = {k: i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys), np.int64)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            key, _, value = line.rstrip("\n").partition("\t")
            if key not in pos:
                raise SystemExit(f"{path}:{lineno}: item '{key}' is not among the assigned items")
            try:
                counts[pos[key]] = int(value)
            except ValueError:
                raise SystemExit(f"{path}:{lineno}: count field {value!r} is not an integer") from None
    return counts


def cmd_assign(args: argparse.Namespace) -> dict:
    from recsys_emb.semantic_ids.codes import code_metrics
    from recsys_emb.semantic_ids.embed import load_keys, load_matrix
    from recsys_emb.semantic_ids.tokenizers import SentencePieceTokenizer
    from recsys_emb.semantic_ids.train import assign_ids, load_rqvae
    from recsys_emb.utils import atomic_save_json

    model = load_rqvae(args.model)
    x = load_matrix(args.embeddings)
    if args.keys is not None:
        keys = [ln.rstrip("\n") for ln in open(args.keys, encoding="utf-8") if ln.strip()]
    else:
        keys = load_keys(args.embeddings) or [str(i) for i in range(x.shape[0])]
    if len(keys) != x.shape[0]:
        raise SystemExit(f"sid assign: {len(keys)} keys but {x.shape[0]} embedding rows")
    sids = assign_ids(model, x, keys)
    sids.save(args.out)
    metrics = code_metrics(sids.codes[:, :-1], sids.level_sizes[:-1])
    result = {"out": str(args.out), "items": sids.num_items, "level_sizes": sids.level_sizes, **metrics}
    if args.sentencepiece_out is not None:
        counts = _read_counts(args.item_counts, keys) if args.item_counts else None
        sp = SentencePieceTokenizer.train(sids.codes, sids.level_sizes, vocab_size=args.sentencepiece_vocab_size,
                                          model_type=args.sentencepiece_model_type, item_counts=counts, seed=args.seed)
        sp.save(args.sentencepiece_out)
        result["sentencepiece"] = {"out": str(args.sentencepiece_out), "pieces": sp.dense_rows()}
    atomic_save_json(Path(str(args.out) + ".metrics.json"), result)
    return result


def run_sid(args: argparse.Namespace) -> int:
    """Run ``recsys-emb sid <embed|train|assign>``; prints one JSON line; returns the exit code."""
    handlers = {"embed": cmd_embed, "train": cmd_train, "assign": cmd_assign}
    try:
        result = handlers[args.sid_command](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"sid {args.sid_command}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-emb sid", description="Semantic IDs for items.")
    add_sid_arguments(parser)
    return run_sid(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
