"""scripts/gpu_check.sh --dry-run on the CPU: every command it would run on a GPU is named and its inputs
exist, and the training steps (each family: train to a checkpoint, then --resume) really run, on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.tsv") as f:
        steps = {row["step"]: row["status"] for row in csv.DictReader(f, delimiter="\t")}
    gpu_only = {"build-kernels", "tests", "kernels", "sharding"}
    assert gpu_only <= set(steps) and all(steps[s] == "dry-run" for s in gpu_only), steps
    for family in ("ctr", "sequence", "graph", "two_tower"):
        assert steps[f"train-{family}"] == steps[f"resume-{family}"] == "ok", steps
        metrics = json.loads((out / "runs" / family / "metrics.json").read_text())
        # 2 steps to the checkpoint, 2 more after --resume; the printed command names the GPU run's settings
        assert metrics["task"] == family and metrics["steps"] == 4 and metrics["stop_reason"] == "max_steps"
    assert "--device cuda" in proc.stdout and "pytest -q -k cuda tests/ops" in proc.stdout
