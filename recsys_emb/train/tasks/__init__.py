"""The model families :func:`recsys_emb.train.trainer.fit` trains, and the one experiment schema.

An experiment YAML names its family with ``task:`` (default ``ctr``); ``train:`` (:class:`TrainConfig`)
and ``sharding:`` (:class:`ShardingConfig`) mean the same for every family, ``data:`` and ``model:``
are the family's own:

=========  ==========================================================  =====================================
task       experiment class                                            models
=========  ==========================================================  =====================================
ctr        :class:`recsys_emb.config.experiment.ExperimentConfig`      dlrm, dcnv2, deepfm, lr (+ embedding:)
sequence   :class:`recsys_emb.config.sequence.SequenceExperimentConfig` din, two_stage (coupled / DARE / SIDs)
graph      :class:`recsys_emb.config.graph.GraphExperimentConfig`      lightgcn, ngcf, mf
two_tower  :class:`recsys_emb.config.two_tower.TwoTowerExperimentConfig` two-tower / MF, in-batch softmax
=========  ==========================================================  =====================================

``recsys-emb train --config X`` trains any of them (:func:`train`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from recsys_emb.config.io import ConfigError, apply_overrides, load_config, load_yaml

# task -> (config module, config class, task module, task class); imported only when used
TASKS: dict[str, tuple[str, str, str, str]] = {
    "ctr": ("recsys_emb.config.experiment", "ExperimentConfig", "recsys_emb.train.tasks.ctr", "CTRTask"),
    "sequence": ("recsys_emb.config.sequence", "SequenceExperimentConfig", "recsys_emb.train.tasks.sequence", "SequenceTask"),
    "graph": ("recsys_emb.config.graph", "GraphExperimentConfig", "recsys_emb.train.tasks.graph", "GraphTask"),
    "two_tower": ("recsys_emb.config.two_tower", "TwoTowerExperimentConfig", "recsys_emb.train.tasks.two_tower", "TwoTowerTask"),
}


def _entry(task: Any, where: str) -> tuple[str, str, str, str]:
    if task not in TASKS:
        raise ConfigError(f"{where}task: '{task}' is not one of {list(TASKS)}")
    return TASKS[task]


def config_class(task: str) -> type:
    """The experiment dataclass of a family."""
    module, cls, _, _ = _entry(task, "")
    return getattr(importlib.import_module(module), cls)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load an experiment YAML (+ dotted overrides) into the dataclass its ``task:`` names."""
    data = apply_overrides(load_yaml(path), list(overrides or []))
    _entry(data.get("task", "ctr"), f"{path}: ")
    return load_config(config_class(data.get("task", "ctr")), path, overrides)


def make_task(cfg: Any) -> Any:
    """The :class:`recsys_emb.train.trainer.Task` for an experiment."""
    _, _, module, cls = _entry(cfg.task, "")
    return getattr(importlib.import_module(module), cls)(cfg)


def train(cfg: Any, run_dir: str | Path, *, resume: bool = False, _interrupt_at_step: int | None = None) -> dict[str, Any]:
    """Train any experiment through the one trainer; returns (and writes) ``metrics.json``."""
    from recsys_emb.train.trainer import fit

    return fit(make_task(cfg), cfg, run_dir, resume=resume, _interrupt_at_step=_interrupt_at_step)
