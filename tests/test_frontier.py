"""benchmarks/frontier.py: a 2 x 2 grid end to end on a tiny synthetic Criteo file, resumed and merged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from recsys_emb.data.synthetic import synth_criteo

REPO = Path(__file__).resolve().parents[1]


def _frontier():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("frontier_bench", REPO / "benchmarks" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(synth_criteo(tmp_path_factory.mktemp("synth") / "data", rows=2000, test_rows=500, seed=0, progress=False)["out_dir"])


def _argv(synth: Path, tmp: Path, *extra: str, ranks: int = 1) -> list[str]:
    return ["--dataset", "synth", "--data", str(synth), "--work", str(tmp / "work"), "--results", str(tmp / "results"),
            "--config", str(REPO / "configs" / "criteo_dcnv2_tiny.yaml"), "--techniques", "hash", "unified",
            "--fractions", "1/4", "1/16", "--seeds", "0", "--ranks", str(ranks), "--set", "train.epochs=1", *extra]


def _mtimes(cells: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}


def test_grid_resumes_and_merges(synth: Path, tmp_path: Path) -> None:
    frontier = _frontier()
    cells = tmp_path / "work" / "cells"
    assert frontier.main(_argv(synth, tmp_path, "--max-cells", "2")) == 0  # a half-finished grid
    half = _mtimes(cells)
    assert len(half) == 2
    assert frontier.main(_argv(synth, tmp_path)) == 0  # resumed: only the two missing cells run
    full = _mtimes(cells)
    assert len(full) == 4 and all(full[name] == t for name, t in half.items())
    victim = sorted(full)[1]
    (cells / victim).unlink()
    assert frontier.main(_argv(synth, tmp_path)) == 0
    again = _mtimes(cells)
    assert set(again) == set(full)
    assert [n for n in again if again[n] != full[n]] == [victim]  # only the deleted cell ran again

    assert frontier.main(_argv(synth, tmp_path, "--merge")) == 0
    result = json.loads((tmp_path / "results" / "frontier_synth.json").read_text())
    assert (tmp_path / "results" / "frontier_synth.md").is_file()
    assert (tmp_path / "results" / "frontier_synth.png").is_file()
    rows = result["rows"]
    assert sorted((r["technique"], r["fraction_label"]) for r in rows) == [
        ("hash", "1/16"), ("hash", "1/4"), ("unified", "1/16"), ("unified", "1/4")]
    for cell in result["cells"]:
        assert cell["status"] == "ok"
        target = int(cell["fraction"] * cell["plain_bytes"])
        assert target - cell["row_bytes"] < cell["embedding_bytes"] <= target, cell  # within one row of the target
        assert 0.5 < cell["test_auc"] < 1 and cell["latency_ms_b512"] > 0 and "lift" in cell
    md = (tmp_path / "results" / "frontier_synth.md").read_text()
    assert "optimizer state is excluded" in md and md.count("| hash |") == 2


def test_unreachable_cells_are_recorded(synth: Path, tmp_path: Path) -> None:
    frontier = _frontier()
    argv = _argv(synth, tmp_path, "--set", "optembed.search.supernet_steps=5")
    argv[argv.index("hash")] = "plain"
    argv[argv.index("unified")] = "optembed"  # dim 8: the smallest derived dims (4) are half the bytes
    argv.remove("1/16")
    assert frontier.main(argv) == 0
    cells = [json.loads(p.read_text()) for p in (tmp_path / "work" / "cells").glob("*.json")]
    assert len(cells) == 2 and all(c["status"] == "unreachable" and c["reason"] for c in cells)


@pytest.mark.slow  # two gloo processes importing torchrec per cell
def test_grid_on_two_ranks(synth: Path, tmp_path: Path) -> None:
    frontier = _frontier()
    argv = _argv(synth, tmp_path, ranks=2)
    argv[argv.index("1/16")] = "1/4"
    assert frontier.main([*argv, "--max-cells", "1"]) == 0
    (cell,) = [json.loads(p.read_text()) for p in (tmp_path / "work" / "cells").glob("*.json")]
    assert cell["status"] == "ok" and cell["ranks"] == 2 and cell["test_auc"] > 0.5
