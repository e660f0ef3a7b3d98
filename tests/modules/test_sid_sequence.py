"""SID item features in DIN / DARE: reduction to plain DIN, per-item pooling of jagged pieces, id hashing, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_emb.data.sequences import FEATURE_KEYS, FIRST_ID, SequenceDataConfig, SequenceDataset, load_raw, write_synthetic_s3rec
from recsys_emb.models.din import DIN
from recsys_emb.modules.sid_sequence import ItemIdHash, SemanticIdSequenceEmbedding, build_sequence_item_embedding, sid_module
from recsys_emb.semantic_ids.codes import SemanticIds
from recsys_emb.config.sequence import SequenceExperimentConfig, SequenceModelConfig
from recsys_emb.models.sequence import build_sequence_model
from recsys_emb.train.tasks import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SequenceDataset]:
    folder = write_synthetic_s3rec(tmp_path_factory.mktemp("synth"), users=80, items=40, categories=4, seed=1)
    cfg = SequenceDataConfig(dataset="s3rec", stem="Synth", path=str(folder), max_history=8)
    return folder, SequenceDataset(load_raw(cfg), cfg)


def _batch(ds: SequenceDataset, n: int = 64) -> KeyedJaggedTensor:
    ex = ds.examples("test")
    return ds.make_batch(ex.take(np.arange(min(n, len(ex))))).sparse_features


def _codes_file(tmp: Path, codes: np.ndarray, sizes: list[int]) -> str:
    path = tmp / "sids.npz"
    SemanticIds([str(i) for i in range(len(codes))], codes, sizes).save(path)
    return str(path)


def _model_cfg(**kw) -> SequenceModelConfig:  # noqa: ANN003
    cfg = SequenceModelConfig(name="din", embedding_dim=8, **kw)
    cfg.din.attention_hidden, cfg.din.mlp = [8], [8]
    return cfg


def _copy_shared(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copy every parameter/buffer of ``src`` whose name also exists in ``dst`` (dense layers, non-item tables)."""
    src_state = src.state_dict()
    state = dst.state_dict()
    for name, value in state.items():
        for cand in (name, name.replace("embedding.base.", "embedding.")):
            if cand in src_state and src_state[cand].shape == value.shape:
                value.copy_(src_state[cand])
                break


@pytest.mark.parametrize("decoupled", [False, True])
def test_sid_identity_codes_equal_plain_din(synth, tmp_path: Path, decoupled: bool) -> None:  # noqa: ANN001
    """One SID level whose code is the item itself, unigram, dense, item rows copied -> plain DIN exactly."""
    _, ds = synth
    raw_max = int(ds.item_raw_ids.max())
    codes = np.arange(raw_max + 1)[:, None]  # code row r = raw id r, code = r
    sid = {"codes": _codes_file(tmp_path, codes, [raw_max + 1]), "tokenizer": "unigram", "mapping": "dense"}
    extra = {"decoupled": True, "attention_dim": 4} if decoupled else {}
    torch.manual_seed(0)
    plain = build_sequence_model(_model_cfg(**extra), ds.table_sizes())
    cfg = _model_cfg(item_features="sid", **extra)
    cfg.sid = type(cfg.sid)(**sid)
    model = build_sequence_model(cfg, ds.table_sizes(), dataset=ds)
    _copy_shared(model, plain)
    emb = model.embedding
    roles = [("attention", emb.sid_attention)] + ([("representation", emb.sid_representation)] if decoupled else [])
    for role, sid_mod in roles:
        item_table = getattr(plain.embedding, role).embeddings[("att_" if decoupled and role == "attention" else "rep_" if decoupled else "") + "item"].weight
        sid_table = sid_mod.ebc.embedding_bags[next(iter(sid_mod.ebc.embedding_bags))].weight
        offsets, rows = sid_mod.transform.item_offsets, sid_mod.transform.item_rows
        with torch.no_grad():
            for enc in range(FIRST_ID, ds.num_items):
                (row,) = rows[offsets[enc - FIRST_ID]:offsets[enc - FIRST_ID + 1]].tolist()
                sid_table[row] = item_table[enc]
            item_table[0] = item_table[1] = sid_table[0]  # missing / OOV ids -> the SID "unknown" row
    plain.eval()
    model.eval()
    kjt = _batch(ds)
    torch.testing.assert_close(model(kjt), plain(kjt), rtol=0, atol=1e-6)


