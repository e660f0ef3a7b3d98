"""Model construction, output shapes, dim checks, meta-device construction."""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys_emb.config.model import MODEL_NAMES, DCNv2Config, DeepFMConfig, DLRMConfig, ModelConfig
from recsys_emb.models import (
    DLRM,
    CrossNet,
    DCNv2,
    DeepFM,
    DotInteraction,
    FactorizationMachine,
    LogisticRegression,
    build_model,
    first_order_tables,
    split_named_parameters,
)

NUM_DENSE = 4


def small_config(name: str, **dcn: object) -> ModelConfig:
    return ModelConfig(
        name=name,
        dlrm=DLRMConfig(dense_arch_layer_sizes=[6], over_arch_layer_sizes=[10]),
        dcnv2=DCNv2Config(deep_layer_sizes=[12, 6], **dcn),  # type: ignore[arg-type]
        deepfm=DeepFMConfig(deep_layer_sizes=[9], dropout=0.0),
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape(helpers, name: str, batch: int) -> None:  # noqa: ANN001
    model = build_model(small_config(name), None, helpers.small_tables(), NUM_DENSE)
    logits = model(torch.randn(batch, NUM_DENSE), helpers.one_hot_kjt(helpers.random_ids(batch)))
    assert logits.shape == (batch,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize("low_rank_dim", [None, 3])
def test_dcn_variants_shape(helpers, structure: str, low_rank_dim: int | None) -> None:  # noqa: ANN001
    config = small_config("dcnv2", structure=structure, low_rank_dim=low_rank_dim)
    model = build_model(config, None, helpers.small_tables(), NUM_DENSE)
    assert model(torch.randn(5, NUM_DENSE), helpers.one_hot_kjt(helpers.random_ids(5))).shape == (5,)


@pytest.mark.parametrize("name", ["dlrm", "dcnv2", "deepfm"])
def test_empty_batch_with_stub_embedding(helpers, name: str) -> None:  # noqa: ANN001
    # torchrec's EmbeddingBagCollection itself rejects B = 0 KJTs; the model code must not.
    config = small_config(name)
    model = build_model(config, helpers.StubEmbedding([8, 8, 8]), helpers.small_tables(), NUM_DENSE)
    kjt = helpers.one_hot_kjt(helpers.random_ids(0))
    assert kjt.stride() == 0
    if name == "deepfm":  # its first-order EBC would see the B = 0 KJT: swap in a stub too
        model.first_order = helpers.StubEmbedding([4, 4, 4])
    assert model(torch.randn(0, NUM_DENSE), kjt).shape == (0,)


def test_blocks_accept_empty_batch() -> None:
    assert DotInteraction(4)(torch.randn(0, 4, 3)).shape == (0, 6)
    assert CrossNet(5, 2)(torch.randn(0, 5)).shape == (0, 5)
    assert FactorizationMachine()(torch.randn(0, 4, 3)).shape == (0,)


def test_dcn_accepts_mixed_dims(helpers) -> None:  # noqa: ANN001
    tables = helpers.small_tables(dims=(8, 4, 12))
    model = build_model(small_config("dcnv2"), None, tables, NUM_DENSE)
    assert isinstance(model, DCNv2)
    assert model.in_features == NUM_DENSE + 8 + 4 + 12
    assert model(torch.randn(3, NUM_DENSE), helpers.one_hot_kjt(helpers.random_ids(3))).shape == (3,)


@pytest.mark.parametrize("name", ["dlrm", "deepfm"])
def test_mixed_dims_rejected(helpers, name: str) -> None:  # noqa: ANN001
    tables = helpers.small_tables(dims=(8, 4, 8))
    with pytest.raises(ValueError, match=r"same embedding dim.*dim 4: f1 \(1 features\); dim 8: f0, f2.*dcnv2"):
        build_model(small_config(name), None, tables, NUM_DENSE)


def test_lr_refuses_embedding_module(helpers) -> None:  # noqa: ANN001
    ebc = EmbeddingBagCollection(helpers.small_tables())
    with pytest.raises(ValueError, match="'lr' has per-id weight tables only"):
        build_model(ModelConfig(name="lr"), ebc, helpers.small_tables(), NUM_DENSE)


def test_dlrm_needs_dense_features(helpers) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="at least one dense feature"):
        build_model(small_config("dlrm"), None, helpers.small_tables(), 0)


@pytest.mark.parametrize("name", ["dcnv2", "deepfm", "lr"])
def test_no_dense_features(helpers, name: str) -> None:  # noqa: ANN001
    model = build_model(small_config(name), None, helpers.small_tables(), 0)
    assert model(torch.zeros(3, 0), helpers.one_hot_kjt(helpers.random_ids(3))).shape == (3,)


def test_first_order_tables_mirror_base_tables(helpers) -> None:  # noqa: ANN001
    base = helpers.small_tables()
    derived = first_order_tables(base, dim=4)
    assert [t.name for t in derived] == [f"{t.name}_first_order" for t in base]
    assert [t.feature_names for t in derived] == [t.feature_names for t in base]
    assert [t.num_embeddings for t in derived] == [t.num_embeddings for t in base]
    assert all(t.embedding_dim == 4 for t in derived)
    assert all(t.embedding_dim == 8 for t in base)  # base configs untouched
    ebc = EmbeddingBagCollection(derived)
    assert all(torch.count_nonzero(p) == 0 for p in ebc.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_construction(helpers, name: str) -> None:  # noqa: ANN001
    model = build_model(small_config(name), None, helpers.small_tables(), NUM_DENSE, device="meta")
    params = list(model.parameters())
    assert params and all(p.device.type == "meta" for p in params)
    assert all(b.device.type == "meta" for b in model.buffers())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_model_materialises_like_dmp(helpers, name: str) -> None:  # noqa: ANN001
    # DistributedModelParallel allocates meta params as empty tensors and then calls reset_parameters()
    # on each module that owned one; every module owning parameters must therefore define it.
    config = small_config(name)
    config.dcnv2.batch_norm = True
    model = build_model(config, None, helpers.small_tables(), NUM_DENSE, device="meta")
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert hasattr(module, "reset_parameters"), type(module).__name__
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # garbage, like uninitialised memory
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)):  # incl. the EBCs' nn.EmbeddingBag tables
                module.reset_parameters()  # type: ignore[operator]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    assert torch.isfinite(model(torch.randn(3, NUM_DENSE), helpers.one_hot_kjt(helpers.random_ids(3)))).all()


def test_embedding_attribute_and_parameter_split(helpers) -> None:  # noqa: ANN001
    tables = helpers.small_tables()
    for name, cls in (("dlrm", DLRM), ("dcnv2", DCNv2), ("deepfm", DeepFM), ("lr", LogisticRegression)):
        model = build_model(small_config(name), None, tables, NUM_DENSE)
        assert isinstance(model, cls)
        assert isinstance(model.embedding, EmbeddingBagCollection)
        table_params, dense_params = split_named_parameters(model)
        expected_tables = {f"embedding.{k}" for k, _ in model.embedding.named_parameters()}
        if name == "deepfm":
            expected_tables |= {f"first_order.{k}" for k, _ in model.first_order.named_parameters()}
        assert set(table_params) == expected_tables
        assert set(table_params) | set(dense_params) == {k for k, _ in model.named_parameters()}
        assert dense_params and not set(table_params) & set(dense_params)


def test_passed_embedding_is_used_not_rebuilt(helpers) -> None:  # noqa: ANN001
    ebc = EmbeddingBagCollection(helpers.small_tables())
    model = build_model(small_config("dlrm"), ebc, helpers.small_tables(), NUM_DENSE)
    assert model.embedding is ebc
