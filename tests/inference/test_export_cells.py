"""Every cell of the composition matrix exports: the fp32 program, loaded in a FRESH process in which the
training code and TorchRec cannot be imported, equals the eager model (max abs difference <= 1e-5) at
batch sizes 1, 7, 8 and 512 and with empty bags, through the same artefact (dynamic shapes).

An export takes 1-5 s, so the default suite runs :data:`DEFAULT_CELLS`: every chain at least once per
family kind (all chains on dlrm, din, lightgcn and two-tower; lr's first-order tables; one two-stage,
NGCF and MF cell). The other cells run with ``-m slow`` (``make test-all``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys_emb.data.dataset import PreparedCTRData
from recsys_emb.inference.export import CTRServing, SequenceServing, export_program, kjt_inputs, retrieval_serving
from recsys_emb.modules.matrix import FAMILIES, cells
from tests.modules.test_composition import build, graph_spec, make_data, sequence_dataset, spec_for

TOLERANCE = 1e-5
DEFAULT_CELLS = [(m, c) for m, c in cells() if m in ("dlrm", "din", "lightgcn", "two_tower")
                 or (m, c) in {("lr", "plain"), ("lr", "semantic_ids+unified"), ("two_stage", "semantic_ids+unified+dare"),
                               ("ngcf", "plain"), ("mf", "unified")}]
OTHER_CELLS = [cell for cell in cells() if cell not in DEFAULT_CELLS]
SIZES = (1, 7, 8, 512)
# imports the serving side must not need (a server has torch, fbgemm_gpu and recsys_emb.ops only)
BLOCKED = ("recsys_emb.train", "recsys_emb.models", "recsys_emb.modules", "recsys_emb.config", "torchrec")
# the start of a scoring subprocess: any import of BLOCKED fails (a str.format template: {blocked!r})
IMPORT_GUARD = textwrap.dedent("""
    import builtins, json, sys
    real = builtins.__import__
    def guard(name, *args, **kwargs):
        if name.startswith({blocked!r}):
            raise ImportError("the serving side imported " + name)
        return real(name, *args, **kwargs)
    builtins.__import__ = guard
""")
CHILD = (IMPORT_GUARD + textwrap.dedent("""
    import torch
    from recsys_emb.inference.predictor import _load_op_libraries
    _load_op_libraries()
    root, out = sys.argv[1], {{}}
    for name in json.load(open(root + "/cells.json")):
        program = torch.export.load(root + "/" + name + ".pt2").module()
        cases = torch.load(root + "/" + name + ".cases.pt", weights_only=True)
        out[name] = [float((program(*case["inputs"]) - case["eager"]).abs().max()) if case["eager"].numel() else 0.0
                     for case in cases]
    print(json.dumps({{"diffs": out, "loaded": sorted(m for m in sys.modules if m.startswith({blocked!r}))}}))
""")).format(blocked=BLOCKED)


def _drop_bags(values: torch.Tensor, lengths: torch.Tensor, empty: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty some bags of (values, lengths (F, B)), removing their ids: every 3rd bag (CTR), or of the
    features flagged in ``empty`` (sequences: the histories and attribute bags of every 3rd row; a
    sequence example keeps its one target id)."""
    flat = lengths.reshape(-1)
    if empty is None:
        keep_bag = torch.arange(flat.numel()) % 3 != 1
    else:
        rows = torch.arange(lengths.shape[1]) % 3 != 1
        keep_bag = torch.stack([rows if e else torch.ones_like(rows) for e in empty]).reshape(-1)
    keep_id = torch.repeat_interleave(keep_bag, flat)
    return values[keep_id], (flat * keep_bag).reshape(lengths.shape)


def _cases(model: str, serving: torch.nn.Module, paths: dict[str, str], ds: Any) -> list[tuple[torch.Tensor, ...]]:
    """Inputs at every batch size (rows repeat when the data is smaller) plus one with empty bags."""
    kind = FAMILIES[model]
    out = []
    for size in SIZES:
        rows = np.arange(size) % 64
        if kind == "ctr":
            batch = PreparedCTRData.open(paths["ctr"]).batch(rows)
            kjt = batch.sparse_features
            out.append((batch.dense_features, *kjt_inputs(kjt)))
        elif kind == "sequence":
            ex = ds.examples("train")
            kjt = ds.make_batch(ex.take(rows % len(ex.label))).sparse_features
            out.append(kjt_inputs(kjt))
        else:
            out.append((torch.arange(size, dtype=torch.int64) % serving.tables.embedding_bags["user_emb"].weight.shape[0],))
    if kind == "ctr":
        *head, values, lengths = out[2]
        out.append((*head, *_drop_bags(values, lengths)))
    elif kind == "sequence":
        values, lengths = out[2]
        out.append(_drop_bags(values, lengths, [k.startswith("hist_") or k == "target_attrs" for k in serving.keys]))
    return out


