"""The one training loop of recsys_emb: ``fit(task, cfg, run_dir)`` trains every model family.

A :class:`Task` says what is specific to a family (its data, its model, its loss through the model's
``forward(batch) -> (loss, extras)``, how a split is scored and which metric selects the model);
:func:`fit` owns everything else, identically for all of them:

- the model is always wrapped in TorchRec's ``DistributedModelParallel`` (1 or N processes, gloo on
  CPU, NCCL on GPU) through :func:`recsys_emb.train.parallel.shard_model` with the experiment's
  ``sharding:`` section; tables train with FBGEMM's fused optimizers where the kernel allows it;
- steps and epochs (``train.epochs``, ``train.max_steps``, ``train.max_steps_per_epoch``,
  ``train.max_minutes``), evaluation at every epoch end and every ``train.eval_every_steps``;
- early stopping on the task's selection metric (higher is better) after
  ``train.early_stopping_patience`` evaluations without a gain;
- at every new best: the sharded weights in ``RUN_DIR/best`` (each rank writes its own shards) and a
  consolidated ``RUN_DIR/model.pt``; at the end the best weights are restored and the task's final
  splits (test, ...) scored with them;
- crash-safe distributed checkpoints (``RUN_DIR/checkpoint``, :mod:`recsys_emb.train.checkpoint`)
  every ``train.checkpoint_every_steps`` steps and at every epoch end; ``resume=True`` continues
  mid-epoch and ends with exactly the weights and metrics of an uninterrupted run (the batches of an
  epoch depend only on ``(seed, epoch)``, dropout on the checkpointed RNG); Ctrl-C / SIGTERM stop
  after the current step (every rank the same step), with a checkpoint and one line saying how to
  resume; resuming a finished run changes no file;
- TensorBoard scalars (``train.tensorboard``, rank 0), progress bars (``train.progress``), and ONE
  ``metrics.json`` schema (:func:`fit`'s return value).

Files of a run: ``config.yaml`` (+ whatever the task writes, e.g. the CTR vocabulary), ``plan.txt``,
``checkpoint/``, ``best/``, ``model.pt``, ``metrics.json``, ``train.log`` (every rank's status lines),
``tensorboard/``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from recsys_emb.config.experiment import ShardingConfig, TrainConfig
from recsys_emb.console import known_warnings, tqdm
from recsys_emb.train.checkpoint import (
    STATE_FILE, export_model, load_checkpoint, load_model_shards, resolve_checkpoint, save_checkpoint, save_model_shards,
)
from recsys_emb.train.env import DistEnv, init_distributed, shutdown
from recsys_emb.utils import atomic_save_json, atomic_write_text, log, log_to_file

T = TypeVar("T")


class Task:
    """What :func:`fit` needs to know about one model family (subclass per family; see ``recsys_emb/train/tasks``).

    Attributes:
        name: the family (``ctr``, ``sequence``, ``graph``, ``two_tower``); written into ``metrics.json``.
        select_metric: the metric of :meth:`evaluate` that selects the model (higher is better); None =
            no selection: the last weights are kept and written to ``model.pt`` once at the end (no
            ``best/``, no early stopping; the evaluations are recorded in the history).
        select_split: the split it is read on (``valid``; ``test`` only where no validation split exists).
        final_splits: splits scored with the restored best model at the end.
    """

    name = "task"
    select_metric: str | None = "auc"
    select_split = "valid"
    final_splits: tuple[str, ...] = ("test",)

    def prepare(self, env: DistEnv) -> None:
        """Load (or prepare, then load) the data; called on every rank before anything else."""

    def write_run_files(self, run_dir: Path) -> None:
        """Rank 0 of a new run: ``config.yaml`` and whatever else evaluation needs later."""

    def build_model(self) -> nn.Module:
        """The UNSHARDED training module, tables on ``meta``: ``forward(batch) -> (loss, extras)``."""
        raise NotImplementedError

    def initial_weights(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Full initial tables by state-dict key when the family's paper init is not TorchRec's uniform
        one (copied into every rank's shards); None = the seeded uniform init of ``shard_model``."""
        return None

    def schedule(self, tc: TrainConfig, env: DistEnv) -> TrainConfig:
        """The training settings of this run, after :meth:`prepare`: ``tc`` with the batch size and epochs sized
        to the data where the family supports ``train.min_steps_per_epoch`` / ``train.min_steps``
        (:func:`recsys_emb.train.schedule.sized_schedule`); a task that sizes must batch with the returned batch size."""
        if tc.min_steps_per_epoch is not None or tc.min_steps is not None:
            raise ValueError(f"train.min_steps_per_epoch / train.min_steps: the {self.name} task does not size its schedule "
                             "from the data (only ctr does); remove them and set train.batch_size / train.epochs")
        return tc

    def num_batches(self, epoch: int, env: DistEnv) -> int:
        """Training steps of ``epoch`` (the same on every rank)."""
        raise NotImplementedError

    def batches(self, epoch: int, env: DistEnv, skip: int) -> Iterator[Any]:
        """This rank's part of each global batch of ``epoch`` (order from ``(seed, epoch)``), after ``skip``."""
        raise NotImplementedError

    def batch_samples(self, batch: Any) -> int:
        """Examples in this rank's part of a batch (throughput)."""
        return int(batch.labels.numel())

    def evaluate(self, model: nn.Module, split: str, env: DistEnv) -> dict[str, Any]:
        """Metrics of ``model`` (the DMP training module) on ``split``, the same on every rank (collective)."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the data (``metrics.json`` ``data``)."""
        return {}

    def finish(self, model: nn.Module, run_dir: Path, env: DistEnv) -> dict[str, Any]:
        """After the best weights are restored: extra files (collective) and extra ``metrics.json`` keys."""
        return {}


