"""Checkpoints: distributed (torch.distributed.checkpoint) for resuming, consolidated for inference.

A training checkpoint is a DCP folder (every rank writes its shards) plus ``trainer_state.json``,
written LAST, by rank 0, after every rank finished: a folder without it is incomplete. Each save goes
to a new version folder ``.versions/<name>.<n>/`` beside ``<name>`` (``checkpoint``, ``best``), and
``<name>`` is a relative symlink that is replaced atomically (``os.replace``) to point at it once it
is complete. So at every moment ``<name>`` names a complete checkpoint: a crash while saving leaves
an unpublished, incomplete version, which the next save removes. The version before the current one
is kept too; :func:`resolve_checkpoint` falls back to the newest complete version when ``<name>`` is
missing or damaged (e.g. the folder it names lost files), saying so. Readers use ``<name>`` as a
plain folder path. The consolidated export is one ``torch.save`` file of plain tensors, loadable with
``torch.load(weights_only=True)`` into the unsharded model.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys_emb.console import known_warnings
from recsys_emb.utils import atomic_write_bytes, atomic_write_text

STATE_FILE = "trainer_state.json"
MODEL_MARKER = "complete.json"  # written last into a save_model_shards version


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


VERSIONS = ".versions"
KEEP_VERSIONS = 2  # the published version and the one before it (the fallback)


def _versions(path: Path) -> list[tuple[int, Path]]:
    """``[(n, folder)]`` of the saved versions of ``path``, oldest first."""
    root = path.parent / VERSIONS
    found = []
    for child in root.glob(f"{path.name}.*") if root.is_dir() else []:
        suffix = child.name[len(path.name) + 1:]
        if suffix.isdigit():
            found.append((int(suffix), child))
    return sorted(found)


def _is_complete(folder: Path, marker: str) -> bool:
    if not (folder / ".metadata").is_file():
        return False
    # a plain best/ folder of an older release (swapped in by rename, so complete) has no marker
    legacy = marker == MODEL_MARKER and folder.is_dir() and not folder.is_symlink() and folder.parent.name != VERSIONS
    return (folder / marker).is_file() or legacy


def resolve_checkpoint(path: str | Path, marker: str = STATE_FILE) -> Path | None:
    """The complete checkpoint folder that ``path`` stands for, or None when there is none.

    ``path`` itself when it is complete (a published version, or an old-style plain folder); else the
    newest complete version under ``.versions/`` (a crash or damage left ``path`` missing or incomplete),
    with a warning naming both.
    """
    path = Path(path)
    if _is_complete(path, marker):
        return path
    for _, folder in reversed(_versions(path)):
        if _is_complete(folder, marker):
            warnings.warn(f"{path} is missing or incomplete; using the last complete checkpoint {folder}", stacklevel=2)
            return folder
    return None


def _next_version(path: Path) -> Path:
    """Rank 0 picks the folder of the next version; every rank gets the same path."""
    name = [None]
    if _is_main():
        versions = _versions(path)
        name[0] = str(path.parent / VERSIONS / f"{path.name}.{versions[-1][0] + 1 if versions else 0}")
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def _publish(version: Path, path: Path, marker: str) -> None:
    """Rank 0: point ``path`` at the complete ``version`` in one atomic step, then drop stale versions."""
    if path.is_dir() and not path.is_symlink():  # an old-style plain folder: becomes the oldest version
        path.rename(path.parent / VERSIONS / f"{path.name}.old")
    link = path.with_name(f".{path.name}.link.tmp")
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(version, path.parent))
    os.replace(link, path)  # atomic: path names the old or the new complete version, never neither
    _fsync_dir(path.parent)
    complete = [folder for _, folder in _versions(path) if _is_complete(folder, marker)]
    keep = set(complete[-KEEP_VERSIONS:])  # incomplete leftovers of crashed saves go too
    for _, folder in _versions(path):
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(path.parent / VERSIONS / f"{path.name}.old", ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_version(path: Path, state: dict[str, Any], marker: str, marker_text: str) -> None:
    """Collectively write ``state`` as the next version of ``path``, complete it with ``marker``, publish it."""
    version = _next_version(path)
    if _is_main():
        shutil.rmtree(version, ignore_errors=True)  # a leftover of a crash with the same number
        version.parent.mkdir(parents=True, exist_ok=True)
    _barrier()
    dcp.save(state, checkpoint_id=str(version))
    _barrier()  # every rank's shards are on disk before the version is marked complete
    if _is_main():
        atomic_write_text(version / marker, marker_text)
        _publish(version, path, marker)
    _barrier()


@known_warnings("sharded_tensor")
def save_model_shards(path: str | Path, model: nn.Module) -> None:
    """Collectively save only the model's (sharded) weights as a DCP folder, published atomically.

    Each rank writes its own shards: unlike :func:`export_model`, no rank gathers a full table.
    """
    _save_version(Path(path), {"model": model.state_dict()}, MODEL_MARKER, "{}\n")


@known_warnings("sharded_tensor")
def load_model_shards(path: str | Path, model: nn.Module) -> None:
    """Collectively load what :func:`save_model_shards` wrote (any number of ranks: DCP reshards)."""
    folder = resolve_checkpoint(path, MODEL_MARKER)
    if folder is None:
        raise FileNotFoundError(f"{path} is not a saved model (no complete version)")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state["model"])


@known_warnings("sharded_tensor")
def save_checkpoint(path: str | Path, model: nn.Module, optimizer: Any, trainer_state: dict[str, Any]) -> None:
    """Collectively save model, optimizer, RNG and ``trainer_state`` (JSON-able) to ``path``.

    Args:
        path: the checkpoint folder (replaced atomically).
        model: the (DMP) model.
        optimizer: a keyed/combined optimizer with ``state_dict()``.
        trainer_state: loop position, early-stopping state, etc.
    """
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": _rng_tensors()}
    _save_version(Path(path), state, STATE_FILE, json.dumps(trainer_state, indent=2) + "\n")


@known_warnings("sharded_tensor")
def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Collectively restore what :func:`save_checkpoint` wrote into ``model``/``optimizer``; return trainer_state.

    The number of ranks may differ from the saving run: DCP reshards on load. Lazily created optimizer
    state must exist before loading (see ``recsys_emb.train.optim.materialize_state``).
    """
    folder = resolve_checkpoint(path)
    if folder is None:
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "rng": _rng_tensors()}
    dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"]["torch_cpu"])
    if "torch_cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["torch_cuda"])
    return json.loads((folder / STATE_FILE).read_text())


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


@known_warnings("sharded_tensor")
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
