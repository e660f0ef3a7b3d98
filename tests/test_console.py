"""The console: --quiet / --verbose / --no-progress, one printing rank, the known third-party warnings filtered
where we call the API that raises them, old option spellings with a notice."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from recsys_emb import console
from recsys_emb.cli import TECHNIQUE_COMMANDS, _leaf_parsers, build_parser, main
from recsys_emb.utils import log, log_to_file
from tests.conftest import REPO

COMMON = {"--quiet", "--verbose", "--no-progress"}


@pytest.fixture(autouse=True)
def _restore_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("RECSYS_EMB_VERBOSITY", raising=False)
    saved = dict(console._state)
    yield
    console._state.update(saved)


def _all_leaves() -> dict[str, object]:
    leaves = {}
    for argv in [[]] + [[name] for name in TECHNIQUE_COMMANDS]:
        for leaf in _leaf_parsers(build_parser(argv)):
            if any(a.option_strings and a.option_strings != ["-h", "--help"] for a in leaf._actions):
                leaves[leaf.prog] = leaf
    return leaves


def test_every_command_has_the_common_options_and_a_description() -> None:
    leaves = _all_leaves()
    assert {"recsys-emb train", "recsys-emb prepare criteo", "recsys-emb sid embed", "recsys-emb predict",
            "recsys-emb doctor", "recsys-emb search"} <= set(leaves)
    for prog, leaf in leaves.items():
        options = {o for a in leaf._actions for o in a.option_strings}
        assert COMMON <= options, prog
        assert leaf.description, f"{prog}: no description"


def test_one_spelling_for_data_inputs() -> None:
    """Data inputs are --data (or --train/--valid/--test for CTR splits); old spellings are hidden aliases."""
    for prog, leaf in _all_leaves().items():
        visible = {o for a in leaf._actions if a.help != "==SUPPRESS==" for o in a.option_strings}
        assert not visible & {"--input", "--items", "--data-path", "--data-dir"}, prog
    for argv in (["prepare", "criteo"], ["prepare", "movielens"], ["evaluate"], ["train"], ["plan"], ["predict"],
                 ["retrieve"], ["sid", "embed"]):
        leaf = next(p for p in _leaf_parsers(build_parser(argv[:1])) if p.prog == "recsys-emb " + " ".join(argv))
        assert "--data" in {o for a in leaf._actions for o in a.option_strings}, argv


def test_old_spelling_works_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser(["prepare"]).parse_args(["prepare", "criteo", "--input", "a.tsv", "b.tsv", "--out", "o"])
    assert args.inputs == ["a.tsv", "b.tsv"]
    assert capsys.readouterr().err.strip() == (
        "note: --input is deprecated and will be removed in the next release; use --data")
    assert main(["prepare", "criteo", "--out", str(tmp_path / "o")]) == 2  # the data input is still required
    assert "required: --data" in capsys.readouterr().err


def test_doctor_help_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["doctor", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recsys-emb doctor") and "--json" in out


def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", "x.yaml", "--world-size", "1", "--quiet", "--verbose"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_log_levels_ranks_and_train_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    log_to_file(tmp_path / "train.log", "[rank 0]")
    try:
        console.configure()
        log("normal")
        console.configure(quiet=True)
        log("hidden when quiet")
        log("important", important=True)
        console.configure()
        monkeypatch.setenv("RANK", "1")
        log("rank 1 line", important=True)
    finally:
        log_to_file(None)
    assert capsys.readouterr().err.splitlines() == ["normal", "important"]
    logged = [line.split("] ", 1)[1] for line in (tmp_path / "train.log").read_text().splitlines()]
    assert logged == ["normal", "hidden when quiet", "important", "rank 1 line"]  # the file gets every line


def test_progress_bars_follow_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    console.configure()
    assert not console.tqdm(range(3)).disable
    assert console.tqdm(range(3), disable=True).disable
    console.configure(progress=False)
    assert console.tqdm(range(3)).disable
    console.configure(quiet=True)
    assert console.tqdm(range(3)).disable
    console.configure()
    monkeypatch.setenv("RANK", "1")
    assert console.tqdm(range(3)).disable


def test_known_warnings_filtered_only_inside_and_shown_with_verbose() -> None:
    message = "Please use DTensor instead and we are deprecating ShardedTensor."
    logger = logging.getLogger("torch.fx._symbolic_trace")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        for level, hidden in ((console.NORMAL, True), (console.VERBOSE, False)):
            console._state["level"] = level
            records.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with console.known_warnings("sharded_tensor", "forward"):
                    warnings.warn(message, FutureWarning)
                    warnings.warn("an unknown warning", FutureWarning)
                    logger.warning("is_fx_tracing will return true for both fx.symbolic_trace and torch.export.")
                    logger.warning("another log line")
                warnings.warn(message, FutureWarning)  # outside the block: shown
            shown = [str(w.message) for w in caught]
            assert shown == ([] if hidden else [message]) + ["an unknown warning", message]
            assert records == ([] if hidden else ["is_fx_tracing will return true for both fx.symbolic_trace and "
                                                  "torch.export."]) + ["another log line"]
    finally:
        logger.removeHandler(handler)
    with pytest.raises(KeyError, match="no known-warning group"):
        with console.known_warnings("nope"):
            pass


def test_every_known_warning_has_a_reason() -> None:
    for group, entries in console.KNOWN.items():
        for known in entries:
            assert len(known.reason) > 30, (group, known.message)
            assert (known.category is None) != (known.logger == ""), (group, known.message)


def _our_line(line: str) -> bool:
    return bool(re.match(r"^\[(train|ctr)\] ", line)) or line.startswith("{")


@pytest.mark.parametrize("verbose", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_training_run_prints_only_our_lines(tmp_path: Path, verbose: bool) -> None:
    """A tiny `recsys-emb train`: by default every console line is ours; --verbose shows TorchRec's warnings."""
    from recsys_emb.data.synthetic import synth_criteo

    synth_criteo(tmp_path / "data", rows=3000, test_rows=500, seed=0, progress=False)
    env = {**os.environ, "RECSYS_EMB_CACHE": str(tmp_path / "cache")}
    for name in ("RECSYS_EMB_VERBOSITY", "PYTHONWARNINGS"):  # a user's default warning settings
        env.pop(name, None)
    cmd = [sys.executable, "-m", "recsys_emb", "train", "--config", "configs/criteo_dcnv2_tiny.yaml",
           "--train", str(tmp_path / "data" / "train.txt.gz"), "--test", str(tmp_path / "data" / "test.txt.gz"),
           "--run-dir", str(tmp_path / "run"), "--set", "train.epochs=1", "--no-progress"]
    proc = subprocess.run(cmd + (["--verbose"] if verbose else []), capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if not _our_line(line)]
    if verbose:
        assert any("HeuristicalStorageReservation" in line for line in foreign), foreign
    else:
        assert foreign == []
        assert len(lines) == 5, lines  # run dir, plan summary, data, one validation, the test metrics


def test_dense_tbe_autograd_notice_is_harmless() -> None:
    """The reason of the hidden fbgemm::dense_embedding_codegen notice: the replicated CPU table's gradient (and
    output) equal torch's embedding_bag on the same weights."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    torch.manual_seed(0)
    table = DenseTableBatchedEmbeddingBagsCodegen([(50, 8)], pooling_mode=PoolingMode.SUM, use_cpu=True)
    weight = table.weights.detach().clone().view(50, 8).requires_grad_(True)
    ids, offsets = torch.randint(0, 50, (30,)), torch.tensor([0, 5, 12, 12, 30])
    with console.known_warnings("forward"):
        out = table(ids, offsets)
        grad = torch.randn_like(out)
        (out * grad).sum().backward()
    ref = torch.nn.functional.embedding_bag(ids, weight, offsets[:-1], mode="sum")
    (ref * grad).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(table.weights.grad.view(50, 8), weight.grad)