def _initial_state() -> dict[str, Any]:
    return {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "best_step": None, "best_epoch": None,
        "best_metrics": None, "bad_evals": 0, "history": [], "train_loss": [], "epochs": [], "stop_reason": None,
        "done": False, "planned_epochs": None, "last_eval_step": None, "train_seconds": 0.0, "train_samples": 0, "elapsed_seconds": 0.0,
        "eval_seconds": 0.0, "checkpoint_seconds": 0.0,  # wall time outside the steps (validation, saving)
        # the current epoch's record so far (checkpointed: a resumed epoch's record covers all its steps)
        "epoch_loss_sum": 0.0, "epoch_steps": 0, "epoch_seconds": 0.0, "epoch_cpu_seconds": 0.0,
    }


def fit(task: Task, cfg: Any, run_dir: str | Path, *, resume: bool = False, _interrupt_at_step: int | None = None) -> dict[str, Any]:
    """Train ``task`` with the experiment ``cfg`` into ``run_dir``; returns (and writes) ``metrics.json``.

    Args:
        task: the family's task, built on ``cfg``.
        cfg: the experiment; :func:`fit` reads ``cfg.name``, ``cfg.train`` (:class:`TrainConfig`) and
            ``cfg.sharding`` (:class:`ShardingConfig`).
        run_dir: output folder (new or empty unless ``resume``).
        resume: continue from ``run_dir/checkpoint``; the final metrics equal an uninterrupted run's.
        _interrupt_at_step: tests only: stop right after the checkpoint of this global step, as if killed.
    """
    run_dir = Path(run_dir)
    tc: TrainConfig = cfg.train
    checkpoint_dir = run_dir / "checkpoint"
    if resume and resolve_checkpoint(checkpoint_dir) is None:
        raise FileNotFoundError(f"--resume: {checkpoint_dir} holds no checkpoint to resume from")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run dir {run_dir} is not empty: pass --resume to continue it, or choose another --run-dir")
    if resume and (finished := _finished_run(run_dir, tc)) is not None:
        return finished
    threads = torch.get_num_threads()
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    env = init_distributed(tc.device)
    try:
        return _Fit(task, cfg, run_dir, env, resume, _interrupt_at_step).run()
    finally:
        log_to_file(None)
        shutdown(env)
        torch.set_num_threads(threads)


