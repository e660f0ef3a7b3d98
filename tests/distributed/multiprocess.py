"""Run a test body on N CPU processes joined by a gloo process group (torch.multiprocessing spawn).

Each rank writes its stdout/stderr to its own log file, with :mod:`faulthandler` armed, so a rank
that dies natively (SIGABRT, SIGSEGV: no Python traceback reaches the parent) still explains itself:
the failure raised here names the rank and signal and quotes the end of that rank's log, which holds
the native message (e.g. ``terminate called ...``) and the Python stack of every thread at the
moment of death. On success the logs are echoed to stderr (pytest shows them only for failing tests).
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_emb.train.env import exit_process

TAIL_LINES = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world_size: int, port: int, log_dir: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    log = open(Path(log_dir) / f"rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (kept open until the process ends)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)  # native writes (libstdc++'s terminate message, gloo) land here too
    os.dup2(log.fileno(), 2)
    faulthandler.enable(file=log, all_threads=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        try:
            dist.barrier()  # no rank tears down while another still talks to it
        except RuntimeError:
            pass  # a peer failed after this body passed: the harness reports the peer's own error, not this echo
    finally:
        dist.destroy_process_group()
    log.flush()
    exit_process(0)  # without interpreter finalization: c10d's threads outlive destroy_process_group (see there)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log written)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


def run_ranks(fn: Callable[..., Any], world_size: int = 2, *args: Any) -> None:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` processes; re-raises a rank's failure.

    ``fn`` must be importable (a module-level function of a test module). A rank killed by a signal
    raises :class:`RankDiedError` quoting the last lines of that rank's own stdout/stderr.
    """
    with tempfile.TemporaryDirectory(prefix="ranks_") as log_dir:
        logs = [Path(log_dir) / f"rank{r}.log" for r in range(world_size)]
        try:
            mp.spawn(_entry, args=(world_size, _free_port(), log_dir, fn, args), nprocs=world_size, join=True)
        except mp.ProcessExitedException as e:
            raise RankDiedError(e.error_index, world_size, e.signal_name or f"exit code {e.exit_code}",
                                _tail(logs[e.error_index])) from e
        finally:
            for r, path in enumerate(logs):
                print(f"----- rank {r} of {world_size}: stdout/stderr -----\n{_tail(path, 10**6)}", file=sys.stderr)


class RankDiedError(RuntimeError):
    """A spawned rank ended without a Python exception (a signal, or a native exit)."""

    def __init__(self, rank: int, world_size: int, how: str, tail: str) -> None:
        super().__init__(f"rank {rank} of {world_size} died natively ({how}); last lines of its stdout/stderr:\n{tail}")
        self.rank = rank
        self.how = how
