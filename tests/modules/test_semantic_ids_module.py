"""Semantic-ID pre-transform + table: reductions to a plain EBC, edge cases, registry, models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.modules.spec import PooledGroups, build_pooled
from recsys_emb.modules.semantic_ids import (
    SemanticIdTransform,
    item_piece_rows,
    SemanticIdOptions,
    semantic_id_embedding_bag_collection,
)
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection
from recsys_emb.semantic_ids.codes import SemanticIds

D = 8


def tables(n_items: int = 6, n_user: int = 5) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(num_embeddings=n_user, embedding_dim=D, name="t_user", feature_names=["user"]),
        EmbeddingBagConfig(num_embeddings=n_items, embedding_dim=D, name="t_item", feature_names=["item"]),
    ]


def batch() -> KeyedJaggedTensor:
    # user: [[0], [3], [4]]; item: [[1, 5], [], [7]] (7 is outside the 6-item code table)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor([0, 3, 4, 1, 5, 7]), lengths=torch.tensor([1, 1, 1, 2, 0, 1])
    )


CODES = np.array([[0, 1], [2, 1], [0, 0], [1, 3], [2, 2], [0, 1]])  # 6 items, 2 levels (K = 3, 4)
SIZES = [3, 4]


def unigram_module(keep: bool = False) -> TransformedEmbeddingBagCollection:
    from recsys_emb.semantic_ids.tokenizers import NgramTokenizer, PieceTable

    tok = NgramTokenizer("unigram", SIZES)
    table = PieceTable(tok, "dense")
    offsets, rows = table.item_rows(tok.pieces(CODES))
    torch.manual_seed(0)
    return semantic_id_embedding_bag_collection(tables(n_items=8), ["item"], offsets, rows, table.num_rows, keep_item_id=keep, codes=CODES)


def test_unigram_injective_equals_ebc_over_explicit_pieces():
    module = unigram_module()
    assert not [p for p in module.transform.parameters()]
    # explicit pieces worked out by hand: row = 1 + level offset (0, 3) + code; unknown item -> row 0
    explicit = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"],
        values=torch.tensor([0, 3, 4, 1 + 2, 1 + 3 + 1, 1 + 0, 1 + 3 + 1, 0]),
        lengths=torch.tensor([1, 1, 1, 4, 0, 1]),
    )
    ref = EmbeddingBagCollection(tables=module.embedding_bag_configs())
    ref.load_state_dict(module.ebc.state_dict())
    out, expected = module(batch()), ref(explicit)
    assert out.keys() == expected.keys()
    torch.testing.assert_close(out.values(), expected.values())
    # and by hand from the weights: item bag 0 = rows 3 + 5 + 1 + 5
    w = module.ebc.embedding_bags["semantic_ids"].weight
    torch.testing.assert_close(out["item"][0], w[3] + w[5] + w[1] + w[5])
    torch.testing.assert_close(out["item"][1], torch.zeros(D))


def test_item_id_as_single_level_reduces_to_plain_ebc():
    n = 6
    sids = np.arange(n)[:, None]  # one level whose code IS the item id
    offsets = np.arange(n + 1)
    rows = 1 + np.arange(n)  # unigram, dense mapping
    module = semantic_id_embedding_bag_collection(tables(), ["item"], offsets, rows, n + 1, codes=sids)
    plain = EmbeddingBagCollection(tables=tables())
    with torch.no_grad():
        module.ebc.embedding_bags["semantic_ids"].weight[1:] = plain.embedding_bags["t_item"].weight
        module.ebc.embedding_bags["t_user"].weight.copy_(plain.embedding_bags["t_user"].weight)
    kjt = KeyedJaggedTensor.from_lengths_sync(["user", "item"], torch.tensor([0, 3, 4, 1, 5, 2]), torch.tensor([1, 1, 1, 2, 0, 1]))
    out, ref = module(kjt), plain(kjt)
    for key in ("user", "item"):
        torch.testing.assert_close(out[key], ref[key])


def test_keep_item_id_and_weights_and_gradients():
    module = unigram_module(keep=True)
    keys = [f for c in module.embedding_bag_configs() for f in c.feature_names]
    assert keys == ["user", "item", "item_sid"]
    out = module(batch())
    assert out["item"].shape == (3, D) and out["item_sid"].shape == (3, D)
    out.values().sum().backward()
    assert module.ebc.embedding_bags["semantic_ids"].weight.grad is not None
    # weighted bags: each piece inherits its item's weight
    t = module.transform
    kjt = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([1, 3]), torch.tensor([2]), weights=torch.tensor([0.5, 2.0]))
    got = t(kjt)
    assert got["item_sid"].weights().tolist() == [0.5, 0.5, 2.0, 2.0]
    assert got["item_sid"].values().tolist() == [1 + 2, 1 + 3 + 1, 1 + 1, 1 + 3 + 3]


def test_transform_id_offset_unknown_ids_and_missing_feature():
    t = SemanticIdTransform(torch.tensor([0, 2, 3]), torch.tensor([4, 5, 6]), ["item"], id_offset=2)
    kjt = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([2, 3, 0, 1, 9]), torch.tensor([2, 3]))
    out = t(kjt)["item"]
    assert out.values().tolist() == [4, 5, 6, 0, 0, 0]  # ids 0/1 (missing/OOV) and 9 -> unknown row
    assert out.lengths().tolist() == [3, 3]
    with pytest.raises(KeyError, match="not in the input KJT"):
        t(KeyedJaggedTensor.from_lengths_sync(["other"], torch.tensor([1]), torch.tensor([1])))


def sid_spec(**options) -> EmbeddingSpec:
    """SID pieces for the item feature, plain tables for the rest."""
    return EmbeddingSpec(groups=[TableGroup(name="item", features=["item"], chain=[{"semantic_ids": options}]),
                                 TableGroup(name="rest")])


def spec_module(spec: EmbeddingSpec):
    return build_pooled(spec, {"user": 5, "item": 6}, D, family="dcnv2", prefix="t_")


def test_spec_builds_dcnv2_and_dlrm_with_sid_features(tmp_path):
    from recsys_emb.config.model import ModelConfig
    from recsys_emb.models import build_model

    SemanticIds.from_codes([str(i) for i in range(6)], CODES, SIZES).save(tmp_path / "sids.npz")
    for tok in ("unigram", "bigram", "prefix_ngram"):
        emb = spec_module(sid_spec(codes=str(tmp_path / "sids.npz"), tokenizer=tok, mapping="dense"))
        assert isinstance(emb, PooledGroups) and isinstance(emb.groups["item"], TransformedEmbeddingBagCollection)
        for name in ("dcnv2", "dlrm"):
            model = build_model(ModelConfig(name=name, embedding_dim=D), emb, tables(), 3)
            logits = model(torch.randn(3, 3), batch())
            assert logits.shape == (3,)
            logits.sum().backward()


def test_spec_sentencepiece_and_hash(tmp_path):
    from recsys_emb.semantic_ids.tokenizers import SentencePieceTokenizer

    sids = SemanticIds.from_codes([str(i) for i in range(6)], CODES, SIZES)
    sids.save(tmp_path / "sids.npz")
    SentencePieceTokenizer.train(sids.codes, sids.level_sizes, vocab_size=16).save(tmp_path / "sp.model")
    opts = SemanticIdOptions(codes=str(tmp_path / "sids.npz"), tokenizer="sentencepiece", sentencepiece_model=str(tmp_path / "sp.model"))
    offsets, rows, n, codes = item_piece_rows(opts, None)
    assert rows.max() < n and len(offsets) == 7 and np.array_equal(codes, sids.codes)
    emb = spec_module(sid_spec(codes=str(tmp_path / "sids.npz"), mapping="hash", num_rows=11))
    assert emb.groups["item"].embedding_bag_configs()[-1].num_embeddings == 11
    assert emb(batch())["item"].shape == (3, D)


def test_with_id_adds_the_item_row_to_its_pieces(tmp_path):
    """``with_id``: pooled = id row + SID pieces, so zero piece rows leave exactly the plain id table."""
    SemanticIds.from_codes([str(i) for i in range(6)], CODES, SIZES).save(tmp_path / "sids.npz")
    emb = spec_module(sid_spec(codes=str(tmp_path / "sids.npz"), tokenizer="unigram", mapping="dense", with_id=True))
    sid = emb.groups["item"]
    weight = sid.ebc.embedding_bags["t_item"].weight
    pieces = weight.shape[0] - 6
    with torch.no_grad():
        weight[:pieces] = 0.0
    out = emb(batch())["item"]  # item bags [[1, 5], [], [7]]: 7 is unknown -> piece row 0 only
    expected = torch.stack([weight[pieces + 1] + weight[pieces + 5], torch.zeros(D), torch.zeros(D)])
    assert torch.equal(out.detach(), expected.detach())


def test_bad_options_are_clear():
    from recsys_emb.config.io import ConfigError

    with pytest.raises(ConfigError, match="did you mean"):
        spec_module(sid_spec(codes="x", tokeniser="u"))
    with pytest.raises(ValueError, match="have no table"):
        semantic_id_embedding_bag_collection(tables(), ["nope"], np.array([0, 1]), np.array([1]), 2)
    with pytest.raises(ValueError, match="required"):
        SemanticIdOptions(codes="")
