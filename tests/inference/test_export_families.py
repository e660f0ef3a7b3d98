"""Sequence and graph runs -> export -> ``predict`` on raw inputs (JSON-lines sequences, user ids).

The sequence artefact's raw-row encoding (raw user / item ids -> the training batch) is checked
against the data set's own batches; the graph artefact's top-k against the run's saved final
embeddings (``embeddings.pt``, written by the trainer: an independent path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_emb.config.io import load_config
from recsys_emb.config.sequence import SequenceExperimentConfig
from recsys_emb.data.sequences import FIRST_ID, write_synthetic_s3rec
from recsys_emb.inference.export import export_run, unshard
from recsys_emb.inference.predictor import Predictor
from recsys_emb.train.tasks import load_experiment, train
from recsys_emb.train.tasks.graph import load_graph_embeddings
from tests.conftest import REPO
from tests.train.tasks.test_graph import write_community_graph


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seq_export")
    data = write_synthetic_s3rec(root / "data", users=160, items=60, seed=0)
    cfg = load_config(SequenceExperimentConfig, REPO / "configs" / "amazon_beauty_din_tiny.yaml", [
        f"data.path={data}", "data.dataset=s3rec", "data.stem=Synth", "train.progress=false", "train.epochs=2",
        "train.early_stopping_patience=0", "train.tensorboard=false", "model.side_features=[user, target_attrs]"])
    train(cfg, root / "run")
    export_run(root / "run", root / "art")
    return root


def test_sequence_jsonl_rows_score_like_the_training_batches(sequence_run: Path) -> None:
    unsharded = unshard(sequence_run / "run")
    ds = unsharded.task.ds
    ex = ds.examples("test")
    ex = ex.take(np.arange(min(200, len(ex.label))))
    batch = ds.make_batch(ex)
    with torch.no_grad():
        expected = torch.sigmoid(unsharded.model(batch.sparse_features)).numpy()
    end = ds.offsets[ex.user] + ex.position
    start = np.maximum(ds.offsets[ex.user], end - ds.cfg.max_history)
    rows, comparable = [], []
    for i in range(len(ex.label)):
        hist = ds.items[start[i]:end[i]]
        raw_hist = [int(ds.item_raw_ids[h - FIRST_ID]) if h >= FIRST_ID else -7 for h in hist]  # -7: never an item id
        comparable.append(bool((hist >= FIRST_ID).all()) and ex.target_item[i] >= FIRST_ID)
        rows.append({"user": int(ds.raw_users[ex.user[i]]), "history": raw_hist,
                     "target": int(ds.item_raw_ids[ex.target_item[i] - FIRST_ID]) if ex.target_item[i] >= FIRST_ID else -7,
                     "label": float(ex.label[i])})
    data = sequence_run / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n" + json.dumps({"user": -5, "history": [], "target": 1}) + "\n")
    result = Predictor.load(sequence_run / "art").predict_file(data, sequence_run / "scores.tsv", batch_size=64, progress=False)
    assert result["scored"] == len(rows) and result["skipped"] == 2
    assert f"{data}:{len(rows) + 1}:" in result["examples"][0] and "user -5" in result["examples"][1]
    scores = np.array([float(line.split("\t")[1]) for line in (sequence_run / "scores.tsv").read_text().splitlines()])
    # rows whose items were all seen in training encode exactly (an unknown item's category is "missing" at
    # serving time, while the training batch knows it from the raw files)
    comparable = np.array(comparable)
    assert comparable.mean() > 0.8
    np.testing.assert_allclose(scores[comparable], expected[comparable], atol=2e-6)


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("graph_export")
    data = write_community_graph(root / "graph")
    train(load_experiment(REPO / "configs" / "gowalla_lightgcn_tiny.yaml", [f"data.path={data}", "train.epochs=2"]), root / "run")
    export_run(root / "run", root / "art")
    return root


def test_graph_top_k_equals_the_saved_final_embeddings(graph_run: Path) -> None:
    users, items = load_graph_embeddings(graph_run / "run")
    ids = graph_run / "users.txt"
    ids.write_text("0\n3\nabc\n119\n120\n7\n")
    result = Predictor.load(graph_run / "art").predict_file(ids, graph_run / "top.tsv", top_k=5, progress=False)
    assert result["scored"] == 4 and result["skipped"] == 2
    assert ":3:" in result["examples"][0] and "outside the model's users [0, 120)" in result["examples"][1]
    lines = (graph_run / "top.tsv").read_text().splitlines()
    for line, user in zip(lines, (0, 3, 119, 7)):
        u, top, scores = line.split("\t")
        assert int(u) == user
        expected = torch.topk(users[user] @ items.T, 5)
        assert [int(i) for i in top.split(",")] == expected.indices.tolist()
        np.testing.assert_allclose([float(s) for s in scores.split(",")], expected.values.numpy(), rtol=1e-5)


def test_graph_int8_artefact_keeps_most_of_the_top_k(graph_run: Path) -> None:
    manifest = export_run(graph_run / "run", graph_run / "art8", quantize="int8")
    fp32 = json.loads((graph_run / "art" / "manifest.json").read_text())
    assert sum(manifest["tables"].values()) < sum(fp32["tables"].values())
    users = torch.arange(120)
    exact = torch.topk(Predictor.load(graph_run / "art")(users), 20).indices
    quant = torch.topk(Predictor.load(graph_run / "art8")(users), 20).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(exact, quant)])
    assert overlap > 0.9, overlap


def test_graph_torchscript_artefact_scores_like_the_pt2_one(graph_run: Path) -> None:
    """``--format torchscript``: the manifest names the format, ``Predictor.load`` picks ``torch.jit.load``, and the
    scores equal the torch.export artefact's at any batch size."""
    manifest = export_run(graph_run / "run", graph_run / "art_ts", format="torchscript")
    assert manifest["format"] == "torchscript" and manifest["artefact"] == "model.torchscript.pt"
    assert manifest["export_parity_max_abs"] <= 1e-5 and manifest["aoti"] is None
    assert "model.torchscript.pt" in manifest["sha256"] and not (graph_run / "art_ts" / "model.pt2").exists()
    scripted, program = Predictor.load(graph_run / "art_ts"), Predictor.load(graph_run / "art")
    assert isinstance(scripted.program, torch.jit.ScriptModule)
    for size in (1, 7, 120):
        users = torch.arange(size) % 120
        assert (scripted(users) - program(users)).abs().max() <= 1e-5, size


