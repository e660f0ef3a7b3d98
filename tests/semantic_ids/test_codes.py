"""Collision suffix, code metrics and the SID file."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_emb.semantic_ids.codes import SemanticIds, add_collision_suffix, code_metrics


def test_suffix_makes_hand_made_duplicates_unique():
    codes = np.array([[1, 2], [0, 0], [1, 2], [3, 1], [1, 2], [0, 0]])
    full = add_collision_suffix(codes)
    # hand-worked: item order inside each group gives 0, 1, 2, ...
    np.testing.assert_array_equal(full[:, -1], [0, 0, 1, 0, 2, 1])
    np.testing.assert_array_equal(full[:, :2], codes)
    assert len({tuple(r) for r in full.tolist()}) == len(codes)


def test_suffix_random_sets_always_unique():
    rng = np.random.default_rng(0)
    for _ in range(5):
        codes = rng.integers(0, 3, size=(200, 2))
        full = add_collision_suffix(codes)
        assert len({tuple(r) for r in full.tolist()}) == 200
        # the suffix counts earlier items with the same codes
        for i in (0, 17, 199):
            assert full[i, -1] == sum(1 for j in range(i) if tuple(codes[j]) == tuple(codes[i]))


def test_code_metrics_hand_worked():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 0]])
    m = code_metrics(codes, [4, 2])
    assert m["collision_rate"] == 0.5  # items 0 and 1 share (0, 1)
    assert m["unique_id_ratio"] == 0.75  # 3 distinct tuples / 4 items
    assert m["max_collision"] == 2
    assert m["usage"] == [0.75, 1.0]
    np.testing.assert_allclose(m["perplexity"][1], 2.0)  # codes 1,1,0,0: uniform over 2
    np.testing.assert_allclose(m["perplexity"][0], np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))


def test_semantic_ids_roundtrip_and_validation(tmp_path):
    sids = SemanticIds.from_codes(["a", "b", "c"], np.array([[1, 0], [1, 0], [2, 3]]), 4)
    assert sids.level_sizes == [4, 4, 2]
    sids.save(tmp_path / "s.npz")
    back = SemanticIds.load(tmp_path / "s.npz")
    assert back.keys == ["a", "b", "c"] and back.level_sizes == sids.level_sizes
    np.testing.assert_array_equal(back.codes, sids.codes)
    assert back.as_strings()[1] == "<a_1><b_0><c_1>"
    with pytest.raises(ValueError, match="out of range"):
        SemanticIds(["a"], np.array([[5]]), [4])
    with pytest.raises(FileNotFoundError, match="sid assign"):
        SemanticIds.load(tmp_path / "none.npz")
