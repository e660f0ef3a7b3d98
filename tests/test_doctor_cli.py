"""`recsys-emb doctor` advice on mismatched stacks, and CLI error handling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recsys_emb import doctor
from recsys_emb.cli import main


def fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str | None) -> None:
    table = {"torch": "2.13.0", "fbgemm-gpu": "1.8.0", "fbgemm-gpu-cpu": "1.8.0", "torchrec": "1.8.0", "recsys_emb": "0.1.0"}
    table.update({k.replace("_", "-"): v for k, v in versions.items()})
    monkeypatch.setattr(doctor, "_version", lambda dist: table.get(dist))


def test_installed_stack_is_ok() -> None:
    report = doctor.diagnose()
    assert report["ok"], report["advice"]
    d = report["distributions"]  # the pinned CPU stack in CI; a verified CUDA pairing on a GPU machine
    assert doctor._minor(d["torchrec"]) == doctor.COMPATIBLE[doctor._minor(d["fbgemm-gpu-cpu"] or d["fbgemm-gpu"])][1]


def test_torch_fbgemm_mismatch_gets_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, fbgemm_gpu_cpu="1.3.0", fbgemm_gpu=None, torchrec="1.3.0")
    report = doctor.diagnose()
    assert not report["ok"]
    assert any("built for torch 2.8" in a and "fbgemm-gpu-cpu==1.8.0" in a for a in report["advice"])


def test_cpu_and_cuda_fbgemm_both_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, fbgemm_gpu="1.9.0")
    assert any("share the fbgemm_gpu/ folder" in a for a in doctor.diagnose()["advice"])


def test_undefined_symbol_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor._try_import
    monkeypatch.setattr(
        doctor, "_try_import", lambda m: "OSError: libfbgemm.so: undefined symbol: _ZN3c10" if m == "fbgemm_gpu" else real(m)
    )
    report = doctor.diagnose()
    assert not report["ok"]
    assert any("undefined symbol" in a for a in report["advice"])


def test_doctor_exit_code_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torchrec      {doctor._version('torchrec')}" in out and "status        ok" in out


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "recsys_emb", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("synth", "prepare", "train", "evaluate", "doctor"):
        assert command in out


def test_train_config_errors_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {}\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["evaluate", "--run-dir", str(tmp_path), "--data", str(tmp_path)]) == 2
