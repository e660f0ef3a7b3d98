"""The spawned-rank harness reports a rank's native death with the rank's own last output."""

from __future__ import annotations

import os
import sys

import pytest
import torch.distributed as dist

from tests.distributed.multiprocess import RankDiedError, run_ranks


def _abort_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        print("rank 1 says goodbye", file=sys.stderr, flush=True)
        os.write(2, b"native line before the abort\n")  # what libstdc++'s terminate message looks like to us
        os.abort()
    dist.barrier()  # rank 0 waits in a collective until the harness ends it


def _raise_on_rank_zero(rank: int, world_size: int) -> None:
    if rank == 0:
        raise ValueError("a python error on rank 0")


def test_native_death_names_rank_signal_and_its_last_lines() -> None:
    with pytest.raises(RankDiedError) as info:
        run_ranks(_abort_on_rank_one, 2)
    message = str(info.value)
    assert info.value.rank == 1 and info.value.how == "SIGABRT"
    assert "rank 1 of 2 died natively (SIGABRT)" in message
    assert "rank 1 says goodbye" in message and "native line before the abort" in message
    # faulthandler's dump: the Python stack of the dying thread, down to the test body
    assert "Fatal Python error: Aborted" in message and "_abort_on_rank_one" in message


def test_python_exception_is_re_raised_with_its_traceback() -> None:
    with pytest.raises(Exception, match="a python error on rank 0") as info:
        run_ranks(_raise_on_rank_zero, 2)
    assert not isinstance(info.value, RankDiedError)


_HELD_GROUP = """
import os, sys
import torch.distributed as dist
from recsys_emb.train.env import exit_process
from tests.distributed.multiprocess import _free_port

def native_threads():
    names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sorted(n for n in names if "gloo" in n or "tcpstore" in n)

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
held = dist.group.WORLD if sys.argv[1] == "held" else None  # as TorchRec's sharded modules, ShardedTensors, ... do
dist.destroy_process_group()
print("after destroy:", native_threads(), flush=True)
exit_process(7)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_gloo_threads_outlive_destroy_and_exit_process_ends_cleanly() -> None:
    """Why ranks and the CLI end through exit_process: a referenced group keeps native threads alive after
    destroy_process_group (if this starts failing, torch changed and exit_process may be unnecessary)."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]

    def threads_after_destroy(mode: str) -> str:
        proc = subprocess.run([sys.executable, "-c", _HELD_GROUP, mode], cwd=repo, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 7, proc.stderr  # the code given, and no abort
        return next(line for line in proc.stdout.splitlines() if line.startswith("after destroy:"))

    # the TCPStore server still runs (gloo's own threads are often still starting or stopping at that moment)
    assert "pt_tcpstore_uv" in threads_after_destroy("held")
    assert threads_after_destroy("released") == "after destroy: []"  # the control: the last reference joins them all
