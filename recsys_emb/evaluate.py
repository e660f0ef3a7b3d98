"""Score a finished run's exported model (``RUN_DIR/model.pt``) on any data set, unsharded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_emb.config.experiment import ExperimentConfig
from recsys_emb.config.io import load_config
from recsys_emb.data.resolve import Split, prepare_cached, check_compatible, default_cache_dir, is_prepared
from recsys_emb.train.checkpoint import load_model_state
from recsys_emb.train.env import DistEnv, resolve_device


def evaluate_run(run_dir: str | Path, data: str | Path, batch_size: int = 16384) -> dict[str, Any]:
    """Return ``{"auc", "logloss", "rows"}`` of the run's best model on ``data``.

    Args:
        run_dir: a folder written by ``recsys-emb train`` (config.yaml, data/, model.pt).
        data: raw Criteo TSV(.gz), encoded with the run's training vocabulary, or a prepared folder.
        batch_size: evaluation batch size.
    """
    from recsys_emb.train.loop import build_ctr_model, evaluate

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


class _MetaOnly:
    """The part of PreparedCTRData that model building needs, read from a vocabulary folder."""

    def __init__(self, root: Path) -> None:
        import json

        meta = json.loads((root / "meta.json").read_text())
        self.sparse_features = list(meta["sparse_features"])
        self.dense_features = list(meta["dense_features"])
        self.vocab_sizes = [int(v) for v in meta["vocab_sizes"]]
