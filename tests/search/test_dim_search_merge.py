"""benchmarks/dim_search.py --merge: per-seed results files from separate processes combine into one table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ARGS = ["--rows", "1000", "--epochs", "1", "--search-epochs", "0.5", "--target", "0.6", "--optembed-budget", "0.5"]


def _bench():
    return load_benchmark("dim_search")


def _results_file(path: Path, seed: int, **settings) -> Path:
    """A results JSON as `dim_search.py --seeds SEED` writes it (settings of ARGS), with made-up per-seed rows."""
    rows = {m: [{"seed": seed, "test_auc": 0.7 + 0.01 * seed + 0.001 * i, "embedding_bytes": 1000 // (i + 1),
                 "seconds": 10.0 + seed, "search_seconds": 5.0 * i}]
            for i, m in enumerate(("base", "dnis", "optembed"))}
    summary = {"dataset": "synthetic", "rows": 900, "model": "dlrm", "search_steps": 1, "target": 0.6,
               "optembed_budget": 0.5, "epochs": 1, "batch_size": 2048, "results": rows,
               "command": f"python benchmarks/dim_search.py --seeds {seed}", "wall_seconds": 60.0 * (seed + 1)}
    summary.update(settings)
    path.write_text(json.dumps(summary))
    return path


def test_merge_only_combines_seeds(tmp_path):
    bench = _bench()
    files = [_results_file(tmp_path / f"s{s}.json", s) for s in (2, 0, 1)]
    out = tmp_path / "out"
    assert bench.main([*ARGS, "--out", str(tmp_path / "work"), "--results", str(out), "--name", "m",
                       "--seeds", "--merge", *map(str, files), "--note", "seeds ran apart"]) == 0
    merged = json.loads((out / "m.json").read_text())
    for method in ("base", "dnis", "optembed"):
        assert [r["seed"] for r in merged["results"][method]] == [0, 1, 2]
    assert [m["seeds"] for m in merged["merged_from"]] == [[2], [0], [1]]
    assert not (tmp_path / "work").exists()  # merge only: no data generated
    md = (out / "m.md").read_text()
    aucs = [0.7 + 0.01 * s for s in (0, 1, 2)]
    assert f"| base | {statistics.mean(aucs):.4f} ± {statistics.stdev(aucs):.4f} |" in md
    assert "| 3 |" in md and "--seeds 2" in md and "**Note:** seeds ran apart" in md
    assert (out / "m.png").is_file()  # matplotlib is a dependency
    assert merged["note"] == "seeds ran apart" and "--note 'seeds ran apart'" in merged["command"]
    # per-seed rows: paired delta against the same seed's base (dnis AUC = base AUC + 0.001, bytes 1000 -> 500)
    assert "| 1 | 0.7100 | 0.7110 | +0.0010 | 2.00 | 0.7120 | +0.0020 | 3.00 |" in md


@pytest.mark.parametrize("bad", [{"target": 0.5}, {"rows": 1800}, "duplicate"])
def test_merge_rejects_mismatch_and_duplicate_seeds(tmp_path, bad):
    bench = _bench()
    if bad == "duplicate":
        files, needle = [_results_file(tmp_path / "a.json", 0), _results_file(tmp_path / "b.json", 0)], "already present"
    else:
        files, needle = [_results_file(tmp_path / "a.json", 0, **bad)], repr(next(iter(bad)))
    with pytest.raises(SystemExit, match=needle):
        bench.main([*ARGS, "--out", str(tmp_path / "work"), "--results", str(tmp_path / "out"), "--name", "m",
                    "--seeds", "--merge", *map(str, files)])
