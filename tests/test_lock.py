"""The dependency lock (requirements.lock): the installed versions are the locked ones, and its tooling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_emb import doctor, lockfile

REPO = Path(__file__).resolve().parents[1]


def test_installed_versions_match_the_lock() -> None:
    """Fails whenever this environment drifted from requirements.lock (skipped only after RECSYS_EMB_LOCK=none)."""
    if lockfile.opted_out():
        pytest.skip("this venv was installed with RECSYS_EMB_LOCK=none (explicit opt-out of the lock)")
    pins, python = lockfile.parse_lock(REPO / lockfile.LOCK_NAME)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", "the lock was resolved for another Python"
    diff = lockfile.differences(pins, lockfile.installed_versions())
    assert not diff, f"installed versions differ from requirements.lock ({{name: (locked, installed)}}): {diff}"
    # the packages the suite depends on are really under the lock
    for name in ("numpy", "tensordict", "faiss-cpu", "polars", "pyyaml", "pytest"):
        assert name in pins


def test_lock_holds_no_installer_pins_and_parses_back(tmp_path: Path) -> None:
    installed = {"numpy": "2.4.6", "torch": "2.13.0+cpu", "fbgemm-gpu-cpu": "1.8.0", "torchrec": "1.8.0",
                 "recsys-emb": "0.1.0", "pip": "26.0", "nvidia-cublas-cu13": "13.0", "triton": "3.5", "py-yaml": "6.0.4"}
    path = tmp_path / "lock"
    path.write_text(lockfile.freeze(installed, python="3.11"))
    pins, python = lockfile.parse_lock(path)
    assert pins == {"numpy": "2.4.6", "py-yaml": "6.0.4"} and python == "3.11"


def test_differences_names_missing_and_other_versions() -> None:
    pins = {"numpy": "2.4.6", "polars": "2.1.0", "tqdm": "4.70.1"}
    installed = {"numpy": "2.4.6", "polars": "2.2.0"}
    assert lockfile.differences(pins, installed) == {"polars": ("2.1.0", "2.2.0"), "tqdm": ("4.70.1", None)}


def test_bad_lock_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "requirements.lock"
    path.write_text("# python: 3.11\nnumpy==2.4.6\npolars>=2\n")
    with pytest.raises(ValueError, match=r"requirements\.lock:3: expected 'name==version', got 'polars>=2'"):
        lockfile.parse_lock(path)


def test_doctor_reports_drift_from_the_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    lock.write_text(f"# python: {here}\nnumpy==0.0.1\n")
    monkeypatch.setattr(lockfile, "repo_lock_path", lambda: lock)
    monkeypatch.setattr(lockfile, "opted_out", lambda: False)
    report = doctor.diagnose()
    assert report["lock"]["status"] == "differs" and not report["ok"]
    assert any("numpy 0.0.1 locked" in a and "scripts/update_lock.sh" in a for a in report["advice"])
    monkeypatch.setattr(lockfile, "opted_out", lambda: True)
    assert doctor.diagnose()["lock"]["status"].startswith("opted out")


def _install(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full.update(RECSYS_EMB_INSTALL_DRY_RUN="1", **env)
    return subprocess.run(["bash", "scripts/install.sh"], cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


def test_install_uses_the_lock_by_default_and_refuses_another_python(tmp_path: Path) -> None:
    python = getattr(sys, "_base_executable", sys.executable)
    default = _install(PYTHON=python, VENV=str(tmp_path / "v"))
    assert default.returncode == 0, default.stderr
    assert "lock=requirements.lock" in default.stdout
    other = tmp_path / "other.lock"
    other.write_text("# python: 2.7\nnumpy==1.0\n")
    refused = _install(PYTHON=python, VENV=str(tmp_path / "v"), RECSYS_EMB_LOCK=str(other))
    assert refused.returncode == 1 and "on Python 2.7" in refused.stderr and "RECSYS_EMB_LOCK=none" in refused.stderr
    missing = _install(PYTHON=python, VENV=str(tmp_path / "v"), RECSYS_EMB_LOCK=str(tmp_path / "absent.lock"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    opted = _install(PYTHON=python, VENV=str(tmp_path / "v"), RECSYS_EMB_LOCK="none")
    assert opted.returncode == 0 and "lock=none" in opted.stdout


def test_doctor_compares_with_the_lock_the_venv_was_installed_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "other.lock"
    other.write_text("# python: 3.11\nnumpy==1.0\n")
    (tmp_path / lockfile.MARKER).write_text(f"{other}\n")  # what scripts/install.sh writes for RECSYS_EMB_LOCK=<file>
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert lockfile.repo_lock_path() == other
    (tmp_path / lockfile.MARKER).write_text("requirements.lock\n")  # relative: from the checkout
    assert lockfile.repo_lock_path() == REPO / "requirements.lock"
