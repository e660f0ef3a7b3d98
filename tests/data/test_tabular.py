"""Tests of ``recsys-emb prepare table``: schema strictness, malformed rows, Criteo identity, Parquet == CSV,
fitted transforms, bags, crosses, shared vocabularies and the Avazu tiny configs end to end."""

from __future__ import annotations

import filecmp
import gzip
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_emb.config.io import ConfigError
from recsys_emb.data.criteo_reader import MalformedRowError
from recsys_emb.data.schema import TableSchema, load_schema
from recsys_emb.data.tabular import prepare_table
from recsys_emb.data.tabular_reader import SchemaMismatchError
from tests.conftest import REPO, shared_dataset

ARRAYS = ("dense.npy", "sparse.npy", "labels.npy")
AVAZU_COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                 "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                 "device_conn_type", *[f"C{i}" for i in range(14, 22)]]


def write_schema(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SMALL = """
name: small
format: {type: csv, header: true}
label: {column: y}
numeric:
  - {name: n, dtype: int, transform: [clip, log1p], clip: [0, null]}
categorical:
  - {name: c}
ignore: [rid]
"""


def small(tmp_path: Path, body: str, header: str = "rid,y,n,c") -> tuple[Path, TableSchema]:
    data = tmp_path / "data.csv"
    data.write_text(header + "\n" + body)
    return data, load_schema(write_schema(tmp_path / "s.yaml", SMALL))


def make_avazu_csv(path: Path, rows: int, seed: int = 0, header: bool = True) -> Path:
    """An Avazu-format CSV whose clicks depend on site_id and the hour (gzip when the name ends in .gz)."""
    rng = np.random.default_rng(seed)
    sites = rng.integers(0, 30, rows)
    hours = rng.integers(0, 24, rows)
    logit = np.sin(sites) * 1.5 + (hours > 12) * 0.8 - 1.5
    clicks = rng.random(rows) < 1 / (1 + np.exp(-logit))
    lines = [",".join(AVAZU_COLUMNS)] if header else []
    for i in range(rows):
        values = [str(10**18 + i), str(int(clicks[i])), f"1410{rng.integers(21, 31)}{hours[i]:02d}", "1005",
                  str(rng.integers(0, 2)), f"s{sites[i]:07x}", f"d{sites[i] % 7:07x}", "28905ebd", "ecad2386",
                  "7801e8d9", "07d7df22", "a99f214a", f"{rng.integers(0, 500):08x}", f"m{rng.integers(0, 40)}",
                  "1", str(rng.integers(0, 3)), *[str(rng.integers(0, 50)) for _ in range(8)]]
        lines.append(",".join(values))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def same_arrays(a: Path, b: Path, names: tuple[str, ...] = ARRAYS) -> bool:
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names if (a / n).exists() or (b / n).exists())


# ------------------------------------------------------------------------------------- strictness
def test_unknown_schema_key_is_an_error_with_a_hint(tmp_path: Path) -> None:
    path = write_schema(tmp_path / "s.yaml", SMALL.replace("{name: c}", "{name: c, min_cont: 3}"))
    with pytest.raises(ConfigError, match=r"s\.yaml.*categorical\[0\]\.min_cont.*did you mean 'min_count'"):
        load_schema(path)


def test_schema_consistency_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="separator ',' is the column delimiter"):
        load_schema(write_schema(tmp_path / "a.yaml", SMALL + "multi_valued: [{name: tags, separator: ','}]\n"))
    with pytest.raises(ConfigError, match="'c' and 'd' set different min_count"):
        load_schema(write_schema(tmp_path / "b.yaml", SMALL.replace(
            "{name: c}", "{name: c, table: t, min_count: 1}\n  - {name: d, table: t, min_count: 3}")))
    with pytest.raises(ConfigError, match="bucketise needs buckets"):
        load_schema(write_schema(tmp_path / "c.yaml", SMALL.replace("[clip, log1p]", "[clip, bucketise]")))


