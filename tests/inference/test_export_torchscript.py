"""``--format torchscript``: TorchRec fx tracing + ``torch.jit.script`` of the serving modules.

What scripts: CTR models whose tables are one stock collection (the ``plain`` chain), fp32 and quantised
(fp16 / int8 / int4), and every graph / two-tower cell (their artefact is a table of final embeddings).
What is refused with :class:`TorchScriptUnsupported` naming the module and why: the CTR technique chains
(hash / unified pre-transform, DNIS / OptEmbed checks, several groups for semantic IDs) and every
sequence cell (the sequence lookup sizes its bags from the batch's id counts in Python).

A scripted module, saved and loaded in a FRESH process in which the training code and TorchRec cannot be
imported, equals the eager model (max abs difference <= 1e-5) at batch sizes 1, 7, 8 and 512 and with
empty bags. The default suite runs :data:`DEFAULT_CELLS`; every cell at every dtype runs with ``-m slow``.
Run-level tests (export_run, Predictor.load, the CLI) are in test_export_families.py and
test_predict_table.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from recsys_emb.inference.export import TorchScriptUnsupported, script_program
from recsys_emb.inference.quantize import quantize_tables
from recsys_emb.modules.matrix import FAMILIES, cells
from tests.inference.test_export_cells import BLOCKED, IMPORT_GUARD, SIZES, _cases, _serving
from tests.modules.test_composition import make_data, sequence_dataset

TOLERANCE = 1e-5
DTYPES = ("fp32", "fp16", "int8", "int4")


def scripts(model: str, chain: str) -> bool:
    """Whether a cell goes through TorchScript (see the module docstring)."""
    return FAMILIES[model] in ("graph", "two_tower") or (FAMILIES[model] == "ctr" and chain == "plain")


# (model, chain, dtype): a pooled family plain at fp32 and quantised, a graph family with a technique, quantised
DEFAULT_CELLS = [("dcnv2", "plain", "fp32"), ("dcnv2", "plain", "int8"), ("lightgcn", "unified", "fp16")]
# refused cells and the module the refusal must name
DEFAULT_REFUSED = [("dcnv2", "unified", "MultiProbeHash"), ("dcnv2", "dnis", "single_ids"), ("din", "plain", "SequenceLookup"),
                   ("dlrm", "semantic_ids", "PooledGroups")]
OTHER_CELLS = [(m, c, d) for m, c in cells() if scripts(m, c) for d in DTYPES if (m, c, d) not in DEFAULT_CELLS]
OTHER_REFUSED = [(m, c) for m, c in cells() if not scripts(m, c) and (m, c) not in {(r[0], r[1]) for r in DEFAULT_REFUSED}]

CHILD = (IMPORT_GUARD + textwrap.dedent("""
    import torch
    from recsys_emb.inference.predictor import _load_op_libraries
    _load_op_libraries()
    root, out = sys.argv[1], {{}}
    for name in json.load(open(root + "/cells.json")):
        program = torch.jit.load(root + "/" + name + ".pt")
        cases = torch.load(root + "/" + name + ".cases.pt", weights_only=True)
        with torch.no_grad():
            out[name] = [float((program(*case["inputs"]) - case["eager"]).abs().max()) if case["eager"].numel() else 0.0
                         for case in cases]
    print(json.dumps({{"diffs": out, "loaded": sorted(m for m in sys.modules if m.startswith({blocked!r}))}}))
