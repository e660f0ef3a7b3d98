"""``recsys-emb report``: the training / validation curves of one or several runs as a PNG, plus a markdown summary.

Reads what ``recsys-emb train`` leaves in a run folder (:mod:`recsys_emb.train.trainer`):

- ``metrics.json`` (a finished run): the summary, ``history`` (one entry per validation: its step and the
  selection split's metrics), ``train_loss`` (``[step, loss]`` every ``train.log_every_steps``) and
  ``epochs`` (the mean loss of each epoch);
- ``tensorboard/`` (``train.tensorboard``, rank 0): ``train/loss`` at every logged step and
  ``<split>/<metric>`` at every validation, read with TensorBoard's ``EventAccumulator``;
- a run without ``metrics.json`` (still training, interrupted, crashed) is reported from ``config.yaml``,
  the last checkpoint's ``trainer_state.json`` (history, losses and best so far) and the TensorBoard events
  (which may hold later points than the checkpoint).

The training loss comes from, in this order: TensorBoard ``train/loss`` (the latest, also of a run still
going), ``train_loss`` of ``metrics.json`` / the checkpoint, the mean loss of each epoch (plotted at the
epoch's last step; runs shorter than ``train.log_every_steps`` log no per-step loss).

Validation curves are the float metrics of ``history`` (nested dicts, e.g. a graph run's ``test`` block with
``evaluation.track_test``, become ``test/recall@20``; by default only top-level metrics get a panel).
"Best" is what the trainer recorded (``best_step`` and the selection split's metrics there), never
recomputed from the curves, so a metric's direction never matters.

Example::

    runs = load_runs(["runs/dcnv2", "runs/dlrm"])
    paths = write_report(runs, "runs/report")   # (report.md, curves.png)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_emb.utils import atomic_write_bytes, atomic_write_text, log

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_NAME = "curves.png"
MARKDOWN_NAME = "report.md"
PANEL_INCHES = (5.0, 3.5)  # (width, height) of one panel
DPI = 100  # curves.png is (columns * 500) x (rows * 350) pixels
MAX_COLUMNS = 3
DEFAULT_SELECT_METRIC = "auc"  # recsys_emb.train.trainer.Task.select_metric: ctr and sequence runs

Series = list[tuple[int, float]]  # (step, value), steps increasing
PlottedLines = dict[str, dict[str, tuple[list[float], list[float]]]]  # panel -> run label -> (x, y)


@dataclass
class RunCurves:
    """What ``report`` shows of one run folder (:func:`load_run`).

    Args:
        run_dir: the run folder.
        label: the run's name in the legend and the table (the folder name; :func:`load_runs` makes them unique).
        source: where the summary came from: ``metrics.json`` (finished), ``checkpoint`` (the last
            checkpoint's ``trainer_state.json``: unfinished) or ``tensorboard`` (events only: unfinished).
        task: ``ctr``, ``sequence``, ``graph`` or ``two_tower``.
        model: the model name (``config.yaml`` ``model.name``).
        world_size: the number of ranks (None: unknown).
        select_metric: the metric that selects the model (None: no selection, the final weights are kept).
        selected_on: the split it is read on (``valid``, or ``test`` where there is no validation split).
        best_value: ``select_metric`` of the selected model (so far, for an unfinished run).
        best_step: the step it was evaluated at.
        best_epoch: the epoch it was evaluated in (1-based).
        test: the final test metrics of the selected model (floats; nested blocks as ``block/metric``).
        steps: training steps run (of an unfinished run: the last one recorded).
        epochs_completed: complete epochs.
        stop_reason: ``epochs``, ``early_stopping``, ``max_steps``, ``max_minutes``; None: unfinished.
        wall_samples_per_second: training samples per second of wall clock (steps, evaluations, checkpoints).
        embedding_parameters: embedding table parameters.
        train_loss: the training loss curve.
        loss_source: ``tensorboard``, ``metrics.json``, ``checkpoint``, ``epoch means`` or ``none``.
        valid: the selection split's metrics at each validation: metric -> curve.
    """

    run_dir: Path
    label: str
    source: str
    task: str | None = None
    model: str | None = None
    world_size: int | None = None
    select_metric: str | None = None
    selected_on: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    test: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    epochs_completed: int | None = None
    stop_reason: str | None = None
    wall_samples_per_second: float | None = None
    embedding_parameters: int | None = None
    train_loss: Series = field(default_factory=list)
    loss_source: str = "none"
    valid: dict[str, Series] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the run wrote ``metrics.json``."""
        return self.source == "metrics.json"


# ---------------------------------------------------------------------------------------------- reading
def flatten_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The float values of one evaluation (``rows`` and other counts are ints: left out, as in TensorBoard);
    a nested block (``{"test": {"recall@20": ...}}``) becomes ``test/recall@20``."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, float):
            out[key] = value
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, float)})
    return out


