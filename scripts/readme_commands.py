"""Run the README's command blocks in order, as a user pasting them would (tests/test_readme.py runs them tiny).

A block runs when the line before its opening fence is ``<!-- readme-test: run -->``. Comment lines and
``source .venv/bin/activate`` are dropped (the runner puts this interpreter's ``bin/`` first on PATH instead),
continuation lines are joined, and every command runs with bash in a work folder whose ``configs/`` links to
the repository's. ``--tiny`` swaps the data sizes for small ones (:data:`TINY`; each must occur in the README).

    python scripts/readme_commands.py --tiny --workdir /tmp/readme            # a quick check, about 2 minutes
    python scripts/readme_commands.py --workdir /tmp/readme --time benchmarks/results/readme_commands
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-test: run -->"
# README text -> tiny replacement (the README's sizes, a few thousand rows instead)
TINY = {"--rows 300000 --test-rows 60000": "--rows 3000 --test-rows 600"}


@dataclass
class Ran:
    command: str
    returncode: int
    seconds: float
    stdout: str
    stderr: str


def extract(readme: str) -> list[str]:
    """The commands of the marked bash blocks, in order, one string per (joined) command."""
    commands: list[str] = []
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if not lines[i + 1].startswith("```bash"):
            raise ValueError(f"README line {i + 2}: {MARKER} must be followed by a ```bash fence")
        pending = ""
        for body in lines[i + 2:]:
            if body.startswith("```"):
                break
            text = body.split(" #", 1)[0].rstrip() if not body.lstrip().startswith("#") else ""
            if not text.strip() or text.strip() == "source .venv/bin/activate":
                continue
            if text.endswith("\\"):
                pending += text[:-1].rstrip() + " "
                continue
            commands.append((pending + text.strip()).strip())
            pending = ""
    return commands


def shrink(commands: list[str], sizes: dict[str, str]) -> list[str]:
    """Replace each README size by its tiny value; every size must occur (a README edit must not skip it)."""
    text = "\n".join(commands)
    missing = [old for old in sizes if old not in text]
    if missing:
        raise ValueError(f"README commands no longer contain {missing}: update TINY in {__file__}")
    for old, new in sizes.items():
        text = text.replace(old, new)
    return text.split("\n")


def run(commands: list[str], workdir: Path, timeout: float = 1800) -> list[Ran]:
    """Run ``commands`` in ``workdir`` (created; ``configs`` linked); stops after the first failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "configs").exists():
        (workdir / "configs").symlink_to(REPO / "configs")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "RECSYS_EMB_CACHE": str(workdir / "cache")}
    ran: list[Ran] = []
    for command in commands:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        ran.append(Ran(command, proc.returncode, time.perf_counter() - t0, proc.stdout, proc.stderr))
        if proc.returncode != 0:
            break
    return ran


def readme_commands(tiny: bool) -> list[str]:
    commands = extract((REPO / "README.md").read_text(encoding="utf-8"))
    return shrink(commands, TINY) if tiny else commands


def _write_timings(ran: list[Ran], prefix: Path, tiny: bool, workdir: Path) -> None:
    record = {
        "command": f"python scripts/readme_commands.py --workdir {workdir}{' --tiny' if tiny else ''} --time {prefix}",
        "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "steps": [{"command": r.command, "seconds": round(r.seconds, 1), "returncode": r.returncode} for r in ran],
        "total_seconds": round(sum(r.seconds for r in ran), 1),
    }
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# README commands, timed ({record['date']}, {record['cpus']} CPUs, `{record['command']}`)", "",
             "Wall-clock seconds of each command of README.md's runnable blocks, in order, on a shared machine "
             "(other jobs may have run beside it; one run, no repeats).", "", "| command | seconds |", "|---|---|"]
    lines += [f"| `{r.command}` | {r.seconds:.1f} |" for r in ran]
    lines += [f"| total | {record['total_seconds']:.1f} |", ""]
    prefix.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="folder the commands run in (created)")
    parser.add_argument("--tiny", action="store_true", help="small data sizes (what the test runs)")
    parser.add_argument("--time", type=Path, metavar="PREFIX", help="write PREFIX.json and PREFIX.md with the timings")
    args = parser.parse_args(argv)
    ran = run(readme_commands(args.tiny), args.workdir)
    for r in ran:
        print(f"[{r.seconds:7.1f}s] rc={r.returncode} {r.command}", file=sys.stderr)
    if ran and ran[-1].returncode != 0:
        print(ran[-1].stderr[-3000:], file=sys.stderr)
        return 1
    if args.time:
        _write_timings(ran, args.time, args.tiny, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
