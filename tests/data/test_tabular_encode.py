"""VocabTable.encode (sorted-hash lookup, built once per table) against a plain dict, OOV and missing values included."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_emb.data.tabular_encode import MISSING_ID, OOV_ID, VocabTable


@pytest.mark.parametrize("collisions", [False, True])
def test_encode_equals_a_dict_lookup(collisions: bool) -> None:
    rng = np.random.default_rng(0)
    vocab = [f"v{x}" for x in rng.permutation(5000)]
    table = VocabTable(pl.Series(vocab), np.ones(len(vocab), dtype=np.int64), 2, len(vocab))
    ids = {v: i + 2 for i, v in enumerate(vocab)}
    rows = [None if r < 0.05 else f"v{int(r * 8000)}" for r in rng.random(3000)] + ["", "v", "v10000"]
    expected = [MISSING_ID if v is None else ids.get(v, OOV_ID) for v in rows]
    if collisions:  # the fallback taken when two vocabulary values share a 64-bit hash
        table.encode(pl.Series(["v1"]))
        table._collisions = True
    assert table.encode(pl.Series(rows, dtype=pl.String)).tolist() == expected
    assert table.encode(pl.Series(rows, dtype=pl.String)).tolist() == expected  # the lookup is reused


def test_an_empty_vocabulary_maps_everything_to_oov_or_missing() -> None:
    table = VocabTable(pl.Series([], dtype=pl.String), np.zeros(0, dtype=np.int64), 2, 0)
    assert table.encode(pl.Series(["a", None, "b"])).tolist() == [OOV_ID, MISSING_ID, OOV_ID]
