"""What reaches the console: verbosity, progress bars, one printing rank, and the third-party warnings we filter.

Every command takes ``--quiet`` / ``--verbose`` / ``--no-progress`` (:func:`add_common_arguments`), and
:func:`configure` applies them to the whole process:

* default: our own status lines (``[ctr] step 9: valid auc ...``), progress bars, results on stdout, our
  warnings and errors; the third-party warnings listed in :data:`KNOWN` are filtered where we call the API
  that raises them (:func:`known_warnings`);
* ``--quiet``: results, warnings and errors only (no status lines, no progress bars);
* ``--verbose``: everything, the known third-party warnings included.

Under torchrun only rank 0 prints status lines and progress bars; every rank still appends its lines to
the run's ``train.log`` (:func:`recsys_emb.utils.log`). Warnings and errors print on every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

QUIET, NORMAL, VERBOSE = 0, 1, 2
_ENV = "RECSYS_EMB_VERBOSITY"  # read at import, so that worker processes follow their parent's choice
_state = {"level": int(os.environ.get(_ENV, NORMAL)), "progress": True}


@dataclass(frozen=True)
class Known:
    """A third-party warning we filter by default: a Python warning (``category`` set) or a log record."""

    message: str  # regex matched at the start of the message
    reason: str  # why it does not concern our users (shown in docs; kept next to the filter)
    category: type[Warning] | None = None  # Python warning category; None: a ``logging`` record
    logger: str = ""  # logging: the logger that emits it


# The known third-party warnings, each with the reason it does not concern a user of recsys_emb. They are
# filtered only around the calls that raise them (``with known_warnings("planner"): ...``), never globally.
KNOWN: dict[str, tuple[Known, ...]] = {
    # recsys_emb.distributed.planning.plan_sharding -> torchrec EmbeddingShardingPlanner
    "planner": (
        Known("HeuristicalStorageReservation is known to cause issues",
              "TorchRec warns whenever its default storage reservation is built; its issue is the over-estimate of "
              "dense tensors on unmaterialised (meta) models in dry runs, and we plan materialised models",
              category=FutureWarning),
        Known("There is a known issue with TorchRec's dense tensor size calculation in dry run",
              "the same dry-run caveat, logged once per plan; our models are materialised when planned",
              logger="torchrec.distributed.planner.storage_reservations"),
        Known("Sharding spec not found for",
              "TorchRec's plan check logs it (on the root logger) for every replicated (data_parallel) table: a replica "
              "has no shards, so no sharding spec, which is what data_parallel means", logger="root"),
    ),
    # recsys_emb.train.parallel.shard_model -> torchrec DistributedModelParallel
    "dmp": (
        Known("`broadcast_buffers` is deprecated",
              "raised by TorchRec's own DistributedDataParallel wrapper of the dense part; nothing a caller passes "
              "changes it (TorchRec 1.8)", category=FutureWarning),
        Known("Sharding Type is data_parallel, caching params will be ignored",
              "logged by TorchRec for every replicated (data_parallel) table while sharding: a replica has no cache, "
              "and we set no caching parameters", logger="torchrec.distributed.utils"),
    ),
    # recsys_emb.train.checkpoint (save / load / consolidate) and inference.export.unshard
    "sharded_tensor": (
        Known("Please use DTensor instead and we are deprecating ShardedTensor",
              "TorchRec 1.8 returns sharded tables in state dicts as ShardedTensor; its DTensor option "
              "(ShardingEnv.output_dtensor) cannot gather row-wise shards into full tables, which our checkpoints "
              "and export need (scripts/dtensor_state_dict_check.py shows it), so we stay on ShardedTensor and "
              "torch.distributed.checkpoint warns on every one", category=FutureWarning),
    ),
    # the training / evaluation steps -> TorchRec's sharded forward calls torch.fx's is_fx_tracing()
    "forward": (
        Known("is_fx_tracing will return true for both fx.symbolic_trace and torch.export",
              "TorchRec's sharded modules call torch.fx.is_fx_tracing() in forward; the notice is for TorchRec",
              logger="torch.fx._symbolic_trace"),
        Known("`torch.distributed.reduce_scatter_tensor` is deprecated",
              "TorchRec 1.8's row-wise sharded lookups call the old collective names (torchrec/distributed/comm_ops)",
              category=FutureWarning),
        Known("`torch.distributed.all_gather_into_tensor` is deprecated",
              "the same, for TorchRec's all-gather of row-wise shards", category=FutureWarning),
        Known("fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
              "FBGEMM's replicated (data_parallel) CPU tables run their lookup op inside their own autograd.Function, "
              "so the dispatcher sees an op without an Autograd kernel at every backward; the gradients equal "
              "torch's embedding_bag (tests/test_console.py)", category=UserWarning),
    ),
    # recsys_emb.inference.predictor.Predictor.load -> torch.export.load
    "export_load": (
        Known("Symbol u",
              "torch.export records the unbacked sizes of jagged inputs (ids per bag) it met while tracing; those the "
              "final graph no longer uses are reported at load, one line each, and change nothing",
              logger="torch._export.serde.serialize"),
    ),
    # recsys_emb.inference.export.script_program -> torch.jit.script of the fx-traced model
    "torchscript": (
        Known("The TorchScript type system doesn't support instance-level annotations on empty non-base types",
              "raised while TorchScript compiles TorchRec's KeyedJaggedTensor / JaggedTensor classes (their empty "
              "cache fields); the scripted artefact is checked against eager right after", category=UserWarning),
        Known("TorchScript will treat type annotations of Tensor dtype-specific subtypes as if they are normal",
              "the same classes annotate some fields with dtype-specific tensor types; TorchScript reads them as "
              "Tensor, which is what they hold", category=UserWarning),
    ),
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose`` / ``--no-progress`` (the options every ``recsys-emb`` command has)."""
    group = parser.add_argument_group("console")
    have = {opt for action in parser._actions for opt in action.option_strings}
    if "--quiet" not in have:
        group.add_argument("-q", "--quiet", action="store_true", help="print results, warnings and errors only")
    if "--verbose" not in have:
        group.add_argument("-v", "--verbose", action="store_true",
                           help="print everything, third-party warnings included (recsys_emb/console.py lists those "
                                "hidden by default)")
    if "--no-progress" not in have:
        group.add_argument("--no-progress", action="store_true", help="no progress bars")