def test_id_plus_zero_sid_equals_plain(synth, tmp_path: Path) -> None:  # noqa: ANN001
    _, ds = synth
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(int(ds.item_raw_ids.max()) + 1, 2))
    torch.manual_seed(0)
    plain = build_sequence_model(_model_cfg(), ds.table_sizes())
    cfg = _model_cfg(item_features="id+sid")
    cfg.sid = type(cfg.sid)(codes=_codes_file(tmp_path, codes, [4, 4]), tokenizer="prefix_ngram")
    model = build_sequence_model(cfg, ds.table_sizes(), dataset=ds)
    _copy_shared(model, plain)
    with torch.no_grad():
        for p in model.embedding.sid_attention.parameters():
            p.zero_()
    plain.eval()
    model.eval()
    kjt = _batch(ds)
    torch.testing.assert_close(model(kjt), plain(kjt), rtol=0, atol=1e-6)
    # and the SID table does get gradients once used
    model.train()
    model(kjt).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.embedding.sid_attention.parameters())


def test_pieces_pooled_per_item_never_across_items() -> None:
    """Jagged pieces (1, 3, 2, 0 per item) are summed per behaviour / target, never across item boundaries."""
    offsets = np.array([0, 1, 4, 6, 6])  # item 3 has no pieces -> zero vector
    rows = np.array([1, 2, 3, 4, 5, 1])
    mod = sid_module(offsets, rows, 6, 4)
    emb = SemanticIdSequenceEmbedding(None, mod, None, "sid", 4, 4)
    hist = [[2, 3, 4], [], [5, 3]]  # encoded ids (item i = id 2 + i)
    targets = [3, 4, 2]
    lengths = [len(h) for h in hist]
    values = [i for h in hist for i in h] + [0] * sum(lengths) * 2 + targets + [0] * 6
    kjt = KeyedJaggedTensor(keys=list(FEATURE_KEYS), values=torch.tensor(values),
                            lengths=torch.tensor(lengths * 3 + [1] * 9, dtype=torch.int32))
    att, rep = emb(kjt)
    assert rep is att
    weight = next(mod.ebc.parameters()).detach()

    def ref(enc: int) -> torch.Tensor:
        i = enc - FIRST_ID
        return weight[rows[offsets[i]:offsets[i + 1]]].sum(0) if offsets[i + 1] > offsets[i] else torch.zeros(4)

    expect_hist = torch.stack([ref(i) for h in hist for i in h])
    torch.testing.assert_close(att["hist_item"].values(), expect_hist)
    assert att["hist_item"].lengths().tolist() == lengths
    torch.testing.assert_close(att["target_item"].values(), torch.stack([ref(i) for i in targets]))
    # OOV / missing ids -> the shared unknown row 0
    kjt0 = KeyedJaggedTensor(keys=list(FEATURE_KEYS), values=torch.tensor([1, 0, 0, 0, 0, 0]),
                             lengths=torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.int32))
    att0, _ = emb(kjt0)
    torch.testing.assert_close(att0["hist_item"].values()[0], weight[0])
    torch.testing.assert_close(att0["target_item"].values()[0], weight[0])


def test_item_id_hash() -> None:
    h = ItemIdHash(["hist_item"], buckets=7, seed=3)
    ids = torch.arange(0, 5000)
    out = h.hash(ids)
    assert out[:2].tolist() == [0, 1]
    assert bool(((out[2:] >= 2) & (out[2:] < 9)).all())
    counts = torch.bincount(out[2:] - 2, minlength=7).float()
    assert counts.min() > 0.7 * counts.mean()  # spread over all buckets
    assert torch.equal(out, ItemIdHash(["hist_item"], 7, seed=3).hash(ids))
    assert not torch.equal(out, ItemIdHash(["hist_item"], 7, seed=4).hash(ids))
    kjt = KeyedJaggedTensor.from_lengths_sync(["hist_item", "hist_pos"], torch.tensor([5, 6, 7, 3]), torch.tensor([2, 2]))
    got = h(kjt)
    assert got["hist_item"].values().tolist() == h.hash(torch.tensor([5, 6])).tolist()
    assert got["hist_pos"].values().tolist() == [7, 3]


