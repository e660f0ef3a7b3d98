"""Speed/recall trade-off of the augmented HNSW and IVF-Flat item indexes against the exact index (issue 9).

For one data set split (``--split valid``: Gowalla's 10 % train holdout, base model trained without
it, or ML-1M's valid.txt; ``--split test``: the test file, base model trained on all training items) this builds the exact
index once and an HNSW index (``mips_transform: augment``) per ``(hnsw_m, ef_construction)``, and
for every ``ef_search`` retrieves K = 100 items (training items excluded) for the same users, one
thread. Per point: recall@100 and its ratio to the exact index's, overlap with the exact top-100,
and queries/s and its ratio to the exact index's, measured in the same process both as wall time
and as process CPU time (the machine is shared: CPU time is much less disturbed by other jobs;
both are reported). The exact index is timed at the start and at the end of the run and the mean
of the two is the reference.

``ef_search`` is a floor: the index raises efSearch to the number of results it fetches per batch
(K + the batch's largest exclusion list, see ``recsys_emb/retrieval/index.py``), so values below
that change nothing; the script records the effective efSearch (mean over queries).

``--ivf-nprobe P ...`` adds IVF-Flat points (``kind: ivf_flat``, one index with ``--ivf-nlist`` lists,
0 = the index default 4 sqrt(N); ``--ivf-mips augment`` (default): L2 lists over the Bachrach et al.
augmented items, ``none``: inner-product quantizer), one point per nprobe; ``--hnsw-m`` with no
value skips the HNSW points. Every point records its ``kind``.

``--seed S`` selects the base model (``<dataset>_lightgcn_train_s{S}`` in ``--work-dir``); seed 0 results
go to the sections ``valid``, ``test``, ``valid_paired``, ``test_paired``, other seeds to the same names
with ``_s{S}`` appended. The IVF operating point is chosen on validation (seed 0, paired timing when
present) as the fastest IVF point with recall ratio >= ``--target-recall`` + ``--select-margin`` and
reported on every test section (every base seed) that has it.

Base embeddings come from ``benchmarks/knn_embed.py``'s cache (``--work-dir``, layout
``<dataset>_lightgcn_{holdout,train}_s{seed}/embeddings.pt``; trained there when missing) or from
``--embeddings FILE``. Points accumulate in ``--out``/``NAME.json`` (``--merge``); the markdown is
rewritten from the JSON each time; ``--select-on valid`` picks the fastest point (CPU-time ratio)
with validation recall ratio >= ``--target-recall`` and reports the test row of that point.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/knn_faiss_tradeoff.py --split valid --hnsw-m 16 32 \\
        --ef-search 1 128 192 256 --merge
    OMP_NUM_THREADS=1 python benchmarks/knn_faiss_tradeoff.py --split valid --hnsw-m --ivf-nprobe 4 8 16 32 64 \\
        --paired --merge
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.retrieval.driver import evaluation_users, load_data, load_embeddings, set_base_seed  # noqa: E402
from recsys_emb.retrieval.evaluate import ranking_metrics  # noqa: E402
from recsys_emb.retrieval.index import Csr, IndexConfig, build_index, exclude_to_csr  # noqa: E402
from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

K = 100
SECTIONS = ("valid", "test", "valid_paired", "test_paired")
IVF_MIPS = ("augment", "none")


def section_key(split: str, paired: bool, seed: int) -> str:
    """JSON section of a run: ``<split>[_paired][_s<seed>]`` (seed 0 keeps the original names)."""
    return split + ("_paired" if paired else "") + (f"_s{seed}" if seed else "")


def sections(results: dict) -> list[str]:
    """Run sections in display order: the seed-0 ones, then other seeds by seed."""
    keys = [k for k in results if isinstance(results[k], dict) and "points" in results[k]]
    def order(k: str) -> tuple:  # noqa: E306
        base_key, _, seed = k.partition("_s")
        return (int(seed or 0), SECTIONS.index(base_key) if base_key in SECTIONS else 99, k)
    return sorted(keys, key=order)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="gowalla", choices=["gowalla", "ml1m"])
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--seed", type=int, default=0, help="base-model seed")
    p.add_argument("--data", type=Path, help="interaction folder (overrides the config's data.path)")
    p.add_argument("--embeddings", type=Path, help="base embeddings (.pt/.npz); default: the knn_embed.py cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "knn_tradeoff", help="base-model cache")
    p.add_argument("--hnsw-m", nargs="*", type=int, default=[16, 32], help="graph degrees (none: no HNSW points)")
    p.add_argument("--ef-construction", nargs="+", type=int, default=[200])
    p.add_argument("--ef-search", nargs="+", type=int, default=[1, 128, 192, 256],
                   help="efSearch floors (1 = only the per-batch K + exclusions floor)")
    p.add_argument("--ivf-nprobe", nargs="*", type=int, default=[], help="IVF-Flat points, one per nprobe")
    p.add_argument("--ivf-nlist", type=int, default=0, help="IVF lists (0 = index default 4 sqrt(N), <= N/39)")
    p.add_argument("--ivf-mips", default="augment", choices=IVF_MIPS,
                   help="IVF over the augmented items (L2 lists) or with an inner-product quantizer")
    p.add_argument("--query-batch-size", type=int, default=1024)
    p.add_argument("--no-ef-floor", action="store_true",
                   help="index.ef_search_floor=false: efSearch as given, not raised to K + exclusions")
    p.add_argument("--max-users", type=int, default=0, help="seeded random subset of evaluated users (0 = all)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--target-speed", type=float, default=5.0)
    p.add_argument("--select-margin", type=float, default=0.02,
                   help="IVF choice: validation recall ratio >= target-recall + this margin")
    p.add_argument("--select-on", default="valid", choices=["valid", "test"],
                   help="split whose points choose the operating point")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="knn_faiss_tradeoff")
    p.add_argument("--merge", action="store_true", help="keep the output JSON's points of other runs")
    p.add_argument("--paired", action="store_true",
                   help="time the exact index right before every point and use that as the point's reference "
                        "(stored under '<split>_paired')")
    p.add_argument("--report-only", action="store_true", help="only rewrite the markdown from the JSON")
    return p.parse_args(argv)


def _knn_embed_benchmark():  # noqa: ANN202
    """benchmarks/knn_embed.py as a module, loaded by path: putting benchmarks/ on sys.path would let its
    files shadow installed packages of the same name (benchmarks/kernels.py vs the `kernels` package)."""
    import importlib.util  # noqa: PLC0415

    name = "bench_knn_embed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("knn_embed.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules[name]


def base(args: argparse.Namespace):  # noqa: ANN201
    """(config, data, user, item, base info) for ``args.split``."""
    kb = _knn_embed_benchmark()  # benchmarks/knn_embed.py: configs and the base-model cache

    kargs = kb.parse_args(["--datasets", args.dataset, "--base", "lightgcn", "--work-dir", str(args.work_dir),
                           "--set", "base.graph.train.progress=false", "--max-users", str(args.max_users)])
    extra = [f"data.path={args.data.resolve()}"] if args.data else []
    cfg = kb.make_config(args.dataset, kargs, [f"eval.split={args.split}", "eval.seed=0", *extra])
    set_base_seed(cfg, args.seed)
    data = load_data(cfg)
    if args.embeddings:
        user, item = load_embeddings(args.embeddings)
        info = {"source": str(args.embeddings)}
    else:
        user, item, info = kb.cached_base(cfg, data, args.dataset, args.seed, kargs)
    return cfg, data, user, item, {k: v for k, v in info.items() if k != "eval_split_metrics"}


def effective_ef(exclude: Csr, num_items: int, batch: int, ef: int, floor: bool = True) -> float:
    """Mean over queries of the efSearch the index uses: max(ef, K + largest exclusion list of the batch)
    (``floor``), else ef."""
    if not floor:
        return float(ef)
    lengths = exclude.offsets[1:] - exclude.offsets[:-1]
    ordered = torch.sort(lengths, stable=True).values
    total = 0.0
    for s in range(0, ordered.numel(), batch):
        chunk = ordered[s:s + batch]
        total += chunk.numel() * max(ef, min(K + int(chunk.max()), num_items))
    return total / max(ordered.numel(), 1)


def timed_search(index, q: torch.Tensor, exclude: Csr) -> tuple[torch.Tensor, float, float]:  # noqa: ANN001
    w0, c0 = time.perf_counter(), time.process_time()
    ids = index.search(q, K, exclude).ids
    return ids, time.perf_counter() - w0, time.process_time() - c0


def overlap(ids: torch.Tensor, ref: torch.Tensor) -> float:
    hits = 0
    for a, r in zip(ids.tolist(), ref.tolist()):
        rs = {x for x in r if x >= 0}
        hits += len(rs.intersection(a)) / max(len(rs), 1)
    return hits / max(len(ref), 1)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    cfg, data, user, item, info = base(args)
    users = evaluation_users(data, cfg.eval)
    exclude = exclude_to_csr(data.exclusions(users), users.numel())
    test = data.test.select(users)
    q = user[users]
    n = users.numel()
    icfg = dataclasses.replace(cfg.index, kind="exact", threads=1, query_batch_size=args.query_batch_size,
                               mips_transform="augment", show_progress=False)
    exact = build_index(item, icfg)
    ref, w_a, c_a = timed_search(exact, q, exclude)
    exact_recall = ranking_metrics(ref, test, [K])[f"recall@{K}"]
    print(f"[{args.split}] {n} users, exact recall@{K} {exact_recall:.4f}, {n / w_a:.0f} q/s wall, "
          f"{n / c_a:.0f} q/s cpu", file=sys.stderr, flush=True)
    points = []

    def measure(ann, label: str, **fields) -> None:
        """Time ``ann`` on the users (after a fresh exact timing when --paired) and record one point."""
        pair = timed_search(exact, q, exclude)[1:] if args.paired else None
        ids, w, c = timed_search(ann, q, exclude)
        r = ranking_metrics(ids, test, [K])[f"recall@{K}"]
        pt = {"split": args.split, **fields, "recall@100": r, "recall_ratio": r / exact_recall,
              "overlap@100": overlap(ids, ref), "wall_seconds": w, "cpu_seconds": c, "qps_wall": n / w,
              "qps_cpu": n / c}
        if pair is not None:
            pt["exact_wall_seconds"], pt["exact_cpu_seconds"] = pair
        points.append(pt)
        print(f"[{args.split} s{args.seed}] {label} recall ratio {pt['recall_ratio']:.4f} overlap "
              f"{pt['overlap@100']:.4f} {pt['qps_wall']:.0f} q/s wall {pt['qps_cpu']:.0f} q/s cpu",
              file=sys.stderr, flush=True)

    for m in args.hnsw_m:
        for efc in args.ef_construction:
            hcfg = dataclasses.replace(icfg, kind="hnsw", hnsw_m=m, ef_construction=efc,
                                       ef_search_floor=not args.no_ef_floor)
            t0 = time.perf_counter()
            ann = build_index(item, hcfg)
            build_s = time.perf_counter() - t0
            for ef in args.ef_search:
                ann.config = dataclasses.replace(hcfg, ef_search=ef)  # read at search time
                eff = effective_ef(exclude, item.shape[0], args.query_batch_size, ef, not args.no_ef_floor)
                measure(ann, f"M={m} efC={efc} ef={ef} (eff {eff:.0f})", kind="hnsw", hnsw_m=m,
                        ef_construction=efc, ef_search=ef, ef_floor=not args.no_ef_floor,
                        effective_ef_search=eff, build_seconds=build_s)
    if args.ivf_nprobe:
        vcfg = dataclasses.replace(icfg, kind="ivf_flat", nlist=args.ivf_nlist, mips_transform=args.ivf_mips)
        t0 = time.perf_counter()
        ann = build_index(item, vcfg)
        build_s = time.perf_counter() - t0
        for nprobe in args.ivf_nprobe:
            ann.config = dataclasses.replace(vcfg, nprobe=nprobe)
            ann.index.nprobe = min(nprobe, ann.nlist)
            measure(ann, f"ivf_flat({args.ivf_mips}) nlist={ann.nlist} nprobe={nprobe}", kind="ivf_flat",
                    mips_transform=args.ivf_mips, nlist=ann.nlist, nprobe=int(ann.index.nprobe),
                    build_seconds=build_s)
    _, w_b, c_b = timed_search(exact, q, exclude)
    exact_wall, exact_cpu = (w_a + w_b) / 2, (c_a + c_b) / 2
    for pt in points:
        pt["speed_ratio_wall"] = pt.get("exact_wall_seconds", exact_wall) / pt["wall_seconds"]
        pt["speed_ratio_cpu"] = pt.get("exact_cpu_seconds", exact_cpu) / pt["cpu_seconds"]
    return {"split": args.split, "seed": args.seed, "dataset": args.dataset, "users": n, "max_users": args.max_users,
            "data": data.source, "base": info, "exact": {
                "recall@100": exact_recall, "wall_seconds": [w_a, w_b], "cpu_seconds": [c_a, c_b],
                "qps_wall": n / exact_wall, "qps_cpu": n / exact_cpu},
            "query_batch_size": args.query_batch_size, "command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread", "points": points}


def point_kind(p: dict) -> str:
    return p.get("kind", "hnsw")  # points written before IVF points existed are HNSW


def choose(results: dict, select_on: str, target_recall: float, kind: str | None = None) -> dict | None:
    """The point (of ``kind``, default any) with the highest CPU-time speed ratio whose ``select_on``
    recall ratio >= target (from the paired-timing section ``<select_on>_paired`` when there is one:
    its timings are steadier)."""
    run = results.get(f"{select_on}_paired") or results.get(select_on)
    if not run:
        return None
    ok = [p for p in run["points"] if p["recall_ratio"] >= target_recall and kind in (None, point_kind(p))]
    return max(ok, key=lambda p: p["speed_ratio_cpu"]) if ok else None


def same_point(a: dict, b: dict) -> bool:
    if point_kind(a) != point_kind(b):
        return False
    if point_kind(a) == "ivf_flat":
        return all(a[k] == b[k] for k in ("mips_transform", "nlist", "nprobe"))
    return all(a[k] == b[k] for k in ("hnsw_m", "ef_construction", "ef_search")) and \
        a.get("ef_floor", True) == b.get("ef_floor", True)


def describe(p: dict) -> str:
    if point_kind(p) == "ivf_flat":
        return f"IVF-Flat ({p['mips_transform']}) nlist {p['nlist']} nprobe {p['nprobe']}"
    return (f"HNSW M {p['hnsw_m']} efC {p['ef_construction']} ef {p['ef_search']}"
            f"{'' if p.get('ef_floor', True) else ' (no floor)'}")


def _goal(p: dict, args: argparse.Namespace) -> bool:
    return p["recall_ratio"] >= args.target_recall and p["speed_ratio_cpu"] >= args.target_speed


def _hnsw_rows(points: list[dict], args: argparse.Namespace) -> list[str]:
    lines = ["| hnsw_m | ef_construction | ef_search | eff ef | recall@100 | recall ratio | overlap@100 | "
             "q/s wall | speed ratio wall | q/s CPU | speed ratio CPU | build s | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["hnsw_m"], p["ef_construction"], p["effective_ef_search"])):
        ef_txt = f"{p['ef_search']}" if p.get("ef_floor", True) else f"{p['ef_search']} (no floor)"
        lines.append(f"| {p['hnsw_m']} | {p['ef_construction']} | {ef_txt} | "
                     f"{p['effective_ef_search']:.0f} | {p['recall@100']:.4f} | {p['recall_ratio']:.4f} | "
                     f"{p['overlap@100']:.4f} | {p['qps_wall']:.0f} | {p['speed_ratio_wall']:.2f} | "
                     f"{p['qps_cpu']:.0f} | {p['speed_ratio_cpu']:.2f} | {p['build_seconds']:.1f} | "
                     f"{'yes' if _goal(p, args) else 'no'} |")
    return lines


def _ivf_rows(points: list[dict], args: argparse.Namespace) -> list[str]:
    lines = ["| IVF-Flat lists | nlist | nprobe | recall@100 | recall ratio | overlap@100 | q/s wall | "
             "speed ratio wall | q/s CPU | speed ratio CPU | build s | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["mips_transform"], p["nlist"], p["nprobe"])):
        lists = "L2, augmented items" if p["mips_transform"] == "augment" else "inner product"
        lines.append(f"| {lists} | {p['nlist']} | {p['nprobe']} | {p['recall@100']:.4f} | {p['recall_ratio']:.4f} | "
                     f"{p['overlap@100']:.4f} | {p['qps_wall']:.0f} | {p['speed_ratio_wall']:.2f} | "
                     f"{p['qps_cpu']:.0f} | {p['speed_ratio_cpu']:.2f} | {p['build_seconds']:.1f} | "
                     f"{'yes' if _goal(p, args) else 'no'} |")
    return lines


DATASET_TEXT = {
    "gowalla": {"name": "Gowalla", "base": "3 layers, dim 64, 3 epochs, batch 16384, lr 0.02, seed 0",
                "valid": "10 % train holdout, base trained without it",
                "users": "Validation: trained without the 10 % holdout; the seed-0 files of `runs/knn_tradeoff` and "
                         "`runs/knn_embed_bench` are identical. All users with evaluation items (counts in each section)."},
    "ml1m": {"name": "ML-1M", "base": "3 layers, dim 64, 10 epochs, batch 8192, lr 0.01, seed 0",
             "valid": "valid.txt, the same base model as test: it never saw validation or test items",
             "users": "All users with evaluation items (counts in each section); 3,628 items."},
}


def markdown(results: dict, args: argparse.Namespace) -> str:
    secs = sections(results)
    d = DATASET_TEXT[args.dataset]
    lines = [f"# Augmented HNSW / IVF-Flat vs exact item index: speed/recall trade-off ({d['name']}, LightGCN)", "",
             "Generated by `benchmarks/knn_faiss_tradeoff.py`. Commands:", ""]
    for split in secs:
        lines.append(f"- {split}: `OMP_NUM_THREADS=1 {results[split]['command']}`")
    lines += ["", f"Base embeddings: LightGCN from `configs/retrieval_{args.dataset}_lightgcn.yaml` ({d['base']}; "
              "seeds 1 and 2 for the `_s1`/`_s2` sections), trained once per split and seed and cached in "
              f"`--work-dir`/`{args.dataset}_lightgcn_{{holdout,train}}_s{{seed}}/embeddings.pt` "
              f"(`benchmarks/knn_embed.py`'s cache layout). {d['users']}",
              "", "K = 100 retrieved per user, training items excluded, single-vector retrieval with the user "
              "embedding; HNSW over the Bachrach et al. MIPS augmentation (`index.mips_transform: augment`, L2 "
              "graph). `ef_search` is a floor: the index raises efSearch to K + the largest exclusion list of "
              "each 1024-query batch, so `ef_search = 1` is the smallest possible search and `eff ef` is the "
              "mean efSearch actually used. IVF-Flat points (`kind: ivf_flat`): one index per run, L2 coarse "
              "quantizer and L2 lists over the same augmented items (`mips_transform: augment`) unless marked "
              "inner product. Ratios are to the exact index (chunked matmul + top-k, torch, 1 "
              "thread) on the same users in the same process; the exact index was timed at the start and the "
              "end of each run and the mean is the reference. Speed ratios are given for wall time and for "
              "process CPU time: the 2-core machine was often shared with other jobs (load average 1.6-6 during "
              "the Gowalla runs), so wall times are inflated and noisy; the CPU-time ratio is steadier but also "
              "moves with the load (shared caches and cores): single measurements vary by about +-15 %, "
              "compare with the paired sections.", ""]
    for split in secs:
        run = results[split]
        e = run["exact"]
        title = f"validation ({d['valid']})" if split.startswith("valid") else "test"
        if "_paired" in split:
            title += ", paired timing (exact index timed right before every point; ratios to that run)"
        title += f", base-model seed {run.get('seed', 0)}"
        lines += [f"## {title}: {run['users']} users", "",
                  f"Base: `{json.dumps(run['base'])}`; machine: {run['machine']}.", "",
                  f"Exact: recall@100 {e['recall@100']:.4f}, {e['qps_wall']:.0f} q/s wall "
                  f"(runs {', '.join(f'{s:.1f}' for s in e['wall_seconds'])} s), {e['qps_cpu']:.0f} q/s CPU "
                  f"(runs {', '.join(f'{s:.1f}' for s in e['cpu_seconds'])} s).", ""]
        hnsw = [p for p in run["points"] if point_kind(p) == "hnsw"]
        ivf = [p for p in run["points"] if point_kind(p) == "ivf_flat"]
        if hnsw:
            lines += _hnsw_rows(hnsw, args) + [""]
        if ivf:
            lines += _ivf_rows(ivf, args) + [""]
    lines += ["## Operating point", ""]
    chosen = choose(results, args.select_on, args.target_recall, kind="hnsw")
    sec = f"{args.select_on}_paired" if f"{args.select_on}_paired" in results else args.select_on
    if chosen is None:
        lines.append(f"No HNSW {args.select_on} point reaches recall ratio >= {args.target_recall}.")
    else:
        lines.append(f"HNSW, chosen on **{sec}** (fastest by CPU-time speed ratio with recall ratio >= "
                     f"{args.target_recall}, no margin): hnsw_m {chosen['hnsw_m']}, ef_construction "
                     f"{chosen['ef_construction']}, "
                     f"ef_search {chosen['ef_search']}, ef_search_floor {str(chosen.get('ef_floor', True)).lower()} "
                     f"({sec}: recall ratio {chosen['recall_ratio']:.4f}, "
                     f"speed ratio {chosen['speed_ratio_cpu']:.2f}x CPU / {chosen['speed_ratio_wall']:.2f}x wall).")
        for tsec in ("test", "test_paired"):
            test_pt = next((p for p in results.get(tsec, {}).get("points", []) if same_point(p, chosen)), None)
            if test_pt is None:
                continue
            lines.append(f"{tsec} at that point: recall ratio {test_pt['recall_ratio']:.4f}, speed ratio "
                         f"{test_pt['speed_ratio_cpu']:.2f}x CPU / {test_pt['speed_ratio_wall']:.2f}x wall; goal "
                         f"(>= {args.target_recall} of exact recall at >= {args.target_speed}x, CPU time): "
                         f"**{'met' if _goal(test_pt, args) else 'not met'}**.")
    if chosen is not None and f"{args.select_on}_paired" in results and args.select_on in results:
        first = choose({args.select_on: results[args.select_on]}, args.select_on, args.target_recall, kind="hnsw")
        tp = first and next((p for p in results.get("test", {}).get("points", []) if same_point(p, first)), None)
        if first and tp:
            lines.append(f"The same rule on the first sweep ({args.select_on}, efSearch floor only; applied before the "
                         f"paired runs) chose hnsw_m {first['hnsw_m']}, ef_search {first['ef_search']} "
                         f"({first['recall_ratio']:.4f} at {first['speed_ratio_cpu']:.2f}x), which on test gave "
                         f"{tp['recall_ratio']:.4f} at {tp['speed_ratio_cpu']:.2f}x: not met. The no-floor grid "
                         "(`--no-ef-floor`) was added after that result.")
    bar = args.target_recall + args.select_margin
    ivf_pick = choose(results, args.select_on, bar, kind="ivf_flat")
    lines.append("")
    if ivf_pick is None:
        if any(point_kind(p) == "ivf_flat" for s_ in secs for p in results[s_]["points"]):
            lines.append(f"IVF-Flat: no {sec} point reaches recall ratio >= {bar:.3f}.")
    else:
        lines.append(f"IVF-Flat, chosen on **{sec}** (fastest by CPU-time speed ratio with recall ratio >= "
                     f"{args.target_recall} + margin {args.select_margin} = {bar:.3f}): {describe(ivf_pick)} "
                     f"({sec}: recall ratio {ivf_pick['recall_ratio']:.4f}, speed ratio "
                     f"{ivf_pick['speed_ratio_cpu']:.2f}x CPU / {ivf_pick['speed_ratio_wall']:.2f}x wall).")
    picks = [p for p in (ivf_pick, chosen) if p is not None]
    tsecs = [s_ for s_ in secs if s_.startswith("test")]
    if picks and tsecs:
        lines += ["", "Chosen points on the test split, per base-model seed (goal: recall ratio >= "
                  f"{args.target_recall} at CPU speed ratio >= {args.target_speed}):", "",
                  "| test section | seed | point | recall ratio | speed ratio CPU | speed ratio wall | goal |",
                  "|---|---|---|---|---|---|---|"]
        for pick in picks:
            for tsec in tsecs:
                tp = next((p for p in results[tsec]["points"] if same_point(p, pick)), None)
                if tp is not None:
                    lines.append(f"| {tsec} | {results[tsec].get('seed', 0)} | {describe(tp)} | "
                                 f"{tp['recall_ratio']:.4f} | {tp['speed_ratio_cpu']:.2f} | "
                                 f"{tp['speed_ratio_wall']:.2f} | {'met' if _goal(tp, args) else 'not met'} |")
    lines += ["", "Test points that meet the goal (recall ratio >= "
              f"{args.target_recall} and CPU speed ratio >= {args.target_speed}) in each test measurement "
              "(picked on test, for information only):", ""]
    for tsec in tsecs:
        ok = [p for p in results[tsec]["points"] if _goal(p, args)]
        desc = "; ".join(f"{describe(p)}: {p['recall_ratio']:.4f} at {p['speed_ratio_cpu']:.2f}x" for p in ok) or "none"
        lines.append(f"- {tsec}: {desc}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.out / f"{args.name}.json"
    results = json.loads(path.read_text()) if (args.merge or args.report_only) and path.is_file() else {}
    if not args.report_only:
        new = run(args)
        key = section_key(args.split, args.paired, args.seed)
        old = results.get(key)
        if old and args.merge:  # keep the other grid points of this split (same users required)
            if old["users"] != new["users"]:
                raise SystemExit(f"{path}: {key} has {old['users']} users, this run {new['users']}")
            keep = [p for p in old["points"] if not any(same_point(p, x) for x in new["points"])]
            new["points"] = keep + new["points"]
            new["command"] = old["command"] + " ; " + new["command"]
        results[key] = new
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_save_json(path, results)
    atomic_write_text(args.out / f"{args.name}.md", markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