def configure(quiet: bool = False, verbose: bool = False, progress: bool = True) -> None:
    """Set this process's console behaviour (also inherited by the processes it starts)."""
    if quiet and verbose:
        raise ValueError("--quiet and --verbose exclude each other")
    _state["level"] = QUIET if quiet else VERBOSE if verbose else NORMAL
    _state["progress"] = progress and not quiet
    os.environ[_ENV] = str(_state["level"])


def configure_from(args: argparse.Namespace) -> None:
    """:func:`configure` from parsed :func:`add_common_arguments` options."""
    configure(getattr(args, "quiet", False), getattr(args, "verbose", False), not getattr(args, "no_progress", False))


def level() -> int:
    return _state["level"]


def is_main_rank() -> bool:
    """Rank 0 of a torchrun job, or a single process."""
    return os.environ.get("RANK", "0") == "0"


def shows_status() -> bool:
    """Whether this process prints status lines on the console (not quiet, rank 0)."""
    return _state["level"] >= NORMAL and is_main_rank()


def progress_enabled() -> bool:
    return bool(_state["progress"]) and _state["level"] >= NORMAL and is_main_rank()


def tqdm(*args: Any, disable: bool | None = False, **kwargs: Any) -> Any:
    """``tqdm.tqdm`` that also stays hidden with ``--no-progress`` / ``--quiet`` and on ranks other than 0
    (``disable=None`` keeps tqdm's meaning: hidden when the output is not a terminal)."""
    from tqdm import tqdm as _tqdm

    return _tqdm(*args, disable=True if not progress_enabled() else disable, **kwargs)


class _LogFilter(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


@contextlib.contextmanager
def known_warnings(*groups: str) -> Iterator[None]:
    """Hide the :data:`KNOWN` warnings of ``groups`` inside the block (unless ``--verbose``)."""
    unknown = [g for g in groups if g not in KNOWN]
    if unknown:
        raise KeyError(f"no known-warning group {unknown}; groups: {sorted(KNOWN)}")
    if _state["level"] >= VERBOSE:
        yield
        return
    installed: list[tuple[logging.Logger, logging.Filter]] = []
    with warnings.catch_warnings():
        for known in (k for g in groups for k in KNOWN[g]):
            if known.category is not None:
                warnings.filterwarnings("ignore", message=re.escape(known.message), category=known.category)
            else:
                log_filter = _LogFilter(re.compile(re.escape(known.message)))
                logger = logging.getLogger(known.logger)
                logger.addFilter(log_filter)
                installed.append((logger, log_filter))
        try:
            yield
        finally:
            for logger, log_filter in installed:
                logger.removeFilter(log_filter)


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and prints a one-line notice."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import sys

        print(f"note: {option_string} is deprecated and will be removed in the next release; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep the spelling ``old`` of the option ``new`` (already added to ``parser``) working for one release.

    The alias takes the same values, is hidden from ``--help`` and prints one notice when used. argparse would
    reject the alias alone if ``new`` were ``required=True``: check that one of them was given after parsing."""
    target = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, action=_DeprecatedAlias, new=new, dest=target.dest, nargs=target.nargs,
                        type=target.type, metavar=target.metavar, help=argparse.SUPPRESS)

