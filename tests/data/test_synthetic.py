"""Tests of the synthetic Criteo-like generator (recsys_emb.data.synthetic)."""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from recsys_emb.data.synthetic import (
    add_synth_criteo_arguments,
    format_rows,
    load_synth_model,
    read_criteo_rows,
    run_synth_criteo,
    synth_criteo,
    true_click_probabilities,
)
from recsys_emb.data.synthetic_marginals import CAT_MARGINALS, DENSE_MISSING_RATES
from recsys_emb.data.synthetic_model import CAT_MISSING_RATES, HiddenModelConfig, SynthCriteoModel

INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
HEX_RE = re.compile(r"^[0-9a-f]{8}$")


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="ascii", newline="\n") as f:
        return f.read().split("\n")[:-1]


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC, average ranks for ties (independent of the generator's histogram AUC)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    synth_criteo(out, rows=6000, test_rows=3000, seed=7, progress=False)
    return out


@pytest.fixture(scope="module")
def medium_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "medium"
    synth_criteo(out, rows=24000, test_rows=0, seed=11, progress=False)
    return out


def test_files_have_exact_criteo_format(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == [
        "oracle.json",
        "test.txt.gz",
        "train.txt.gz",
    ]
    for name, expected_rows in (("train.txt.gz", 6000), ("test.txt.gz", 3000)):
        lines = _lines(small_set / name)
        assert len(lines) == expected_rows
        for line in lines:
            fields = line.split("\t")
            assert len(fields) == 40, line  # trailing empty fields are kept
            assert fields[0] in ("0", "1")
            assert all(v == "" or INT_RE.match(v) for v in fields[1:14]), fields[1:14]
            assert all(v == "" or HEX_RE.match(v) for v in fields[14:]), fields[14:]


def test_i2_has_negative_counts_and_counts_are_heavy_tailed(medium_set: Path) -> None:
    _, dense, missing, _, _ = read_criteo_rows(medium_set / "train.txt.gz")
    assert (dense[:, 1] < 0).any()  # I2: -1, -2 occur as in Criteo
    assert (dense[:, [0, *range(2, 13)]] >= 0).all()
    i5 = dense[~missing[:, 4], 4]
    assert np.quantile(i5, 0.99) > 50 * max(np.median(i5), 1)  # I5: huge counts
    i10 = dense[~missing[:, 9], 9]
    assert i10.max() <= 10  # I10: small counts


def test_format_rows_matches_python_reference() -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, n)
    dense = rng.choice([-3, -1, 0, 1, 9, 10, 99, 100, 12345, 10**9, 2**40], size=(n, 13))
    dense_missing = rng.random((n, 13)) < 0.3
    codes = rng.choice([0, 1, 0xABC, 0xDEADBEEF, 0xFFFFFFFF, 0x0F00000F], size=(n, 26)).astype(
        np.uint32
    )
    cat_missing = rng.random((n, 26)) < 0.3
    cat_missing[0, -5:] = True  # trailing empty fields
    expected = "".join(
        "\t".join(
            [str(labels[i])]
            + ["" if dense_missing[i, j] else str(int(dense[i, j])) for j in range(13)]
            + ["" if cat_missing[i, j] else f"{int(codes[i, j]):08x}" for j in range(26)]
        )
        + "\n"
        for i in range(n)
    )
    assert format_rows(labels, dense, dense_missing, codes, cat_missing) == expected.encode()


def test_same_seed_same_bytes_other_seed_other_bytes(small_set: Path, tmp_path: Path) -> None:
    synth_criteo(tmp_path / "again", rows=6000, test_rows=3000, seed=7, progress=False)
    for name in ("train.txt.gz", "test.txt.gz", "oracle.json"):
        assert (tmp_path / "again" / name).read_bytes() == (small_set / name).read_bytes(), name
    synth_criteo(tmp_path / "other", rows=6000, test_rows=3000, seed=8, progress=False)
    assert _lines(tmp_path / "other" / "train.txt.gz") != _lines(small_set / "train.txt.gz")


def test_output_independent_of_chunk_size_and_prefix_stable(
    small_set: Path, tmp_path: Path
) -> None:
    synth_criteo(
        tmp_path / "chunked", rows=6000, test_rows=3000, seed=7, chunk_rows=4096, progress=False
    )
    for name in ("train.txt.gz", "test.txt.gz", "oracle.json"):
        assert (tmp_path / "chunked" / name).read_bytes() == (small_set / name).read_bytes(), name
    # A longer run starts with the rows of the shorter one: the hidden model ignores --rows.
    synth_criteo(
        tmp_path / "longer", rows=9000, test_rows=1000, seed=7, chunk_rows=4096, progress=False
    )
    assert _lines(tmp_path / "longer" / "train.txt.gz")[:6000] == _lines(small_set / "train.txt.gz")
    assert _lines(tmp_path / "longer" / "test.txt.gz") == _lines(small_set / "test.txt.gz")[:1000]


def test_oracle_metrics_match_independent_recomputation(small_set: Path) -> None:
    oracle = json.loads((small_set / "oracle.json").read_text())
    for split in ("train", "test"):
        probs, labels = true_click_probabilities(small_set, split)
        file_labels = np.array([int(line[0]) for line in _lines(small_set / f"{split}.txt.gz")])
        np.testing.assert_array_equal(labels, file_labels)
        assert probs.min() > 0.0 and probs.max() < 1.0
        auc = _rank_auc(labels, probs)
        logloss = float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log1p(-probs)))
        stats = oracle[split]
        assert stats["rows"] == len(labels)
        assert stats["positives"] == int(labels.sum())
        assert stats["oracle_auc"] == pytest.approx(auc, abs=1e-4)
        assert stats["oracle_logloss"] == pytest.approx(logloss, rel=1e-9)
        assert stats["mean_true_probability"] == pytest.approx(probs.mean(), rel=1e-9)
    assert oracle["oracle_auc"] == oracle["test"]["oracle_auc"]
    # The ceiling is informative but not trivial.
    assert 0.7 < oracle["oracle_auc"] < 0.9


