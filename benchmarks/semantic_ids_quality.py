"""Code quality of our semantic IDs next to a reference assignment (Amazon 2018 Industrial_and_Scientific).

Protocol: item text (title, brand, categories, description) of the 3,686 MiniOneRec items is encoded
with all-MiniLM-L6-v2 (``recsys-emb sid embed``, configs/sid_industrial.yaml); an RQ-VAE with the
reference's shape (3 levels x 256 codes) is trained with several seeds and assigns codes. Reported
for ours (before the collision suffix) and for MiniOneRec's reference codes (an RQ-VAE on Qwen text
embeddings): collision rate, unique-ID ratio, largest collision group, per-level code usage and
perplexity, and the mean pairwise content cosine similarity (in OUR MiniLM space, for both code
sets) of item pairs by the length of the code prefix they share (0 = differ at level 1).

    python benchmarks/semantic_ids_quality.py --embeddings runs/sid_industrial/emb.npy [--seeds 0 1 2]

Writes benchmarks/results/semantic_ids_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.semantic_ids.codes import code_metrics  # noqa: E402
from recsys_emb.semantic_ids.config import SIDConfig  # noqa: E402
from recsys_emb.semantic_ids.embed import load_keys, load_matrix  # noqa: E402
from recsys_emb.semantic_ids.train import assign_ids, evaluate_rqvae, train_rqvae  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "amazon2018_industrial_text_sid"


def read_reference(path: Path, keys: list[str]) -> np.ndarray:
    """MiniOneRec index.json {item: ["<a_x>", "<b_y>", "<c_z>"]} -> (N, 3) codes in ``keys`` order."""
    data = json.loads(path.read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: no reference SID for items {missing[:10]}")
    return np.array([[int(tok.split("_")[1].rstrip(">")) for tok in data[k]] for k in keys], dtype=np.int64)


def prefix_similarity(x: np.ndarray, codes: np.ndarray) -> list[dict]:
    """Mean cosine of item pairs (i < j) grouped by the length of their shared code prefix."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = xn @ xn.T  # (N, N)
    n, levels = codes.shape
    shared = np.zeros((n, n), dtype=np.int64)
    same = np.ones((n, n), dtype=bool)
    for lvl in range(levels):
        same &= codes[:, lvl][:, None] == codes[:, lvl][None, :]
        shared += same
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    rows = []
    for m in range(levels + 1):
        mask = upper & (shared == m)
        rows.append({"shared_prefix": m, "pairs": int(mask.sum()),
                     "mean_cosine": float(sim[mask].mean()) if mask.any() else None})
    return rows