def test_hashed_model_table_size(synth) -> None:  # noqa: ANN001
    _, ds = synth
    model = build_sequence_model(_model_cfg(item_hash_buckets=11), ds.table_sizes(), dataset=ds)
    assert model.embedding.base.attention.embeddings["item"].weight.shape[0] == FIRST_ID + 11
    logits = model(_batch(ds))
    assert logits.shape == (64,) and torch.isfinite(logits).all()


def test_sid_vocab_fitted_on_training_items_only(synth, tmp_path: Path) -> None:  # noqa: ANN001
    """Pieces seen only on items without training occurrences map to the unknown row 0."""
    _, ds = synth
    n = int(ds.item_raw_ids.max()) + 1
    codes = np.arange(n)[:, None] % 50
    cfg = _model_cfg(item_features="sid")
    cfg.sid = type(cfg.sid)(codes=_codes_file(tmp_path, codes, [50]), tokenizer="unigram", mapping="vocab")

    class Fake:  # the first item has no training occurrences
        cfg = ds.cfg
        item_raw_ids = ds.item_raw_ids
        popularity = np.r_[ds.popularity[:FIRST_ID], 0.0, ds.popularity[FIRST_ID + 1:]]

    emb = build_sequence_item_embedding(cfg, ds.table_sizes(), Fake)
    t = emb.sid_attention.transform
    assert t.item_rows[t.item_offsets[0]:t.item_offsets[1]].tolist() == [0]
    assert (t.item_rows[t.item_offsets[1]:t.item_offsets[-2]] > 0).all()


def test_two_stage_dare_with_sid(synth, tmp_path: Path) -> None:  # noqa: ANN001
    """The two-stage model on a DARE layout takes SID item features (attention / representation SID tables)."""
    _, ds = synth
    codes = np.random.default_rng(1).integers(0, 4, size=(int(ds.item_raw_ids.max()) + 1, 2))
    cfg = SequenceModelConfig(name="two_stage", embedding_dim=8, decoupled=True, attention_dim=4, item_features="sid")
    cfg.sid = type(cfg.sid)(codes=_codes_file(tmp_path, codes, [4, 4]), tokenizer="unigram")
    model = build_sequence_model(cfg, ds.table_sizes(), dataset=ds)
    att, rep = model.embedding(_batch(ds))
    assert att["hist_item"].values().shape[1] == 4 and rep["hist_item"].values().shape[1] == 8
    model(_batch(ds)).sum().backward()
    for sid in (model.embedding.sid_attention, model.embedding.sid_representation):
        assert next(sid.parameters()).grad.abs().sum() > 0


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="item_features"):
        SequenceModelConfig(item_features="title")
    cfg = SequenceModelConfig(item_features="sid")
    with pytest.raises(ValueError, match="mba_lambda"):
        SequenceModelConfig(item_features="sid", din=type(cfg.din)(mba_lambda=0.1))
    with pytest.raises(ValueError, match="codes"):
        build_sequence_item_embedding(cfg, {"item": 10, "category": 3, "position": 5}, object())


def _experiment() -> SequenceExperimentConfig:
    cfg = SequenceExperimentConfig()
    cfg.train.progress, cfg.train.num_threads = False, 1
    return cfg


def test_train_seq_sid_cold_start(synth, tmp_path: Path) -> None:  # noqa: ANN001
    """The trainer end to end with SID features on a cold-start split: warm / new-item metrics reported."""
    folder, _ = synth
    codes = np.random.default_rng(0).integers(0, 4, size=(41, 2))
    cfg = _experiment()
    cfg.data = SequenceDataConfig(dataset="s3rec", stem="Synth", path=str(folder), max_history=8, holdout_items=0.2)
    cfg.model = _model_cfg(item_features="sid")
    cfg.model.sid = type(cfg.model.sid)(codes=_codes_file(tmp_path, codes, [4, 4]), tokenizer="sentencepiece", sentencepiece_vocab_size=24)
    cfg.train.epochs = 1
    cfg.train.batch_size = 128
    res = train(cfg, tmp_path / "run")
    for split in ("warm", "new_items"):
        assert 0.0 <= res["test"][split]["auc"] <= 1.0
    assert res["data"]["holdout_items"] == round(0.2 * res["data"]["catalogue_items"]) > 0
    assert (tmp_path / "run" / "model.pt").exists()


