"""Semantic IDs for new items: DIN with random-hash item ids vs SID piece features on held-out items.

    python examples/semantic_ids_cold_start.py                         # Scientific from ../shared, hashing encoder
    python examples/semantic_ids_cold_start.py --encoder minilm        # all-MiniLM-L6-v2 content vectors
    python examples/semantic_ids_cold_start.py --codes runs/sid_scientific/sids.npz --epochs 15

1. item text -> content vectors -> RQ-VAE -> unique semantic IDs (skipped with ``--codes``);
2. 15% of the items are held out: they never occur in training (recsys_emb/data/cold_start.py);
3. DIN is trained twice on the same split: item feature = random-hash id (the config's item table
   group, ``chain: [{hash: {num_rows: 1585}}]``), then = sum of the item's SID pieces (the item group's
   chain replaced by ``[{semantic_ids: {codes: ..., tokenizer: ...}}]``, ``--tokenizer``); both report
   test AUC overall, on known items and on the new items.

``--data`` defaults to ``../shared/datasets/amazon_scientific_text``; without the files the script stops
at once (exit status 2) and says where to download them (datasets/amazon_scientific_text/README.md).
The full, multi-seed comparison is benchmarks/semantic_ids.py (docs/techniques/semantic_ids.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.data.availability import MissingDataError, require_data  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "amazon_scientific_text"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with Scientific.text / .item2index / .inter files")
    p.add_argument("--codes", type=Path, default=None, help="an existing SID file (`recsys-emb sid assign`); else one is trained")
    p.add_argument("--encoder", default="hashing", choices=["hashing", "minilm"], help="content encoder when training SIDs")
    p.add_argument("--rqvae-epochs", type=int, default=100)
    p.add_argument("--tokenizer", default="prefix_ngram", choices=["unigram", "bigram", "prefix_ngram", "sentencepiece"])
    p.add_argument("--epochs", type=int, default=6, help="DIN epochs (early stopping on known-item validation AUC)")
    p.add_argument("--max-users", type=int, default=None, help="use only the first users (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_codes(args: argparse.Namespace, out: Path) -> Path:
    """Content vectors of ALL items (held-out ones included: only their text is used) -> RQ-VAE -> SIDs."""
    from recsys_emb.semantic_ids.config import EmbedConfig, RQVAEConfig, RQVAETrainConfig
    from recsys_emb.semantic_ids.embed import build_encoder, embed_texts
    from recsys_emb.semantic_ids.items import check_missing, read_items
    from recsys_emb.semantic_ids.train import assign_ids, train_rqvae

    items = check_missing(read_items("unisrec", args.data / "Scientific.text", args.data / "Scientific.item2index"), "error")
    encoder, encoder_id = build_encoder(EmbedConfig(encoder=args.encoder, hashing_dim=256))
    x = embed_texts(items.texts, encoder, encoder_id=None, batch_size=64, progress=False)  # (N, D)
    rq = RQVAEConfig(hidden_dims=[256, 128], latent_dim=32, num_levels=3, codebook_size=64)
    model, _ = train_rqvae(x, rq, RQVAETrainConfig(epochs=args.rqvae_epochs, batch_size=512, seed=args.seed, progress=False))
    sids = assign_ids(model, x, items.keys)  # (N, 4) unique IDs
    sids.save(out)
    print(f"{len(items)} items ({encoder_id}) -> SIDs with level sizes {sids.level_sizes}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_data(args.data, "amazon_scientific_text", where="--data")  # Scientific.text, .item2index, .test.inter
    except MissingDataError as err:
        print(f"semantic_ids_cold_start.py: error: {err}", file=sys.stderr)
        return 2
    # the training stack is imported after the data check, so that missing files are reported at once
    from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
    from recsys_emb.config.io import load_config
    from recsys_emb.config.sequence import SequenceExperimentConfig
    from recsys_emb.data.cold_start import make_sequence_dataset
    from recsys_emb.train.tasks.sequence import SequenceTask
    from recsys_emb.train.trainer import fit

    with tempfile.TemporaryDirectory() as tmp:
        codes = args.codes or make_codes(args, Path(tmp) / "sids.npz")
        base = load_config(SequenceExperimentConfig, REPO / "configs" / "amazon_scientific_coldstart.yaml", [
            f"data.path={args.data}", f"train.epochs={args.epochs}", f"train.seed={args.seed}", "train.progress=false",
        ])
        if args.max_users:
            base.data.max_users = args.max_users
        ds = make_sequence_dataset(base.data)
        print("data:", json.dumps(ds.summary()))
        # the config's groups: item (random-hash ids) and rest (position); the SID model swaps the item chain
        sid_item = TableGroup(name="item", features=["item"], chain=[{"semantic_ids": {
            "codes": str(codes), "tokenizer": args.tokenizer, "mapping": "vocab", "sentencepiece_vocab_size": 512}}])
        rest = [g for g in base.embedding.groups if g.name != "item"]
        for label, name, embedding in (("random-hash item id", "hash", base.embedding),
                                       (f"SID pieces ({args.tokenizer})", "sid", EmbeddingSpec(groups=[sid_item, *rest]))):
            cfg = copy.deepcopy(base)
            cfg.embedding = embedding
            test = fit(SequenceTask(cfg, dataset=ds), cfg, Path(tmp) / name)["test"]
            print(f"{label:28s} test AUC overall {test['auc']:.4f} | known items {test['warm']['auc']:.4f} "
                  f"| new items {test['new_items']['auc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
