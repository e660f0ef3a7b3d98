"""recsys_emb.ops: the ``recsys_emb::*`` op registry (see docs/kernels.md).

Importing this package declares every op (schema, pure-PyTorch reference for every device, fake
kernel, autograd) and then tries once to load the compiled kernels ``recsys_emb._C``, which override
the reference per device when present (a missing extension only warns, once).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recsys_emb.ops._library import MODES, OPS, OpSpec
from recsys_emb.ops._loader import extension_error, has_compiled_kernel, kernel_status, load_extension

load_extension()

__all__ = [
    "extension_status",
    "MODES", "OPS", "OpSpec", "extension_error", "has_compiled_kernel", "hashed_embedding_bag", "kernel_status", "load_extension",
    "multi_probe_hash", "sid_pieces",
]


def multi_probe_hash(values: Tensor, feature_index: Tensor, coefficients: Tensor, num_rows: Tensor) -> Tensor:
    """(N, K) int64 rows of ``values`` (N,) of features ``feature_index`` (N,); see ``_library``."""
    return torch.ops.recsys_emb.multi_probe_hash(values, feature_index, coefficients, num_rows)


def hashed_embedding_bag(
    weight: Tensor,
    values: Tensor,
    offsets: Tensor,
    feature_index: Tensor,
    coefficients: Tensor,
    num_rows: Tensor,
    mode: str = "sum",
    per_sample_weights: Tensor | None = None,
) -> Tensor:
    """(B, K, D) per-probe pooled rows of the shared ``weight`` (M, D); differentiable; see ``_library``."""
    return torch.ops.recsys_emb.hashed_embedding_bag(
        weight, values, offsets, feature_index, coefficients, num_rows, mode, per_sample_weights
    )


def sid_pieces(
    ids: Tensor, lengths: Tensor, item_offsets: Tensor, item_rows: Tensor, id_offset: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(T,) piece rows, (B,) new lengths, (T,) owning id index of item ``ids`` in bags ``lengths``."""
    return torch.ops.recsys_emb.sid_pieces(ids, lengths, item_offsets, item_rows, int(id_offset))


def extension_status() -> str:
    """One line for ``recsys-emb doctor``: is ``recsys_emb._C`` loaded, and which ops run compiled per device."""
    error = extension_error()
    head = "loaded" if error is None else f"not loaded ({error})"
    per_op = "; ".join(
        f"{name}: " + ", ".join(f"{dev.lower()}={impl}" for dev, impl in devices.items())
        for name, devices in kernel_status().items()
    )
    return f"{head}; {per_op}"
