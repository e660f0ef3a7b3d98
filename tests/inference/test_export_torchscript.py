"""``--format torchscript``: TorchRec fx tracing + ``torch.jit.script`` of the serving modules.

Every cell of the composition matrix scripts, fp32 and quantised (fp16 / int8 / int4): the CTR models
with every technique chain (hash / unified pre-transforms, QR, DNIS / OptEmbed, several groups for
semantic IDs), every sequence cell (DIN / two-stage, DARE) and every graph / two-tower cell (their
artefact is a table of final embeddings). What reads a batch's keys or id counts sits in small
``torch.fx.wrap``-ed functions with TorchScript bodies (recsys_emb/modules/tracing.py). A module that
fx cannot trace is still refused with :class:`TorchScriptUnsupported` saying where.

A scripted module, saved and loaded in a FRESH process in which the training code and TorchRec cannot be
imported, equals the eager model (max abs difference <= 1e-5) at batch sizes 1, 7, 8 and 512 and with
empty bags. The default suite runs :data:`DEFAULT_CELLS`; every cell at every dtype runs with ``-m slow``.
Run-level tests (export_run, Predictor.load, the CLI) are in test_export_families.py and
test_predict_table.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
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
    """Whether a cell goes through TorchScript (see the module docstring): every cell does."""
    return (model, chain) in set(cells())


# (model, chain, dtype): a pooled family plain at fp32 and quantised, a graph family with a technique, quantised;
# a CTR chain with several groups (semantic IDs + unified, quantised) and a sequence cell through every sequence
# path (two-stage top-k search, DARE roles, semantic IDs + unified)
DEFAULT_CELLS = [("dcnv2", "plain", "fp32"), ("dcnv2", "plain", "int8"), ("lightgcn", "unified", "fp16"),
                 ("dlrm", "semantic_ids+unified", "int8"), ("two_stage", "semantic_ids+unified+dare", "fp32")]
OTHER_CELLS = [(m, c, d) for m, c in cells() if scripts(m, c) for d in DTYPES if (m, c, d) not in DEFAULT_CELLS]


class _DataBranch(torch.nn.Module):
    """A serving module with Python control flow on a batch value: fx cannot trace it."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values.float() if values.sum() > 0 else -values.float()


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
def scripted_others(tmp_path_factory: pytest.TempPathFactory,
                    data: tuple[dict[str, str], Any]) -> Callable[[str, str], dict[str, Any]]:
    """The result of a cell's (model, chain) at every dtype, scripted on first use: one chunk per test
    stays far below the per-test timeout (the whole matrix takes far longer)."""
    done: dict[tuple[str, str], dict[str, Any]] = {}

    def get(model: str, chain: str) -> dict[str, Any]:
        if (model, chain) not in done:
            chosen = [cell for cell in OTHER_CELLS if cell[:2] == (model, chain)]
            done[model, chain] = _script_cells(tmp_path_factory.mktemp(f"torchscript_{model}_{chain}"), chosen, data)
        return done[model, chain]

    return get


def _check(model: str, chain: str, dtype: str, result: dict[str, Any]) -> None:
    name = f"{model}-{chain}-{dtype}"
    assert name not in result["errors"], result["errors"].get(name)
    diffs = result["diffs"][name]
    labels = [f"batch {s}" for s in SIZES] + (["empty bags"] if len(diffs) > len(SIZES) else [])
    assert all(d <= TOLERANCE for d in diffs), dict(zip(labels, diffs))


def test_cell_lists_cover_the_matrix() -> None:
    every = [(m, c) for m, c, _ in DEFAULT_CELLS + OTHER_CELLS]
    assert set(every) == set(cells())
    assert {FAMILIES[m] for m, _ in every} == set(FAMILIES.values())


def test_scripted_modules_load_without_training_code(scripted: dict[str, Any]) -> None:
    assert scripted["loaded"] == []
    assert sorted(scripted["diffs"]) == sorted(scripted["names"])


@pytest.mark.parametrize("model,chain,dtype", DEFAULT_CELLS)
def test_scripted_cell_equals_eager_in_a_fresh_process(model: str, chain: str, dtype: str, scripted: dict[str, Any]) -> None:
    _check(model, chain, dtype, scripted)


def test_untraceable_module_is_refused_naming_why() -> None:
    with pytest.raises(TorchScriptUnsupported, match="fx tracing failed .*TraceError"):
        script_program(_DataBranch(), (torch.arange(4),), "retrieval")


@pytest.mark.slow
@pytest.mark.parametrize("model,chain,dtype", OTHER_CELLS)
def test_other_scripted_cells_equal_eager_in_a_fresh_process(model: str, chain: str, dtype: str,
                                                             scripted_others: Callable[[str, str], dict[str, Any]]) -> None:
    _check(model, chain, dtype, scripted_others(model, chain))