def history_curves(history: Iterable[dict[str, Any]]) -> dict[str, Series]:
    """``metrics.json`` ``history`` -> metric -> [(step, value)] (metrics in order of first appearance)."""
    curves: dict[str, dict[int, float]] = {}
    for entry in history:
        step = int(entry["step"])
        for key, value in flatten_metrics({k: v for k, v in entry.items() if k not in ("epoch", "step")}).items():
            curves.setdefault(key, {})[step] = value
    return {key: sorted(points.items()) for key, points in curves.items()}


def epoch_loss_curve(epochs: Iterable[dict[str, Any]]) -> Series:
    """The mean training loss of each epoch at the epoch's last step."""
    out: Series = []
    step = 0
    for record in epochs:
        step += int(record.get("steps", 0))
        if isinstance(record.get("mean_loss"), (int, float)):
            out.append((step, float(record["mean_loss"])))
    return out


def read_tensorboard(run_dir: str | Path) -> dict[str, Series]:
    """Every scalar of ``RUN/tensorboard``: tag -> [(step, value)] ({} without event files).

    A resumed run appends a new event file and repeats the steps after its checkpoint: the last value
    written for a step wins."""
    folder = Path(run_dir) / "tensorboard"
    if not folder.is_dir() or not any(folder.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    out: dict[str, Series] = {}
    for tag in acc.Tags().get("scalars", []):
        points = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
        out[tag] = sorted(points.items())
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); is it a `recsys-emb train` file?") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not the JSON object `recsys-emb train` writes")
    return data


def _trainer_state(run_dir: Path) -> dict[str, Any] | None:
    """``trainer_state.json`` of the run's last checkpoint: ``checkpoint/`` (a link to the published version),
    else the newest version under ``.versions/`` (as :func:`recsys_emb.train.checkpoint.resolve_checkpoint`
    falls back, without importing torch); None when there is none."""
    candidates = [run_dir / "checkpoint"]
    versions = run_dir / ".versions"
    if versions.is_dir():
        numbered = [(int(p.name.rpartition(".")[2]), p) for p in versions.glob("checkpoint.*") if p.name.rpartition(".")[2].isdigit()]
        candidates += [p for _, p in sorted(numbered, reverse=True)]
    for folder in candidates:
        if (folder / "trainer_state.json").is_file():
            return _read_json(folder / "trainer_state.json")
    return None


def _ranks_from_log(run_dir: Path) -> int | None:
    """The rank count of the last "sharding plan: ... on N rank(s)" line of ``train.log`` (None: none)."""
    path = run_dir / "train.log"
    if not path.is_file():
        return None
    found = re.findall(r"sharding plan: .* on (\d+) rank\(s\)", path.read_text(errors="replace"))
    return int(found[-1]) if found else None


