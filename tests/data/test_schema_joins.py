"""Side tables in a feature schema (``joins:``), ``label.drop``, the ``prefix`` derived column, and the shipped
MovieLens-100K schema against an independent reading of the raw files."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_emb.config.io import ConfigError
from recsys_emb.data.schema import load_schema
from recsys_emb.data.tabular import prepare_table
from tests.conftest import shared_dataset

SCHEMA = """
name: clicks
format: {type: csv, header: true}
label: {column: y, positive: ["1"], negative: ["0"], drop: ["x"]}
joins:
  - file: users.csv
    key: uid
    format: {type: csv, header: true, columns: [uid, country, a, b, c]}
    flags: {tags: [a, b, c]}
derived:
  - {name: region, source: zip, fn: prefix, length: 2}
categorical:
  - {name: uid}
  - {name: country, lowercase: true}
  - {name: region}
multi_valued:
  - {name: tags}
"""
USERS = "uid,country,a,b,c\nu1,FR,1,0,1\nu2,DE,0,0,0\nu3,,0,1,0\n"
MAIN = "y,uid,zip\n1,u1,75001\n0,u2,10115\nx,u1,75002\n1,,99999\n0,u3,75003\n1,u1,13000\n"


def setup(tmp: Path, users: str = USERS, main: str = MAIN, schema: str = SCHEMA) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "users.csv").write_text(users)
    (tmp / "train.csv").write_text(main)
    (tmp / "s.yaml").write_text(schema)
    return tmp / "train.csv", tmp / "s.yaml"


def decoded(prepared: Path, feature: str) -> list:
    """A feature's values decoded through its vocabulary (None: missing id 0, '<oov>': id 1)."""
    meta = json.loads((prepared / "meta.json").read_text())
    values = pl.read_parquet(prepared / "vocab" / f"{meta['tables'][feature]}.parquet").get_column("value").to_list()
    names = [None, "<oov>", *values]
    if feature in meta["jagged_features"]:
        vals = np.load(prepared / "jagged" / f"{feature}.values.npy")
        offsets = np.load(prepared / "jagged" / f"{feature}.offsets.npy")
        return [sorted(names[v] for v in vals[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
    column = meta["sparse_features"].index(feature)
    return [names[v] for v in np.load(prepared / "sparse.npy")[:, column]]


def test_joined_columns_flags_prefix_and_dropped_labels(tmp_path: Path) -> None:
    data, schema = setup(tmp_path)
    meta = prepare_table([data], tmp_path / "p", schema, min_count=1)
    assert meta["rows"] == 5 and meta["dropped_rows"]["label.drop"] == 1 and meta["skipped_rows"] == 0
    assert meta["joins"]["users.csv"]["rows"] == 3
    p = tmp_path / "p"
    assert decoded(p, "uid") == ["u1", "u2", None, "u3", "u1"]
    # lower-cased after the join; u3's empty country is missing; a missing key joins nothing
    assert decoded(p, "country") == ["fr", "de", None, None, "fr"]
    assert decoded(p, "region") == ["75", "10", "99", "75", "13"]
    assert decoded(p, "tags") == [["a", "c"], [], [], ["b"], ["a", "c"]]
    assert np.load(p / "labels.npy").tolist() == [1, 0, 1, 0, 1]
    assert (p / "vocab" / "joins" / "users.csv.parquet").is_file()


def test_an_unknown_key_is_a_malformed_row_naming_file_line_and_join(tmp_path: Path) -> None:
    data, schema = setup(tmp_path, main="y,uid,zip\n1,u1,75001\n0,u9,10115\n1,u2,75002\n")
    meta = prepare_table([data], tmp_path / "p", schema, min_count=1)
    assert meta["rows"] == 2 and meta["skipped_rows"] == 1
    assert meta["malformed_examples"] == [f"{data}:3: column 'uid' (field 2): 'u9' has no row in users.csv (join on 'uid')"]


@pytest.mark.parametrize("users, message", [
    ("uid,country,a,b,c\nu1,FR,1,0,1\nu1,DE,0,0,0\n", "users.csv:3: column 'uid' (field 1): key 'u1' repeats line 2"),
    ("uid,country,a,b,c\nu1,FR,1,0,2\n", "users.csv:2: column 'c' (field 5): '2' is not a 0/1 flag"),
    ("uid,country,a,b,c\nu1,FR,1,0\n", "users.csv:2: 4 fields, join 'users.csv' format.columns lists 5"),
    ("uid,land,a,b,c\nu1,FR,1,0,1\n", "users.csv:1: header ['uid', 'land', 'a', 'b', 'c'] differs"),
    ("uid,country,a,b,c\n,FR,1,0,1\n", "users.csv:2: column 'uid' (field 1): a missing key"),
])
def test_a_broken_side_table_is_an_error_naming_file_line_and_column(tmp_path: Path, users: str, message: str) -> None:
    data, schema = setup(tmp_path, users=users)
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_table([data], tmp_path / "p", schema, min_count=1)


def test_splits_and_predict_inputs_use_the_stored_side_table(tmp_path: Path) -> None:
    data, schema = setup(tmp_path / "train")
    prepare_table([data], tmp_path / "p", schema, min_count=1)
    test, _ = setup(tmp_path / "test", users="uid,country,a,b,c\nu1,XX,0,0,0\nu2,XX,0,0,0\n",
                    main="y,uid,zip\n0,u2,10115\n1,u1,75001\n")
    (tmp_path / "test" / "users.csv").unlink()  # only the stored copy can be read now
    prepare_table([test], tmp_path / "t", schema, vocab_from=tmp_path / "p")
    assert decoded(tmp_path / "t", "country") == ["de", "fr"]
    assert decoded(tmp_path / "t", "tags") == [[], ["a", "c"]]


def test_a_missing_side_table_names_the_path_and_how_it_was_resolved(tmp_path: Path) -> None:
    data, schema = setup(tmp_path)
    (tmp_path / "users.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"join 'users.csv': .*users.csv not found .*first data file's folder"):
        prepare_table([data], tmp_path / "p", schema, min_count=1)


@pytest.mark.parametrize("entry, message", [
    ("{file: u.csv, key: uid, format: {type: csv, header: true}}", "format.columns must list the side table's columns"),
    ("{file: u.csv, key: uid, format: {type: csv, columns: [uid, a]}, flags: {t: [b]}}", r"collects \['b'\], which are not"),
    ("{file: u.csv, key: uid, format: {type: csv, columns: [uid, a]}, flags: {t: [uid]}}", "cannot collect the key column"),
    ("{file: u.csv, key: uid, format: {type: parquet, columns: [uid, a]}}", "side tables are CSV / TSV"),
])
def test_join_declaration_errors(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "s.yaml").write_text(f"name: s\nlabel: {{column: y}}\ncategorical: [{{name: uid}}]\njoins:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=message):
        load_schema(tmp_path / "s.yaml")


def test_movielens_100k_schema_against_the_raw_files(tmp_path: Path) -> None:
    root = shared_dataset("movielens_100k")
    meta = prepare_table([root / "u.data.gz"], tmp_path / "ml", "movielens_100k", min_count=1)
    ratings = np.loadtxt(gzip.open(root / "u.data.gz", "rt"), dtype=np.int64)  # user item rating timestamp
    kept = ratings[ratings[:, 2] != 3]
    assert meta["rows"] == len(kept) == 72_855 and meta["dropped_rows"]["label.drop"] == 27_145
    assert meta["skipped_rows"] == 0
    assert np.array_equal(np.load(tmp_path / "ml" / "labels.npy"), (kept[:, 2] >= 4).astype(np.float32))
    users = {line.split("|")[0]: line.strip().split("|") for line in (root / "u.user").read_text().splitlines() if line}
    items = {line.split("|")[0]: line.strip().split("|") for line in (root / "u.item").read_text(encoding="latin-1").splitlines()
             if line}
    genres = ["unknown", "action", "adventure", "animation", "childrens", "comedy", "crime", "documentary", "drama",
              "fantasy", "film_noir", "horror", "musical", "mystery", "romance", "sci_fi", "thriller", "war", "western"]
    rows = np.random.default_rng(0).choice(len(kept), 200, replace=False)
    got = {f: decoded(tmp_path / "ml", f) for f in ("user_id", "item_id", "age", "gender", "occupation", "zip3", "genres")}
    for r in rows:
        user, item = str(kept[r, 0]), str(kept[r, 1])
        assert (got["user_id"][r], got["item_id"][r]) == (user, item)
        assert [got["age"][r], got["gender"][r], got["occupation"][r]] == users[user][1:4]
        assert got["zip3"][r] == users[user][4][:3]
        assert got["genres"][r] == sorted(g for g, flag in zip(genres, items[item][5:]) if flag == "1")