def _encoder_name(path: Path) -> str:
    meta = path.with_suffix(".keys.json")
    return json.loads(meta.read_text()).get("encoder", "unknown") if meta.exists() else "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", type=Path, required=True, help="MiniLM item vectors from `recsys-emb sid embed`")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "sid_industrial.yaml")
    p.add_argument("--reference", type=Path, default=DATA / "index" / "Industrial_and_Scientific.index.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "semantic_ids_quality")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core machine)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    cfg = load_config(SIDConfig, args.config, args.overrides)
    cfg.train.progress = False
    x = load_matrix(args.embeddings)
    keys = load_keys(args.embeddings) or [str(i) for i in range(len(x))]
    ref = read_reference(args.reference, keys)
    ref_sizes = [max(256, int(ref[:, lvl].max()) + 1) for lvl in range(ref.shape[1])]
    result = {
        "items": len(keys), "embedding_dim": int(x.shape[1]), "encoder": _encoder_name(args.embeddings), "config": str(args.config.resolve().relative_to(REPO)) if args.config.resolve().is_relative_to(REPO) else str(args.config),
        "overrides": args.overrides, "rqvae": vars(cfg.rqvae) | {}, "train": {k: v for k, v in vars(cfg.train).items()},
        "reference": {**code_metrics(ref, ref_sizes), "prefix_similarity": prefix_similarity(x, ref)},
        "ours": [], "machine": platform.platform(), "note": "2 shared CPU cores; times are distorted by other jobs",
    }
    for seed in args.seeds:
        cfg.train.seed = seed
        t0 = time.time()
        model, history = train_rqvae(x, cfg.rqvae, cfg.train)
        metrics = evaluate_rqvae(model, x)
        sids = assign_ids(model, x, keys)
        metrics.update(seed=seed, train_seconds=round(time.time() - t0, 1), suffix_size=sids.level_sizes[-1],
                       unique_after_suffix=len({tuple(r) for r in sids.codes.tolist()}) == len(keys),
                       final_loss=history[-1]["loss"],
                       prefix_similarity=prefix_similarity(x, sids.codes[:, :-1]))
        result["ours"].append(metrics)
        print(json.dumps({k: metrics[k] for k in ("seed", "collision_rate", "unique_id_ratio", "usage", "recon_mse")}), flush=True)
        atomic_save_json(args.out.with_suffix(".json"), result)  # after every seed: a cut-short run keeps its seeds
        atomic_write_text(args.out.with_suffix(".md"), render(result))
    return 0


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def render(r: dict) -> str:
    ours, ref = r["ours"], r["reference"]
    levels = len(ref["usage"])
    lines = [
        "# Semantic-ID code quality: Amazon 2018 Industrial_and_Scientific",
        "",
        f"{r['items']} items, content vectors from `{r['encoder']}` ({r['embedding_dim']}-d), RQ-VAE "
        f"{r['rqvae']['num_levels']} x {r['rqvae']['codebook_size']} (`{r['config']}`, overrides {r['overrides']}), "
        f"{len(ours)} seeds (mean ± sd). Reference: MiniOneRec's 3 x 256 codes (RQ-VAE on Qwen embeddings). "
        "Produced by `benchmarks/semantic_ids_quality.py`.",
        "",
        "| codes | collision rate | unique-ID ratio | largest group | " + " | ".join(f"usage L{i + 1}" for i in range(levels))
        + " | " + " | ".join(f"perplexity L{i + 1}" for i in range(levels)) + " |",
        "|---" * (4 + 2 * levels) + "|",
        f"| ours | {_mean_sd([o['collision_rate'] for o in ours])} | {_mean_sd([o['unique_id_ratio'] for o in ours])} | "
        f"{max(o['max_collision'] for o in ours)} | "
        + " | ".join(_mean_sd([o['usage'][i] for o in ours]) for i in range(levels)) + " | "
        + " | ".join(f"{statistics.mean([o['perplexity'][i] for o in ours]):.1f}" for i in range(levels)) + " |",
        f"| reference | {ref['collision_rate']:.4f} | {ref['unique_id_ratio']:.4f} | {ref['max_collision']} | "
        + " | ".join(f"{u:.4f}" for u in ref["usage"]) + " | " + " | ".join(f"{p:.1f}" for p in ref["perplexity"]) + " |",
        "",
        "After the collision suffix every one of our IDs is unique: "
        f"{all(o['unique_after_suffix'] for o in ours)} (suffix level sizes {[o['suffix_size'] for o in ours]}).",
        "",
        "Mean pairwise content cosine similarity (our vectors, for both code sets) by shared code prefix length "
        "(pairs i < j):",
        "",
        "| shared prefix | ours (mean over seeds) | pairs (seed 0) | reference | pairs |",
        "|---|---|---|---|---|",
    ]
    for m in range(levels + 1):
        vals = [o["prefix_similarity"][m]["mean_cosine"] for o in ours if o["prefix_similarity"][m]["mean_cosine"] is not None]
        rs = ref["prefix_similarity"][m]
        lines.append(f"| {m} | {statistics.mean(vals):.4f} | {ours[0]['prefix_similarity'][m]['pairs']} | "
                     f"{rs['mean_cosine'] if rs['mean_cosine'] is None else round(rs['mean_cosine'], 4)} | {rs['pairs']} |"
                     if vals else f"| {m} | - | 0 | {rs['mean_cosine']} | {rs['pairs']} |")
    lines += ["", f"RQ-VAE reconstruction MSE: {_mean_sd([o['recon_mse'] for o in ours])}; training time per seed "
              f"{[o['train_seconds'] for o in ours]} s ({r['note']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