""")).format(blocked=BLOCKED)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Any]:
    paths = make_data(tmp_path_factory.mktemp("torchscript_data"))
    return paths, sequence_dataset(paths)


def _kind(model: str) -> str:
    return {"ctr": "ctr", "sequence": "sequence"}.get(FAMILIES[model], "retrieval")


def _script_cells(root: Path, chosen: list[tuple[str, str, str]], data: tuple[dict[str, str], Any]) -> dict[str, Any]:
    """Script ``chosen`` cells here, load and run them in one fresh process; its result + scripting errors."""
    paths, ds = data
    names, errors = [], {}
    built: dict[tuple[str, str], torch.nn.Module] = {}
    for model, chain, dtype in chosen:
        name = f"{model}-{chain}-{dtype}"
        if (model, chain) not in built:
            built[model, chain] = _serving(model, chain, paths, ds)
        serving = built[model, chain]
        cases = _cases(model, serving, paths, ds)
        if dtype != "fp32":
            serving = quantize_tables(copy.deepcopy(serving), dtype)
        try:
            program, parity = script_program(serving, cases[2], _kind(model))
        except Exception as e:  # noqa: BLE001 (reported by the cell's own test)
            errors[name] = f"{type(e).__name__}: {str(e)[:2000]}"
            continue
        assert parity <= TOLERANCE, (name, parity)
        torch.jit.save(program, str(root / f"{name}.pt"))
        with torch.no_grad():
            torch.save([{"inputs": case, "eager": serving(*case)} for case in cases], root / f"{name}.cases.pt")
        names.append(name)
    (root / "cells.json").write_text(json.dumps(names))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "errors": errors, "names": names}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, data: tuple[dict[str, str], Any]) -> dict[str, Any]:
    return _script_cells(tmp_path_factory.mktemp("torchscript_cells"), DEFAULT_CELLS, data)


@pytest.fixture(scope="module")
def scripted_others(tmp_path_factory: pytest.TempPathFactory, data: tuple[dict[str, str], Any]) -> dict[str, Any]:
    return _script_cells(tmp_path_factory.mktemp("torchscript_other_cells"), OTHER_CELLS, data)


def _check(model: str, chain: str, dtype: str, result: dict[str, Any]) -> None:
    name = f"{model}-{chain}-{dtype}"
    assert name not in result["errors"], result["errors"].get(name)
    diffs = result["diffs"][name]
    labels = [f"batch {s}" for s in SIZES] + (["empty bags"] if len(diffs) > len(SIZES) else [])
    assert all(d <= TOLERANCE for d in diffs), dict(zip(labels, diffs))


def test_cell_lists_cover_the_matrix() -> None:
    every = {(m, c) for m, c, _ in DEFAULT_CELLS + OTHER_CELLS} | {(m, c) for m, c, _ in DEFAULT_REFUSED} | set(OTHER_REFUSED)
    assert every == set(cells())
    assert not {(m, c) for m, c, _ in DEFAULT_CELLS + OTHER_CELLS} & ({(m, c) for m, c, _ in DEFAULT_REFUSED} | set(OTHER_REFUSED))
    assert {FAMILIES[m] for m, c in every if scripts(m, c)} == {"ctr", "graph", "two_tower"}


def test_scripted_modules_load_without_training_code(scripted: dict[str, Any]) -> None:
    assert scripted["loaded"] == []
    assert sorted(scripted["diffs"]) == sorted(scripted["names"])


@pytest.mark.parametrize("model,chain,dtype", DEFAULT_CELLS)
def test_scripted_cell_equals_eager_in_a_fresh_process(model: str, chain: str, dtype: str, scripted: dict[str, Any]) -> None:
    _check(model, chain, dtype, scripted)


@pytest.mark.parametrize("model,chain,culprit", DEFAULT_REFUSED)
def test_unscriptable_cells_are_refused_naming_why(model: str, chain: str, culprit: str,
                                                   data: tuple[dict[str, str], Any]) -> None:
    paths, ds = data
    serving = _serving(model, chain, paths, ds)
    with pytest.raises(TorchScriptUnsupported, match=culprit) as info:
        script_program(serving, _cases(model, serving, paths, ds)[2], _kind(model))
    assert "recsys_emb/modules/" in str(info.value)  # the file and line of the Python control flow


@pytest.mark.slow
@pytest.mark.parametrize("model,chain,dtype", OTHER_CELLS)
def test_other_scripted_cells_equal_eager_in_a_fresh_process(model: str, chain: str, dtype: str,
                                                             scripted_others: dict[str, Any]) -> None:
    _check(model, chain, dtype, scripted_others)


@pytest.mark.slow
@pytest.mark.parametrize("model,chain", OTHER_REFUSED)
def test_other_unscriptable_cells_are_refused_naming_why(model: str, chain: str, data: tuple[dict[str, str], Any]) -> None:
    paths, ds = data
    serving = _serving(model, chain, paths, ds)
    with pytest.raises(TorchScriptUnsupported, match=r"in \w+(\.\S+)? \(recsys_emb/(modules|models)/\w+\.py:\d+: `"):
        script_program(serving, _cases(model, serving, paths, ds)[2], _kind(model))  # names the module, file and line
