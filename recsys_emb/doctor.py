"""``recsys-emb doctor``: what is installed, whether it fits together, and what to install instead.

Mismatched torch / fbgemm-gpu builds are the most common TorchRec install failure: each fbgemm-gpu
release is compiled against exactly one torch minor version, and the CUDA ``fbgemm-gpu`` wheel
replaces the CPU one in the same ``fbgemm_gpu/`` folder.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import platform
import sys
from typing import Any

from recsys_emb import lockfile

# fbgemm-gpu release -> the torch minor it is built for, and the torchrec release that pairs with it.
# Verified on this project's machines (docs/INSTALL.md): 1.8 (CPU, the pinned stack) and 1.6 (CUDA 13:
# torch 2.11.0+cu130, fbgemm-gpu 1.6.0, torchrec 1.6.1 on an H100); the others are the pairings published
# with the upstream releases.
COMPATIBLE: dict[str, tuple[str, str]] = {
    "1.8": ("2.13", "1.8"),
    "1.6": ("2.11", "1.6"),
    "1.5": ("2.10", "1.5"),
    "1.4": ("2.9", "1.4"),
    "1.3": ("2.8", "1.3"),
    "1.2": ("2.7", "1.2"),
    "1.1": ("2.6", "1.1"),
    "1.0": ("2.5", "1.0"),
}
PINNED = {"torch": "2.13.0", "fbgemm-gpu-cpu": "1.8.0", "torchrec": "1.8.0"}


def stack_for_torch(torch_version: str) -> tuple[str, str]:
    """``(fbgemm minor, torchrec minor)`` built for ``torch_version`` (e.g. ``2.11.0+cu130`` -> ``("1.6", "1.6")``).

    Used by ``scripts/install.sh`` with ``RECSYS_EMB_TORCH=system`` (keep an installed torch). Raises
    ``ValueError`` naming the known torch versions when there is no pairing for it.
    """
    minor = _minor(torch_version)
    for fbgemm, (torch_minor, torchrec) in COMPATIBLE.items():
        if torch_minor == minor:
            return fbgemm, torchrec
    known = ", ".join(sorted((t for t, _ in COMPATIBLE.values()), key=lambda v: tuple(map(int, v.split(".")))))
    raise ValueError(f"no known fbgemm-gpu release is built for torch {torch_version} (known torch versions: {known})")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def _try_import(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as e:  # report, never crash: this is the diagnostic tool
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


def diagnose() -> dict[str, Any]:
    """Collect versions, import errors, CUDA facts, the extension state and advice."""
    report: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    dists = {d: _version(d) for d in ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec", "recsys_emb")}
    report["distributions"] = dists
    report["import_errors"] = {m: err for m in ("torch", "fbgemm_gpu", "torchrec") if (err := _try_import(m))}
    advice: list[str] = []
    torch_version = dists["torch"]
    if "torch" not in report["import_errors"]:
        import torch

        report["torch_cuda_build"] = torch.version.cuda
        report["cuda_available"] = torch.cuda.is_available()
        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        torch_version = torch.__version__
    try:
        import warnings

        with warnings.catch_warnings():  # the loader's "extension not built" warning: reported below instead
            warnings.simplefilter("ignore")
            from recsys_emb import ops  # noqa: F401

        report["extension"] = getattr(ops, "extension_status", lambda: "not built (no compiled kernels yet)")()
    except Exception as e:
        report["extension"] = f"error: {e}"
    cpu_fbgemm, gpu_fbgemm = dists["fbgemm-gpu-cpu"], dists["fbgemm-gpu"]
    fbgemm = cpu_fbgemm or gpu_fbgemm
    if cpu_fbgemm and gpu_fbgemm and _minor(gpu_fbgemm) != _minor(cpu_fbgemm):
        advice.append(
            f"both fbgemm-gpu {gpu_fbgemm} and fbgemm-gpu-cpu {cpu_fbgemm} are installed and share the fbgemm_gpu/ "
            "folder; on a CPU machine run: pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && scripts/install.sh"
        )
    expected = COMPATIBLE.get(_minor(fbgemm) or "")
    if fbgemm and expected and _minor(torch_version) != expected[0]:
        advice.append(
            f"fbgemm-gpu {fbgemm} is built for torch {expected[0]}.x but torch {torch_version} is installed: "
            f"install torch=={PINNED['torch']} fbgemm-gpu-cpu=={PINNED['fbgemm-gpu-cpu']} torchrec=={PINNED['torchrec']} "
            "(scripts/install.sh does this)"
        )
    if fbgemm and expected and dists["torchrec"] and _minor(dists["torchrec"]) != expected[1]:
        advice.append(f"torchrec {dists['torchrec']} does not pair with fbgemm {fbgemm}: install torchrec=={expected[1]}.0")
    if "fbgemm_gpu" in report["import_errors"] and "undefined symbol" in report["import_errors"]["fbgemm_gpu"]:
        advice.append(
            "fbgemm_gpu fails with an undefined symbol: it was built for another torch. "
            f"Install the trio pinned in scripts/install.sh: torch {PINNED['torch']}, fbgemm-gpu-cpu "
            f"{PINNED['fbgemm-gpu-cpu']}, torchrec {PINNED['torchrec']} (CUDA: fbgemm-gpu {PINNED['fbgemm-gpu-cpu']})"
        )
    if report.get("cuda_available") and cpu_fbgemm and not gpu_fbgemm:
        advice.append("a GPU is visible but the CPU fbgemm build is installed: run RECSYS_EMB_DEVICE=cuda scripts/install.sh")
    for module, err in report["import_errors"].items():
        if not any(module in a for a in advice):
            advice.append(f"import {module} failed ({err}); run scripts/install.sh into a fresh venv")
    report["lock"] = lock = lockfile.lock_report()
    if lock["status"] == "differs":
        diff = lock["differs"]
        shown = ", ".join(f"{n} {want} locked / {have or 'missing'} installed" for n, (want, have) in list(diff.items())[:5])
        advice.append(
            f"{len(diff)} package(s) differ from {lockfile.LOCK_NAME} ({shown}{', ...' if len(diff) > 5 else ''}): "
            "the test suite passed with the locked versions; reinstall into a fresh venv (scripts/install.sh), or after "
            "an intended upgrade refresh the lock with scripts/update_lock.sh (docs/INSTALL.md)"
        )
    report["ok"] = not report["import_errors"] and not advice
    report["advice"] = advice
    return report


def run_doctor(as_json: bool = False) -> int:
    """Print the diagnosis; exit code 0 when everything fits together, 1 otherwise."""
    report = diagnose()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    d = report["distributions"]
    lines = [
        f"python        {report['python']} ({report['platform']})",
        f"torch         {d['torch'] or 'not installed'} (CUDA build: {report.get('torch_cuda_build') or 'none'})",
        f"fbgemm_gpu    {d['fbgemm-gpu-cpu'] and 'fbgemm-gpu-cpu ' + d['fbgemm-gpu-cpu'] or ''}"
        f"{' / fbgemm-gpu ' + d['fbgemm-gpu'] if d['fbgemm-gpu'] else ''}",
        f"torchrec      {d['torchrec'] or 'not installed'}",
        f"recsys_emb    {d['recsys_emb'] or 'not installed (run from a checkout?)'}",
        f"CUDA          {'available: ' + ', '.join(report['gpus']) if report.get('cuda_available') else 'not available'}",
        f"extension     {report['extension']}",
        f"lock          {report['lock']['status']}" + (f" ({report['lock']['file']})" if report['lock']['file'] else ""),
    ]
    for module, err in report["import_errors"].items():
        lines.append(f"IMPORT ERROR  {module}: {err}")
    lines += [f"ADVICE        {a}" for a in report["advice"]] or ["status        ok: versions match"]
    print("\n".join(lines))
    return 0 if report["ok"] else 1