def _finished_run(run_dir: Path, tc: TrainConfig) -> dict[str, Any] | None:
    """``metrics.json`` of a run that ``--resume`` has nothing to add to (None: resume it).

    A run is finished when it wrote ``metrics.json`` and its last checkpoint ran all ``train.epochs`` or
    stopped early; resuming it changes no file. Runs stopped by ``max_steps`` / ``max_minutes`` take the
    normal path, which extends them when the (new) limit allows."""
    folder = resolve_checkpoint(run_dir / "checkpoint")
    metrics = run_dir / "metrics.json"
    if folder is None or not metrics.is_file():
        return None
    state = json.loads((folder / STATE_FILE).read_text())
    reason = state.get("stop_reason")
    epochs = max(tc.epochs, state.get("planned_epochs") or 0)  # a sized schedule (train.min_steps) may plan more
    if reason == "early_stopping" or (reason is None and state.get("epoch", 0) >= epochs):
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            why = "it stopped early" if reason else f"it ran all {epochs} epoch(s)"
            log(f"[train] {run_dir} is finished ({why}); nothing to resume, no file changed. To continue it, raise "
                "train.epochs (e.g. --set train.epochs=N) or max_steps / max_minutes", important=True)
        return json.loads(metrics.read_text())
    return None


class _Fit:
    """One call of :func:`fit` (state shared by the loop's steps)."""

    def __init__(self, task: Task, cfg: Any, run_dir: Path, env: DistEnv, resume: bool, interrupt_at: int | None) -> None:
        self.task, self.cfg, self.tc, self.run_dir, self.env = task, cfg, cfg.train, run_dir, env
        self.resume, self.interrupt_at = resume, interrupt_at
        self.tag = f"[{task.name}]"
        self.writer = None

    # ------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from recsys_emb.distributed.planning import describe_plan, per_rank_memory, table_dims
        from recsys_emb.train.optim import build_optimizer, dense_parameters
        from recsys_emb.train.parallel import shard_model

        task, tc, env = self.task, self.tc, self.env
        task.prepare(env)
        def run_files() -> None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                task.write_run_files(self.run_dir)

        rank0_then_all(env, run_files)
        log_to_file(self.run_dir / "train.log", f"[rank {env.rank}]")  # the console lines, every rank's
        self.tc = tc = task.schedule(tc, env)
        if env.is_main and (tc.batch_size, tc.epochs) != (self.cfg.train.batch_size, self.cfg.train.epochs):
            log(f"{self.tag} small data: batch {tc.batch_size} (configured {self.cfg.train.batch_size}), up to {tc.epochs} "
                f"epoch(s) (configured {self.cfg.train.epochs}) from train.min_steps_per_epoch={tc.min_steps_per_epoch}, "
                f"train.min_steps={tc.min_steps}")
        torch.manual_seed(tc.seed)
        model = task.build_model()
        self.embedding_parameters = embedding_parameter_count(model)
        dims = table_dims(model)
        initial = task.initial_weights(model)
        sharding: ShardingConfig = getattr(self.cfg, "sharding", None) or ShardingConfig()
        self.model, unfused = shard_model(model, env, tc, sharding, initial=initial)
        self.optimizer = build_optimizer(self.model, unfused, tc)
        self.clip_params = dense_parameters(self.model, unfused)
        if env.is_main:
            text, warnings = describe_plan(dims, self.model.plan, env.world_size, tc.embedding_optimizer.name, sharding.memory_budget_gb)
            atomic_write_text(self.run_dir / "plan.txt", text + "\n")
            memory = per_rank_memory(dims, self.model.plan, env.world_size, tc.embedding_optimizer.name)
            peak = max(m["weights"] + m["optimizer"] for m in memory) / 2**20
            log(f"{self.tag} sharding plan: {len(dims)} table(s) on {env.world_size} rank(s) ({env.device.type}), "
                f"at most {peak:.1f} MiB of tables + optimizer state per rank; details in {self.run_dir / 'plan.txt'}")
            for warning in warnings:
                log(f"{self.tag} WARNING: {warning}", important=True)
            log(f"{self.tag} data: {json.dumps(task.summary())}")
        if tc.tensorboard and env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    # ------------------------------------------------------------------------------------ evaluation
    def _validate(self) -> None:
        """Score the selection split, keep the best weights, and request a stop when patience is exhausted."""
        task, tc, state = self.task, self.tc, self.state
        t0 = time.perf_counter()
        metrics = task.evaluate(self.model, task.select_split, self.env)
        state["eval_seconds"] += time.perf_counter() - t0
        step = state["global_step"]
        state["history"].append({"epoch": state["epoch"] + 1, "step": step, **metrics})
        state["last_eval_step"] = step
        for key, value in metrics.items():
            if isinstance(value, float):
                self._scalar(f"{task.select_split}/{key}", value, step)
        value = None if task.select_metric is None else float(metrics[task.select_metric])
        improved = value is None or state["best"] is None or value > state["best"]
        if improved:
            state.update(best=value, best_step=step, best_epoch=state["epoch"] + 1, best_metrics=metrics, bad_evals=0)
            if value is not None:  # without selection the final weights are kept: saved once, at the end
                save_model_shards(self.run_dir / "best", self.model)  # restored at the end without full copies
                export_model(self.run_dir / "model.pt", self.model)  # consolidated single file for inference
        else:
            state["bad_evals"] += 1
            if 0 < tc.early_stopping_patience <= state["bad_evals"]:
                state.update(stop_reason="early_stopping")
        if self.env.is_main:
            patience = f" {state['bad_evals']}/{tc.early_stopping_patience}" if tc.early_stopping_patience else ""
            mark = " (best)" if improved else f" (no gain{patience})"
            shown = "evaluated (no selection metric: keeping the latest weights)" if value is None else (
                f"{task.select_metric} {value:.5f}{mark}")
            log(f"{self.tag} step {step}: {task.select_split} {shown}")

    # ------------------------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        self.signal: int | None = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            with known_warnings("forward"):
                return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Ctrl-C / SIGTERM: finish the current step, checkpoint, stop (a second Ctrl-C stops at once)."""
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def _stop_requested(self) -> bool:
        """Whether any rank got a stop signal (every rank must agree to stop at the same step)."""
        flag = self.signal is not None
        if self.env.world_size > 1:
            t = torch.tensor([int(flag)], device=self.env.device if self.env.backend == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def _run(self) -> dict[str, Any]:
        self._setup()
        tc, env = self.tc, self.env
        self.state = state = _initial_state()
        if self.resume:
            from recsys_emb.train.optim import materialize_state

            materialize_state(self.optimizer)
            state = self.state = {**_initial_state(), **load_checkpoint(self.run_dir / "checkpoint", self.model, self.optimizer)}
            # A finished run may be extended (more epochs / a larger max_steps or max_minutes); early stopping stays final.
            if state["stop_reason"] == "max_steps" and (tc.max_steps is None or state["global_step"] < tc.max_steps):
                state["stop_reason"] = None
            if state["stop_reason"] == "max_minutes" and (
                    tc.max_minutes is None or self._fits_budget(time.perf_counter() - state["elapsed_seconds"])):
                state["stop_reason"] = None  # the (new) budget, counted over the whole run, fits another epoch
            state["done"] = state["stop_reason"] is not None or state["epoch"] >= tc.epochs
            if env.is_main:
                log(f"{self.tag} resumed from {self.run_dir / 'checkpoint'} at step {state['global_step']} "
                    f"(epoch {state['epoch'] + 1}, batch {state['step_in_epoch']})")
        state["planned_epochs"] = tc.epochs
        self.model.train()
        started = self.started = time.perf_counter() - state["elapsed_seconds"]
        while not state["done"]:
            result = self._epoch(started)
            if result is not None:
                return result
        if self.writer is not None:
            self.writer.flush()
        return self._finish()

    def _epoch(self, started: float) -> dict[str, Any] | None:
        """Train (the rest of) one epoch, validate, checkpoint; a dict when interrupted (tests)."""
        task, tc, env, state = self.task, self.tc, self.env, self.state
        epoch = state["epoch"]
        if state["step_in_epoch"] == 0:
            torch.manual_seed(tc.seed * 1_000_003 + epoch)  # dropout masks depend on (seed, epoch) only
            state.update(epoch_loss_sum=0.0, epoch_steps=0, epoch_seconds=0.0, epoch_cpu_seconds=0.0)
        steps = task.num_batches(epoch, env)
        if tc.max_steps_per_epoch is not None:
            steps = min(steps, tc.max_steps_per_epoch)
        bar = tqdm(total=steps, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not (tc.progress and env.is_main), file=sys.stderr, leave=False)
        tick = window_start = time.perf_counter()
        cpu_tick = time.process_time()
        window_samples = 0
        for batch in task.batches(epoch, env, state["step_in_epoch"]):
            if state["step_in_epoch"] >= steps or state["stop_reason"] is not None:
                break
            batch = batch.to(env.device)
            loss, _ = self.model(batch)
            self.optimizer.zero_grad()
            loss.backward()
            if tc.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.clip_params, tc.grad_clip_norm)
            self.optimizer.step()
            now, cpu_now = time.perf_counter(), time.process_time()
            samples = task.batch_samples(batch) * env.world_size
            state["train_seconds"] += now - tick
            state["epoch_seconds"] += now - tick
            # CPU seconds of this process (all threads): unlike wall time, largely independent of other jobs
            state["epoch_cpu_seconds"] += cpu_now - cpu_tick
            cpu_tick = cpu_now
            state["train_samples"] += samples
            window_samples += samples
            tick = now
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            step = state["global_step"]
            state["epoch_loss_sum"] += float(loss.detach())
            state["epoch_steps"] += 1
            bar.update(1)
            if step % tc.log_every_steps == 0:
                rate = window_samples / max(now - window_start, 1e-9)
                window_samples, window_start = 0, now
                mean_loss = loss.detach().clone()
                if env.world_size > 1:  # the global batch's loss: mean of the ranks' equal-sized parts
                    dist.all_reduce(mean_loss)
                    mean_loss /= env.world_size
                state["train_loss"].append([step, float(mean_loss)])
                bar.set_postfix(loss=f"{float(mean_loss):.4f}", sps=f"{rate:,.0f}")
                self._scalar("train/loss", float(mean_loss), step)
                self._scalar("train/samples_per_second", rate, step)
            if tc.eval_every_steps and step % tc.eval_every_steps == 0:
                bar.clear()
                self._validate()
                tick = window_start = time.perf_counter()
                cpu_tick = time.process_time()
                window_samples = 0
            if tc.max_steps is not None and step >= tc.max_steps and state["stop_reason"] is None:
                state["stop_reason"] = "max_steps"
            saved = bool(tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0)
            if saved:
                self._checkpoint(started)
                if self.interrupt_at is not None and step >= self.interrupt_at:
                    bar.close()
                    return {"interrupted_at_step": step}
                tick, cpu_tick = time.perf_counter(), time.process_time()
            if self._stop_requested():
                if not saved:
                    self._checkpoint(started)
                bar.close()
                name = signal.Signals(self.signal).name if self.signal is not None else "a signal on another rank"
                if env.is_main:
                    log(f"{self.tag} interrupted ({name}) at step {step}; checkpoint saved. Resume with: "
                        f"recsys-emb train --run-dir {self.run_dir} --resume", important=True)
                return {"interrupted_at_step": step, "signal": name}
        bar.close()
        record = {
            "epoch": epoch + 1, "steps": state["epoch_steps"],
            "mean_loss": state["epoch_loss_sum"] / max(state["epoch_steps"], 1),
            "train_seconds": round(state["epoch_seconds"], 3), "train_cpu_seconds": round(state["epoch_cpu_seconds"], 3),
        }
        if state["epochs"] and state["epochs"][-1]["epoch"] == epoch + 1:
            state["epochs"][-1] = record  # an epoch stopped by max_steps and continued after an extension
        else:
            state["epochs"].append(record)
        if state["last_eval_step"] != state["global_step"]:
            self._validate()
        if state["step_in_epoch"] >= steps:  # the epoch is complete, whatever stopped the run at its end
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if state["stop_reason"] is None and tc.max_minutes is not None and state["epoch"] < tc.epochs and not self._fits_budget(started):
                state["stop_reason"] = "max_minutes"
                if env.is_main:
                    log(f"{self.tag} stopping after epoch {state['epoch']}: another one would pass train.max_minutes={tc.max_minutes}")
        state["done"] = state["stop_reason"] is not None or state["epoch"] >= tc.epochs
        self._checkpoint(started)
        return None

    def _fits_budget(self, started: float) -> bool:
        """Whether one more epoch (as long as the longest so far) ends within ``train.max_minutes``.
        Decided on rank 0's clock and broadcast, so all ranks stop after the same epoch."""
        longest = max(e["train_seconds"] for e in self.state["epochs"])
        fits = time.perf_counter() - started + longest <= self.tc.max_minutes * 60
        if self.env.world_size > 1:
            flag = torch.tensor([int(fits)], device=self.env.device)
            dist.broadcast(flag, src=0)
            fits = bool(flag.item())
        return fits

    def _checkpoint(self, started: float) -> None:
        t0 = time.perf_counter()
        self.state["elapsed_seconds"] = t0 - started
        save_checkpoint(self.run_dir / "checkpoint", self.model, self.optimizer, self.state)
        self.state["checkpoint_seconds"] += time.perf_counter() - t0  # this save's own time counts from the next one

    # ------------------------------------------------------------------------------------ the end
    def _finish(self) -> dict[str, Any]:
        task, state, env = self.task, self.state, self.env
        if task.select_metric is None:
            export_model(self.run_dir / "model.pt", self.model)  # the final weights (no selection)
        else:
            load_model_shards(self.run_dir / "best", self.model)  # each rank reads only its shards
        self.model.eval()
        results: dict[str, Any] = {
            "name": self.cfg.name, "task": task.name, "model": self.cfg.model.name, "world_size": env.world_size,
            "select_metric": task.select_metric, "selected_on": task.select_split,
            task.select_split: state["best_metrics"],
        }
        wall = time.perf_counter() - self.started  # the final evaluations are not part of the training loop
        for split in task.final_splits:
            if split not in results:
                results[split] = task.evaluate(self.model, split, env)
        results.update(task.finish(self.model, self.run_dir, env))
        results.update(
            schedule={"batch_size": self.tc.batch_size, "epochs": self.tc.epochs,
                      "sized": (self.tc.batch_size, self.tc.epochs) != (self.cfg.train.batch_size, self.cfg.train.epochs)},
            best_step=state["best_step"], best_epoch=state["best_epoch"], steps=state["global_step"],
            epochs_completed=state["epoch"], stop_reason=state["stop_reason"] or "epochs",
            samples_per_second=state["train_samples"] / max(state["train_seconds"], 1e-9),  # step time only
            # wall clock of the training loop (steps, validation, checkpoints; resumed runs: all sessions)
            wall_seconds=wall, train_seconds=state["train_seconds"], eval_seconds=state["eval_seconds"],
            checkpoint_seconds=state["checkpoint_seconds"], wall_samples_per_second=state["train_samples"] / max(wall, 1e-9),
            embedding_parameters=self.embedding_parameters, history=state["history"], train_loss=state["train_loss"],
            epochs=state["epochs"], data=task.summary(), torch_threads=torch.get_num_threads(),
        )
        if env.is_main:
            atomic_save_json(self.run_dir / "metrics.json", results)
            if self.writer is not None:
                for split in task.final_splits:
                    for key, value in results.get(split, {}).items():
                        if isinstance(value, float):
                            self._scalar(f"{split}/{key}", value, state["global_step"])
                self.writer.close()
        return results


