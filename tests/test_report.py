"""``recsys-emb report``: hand-written run folders of two tasks, a real tiny CTR run (finished and interrupted),
TensorBoard losses, and the error cases."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from recsys_emb.report import (
    DPI, PANEL_INCHES, add_report_arguments, load_run, load_runs, plot_runs, read_tensorboard, run_report,
    summary_markdown, write_report,
)
from tests.conftest import make_prepared

CTR: dict[str, Any] = {
    "name": "criteo_dcnv2", "task": "ctr", "model": "dcnv2", "world_size": 2, "select_metric": "auc", "selected_on": "valid",
    "valid": {"auc": 0.79, "logloss": 0.45, "rows": 2000},
    "test": {"auc": 0.7812, "logloss": 0.4567, "rows": 4000},
    "train": {"auc": 0.9, "logloss": 0.3, "rows": 18000},
    "best_step": 20, "best_epoch": 2, "steps": 30, "epochs_completed": 3, "stop_reason": "early_stopping",
    "samples_per_second": 15000.0, "wall_samples_per_second": 12345.6, "wall_seconds": 5.0, "eval_seconds": 0.2,
    "checkpoint_seconds": 0.3, "embedding_parameters": 279872,
    "history": [
        {"epoch": 1, "step": 10, "auc": 0.75, "logloss": 0.5, "rows": 2000},
        {"epoch": 2, "step": 20, "auc": 0.79, "logloss": 0.45, "rows": 2000},
        {"epoch": 3, "step": 30, "auc": 0.77, "logloss": 0.47, "rows": 2000},
    ],
    "train_loss": [[10, 0.6], [20, 0.5], [30, 0.45]],
    "epochs": [{"epoch": e, "steps": 10, "mean_loss": 0.7 - 0.1 * e, "train_seconds": 1.0} for e in (1, 2, 3)],
}
GRAPH: dict[str, Any] = {
    "name": "gowalla_lightgcn", "task": "graph", "model": "lightgcn", "world_size": 1, "select_metric": "recall@20",
    "selected_on": "test",
    "test": {"recall@20": 0.625, "ndcg@20": 0.297, "users_evaluated": 119},
    "best_step": 10, "best_epoch": 2, "steps": 10, "epochs_completed": 2, "stop_reason": "epochs",
    "wall_samples_per_second": 999.4, "embedding_parameters": 3248,
    "history": [
        {"epoch": 1, "step": 5, "recall@20": 0.6, "ndcg@20": 0.29, "users_evaluated": 119},
        {"epoch": 2, "step": 10, "recall@20": 0.625, "ndcg@20": 0.297, "users_evaluated": 119},
    ],
    "train_loss": [],  # fewer steps than train.log_every_steps: the epoch means are plotted
    "epochs": [{"epoch": 1, "steps": 5, "mean_loss": 0.69}, {"epoch": 2, "steps": 5, "mean_loss": 0.67}],
}


def write_run(folder: Path, metrics: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="recsys-emb report")
    add_report_arguments(p)
    return p.parse_args(list(argv))


def points(curve: list[list[float]] | list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    return [float(s) for s, _ in curve], [float(v) for _, v in curve]


def history_points(metrics: dict[str, Any], name: str) -> tuple[list[float], list[float]]:
    return points([(h["step"], h[name]) for h in metrics["history"]])


def assert_close_curve(actual: list[tuple[int, float]], expected: list[list[float]] | list[tuple[int, float]]) -> None:
    """Same steps, values equal up to float32 (TensorBoard stores scalars as float32)."""
    assert [s for s, _ in actual] == [s for s, _ in expected]
    assert [v for _, v in actual] == pytest.approx([v for _, v in expected], rel=1e-6)


# ---------------------------------------------------------------------------------------------- hand-written runs
def test_load_run_reads_a_finished_run(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "ctr_run", CTR))
    assert (run.label, run.source, run.finished, run.task, run.model, run.world_size) == (
        "ctr_run", "metrics.json", True, "ctr", "dcnv2", 2)
    assert (run.select_metric, run.selected_on, run.best_value, run.best_step, run.best_epoch) == ("auc", "valid", 0.79, 20, 2)
    assert run.test == {"auc": 0.7812, "logloss": 0.4567}  # the row count is not a metric
    assert run.valid == {"auc": [(10, 0.75), (20, 0.79), (30, 0.77)], "logloss": [(10, 0.5), (20, 0.45), (30, 0.47)]}
    assert (run.train_loss, run.loss_source) == ([(10, 0.6), (20, 0.5), (30, 0.45)], "metrics.json")
    graph = load_run(write_run(tmp_path / "graph_run", GRAPH))
    assert graph.loss_source == "epoch means" and graph.train_loss == [(5, 0.69), (10, 0.67)]
    assert graph.valid.keys() == {"recall@20", "ndcg@20"}


def test_plot_draws_every_runs_history_and_loss_into_a_png_of_the_expected_size(tmp_path: Path) -> None:
    runs = load_runs([write_run(tmp_path / "ctr_run", CTR), write_run(tmp_path / "graph_run", GRAPH)])
    png = tmp_path / "out" / "curves.png"
    lines = plot_runs(runs, png)
    # panels: training loss + auc, logloss (ctr) + recall@20, ndcg@20 (graph); metrics of one task only: its line only
    assert list(lines) == ["training loss", "auc", "logloss", "recall@20", "ndcg@20"]
    assert lines["training loss"] == {"ctr_run": points(CTR["train_loss"]), "graph_run": ([5.0, 10.0], [0.69, 0.67])}
    for name in ("auc", "logloss"):
        assert lines[name] == {"ctr_run": history_points(CTR, name)}
    for name in ("recall@20", "ndcg@20"):
        assert lines[name] == {"graph_run": history_points(GRAPH, name)}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:  # 5 panels: 2 rows of 3
        assert image.size == (3 * PANEL_INCHES[0] * DPI, 2 * PANEL_INCHES[1] * DPI) == (1500, 700)
    assert [p.name for p in png.parent.iterdir()] == ["curves.png"]  # written atomically: no temp file left


def test_summary_markdown_holds_the_recorded_numbers(tmp_path: Path) -> None:
    runs = load_runs([write_run(tmp_path / "ctr_run", CTR), write_run(tmp_path / "graph_run", GRAPH)])
    md = summary_markdown(runs, "curves.png")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| run | task | model | ranks | selected on | best | test | epochs | stop reason | wall samples/s "
                       "| embedding params |")
    assert rows[1] == ("| ctr_run | ctr | dcnv2 | 2 | valid auc | 0.7900 at step 20 (epoch 2) | auc 0.7812, logloss 0.4567 "
                       "| 3 | early_stopping | 12,346 | 279,872 |")
    assert rows[2] == ("| graph_run | graph | lightgcn | 1 | test recall@20 | 0.6250 at step 10 (epoch 2) "
                       "| recall@20 0.6250, ndcg@20 0.2970 | 2 | epochs | 999 | 3,248 |")
    assert "![training and validation curves](curves.png)" in md
    assert f"`{tmp_path / 'graph_run'}` (metrics.json; training loss: the mean of each of 2 epoch(s))" in md


def test_best_is_the_recorded_selection_also_for_a_lower_is_better_metric(tmp_path: Path) -> None:
    m = copy.deepcopy(CTR)
    m.update(select_metric="logloss", best_step=20, valid={"auc": 0.79, "logloss": 0.45})
    run = load_run(write_run(tmp_path / "run", m))
    assert (run.best_value, run.best_step) == (0.45, 20)  # the lowest logloss, not the highest
    assert "| valid logloss | 0.4500 at step 20 (epoch 2) |" in summary_markdown([run])
    m.pop("valid")  # an older metrics.json without the selection split's block: read from history at best_step
    assert load_run(write_run(tmp_path / "older", m)).best_value == 0.45
    unselected = load_run(write_run(tmp_path / "unselected", {**GRAPH, "select_metric": None}))  # select_metric: null
    assert "| test | – (no selection: final weights) |" in summary_markdown([unselected])


def test_nested_history_blocks_are_curves_plotted_on_request(tmp_path: Path) -> None:
    m = copy.deepcopy(GRAPH)
    m["selected_on"] = "valid"
    for h in m["history"]:  # evaluation.track_test: the test split's metrics nested in each validation
        h["test"] = {"recall@20": h["recall@20"] - 0.1, "users_evaluated": 119}
    run = load_run(write_run(tmp_path / "run", m))
    assert run.valid["test/recall@20"] == [(5, 0.5), (10, 0.525)]
    assert list(plot_runs([run], tmp_path / "a.png")) == ["training loss", "recall@20", "ndcg@20"]
    lines = plot_runs([run], tmp_path / "b.png", metrics=["test/recall@20", "recall@20"])
    assert list(lines) == ["training loss", "test/recall@20", "recall@20"]
    assert lines["test/recall@20"]["run"] == ([5.0, 10.0], [0.5, 0.525])
    with Image.open(tmp_path / "b.png") as image:
        assert image.size == (1500, 350)


def test_tensorboard_loss_is_preferred_and_a_resumed_runs_repeated_steps_keep_the_last_value(tmp_path: Path) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run = write_run(tmp_path / "run", {**CTR, "train_loss": []})

    def session(suffix: str, losses: dict[int, float]) -> None:
        writer = EventFileWriter(str(run / "tensorboard"), filename_suffix=suffix)
        for step, loss in losses.items():
            writer.add_event(Event(step=step, wall_time=float(step), summary=Summary(
                value=[Summary.Value(tag="train/loss", simple_value=loss)])))
        writer.close()

    session(".a", {1: 0.75, 2: 0.625, 3: 0.5, 4: 0.375})
    session(".b", {3: 0.25, 4: 0.125, 5: 0.0625})  # resumed from a checkpoint at step 2
    assert read_tensorboard(run)["train/loss"] == [(1, 0.75), (2, 0.625), (3, 0.25), (4, 0.125), (5, 0.0625)]
    loaded = load_run(run)
    assert loaded.loss_source == "tensorboard" and loaded.train_loss[-1] == (5, 0.0625)
    # metrics.json / checkpoint steps the events lack (e.g. not yet flushed) are added; TensorBoard wins where both have one
    write_run(run, {**CTR, "train_loss": [[5, 9.0], [6, 0.03125]]})
    loaded = load_run(run)
    assert loaded.loss_source == "tensorboard + metrics.json" and loaded.train_loss[-2:] == [(5, 0.0625), (6, 0.03125)]


# ---------------------------------------------------------------------------------------------- the command
def test_cli_one_run_writes_into_run_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "ctr_run", CTR)
    assert run_report(parse(str(run))) == 0
    out = run / "report"
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "report.md"]
    captured = capsys.readouterr()
    assert captured.out == f"{out / 'report.md'}\n"
    assert captured.err == f"[report] 1 run(s) -> {out / 'report.md'}, {out / 'curves.png'}\n"


def test_cli_merges_positional_and_run_dir_runs_with_unique_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a, b = write_run(tmp_path / "a" / "run", CTR), write_run(tmp_path / "b" / "run", GRAPH)
    c = write_run(tmp_path / "c", CTR)
    assert run_report(parse(str(a), "--run-dir", str(b), str(c), str(a), "--out", str(tmp_path / "rep"))) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "3 run(s)." in md  # a once
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "|---" not in line][1:] == [
        "| a/run", "| b/run", "| c"]
    monkeypatch.chdir(tmp_path)  # several runs without --out: ./report
    assert run_report(parse("--run-dir", str(a), str(b))) == 0
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "curves.png").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == "report/report.md"


def test_bad_input_names_the_folder_and_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run folder given"):
        run_report(parse())
    with pytest.raises(FileNotFoundError, match=f"run folder {tmp_path / 'nope'} does not exist"):
        run_report(parse(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'empty'} is not a `recsys-emb train` run folder: "
                                                r"it has no metrics.json .* and no config.yaml"):
        load_run(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a `recsys-emb train` run folder"):
        load_run(tmp_path / "file")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text('{"task": ')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'broken' / 'metrics.json'} is not valid JSON"):
        load_run(tmp_path / "broken")
    write_run(tmp_path / "other", {"auc": 0.5})
    with pytest.raises(ValueError, match=r"metrics.json has no 'history' list"):
        load_run(tmp_path / "other")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("task: ctr\nmodel: {name: dcnv2}\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'started'} has no metrics.json .* no checkpoint/trainer_state.json "
                                         r".* and no tensorboard/ events .*nothing to report yet"):
        load_run(tmp_path / "started")
    run = write_run(tmp_path / "ok", CTR)
    with pytest.raises(ValueError, match=r"--metrics: no run has 'recall@20'; the runs have: auc, logloss"):
        run_report(parse(str(run), "--metrics", "recall@20"))
    assert not (run / "report").exists()  # nothing written


# ---------------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished tiny dcnv2 run logging the loss at every step, and the same run interrupted at step 10."""
    from tests.train.test_loop import tiny_config
    from recsys_emb.train.tasks import train

    root = tmp_path_factory.mktemp("report_runs")
    data = make_prepared(root / "prepared", 3000)
    overrides = ("train.epochs=2", "train.log_every_steps=1", "train.progress=false", "train.eval_every_steps=4",
                 "train.early_stopping_patience=0")
    train(tiny_config("dcnv2", data, root, *overrides), root / "finished")
    assert train(tiny_config("dcnv2", data, root, *overrides), root / "interrupted", _interrupt_at_step=10) == {
        "interrupted_at_step": 10}
    return root / "finished", root / "interrupted"


