"""Loads the optional compiled kernels ``recsys_emb._C``; never raises, warns once when absent.

The extension (built from ``csrc/`` by ``setup.py``, see docs/kernels.md) only adds per-device
implementations (``TORCH_LIBRARY_IMPL(recsys_emb, CPU|CUDA, m)``) of the ops declared in
:mod:`recsys_emb.ops._library`; it must never re-declare a schema. When it is missing, fails to load
(ABI mismatch, missing symbol, ...) or ``RECSYS_EMB_DISABLE_KERNELS=1`` is set, the pure-PyTorch
references stay in use on every device.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

from recsys_emb.ops._library import OPS

DISABLE_ENV = "RECSYS_EMB_DISABLE_KERNELS"
EXTENSION = "recsys_emb._C"  # module name (tests point it elsewhere to emulate a missing build)
_state: dict[str, object] = {"tried": False, "loaded": False, "error": None}


def load_extension() -> bool:
    """Import ``recsys_emb._C`` once; True when it loaded. Warns (once) instead of raising."""
    if _state["tried"]:
        return bool(_state["loaded"])
    _state["tried"] = True
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        _state["error"] = f"disabled by {DISABLE_ENV}"
        return False
    try:
        spec = importlib.util.find_spec(EXTENSION)
        if spec is not None and (spec.origin or "").endswith(".so") and not links_shared_libstdcxx(spec.origin):
            raise ImportError(
                f"{spec.origin} was linked without the shared libstdc++.so.6 (a compiler that links libstdc++ "
                "statically); such a build crashes when an op reports an error: rebuild it with the system "
                "compiler, e.g. CXX=/usr/bin/g++ CC=/usr/bin/gcc make ext"
            )
        importlib.import_module(EXTENSION)
    except Exception as exc:  # ImportError, OSError (bad .so), RuntimeError (registration): never fatal
        _state["error"] = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"recsys_emb: compiled kernels ({EXTENSION}) not loaded ({_state['error']}); "
            "using the pure-PyTorch reference ops (build them: pip install --no-build-isolation -e ., docs/kernels.md)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    _state["loaded"] = True
    return True


def links_shared_libstdcxx(path: str) -> bool:
    """True when the shared object ``path`` names ``libstdc++.so.6`` (its DT_NEEDED string).

    A torch extension must use the process's one shared libstdc++ (torch's): one linked with a static copy
    (some compiler wrappers add ``-static-libstdc++``) segfaults inside ``c10::str`` as soon as a
    ``TORCH_CHECK`` formats its message. Seen on a GPU machine whose ``g++`` was such a wrapper.
    """
    with open(path, "rb") as f:
        return b"libstdc++.so.6" in f.read()


def extension_error() -> str | None:
    """Why the extension is not in use (None when loaded or not tried yet)."""
    return None if _state["loaded"] else _state["error"]  # type: ignore[return-value]


def has_compiled_kernel(op: str, device_type: str) -> bool:
    """True when ``recsys_emb::OP`` dispatches to a backend kernel (not the reference) on ``device_type``.

    Only the CPU and CUDA backends can hold compiled kernels; any other device type (meta, ...) is False.
    """
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type.lower())
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(OPS[op].qualname, key)


def kernel_status(devices: tuple[str, ...] = ("CPU", "CUDA")) -> dict[str, dict[str, str]]:
    """``{op: {device: "compiled" | "reference"}}``: which implementation each device dispatches to."""
    return {name: {device: "compiled" if has_compiled_kernel(name, device) else "reference" for device in devices} for name in OPS}
