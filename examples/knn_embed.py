"""kNN-Embed in ~100 lines: train a two-tower (MF) model, then compare single-vector and kNN-Embed retrieval.

By default the data are synthetic multi-interest users (each engages with 2-3 of 8 item groups), so the
script runs anywhere in about 15 s (2 cores); ``--data FOLDER`` uses a LightGCN-format folder instead
(``train.txt``/``test.txt`` with ``user item item ...`` lines, e.g. the Gowalla or ML-1M graphs); a
folder without them stops the script at once (exit status 2) with where to download them
(datasets/gowalla/README.md).

    python examples/knn_embed.py
    python examples/knn_embed.py --data ../shared/datasets/lightgcnpp_ml1m_lastfm/ml-1m --epochs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_emb.config.two_tower import TwoTowerTrainConfig  # noqa: E402
from recsys_emb.data.availability import MissingDataError, require_data  # noqa: E402
from recsys_emb.models.two_tower import TwoTowerConfig  # noqa: E402
from recsys_emb.retrieval.data import InteractionData, Interactions, load_interaction_data  # noqa: E402
from recsys_emb.retrieval.driver import BaseConfig, RetrieveConfig, TwoTowerBaseConfig, base_embeddings  # noqa: E402
from recsys_emb.retrieval.evaluate import diversity_metrics, ranking_metrics  # noqa: E402
from recsys_emb.retrieval.index import IndexConfig, build_index  # noqa: E402
from recsys_emb.retrieval.knn_embed import KnnEmbed, KnnEmbedConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="LightGCN-format folder (default: synthetic multi-interest users)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--clusters", type=int, default=8, help="kNN-Embed clusters C")
    p.add_argument("--smoothing", type=float, default=0.5, help="lambda of the neighbour smoothing")
    p.add_argument("--k", type=int, default=50, help="candidates per user")
    p.add_argument("--index", default="exact", choices=["exact", "flat", "ivf_flat", "hnsw"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP oversubscription on busy CPUs)")
    return p.parse_args(argv)


def synthetic(num_users: int = 2000, groups: int = 8, per_group: int = 100, seed: int = 0) -> InteractionData:
    """Users engage with 2-3 item groups each; ~20% of every user's items are held out for testing."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for _ in range(num_users):
        mine = torch.randperm(groups, generator=g)[: int(torch.randint(2, 4, (1,), generator=g))]
        weights = torch.rand(mine.numel(), generator=g) + 0.2
        counts = (weights / weights.sum() * 25).round().long().clamp_min(2)
        items = torch.cat([grp * per_group + torch.randperm(per_group, generator=g)[:n]
                           for grp, n in zip(mine.tolist(), counts.tolist())])
        items = items[torch.randperm(items.numel(), generator=g)].tolist()
        cut = max(1, int(0.8 * len(items)))
        train.append(items[:cut])
        test.append(items[cut:])
    n_items = groups * per_group
    return InteractionData(Interactions.from_lists(train, n_items), Interactions.from_lists(test, n_items),
                           num_users, n_items, "synthetic multi-interest users (pass --data FOLDER for a real data set)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.data:
        try:
            require_data(args.data, "gowalla", where="--data")  # train.txt and test.txt, plain or .gz
        except MissingDataError as err:
            print(f"knn_embed.py: error: {err}", file=sys.stderr)
            return 2
    data = load_interaction_data(args.data) if args.data else synthetic(seed=args.seed)
    print(f"data: {data.source}, {data.num_users} users, {data.num_items} items, {data.train.items.numel()} train interactions")

    # 1. base embeddings: matrix factorisation on torchrec tables, in-batch softmax (task: two_tower, one trainer)
    train = TwoTowerTrainConfig(epochs=args.epochs, batch_size=512, seed=args.seed, num_threads=args.threads,
                                progress=False, tensorboard=False)
    cfg = RetrieveConfig(name="knn_example", show_progress=False, base=BaseConfig(
        type="two_tower", two_tower=TwoTowerBaseConfig(model=TwoTowerConfig(embedding_dim=32), train=train)))
    user_emb, item_emb, info = base_embeddings(cfg, data)
    print(f"two-tower: {info['epochs']} epochs, final loss {info['final_loss']:.3f}, {info['train_seconds']:.1f} s")

    # 2. evaluation users, their seen items (excluded) and held-out items
    eval_users = torch.nonzero(data.test.counts() > 0).squeeze(1)
    seen, held_out = data.train.select(eval_users), data.test.select(eval_users)
    queries = user_emb[eval_users]
    index_cfg = IndexConfig(kind=args.index)

    # 3. single-vector top-K vs kNN-Embed at the same K
    single = build_index(item_emb, index_cfg).search(queries, args.k, exclude=seen)
    knn = KnnEmbed.fit(item_emb, KnnEmbedConfig(num_clusters=args.clusters, smoothing_lambda=args.smoothing,
                                                 seed=args.seed), index_cfg)
    knn.fit_users(user_emb, data.train.csr)  # P~(c|u) for every user
    multi = knn.retrieve_users(eval_users, queries, args.k, exclude=seen)

    print(f"\n{'method':<12} {'recall@K':>9} {'ndcg@K':>8} {'clusters':>9} {'entropy':>8} {'ILD':>6}   (K = {args.k})")
    for name, ids in (("single", single.ids), ("kNN-Embed", multi.ids)):
        r = ranking_metrics(ids, held_out, [args.k])
        d = diversity_metrics(ids, knn.assignments, args.clusters, item_emb, [args.k])
        print(f"{name:<12} {r[f'recall@{args.k}']:>9.4f} {r[f'ndcg@{args.k}']:>8.4f} {d[f'clusters@{args.k}']:>9.2f} "
              f"{d[f'entropy@{args.k}']:>8.3f} {d[f'ild@{args.k}']:>6.3f}")
    b = multi.budgets[0]
    print(f"\nuser {int(eval_users[0])}: P~(c|u) = {[round(x, 2) for x in knn.mixtures[eval_users[0]].tolist()]}")
    print(f"budget per cluster = {b.tolist()} (sum {int(b.sum())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