def test_unknown_column_in_the_file_names_file_line_and_column(tmp_path: Path) -> None:
    data, schema = small(tmp_path, "1,1,3,a\n", header="rid,y,n,c,extra")
    with pytest.raises(SchemaMismatchError, match=rf"{re.escape(str(data))}:1: header: column 'extra' is neither used"):
        prepare_table([data], tmp_path / "out", schema)
    data, schema = small(tmp_path, "1,1,a\n", header="rid,y,c")
    with pytest.raises(SchemaMismatchError, match=rf"{re.escape(str(data))}:1: header: no column 'n'"):
        prepare_table([data], tmp_path / "out", schema)


def test_a_bad_separator_is_reported_with_the_delimiter_found(tmp_path: Path) -> None:
    data, schema = small(tmp_path, "1\t1\t3\ta\n", header="rid\ty\tn\tc")
    with pytest.raises(SchemaMismatchError, match=r"data\.csv:1: header: one column .*contains '\\t'"):
        prepare_table([data], tmp_path / "out", schema)


@pytest.mark.parametrize(("row", "column", "problem"), [
    ("1,1,x3,a", "n", "'x3' is not an integer"),
    ("1,1,1.5,a", "n", "'1.5' is not an integer"),
    ("1,,3,a", "y", "a missing value is not a label"),
    ("1,2,3,a", "y", "'2' is not a label"),
])
def test_wrong_types_and_missing_labels_name_file_line_and_column(tmp_path: Path, row: str, column: str,
                                                                   problem: str) -> None:
    data, schema = small(tmp_path, f"0,0,1,b\n{row}\n0,1,2,b\n")
    with pytest.raises(MalformedRowError, match=rf"data\.csv:3: column '{column}' \(field \d\): {re.escape(problem)}"):
        prepare_table([data], tmp_path / "out", schema, strict=True)
    meta = prepare_table([data], tmp_path / "out", schema)
    assert (meta["rows"], meta["skipped_rows"]) == (2, 1)
    assert meta["malformed_examples"][0].startswith(f"{data}:3: column '{column}'")


# ------------------------------------------------------------------------------------------ fuzz
_GOOD = st.tuples(st.sampled_from(["0", "1"]), st.one_of(st.just(""), st.integers(-5, 10**6).map(str)),
                  st.sampled_from(["", "a", "b", "c", "x y"]))
_BAD = st.sampled_from(["", "1,1", "1,1,2,a,b", "1,9,2,a", "1,1,2.5,a", "1,1,abc,a", "1,,2,a", '1,1,2,"a', "1,1,-1,a"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(_GOOD.map(lambda r: ("good", r)), _BAD.map(lambda r: ("bad", r))), min_size=1, max_size=60),
       chunk=st.sampled_from([16, 64, 1 << 20]), trailing=st.integers(0, 2))
def test_fuzzed_malformed_rows_are_counted_exactly(tmp_path: Path, rows: list, chunk: int, trailing: int) -> None:
    """Every data line is either a prepared row or a counted malformed row; trailing blank lines are neither."""
    lines = [f"9,{row[0]},{row[1]},{row[2]}" if kind == "good" else row for kind, row in rows]
    last = max((i for i, line in enumerate(lines) if line), default=-1)  # blank lines after it are not rows
    valid = [line.split(",")[1] for line in lines[: last + 1] if line.startswith("9,") or line == "1,1,-1,a"]
    bad_lines = [i + 2 for i, line in enumerate(lines[: last + 1])  # + 1-based + the header line
                 if not (line.startswith("9,") or line == "1,1,-1,a")]  # -1 is clipped to 0 before log1p: valid
    data, schema = small(tmp_path, "\n".join(lines) + "\n" * (1 + trailing))
    if not valid:
        with pytest.raises(ValueError, match="no valid rows"):
            prepare_table([data], tmp_path / "out", schema, chunk_bytes=chunk, workers=2)
        return
    meta = prepare_table([data], tmp_path / "out", schema, chunk_bytes=chunk, workers=2)
    assert meta["skipped_rows"] == len(bad_lines)
    assert meta["rows"] == len(valid)
    shown = [int(m.split(":")[1]) for m in meta["malformed_examples"]]
    assert shown == bad_lines[:5]
    labels = np.load(tmp_path / "out" / "labels.npy")
    assert labels.sum() == sum(label == "1" for label in valid)


