"""ModelConfig validation."""

from __future__ import annotations

import dataclasses

import pytest

from recsys_emb.config.model import ACTIVATIONS, DCNv2Config, DeepFMConfig, DLRMConfig, ModelConfig
from recsys_emb.models.common import make_activation


def test_defaults_are_valid_and_per_model() -> None:
    config = ModelConfig()
    assert config.name == "dcnv2"
    assert config.embedding_dim == 16
    assert config.dcnv2.num_cross_layers == 3 and config.dcnv2.low_rank_dim is None
    assert config.dcnv2.structure == "stacked"
    # nested configs are independent objects (no shared mutable defaults)
    assert ModelConfig().dlrm.over_arch_layer_sizes is not config.dlrm.over_arch_layer_sizes


def test_field_types_are_loader_friendly() -> None:
    allowed = {"int", "float", "str", "bool", "int | None", "float | None", "list[int]", "list[str]"}
    for cls in (ModelConfig, DLRMConfig, DCNv2Config, DeepFMConfig):
        for f in dataclasses.fields(cls):
            assert f.type in allowed or f.type in {"DLRMConfig", "DCNv2Config", "DeepFMConfig"}, (cls, f.name, f.type)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"model\.name.*'dcn2'.*did you mean 'dcnv2'"):
        ModelConfig(name="dcn2")
    with pytest.raises(ValueError, match="expected one of dlrm, dcnv2, deepfm, lr"):
        ModelConfig(name="transformer")


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: ModelConfig(embedding_dim=0), r"model\.embedding_dim must be a positive int, got 0"),
        (lambda: ModelConfig(first_order_dim=-1), r"model\.first_order_dim"),
        (lambda: DLRMConfig(over_arch_layer_sizes=[512, 0]), r"model\.dlrm\.over_arch_layer_sizes.*\[512, 0\]"),
        (lambda: DLRMConfig(dense_arch_layer_sizes=[-3]), r"model\.dlrm\.dense_arch_layer_sizes"),
        (lambda: DCNv2Config(low_rank_dim=0), r"model\.dcnv2\.low_rank_dim"),
        (lambda: DCNv2Config(num_cross_layers=-1), r"model\.dcnv2\.num_cross_layers"),
        (lambda: DCNv2Config(structure="stacke"), r"did you mean 'stacked'"),
        (lambda: DCNv2Config(num_cross_layers=0, deep_layer_sizes=[]), r"single linear layer"),
        (lambda: DeepFMConfig(deep_layer_sizes=[]), r"model\.deepfm\.deep_layer_sizes must not be empty"),
        (lambda: DeepFMConfig(dropout=1.0), r"model\.deepfm\.dropout must be a float in \[0, 1\)"),
        (lambda: DeepFMConfig(activation="rellu"), r"model\.deepfm\.activation.*did you mean 'relu'"),
        (lambda: DLRMConfig(batch_norm="yes"), r"model\.dlrm\.batch_norm"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_raise_clear_errors(factory, pattern: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_every_config_activation_is_buildable() -> None:
    for name in ACTIVATIONS:
        make_activation(name)
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("swishy")


def test_yaml_mapping_loads_into_nested_configs() -> None:
    import yaml

    from recsys_emb.config.io import from_dict, to_dict

    text = """
name: dcnv2
embedding_dim: 8
dcnv2: {num_cross_layers: 2, low_rank_dim: 4, structure: parallel, deep_layer_sizes: [64, 32]}
deepfm: {dropout: 0.2}
"""
    config = from_dict(ModelConfig, yaml.safe_load(text), where="model")
    assert config.dcnv2 == DCNv2Config(num_cross_layers=2, low_rank_dim=4, structure="parallel", deep_layer_sizes=[64, 32])
    assert config.deepfm == DeepFMConfig(dropout=0.2)
    assert config.dlrm == DLRMConfig()
    assert from_dict(ModelConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="did you mean 'dcnv2'"):
        from_dict(ModelConfig, {"name": "dcnv3"}, where="model")
