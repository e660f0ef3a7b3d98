"""The real console script on bad input (the documented user path itself: tests/test_readme.py)."""

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


def test_prepare_reports_malformed_rows(tmp_path: Path, env: dict[str, str]) -> None:
    good = "\t".join(["1"] + ["5"] * 13 + ["68fd1e64"] * 26)
    bad = "\t".join(["0"] + ["x"] + ["5"] * 12 + ["68fd1e64"] * 26)
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([good, bad, good, "1\t2\t3"]) + "\n")
    proc = recsys_emb("prepare", "criteo", "--data", str(raw), "--out", str(tmp_path / "prep"), "--min-count", "1", env=env)
    assert "skipped 2 malformed rows of 4" in proc.stderr
    assert "raw.txt:2" in proc.stderr and "raw.txt:4" in proc.stderr
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["rows"] == 2 and meta["skipped_rows"] == 2
