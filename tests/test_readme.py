"""README.md's commands, pasted in order as a user would, on tiny sizes (scripts/readme_commands.py)."""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path

import pytest

from tests.conftest import REPO

readme = runpy.run_path(str(REPO / "scripts" / "readme_commands.py"))


def test_extract_joins_continuations_and_drops_comments() -> None:
    text = "\n".join([
        "intro", "<!-- readme-test: run -->", "```bash", "source .venv/bin/activate", "# a comment",
        "recsys-emb a --x 1 \\", "    --y 2   # trailing comment", "", "recsys-emb b", "```",
        "```bash", "not marked", "```",
    ])
    assert readme["extract"](text) == ["recsys-emb a --x 1 --y 2", "recsys-emb b"]
    with pytest.raises(ValueError, match="no longer contain"):
        readme["shrink"](["recsys-emb synth criteo --rows 5"], {"--rows 300000": "--rows 3000"})


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    commands = readme["readme_commands"](True)
    names = [" ".join(c.split()[:2]) for c in commands]
    for expected in ("recsys-emb synth", "recsys-emb prepare", "recsys-emb train", "recsys-emb evaluate",
                     "recsys-emb report", "recsys-emb export", "recsys-emb predict", "recsys-emb plan"):
        assert expected in names
    assert any("torchrun" in c and "_tiny" not in c for c in commands)  # torchrun on a shipped, non-test config
    resume = next(i for i, c in enumerate(commands) if "--resume" in c)
    # run up to the resume, snapshot the run folder, then the rest
    ran = readme["run"](commands[:resume], tmp_path)
    assert [r.returncode for r in ran] == [0] * resume, ran[-1].stderr[-3000:]
    run = tmp_path / "runs" / "dcnv2"
    before = _digests(run)
    ran += readme["run"](commands[resume:], tmp_path)
    failed = [r for r in ran if r.returncode != 0]
    assert not failed, f"{failed[0].command}\n{failed[0].stderr[-3000:]}"
    out = {r.command: r for r in ran}

    metrics = json.loads((run / "metrics.json").read_text())
    train_cmd = next(c for c in commands if c.startswith("recsys-emb train --config"))
    assert json.loads(out[train_cmd].stdout.strip().splitlines()[-1]) == metrics["test"]
    # 2,700 rows: the shipped config sizes itself (batch 2048 -> 128, more epochs), early stopping ends it
    assert metrics["schedule"]["batch_size"] == 128 and metrics["stop_reason"] in ("early_stopping", "epochs")
    assert metrics["test"]["rows"] == 600 and metrics["valid"]["rows"] == 300  # the last 10% of 3,000 validate
    oracle = json.loads((tmp_path / "data" / "synth" / "oracle.json").read_text())
    assert 0.5 < metrics["test"]["auc"] <= oracle["oracle_auc"] + 0.02  # nothing beats the truth (up to noise)
    # --resume of the finished run: says so, changes no file (report and later commands write elsewhere)
    assert "is finished" in out[commands[resume]].stderr
    after = {k: v for k, v in _digests(run).items() if not k.startswith("report/")}
    assert after == before
    # evaluate scores the best model: the test metrics again
    evaluate = next(c for c in commands if c.startswith("recsys-emb evaluate --run-dir runs/dcnv2"))
    assert json.loads(out[evaluate].stdout)["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert (run / "report" / "curves.png").is_file() and (run / "report" / "report.md").is_file()
    manifest = json.loads((tmp_path / "artefacts" / "dcnv2" / "manifest.json").read_text())
    assert manifest["quantize"] == "int8"
    assert len((tmp_path / "scores.tsv").read_text().splitlines()) >= 600  # one line per test row (+ header)
    # the torchrun run: 2 ranks, its checkpoint scored on one process
    rw2 = json.loads((tmp_path / "runs" / "rw2" / "metrics.json").read_text())
    assert rw2["world_size"] == 2
    scored = json.loads(out[commands[-1]].stdout)
    assert scored["rows"] == 600 and 0.0 < scored["auc"] < 1.0
