"""Process-group setup: torchrun-launched (RANK/WORLD_SIZE set) or a one-process group.

TorchRec's DistributedModelParallel needs a process group even on one device, so a plain
``recsys-emb train`` creates a world of size 1 (gloo on CPU, NCCL on CUDA) on a free local port.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs. ``owns_group``: we created the group and must destroy it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; else WORLD_SIZE; else 1)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when every local rank gets its own GPU, else CPU; ``cuda`` without one is a clear error.

    NCCL needs one GPU per rank: with more local ranks than visible GPUs, ``auto`` picks CPU (gloo) for
    every rank (never a mix), and ``cuda`` raises naming the counts.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_world = _local_world_size()
    if name == "auto":
        name = "cuda" if gpus >= local_world and gpus > 0 else "cpu"
    if name == "cuda":
        if gpus == 0:
            raise RuntimeError(
                "train.device=cuda but torch.cuda.is_available() is False "
                "(a CPU build of torch, or no visible GPU); use train.device=cpu or auto. "
                "`recsys-emb doctor` shows what is installed."
            )
        if local_rank >= gpus:
            raise RuntimeError(
                f"train.device=cuda: local rank {local_rank} of {local_world} processes on this machine, but only "
                f"{gpus} GPU(s) are visible; NCCL needs one GPU per rank: launch at most {gpus} process(es) per "
                "machine (torchrun --nproc_per_node) or use train.device=cpu (gloo)."
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the torchrun process group, or create a single-process one; returns this rank's env."""
    global _joined_a_group
    _joined_a_group = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(), False)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend)
    else:
        # A private rendezvous on a fresh local port (never MASTER_PORT inherited from a parent process,
        # which may be taken); retried because another process can grab the port in between.
        for attempt in range(5):
            try:
                dist.init_process_group(
                    backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
                )
                break
            except (RuntimeError, OSError):
                if attempt == 4:
                    raise
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, True)


_joined_a_group = False  # set by init_distributed: this process has held a process group


def used_process_group() -> bool:
    """Whether :func:`init_distributed` ran in this process (then end it with :func:`exit_process`)."""
    return _joined_a_group


def exit_process(code: int) -> NoReturn:
    """End this process with ``code`` after flushing output, skipping interpreter finalization.

    For processes that held a process group. ``destroy_process_group()`` does not join c10d's native
    threads (the TCPStore server, gloo's transport loop and work run-loops, which may still be starting
    or stopping) while anything still references the ProcessGroup object, and TorchRec's sharded
    modules, ShardedTensors and optimizers do (measured for issue 25; tests/distributed/test_multiprocess.py
    shows that a held reference keeps the threads and that releasing it joins them). A
    normal exit then tears the interpreter and the C++ static objects down while those threads run,
    which intermittently aborted a finished rank with "terminate called without an active exception"
    (SIGABRT; issue 25). Everything a run writes is already closed and atomically in place by then.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to flush
            pass
    os._exit(code)


def shutdown(env: DistEnv) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