def load_run(run_dir: str | Path, label: str | None = None) -> RunCurves:
    """Read one ``recsys-emb train`` run folder (finished or not; see the module docstring).

    Args:
        run_dir: the run folder.
        label: its name in the report (default: the folder name).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, or holds neither ``metrics.json`` nor ``config.yaml``.
        ValueError: a file is not what ``train`` writes, or an unfinished run has nothing to plot yet.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a `recsys-emb train` run folder")
    label = label or run_dir.absolute().name
    if (run_dir / "metrics.json").is_file():
        return _finished_run(run_dir, label)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a `recsys-emb train` run folder: it has no metrics.json (written when a run finishes) "
            f"and no config.yaml (written when it starts)")
    return _unfinished_run(run_dir, label)


def _finished_run(run_dir: Path, label: str) -> RunCurves:
    path = run_dir / "metrics.json"
    m = _read_json(path)
    if not isinstance(m.get("history"), list):
        raise ValueError(f"{path} has no 'history' list: not a metrics.json of `recsys-emb train`")
    run = RunCurves(
        run_dir=run_dir, label=label, source="metrics.json", task=m.get("task"), model=m.get("model"),
        world_size=m.get("world_size"), select_metric=m.get("select_metric"), selected_on=m.get("selected_on"),
        best_step=m.get("best_step"), best_epoch=m.get("best_epoch"), test=flatten_metrics(m.get("test")),
        steps=m.get("steps"), epochs_completed=m.get("epochs_completed"), stop_reason=m.get("stop_reason"),
        wall_samples_per_second=m.get("wall_samples_per_second"), embedding_parameters=m.get("embedding_parameters"),
        valid=history_curves(m["history"]),
    )
    if run.select_metric is not None:
        selected = m.get(run.selected_on or "") or {}  # the selection split's metrics of the selected model
        if run.select_metric not in selected:
            selected = next((h for h in m["history"] if h.get("step") == run.best_step), {})
        value = selected.get(run.select_metric)
        run.best_value = float(value) if isinstance(value, (int, float)) else None
    scalars = read_tensorboard(run_dir)
    run.train_loss, run.loss_source = _loss(scalars, m.get("train_loss"), "metrics.json", m.get("epochs"))
    return run


def _loss(scalars: dict[str, Series], logged: list[list[float]] | None, source: str,
          epochs: list[dict[str, Any]] | None) -> tuple[Series, str]:
    """The training loss curve and its source: the logged per-step loss, TensorBoard's where it has the step
    (``logged`` adds steps its events lack, e.g. not yet flushed), unless the epoch means have more points
    (a run shorter than a few ``train.log_every_steps``)."""
    board = dict(scalars.get("train/loss", []))
    extra = {int(step): float(value) for step, value in logged or [] if int(step) not in board}
    steps = sorted({**extra, **board}.items())
    kind = ("tensorboard" if not extra else f"tensorboard + {source}") if board else source
    means = epoch_loss_curve(epochs or [])
    if len(means) > len(steps):
        return means, "epoch means"
    return steps, kind if steps else "none"


def _unfinished_run(run_dir: Path, label: str) -> RunCurves:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{run_dir / 'config.yaml'} is not a `recsys-emb train` experiment config (not a mapping)")
    state = _trainer_state(run_dir)
    scalars = read_tensorboard(run_dir)
    evaluated = {tag.partition("/")[0] for tag in scalars} - {"train"}
    if state is None and not scalars:
        raise ValueError(
            f"{run_dir} has no metrics.json (the run has not finished), no checkpoint/trainer_state.json (no "
            f"checkpoint yet) and no tensorboard/ events (train.tensorboard: false?): nothing to report yet")
    evaluation = cfg.get("evaluation")
    select_metric = evaluation.get("select_metric") if isinstance(evaluation, dict) else DEFAULT_SELECT_METRIC
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    # Before the end, TensorBoard holds the selection split's scalars only (the final splits come last).
    selected_on = ("valid" if "valid" in evaluated else next(iter(evaluated))) if evaluated else (
        "test" if data.get("valid") is False else "valid")
    model = cfg.get("model")
    run = RunCurves(
        run_dir=run_dir, label=label, source="checkpoint" if state is not None else "tensorboard", task=cfg.get("task"),
        model=model.get("name") if isinstance(model, dict) else None, world_size=_ranks_from_log(run_dir),
        select_metric=select_metric, selected_on=selected_on,
    )
    valid = history_curves(state.get("history", [])) if state else {}
    last = max((s for curve in valid.values() for s, _ in curve), default=-1)
    prefix = f"{selected_on}/"
    for tag, curve in scalars.items():  # evaluations after the last checkpoint
        if tag.startswith(prefix):
            later = [(s, v) for s, v in curve if s > last]
            if later:
                valid[tag[len(prefix):]] = valid.get(tag[len(prefix):], []) + later
    run.valid = valid
    if state is not None:
        run.best_value, run.best_step, run.best_epoch = state.get("best"), state.get("best_step"), state.get("best_epoch")
        run.epochs_completed = state.get("epoch")
        run.steps = state.get("global_step")
        if state.get("elapsed_seconds"):
            run.wall_samples_per_second = state.get("train_samples", 0) / state["elapsed_seconds"]
    if select_metric is not None and valid.get(select_metric):
        best_step, best_value = max(valid[select_metric], key=lambda p: (p[1], -p[0]))  # the trainer: higher is better
        if run.best_value is None or best_value > run.best_value:
            run.best_value, run.best_step, run.best_epoch = best_value, best_step, None
    run.train_loss, run.loss_source = _loss(scalars, state.get("train_loss") if state else None, "checkpoint",
                                            state.get("epochs") if state else None)
    tb_last = max((s for curve in scalars.values() for s, _ in curve), default=None)
    if tb_last is not None and (run.steps is None or tb_last > run.steps):
        run.steps = tb_last
    return run


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """A distinct short name per run folder: its name, or as many trailing path parts as it takes."""
    parts = [Path(p).absolute().parts for p in paths]
    labels = []
    for mine in parts:
        n = 1
        while n < len(mine) and sum(other[-n:] == mine[-n:] for other in parts) > 1:
            n += 1
        labels.append("/".join(mine[-n:]))
    return labels


def load_runs(paths: Sequence[str | Path]) -> list[RunCurves]:
    """:func:`load_run` of each folder (the same folder twice: once), labelled by :func:`run_labels`."""
    unique = list(dict.fromkeys(Path(p).absolute() for p in paths))
    given = {Path(p).absolute(): Path(p) for p in reversed(paths)}
    return [load_run(given[p], label) for p, label in zip(unique, run_labels(unique))]


# ---------------------------------------------------------------------------------------------- the figure
def default_metrics(runs: Sequence[RunCurves]) -> list[str]:
    """The validation metrics that get a panel by default: every top-level one of any run (first-seen order)."""
    return list(dict.fromkeys(name for run in runs for name in run.valid if "/" not in name))


def panel_grid(panels: int) -> tuple[int, int]:
    """(rows, columns) of the figure for ``panels`` panels."""
    cols = min(MAX_COLUMNS, max(panels, 1))
    return math.ceil(panels / cols), cols


def _check_metrics(runs: Sequence[RunCurves], metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return default_metrics(runs)
    known = list(dict.fromkeys(name for run in runs for name in run.valid))
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(f"--metrics: no run has {', '.join(map(repr, unknown))}; the runs have: {', '.join(known) or 'none'}")
    return list(dict.fromkeys(metrics))


def build_figure(runs: Sequence[RunCurves], metrics: Sequence[str] | None = None) -> tuple[Figure, PlottedLines]:
    """The figure of :func:`plot_runs` and the data of each curve in it (panel -> run label -> (x, y)).

    Panels: ``training loss`` vs step, then one per validation metric vs step (``metrics``; default
    :func:`default_metrics`), one line per run in a colour of its own; a star marks each run's selected
    model on its selection metric's panel. Built on a bare :class:`matplotlib.figure.Figure` rendered by Agg:
    no pyplot state and no change of the process's matplotlib backend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = _check_metrics(runs, metrics)
    rows, cols = panel_grid(1 + len(names))
    fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = {run.label: f"C{i % 10}" for i, run in enumerate(runs)}
    styles = {run.label: ("-", "--", ":", "-.")[i // 10 % 4] for i, run in enumerate(runs)}
    plotted: PlottedLines = {}

    def draw(ax: Any, panel: str, run: RunCurves, curve: Series, **kw: Any) -> None:
        line, = ax.plot([s for s, _ in curve], [v for _, v in curve], color=colours[run.label], label=run.label, **kw)
        plotted.setdefault(panel, {})[run.label] = (list(line.get_xdata()), list(line.get_ydata()))

    ax = axes[0]
    for run in runs:
        if run.train_loss:
            by_epoch = run.loss_source == "epoch means"
            draw(ax, "training loss", run, run.train_loss, linestyle="--" if by_epoch else styles[run.label],
                 marker="o" if by_epoch or len(run.train_loss) == 1 else None, markersize=4, linewidth=1.2)
    ax.set_title("training loss" + (" (dashed: epoch means)" if any(r.loss_source == "epoch means" for r in runs) else ""))
    for ax, name in zip(axes[1:], names):
        having = [run for run in runs if run.valid.get(name)]
        splits = {run.selected_on for run in having}
        ax.set_title(f"{splits.pop()} {name}" if len(splits) == 1 and None not in splits else f"{name} (selection split)")
        for run in having:
            draw(ax, name, run, run.valid[name], linestyle=styles[run.label], marker="o", markersize=3, linewidth=1.2)
            if run.select_metric == name and run.best_step is not None and run.best_value is not None:
                ax.plot([run.best_step], [run.best_value], marker="*", markersize=12, linestyle="none",
                        color=colours[run.label], markeredgecolor="black", markeredgewidth=0.5)
    for ax in axes[: 1 + len(names)]:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[1 + len(names):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colours[r.label], linestyle=styles[r.label], label=r.label) for r in runs]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(runs), 4), frameon=False)
    return fig, plotted


