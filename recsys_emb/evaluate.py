"""Score a finished run's exported model (``RUN_DIR/model.pt``) on any data set, unsharded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.console import known_warnings
from recsys_emb.config.io import load_config
from recsys_emb.data.cache import default_cache_dir
from recsys_emb.data.resolve import Split, prepare_cached, check_compatible, is_prepared
from recsys_emb.train.checkpoint import load_model_state
from recsys_emb.train.env import DistEnv, resolve_device


@known_warnings("forward")
def evaluate_run(run_dir: str | Path, data: str | Path, batch_size: int = 16384) -> dict[str, Any]:
    """Return ``{"auc", "logloss", "rows"}`` of the run's best model on ``data``.

    Args:
        run_dir: a folder written by ``recsys-emb train`` (config.yaml, data/, model.pt).
        data: raw Criteo TSV(.gz), encoded with the run's training vocabulary, or a prepared folder.
        batch_size: evaluation batch size.
    """
    from recsys_emb.train.tasks.ctr import build_ctr_model, evaluate

    run_dir, data = Path(run_dir), Path(data)
    for needed in ("config.yaml", "model.pt", "data/meta.json"):
        if not (run_dir / needed).exists():
            raise FileNotFoundError(f"{run_dir / needed} is missing: is {run_dir} a finished `recsys-emb train` run?")
    if not data.exists():
        raise FileNotFoundError(f"--data: {data} does not exist")
    cfg = load_config(ExperimentConfig, run_dir / "config.yaml")
    vocab_root = run_dir / "data"
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    root = data if is_prepared(data) else prepare_cached([data], cfg.data, cache, "eval", vocab_root.resolve())
    check_compatible({"train": Split(vocab_root), "eval": Split(root)})
    device = resolve_device(cfg.train.device)
    train_meta = _MetaOnly(vocab_root)
    model = build_ctr_model(cfg, train_meta, device)  # type: ignore[arg-type]
    model.load_state_dict(load_model_state(run_dir / "model.pt"))
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device, backend="none", owns_group=False)
    return evaluate(model, Split(root), batch_size, env)


@known_warnings("forward", "sharded_tensor")
def evaluate_checkpoint(run_dir: str | Path, data: str | Path | None = None, split: str = "valid",
                        batch_size: int | None = None) -> dict[str, Any]:
    """Sharded evaluation of ``RUN_DIR/checkpoint`` on the CURRENT world (torchrun ranks or one process).

    The checkpoint may have been written by any number of ranks: DCP reshards it onto this world's
    plan (``run_dir/config.yaml``'s ``sharding`` section). Metrics are reduced over all ranks.

    Args:
        run_dir: a ``recsys-emb train`` run folder with a ``checkpoint/``.
        data: raw or prepared data to score; None = the run's own ``split``.
        split: ``valid``, ``test`` or ``train`` when ``data`` is None.
        batch_size: global evaluation batch size (default: the run's ``train.eval_batch_size``).
    """
    from recsys_emb.data.resolve import resolve_data
    from recsys_emb.train.checkpoint import load_checkpoint
    from recsys_emb.train.env import init_distributed, shutdown
    from recsys_emb.train.tasks.ctr import build_ctr_model, evaluate
    from recsys_emb.train.optim import build_optimizer, materialize_state
    from recsys_emb.train.parallel import shard_model

    run_dir = Path(run_dir)
    for needed in ("config.yaml", "checkpoint/trainer_state.json", "data/meta.json"):
        if not (run_dir / needed).exists():
            raise FileNotFoundError(f"{run_dir / needed} is missing: is {run_dir} a `recsys-emb train` run with a checkpoint?")
    cfg = load_config(ExperimentConfig, run_dir / "config.yaml")
    vocab_root = run_dir / "data"
    if data is not None:
        data = Path(data)
        if not data.exists():
            raise FileNotFoundError(f"--data: {data} does not exist")
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        target = Split(data) if is_prepared(data) else None
    env = init_distributed(cfg.train.device)
    try:
        if data is None:
            splits = resolve_data(cfg.data)
            if split not in splits:
                raise ValueError(f"the run has no '{split}' split (it has: {', '.join(sorted(splits))})")
            target = splits[split]
        elif target is None:  # raw data: rank 0 prepares into the cache, then everyone reads it
            if env.rank == 0:
                prepare_cached([data], cfg.data, cache, "eval", vocab_root.resolve())
            if env.world_size > 1:
                import torch.distributed as dist

                dist.barrier()
            target = Split(prepare_cached([data], cfg.data, cache, "eval", vocab_root.resolve()))
        check_compatible({"train": Split(vocab_root), "eval": target})
        model = build_ctr_model(cfg, _MetaOnly(vocab_root), "meta")  # type: ignore[arg-type]
        dmp, unfused = shard_model(model, env, cfg.train, cfg.sharding)
        optimizer = build_optimizer(dmp, unfused, cfg.train)
        materialize_state(optimizer)
        load_checkpoint(run_dir / "checkpoint", dmp, optimizer)
        return evaluate(dmp, target, batch_size or cfg.train.eval_batch_size, env)
    finally:
        shutdown(env)


class _MetaOnly:
    """The part of PreparedCTRData that model building needs, read from a vocabulary folder."""

    def __init__(self, root: Path) -> None:
        import json

        from recsys_emb.data.dataset import sparse_tables

        meta = json.loads((root / "meta.json").read_text())
        self.sparse_features = list(meta["sparse_features"])
        self.dense_features = list(meta["dense_features"])
        self.vocab_sizes = [int(v) for v in meta["vocab_sizes"]]
        self.tables = sparse_tables(meta)
