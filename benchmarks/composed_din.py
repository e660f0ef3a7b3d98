"""Composed techniques in one sharded DIN: DARE + semantic-ID items + multiplexed context, vs each alone.

Amazon Beauty (S3-Rec files, ../shared/datasets/amazon_seq_s3rec), DIN with the user id as a pooled
side feature, every run trained by ``recsys-emb train`` under ``torchrun --nproc_per_node 2`` (2 gloo
ranks, CPU, row-wise sharded tables), seeds 0..2. Variants (all else equal):

* ``plain``: one table per field (item, category, position) and for the user;
* ``dare``: attention tables of half the dim next to the representation tables (Feng et al. 2024);
* ``sid``: the item field as the sum of its semantic-ID unigram pieces (Singh et al. 2024; no item-id row);
* ``unified``: category, position and the user id multiplexed into shared tables at a quarter of
  their bytes (Coleman et al. 2023);
* ``composed``: all three at once: item = SID pieces with DARE roles, category + position = one
  multiplexed table with DARE roles, user = a multiplexed table;
* ``composed+id``: the same, but the item is its id row + its SID pieces (``with_id``), multiplexed
  into a quarter-size shared table (the ``semantic_ids`` -> ``unified`` chain) before the DARE roles.

Semantic IDs need item content. The Beauty files carry no item text, only attribute ids (category and
brand, ``Beauty_item2attributes.json``): each item's "text" is its attribute ids, embedded by the
hashing encoder (recsys_emb/semantic_ids/embed.py), quantised by an RQ-VAE (3 levels x 64 codes +
collision suffix) trained here once (seed 0, every ranking seed uses it). That is weaker content than
the paper's; the benchmark measures the plumbing's cost and the techniques' combined effect, not the
best SIDs.

Embedding bytes = table parameters x 4 (fp32), optimizer state excluded. Goal (issue 19): ``composed``
reaches at least the best single technique's test AUC at no more than half of ``plain``'s bytes.

    python benchmarks/composed_din.py [--seeds 0 1 2] [--max-users N] [--epochs 2] [--out benchmarks/results/composed_din]

Writes ``<out>.json`` and ``<out>.md`` after every run (a cut-short run keeps its rows; a rerun skips
finished runs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "amazon_seq_s3rec"


def sid_codes(out: Path, data: Path, seed: int = 0) -> Path:
    """Semantic IDs of every Beauty item from its attribute ids (row r = raw item id r; row 0 unused)."""
    path = out / "beauty_attr_sids.npz"
    if path.is_file():
        return path
    from recsys_emb.semantic_ids.codes import SemanticIds
    from recsys_emb.semantic_ids.config import RQVAEConfig, RQVAETrainConfig
    from recsys_emb.semantic_ids.embed import hashing_encoder
    from recsys_emb.semantic_ids.train import assign_ids, train_rqvae

    with gzip.open(data / "Beauty_item2attributes.json.gz", "rt") as f:
        attrs = {int(k): v for k, v in json.load(f).items()}
    rows = max(attrs) + 1
    texts = [" ".join(f"attr{a}" for a in attrs.get(r, [])) or "none" for r in range(rows)]
    x = hashing_encoder(256)(texts)
    model, _ = train_rqvae(x, RQVAEConfig(hidden_dims=[128, 64], latent_dim=32, num_levels=3, codebook_size=64),
                           RQVAETrainConfig(epochs=30, batch_size=1024, seed=seed, progress=False))
    sids: SemanticIds = assign_ids(model, x, [str(r) for r in range(rows)])
    out.mkdir(parents=True, exist_ok=True)
    sids.save(path)
    return path


def variants(codes: Path, dim: int) -> dict[str, dict[str, Any]]:
    half = {"attention_dim": dim // 2}
    # unigram pieces (one row per (level, code)): a few hundred rows instead of one per item
    sid = {"semantic_ids": {"codes": str(codes), "tokenizer": "unigram", "mapping": "vocab"}}
    quarter = {"unified": {"budget_fraction": 0.25}}
    return {
        "plain": {"groups": []},
        "dare": {"groups": [{"name": "all", "features": ["item", "category", "position"], "chain": [{"dare": half}]},
                            {"name": "side", "features": ["user"]}]},
        "sid": {"groups": [{"name": "item", "features": ["item"], "chain": [sid]}, {"name": "rest"}]},
        "unified": {"groups": [{"name": "item", "features": ["item"]},
                               {"name": "context", "features": ["category", "position"], "chain": [quarter]},
                               {"name": "side", "features": ["user"], "chain": [quarter]}]},
        "composed": {"groups": [{"name": "item", "features": ["item"], "chain": [sid, {"dare": half}]},
                                {"name": "context", "features": ["category", "position"], "chain": [quarter, {"dare": half}]},
                                {"name": "side", "features": ["user"], "chain": [quarter]}]},
        # the item id row kept next to its pieces (with_id), both multiplexed into a quarter-size table
        "composed+id": {"groups": [{"name": "item", "features": ["item"],
                                    "chain": [{"semantic_ids": {**sid["semantic_ids"], "with_id": True}}, quarter, {"dare": half}]},
                                   {"name": "context", "features": ["category", "position"], "chain": [quarter, {"dare": half}]},
                                   {"name": "side", "features": ["user"], "chain": [quarter]}]},
    }


def run_one(name: str, embedding: dict[str, Any], seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cfg = {
        "task": "sequence", "name": f"composed_din_{name}",
        "data": {"dataset": "amazon_beauty", "path": str(args.data), "max_history": 50, "max_users": args.max_users,
                 "num_negatives": 1, "seed": 0},
        "model": {"name": "din", "embedding_dim": args.dim, "side_features": ["user"],
                  "din": {"attention_hidden": [80, 40], "mlp": [200, 80], "mba_lambda": 0.0}},
        "embedding": embedding,
        "train": {"epochs": args.epochs, "batch_size": 1024, "eval_batch_size": 4096, "seed": seed, "progress": False,
                  "tensorboard": False, "early_stopping_patience": 1, "embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05},
                  "dense_optimizer": {"name": "adam", "lr": 0.001}},
        "sharding": {"type": "row_wise"},
    }
    config = work / f"{name}_s{seed}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = work / f"{name}_s{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "recsys_emb",
           "train", "--config", str(config), "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"variant": name, "seed": seed, "test_auc": metrics["test"]["auc"], "test_gauc": metrics["test"]["gauc"],
            "embedding_bytes": 4 * metrics["embedding_parameters"], "epochs": metrics.get("epochs_completed"),
            "users": metrics.get("data", {}).get("users"),
            "seconds": time.perf_counter() - t0}


def summarise(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        mine = [r for r in runs if r["variant"] == name]
        if not mine:
            continue
        def stat(key: str) -> tuple[float, float]:
            values = [r[key] for r in mine]
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append({"variant": name, "seeds": len(mine), "test_auc": stat("test_auc"), "test_gauc": stat("test_gauc"),
                     "embedding_bytes": mine[0]["embedding_bytes"], "seconds": stat("seconds")})
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = result["summary"]
    plain = next((r for r in rows if r["variant"] == "plain"), None)
    lines = ["# Composed techniques in one sharded DIN (benchmarks/composed_din.py)", "",
             f"Command: `{result['command']}`", "",
             f"Amazon Beauty ({result['users']} users), DIN + user side feature, 2 gloo ranks (torchrun, CPU), row-wise tables; "
             f"{result['epochs']} epoch(s) max, early stopping on validation AUC; mean ± std over seeds. "
             f"Machine: {result['machine']}, 1 torch thread per rank.", "",
             "| variant | seeds | test AUC | test GAUC | embedding bytes | bytes vs plain | seconds/run |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['embedding_bytes'] / plain['embedding_bytes']:.3f}" if plain else "-"
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['test_auc'][0]:.4f} ± {r['test_auc'][1]:.4f} | "
                     f"{r['test_gauc'][0]:.4f} ± {r['test_gauc'][1]:.4f} | {r['embedding_bytes']:,} | {ratio} | {r['seconds'][0]:.0f} |")
    singles = [r for r in rows if r["variant"] in ("dare", "sid", "unified")]
    for composed in [r for r in rows if r["variant"].startswith("composed")]:
        if not singles or not plain:
            break
        best = max(singles, key=lambda r: r["test_auc"][0])
        auc_ok = composed["test_auc"][0] >= best["test_auc"][0]
        bytes_ok = composed["embedding_bytes"] <= plain["embedding_bytes"] / 2
        lines += ["", f"Goal ({composed['variant']}): AUC {composed['test_auc'][0]:.4f} vs the best single technique "
                      f"({best['variant']}) {best['test_auc'][0]:.4f}: {'holds' if auc_ok else 'FAILS'}; bytes "
                      f"{composed['embedding_bytes'] / plain['embedding_bytes']:.3f} x plain: {'holds' if bytes_ok else 'FAILS'} (<= 0.5)."]
    lines += ["", "What this does not show: SIDs from attribute ids (the files have no item text), one RQ-VAE seed, "
                  "a short training budget; CPU times are noisy (a shared 2-core machine)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with Beauty.txt(.gz) and Beauty_item2attributes.json(.gz)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["plain", "dare", "sid", "unified", "composed", "composed+id"])
    p.add_argument("--max-users", type=int, default=None, help="first N users only (quick runs)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "composed_din")
    p.add_argument("--work", type=Path, default=Path("/tmp/composed_din"), help="run folders and the SID file")
    args = p.parse_args()
    if not (args.data / "Beauty_item2attributes.json.gz").is_file():
        raise SystemExit(f"{args.data}: Beauty files not found (see datasets/amazon_seq/README.md)")
    args.work.mkdir(parents=True, exist_ok=True)
    codes = sid_codes(args.work, args.data)
    table = variants(codes, args.dim)
    json_path = args.out.with_suffix(".json")
    result: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": []}
    result.update(command="python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]),
                  machine=f"{platform.machine()} {os.cpu_count()} cores", epochs=args.epochs, dim=args.dim,
                  variants_spec=table)
    for seed in args.seeds:
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in result["runs"]):
                continue
            result["runs"].append(run_one(name, table[name], seed, args, args.work))
            result["summary"] = summarise(result["runs"], list(table))
            result["users"] = result["runs"][-1]["users"]
            atomic_save_json(json_path, result)
            atomic_write_text(args.out.with_suffix(".md"), markdown(result))
            print(f"[composed_din] {name} seed {seed}: AUC {result['runs'][-1]['test_auc']:.4f}", flush=True)


if __name__ == "__main__":
    main()