def test_a_real_run_is_reported_with_its_tensorboard_loss(real_runs: tuple[Path, Path], tmp_path: Path) -> None:
    finished, _ = real_runs
    m = json.loads((finished / "metrics.json").read_text())
    run = load_run(finished)
    assert run.loss_source == "tensorboard"
    assert [s for s, _ in run.train_loss] == list(range(1, m["steps"] + 1))  # train.log_every_steps=1: every step
    assert_close_curve(run.train_loss, m["train_loss"])
    assert run.valid["auc"] == [(h["step"], h["auc"]) for h in m["history"]]
    assert (run.best_value, run.best_step) == (m["valid"]["auc"], m["best_step"])
    md, png = write_report([run], tmp_path / "rep")
    text = md.read_text()
    assert f"| finished | ctr | dcnv2 | 1 | valid auc | {m['valid']['auc']:.4f} at step {m['best_step']} " in text
    assert f"{m['stop_reason']} | {m['wall_samples_per_second']:,.0f} | {m['embedding_parameters']:,} |" in text
    with Image.open(png) as image:
        assert image.size == (1500, 350)  # training loss, auc, logloss


def test_an_interrupted_run_is_reported_from_its_checkpoint_and_tensorboard(real_runs: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    _, interrupted = real_runs
    assert not (interrupted / "metrics.json").exists()
    run = load_run(interrupted)
    state = json.loads((interrupted / "checkpoint" / "trainer_state.json").read_text())
    assert (run.source, run.finished, run.task, run.model, run.world_size) == ("checkpoint", False, "ctr", "dcnv2", 1)
    assert run.steps == 10 and [s for s, _ in run.valid["auc"]] == [4, 8]
    assert (run.best_value, run.best_step) == (state["best"], state["best_step"])
    assert_close_curve(run.train_loss, state["train_loss"])
    md = summary_markdown([run])
    assert "| interrupted | ctr | dcnv2 | 1 | valid auc |" in md and "unfinished (last checkpoint: step 10)" in md


def test_a_run_with_only_config_and_tensorboard_is_reported_from_its_events(real_runs: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    finished, _ = real_runs  # its writer is closed: every event is on disk
    m = json.loads((finished / "metrics.json").read_text())
    tb_only = tmp_path / "tb_only"
    shutil.copytree(finished, tb_only, symlinks=True,
                    ignore=shutil.ignore_patterns("metrics.json", "checkpoint", ".versions"))
    run = load_run(tb_only)
    assert (run.source, run.selected_on, run.select_metric, run.steps) == ("tensorboard", "valid", "auc", m["steps"])
    assert_close_curve(run.valid["auc"], [(h["step"], h["auc"]) for h in m["history"]])
    assert_close_curve(run.train_loss, m["train_loss"])
    assert run.best_step == m["best_step"] and run.best_value == pytest.approx(m["valid"]["auc"], rel=1e-6)
    assert f"unfinished (TensorBoard: step {m['steps']})" in summary_markdown([run])
