"""``recsys-emb sid embed|train|assign`` end to end on tiny data (hashing encoder), and the tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsys_emb.semantic_ids.cli import main
from recsys_emb.semantic_ids.codes import SemanticIds

REPO = Path(__file__).resolve().parents[2]

TEXTS = ["red glue bottle", "blue glue bottle", "steel staples", "brass staples", "drill bit set",
         "masonry drill bit", "safety gloves", "nitrile gloves", "red glue bottle", "tape measure"] * 3


def write_items(path: Path, texts: list[str]) -> None:
    path.write_text("".join(f"it{i}\t{t}\n" for i, t in enumerate(texts)))


def test_sid_pipeline_end_to_end(tmp_path, capsys):
    write_items(tmp_path / "items.tsv", TEXTS)
    cfg = tmp_path / "sid.yaml"
    cfg.write_text(
        "items: {format: tsv}\nembed: {encoder: hashing, hashing_dim: 64, progress: false, cache_dir: %s}\n"
        "rqvae: {hidden_dims: [32], latent_dim: 8, num_levels: 2, codebook_size: 4}\n"
        "train: {epochs: 4, batch_size: 16, progress: false}\n" % (tmp_path / "cache")
    )
    assert main(["embed", "--config", str(cfg), "--data", str(tmp_path / "items.tsv"), "--out", str(tmp_path / "emb.npy")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["items"] == 30 and out["dim"] == 64
    assert main(["train", "--config", str(cfg), "--embeddings", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "m.pt")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"recon_mse", "collision_rate", "usage"} <= set(out)
    (tmp_path / "counts.tsv").write_text("it0\t5\nit3\t2\n")
    assert main(["assign", "--model", str(tmp_path / "m.pt"), "--embeddings", str(tmp_path / "emb.npy"),
                 "--out", str(tmp_path / "sids.npz"), "--sentencepiece-out", str(tmp_path / "sp.model"),
                 "--sentencepiece-vocab-size", "20", "--item-counts", str(tmp_path / "counts.tsv")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sids = SemanticIds.load(tmp_path / "sids.npz")
    assert sids.keys[:2] == ["it0", "it1"] and len({tuple(r) for r in sids.codes.tolist()}) == 30
    assert (tmp_path / "sp.model").exists() and out["sentencepiece"]["pieces"] >= 1
    # new items after the RQ-VAE is frozen: embedded and assigned without retraining
    write_items(tmp_path / "new.tsv", ["green glue bottle", "cobalt drill bit"])
    assert main(["embed", "--config", str(cfg), "--data", str(tmp_path / "new.tsv"), "--out", str(tmp_path / "new.npy")]) == 0
    assert main(["assign", "--model", str(tmp_path / "m.pt"), "--embeddings", str(tmp_path / "new.npy"),
                 "--out", str(tmp_path / "new_sids.npz")]) == 0
    assert SemanticIds.load(tmp_path / "new_sids.npz").codes.shape == (2, 3)


def test_items_without_text_give_a_listing_error(tmp_path, capsys):
    (tmp_path / "items.tsv").write_text("a\tglue\nb\t\nc\t \n")
    code = main(["embed", "--data", str(tmp_path / "items.tsv"), "--format", "tsv", "--set", "embed.encoder=hashing",
                 "--out", str(tmp_path / "e.npy")])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 of 3 items have no text: b, c" in err and "missing_text: empty" in err
    code = main(["embed", "--data", str(tmp_path / "items.tsv"), "--format", "tsv", "--set", "embed.encoder=hashing",
                 "--set", "items.missing_text=empty", "--set", "embed.progress=false", "--out", str(tmp_path / "e.npy")])
    assert code == 0 and np.load(tmp_path / "e.npy").shape[0] == 3


def test_tiny_configs_load():
    from recsys_emb.config.io import load_config
    from recsys_emb.semantic_ids.config import SIDConfig

    for path in sorted((REPO / "configs").glob("sid_*.yaml")):
        cfg = load_config(SIDConfig, path)
        assert cfg.rqvae.beta == 0.25
        twin = path.with_name(path.stem.removesuffix("_tiny") + "_tiny.yaml")
        assert twin.exists(), f"{path.name} has no _tiny twin"


def test_tiny_config_end_to_end_on_shared_data(tmp_path, monkeypatch, capsys):
    from tests.conftest import shared_dataset

    shared_dataset("amazon_scientific_text")
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root
    cfg = str(REPO / "configs" / "sid_scientific_tiny.yaml")
    cache = f"embed.cache_dir={tmp_path / 'cache'}"
    assert main(["embed", "--config", cfg, "--set", cache, "--out", str(tmp_path / "emb.npy")]) == 0
    assert main(["train", "--config", cfg, "--embeddings", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["assign", "--model", str(tmp_path / "m.pt"), "--embeddings", str(tmp_path / "emb.npy"),
                 "--out", str(tmp_path / "sids.npz")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sids = SemanticIds.load(tmp_path / "sids.npz")
    assert out["items"] == 1585 and sids.keys[0] == "B00O47ILVA"  # row 0 = item index 0 of item2index
    assert len({tuple(r) for r in sids.codes.tolist()}) == 1585