def test_train_seq_sharded_dare_with_sid_and_hashed_ids(synth, tmp_path: Path) -> None:  # noqa: ANN001
    """SID item features on DARE tables and hashed item ids under DMP (every family's path): fused table
    optimizers, a DCP checkpoint; resumed == uninterrupted (2-rank parity: tests/modules/test_sid_sequence_sharded.py)."""
    folder, _ = synth
    codes = np.random.default_rng(0).integers(0, 4, size=(41, 2))

    def cfg() -> SequenceExperimentConfig:
        c = _experiment()
        c.data = SequenceDataConfig(dataset="s3rec", stem="Synth", path=str(folder), max_history=8)
        c.model = _model_cfg(item_features="id+sid", decoupled=True, attention_dim=4, item_hash_buckets=16)
        c.model.sid = type(c.model.sid)(codes=_codes_file(tmp_path, codes, [4, 4]), tokenizer="prefix_ngram")
        c.train.epochs, c.train.batch_size, c.train.checkpoint_every_steps = 2, 64, 3
        return c

    full = train(cfg(), tmp_path / "full")
    assert 0.5 < full["test"]["auc"] <= 1.0 and (tmp_path / "full" / "model.pt").exists()
    state = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert any("att_sid_item" in k for k in state) and any("rep_sid_item" in k for k in state)
    assert train(cfg(), tmp_path / "cut", _interrupt_at_step=3) == {"interrupted_at_step": 3}
    resumed = train(cfg(), tmp_path / "cut", resume=True)
    assert resumed["test"] == full["test"] and resumed["history"] == full["history"]


@pytest.mark.slow
def test_benchmark_and_train_seq_tiny_end_to_end(tmp_path: Path) -> None:
    """benchmarks/semantic_ids.py and `recsys-emb train` on the tiny Scientific cold-start config (random SIDs)."""
    import json

    from tests.conftest import load_benchmark, shared_dataset

    folder = shared_dataset("amazon_scientific_text")
    repo = Path(__file__).resolve().parents[2]
    codes = np.random.default_rng(0).integers(0, 8, size=(1585, 3))
    codes_path = tmp_path / "sids.npz"
    SemanticIds.from_codes([str(i) for i in range(1585)], codes, 8).save(codes_path)
    bench = load_benchmark("semantic_ids")
    out = tmp_path / "res"
    assert bench.main(["--config", str(repo / "configs" / "amazon_scientific_coldstart_tiny.yaml"), "--codes", str(codes_path),
                       "--seeds", "0", "1", "--variants", "hash", "prefix_ngram", "--set", f"data.path={folder}", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("hash", 0), ("prefix_ngram", 0), ("hash", 1), ("prefix_ngram", 1)]
    s = result["summary"]["prefix_ngram"]
    paired = [r["new_items"] for r in result["runs"] if r["variant"] == "prefix_ngram"]
    base = [r["new_items"] for r in result["runs"] if r["variant"] == "hash"]
    assert s["new_items_minus_hash"]["mean"] == pytest.approx(float(np.mean(np.subtract(paired, base))))
    assert "| prefix_ngram |" in out.with_suffix(".md").read_text()
    assert bench.main(["--config", str(repo / "configs" / "amazon_scientific_coldstart_tiny.yaml"), "--codes", str(codes_path),
                       "--seeds", "0", "--variants", "hash", "id", "--set", f"data.path={folder}", "--out", str(out), "--append"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["runs"][:4] == result["runs"] and [(r["variant"], r["seed"]) for r in again["runs"][4:]] == [("id", 0)]
    assert again["variants"] == ["hash", "prefix_ngram", "id"]

    from recsys_emb.cli import main

    assert main(["train", "--config", str(repo / "configs" / "amazon_scientific_coldstart_tiny.yaml"), "--data", str(folder),
                 "--set", "model.item_features=id+sid", "--set", f"model.sid.codes={codes_path}",
                 "--set", "model.sid.tokenizer=unigram", "--run-dir", str(tmp_path / "run"), "--set", "train.progress=false"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"warm", "new_items"} <= set(metrics["test"])