def plot_runs(runs: Sequence[RunCurves], png_path: str | Path, metrics: Sequence[str] | None = None) -> PlottedLines:
    """Write the curves of ``runs`` (:func:`build_figure`) to ``png_path`` atomically; returns the plotted data.

    The PNG is ``columns * PANEL_INCHES[0] * DPI`` by ``rows * PANEL_INCHES[1] * DPI`` pixels
    (:func:`panel_grid` of 1 + the number of metric panels)."""
    if not runs:
        raise ValueError("no runs to plot")
    fig, plotted = build_figure(runs, metrics)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(png_path, buffer.getvalue())
    return plotted


# ---------------------------------------------------------------------------------------------- markdown
def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _best_cell(run: RunCurves) -> str:
    if run.select_metric is None:
        return "– (no selection: final weights)"
    if run.best_value is None:
        return "–"
    at = f" at step {run.best_step:,}" if run.best_step is not None else ""
    epoch = f" (epoch {run.best_epoch})" if run.best_epoch is not None else ""
    return f"{run.best_value:.4f}{at}{epoch}" + ("" if run.finished else ", so far")


def _stop_cell(run: RunCurves) -> str:
    if run.finished:
        return _cell(run.stop_reason)
    where = "last checkpoint" if run.source == "checkpoint" else "TensorBoard"
    return f"unfinished ({where}: step {run.steps:,})" if run.steps is not None else "unfinished"


