"""The dependency lock: exact versions the test suite passed with (``requirements.lock`` at the repo root).

``scripts/install.sh`` installs ``requirements.txt`` under the lock as pip constraints, so every new
install resolves the same versions; ``RECSYS_EMB_LOCK=none`` opts out (the install then records
that in the venv, see :data:`MARKER`). ``recsys-emb doctor`` reports packages whose installed version
differs from the lock. ``scripts/update_lock.sh`` re-resolves, runs the suite and rewrites the lock
(docs/INSTALL.md, "Upgrading the lock").

The lock holds everything except what the installer pins itself (torch, fbgemm-gpu(-cpu), torchrec:
exact versions that differ between the CPU and CUDA builds), the project itself, pip's own tooling,
and the CUDA runtime wheels a CUDA torch brings. No heavy imports here: ``doctor`` must run when
torch is broken.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

LOCK_NAME = "requirements.lock"
MARKER = ".recsys_emb_lock"  # in the venv (sys.prefix): "none" when installed with RECSYS_EMB_LOCK=none
NOT_LOCKED = {"torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec", "recsys-emb", "pip", "setuptools", "wheel"}
NOT_LOCKED_PREFIXES = ("nvidia-", "triton", "cuda-")  # CUDA wheels come with a CUDA torch, not with us


def normalize(name: str) -> str:
    """PEP 503 name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_locked_name(name: str) -> bool:
    name = normalize(name)
    return name not in NOT_LOCKED and not name.startswith(NOT_LOCKED_PREFIXES)


def repo_lock_path() -> Path | None:
    """The lock this environment was installed with: the one named in the venv's marker (a relative path
    is taken from the checkout), else the checkout's ``requirements.lock``; None without either (e.g. a
    wheel install)."""
    repo = Path(__file__).resolve().parents[1]
    marker = Path(sys.prefix) / MARKER
    named = marker.read_text().strip() if marker.is_file() else ""
    path = repo / named if named and named != "none" else repo / LOCK_NAME  # repo / an absolute path = that path
    return path if path.is_file() else None


def parse_lock(path: Path) -> tuple[dict[str, str], str | None]:
    """``({normalized name: version}, python minor it was resolved for)``; errors name the file and line."""
    pins: dict[str, str] = {}
    python = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("# python:"):
            python = line.split(":", 1)[1].strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {raw!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins, python


def installed_versions() -> dict[str, str]:
    """``{normalized name: version}`` of every distribution in this environment."""
    return {normalize(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}


def opted_out() -> bool:
    """True when this venv was installed with ``RECSYS_EMB_LOCK=none`` (scripts/install.sh writes the marker)."""
    marker = Path(sys.prefix) / MARKER
    return marker.is_file() and marker.read_text().strip() == "none"


def differences(pins: dict[str, str], installed: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """``{name: (locked, installed or None)}`` for each locked package that is missing or at another version."""
    return {name: (want, installed.get(name)) for name, want in sorted(pins.items()) if installed.get(name) != want}


def freeze(installed: dict[str, str] | None = None, python: str | None = None) -> str:
    """The text of a lock file for this environment (what ``scripts/update_lock.sh`` writes)."""
    installed = installed_versions() if installed is None else installed
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        "# Exact versions `make test` passed with; scripts/install.sh installs requirements.txt under these",
        "# constraints (RECSYS_EMB_LOCK=none opts out). Regenerate with scripts/update_lock.sh, never by hand",
        "# (docs/INSTALL.md, 'Upgrading the lock'). torch/fbgemm/torchrec are pinned by scripts/install.sh.",
        f"# python: {python}",
    ]
    lines += [f"{name}=={version}" for name, version in sorted(installed.items()) if is_locked_name(name)]
    return "\n".join(lines) + "\n"


def lock_report() -> dict[str, object]:
    """What ``doctor`` says about the lock: its file, whether it applies, and the differing packages."""
    path = repo_lock_path()
    if path is None:
        return {"file": None, "status": "no requirements.lock next to this package (not a source checkout)"}
    if opted_out():
        return {"file": str(path), "status": "opted out (installed with RECSYS_EMB_LOCK=none)"}
    pins, python = parse_lock(path)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python and python != here:
        return {"file": str(path), "status": f"resolved for Python {python}, this is Python {here}: not compared"}
    diff = differences(pins, installed_versions())
    return {"file": str(path), "status": "differs" if diff else "matches", "differs": diff}
