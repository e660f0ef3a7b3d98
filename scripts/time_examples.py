"""Time each example's documented default invocation (wall clock), as the docstring timings claim them.

    python scripts/time_examples.py --out benchmarks/results/example_timings

Runs the examples one after another (never two at once), each in a fresh temporary folder for its
outputs, records wall seconds, exit status and the machine, and writes OUT.json + OUT.md. Examples whose
default data set is missing are recorded as such (exit status 2, see datasets/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the invocation each example's docstring gives first (outputs redirected into a temporary folder)
EXAMPLES = {
    "criteo_quickstart.py": ["--rows", "300000", "--out", "{tmp}/quickstart"],
    "dimension_search.py": ["--out", "{tmp}/dims"],
    "din_dare.py": [],
    "graph_cf.py": [],
    "knn_embed.py": [],
    "semantic_ids.py": [],
    "semantic_ids_cold_start.py": [],
    "unified_embedding.py": ["--out", "{tmp}/unified"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--only", nargs="+", help="these examples only (file names)")
    args = parser.parse_args(argv)
    rows = []
    load = os.getloadavg()[0]
    for name, extra in EXAMPLES.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="example_") as tmp:
            cmd = [sys.executable, str(REPO / "examples" / name), *[a.format(tmp=tmp) for a in extra]]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
        rows.append({"example": name, "args": extra, "seconds": round(seconds, 1), "returncode": proc.returncode,
                     "last_stderr_line": (proc.stderr.strip().splitlines() or [""])[-1][:200]})
        print(f"[{seconds:7.1f}s] rc={proc.returncode} {name}", file=sys.stderr, flush=True)
    record = {"command": "python scripts/time_examples.py --out " + str(args.out), "machine": platform.node(),
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "load_average_before": load,
              "examples": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Example run times ({record['date']}, {record['cpus']} CPUs)", "",
             f"`{record['command']}`: each example's default invocation, wall clock, one run each, one after another, "
             "on a 2-core machine (other jobs may have shared it; the 1-minute load average before the first run is recorded in the JSON).", "",
             "| example | arguments | seconds | exit |", "|---|---|---|---|"]
    lines += [f"| {r['example']} | `{' '.join(r['args'])}` | {r['seconds']:.0f} | {r['returncode']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
