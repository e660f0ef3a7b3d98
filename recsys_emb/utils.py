"""Small shared helpers: atomic file writes, opening (gzipped) text, status lines."""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file whose content replaces ``path`` atomically when the ``with`` block ends without an error
    (temp file in the same folder, fsync, ``os.replace``); on an error ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON with a trailing newline to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def plain_or_gz(folder: str | os.PathLike[str], name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever is a file (the plain one first), or None."""
    for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def open_text(path: str | os.PathLike[str], mode: str = "r", encoding: str = "utf-8", newline: str | None = None) -> IO[str]:
    """Open a text file (``mode`` r / w / a), gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    mode = mode.replace("t", "")
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding=encoding, newline=newline)
    return open(path, mode, encoding=encoding, newline=newline)  # noqa: SIM115 (the caller closes it)


_LOG_FILE: tuple[Path, str] | None = None  # (file, tag) that log() also appends to


def log_to_file(path: str | os.PathLike[str] | None, tag: str = "") -> None:
    """Also append every :func:`log` line to ``path`` (None: stop), each prefixed by a UTC time and ``tag``.

    Every rank of a run appends to the same ``RUN_DIR/train.log`` with its own tag (``[rank 1]``); one
    ``write`` per call on a file opened for appending keeps the ranks' lines whole."""
    global _LOG_FILE
    _LOG_FILE = None if path is None else (Path(path), tag)


def log(msg: str, *, important: bool = False) -> None:
    """One status line on stderr (stdout is kept for results, e.g. the JSON line of ``train``); also in the
    run's ``train.log`` while one is set (:func:`log_to_file`).

    The console shows it on rank 0 unless ``--quiet`` (:mod:`recsys_emb.console`); ``important`` lines
    (warnings, how to resume) show under ``--quiet`` too. ``train.log`` gets every line of every rank."""
    from recsys_emb import console

    if console.shows_status() or (important and console.is_main_rank()):
        print(msg, file=sys.stderr, flush=True)
    if _LOG_FILE is not None:
        import time

        path, tag = _LOG_FILE
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        text = "".join(f"{stamp} {tag} {line}\n" for line in str(msg).splitlines() or [""])
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
