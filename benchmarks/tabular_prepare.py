"""Preparation speed: the generic schema'd table reader vs ``prepare criteo`` on the same synthetic Criteo rows.

Protocol: ``synth_criteo`` writes N rows (gzip TSV, seed 0); each preparer runs ONCE in a fresh child process
(``prepare_criteo(files, out)`` and ``prepare_table(files, out, "criteo")``, default threads: up to 4, at most
the CPUs), timed by wall clock, peak memory = the child's max RSS (``resource.getrusage(RUSAGE_CHILDREN)``).
The two outputs' dense / sparse / labels arrays are compared byte for byte. Runs on a shared machine vary:
the cores may be busy with other work (recorded as the 1-minute load average before each run).

    python benchmarks/tabular_prepare.py [--rows 1000000] [--work DIR]

Writes benchmarks/results/tabular_prepare.{json,md}.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from recsys_emb.data.criteo import prepare_criteo
from recsys_emb.data.tabular import prepare_table
start = time.perf_counter()
if {which!r} == "criteo":
    prepare_criteo({files!r}, {out!r})
else:
    prepare_table({files!r}, {out!r}, "criteo")
print(time.perf_counter() - start)
"""


def run_child(which: str, files: list[str], out: str) -> dict[str, float]:
    """One preparation in a fresh process: wall seconds and the process' peak RSS."""
    load = os.getloadavg()[0]
    code = CHILD.format(repo=str(REPO), which=which, files=files, out=out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib < before:  # RUSAGE_CHILDREN is the max over all children so far
        peak_kib = before
    return {"seconds": float(proc.stdout.strip().splitlines()[-1]), "peak_rss_mib": peak_kib / 1024,
            "load_average_before": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic Criteo rows")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    args = parser.parse_args(argv)
    from recsys_emb.data.synthetic import synth_criteo

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        synth_criteo(work / "raw", args.rows, test_rows=0, progress=False)
        files = [str(work / "raw" / "train.txt.gz")]
        # the criteo child runs first so that RUSAGE_CHILDREN's running maximum is its own peak
        results = {"criteo": run_child("criteo", files, str(work / "criteo"))}
        results["table"] = run_child("table", files, str(work / "table"))
        identical = all(filecmp.cmp(work / "criteo" / n, work / "table" / n, shallow=False)
                        for n in ("dense.npy", "sparse.npy", "labels.npy"))
        size = os.path.getsize(files[0])
    for r in results.values():
        r["rows_per_second"] = args.rows / r["seconds"]
    record = {
        "command": "python benchmarks/tabular_prepare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": "prepare default: min(4, cpus) parsing threads",
        "rows": args.rows, "input_gzip_bytes": size, "results": results,
        "ratio_table_over_criteo": {"seconds": results["table"]["seconds"] / results["criteo"]["seconds"],
                                    "peak_rss": results["table"]["peak_rss_mib"] / results["criteo"]["peak_rss_mib"]},
        "arrays_byte_identical": identical,
        "note": "peak RSS of the table run is max(criteo run, table run) when the table run used less "
                "(getrusage(RUSAGE_CHILDREN) keeps a running maximum)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / "tabular_prepare.json", record)
    c, t = results["criteo"], results["table"]
    lines = [
        "# Preparation speed: `prepare table --schema criteo` vs `prepare criteo`", "",
        f"{args.rows:,} synthetic Criteo rows (gzip TSV, {size / 2**20:.0f} MiB), each preparer once in a fresh "
        f"process; machine: {record['machine']['platform']}, {record['machine']['cpus']} CPUs (shared with other "
        "work: see the load averages); threads: the default, min(4, CPUs).", "",
        "| preparer | seconds | rows / s | peak RSS (MiB) | load avg before |", "|---|---|---|---|---|",
        f"| prepare criteo | {c['seconds']:.1f} | {c['rows_per_second']:,.0f} | {c['peak_rss_mib']:,.0f} | {c['load_average_before']:.1f} |",
        f"| prepare table (criteo schema) | {t['seconds']:.1f} | {t['rows_per_second']:,.0f} | {t['peak_rss_mib']:,.0f} | {t['load_average_before']:.1f} |",
        f"| ratio table / criteo | {t['seconds'] / c['seconds']:.2f}x | | {t['peak_rss_mib'] / c['peak_rss_mib']:.2f}x | |",
        "", f"Arrays byte-identical: {identical}. Command: `{record['command']}`.", "",
    ]
    atomic_write_text(args.out / "tabular_prepare.md", "\n".join(lines))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
