"""Search-stage time of the two-stage model vs the attention dim (DARE), on real jagged histories.

For each data set and history cap L, the first ``--batch`` test rows are looked up once; then the
search stage (scaled dot product of every behaviour with its target + jagged top-k) is timed
``--repeats`` times per attention dim. The MINIMUM over repeats is reported (robust to other jobs on
a shared machine) with the median. Training is not needed: the cost depends only on the shapes.
The tables are those of the embedding spec's ``dare`` chain entry on every field
(``embedding: {groups: [{name: all, chain: [{dare: {attention_dim: A}}]}]}``), representation dim ``--dim``.

    python benchmarks/din_dare_search.py --amazon-path ../shared/datasets/amazon_seq_s3rec \
        --movielens-path ../shared/datasets/movielens_100k
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup  # noqa: E402
from recsys_emb.config.io import from_dict  # noqa: E402
from recsys_emb.config.sequence import SequenceModelConfig  # noqa: E402
from recsys_emb.data.sequences import FIELDS, SequenceDataConfig, SequenceDataset, load_raw  # noqa: E402
from recsys_emb.models.din import sequence_tokens  # noqa: E402
from recsys_emb.models.long_sequence import TwoStageConfig  # noqa: E402
from recsys_emb.models.sequence import build_sequence_model  # noqa: E402
from recsys_emb.train.tasks.sequence import sequence_facts  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402


def dare_spec(attention_dim: int) -> EmbeddingSpec:
    """DARE on every field (item, category, position): ``[{name: all, chain: [{dare: {attention_dim: A}}]}]``."""
    return EmbeddingSpec(groups=[TableGroup(name="all", chain=[{"dare": {"attention_dim": attention_dim}}])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amazon-path", required=True)
    p.add_argument("--movielens-path", default=None)
    p.add_argument("--dim", type=int, default=16, help="representation dim; attention dims are dim, dim/2, dim/4")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "din_dare_search"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [(name, args.amazon_path, L) for name in ("amazon_beauty", "amazon_sports") for L in (50, 200)]
    if args.movielens_path:
        cases += [("movielens_100k", args.movielens_path, 50), ("movielens_100k", args.movielens_path, 200)]
    rows = []
    for dataset, path, L in cases:
        cfg = from_dict(SequenceDataConfig, {"dataset": dataset, "path": path, "max_history": L})
        ds = SequenceDataset(load_raw(cfg), cfg)
        ex = ds.examples("test")
        batch = ds.make_batch(ex.take(torch.arange(min(args.batch, len(ex))).numpy()))
        lengths = batch.sparse_features["hist_item"].lengths()
        facts = sequence_facts(ds)
        model_cfg = SequenceModelConfig(name="two_stage", embedding_dim=args.dim, fields=list(FIELDS),
                                        two_stage=TwoStageConfig(top_k=args.top_k))
        for att_dim in (args.dim, args.dim // 2, args.dim // 4):
            torch.manual_seed(0)
            model = build_sequence_model(model_cfg, dare_spec(att_dim), facts).eval()
            with torch.no_grad():
                a, _, _ = model.embedding(batch.sparse_features)
                keys, lens, query = sequence_tokens(a, model.fields)
                times = []
                for _ in range(args.repeats):
                    tick = time.perf_counter()
                    model.search(query, keys, lens)
                    times.append((time.perf_counter() - tick) * 1000)
            rows.append({"dataset": dataset, "max_history": L, "batch": int(lengths.numel()), "behaviours": int(lengths.sum()),
                         "attention_dim": att_dim, "token_dim": model.embedding.attention_dim, "min_ms": min(times),
                         "median_ms": statistics.median(times)})
            print(rows[-1], file=sys.stderr)
    atomic_save_json(Path(args.out).with_suffix(".json"), {"rows": rows, "threads": args.threads, "repeats": args.repeats, "top_k": args.top_k})
    lines = ["# Search-stage time vs attention dim (benchmarks/din_dare_search.py)", "",
             f"One batch of test rows, search = scores + jagged top-{args.top_k}; {args.repeats} repeats, {args.threads} thread(s),",
             "shared 2-core CPU machine with other jobs running (min is the robust figure).", "",
             "| dataset | L | rows | behaviours | attention dim (per group) | min ms | median ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['max_history']} | {r['batch']} | {r['behaviours']} | {r['attention_dim']} | {r['min_ms']:.2f} | {r['median_ms']:.2f} |")
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
