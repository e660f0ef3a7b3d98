"""Shared tables (issue 22): features a schema declares with the same ``table:`` look up ONE TorchRec table.

The prepared ``meta.json`` records ``tables`` (feature -> table); the CTR family passes it to the embedding
spec (``Tables.tables``), whose ``plain`` layout builds one ``EmbeddingBagConfig(name=t_<table>,
feature_names=[f1, f2])``; ``hash`` / ``unified`` hash an id of those features to the same rows; ``dnis`` /
``optembed`` refuse them; data without shared tables builds exactly the tables it did before. End to end:
a schema run trains, and its model has one table for the shared features whose rows both features read; such
a run exports (fp32 and int8 tables) and its artefact scores raw rows like the eager model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsys_emb.config.embedding import EmbeddingSpec, TableGroup
from recsys_emb.config.io import ConfigError
from recsys_emb.data.dataset import sparse_tables
from recsys_emb.modules.contract import output_feature_dims
from recsys_emb.modules.spec import build_pooled

D = 4
VOCAB = {"src": 10, "user": 7, "dst": 10}  # src and dst share table "page": one id space of 10 rows
SHARED = {"src": "page", "user": "user", "dst": "page"}


def spec(*chain: object, groups: list[TableGroup] | None = None) -> EmbeddingSpec:
    return EmbeddingSpec(groups=groups or [TableGroup(name="all", chain=list(chain))])


def configs(module: torch.nn.Module) -> list[tuple[str, int, list[str]]]:
    return [(c.name, int(c.num_embeddings), list(c.feature_names)) for c in module.embedding_bag_configs()]


def pooled(module: torch.nn.Module, src: list[int], dst: list[int]) -> dict[str, torch.Tensor]:
    """The module's pooled rows of one-id bags ``src[i]``, ``dst[i]`` (and user id 1) per example."""
    ids = torch.tensor([*src, *[1] * len(src), *dst])
    kjt = KeyedJaggedTensor.from_lengths_sync(["src", "user", "dst"], ids, torch.ones(len(ids), dtype=torch.int64))
    return module(kjt).to_dict()


