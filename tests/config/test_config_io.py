"""Config strictness: unknown keys, type errors, did-you-mean hints, dotted overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import ConfigError, load_config, save_config, to_dict

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_load_from_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(ExperimentConfig, path) == ExperimentConfig()


def test_unknown_top_level_key_has_hint_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"trian": {"epochs": 2}})
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*unknown config key 'trian'.*did you mean 'train'"):
        load_config(ExperimentConfig, path)


def test_unknown_nested_key_reports_dotted_path(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": {"batchsize": 4}})
    with pytest.raises(ConfigError, match=r"'train\.batchsize'.*did you mean 'batch_size'"):
        load_config(ExperimentConfig, path)


def test_wrong_type_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(ExperimentConfig, write(tmp_path, {"train": {"epochs": "three"}}))
    with pytest.raises(ConfigError, match=r"train\.shuffle: expected true/false"):
        load_config(ExperimentConfig, write(tmp_path, {"train": {"shuffle": 1}}))


def test_validation_error_from_dataclass_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid_fraction"):
        load_config(ExperimentConfig, write(tmp_path, {"data": {"valid_fraction": 1.5}}))


def test_overrides_are_parsed_as_yaml_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": {"epochs": 5}})
    cfg = load_config(
        ExperimentConfig,
        path,
        ["train.epochs=2", "train.dense_optimizer.lr=1e-2", "train.max_steps=null", "data.train=/x/y.txt"],
    )
    assert cfg.train.epochs == 2
    assert cfg.train.dense_optimizer.lr == pytest.approx(0.01)
    assert cfg.train.max_steps is None
    assert cfg.data.train == "/x/y.txt"
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(ExperimentConfig, path, ["train.epoch=2"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(ExperimentConfig, path, ["train.epochs"])


def test_yaml_with_code_is_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(ExperimentConfig, path)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(ExperimentConfig, None, ["train.epochs=7", "model.name=deepfm", "data.hash_buckets=1000"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(ExperimentConfig, tmp_path / "out.yaml")
    assert again == cfg
    assert to_dict(again)["train"]["epochs"] == 7


def _schema(path: Path) -> type:
    """The config class a shipped YAML mirrors (by file-name prefix)."""
    import importlib

    schemas = {
        "gowalla_": ("recsys_emb.config.graph", "GraphExperimentConfig"),
        "ml1m_two_tower": ("recsys_emb.config.two_tower", "TwoTowerExperimentConfig"),
        "retrieval_": ("recsys_emb.retrieval.driver", "RetrieveConfig"),
        "beauty_two_tower": ("recsys_emb.config.two_tower", "TwoTowerExperimentConfig"),
        "retrieve_rank_": ("recsys_emb.retrieval.pipeline", "RecommendConfig"),
        "sid_": ("recsys_emb.semantic_ids.config", "SIDConfig"),
        "amazon_": ("recsys_emb.config.sequence", "SequenceExperimentConfig"),
        "movielens_100k_dare": ("recsys_emb.config.sequence", "SequenceExperimentConfig"),
    }
    for prefix, (module, name) in schemas.items():
        if path.name.startswith(prefix):
            return getattr(importlib.import_module(module), name)
    return ExperimentConfig


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    schema = _schema(path)
    cfg = load_config(schema, path)
    if schema is ExperimentConfig:
        assert cfg.model.name in {"dlrm", "dcnv2", "deepfm", "lr"}
    twin = path.with_name(path.stem.removesuffix("_tiny") + ".yaml")
    assert twin.exists(), f"{path.name}: every config has a full-size / _tiny pair"
