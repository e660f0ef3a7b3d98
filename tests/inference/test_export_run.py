"""A CTR run trained on 2 gloo ranks -> ``export`` -> ``Predictor`` / ``recsys-emb predict`` on raw Criteo rows.

The exported predictions equal the eager model restored on one process from the same run (its
``model.pt``, gathered by the trainer from the ranks' shards: an unsharding path independent of the
export's DCP consolidation); quantised tables keep AUC within stated bounds at the stated bytes; bad
rows are counted; damaged or incompatible artefacts give errors naming the problem.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from recsys_emb.cli import main
from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import from_dict
from recsys_emb.data.synthetic import synth_criteo
from recsys_emb.evaluate import evaluate_run
from recsys_emb.inference.export import CTRServing, export_run, kjt_inputs, unshard
from recsys_emb.inference.manifest import ArtefactError
from recsys_emb.inference.predictor import Predictor
from recsys_emb.inference.quantize import row_bytes
from recsys_emb.train.checkpoint import load_model_state
from recsys_emb.train.tasks.ctr import build_ctr_model
from tests.distributed.multiprocess import run_ranks

# stated bounds on |AUC(quantised) - AUC(fp32)|, 2,000 test rows of a 2-epoch tiny model (the benchmark's
# trained models move by <= 0.0004 even at int4: benchmarks/results/export.md)
AUC_BOUND = {"fp16": 1e-3, "int8": 3e-3, "int4": 2e-2}


def _train_ranks(rank: int, world_size: int, cfg: dict, run_dir: str) -> None:
    from recsys_emb.train.tasks import train

    train(from_dict(ExperimentConfig, cfg), run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_run")
    synth_criteo(root / "synth", rows=6000, test_rows=2000, seed=5, progress=False)
    cfg = {
        "name": "export_tiny",
        "data": {"train": str(root / "synth" / "train.txt.gz"), "test": str(root / "synth" / "test.txt.gz"),
                 "valid_fraction": 0.2, "min_count": 2, "cache_dir": str(root / "cache")},
        "model": {"name": "dcnv2", "embedding_dim": 16, "dcnv2": {"num_cross_layers": 2, "deep_layer_sizes": [32]}},
        "embedding": {"groups": [{"name": "big", "features": ["C3", "C4", "C12", "C16", "C21", "C24"],
                                  "chain": [{"unified": {"budget_fraction": 0.5}}]},
                                 {"name": "rest", "chain": ["plain"]}]},
        "train": {"epochs": 2, "batch_size": 128, "eval_batch_size": 1000, "tensorboard": False, "early_stopping_patience": 0},
        "sharding": {"type": "row_wise"},
    }
    run_ranks(_train_ranks, 2, cfg, str(root / "run"))
    return {"root": root, "run": root / "run", "test": root / "synth" / "test.txt.gz"}


@pytest.fixture(scope="module")
def artefact(run: dict[str, Path]) -> Path:
    export_run(run["run"], run["root"] / "art")
    return run["root"] / "art"


def test_two_rank_run_exports_the_one_process_eager_model(run: dict[str, Path], artefact: Path) -> None:
    manifest = json.loads((artefact / "manifest.json").read_text())
    assert manifest["task"] == "ctr" and manifest["model"] == "dcnv2" and manifest["quantize"] == "fp32"
    assert [g["chain"] for g in manifest["techniques"]] == [["unified"], ["plain"]]
    # eager: the trainer's model.pt (gathered from the 2 ranks' shards) in a one-process model
    unsharded = unshard(run["run"])
    eager = build_ctr_model(unsharded.cfg, unsharded.task.train_data, "cpu").eval()
    eager.load_state_dict(load_model_state(run["run"] / "model.pt"))
    for key, value in eager.state_dict().items():
        assert torch.equal(value, unsharded.train_module.state_dict()[key]), key
    data = unsharded.task.splits["test"].open()[0]
    batch = data.batch(slice(0, 300))
    kjt = batch.sparse_features
    inputs = (batch.dense_features, *kjt_inputs(kjt))
    with torch.no_grad():
        expected = CTRServing(eager.model, list(kjt.keys()))(*inputs)
    predicted = Predictor.load(artefact)(*inputs)
    assert (predicted - expected).abs().max() <= 1e-5


def test_predict_raw_rows_equals_evaluate(run: dict[str, Path], artefact: Path, tmp_path: Path) -> None:
    """Raw TSV rows through the artefact's vocabulary give the AUC of ``recsys-emb evaluate`` on the same file."""
    result = Predictor.load(artefact).predict_file(run["test"], tmp_path / "scores.tsv", batch_size=333, progress=False)
    reference = evaluate_run(run["run"], run["test"])
    assert result["scored"] == reference["rows"] == 2000 and result["skipped"] == 0
    assert abs(result["auc"] - reference["auc"]) < 1e-6
    lines = (tmp_path / "scores.tsv").read_text().splitlines()
    assert len(lines) == 2000 and lines[0].split("\t")[0] == "0" and len(lines[0].split("\t")) == 3


