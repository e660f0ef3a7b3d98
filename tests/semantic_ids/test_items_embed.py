"""Item text readers, missing text, content embeddings and their cache, duplicate texts."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from recsys_emb.semantic_ids.config import RQVAEConfig, RQVAETrainConfig
from recsys_emb.semantic_ids.embed import embed_texts, hashing_encoder, load_matrix
from recsys_emb.semantic_ids.items import MissingTextError, check_missing, read_items
from recsys_emb.semantic_ids.train import assign_ids, train_rqvae
from tests.conftest import shared_dataset


def test_unisrec_reader_with_index_and_missing(tmp_path):
    (tmp_path / "x.text").write_text("item_id:token\ttext:token_seq\nA\tglue bottle\nB\ttape roll\n")
    (tmp_path / "x.item2index").write_text("B\t0\nA\t1\nC\t2\n")
    items = read_items("unisrec", tmp_path / "x.text", tmp_path / "x.item2index")
    assert items.keys == ["B", "A", "C"] and items.texts == ["tape roll", "glue bottle", ""]
    assert items.missing == ["C"]
    with pytest.raises(MissingTextError, match=r"1 of 3 items have no text: C"):
        check_missing(items, "error", where="x.text")
    assert check_missing(items, "empty") is items


def test_amazon_json_and_movielens_and_errors(tmp_path):
    data = {"1": {"title": "Drill", "description": "['Fast.', 'Cordless.']", "brand": "Acme", "categories": ""},
            "0": {"title": "", "description": "", "brand": "", "categories": ""}}
    with gzip.open(tmp_path / "i.json.gz", "wt") as f:
        json.dump(data, f)
    items = read_items("amazon_json", tmp_path / "i.json")  # finds the .gz
    assert items.keys == ["0", "1"] and items.texts[1] == "Drill. Acme. Fast. Cordless."
    assert items.missing == ["0"]
    (tmp_path / "movies.dat").write_bytes("1::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    ml = read_items("movielens", tmp_path / "movies.dat")
    assert ml.texts == ["Amélie (2001). Genres: Comedy, Romance"]
    (tmp_path / "bad.tsv").write_text("a\tok\nno tab here\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2"):
        read_items("tsv", tmp_path / "bad.tsv")


def test_hashing_encoder_and_cache(tmp_path):
    enc = hashing_encoder(64)
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return enc(texts)

    texts = ["red glue bottle", "red glue tube", "steel staples box"]
    a = embed_texts(texts, counting, encoder_id="h64", batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls == [2, 1] and a.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2]
    b = embed_texts(texts, counting, encoder_id="h64", batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls == [2, 1] and np.array_equal(a, b)  # served from the cache
    embed_texts(texts[::-1], counting, encoder_id="h64", batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls == [2, 1, 2, 1]  # a changed order re-encodes


def test_load_matrix_checks(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[1.0, 2.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        load_matrix(tmp_path / "m.npy")
    np.save(tmp_path / "ok.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match="3 rows but there are 4 items"):
        load_matrix(tmp_path / "ok.npy", 4)


def test_duplicate_texts_still_get_unique_ids():
    texts = ["glue", "glue", "tape", "tape", "tape", "drill bits", "saw blade", "glue"]
    x = embed_texts(texts, hashing_encoder(32), progress=False)
    model, _ = train_rqvae(x, RQVAEConfig(hidden_dims=[16], latent_dim=4, num_levels=2, codebook_size=4),
                           RQVAETrainConfig(epochs=3, batch_size=8, progress=False))
    sids = assign_ids(model, x, [str(i) for i in range(len(texts))])
    assert len({tuple(r) for r in sids.codes.tolist()}) == len(texts)
    # identical texts -> identical RQ-VAE codes, told apart only by the suffix
    assert (sids.codes[0, :-1] == sids.codes[1, :-1]).all() and sids.codes[0, -1] != sids.codes[1, -1]
    assert sorted(sids.codes[[2, 3, 4], -1].tolist()) == [0, 1, 2]


def test_shared_item_text_files_parse():
    sci = shared_dataset("amazon_scientific_text")
    items = read_items("unisrec", sci / "Scientific.text.gz", sci / "Scientific.item2index")
    assert len(items) == 1585 and not items.missing
    ind = shared_dataset("amazon2018_industrial_text_sid")
    items = read_items("amazon_json", ind / "index" / "Industrial_and_Scientific.item.json.gz")
    assert len(items) == 3686 and items.keys[:3] == ["0", "1", "2"]
    ml = read_items("movielens", shared_dataset("movielens_1m_meta") / "movies.dat")
    assert len(ml) == 3883 and "Genres:" in ml.texts[0]


@pytest.mark.slow
def test_minilm_encoder_offline():
    from recsys_emb.semantic_ids.embed import minilm_encoder

    enc = minilm_encoder()
    v = enc(["cordless power drill", "electric drill driver", "organic green tea"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