def test_interior_blank_lines_are_malformed_and_trailing_ones_are_not(tmp_path: Path) -> None:
    data, schema = small(tmp_path, "0,1,1,a\n\n0,0,2,b\n\n\n")
    meta = prepare_table([data], tmp_path / "out", schema)
    assert (meta["rows"], meta["skipped_rows"], meta["malformed_examples"]) == (2, 1, [f"{data}:3: empty line"])


def test_quoted_fields(tmp_path: Path) -> None:
    data, schema = small(tmp_path, '0,1,1,"a,b"\n0,0,2,"x""y"\n0,0,2,"open\n')
    meta = prepare_table([data], tmp_path / "out", schema, min_count=1)
    assert (meta["rows"], meta["skipped_rows"]) == (2, 1)
    assert meta["malformed_examples"] == [f"{data}:4: unbalanced quotes"]
    values = pl.read_parquet(tmp_path / "out" / "vocab" / "c.parquet").get_column("value").to_list()
    assert sorted(values) == ["a,b", 'x"y']


# -------------------------------------------------------------------------------------- identity
def test_criteo_schema_is_byte_identical_to_prepare_criteo(tmp_path: Path) -> None:
    from recsys_emb.data.criteo import prepare_criteo
    from recsys_emb.data.synthetic import synth_criteo

    synth_criteo(tmp_path / "raw", 3000, test_rows=500, progress=False)
    train, test = tmp_path / "raw" / "train.txt.gz", tmp_path / "raw" / "test.txt.gz"
    for kwargs in ({}, {"min_count": 1}):
        a = prepare_criteo([train], tmp_path / "a", **kwargs)
        b = prepare_table([train], tmp_path / "b", "criteo", **kwargs)
        assert same_arrays(tmp_path / "a", tmp_path / "b")
        assert (a["vocab_sizes"], a["rows"], a["positives"]) == (b["vocab_sizes"], b["rows"], b["positives"])
    prepare_criteo([test], tmp_path / "at", vocab_from=tmp_path / "a")
    prepare_table([test], tmp_path / "bt", "criteo", vocab_from=tmp_path / "b")
    assert same_arrays(tmp_path / "at", tmp_path / "bt")


def test_criteo_schema_on_the_kaggle_head(tmp_path: Path) -> None:
    from recsys_emb.data.criteo import prepare_criteo

    head = shared_dataset("criteo_dac_kaggle_head")
    train, test = head / "train_rows_00001-07500.txt.gz", head / "test_unlabeled_rows_00001-10000.txt.gz"
    prepare_criteo([train], tmp_path / "a")
    prepare_table([train], tmp_path / "b", "criteo")
    assert same_arrays(tmp_path / "a", tmp_path / "b")
    prepare_criteo([test], tmp_path / "at", vocab_from=tmp_path / "a")
    meta = prepare_table([test], tmp_path / "bt", "criteo", vocab_from=tmp_path / "b")
    assert not meta["has_labels"] and same_arrays(tmp_path / "at", tmp_path / "bt")


def test_parquet_and_csv_versions_prepare_identically(tmp_path: Path) -> None:
    csv = make_avazu_csv(tmp_path / "a.csv", 400)
    frame = pl.read_csv(csv, infer_schema_length=0)  # all strings, as written
    frame = frame.with_columns(pl.col("C1").cast(pl.Int64), pl.col("click").cast(pl.Int64))  # typed columns too
    frame.write_parquet(tmp_path / "a.parquet")
    prepare_table([csv], tmp_path / "c", "avazu", min_count=1)
    prepare_table([tmp_path / "a.parquet"], tmp_path / "p", "avazu", min_count=1)
    assert same_arrays(tmp_path / "c", tmp_path / "p")
    for name in json.loads((tmp_path / "c" / "vocab" / "vocab.json").read_text())["tables"]:
        assert filecmp.cmp(tmp_path / "c" / "vocab" / f"{name}.parquet", tmp_path / "p" / "vocab" / f"{name}.parquet",
                           shallow=False)