@pytest.mark.parametrize("dtype", ["fp16", "int8", "int4"])
def test_quantised_tables_auc_and_bytes(dtype: str, run: dict[str, Path], artefact: Path, tmp_path: Path) -> None:
    manifest = export_run(run["run"], tmp_path / dtype, quantize=dtype)
    fp32 = json.loads((artefact / "manifest.json").read_text())
    rows = {t: b // (16 * 4) for t, b in fp32["tables"].items()}  # fp32 tables: rows * 16 * 4 bytes
    assert manifest["tables"] == {t: n * row_bytes(16, dtype) for t, n in rows.items()}
    # dim 16: fp32 64 B/row; fp16 32; int8 16 + 4 scale/bias -> 32 (16-byte rows); int4 8 + 4 -> 16
    assert {"fp16": 32, "int8": 32, "int4": 16}[dtype] == row_bytes(16, dtype)
    assert manifest["bytes"]["model.pt2"] < fp32["bytes"]["model.pt2"]
    base = Predictor.load(artefact).predict_file(run["test"], tmp_path / "fp32.tsv", progress=False)["auc"]
    quant = Predictor.load(tmp_path / dtype).predict_file(run["test"], tmp_path / "q.tsv", progress=False)["auc"]
    assert abs(quant - base) <= AUC_BOUND[dtype], (dtype, base, quant)


def test_dynamic_batch_sizes_and_empty_bags(run: dict[str, Path], artefact: Path) -> None:
    predictor = Predictor.load(artefact)
    unsharded = unshard(run["run"])
    data = unsharded.task.splits["test"].open()[0]
    serving = CTRServing(unsharded.model, list(data.sparse_features)).eval()
    for size in (1, 7, 512):
        batch = data.batch(slice(0, size))
        kjt = batch.sparse_features
        lengths = kjt.lengths().reshape(len(kjt.keys()), -1).clone()
        keep = torch.ones_like(lengths, dtype=torch.bool)
        keep[::3, ::2] = False  # empty bags: some features of some rows have no id
        values = kjt.values()[keep.reshape(-1)]
        lengths = lengths * keep
        inputs = (batch.dense_features, values, lengths)
        with torch.no_grad():
            assert (predictor(*inputs) - serving(*inputs)).abs().max() <= 1e-5, size


def test_predict_counts_malformed_rows(run: dict[str, Path], artefact: Path, tmp_path: Path) -> None:
    with gzip.open(run["test"], "rt") as f:
        rows = [next(f) for _ in range(50)]
    rows.insert(10, "1\t2\tthree\n")  # too few fields
    fields = rows[20].rstrip("\n").split("\t")
    fields[3] = "x7"  # a non-integer count
    rows[20] = "\t".join(fields) + "\n"
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join(rows))
    result = Predictor.load(artefact).predict_file(bad, tmp_path / "out.tsv", progress=False)
    assert result["rows_read"] == 51 and result["skipped"] == 2 and result["scored"] == 49
    assert result["examples"][0].startswith(f"{bad}:11")


def test_damaged_and_incompatible_artefacts_are_refused(artefact: Path, tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(artefact, out)
        return out

    corrupt = copy("corrupt")
    with open(corrupt / "model.pt2", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    with pytest.raises(ArtefactError, match=r"model\.pt2 is corrupted"):
        Predictor.load(corrupt)
    future = copy("future")
    manifest = json.loads((future / "manifest.json").read_text())
    (future / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtefactError, match="format_version 99"):
        Predictor.load(future)
    old = copy("old")
    (old / "manifest.json").write_text(json.dumps({**manifest, "versions": {**manifest["versions"], "torch": "2.4.1"}}))
    with pytest.raises(ArtefactError, match="torch 2.4.1"):
        Predictor.load(old)
    (old / "manifest.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="not valid JSON"):
        Predictor.load(old)
    with pytest.raises(ArtefactError, match="not found"):
        Predictor.load(tmp_path / "nowhere")


def test_cli_export_and_predict(run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "cli_art"
    assert main(["export", "--run-dir", str(run["run"]), "--out", str(art), "--quantize", "int8"]) == 0
    assert main(["export", "--run-dir", str(run["run"]), "--out", str(art)]) == 2  # exists: refused, clear error
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "scores.tsv"
    assert main(["predict", "--model", str(art), "--data", str(run["test"]), "--out", str(out), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scored"] == 2000 and 0.5 < result["auc"] <= 1.0
    assert len(out.read_text().splitlines()) == 2000



@pytest.mark.slow
def test_aoti_package_equals_the_program(run: dict[str, Path], tmp_path: Path) -> None:
    """``--aoti``: the AOTInductor package (about a minute of compilation) scores like the exported program."""
    manifest = export_run(run["run"], tmp_path / "aoti", aoti=True)
    assert manifest["aoti"] == "model.aoti.pt2", manifest["aoti_error"]
    packaged, program = Predictor.load(tmp_path / "aoti"), Predictor.load(tmp_path / "aoti", aoti=False)
    data = unshard(run["run"]).task.splits["test"].open()[0]
    for size in (1, 300):
        batch = data.batch(slice(0, size))
        kjt = batch.sparse_features
        inputs = (batch.dense_features, *kjt_inputs(kjt))
        assert (packaged(*inputs) - program(*inputs)).abs().max() <= 1e-5