def _serving(model: str, chain: str, paths: dict[str, str], ds: Any) -> torch.nn.Module:
    spec = graph_spec(chain) if FAMILIES[model] in ("graph", "two_tower") else spec_for(model, chain, paths)
    train = build(model, spec, paths, ds=ds).eval()
    if FAMILIES[model] == "ctr":
        keys = PreparedCTRData.open(paths["ctr"]).sparse_features
        return CTRServing(train.model, list(keys)).eval()
    if FAMILIES[model] == "sequence":
        return SequenceServing(train.model, list(ds.make_batch(ds.examples("train").take(np.arange(2))).sparse_features.keys())).eval()
    return retrieval_serving(train)


def _export_cells(root: Path, chosen: list[tuple[str, str]]) -> tuple[dict[str, Any], list[str]]:
    """Export ``chosen`` cells here, load and run them in one fresh process; its result + export errors, names."""
    paths = make_data(root / "data")
    ds = sequence_dataset(paths)
    names, errors = [], {}
    for model, chain in chosen:
        name = f"{model}-{chain}"
        serving = _serving(model, chain, paths, ds)
        cases = _cases(model, serving, paths, ds)
        kind = {"ctr": "ctr", "sequence": "sequence"}.get(FAMILIES[model], "retrieval")
        try:
            program, _ = export_program(serving, cases[2], kind)
        except Exception as e:  # noqa: BLE001 (reported by the cell's own test)
            errors[name] = f"{type(e).__name__}: {str(e)[:2000]}"
            continue
        torch.export.save(program, str(root / f"{name}.pt2"))
        with torch.no_grad():
            torch.save([{"inputs": case, "eager": serving(*case)} for case in cases], root / f"{name}.cases.pt")
        names.append(name)
    (root / "cells.json").write_text(json.dumps(names))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "errors": errors}, names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str]]:
    return _export_cells(tmp_path_factory.mktemp("export_cells"), DEFAULT_CELLS)


@pytest.fixture(scope="module")
def exported_others(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str]]:
    return _export_cells(tmp_path_factory.mktemp("export_other_cells"), OTHER_CELLS)


def _check(model: str, chain: str, exported: tuple[dict[str, Any], list[str]]) -> None:
    name = f"{model}-{chain}"
    assert name not in exported[0]["errors"], exported[0]["errors"].get(name)
    diffs = exported[0]["diffs"][name]
    labels = [f"batch {s}" for s in SIZES] + (["empty bags"] if len(diffs) > len(SIZES) else [])
    assert all(d <= TOLERANCE for d in diffs), dict(zip(labels, diffs))


def test_default_cells_cover_every_chain_and_family() -> None:
    assert {c for _, c in DEFAULT_CELLS} == {c for _, c in cells()}
    assert {FAMILIES[m] for m, _ in DEFAULT_CELLS} == set(FAMILIES.values())
    assert sorted(DEFAULT_CELLS + OTHER_CELLS) == sorted(cells())


def test_serving_side_imports_no_training_code(exported: tuple[dict[str, Any], list[str]]) -> None:
    result, names = exported
    assert result["loaded"] == []
    assert sorted(result["diffs"]) == sorted(names)


@pytest.mark.parametrize("model,chain", DEFAULT_CELLS)
def test_exported_cell_equals_eager_in_a_fresh_process(model: str, chain: str, exported: tuple[dict[str, Any], list[str]]) -> None:
    _check(model, chain, exported)


@pytest.mark.slow
@pytest.mark.parametrize("model,chain", OTHER_CELLS)
def test_other_exported_cells_equal_eager_in_a_fresh_process(model: str, chain: str,
                                                             exported_others: tuple[dict[str, Any], list[str]]) -> None:
    _check(model, chain, exported_others)
