"""``recsys-emb predict`` on raw rows of a run trained through a feature schema (``data.schema``).

A tiny DCN-v2 run on a generated Avazu-format CSV with a multi-valued column (``tags``), a bucketised and a
standardised numeric, a hashed categorical and a hashed cross is exported; the artefact scores the raw test
CSV exactly like the eager model restored from the run scores the run's prepared test split, a Parquet copy
identically, and a CSV with malformed rows with the rows counted and named (``file:line: column``) while the
good rows keep their scores; in a fresh process in which training code and TorchRec cannot be imported (as
the torch.export artefact and as a TorchScript one, `--format torchscript`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import from_dict
from recsys_emb.data.schema import load_saved_schema, load_schema
from recsys_emb.inference.export import CTRServing, export_run, kjt_inputs, unshard
from recsys_emb.inference.predictor import Predictor
from recsys_emb.train.checkpoint import load_model_state
from recsys_emb.train.tasks.ctr import build_ctr_model
from tests.data.test_tabular import AVAZU_COLUMNS, make_avazu_csv
from tests.inference.test_export_cells import BLOCKED, IMPORT_GUARD

TOLERANCE = 1e-5
COLUMNS = [*AVAZU_COLUMNS, "tags"]
USED = {"click", "hour", "banner_pos", "site_id", "device_model", "C15", "C16", "tags"}
SCHEMA = f"""
name: avazu_tags
format: {{type: csv, header: auto, columns: [{", ".join(COLUMNS)}]}}
label: {{column: click}}
derived:
  - {{name: hour_of_day, source: hour, fn: hour_of_day}}
numeric:
  - {{name: C16, dtype: int, transform: [clip, log1p, standardise], clip: [0, null]}}
  - {{name: C15, transform: [bucketise], buckets: 4}}
categorical:
  - {{name: site_id}}
  - {{name: device_model, hash_buckets: 64}}
  - {{name: banner_pos}}
  - {{name: hour_of_day}}
multi_valued:
  - {{name: tags, separator: "|", max_length: 3}}
crosses:
  - {{columns: [site_id, hour_of_day], hash_buckets: 97}}
ignore: [{", ".join(c for c in COLUMNS if c not in USED)}]
"""
CHILD = (IMPORT_GUARD + textwrap.dedent("""
    from recsys_emb.inference.predictor import Predictor
    data, results = sys.argv[1], {{}}
    for art, out in zip(sys.argv[2::2], sys.argv[3::2]):  # artefact folder, output file
        predictor = Predictor.load(art)
        results[art] = {{"program": type(predictor.program).__name__,
                        **predictor.predict_file(data, out, batch_size=64, progress=False)}}
    print(json.dumps({{"results": results, "loaded": sorted(m for m in sys.modules if m.startswith({blocked!r}))}}))
""")).format(blocked=BLOCKED)


def make_tagged_csv(path: Path, rows: int, seed: int, header: bool) -> Path:
    """An Avazu-format CSV plus a ``tags`` column of 0-4 ``|``-separated tags (an empty cell = an empty bag)."""
    make_avazu_csv(path, rows, seed=seed, header=header)
    rng = np.random.default_rng(seed + 100)
    lines = path.read_text().splitlines()
    out = [lines[0] + ",tags"] if header else []
    for line in lines[1:] if header else lines:
        tags = "|".join(f"t{t}" for t in rng.integers(0, 12, rng.integers(0, 5)))
        out.append(f"{line},{tags}")
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from recsys_emb.train.tasks import train

    root = tmp_path_factory.mktemp("predict_table")
    (root / "schema.yaml").write_text(SCHEMA)
    train_csv = make_tagged_csv(root / "train.csv", 600, seed=0, header=True)
    test_csv = make_tagged_csv(root / "test.csv", 200, seed=1, header=False)
    cfg = {
        "name": "predict_table_tiny",
        "data": {"schema": str(root / "schema.yaml"), "train": str(train_csv), "test": str(test_csv), "min_count": 1,
                 "valid_fraction": 0.2, "cache_dir": str(root / "cache")},
        "model": {"name": "dcnv2", "embedding_dim": 8, "dcnv2": {"num_cross_layers": 1, "deep_layer_sizes": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 256, "tensorboard": False,
                  "early_stopping_patience": 0},
    }
    train(from_dict(ExperimentConfig, cfg), root / "run")
    unsharded = unshard(root / "run")
    export_run(root / "run", root / "art", unsharded=unsharded)
    export_run(root / "run", root / "art_ts", unsharded=unsharded, format="torchscript")  # plain tables: they script
    # the eager reference: the trainer's model.pt in a one-process model, on the run's prepared test split
    data = unsharded.task.splits["test"].open()[0]
    eager = build_ctr_model(unsharded.cfg, unsharded.task.train_data, "cpu").eval()
    eager.load_state_dict(load_model_state(root / "run" / "model.pt"))
    batch = data.batch(slice(0, len(data)))
    with torch.no_grad():
        logits = CTRServing(eager.model, list(data.sparse_features))(batch.dense_features, *kjt_inputs(batch.sparse_features))
    np.save(root / "expected.npy", torch.sigmoid(logits).numpy())
    np.save(root / "labels.npy", batch.labels.numpy())
    np.save(root / "bags.npy", np.asarray(data.jagged["tags"][1]))
    return {"root": root, "art": root / "art", "art_ts": root / "art_ts", "test": test_csv}


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(rows, probabilities, labels)`` of a ``predict`` output file."""
    fields = [line.split("\t") for line in path.read_text().splitlines()]
    return [f[0] for f in fields], np.array([float(f[1]) for f in fields]), np.array([float(f[2]) for f in fields])


