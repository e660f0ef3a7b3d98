"""Tests of ``recsys-emb prepare criteo`` against an independent plain-Python reference."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_emb.data.criteo import (
    DENSE_FEATURES,
    SPARSE_FEATURES,
    add_prepare_criteo_arguments,
    prepare_criteo,
    read_meta,
    run_prepare_criteo,
)
from recsys_emb.data.criteo_vocab import VocabEncoder, stable_hash

HEAD_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "criteo_dac_kaggle_head"
META_KEYS = {
    "format_version", "dataset", "rows", "has_labels", "positives", "ctr", "dense_features",
    "sparse_features", "vocab_sizes", "categorical_encoding", "min_count", "hash_buckets",
    "dense_transform", "sources", "skipped_rows", "malformed_examples", "vocab_from",
}
_M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- reference


def splitmix64(v: int) -> int:
    """SplitMix64 output function, written from its definition with Python integers."""
    z = (v + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None and -(2**63) <= int(text) < 2**63


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text)


def reference_rows(files: list[tuple[str, str]], has_labels: bool):
    """Valid rows and (file, line, kind) of malformed ones, from str.split alone."""
    n_fields = 40 if has_labels else 39
    rows, bad = [], []
    for name, text in files:
        lines = text.replace("\r\n", "\n").split("\n")
        last = max((i for i, line in enumerate(lines) if line), default=-1)
        for number, line in enumerate(lines[: last + 1], start=1):
            fields = line.split("\t")
            if not line:
                bad.append((name, number, "empty line"))
            elif len(fields) != n_fields:
                bad.append((name, number, f"{len(fields)} fields, expected {n_fields}"))
            else:
                label = fields[0] if has_labels else None
                ints, cats = fields[int(has_labels):][:13], fields[int(has_labels):][13:]
                if has_labels and label not in ("0", "1"):
                    bad.append((name, number, "label"))
                elif not all(x == "" or _is_int(x) for x in ints):
                    bad.append((name, number, "int"))
                elif not all(c == "" or _is_hex8(c) for c in cats):
                    bad.append((name, number, "hex"))
                else:
                    rows.append((label, ints, [c.lower() for c in cats]))
    return rows, bad


def reference_dense(rows) -> np.ndarray:
    return np.array([[math.log1p(max(int(x), 0)) if x else 0.0 for x in ints]
                     for _, ints, _ in rows], dtype=np.float64).reshape(len(rows), 13)


def reference_vocab(rows, min_count: int) -> list[dict[str, int]]:
    """Per column: value -> id (2.. by descending count, ties by value)."""
    vocabs = []
    for j in range(26):
        counts = Counter(cats[j] for _, _, cats in rows if cats[j])
        kept = sorted((v for v, c in counts.items() if c >= min_count),
                      key=lambda v: (-counts[v], v))
        vocabs.append({v: i + 2 for i, v in enumerate(kept)})
    return vocabs


def reference_ids(rows, vocabs: list[dict[str, int]]) -> np.ndarray:
    return np.array([[vocabs[j].get(c, 1) if c else 0 for j, c in enumerate(cats)]
                     for _, _, cats in rows], dtype=np.int64).reshape(len(rows), 26)


# ----------------------------------------------------------------------------- data


def make_rows(n: int, seed: int, has_labels: bool = True, pool: int = 12) -> list[str]:
    """Random well-formed Criteo lines: skewed categorical pools, negatives, missing values."""
    rng = random.Random(seed)
    pools = [[f"{rng.getrandbits(32):08x}" for _ in range(rng.randint(1, pool))]
             for _ in range(26)]
    lines = []
    for _ in range(n):
        ints = ["" if rng.random() < 0.2 else str(rng.choice([-3, -1, 0, 1, 2, 7, 40, 10**6]))
                for _ in range(13)]
        cats = ["" if rng.random() < 0.15 else pools[j][min(int(rng.expovariate(0.6)),
                                                             len(pools[j]) - 1)]
                for j in range(26)]
        label = [str(rng.randint(0, 1))] if has_labels else []
        lines.append("\t".join(label + ints + cats))
    return lines


def write(path: Path, lines: list[str], *, eol: str = "\n", gz: bool = False,
          trailing: str = "\n") -> Path:
    data = (eol.join(lines) + trailing.replace("\n", eol)).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def load(out: Path) -> dict[str, np.ndarray]:
    arrays = {name: np.load(out / f"{name}.npy") for name in ("dense", "sparse")}
    if (out / "labels.npy").exists():
        arrays["labels"] = np.load(out / "labels.npy")
    return arrays


def assert_same_output(a: Path, b: Path) -> None:
    arrays_a, arrays_b = load(a), load(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name])


# ----------------------------------------------------------------------------- tests


def test_vocab_mode_matches_reference(tmp_path: Path) -> None:
    lines = make_rows(400, seed=1)
    src = write(tmp_path / "train.txt", lines)
    meta = prepare_criteo([src], tmp_path / "out", min_count=2)

    rows, bad = reference_rows([(str(src), "\n".join(lines) + "\n")], has_labels=True)
    assert bad == []
    vocabs = reference_vocab(rows, min_count=2)
    arrays = load(tmp_path / "out")
    labels = np.array([float(label) for label, _, _ in rows])
    np.testing.assert_array_equal(arrays["labels"], labels)
    np.testing.assert_allclose(arrays["dense"], reference_dense(rows), rtol=1e-6)
    np.testing.assert_array_equal(arrays["sparse"], reference_ids(rows, vocabs))
    assert meta["rows"] == len(rows)
    assert meta["positives"] == int(labels.sum())
    assert meta["ctr"] == pytest.approx(labels.mean())
    assert meta["vocab_sizes"] == [len(v) + 2 for v in vocabs]
    assert (meta["categorical_encoding"], meta["min_count"], meta["hash_buckets"]) == ("vocab", 2, None)
    assert meta["skipped_rows"] == 0 and meta["malformed_examples"] == []
    # some values fall below min_count, so the OOV id is exercised
    assert (arrays["sparse"] == 1).any() and (arrays["sparse"] == 0).any()


def test_saved_vocab_lists_kept_values_by_descending_count(tmp_path: Path) -> None:
    lines = make_rows(300, seed=2)
    src = write(tmp_path / "train.txt", lines)
    prepare_criteo([src], tmp_path / "out", min_count=3)
    rows, _ = reference_rows([(str(src), "\n".join(lines))], has_labels=True)
    for j, name in enumerate(SPARSE_FEATURES):
        table = pl.read_parquet(tmp_path / "out" / "vocab" / f"{name}.parquet")
        counts = Counter(cats[j] for _, _, cats in rows if cats[j])
        expected = sorted((v for v, c in counts.items() if c >= 3), key=lambda v: (-counts[v], v))
        assert table.get_column("value").to_list() == expected
        assert table.get_column("count").to_list() == [counts[v] for v in expected]


def test_unlabelled_39_field_file_is_detected(tmp_path: Path) -> None:
    lines = make_rows(120, seed=3, has_labels=False)
    src = write(tmp_path / "test.txt", lines)
    meta = prepare_criteo([src], tmp_path / "out", min_count=1)
    rows, _ = reference_rows([(str(src), "\n".join(lines))], has_labels=False)
    assert meta["has_labels"] is False and meta["positives"] is None and meta["ctr"] is None
    assert not (tmp_path / "out" / "labels.npy").exists()
    arrays = load(tmp_path / "out")
    np.testing.assert_allclose(arrays["dense"], reference_dense(rows), rtol=1e-6)
    np.testing.assert_array_equal(arrays["sparse"], reference_ids(rows, reference_vocab(rows, 1)))
    read_meta(tmp_path / "out")


def test_gzip_and_plain_inputs_give_the_same_output(tmp_path: Path) -> None:
    lines = make_rows(150, seed=4)
    prepare_criteo([write(tmp_path / "a.txt", lines)], tmp_path / "plain")
    prepare_criteo([write(tmp_path / "a.txt.gz", lines, gz=True)], tmp_path / "gz")
    assert_same_output(tmp_path / "plain", tmp_path / "gz")


def test_crlf_line_endings_and_missing_final_newline(tmp_path: Path) -> None:
    lines = make_rows(150, seed=5)
    prepare_criteo([write(tmp_path / "lf.txt", lines)], tmp_path / "lf")
    meta = prepare_criteo([write(tmp_path / "crlf.txt", lines, eol="\r\n", trailing="")],
                          tmp_path / "crlf")
    assert meta["skipped_rows"] == 0 and meta["rows"] == 150
    assert_same_output(tmp_path / "lf", tmp_path / "crlf")


def test_malformed_rows_are_counted_and_reported_with_lines(tmp_path: Path) -> None:
    good = make_rows(30, seed=6)
    fields = good[0].split("\t")
    broken = {
        3: "\t".join(fields[:39]),                                     # 39 fields
        5: "",                                                         # interior blank line
        8: "\t".join(["2"] + fields[1:]),                              # label not 0/1
        11: "\t".join(fields[:3] + ["1.5"] + fields[4:]),              # I3 not an integer
        14: "\t".join(fields[:20] + ["12345"] + fields[21:]),          # C7 too short
        17: "\t".join(fields[:30] + ["+1234567"] + fields[31:]),       # C17 signed
        20: "\t".join(fields + ["x"]),                                 # 41 fields
    }
    lines = list(good)
    for number, line in sorted(broken.items()):
        lines.insert(number - 1, line)
    src = write(tmp_path / "train.txt", lines, trailing="\n\n\n")  # trailing blanks: not rows
    meta = prepare_criteo([src], tmp_path / "out")

    rows, bad = reference_rows([(str(src), src.read_text())], has_labels=True)
    assert [line for _, line, _ in bad] == sorted(broken)
    assert meta["skipped_rows"] == len(broken)
    assert meta["rows"] == len(rows) == len(good)
    examples = meta["malformed_examples"]
    assert [e.split(":")[1] for e in examples] == [str(n) for n in sorted(broken)[:5]]
    assert examples[0] == f"{src}:3: 39 fields, expected 40"
    assert examples[1] == f"{src}:5: empty line"
    assert examples[2].startswith(f"{src}:8: field label (column 1): '2'")
    assert examples[3].startswith(f"{src}:11: field I3 (column 4): '1.5'")
    assert examples[4].startswith(f"{src}:14: field C7 (column 21): '12345'")
    np.testing.assert_allclose(load(tmp_path / "out")["dense"], reference_dense(rows), rtol=1e-6)


def test_strict_raises_naming_file_line_and_field(tmp_path: Path) -> None:
    lines = make_rows(20, seed=7)
    fields = lines[3].split("\t")
    lines[3] = "\t".join(fields[:5] + ["abc"] + fields[6:])
    src = write(tmp_path / "train.txt", lines)
    with pytest.raises(ValueError, match=re.escape(f"{src}:4: field I5 (column 6): 'abc'")):
        prepare_criteo([src], tmp_path / "out", strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]  # no output, no temp dir


def test_chunking_and_threads_do_not_change_the_result(tmp_path: Path) -> None:
    lines = make_rows(60, seed=8)
    lines[20] = ""
    lines[21] = ""
    lines[40] = lines[40] + "\tx"
    src = write(tmp_path / "t.txt", lines, trailing="\n\n")
    reference = prepare_criteo([src], tmp_path / "one", chunk_bytes=1 << 24, workers=1)
    # 50 bytes is shorter than a line; 1-line blocks also hold the blank lines alone.
    for chunk_bytes, workers in [(50, 1), (700, 3), (4096, 2)]:
        out = tmp_path / f"c{chunk_bytes}"
        meta = prepare_criteo([src], out, chunk_bytes=chunk_bytes, workers=workers)
        assert meta == reference | {"vocab_from": None}
        assert_same_output(tmp_path / "one", out)
    assert reference["skipped_rows"] == 3


def test_min_count_maps_rare_values_to_oov(tmp_path: Path) -> None:
    lines = make_rows(200, seed=9, pool=30)
    src = write(tmp_path / "t.txt", lines)
    rows, _ = reference_rows([(str(src), "\n".join(lines))], has_labels=True)
    for min_count in (1, 4):
        meta = prepare_criteo([src], tmp_path / f"m{min_count}", min_count=min_count)
        vocabs = reference_vocab(rows, min_count)
        sparse = load(tmp_path / f"m{min_count}")["sparse"]
        np.testing.assert_array_equal(sparse, reference_ids(rows, vocabs))
        assert meta["vocab_sizes"] == [len(v) + 2 for v in vocabs]
        assert ((sparse == 1).any()) == (min_count > 1)  # OOV only when values are dropped


def test_vocab_reuse_gives_train_ids_and_oov_for_unseen(tmp_path: Path) -> None:
    train_lines = make_rows(300, seed=10)
    valid_lines = make_rows(100, seed=10)[:60] + make_rows(40, seed=11)  # seen + unseen values
    train = write(tmp_path / "train.txt", train_lines)
    valid = write(tmp_path / "valid.txt", valid_lines)
    train_meta = prepare_criteo([train], tmp_path / "train_out", min_count=2)
    meta = prepare_criteo([valid], tmp_path / "valid_out", vocab_from=tmp_path / "train_out")

    train_rows, _ = reference_rows([(str(train), "\n".join(train_lines))], has_labels=True)
    valid_rows, _ = reference_rows([(str(valid), "\n".join(valid_lines))], has_labels=True)
    vocabs = reference_vocab(train_rows, min_count=2)
    sparse = load(tmp_path / "valid_out")["sparse"]
    np.testing.assert_array_equal(sparse, reference_ids(valid_rows, vocabs))
    assert (sparse == 1).any()  # unseen values
    assert meta["vocab_sizes"] == train_meta["vocab_sizes"]
    assert meta["vocab_from"] == str((tmp_path / "train_out").resolve())
    assert (meta["min_count"], meta["categorical_encoding"]) == (2, "vocab")
    # the copied vocabulary makes the new directory reusable in turn
    prepare_criteo([valid], tmp_path / "again", vocab_from=tmp_path / "valid_out")
    assert_same_output(tmp_path / "valid_out", tmp_path / "again")


def test_hash_mode_is_stable_and_in_range(tmp_path: Path) -> None:
    lines = make_rows(150, seed=12)
    src = write(tmp_path / "t.txt", lines)
    meta = prepare_criteo([src], tmp_path / "h1", hash_buckets=97)
    prepare_criteo([src], tmp_path / "h2", hash_buckets=97)
    assert_same_output(tmp_path / "h1", tmp_path / "h2")
    rows, _ = reference_rows([(str(src), "\n".join(lines))], has_labels=True)
    expected = [[1 + splitmix64(int(c, 16)) % 97 if c else 0 for c in cats] for _, _, cats in rows]
    sparse = load(tmp_path / "h1")["sparse"]
    np.testing.assert_array_equal(sparse, np.array(expected))
    assert sparse.min() >= 0 and sparse.max() <= 97
    assert meta["vocab_sizes"] == [98] * 26
    assert (meta["categorical_encoding"], meta["hash_buckets"], meta["min_count"]) == ("hash", 97, None)
    reused = prepare_criteo([src], tmp_path / "h3", vocab_from=tmp_path / "h1")
    assert reused["hash_buckets"] == 97
    assert_same_output(tmp_path / "h1", tmp_path / "h3")


def test_stable_hash_is_splitmix64() -> None:
    # 0xE220A8397B1DCDAF is the published first SplitMix64 output for seed 0.
    values = np.array([0, 1, 0xFFFFFFFF, 0x68FD1E64], dtype=np.uint32)
    assert stable_hash(values).tolist() == [splitmix64(int(v)) for v in values]
    assert int(stable_hash(np.array([0], dtype=np.uint32))[0]) == 0xE220A8397B1DCDAF


def test_dense_transform_clips_negatives_before_log1p(tmp_path: Path) -> None:
    cats = ["68fd1e64"] * 26
    values = ["-3", "-1", "0", "1", "", "+5", "05", "123456789012", "-0", "7", "", "2", "3"]
    src = write(tmp_path / "t.txt", ["\t".join(["1"] + values + cats)])
    prepare_criteo([src], tmp_path / "out", min_count=1)
    expected = [math.log1p(max(int(v), 0)) if v else 0.0 for v in values]
    np.testing.assert_allclose(load(tmp_path / "out")["dense"][0], expected, rtol=1e-6)


def test_uppercase_hex_is_the_same_value(tmp_path: Path) -> None:
    base = ["1"] + ["1"] * 13
    lines = ["\t".join(base + ["ABCDEF12"] * 26), "\t".join(base + ["abcdef12"] * 26)]
    src = write(tmp_path / "t.txt", lines)
    meta = prepare_criteo([src], tmp_path / "out", min_count=2)
    np.testing.assert_array_equal(load(tmp_path / "out")["sparse"], np.full((2, 26), 2))
    assert meta["vocab_sizes"] == [3] * 26
    table = pl.read_parquet(tmp_path / "out" / "vocab" / "C1.parquet")
    assert table.rows() == [("abcdef12", 2)]


def test_meta_json_fields_and_array_layout(tmp_path: Path) -> None:
    src = write(tmp_path / "t.txt", make_rows(50, seed=13))
    meta = prepare_criteo([src], tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta and set(meta) == META_KEYS
    assert meta["format_version"] == 1 and meta["dataset"] == "criteo"
    assert meta["dense_features"] == DENSE_FEATURES and meta["sparse_features"] == SPARSE_FEATURES
    assert meta["dense_transform"] == "log1p(max(x, 0))"
    assert meta["sources"] == [str(src.resolve())]
    arrays = load(tmp_path / "out")
    assert arrays["dense"].dtype == np.float32 and arrays["dense"].shape == (50, 13)
    assert arrays["sparse"].dtype == np.int32 and arrays["sparse"].shape == (50, 26)
    assert arrays["labels"].dtype == np.float32 and arrays["labels"].shape == (50,)
    assert (arrays["sparse"] < np.array(meta["vocab_sizes"])).all()
    assert read_meta(tmp_path / "out") == meta
    mm = np.load(tmp_path / "out" / "sparse.npy", mmap_mode="r")
    assert mm.flags.c_contiguous and mm.shape == (50, 26)


def test_read_meta_rejects_bad_directories(tmp_path: Path) -> None:
    src = write(tmp_path / "t.txt", make_rows(20, seed=14))
    out = tmp_path / "out"
    meta = prepare_criteo([src], out)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        read_meta(tmp_path)
    (out / "meta.json").write_text(json.dumps(meta | {"format_version": 7}))
    with pytest.raises(ValueError, match="format_version 7"):
        read_meta(out)
    (out / "meta.json").write_text(json.dumps(meta | {"rows": 21}))
    with pytest.raises(ValueError, match=r"sparse\.npy|dense\.npy"):
        read_meta(out)
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        read_meta(out)


def test_existing_output_is_replaced_only_after_success(tmp_path: Path) -> None:
    first = write(tmp_path / "a.txt", make_rows(40, seed=15))
    out = tmp_path / "out"
    prepare_criteo([first], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = make_rows(40, seed=16)
    bad[7] = "oops"
    with pytest.raises(ValueError):
        prepare_criteo([write(tmp_path / "b.txt", bad)], out, strict=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    meta = prepare_criteo([write(tmp_path / "c.txt", make_rows(25, seed=17))], out)
    assert meta["rows"] == 25 and read_meta(out)["rows"] == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt", "out"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        prepare_criteo([first], tmp_path / "other")


def test_several_inputs_are_concatenated_with_per_file_line_numbers(tmp_path: Path) -> None:
    a_lines, b_lines = make_rows(30, seed=18), make_rows(20, seed=19)
    b_lines[4] = "1\t2"
    a = write(tmp_path / "day_0.gz", a_lines, gz=True)
    b = write(tmp_path / "day_1", b_lines)
    meta = prepare_criteo([a, b], tmp_path / "out", min_count=1)
    rows, bad = reference_rows([(str(a), "\n".join(a_lines)), (str(b), "\n".join(b_lines))], True)
    assert bad == [(str(b), 5, "2 fields, expected 40")]
    assert meta["malformed_examples"] == [f"{b}:5: 2 fields, expected 40"]
    assert meta["sources"] == [str(a.resolve()), str(b.resolve())]
    np.testing.assert_array_equal(load(tmp_path / "out")["sparse"],
                                  reference_ids(rows, reference_vocab(rows, 1)))


def test_control_characters_and_invalid_utf8_are_malformed_rows(tmp_path: Path) -> None:
    lines = make_rows(10, seed=20)
    fields = lines[2].split("\t")
    lines[2] = "\t".join(fields[:14] + ["68fd\x01e64"] + fields[15:])
    data = ("\n".join(lines) + "\n").encode()
    data = data.replace(lines[6].encode(), lines[6].encode()[:-2] + b"\xff\xfe", 1)
    src = tmp_path / "t.txt"
    src.write_bytes(data)
    meta = prepare_criteo([src], tmp_path / "out")
    assert meta["skipped_rows"] == 2 and meta["rows"] == 8
    assert meta["malformed_examples"][0].startswith(f"{src}:3: field C1 (column 15)")
    assert meta["malformed_examples"][1].startswith(f"{src}:7: field C26 (column 40)")


def test_mixed_labelled_and_unlabelled_inputs_are_rejected(tmp_path: Path) -> None:
    a = write(tmp_path / "train.txt", make_rows(5, seed=21))
    b = write(tmp_path / "test.txt", make_rows(5, seed=21, has_labels=False))
    with pytest.raises(ValueError, match="mix labelled and unlabelled"):
        prepare_criteo([a, b], tmp_path / "out")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_prepare_criteo_arguments(parser)
    return run_prepare_criteo(parser.parse_args(argv))


def test_cli_prints_json_summary_and_skip_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = make_rows(30, seed=22)
    lines[9] = "\t".join(lines[9].split("\t")[:39])
    src = write(tmp_path / "train.txt", lines)
    assert _cli(["--data", str(src), "--out", str(tmp_path / "out"), "--min-count", "1"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["rows"], summary["skipped_rows"]) == (29, 1)
    assert f"skipped 1 malformed rows of 30 (first: {src}:10: 39 fields, expected 40)" in captured.err


def test_cli_reports_bad_options_and_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "train.txt", make_rows(5, seed=23))
    out = str(tmp_path / "out")
    assert _cli(["--data", str(src), "--out", out, "--hash-buckets", "8", "--min-count", "2"]) == 2
    assert "min_count" in capsys.readouterr().err
    assert _cli(["--data", str(tmp_path / "missing.txt"), "--out", out]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert _cli(["--input", str(src), "--out", out, "--vocab-from", str(tmp_path)]) == 2
    assert "vocab.json" in capsys.readouterr().err


def test_vocab_encoder_matches_a_dict_on_large_vocabularies() -> None:
    rng = np.random.default_rng(0)
    keys = [rng.permutation(np.unique(rng.integers(0, 2**32, size, dtype=np.uint64)))
            .astype(np.uint32) for size in (0, 1, 5000, 200_000)]
    encoder = VocabEncoder(list("abcd"), keys, [np.ones(len(k), np.int64) for k in keys], 1)
    unseen = rng.integers(0, 2**32, (20_000, 4), dtype=np.uint64).astype(np.uint32)
    seen = np.stack([k[rng.integers(0, len(k), 20_000)] if len(k) else unseen[:, 0]
                     for k in keys], axis=1)
    values = np.where(rng.random((20_000, 4)) < 0.7, seen, unseen)
    missing = rng.random((20_000, 4)) < 0.1
    maps = [{int(v): i + 2 for i, v in enumerate(k)} for k in keys]
    expected = [[0 if missing[r, j] else maps[j].get(int(values[r, j]), 1) for j in range(4)]
                for r in range(len(values))]
    np.testing.assert_array_equal(encoder.encode(values, missing), np.array(expected))


# ----------------------------------------------------------------------------- real data


@pytest.fixture
def head_sample() -> Path:
    if not (HEAD_DIR / "train_rows_00001-07500.txt.gz").exists():
        pytest.skip(f"real Criteo head sample not available at {HEAD_DIR}")
    return HEAD_DIR


def _provenance_counts(folder: Path) -> dict:
    text = (folder / "PROVENANCE.md").read_text()
    return json.loads(text.split("```json", 1)[1].split("```", 1)[0])


def test_real_kaggle_head_sample(head_sample: Path, tmp_path: Path) -> None:
    train = head_sample / "train_rows_00001-07500.txt.gz"
    test = head_sample / "test_unlabeled_rows_00001-10000.txt.gz"
    meta = prepare_criteo([train], tmp_path / "train", min_count=1)
    text = gzip.decompress(train.read_bytes()).decode()
    rows, bad = reference_rows([(str(train), text)], has_labels=True)
    documented = _provenance_counts(head_sample)["train_rows_00001-07500"]

    assert bad == [] and meta["skipped_rows"] == 0
    assert meta["rows"] == len(rows) == documented["rows"]
    assert meta["positives"] == sum(label == "1" for label, _, _ in rows) == documented["positives"]
    # PROVENANCE counts the empty string as a distinct value; the vocabulary keeps it as id 0.
    for j, size in enumerate(meta["vocab_sizes"]):
        column = [cats[j] for _, _, cats in rows]
        has_missing = "" in column
        assert len(set(column)) == documented["distinct_values_per_cat_col"][j]
        assert size == len(set(column)) - has_missing + 2
    sparse = load(tmp_path / "train")["sparse"]
    np.testing.assert_array_equal(sparse, reference_ids(rows, reference_vocab(rows, 1)))
    np.testing.assert_allclose(load(tmp_path / "train")["dense"], reference_dense(rows), rtol=1e-6)

    test_meta = prepare_criteo([test], tmp_path / "test", vocab_from=tmp_path / "train")
    test_rows, test_bad = reference_rows(
        [(str(test), gzip.decompress(test.read_bytes()).decode())], has_labels=False)
    assert test_bad == [] and test_meta["has_labels"] is False
    assert test_meta["rows"] == len(test_rows) == _provenance_counts(head_sample)[
        "test_unlabeled_rows_00001-10000"]["rows"]
    np.testing.assert_array_equal(load(tmp_path / "test")["sparse"],
                                  reference_ids(test_rows, reference_vocab(rows, 1)))


def test_split_raw_file_is_safe_when_several_workers_split_the_same_file(tmp_path):
    # Benchmark seeds run as parallel processes and may split the same raw file into the same cache at once.
    # Each worker must write its own temporary files (a shared temporary name let one worker move another's
    # half-written file away). Threads stand in for the processes here (the temporary names include both ids).
    from concurrent.futures import ThreadPoolExecutor

    from recsys_emb.data.resolve import split_raw_file

    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"{i}\tline\n" for i in range(60_000)))
    out = tmp_path / "split"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: split_raw_file(raw, 0.1, out), range(4)))
    assert all(r == results[0] for r in results)
    head, tail = results[0]
    import gzip

    with gzip.open(head, "rt") as h, gzip.open(tail, "rt") as t:
        assert [int(x.split("\t")[0]) for x in h] + [int(x.split("\t")[0]) for x in t] == list(range(60_000))
    assert sorted(p.name for p in out.iterdir()) == ["head.txt.gz", "tail.txt.gz"]  # no temporary file left behind