def summary_markdown(runs: Sequence[RunCurves], png_name: str = PNG_NAME, title: str = "Training report") -> str:
    """A markdown summary of ``runs``: one table row per run, the image ``png_name`` (a path relative to the
    markdown file), and where each run's numbers came from.

    Columns: run, task, model, ranks, selected on (split and metric), best (the selection metric of the
    selected model as the trainer recorded it, at its step), test (the selected model's final test
    metrics), epochs completed, stop reason, wall samples/s, embedding parameters."""
    header = ["run", "task", "model", "ranks", "selected on", "best", "test", "epochs", "stop reason",
              "wall samples/s", "embedding params"]
    lines = [f"# {title}", "", f"{len(runs)} run(s).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for run in runs:
        selected = " ".join(x for x in (run.selected_on, run.select_metric) if x) or None
        test = ", ".join(f"{k} {v:.4f}" for k, v in run.test.items()) or None
        wall = f"{run.wall_samples_per_second:,.0f}" if run.wall_samples_per_second is not None else None
        cells = [run.label, run.task, run.model, run.world_size, selected, _best_cell(run), test,
                 run.epochs_completed, _stop_cell(run), wall, run.embedding_parameters]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", f"![training and validation curves]({png_name})", "",
              "A star marks each run's selected model on its selection metric's panel.", "", "Sources:", ""]
    for run in runs:
        kind = "metrics.json" if run.finished else (
            "unfinished: config.yaml + the last checkpoint's trainer_state.json" if run.source == "checkpoint"
            else "unfinished: config.yaml + TensorBoard events")
        n = len(run.train_loss)
        loss = {"none": "no training loss recorded", "epoch means": f"training loss: the mean of each of {n} epoch(s)"}.get(
            run.loss_source, f"training loss: {run.loss_source}, {n} logged step(s)")
        lines.append(f"- `{run.label}`: `{run.run_dir}` ({kind}; {loss})")
    return "\n".join(lines) + "\n"


def write_report(runs: Sequence[RunCurves], out: str | Path, metrics: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``out/curves.png`` (:func:`plot_runs`) and ``out/report.md`` (:func:`summary_markdown`), each
    atomically; returns (markdown path, PNG path)."""
    out = Path(out)
    png, md = out / PNG_NAME, out / MARKDOWN_NAME
    plot_runs(runs, png, metrics)
    atomic_write_text(md, summary_markdown(runs, PNG_NAME))
    return md, png


# ---------------------------------------------------------------------------------------------- the command
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Training / validation curves of one or several `recsys-emb train` run folders (finished or "
                     "still running) as a PNG, plus a markdown table of their results (see docs/report.md).")
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run folder(s) written by `recsys-emb train`")
    p.add_argument("--run-dir", nargs="+", type=Path, action="extend", default=[], metavar="RUN",
                   help="more run folder(s), added after the positional ones")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"folder for {MARKDOWN_NAME} and {PNG_NAME} (default: RUN/report for one run, ./report for several)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="validation metrics to plot, e.g. auc logloss or recall@20 test/recall@20 "
                        "(default: every top-level metric of any run)")


def default_out(paths: Sequence[Path]) -> Path:
    """``RUN/report`` for one run folder, ``./report`` for several."""
    return Path(paths[0]) / "report" if len(paths) == 1 else Path("report")


def run_report(args: argparse.Namespace) -> int:
    paths = [*args.runs, *args.run_dir]
    if not paths:
        raise ValueError("no run folder given: recsys-emb report RUN [RUN ...] (or --run-dir RUN [RUN ...])")
    runs = load_runs(paths)
    out = args.out if args.out is not None else default_out([run.run_dir for run in runs])
    md, png = write_report(runs, out, args.metrics)
    log(f"[report] {len(runs)} run(s) -> {md}, {png}")  # stderr (hidden by --quiet); stdout: the markdown path
    print(md)
    return 0