# ------------------------------------------------------------------------ transforms, bags, crosses
RICH = """
name: rich
format: {type: csv, header: true}
label: {column: y, positive: ["yes"], negative: ["no"]}
numeric:
  - {name: price, transform: [clip, log1p, standardise], clip: [0, null], fill: -9}
  - {name: age, transform: [bucketise], buckets: 4}
categorical:
  - {name: src, table: page}
  - {name: dst, table: page}
  - {name: city, hash_buckets: 50}
multi_valued:
  - {name: tags, separator: "|", max_length: 2}
crosses:
  - {columns: [city, src], hash_buckets: 20}
"""


def test_standardise_bucketise_bags_crosses_and_shared_tables(tmp_path: Path) -> None:
    schema = load_schema(write_schema(tmp_path / "rich.yaml", RICH))
    header = "y,price,age,src,dst,city,tags"
    train = tmp_path / "train.csv"
    train.write_text(header + "\n" + "\n".join([
        "yes,1,10,a,b,paris,x|y|z", "no,3,20,b,a,rome,", "no,,30,a,c,paris,y", "yes,7,40,b,b,,x||x", "no,0,,a,a,rome,z",
    ]) + "\n")
    test = tmp_path / "test.csv"
    test.write_text(header + "\n" + "no,3,25,c,zz,rome,w|y\n")
    meta = prepare_table([train], tmp_path / "tr", schema, min_count=1)
    assert meta["sparse_features"] == ["src", "dst", "city", "age", "city_x_src", "tags"]
    assert meta["dense_features"] == ["price"] and meta["jagged_features"] == ["tags"]
    assert meta["tables"]["src"] == meta["tables"]["dst"] == "page"
    assert meta["vocab_sizes"][:3] == [5, 5, 51] and meta["format_version"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "tr" / "labels.npy"), [1, 0, 0, 1, 0])
    logs = np.log1p(np.array([1, 3, 7, 0], dtype=np.float64)).astype(np.float32).astype(np.float64)
    mean, std = logs.mean(), logs.std()
    dense = np.load(tmp_path / "tr" / "dense.npy")[:, 0]
    np.testing.assert_allclose(dense, [*((logs[:2] - mean) / std), -9, *((logs[2:] - mean) / std)], rtol=1e-6)
    sparse = np.load(tmp_path / "tr" / "sparse.npy")
    # shared vocabulary "page": counts a=5, b=4, c=1 over src and dst -> ids 2, 3, 4
    np.testing.assert_array_equal(sparse[:, 0], [2, 3, 2, 3, 2])
    np.testing.assert_array_equal(sparse[:, 1], [3, 2, 4, 3, 2])
    assert sparse[3, 2] == 0 and sparse[3, 4] == 0  # missing city: missing in the cross too
    assert sparse[4, 3] == 0 and len(set(sparse[:4, 3])) > 1  # missing age -> 0, buckets differ
    values = np.load(tmp_path / "tr" / "jagged" / "tags.values.npy")
    offsets = np.load(tmp_path / "tr" / "jagged" / "tags.offsets.npy")
    assert np.diff(offsets).tolist() == [2, 0, 1, 2, 1]  # max_length 2, empty cell = empty bag, "x||x" = 2 values
    assert values[3] == values[4]  # x and x

    # valid / test: the training vocabulary, quantile edges and standardisation, exactly
    meta_t = prepare_table([test], tmp_path / "te", schema, vocab_from=tmp_path / "tr")
    assert meta_t["vocab_sizes"] == meta["vocab_sizes"]
    row = np.load(tmp_path / "te" / "sparse.npy")[0]
    assert row[0] == 4 and row[1] == 1  # c is in the shared vocabulary (from dst); zz is not: OOV
    np.testing.assert_allclose(np.load(tmp_path / "te" / "dense.npy")[0, 0], dense[1])  # price 3 as in training
    edges = json.loads((tmp_path / "tr" / "vocab" / "vocab.json").read_text())["tables"]["age"]["edges"]
    assert row[3] == 2 + np.searchsorted(edges, 25.0, side="right")
    tags = np.load(tmp_path / "te" / "jagged" / "tags.values.npy")
    assert tags[0] == 1 and tags[1] == values[2]  # w unseen (OOV), y as in training


