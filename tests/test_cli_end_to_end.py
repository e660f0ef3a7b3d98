"""The documented user path through the real console script: synth -> prepare -> train -> evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def recsys_emb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("recsys-emb", path=str(Path(sys.executable).parent)) or ""
    cmd = [exe] if exe else [sys.executable, "-m", "recsys_emb"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"recsys-emb {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RECSYS_EMB_CACHE": str(tmp_path / "cache")}


def test_synth_train_evaluate_resume(tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "synth"
    recsys_emb("synth", "criteo", "--rows", "4000", "--test-rows", "1000", "--out", str(data), "--seed", "3", env=env)
    oracle = json.loads((data / "oracle.json").read_text())
    run = tmp_path / "run"
    proc = recsys_emb(
        "train", "--config", "configs/criteo_dcnv2_tiny.yaml", "--train", str(data / "train.txt.gz"),
        "--test", str(data / "test.txt.gz"), "--run-dir", str(run), "--set", "train.epochs=1", env=env,
    )
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed == metrics["test"]
    assert metrics["test"]["rows"] == 1000 and metrics["valid"]["rows"] == 800
    assert 0.5 < metrics["test"]["auc"] <= oracle["oracle_auc"] + 0.02  # nothing beats the truth (up to noise)
    # evaluate on the raw test file re-encodes it with the run's vocabulary: same numbers
    again = json.loads(recsys_emb("evaluate", "--run-dir", str(run), "--data", str(data / "test.txt.gz"), env=env).stdout)
    assert again["rows"] == 1000
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    # a finished run can be extended with --resume and more epochs
    recsys_emb("train", "--run-dir", str(run), "--resume", "--set", "train.epochs=2", env=env)
    extended = json.loads((run / "metrics.json").read_text())
    assert extended["steps"] > metrics["steps"] or extended["epochs_completed"] == 2


def test_prepare_reports_malformed_rows(tmp_path: Path, env: dict[str, str]) -> None:
    good = "\t".join(["1"] + ["5"] * 13 + ["68fd1e64"] * 26)
    bad = "\t".join(["0"] + ["x"] + ["5"] * 12 + ["68fd1e64"] * 26)
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([good, bad, good, "1\t2\t3"]) + "\n")
    proc = recsys_emb("prepare", "criteo", "--input", str(raw), "--out", str(tmp_path / "prep"), "--min-count", "1", env=env)
    assert "skipped 2 malformed rows of 4" in proc.stderr
    assert "raw.txt:2" in proc.stderr and "raw.txt:4" in proc.stderr
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["rows"] == 2 and meta["skipped_rows"] == 2
