"""scripts/install.sh: the RECSYS_EMB_TORCH=system mode (keep an installed torch) and its errors.

Every case stops before anything is installed (an error, or RECSYS_EMB_INSTALL_DRY_RUN=1); a fake
``torch`` package on PYTHONPATH stands in for a CUDA or CPU torch of a given version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_emb import doctor

REPO = Path(__file__).resolve().parents[1]


def _fake_torch(tmp_path: Path, version: str, cuda: str | None) -> Path:
    pkg = tmp_path / "fake" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n\n\nclass version:\n    cuda = {cuda!r}\n")
    return pkg.parent


# The interpreter the test venv was made from: RECSYS_EMB_TORCH=system refuses a venv's python
# (unless VENV is that venv), since a venv made from it would not see its packages.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def _install(tmp_path: Path, pythonpath: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full.update({"PYTHON": BASE_PYTHON, "VENV": str(tmp_path / "venv"), "RECSYS_EMB_TORCH": "system", **env})
    if pythonpath is not None:
        full["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(["bash", "scripts/install.sh"], cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


def test_stack_for_torch_follows_the_doctor_table() -> None:
    assert doctor.stack_for_torch("2.11.0+cu130") == ("1.6", "1.6")  # verified on an H100 (docs/INSTALL.md)
    assert doctor.stack_for_torch("2.13.0") == ("1.8", "1.8")
    for fbgemm, (torch_minor, torchrec) in doctor.COMPATIBLE.items():
        assert doctor.stack_for_torch(f"{torch_minor}.1") == (fbgemm, torchrec)
    with pytest.raises(ValueError, match=r"torch 2\.99\.0 .*2\.13"):
        doctor.stack_for_torch("2.99.0")


def test_system_torch_plan_uses_the_installed_version(tmp_path: Path) -> None:
    fake = _fake_torch(tmp_path, "2.11.0+cu130", "13.0")
    proc = _install(tmp_path, fake, RECSYS_EMB_DEVICE="cuda", RECSYS_EMB_INSTALL_DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    assert "keeping torch 2.11.0+cu130" in proc.stdout
    assert "torch=2.11.0+cu130 fbgemm=1.6.* torchrec=1.6.* device=cuda" in proc.stdout
    assert not (tmp_path / "venv").exists()


def test_system_torch_errors(tmp_path: Path) -> None:
    unknown = _install(tmp_path, _fake_torch(tmp_path / "a", "2.99.0", "13.0"), RECSYS_EMB_DEVICE="cuda")
    assert unknown.returncode != 0 and "no known fbgemm-gpu release is built for torch 2.99.0" in unknown.stderr
    cpu_build = _install(tmp_path, _fake_torch(tmp_path / "b", "2.11.0", None), RECSYS_EMB_DEVICE="cuda")
    assert cpu_build.returncode != 0 and "is a CPU build" in cpu_build.stderr
    no_torch = _install(tmp_path, None, RECSYS_EMB_DEVICE="cpu", PYTHON="/nonexistent/python3")
    assert no_torch.returncode != 0 and "cannot import torch" in no_torch.stderr
    bogus = _install(tmp_path, None, RECSYS_EMB_TORCH="bogus")
    assert bogus.returncode != 0 and "must be pinned or system" in bogus.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the tests to run in a virtual environment")
def test_system_torch_from_a_venv_python_installs_into_that_venv(tmp_path: Path) -> None:
    fake = _fake_torch(tmp_path, "2.13.0", None)
    other = _install(tmp_path, fake, PYTHON=sys.executable, RECSYS_EMB_DEVICE="cpu", RECSYS_EMB_INSTALL_DRY_RUN="1")
    assert other.returncode != 0
    assert "is a virtual environment" in other.stderr and f"VENV={os.path.realpath(sys.prefix)}" in other.stderr
    same = _install(tmp_path, fake, PYTHON=sys.executable, VENV=sys.prefix, RECSYS_EMB_DEVICE="cpu",
                    RECSYS_EMB_INSTALL_DRY_RUN="1")
    assert same.returncode == 0, same.stderr
    assert "torch=2.13.0 fbgemm=1.8.* torchrec=1.8.* device=cpu" in same.stdout
    assert not (tmp_path / "venv").exists()