def test_ctr_lands_near_target_and_true_probabilities_are_calibrated(medium_set: Path) -> None:
    probs, labels = true_click_probabilities(medium_set, "train")
    target = HiddenModelConfig().target_ctr
    assert abs(labels.mean() - target) < 0.015
    # Labels are Bernoulli(p): per decile of p, the click rate matches the mean p.
    edges = np.quantile(probs, np.linspace(0, 1, 11))
    bucket = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, 9)
    for b in range(10):
        sel = bucket == b
        p = probs[sel].mean()
        tolerance = 4 * np.sqrt(p * (1 - p) / sel.sum())
        assert abs(labels[sel].mean() - p) < tolerance, (b, labels[sel].mean(), p)


def test_missing_rates_follow_calibrated_constants(medium_set: Path) -> None:
    _, _, dense_missing, _, cat_missing = read_criteo_rows(medium_set / "train.txt.gz")
    np.testing.assert_allclose(dense_missing.mean(0), DENSE_MISSING_RATES, atol=0.015)
    np.testing.assert_allclose(cat_missing.mean(0), CAT_MISSING_RATES, atol=0.015)
    # Criteo's missing groups: I1 and I10 go missing together, so do C3, C4, C12, C16, C21, C24.
    np.testing.assert_array_equal(dense_missing[:, 0], dense_missing[:, 9])
    for c in (3, 11, 15, 20, 23):
        np.testing.assert_array_equal(cat_missing[:, 2], cat_missing[:, c])


def test_categorical_values_are_heavy_tailed(medium_set: Path) -> None:
    _, _, _, codes, cat_missing = read_criteo_rows(medium_set / "train.txt.gz")
    for c in (
        2,
        3,
        6,
        9,
        12,
        14,
        23,
        25,
    ):  # C3, C4, C7, C10, C13, C15, C24, C26: large vocabularies
        values = codes[~cat_missing[:, c], c]
        _, counts = np.unique(values, return_counts=True)
        top_share = counts.max() / counts.sum()
        assert top_share > 10 / len(counts), c  # uniform would give 1 / distinct
        if c in (2, 3):  # millions of values in Kaggle: a long tail of values seen once
            assert (counts == 1).sum() > 0.5 * len(counts), c
    c9 = codes[:, 8]
    assert len(np.unique(c9)) <= 3  # C9 has three values in Kaggle


def test_scales_follow_vocabulary_figures() -> None:
    full = SynthCriteoModel(0, "full")
    small = SynthCriteoModel(0, "small")
    assert full.vocab_sizes == [m.vocab_full for m in CAT_MARGINALS]
    assert full.vocab_sizes[2] == 10131227  # C3 in the Kaggle figures
    assert all(s <= f for s, f in zip(small.vocab_sizes, full.vocab_sizes, strict=True))
    # Per-value parameters depend on the seed only; the scale changes the tail and the bias.
    for c in range(26):
        np.testing.assert_array_equal(full.effects[c], small.effects[c])
    with pytest.raises(ValueError, match="scale"):
        SynthCriteoModel(0, "huge")


def test_value_codes_round_trip_and_unknown_codes_are_rejected() -> None:
    model = SynthCriteoModel(5, "full")
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.integers(0, v, 1000) for v in model.vocab_sizes], axis=1)
    codes = model.encode(ranks)
    np.testing.assert_array_equal(model.decode(codes), ranks)
    assert all(len(np.unique(codes[:, c])) == len(np.unique(ranks[:, c])) for c in range(26))
    bad = codes[:1].copy()
    bad[0, 8] = model.encode(np.full((1, 26), 3))[0, 8]  # C9 has 3 values: rank 3 does not exist
    with pytest.raises(ValueError, match="C9"):
        model.decode(bad)


def test_load_synth_model_rebuilds_the_generator(small_set: Path) -> None:
    model = load_synth_model(small_set)
    oracle = json.loads((small_set / "oracle.json").read_text())
    assert model.bias == oracle["hidden_model"]["bias"]
    assert model.vocab_sizes == oracle["vocab_sizes"]


def test_read_criteo_rows_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    good = "\t".join(["1"] + ["3"] * 13 + ["0000abcd"] * 26)
    bad.write_text(good + "\n" + good.rsplit("\t", 1)[0] + "\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: 39 fields, expected 40"):
        read_criteo_rows(bad)


def test_cli_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_synth_criteo_arguments(parser)
    args = parser.parse_args(["--rows", "2000", "--out", str(tmp_path / "cli"), "--seed", "3"])
    assert args.test_rows is None and args.scale == "small"
    assert run_synth_criteo(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert summary["rows"] == {"train": 2000, "test": 400}  # test rows default to rows // 5
    assert (
        summary["oracle_auc"]
        == json.loads((tmp_path / "cli" / "oracle.json").read_text())["oracle_auc"]
    )
    assert run_synth_criteo(parser.parse_args(["--rows", "0", "--out", str(tmp_path / "x")])) == 2
    assert "rows must be > 0" in capsys.readouterr().err
