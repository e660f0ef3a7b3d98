"""Preparation at scale: the Criteo schema through the generic reader vs ``prepare criteo``, at several sizes.

Protocol: ``synth_criteo --scale SCALE`` writes N rows per size (gzip TSV, seed 0; ``full`` = Kaggle
cardinalities); each preparer runs ONCE per size in a fresh child process (``prepare_criteo(files, out)`` and
``prepare_table(files, out, "criteo")``, default threads: min(4, CPUs)), timed by wall clock; peak memory is
the child's own maximum RSS (``getrusage(RUSAGE_SELF)`` at its end). The two outputs' dense / sparse / labels
arrays are compared byte for byte. Linear time shows as flat rows/s across sizes, bounded memory as a flat
peak RSS. Runs on a shared machine vary: the 1-minute load average before each run is recorded.

    python benchmarks/prepare_scale.py --rows 1000000 10000000 45000000 --scale full [--work DIR] [--append]

Writes benchmarks/results/prepare_scale.{json,md}. The synthetic files stay in --work (reused by a rerun).
``--append`` keeps the sizes already in the results file (a size measured again replaces its old row), so
the largest size can be run in a sitting of its own; every command that contributed is recorded.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_emb.utils import atomic_save_json, atomic_write_text  # noqa: E402

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from recsys_emb.data.criteo import prepare_criteo
from recsys_emb.data.tabular import prepare_table
start = time.perf_counter()
if {which!r} == "criteo":
    prepare_criteo({files!r}, {out!r})
else:
    prepare_table({files!r}, {out!r}, "criteo")
print(json.dumps({{"seconds": time.perf_counter() - start,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(which: str, files: list[str], out: str) -> dict[str, float]:
    """One preparation in a fresh process: wall seconds and that process's peak RSS."""
    load = os.getloadavg()[0]
    code = CHILD.format(repo=str(REPO), which=which, files=files, out=out)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_average_before": load}


def measure(rows: int, scale: str, work: Path) -> dict:
    """Both preparers on ``rows`` synthetic rows (generated once into ``work``)."""
    from recsys_emb.data.synthetic import synth_criteo

    raw = work / f"raw_{scale}_{rows}"
    if not (raw / "train.txt.gz").is_file():
        synth_criteo(raw, rows, test_rows=0, scale=scale, progress=False)
    files = [str(raw / "train.txt.gz")]
    result = {"rows": rows, "input_gzip_bytes": os.path.getsize(files[0])}
    for which in ("criteo", "table"):
        out = work / f"{which}_{rows}"
        shutil.rmtree(out, ignore_errors=True)
        result[which] = run_child(which, files, str(out))
        result[which]["rows_per_second"] = rows / result[which]["seconds"]
    result["arrays_byte_identical"] = all(
        filecmp.cmp(work / f"criteo_{rows}" / n, work / f"table_{rows}" / n, shallow=False)
        for n in ("dense.npy", "sparse.npy", "labels.npy"))
    for which in ("criteo", "table"):
        shutil.rmtree(work / f"{which}_{rows}", ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="synthetic Criteo rows, one run each")
    parser.add_argument("--scale", choices=["small", "full"], default="full",
                        help="synthetic cardinalities (full: Kaggle's, the issue's protocol)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder kept for reruns (default: temporary)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--append", action="store_true",
                        help="keep the sizes already in the results file (same scale); re-measured sizes replace theirs")
    args = parser.parse_args(argv)
    command = "python benchmarks/prepare_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    earlier: list[dict] = []
    commands = [command]
    previous = args.out / "prepare_scale.json"
    if args.append and previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("scale") != args.scale:
            raise SystemExit(f"{previous}: scale {old.get('scale')!r} differs from --scale {args.scale}; cannot append")
        earlier = [s for s in old["sizes"] if s["rows"] not in args.rows]
        commands = [*old.get("commands", [old["command"]]), command]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sizes = sorted(earlier + [measure(rows, args.scale, work) for rows in args.rows], key=lambda s: s["rows"])
    record = {
        "command": command, "commands": commands,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": "prepare default: min(4, cpus) parsing threads", "scale": args.scale, "sizes": sizes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / "prepare_scale.json", record)
    lines = [
        "# Preparation at scale: `prepare table --schema criteo` vs `prepare criteo`", "",
        f"Synthetic Criteo rows (`--scale {args.scale}`, gzip TSV), each preparer once per size in a fresh process; "
        f"machine: {record['machine']['platform']}, {record['machine']['cpus']} CPUs (shared with other work: see "
        "the load averages); threads: the default, min(4, CPUs). Flat rows/s = time linear in rows; flat peak RSS = "
        "memory bounded. One run per cell, no repeats.", "",
        "| rows | gzip MiB | preparer | seconds | rows / s | peak RSS (MiB) | load avg before | table / criteo time | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        c, t = s["criteo"], s["table"]
        for name, r in (("prepare criteo", c), ("prepare table", t)):
            ratio = f"{t['seconds'] / c['seconds']:.2f}x" if r is t else ""
            lines.append(f"| {s['rows']:,} | {s['input_gzip_bytes'] / 2**20:.0f} | {name} | {r['seconds']:.1f} | "
                         f"{r['rows_per_second']:,.0f} | {r['peak_rss_mib']:,.0f} | {r['load_average_before']:.1f} | "
                         f"{ratio} | {s['arrays_byte_identical'] if r is t else ''} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands) + ".", ""]
    atomic_write_text(args.out / "prepare_scale.md", "\n".join(lines))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