def embedding_parameter_count(model: nn.Module) -> int:
    """Number of embedding-table parameters (rows x dim summed over every stock table)."""
    from torchrec import EmbeddingBagCollection, EmbeddingCollection

    total = 0
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            total += sum(c.num_embeddings * c.embedding_dim for c in m.embedding_bag_configs())
        elif isinstance(m, EmbeddingCollection):
            total += sum(c.num_embeddings * c.embedding_dim for c in m.embedding_configs())
    return total


def rank0_then_all(env: DistEnv, fn: Callable[[], Any]) -> None:
    """Run ``fn()`` on rank 0 while the others wait; rank 0's exception is raised on EVERY rank (so a bad
    data path ends all processes with the same message instead of leaving the others in a barrier)."""
    error: list[Any] = [None]
    if env.is_main:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error[0] = err
    if env.world_size > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        if env.is_main:
            raise error[0]
        raise RuntimeError(f"rank 0 failed: {type(error[0]).__name__}: {error[0]}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) and without gradients inside the block; its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def main_first(env: DistEnv, load: Callable[[], T]) -> T:
    """``load()`` on rank 0, then on the other ranks: rank 0 prepares a data cache, the others find it ready."""
    out: list[T] = []
    rank0_then_all(env, lambda: out.append(load()))
    return out[0] if env.is_main else load()


def split_rows(n: int, env: DistEnv) -> slice:
    """This rank's equal part of ``n`` rows of a global batch (the at most ``world_size - 1`` leftover
    rows are left out: TorchRec's sharded backward needs equal per-rank batch sizes)."""
    part = n // env.world_size
    return slice(env.rank * part, (env.rank + 1) * part)