def test_sequence_torchscript_artefact_scores_like_the_pt2_one(sequence_run: Path) -> None:
    """``--format torchscript`` of a sequence run (the lookup sizes its bags per batch in the scripted program):
    ``Predictor.load`` scores raw rows like the torch.export artefact; ``--aoti`` still needs ``pt2``."""
    manifest = export_run(sequence_run / "run", sequence_run / "art_ts", format="torchscript")
    assert manifest["format"] == "torchscript" and manifest["export_parity_max_abs"] <= 1e-5
    ds = unshard(sequence_run / "run").task.ds
    raw = [int(r) for r in ds.item_raw_ids[:12]]
    rows = [{"user": int(ds.raw_users[u]), "history": raw[u % 5: u % 5 + u % 7], "target": raw[u % 11]} for u in range(9)]
    data = sequence_run / "ts_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {}
    for art in ("art", "art_ts"):
        out = sequence_run / f"{art}_scores.tsv"
        assert Predictor.load(sequence_run / art).predict_file(data, out, batch_size=4, progress=False)["scored"] == len(rows)
        scores[art] = np.array([float(line.split("\t")[1]) for line in out.read_text().splitlines()])
    np.testing.assert_allclose(scores["art_ts"], scores["art"], atol=1e-6)
    with pytest.raises(ValueError, match="--aoti .* needs --format pt2"):
        export_run(sequence_run / "run", sequence_run / "art_ts2", format="torchscript", aoti=True)