# ------------------------------------------------------------------------------------------- layouts
def test_plain_builds_one_table_for_the_shared_features_and_both_read_its_rows() -> None:
    module = build_pooled(spec(), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    assert configs(module) == [("t_page", 10, ["src", "dst"]), ("t_user", 7, ["user"])]
    assert sum(p.numel() for p in module.parameters()) == (10 + 7) * D  # the shared rows once
    assert sorted(output_feature_dims(module)) == [("dst", D), ("src", D), ("user", D)]  # one output per feature
    out = pooled(module, src=[3, 5], dst=[5, 3])
    torch.testing.assert_close(out["src"][0], out["dst"][1], rtol=0, atol=0)  # id 3: the same row
    torch.testing.assert_close(out["src"][1], out["dst"][0], rtol=0, atol=0)  # id 5
    assert not torch.equal(out["src"][0], out["src"][1])
    # DeepFM / LR per-id weights: one shared weight table too
    first = build_pooled(spec(), VOCAB, 1, family="deepfm", prefix="t_", suffix="_first_order", tables=SHARED, post=False)
    assert configs(first) == [("t_page_first_order", 10, ["src", "dst"]), ("t_user_first_order", 7, ["user"])]


def test_without_shared_tables_the_tables_are_the_per_feature_ones_as_before() -> None:
    torch.manual_seed(0)
    before = build_pooled(spec(), VOCAB, D, family="dcnv2", prefix="t_")
    want = [("t_src", 10, ["src"]), ("t_user", 7, ["user"]), ("t_dst", 10, ["dst"])]
    assert configs(before) == want
    # identity tables, or renamed tables that no other feature uses: the same names, so old checkpoints load
    for tables in ({f: f for f in VOCAB}, {"src": "pages_a", "user": "users", "dst": "pages_b"}):
        torch.manual_seed(0)
        again = build_pooled(spec(), VOCAB, D, family="dcnv2", prefix="t_", tables=tables)
        assert configs(again) == want
        again.load_state_dict(before.state_dict())  # strict: the same keys and shapes
    hashed = [("hashed_src", 5, ["src@0"]), ("hashed_user", 5, ["user@0"]), ("hashed_dst", 5, ["dst@0"])]
    assert configs(build_pooled(spec({"hash": {"num_rows": 5}}), VOCAB, D, family="dcnv2", prefix="t_",
                                 tables={f: f for f in VOCAB})) == hashed
    # old meta.json files without `tables`: one table per feature
    assert sparse_tables({"sparse_features": ["a", "b"]}) == {"a": "a", "b": "b"}
    assert sparse_tables({"sparse_features": ["a", "b"], "tables": {"a": "t", "b": "t"}}) == {"a": "t", "b": "t"}


@pytest.mark.parametrize("chain, want", [
    ({"hash": {"num_rows": 6}}, [("hashed_page", 6, ["src@0", "dst@0"]), ("hashed_user", 6, ["user@0"])]),
    ({"unified": {"layout": "collisionless"}}, [("full_page", 10, ["src@0", "dst@0"]), ("full_user", 7, ["user@0"])]),
    ({"unified": {"num_rows": 8, "probes": 2}}, [("unified", 8, ["src@0", "src@1", "user@0", "user@1", "dst@0", "dst@1"])]),
])
def test_hash_and_unified_map_an_id_of_the_shared_features_to_the_same_rows(chain: dict, want: list) -> None:
    module = build_pooled(spec(chain), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    assert configs(module) == want
    out = pooled(module, src=[3, 5, 9], dst=[9, 3, 5])
    for i, j in ((0, 1), (1, 2), (2, 0)):
        torch.testing.assert_close(out["src"][i], out["dst"][j], rtol=0, atol=0)


def test_semantic_ids_of_the_shared_features_are_looked_up_in_one_table(tmp_path: Path) -> None:
    from recsys_emb.semantic_ids.codes import SemanticIds
    from tests.modules.test_semantic_ids_module import CODES, SIZES

    SemanticIds.from_codes([str(i) for i in range(6)], CODES, SIZES).save(tmp_path / "sids.npz")
    groups = [TableGroup(name="pages", features=["src", "dst"], chain=[{"semantic_ids": {"codes": str(tmp_path / "sids.npz")}}]),
              TableGroup(name="rest")]
    module = build_pooled(spec(groups=groups), {**VOCAB, "src": 6, "dst": 6}, D, family="dcnv2", prefix="t_", tables=SHARED)
    assert [(name, features) for name, _, features in configs(module)] == [("t_page", ["src", "dst"]), ("t_user", ["user"])]
    out = pooled(module, src=[2, 4], dst=[4, 2])
    torch.testing.assert_close(out["src"][0], out["dst"][1], rtol=0, atol=0)


def test_hash_budget_counts_a_shared_table_once() -> None:
    # plain bytes: (10 + 7) rows of D floats; half of it is 8.5 rows -> 8 rows split 10 : 7 over the two tables
    module = build_pooled(spec({"hash": {"budget_fraction": 0.5}}), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    assert [rows for _, rows, _ in configs(module)] == [5, 3]
    report = module.byte_report()
    assert report["collisionless_bytes"] == (10 + 7) * D * 4 and report["parameter_bytes"] == 8 * D * 4


@pytest.mark.parametrize("technique", ["dnis", "optembed"])
def test_dim_searches_refuse_a_shared_table_and_work_beside_it(technique: str) -> None:
    options = {"dnis": {"frequency": "index"}, "optembed": {}}[technique]
    with pytest.raises(ConfigError, match=f"group 'all': {technique} cannot build on table 'page', which features "
                                          r"\['src', 'dst'\] share"):
        build_pooled(spec({technique: options}), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    # the shared features in a group of their own without the search; the search on the others
    groups = [TableGroup(name="pages", features=["src", "dst"]), TableGroup(name="rest", chain=[{technique: options}])]
    module = build_pooled(spec(groups=groups), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    assert configs(module) == [("t_page", 10, ["src", "dst"]), ("t_user", 7, ["user"])]
    out = pooled(module, src=[2], dst=[2])
    torch.testing.assert_close(out["src"], out["dst"], rtol=0, atol=0)


def test_a_shared_table_split_over_groups_or_with_different_vocabularies_is_refused() -> None:
    groups = [TableGroup(name="a", features=["src", "user"]), TableGroup(name="b")]
    with pytest.raises(ConfigError, match=r"share table 'page'.*group 'a': \['src'\]; group 'b': \['dst'\]"):
        build_pooled(spec(groups=groups), VOCAB, D, family="dcnv2", prefix="t_", tables=SHARED)
    with pytest.raises(ConfigError, match=r"table 'page' is shared by features \['src', 'dst'\], but their vocabularies"):
        build_pooled(spec(), {**VOCAB, "dst": 11}, D, family="dcnv2", prefix="t_", tables=SHARED)
    with pytest.raises(ConfigError, match="table 'user' .* has the name of feature 'user'"):
        build_pooled(spec(), VOCAB, D, family="dcnv2", prefix="t_", tables={"src": "user", "dst": "user", "user": "u"})


# ----------------------------------------------------------------------------------- end to end
SCHEMA = """
name: shared_pages
format: {type: csv, header: true}
label: {column: y}
numeric:
  - {name: price, transform: [clip, log1p], clip: [0, null]}
categorical:
  - {name: src, table: page}
  - {name: user}
  - {name: dst, table: page}
ignore: [rid]
"""


def make_csv(path: Path, rows: int, seed: int, header: bool = True) -> Path:
    """Clicks that depend on the source page; destination pages are drawn from the same pages."""
    rng = np.random.default_rng(seed)
    src, dst, users = rng.integers(0, 12, rows), rng.integers(0, 15, rows), rng.integers(0, 20, rows)
    logit = np.sin(src) * 2.0 - 0.5
    clicks = rng.random(rows) < 1 / (1 + np.exp(-logit))
    lines = ["rid,y,price,src,user,dst"] if header else []
    lines += [f"{i},{int(c)},{rng.exponential(5):.2f},p{s},u{u},p{d}" for i, (c, s, u, d) in enumerate(zip(clicks, src, users, dst))]
    path.write_text("\n".join(lines) + "\n")
    return path


def experiment(root: Path, model: str) -> dict:
    (root / "schema.yaml").write_text(SCHEMA)
    return {
        "name": f"shared_{model}",
        "data": {"schema": str(root / "schema.yaml"), "train": str(make_csv(root / "train.csv", 400, 0)),
                 "test": str(make_csv(root / "test.csv", 100, 1)), "min_count": 1, "valid_fraction": 0.25,
                 "cache_dir": str(root / "cache")},
        "model": {"name": model, "embedding_dim": 8, "dcnv2": {"num_cross_layers": 1, "deep_layer_sizes": [16]},
                  "deepfm": {"deep_layer_sizes": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 256, "tensorboard": False, "early_stopping_patience": 0},
    }


def check_shared_model(model: torch.nn.Module, meta: dict, dim: int) -> None:
    """One ``t_page`` of the shared vocabulary's rows for src and dst, read by both; the parameter count."""
    sizes = dict(zip(meta["sparse_features"], meta["vocab_sizes"]))
    assert meta["tables"] == {"src": "page", "user": "user", "dst": "page"} and sizes["src"] == sizes["dst"]
    assert configs(model.embedding) == [("t_page", sizes["src"], ["src", "dst"]), ("t_user", sizes["user"], ["user"])]
    assert sum(p.numel() for p in model.embedding.parameters()) == (sizes["src"] + sizes["user"]) * dim
    with torch.no_grad():
        out = pooled(model.embedding, src=[2, 4, 7], dst=[7, 2, 4])
    for i, j in ((0, 1), (1, 2), (2, 0)):
        torch.testing.assert_close(out["src"][i], out["dst"][j], rtol=0, atol=0)


def test_a_schema_with_a_shared_table_trains_end_to_end(tmp_path: Path) -> None:
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import from_dict
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.train.checkpoint import load_model_state
    from recsys_emb.train.tasks import train
    from recsys_emb.train.tasks.ctr import build_ctr_model

    cfg = from_dict(ExperimentConfig, experiment(tmp_path, "deepfm"))
    results = train(cfg, tmp_path / "run")
    assert results["test"]["rows"] == 100 and 0.0 <= results["test"]["auc"] <= 1.0
    meta = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    # the trained weights (model.pt) load into a model rebuilt from the run's data: one t_page
    model = build_ctr_model(cfg, resolve_data(cfg.data)["train"].open()[0], "cpu")  # the cached training split
    model.load_state_dict(load_model_state(tmp_path / "run" / "model.pt"))
    check_shared_model(model.model, meta, 8)
    assert configs(model.model.first_order) == [("t_page_first_order", meta["vocab_sizes"][0], ["src", "dst"]),
                                                ("t_user_first_order", meta["vocab_sizes"][1], ["user"])]


def test_a_shared_table_run_exports_quantises_and_predicts_raw_rows(tmp_path: Path) -> None:
    from recsys_emb.config.experiment import ExperimentConfig
    from recsys_emb.config.io import from_dict
    from recsys_emb.inference.export import CTRServing, export_run, kjt_inputs, unshard
    from recsys_emb.inference.predictor import Predictor
    from recsys_emb.train.tasks import train

    train(from_dict(ExperimentConfig, experiment(tmp_path, "dcnv2")), tmp_path / "run")
    unsharded = unshard(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "data" / "meta.json").read_text())
    check_shared_model(unsharded.model, meta, 8)
    test = unsharded.task.splits["test"].open()[0]
    batch = test.batch(slice(0, len(test)))
    with torch.no_grad():
        logits = CTRServing(unsharded.model, list(test.sparse_features))(batch.dense_features, *kjt_inputs(batch.sparse_features))
    expected = torch.sigmoid(logits).numpy()
    for dtype, tolerance in (("none", 1e-5), ("int8", 0.05)):
        art = tmp_path / f"art_{dtype}"
        manifest = export_run(tmp_path / "run", art, quantize=dtype, unsharded=unsharded)
        assert "t_page" in json.dumps(manifest) and "t_src" not in json.dumps(manifest)
        result = Predictor.load(art).predict_file(tmp_path / "test.csv", tmp_path / f"{dtype}.tsv", progress=False)
        assert result["scored"] == 100 and result["skipped"] == 0
        probs = np.array([float(line.split("\t")[1]) for line in (tmp_path / f"{dtype}.tsv").read_text().splitlines()])
        assert np.abs(probs - expected).max() <= tolerance, (dtype, np.abs(probs - expected).max())


def test_splits_that_share_tables_differently_are_refused(tmp_path: Path) -> None:
    """``check_compatible`` (train/valid/test and ``evaluate --data``) compares meta.json's ``tables`` too: data
    prepared without the training schema's shared table would read the shared rows with other ids."""
    from recsys_emb.data.resolve import Split, check_compatible

    def prepared(name: str, tables: dict | None) -> Split:
        root = tmp_path / name
        root.mkdir()
        meta = {"sparse_features": list(VOCAB), "dense_features": [], "vocab_sizes": list(VOCAB.values())}
        (root / "meta.json").write_text(json.dumps({**meta, **({"tables": tables} if tables is not None else {})}))
        return Split(root)

    train = prepared("train", SHARED)
    check_compatible({"train": train, "valid": prepared("valid", dict(SHARED))})
    check_compatible({"train": prepared("plain", None), "test": prepared("plain_too", {f: f for f in VOCAB})})
    with pytest.raises(ValueError, match=r"test data .*own.* shares tables differently .*--vocab-from"):
        check_compatible({"train": train, "test": prepared("own", {"src": "src", "user": "user", "dst": "dst"})})
