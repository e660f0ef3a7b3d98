"""Checkpoints: distributed (torch.distributed.checkpoint) for resuming, consolidated for inference.

A training checkpoint is a DCP folder (every rank writes its shards) plus ``trainer_state.json``.
It is written into a temporary sibling folder and swapped into place by rank 0 after all ranks
finished, so a crash never leaves a half-written ``checkpoint/``. The consolidated export is one
``torch.save`` file of plain tensors, loadable with ``torch.load(weights_only=True)`` into the
unsharded model.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys_emb.utils import atomic_write_bytes, atomic_write_text

STATE_FILE = "trainer_state.json"


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _rng_tensors() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rank 0: replace ``path`` by the finished ``tmp`` folder (old copy removed only after the rename)."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def save_model_shards(path: str | Path, model: nn.Module) -> None:
    """Collectively save only the model's (sharded) weights as a DCP folder, swapped in atomically.

    Each rank writes its own shards: unlike :func:`export_model`, no rank gathers a full table.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if _is_main() and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp))
    if _is_main():
        _swap_into_place(tmp, path)
    _barrier()


def load_model_shards(path: str | Path, model: nn.Module) -> None:
    """Collectively load what :func:`save_model_shards` wrote (any number of ranks: DCP reshards)."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a saved model (no .metadata)")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: Any, trainer_state: dict[str, Any]) -> None:
    """Collectively save model, optimizer, RNG and ``trainer_state`` (JSON-able) to ``path``.

    Args:
        path: the checkpoint folder (replaced atomically).
        model: the (DMP) model.
        optimizer: a keyed/combined optimizer with ``state_dict()``.
        trainer_state: loop position, early-stopping state, etc.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if _is_main() and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": _rng_tensors()}
    dcp.save(state, checkpoint_id=str(tmp))
    if _is_main():
        atomic_write_text(tmp / STATE_FILE, json.dumps(trainer_state, indent=2) + "\n")
        _swap_into_place(tmp, path)
    _barrier()


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Collectively restore what :func:`save_checkpoint` wrote into ``model``/``optimizer``; return trainer_state.

    The number of ranks may differ from the saving run: DCP reshards on load. Lazily created optimizer
    state must exist before loading (see ``recsys_emb.train.optim.materialize_state``).
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": _rng_tensors()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"]["torch_cpu"])
    if "torch_cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["torch_cuda"])
    return json.loads(state_file.read_text())


def save_file_checkpoint(path: str | Path, model: nn.Module, optimizer: Any, trainer_state: dict[str, Any]) -> None:
    """One-process (unsharded) checkpoint: model, optimizer, RNG and ``trainer_state`` (JSON-able) in ONE
    ``torch.save`` file, written atomically; :func:`load_file_checkpoint` reads it with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": _rng_tensors(),
                "trainer_state": json.dumps(trainer_state)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_file_checkpoint(path: str | Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Restore what :func:`save_file_checkpoint` wrote into ``model``/``optimizer`` and the RNG; return trainer_state.

    Lazily created optimizer state must exist before loading (``recsys_emb.train.optim.materialize_state``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optim"])
    torch.set_rng_state(ckpt["rng"]["torch_cpu"])
    if "torch_cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt["rng"]["torch_cuda"])
    return json.loads(ckpt["trainer_state"])


def consolidated_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU tensors for every entry of ``model.state_dict()`` (collective; rank 0 gets all)."""
    out: dict[str, torch.Tensor] = {}
    # The gather runs on the process group's backend: NCCL moves CUDA tensors only, so the full tensor is
    # assembled on rank 0's GPU there (one table at a time) and copied to the CPU.
    nccl = dist.is_initialized() and dist.get_backend() == "nccl"
    gather_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype, device=gather_device) if _is_main() else None
            value.gather(dst=0, out=full)
            if full is not None:
                out[key] = full.cpu()
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().clone()
    return out


def export_model(path: str | Path, model: nn.Module) -> None:
    """Collectively write the consolidated state dict to ``path`` (rank 0 writes, atomically)."""
    state = consolidated_state_dict(model)
    if _is_main():
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    _barrier()


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a consolidated export with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