def test_derived_hour_of_day_and_weekday(tmp_path: Path) -> None:
    csv = make_avazu_csv(tmp_path / "a.csv", 50)
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[2], "14102100")  # a Tuesday, hour 0
    lines[2] = lines[2].replace(lines[2].split(",")[2], "14102199")  # hour 99: malformed
    csv.write_text("\n".join(lines) + "\n")
    meta = prepare_table([csv], tmp_path / "out", "avazu", min_count=1)
    assert meta["skipped_rows"] == 1 and "column 'hour' (field 3): '14102199' is not YYMMDDHH" in meta["malformed_examples"][0]
    vocab = tmp_path / "out" / "vocab"
    assert "2" in pl.read_parquet(vocab / "weekday.parquet").get_column("value").to_list()  # 2014-10-21: Tuesday
    assert "00" in pl.read_parquet(vocab / "hour_of_day.parquet").get_column("value").to_list()


# ------------------------------------------------------------------------------ integration
def test_cli_prepare_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_emb.cli import main

    csv = make_avazu_csv(tmp_path / "a.csv.gz", 100)
    assert main(["prepare", "table", "--schema", "avazu", "--data", str(csv), "--out", str(tmp_path / "o"),
                 "--min-count", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 100 and len(summary["sparse_features"]) == 23
    assert main(["prepare", "table", "--schema", "avazu", "--data", str(tmp_path / "absent.gz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "kaggle.com/c/avazu-ctr-prediction" in err and "datasets/avazu/README.md" in err
    assert main(["prepare", "table", "--schema", "nope", "--data", str(csv), "--out", str(tmp_path / "o")]) == 2
    assert "not a shipped schema name (shipped: avazu, criteo" in capsys.readouterr().err


def test_resolve_splits_a_headed_csv_and_reuses_the_training_encodings(tmp_path: Path) -> None:
    from recsys_emb.config.experiment import DataConfig
    from recsys_emb.data.resolve import resolve_data

    csv = make_avazu_csv(tmp_path / "a.csv", 200)
    test = make_avazu_csv(tmp_path / "t.csv", 50, seed=1, header=False)
    splits = resolve_data(DataConfig(schema="avazu", train=str(csv), test=str(test), min_count=1,
                                     valid_fraction=0.25, cache_dir=str(tmp_path / "cache")))
    rows = {role: s.open()[0] for role, s in splits.items()}
    assert {role: len(d) for role, d in rows.items()} == {"train": 150, "valid": 50, "test": 50}
    assert rows["valid"].meta["vocab_from"] == str(splits["train"].root.resolve())
    assert rows["test"].vocab_sizes == rows["train"].vocab_sizes


def _train_tiny(config: str, run_dir: Path, overrides: list[str]) -> dict:
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import load_config
    from recsys_emb.train.tasks import train

    cfg = load_config(ExperimentConfig, REPO / "configs" / f"{config}.yaml", overrides)
    return train(cfg, run_dir)


def test_avazu_tiny_config_trains_on_a_generated_csv(tmp_path: Path) -> None:
    train_csv = make_avazu_csv(tmp_path / "train.csv.gz", 1500)
    test_csv = make_avazu_csv(tmp_path / "test.csv", 300, seed=1, header=False)
    results = _train_tiny("avazu_dcnv2_tiny", tmp_path / "run", [
        f"data.train={train_csv}", f"data.test={test_csv}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=1", "train.max_steps=12"])
    assert results["test"]["rows"] == 300 and 0.0 <= results["test"]["auc"] <= 1.0
    saved = tmp_path / "run" / "data" / "vocab"
    assert (saved / "schema.yaml").is_file() and (saved / "vocab.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["avazu_dcnv2_tiny", "avazu_deepfm_tiny"])
def test_avazu_tiny_configs_train_on_the_shared_sample(config: str, tmp_path: Path) -> None:
    sample = shared_dataset("avazu_ctr_sample")
    results = _train_tiny(config, tmp_path / "run", [
        f"data.train={sample / 'train_part.csv.gz'}", f"data.test={sample / 'test_part.csv.gz'}",
        f"data.cache_dir={tmp_path / 'cache'}"])
    assert results["test"]["rows"] == 1000
    assert results["test"]["auc"] > 0.6, results
