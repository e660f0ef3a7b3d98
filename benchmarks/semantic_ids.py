"""Cold-start ranking with semantic IDs: DIN with random-hash item ids vs SID item features (Singh et al. 2024).

Protocol (recsys_emb/data/cold_start.py): Amazon "Scientific" (UniSRec files, 1,585 items, 2,928 users).
Per seed ``s``, 15% of the items are HELD OUT with ``holdout_seed = s``: all their interactions are
removed from the training histories and targets (they never occur in training, not even as negatives);
the remaining sequences follow leave-last-out (train / valid / test on known items, popularity
negatives). Every removed interaction is a NEW-ITEM test positive (history = the user's kept
behaviours before it), with 4 negatives drawn uniformly from the held-out items outside the user's
sequence. Reported on the test split of the best-validation epoch (validation: known items only):
AUC overall (known-item and new-item test examples pooled), on known ("warm") items, and on new items.

Item features of DIN (all else equal: same data, split, optimiser, epochs, early stopping, seed). Each
variant is the chain of the config's ``item`` table group (``embedding.groups``; the other groups,
e.g. ``rest`` = position, are kept as the config has them):

* ``hash``: random-hash item ids: the config's own item chain, ``[{hash: {num_rows: 1585}}]`` (salted
  hash into 1,585 rows, the catalogue size), with ``hash_seed`` = the run's seed;
* ``id``: vocabulary item ids, one row per item (chain ``[]``);
* ``unigram`` / ``bigram`` / ``prefix_ngram`` / ``sentencepiece``: chain ``[{semantic_ids: {...}}]``:
  the item embedding is the sum of the embeddings of the pieces of its semantic ID (3 RQ-VAE levels x
  64 codes + collision suffix); the piece table holds only pieces seen on training items (``mapping:
  vocab``, unseen pieces -> one shared row), and SentencePiece (vocabulary 512) is trained on the
  training items' IDs weighted by their training counts;
* ``id+prefix_ngram``: ``semantic_ids`` with ``with_id: true``: vocabulary id row + pooled pieces.

The former ``hash+prefix_ngram`` variant (random-HASHED id row + SID pieces, the old
``item_features: id+sid`` with ``item_hash_buckets``) has no embedding-spec form: a ``hash`` layout after
``semantic_ids`` would hash the pieces too. Its committed results stay in the report; it cannot be rerun.

The RQ-VAE (``recsys-emb sid train``, configs/sid_scientific.yaml) is trained on the MiniLM content
vectors of ALL catalogue items, held-out ones included: it sees their TEXT only, never an interaction
(that is the point of content-derived IDs). One RQ-VAE (seed 0) serves every ranking seed.

    python benchmarks/semantic_ids.py --codes runs/sid_scientific/sids.npz [--seeds 0 1 2] [--variants hash unigram ...]

Writes benchmarks/results/semantic_ids.{json,md} (after every run, so a cut-short run keeps its rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup, technique_entry  # noqa: E402
from recsys_emb.config.io import load_config  # noqa: E402
from recsys_emb.data.cold_start import make_sequence_dataset  # noqa: E402
from recsys_emb.config.sequence import SequenceExperimentConfig  # noqa: E402
from recsys_emb.train.tasks.sequence import SequenceTask  # noqa: E402
from recsys_emb.train.trainer import fit  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

# variant -> (item features: id | sid | id+sid, hashed item ids?, tokenizer)
VARIANTS = {
    "hash": ("id", True, None),
    "id": ("id", False, None),
    "unigram": ("sid", False, "unigram"),
    "bigram": ("sid", False, "bigram"),
    "prefix_ngram": ("sid", False, "prefix_ngram"),
    "sentencepiece": ("sid", False, "sentencepiece"),
    "id+prefix_ngram": ("id+sid", False, "prefix_ngram"),
    "hash+prefix_ngram": ("id+sid", True, "prefix_ngram"),  # no embedding-spec form: kept to report old runs
}
RUNNABLE = [v for v in VARIANTS if v != "hash+prefix_ngram"]
BASELINE = "hash"
GOAL_NEW, GOAL_OVERALL = 0.02, 0.005
# semantic_ids options of the SID variants (the tokenizer, codes and seed are set per run); a `semantic_ids`
# entry in the config's item chain (e.g. set with --set) takes precedence over these
SID_OPTIONS = {"mapping": "vocab", "sentencepiece_vocab_size": 512, "raw_id_offset": 0}


def item_group(cfg: SequenceExperimentConfig) -> int:
    """Index of the embedding group that holds the ``item`` field."""
    for i, g in enumerate(cfg.embedding.groups):
        if g.features is not None and "item" in g.features:
            return i
    raise SystemExit(f"{cfg.name}: the config needs an embedding group with features: [item] "
                     "(see configs/amazon_scientific_coldstart.yaml)")


def chain_entry(chain: list, technique: str) -> dict | None:
    """Options of ``technique`` in ``chain`` (None when absent)."""
    for e in chain:
        name, options = technique_entry(e, "item")
        if name == technique:
            return options
    return None


def variant_config(base: SequenceExperimentConfig, variant: str, seed: int, codes: str) -> SequenceExperimentConfig:
    if variant not in RUNNABLE:
        raise SystemExit(f"variant '{variant}' (a hashed item id row + SID pieces) has no embedding-spec form: "
                         "a hash layout after semantic_ids would hash the pieces too; run 'id+prefix_ngram' "
                         "(vocabulary id row + pieces) instead")
    cfg = copy.deepcopy(base)
    features, hashed, tokenizer = VARIANTS[variant]
    cfg.name = f"{base.name}:{variant}:seed{seed}"
    i = item_group(cfg)
    group = cfg.embedding.groups[i]
    if hashed:
        options = chain_entry(group.chain, "hash")
        if options is None:
            raise SystemExit(f"variant 'hash' uses the config's item chain, which has no hash entry: {group.chain}")
        chain: list = [{"hash": {**options, "hash_seed": seed}}]
    elif features == "id":
        chain = []
    else:
        sid = {**SID_OPTIONS, **(chain_entry(group.chain, "semantic_ids") or {}), "codes": codes, "tokenizer": tokenizer, "seed": seed}
        chain = [{"semantic_ids": {**sid, "with_id": features == "id+sid"}}]
    groups = list(cfg.embedding.groups)
    groups[i] = TableGroup(name=group.name, features=group.features, chain=chain, dim=group.dim)
    cfg.embedding = EmbeddingSpec(groups=groups)
    cfg.train.seed = seed
    cfg.data.seed = seed
    cfg.data.holdout_seed = seed
    cfg.train.progress = False
    return cfg


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def summarise(runs: list[dict]) -> dict:
    """Per variant: mean/sd of the AUCs, and paired (same seed) differences to the baseline."""
    out: dict[str, dict] = {}
    by = {}
    for r in runs:
        by.setdefault(r["variant"], {})[r["seed"]] = r
    base = by.get(BASELINE, {})
    for variant, seeds in by.items():
        s: dict = {"seeds": sorted(seeds)}
        for key in ("overall", "warm", "new_items"):
            vals = [seeds[k][key] for k in sorted(seeds)]
            s[key] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            paired = [seeds[k][key] - base[k][key] for k in sorted(seeds) if k in base]
            if paired and variant != BASELINE:
                s[f"{key}_minus_{BASELINE}"] = {"mean": statistics.mean(paired), "sd": statistics.stdev(paired) if len(paired) > 1 else 0.0}
        if VARIANTS[variant][2] is not None and f"new_items_minus_{BASELINE}" in s:  # the goal concerns SID variants
            s["goal_new_items"] = s[f"new_items_minus_{BASELINE}"]["mean"] >= GOAL_NEW
            s["goal_overall"] = s[f"overall_minus_{BASELINE}"]["mean"] >= -GOAL_OVERALL
        out[variant] = s
    return out


def render(result: dict) -> str:
    summ = result["summary"]
    lines = [
        "# Cold-start ranking with semantic IDs: DIN on Amazon Scientific",
        "",
        f"{result['data']['catalogue_items']} items, {result['data']['users']} users; "
        f"{result['data']['holdout_items']} items (15%) held out of training per seed (a different seeded set per seed), "
        f"{result['data']['new_item_test_positives']} new-item test positives (seed {result['seeds'][0]}), 4 negatives each "
        "(uniform over held-out items); known-item test: leave-last-out, 4 popularity negatives. "
        f"Config `{result['config']}` (overrides {result['overrides']}); SIDs `{result['codes']}` "
        f"(level sizes {result['level_sizes']}). Produced by `benchmarks/semantic_ids.py`; protocol in its docstring "
        "and in docs/techniques/semantic_ids.md.",
        "",
        f"Test AUC at the best-validation epoch, mean ± sd over seeds {result['seeds']}; Δ = paired difference to `{BASELINE}` "
        "(same seed, same split).",
        "",
        "| item features | AUC overall | AUC known items | AUC new items | Δ overall | Δ new items | goal (Δnew ≥ 0.02, Δoverall ≥ -0.005) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in result["variants"]:
        if variant not in summ:
            continue
        s = summ[variant]
        d_o = s.get(f"overall_minus_{BASELINE}")
        d_n = s.get(f"new_items_minus_{BASELINE}")
        goal = "-" if "goal_new_items" not in s else ("met" if s["goal_new_items"] and s["goal_overall"] else "NOT met")
        o, w, n = s["overall"], s["warm"], s["new_items"]
        d_o_txt = "-" if d_o is None else f"{d_o['mean']:+.4f} ± {d_o['sd']:.4f}"
        d_n_txt = "-" if d_n is None else f"{d_n['mean']:+.4f} ± {d_n['sd']:.4f}"
        lines.append(
            f"| {variant} | {o['mean']:.4f} ± {o['sd']:.4f} | {w['mean']:.4f} ± {w['sd']:.4f} | "
            f"{n['mean']:.4f} ± {n['sd']:.4f} | {d_o_txt} | {d_n_txt} | {goal} |"
        )
    ids = {r["seed"]: r for r in result["runs"] if r["variant"] == "id"}
    if ids:
        lines += ["", "Paired differences to the collision-free vocabulary-id model `id` (every item its own row; new items "
                  "get never-trained rows), mean ± sd over the seeds both have:", "",
                  "| item features | Δ overall | Δ known items | Δ new items |", "|---|---|---|---|"]
        for variant in result["variants"]:
            runs = {r["seed"]: r for r in result["runs"] if r["variant"] == variant}
            common = sorted(set(runs) & set(ids))
            if variant == "id" or not common:
                continue
            cells = []
            for key in ("overall", "warm", "new_items"):
                d = [runs[k][key] - ids[k][key] for k in common]
                cells.append(f"{statistics.mean(d):+.4f} ± {statistics.stdev(d) if len(d) > 1 else 0.0:.4f}")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Per run (best epoch, seconds of wall time on a shared, busy 2-core machine):", "",
              "| variant | seed | best epoch | AUC overall | known | new | seconds |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['best_epoch']} | {r['overall']:.4f} | {r['warm']:.4f} | {r['new_items']:.4f} | "
                     f"{r['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "amazon_scientific_coldstart.yaml")
    p.add_argument("--codes", default="runs/sid_scientific/sids.npz", help="SID file of `recsys-emb sid assign` for the Scientific items")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["hash", "unigram", "prefix_ngram", "sentencepiece"], choices=RUNNABLE)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "semantic_ids")
    p.add_argument("--append", action="store_true", help="keep the runs already in OUT.json and add the missing (variant, seed) runs")
    args = p.parse_args(argv)
    import torch

    from recsys_emb.semantic_ids.codes import SemanticIds

    base = load_config(SequenceExperimentConfig, args.config, args.overrides)
    config_name = str(args.config.resolve().relative_to(REPO)) if args.config.resolve().is_relative_to(REPO) else str(args.config)
    result = {"config": config_name, "overrides": args.overrides, "codes": args.codes,
              "level_sizes": SemanticIds.load(args.codes).level_sizes, "seeds": args.seeds, "variants": args.variants,
              "goal": {"new_items_auc_gain": GOAL_NEW, "overall_auc_max_loss": GOAL_OVERALL, "baseline": BASELINE},
              "machine": platform.platform(), "torch": torch.__version__, "runs": [], "summary": {}, "data": {}}
    if args.append and args.out.with_suffix(".json").exists():
        old = json.loads(args.out.with_suffix(".json").read_text())
        if (old["config"], old["overrides"], old["codes"]) != (config_name, args.overrides, args.codes):
            raise SystemExit(f"--append: {args.out.with_suffix('.json')} was made with another config / overrides / codes")
        result["runs"], result["data"] = old["runs"], old["data"]
        result["seeds"] = sorted(set(old["seeds"]) | set(args.seeds))
        result["variants"] = list(dict.fromkeys([*old["variants"], *args.variants]))
    done = {(r["variant"], r["seed"]) for r in result["runs"]}
    for seed in args.seeds:
        ds = None
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            cfg = variant_config(base, variant, seed, args.codes)
            if ds is None:
                ds = make_sequence_dataset(cfg.data)  # same split / negatives for every variant of this seed
                if not result["data"]:
                    result["data"] = ds.summary()
            t0 = time.time()
            with tempfile.TemporaryDirectory() as run_dir:
                res = fit(SequenceTask(cfg, dataset=ds), cfg, run_dir)
            test = res["test"]
            run = {"variant": variant, "seed": seed, "best_epoch": res["best_epoch"], "overall": test["auc"],
                   "warm": test["warm"]["auc"], "new_items": test["new_items"]["auc"], "valid": res["valid"]["auc"],
                   "gauc_new_items": test["new_items"]["gauc"], "seconds": time.time() - t0, "history": res["history"]}
            result["runs"].append(run)
            result["summary"] = summarise(result["runs"])
            print(json.dumps({k: run[k] for k in ("variant", "seed", "best_epoch", "overall", "warm", "new_items", "seconds")}), flush=True)
            atomic_save_json(args.out.with_suffix(".json"), result)
            atomic_write_text(args.out.with_suffix(".md"), render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
