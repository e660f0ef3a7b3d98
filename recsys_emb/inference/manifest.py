"""The artefact folder's manifest: names, format version, library versions and integrity checks.

Imported by both sides (export and :class:`recsys_emb.inference.predictor.Predictor`), so it
depends on the standard library and torch only.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # bump when the folder layout or the serving signatures change
MANIFEST = "manifest.json"
ARTEFACT = "model.pt2"  # the torch.export program (format "pt2")
TORCHSCRIPT = "model.torchscript.pt"  # the TorchScript module (format "torchscript")
FORMATS = {"pt2": ARTEFACT, "torchscript": TORCHSCRIPT}  # manifest "format" -> its program file


class ArtefactError(ValueError):
    """An artefact folder that cannot be served: missing, corrupted or from an incompatible version."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of the stack an artefact was written (or is loaded) with."""
    import torch

    from recsys_emb import __version__

    return {
        "torch": torch.__version__,
        "fbgemm_gpu": _version("fbgemm-gpu-cpu") or _version("fbgemm-gpu"),
        "torchrec": _version("torchrec"),
        "recsys_emb": __version__,
    }


def _minor(version: str | None) -> str | None:
    return ".".join(version.split("+")[0].split(".")[:2]) if version else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path, *, verify: bool = True, check_versions: bool = True) -> dict[str, Any]:
    """The manifest of an artefact folder, after checking that the folder can be served.

    Args:
        folder: a folder written by ``recsys-emb export``.
        verify: check the sha256 of every file the manifest lists (a truncated or altered file is refused).
        check_versions: refuse an artefact written with another torch minor version (the exported
            program's operator set is tied to it) or another major.minor of fbgemm_gpu.

    Raises:
        ArtefactError: naming the file and what is wrong.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtefactError(f"{path} not found: is {folder} a folder written by `recsys-emb export`?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path} is not valid JSON ({e}): the artefact is corrupted; export it again") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise ArtefactError(f"{path} has no format_version: not a recsys_emb artefact manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtefactError(f"{path}: artefact format_version {manifest['format_version']} is not supported by this "
                            f"recsys_emb (reads format {FORMAT_VERSION}); export the run again with this version")
    if check_versions:
        here = library_versions()
        for lib in ("torch", "fbgemm_gpu"):
            saved = manifest.get("versions", {}).get(lib)
            if saved and here[lib] and _minor(saved) != _minor(here[lib]):
                raise ArtefactError(f"{path}: exported with {lib} {saved}, but {lib} {here[lib]} is installed; load it "
                                    f"with {lib} {_minor(saved)}.x, or export the run again with this install")
    if verify:
        for name, digest in manifest.get("sha256", {}).items():
            file = folder / name
            if not file.is_file():
                raise ArtefactError(f"{file} is missing (listed in {path})")
            if sha256(file) != digest:
                raise ArtefactError(f"{file} is corrupted: its sha256 differs from the one in {path}; export the run again")
    return manifest