def test_export_records_the_schema_inputs(run: dict[str, Path]) -> None:
    manifest = json.loads((run["art"] / "manifest.json").read_text())
    inputs = manifest["inputs"]
    assert inputs["raw"] == "table_schema" and inputs["schema"] == "avazu_tags"
    assert inputs["keys"] == inputs["sparse_features"] == [
        "site_id", "device_model", "banner_pos", "hour_of_day", "C15", "site_id_x_hour_of_day", "tags"]
    assert inputs["jagged_features"] == ["tags"] and inputs["dense_features"] == ["C16"]
    bags = np.diff(np.load(run["root"] / "bags.npy"))
    assert bags.max() >= 2 and bags.min() == 0  # real bags (and empty ones) reach the model
    for name in ("schema.yaml", "vocab.json", "transforms.json", "site_id.parquet", "tags.parquet"):
        assert f"inputs/vocab/{name}" in manifest["sha256"], name
    # the serving side reads the saved schema without the strict config loader: the same schema
    assert load_saved_schema(run["art"] / "inputs" / "vocab" / "schema.yaml") == load_schema(run["root"] / "schema.yaml")


def test_raw_csv_scores_equal_the_eager_model_on_the_prepared_split(run: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the rows are prepared: removed afterwards
    result = Predictor.load(run["art"]).predict_file(run["test"], tmp_path / "scores.tsv", batch_size=64, progress=False)
    assert result["rows_read"] == result["scored"] == 200 and result["skipped"] == 0 and "auc" in result
    assert list(scratch.iterdir()) == []
    rows, probs, labels = read_scores(tmp_path / "scores.tsv")
    assert rows == [str(i) for i in range(200)]
    expected = np.load(run["root"] / "expected.npy")
    assert np.abs(probs - expected).max() <= TOLERANCE
    np.testing.assert_array_equal(labels, np.load(run["root"] / "labels.npy"))


def test_parquet_copy_scores_identically(run: dict[str, Path], tmp_path: Path) -> None:
    frame = pl.read_csv(run["test"], has_header=False, new_columns=COLUMNS, infer_schema_length=0)  # strings
    frame = frame.with_columns(pl.col("click").cast(pl.Int64), pl.col("C16").cast(pl.Int64))  # typed columns too
    frame.write_parquet(tmp_path / "test.parquet")
    predictor = Predictor.load(run["art"])
    predictor.predict_file(run["test"], tmp_path / "csv.tsv", batch_size=77, progress=False)
    result = predictor.predict_file(tmp_path / "test.parquet", tmp_path / "parquet.tsv", batch_size=77, progress=False)
    assert result["scored"] == 200 and result["skipped"] == 0
    assert (tmp_path / "parquet.tsv").read_text() == (tmp_path / "csv.tsv").read_text()


def test_malformed_rows_are_counted_and_named_and_good_rows_still_scored(run: dict[str, Path], tmp_path: Path) -> None:
    lines = run["test"].read_text().splitlines()
    col = {name: i for i, name in enumerate(COLUMNS)}

    def with_field(n: int, column: str, value: str) -> str:
        fields = lines[n].split(",")
        fields[col[column]] = value
        return ",".join(fields)

    bad = {4: lines[4].rsplit(",", 2)[0],  # two fields short
           11: with_field(11, "C16", "abc"), 19: with_field(19, "click", "7"), 29: with_field(29, "hour", "14102199")}
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(bad.get(i, line) for i, line in enumerate(lines)) + "\n")
    result = Predictor.load(run["art"]).predict_file(path, tmp_path / "out.tsv", progress=False)
    assert result["rows_read"] == 200 and result["skipped"] == 4 and result["scored"] == 196
    examples = result["examples"]
    assert len(examples) == 4 and examples[0].startswith(f"{path}:5: ")
    assert examples[1].startswith(f"{path}:12: column 'C16'")
    assert examples[2].startswith(f"{path}:20: column 'click'")
    assert examples[3].startswith(f"{path}:30: column 'hour'")
    assert "skipped 4 malformed rows of 200" in result["summary"]
    _, probs, _ = read_scores(tmp_path / "out.tsv")
    good = np.setdiff1d(np.arange(200), list(bad))
    assert np.abs(probs - np.load(run["root"] / "expected.npy")[good]).max() <= TOLERANCE


def test_schema_artefact_scores_without_training_code(run: dict[str, Path], tmp_path: Path) -> None:
    """The torch.export and the TorchScript (``--format torchscript``) artefacts, each loaded by ``Predictor.load``
    (``torch.export.load`` / ``torch.jit.load``, from the manifest's format) in a fresh process without training code
    or TorchRec: raw rows (multi-valued bags, empty ones too) score as the eager model."""
    manifest = json.loads((run["art_ts"] / "manifest.json").read_text())
    assert manifest["format"] == "torchscript" and manifest["artefact"] == "model.torchscript.pt"
    assert manifest["export_parity_max_abs"] <= TOLERANCE
    outs = {"art": tmp_path / "pt2.tsv", "art_ts": tmp_path / "ts.tsv"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run["test"]), *(str(p) for k, out in outs.items()
                                                                            for p in (run[k], out))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["loaded"] == []
    assert child["results"][str(run["art_ts"])]["program"] == "RecursiveScriptModule"
    for key, out in outs.items():
        assert child["results"][str(run[key])]["scored"] == 200, key
        _, probs, _ = read_scores(out)
        assert np.abs(probs - np.load(run["root"] / "expected.npy")).max() <= TOLERANCE, key

