"""Tracing support: the forward passes of the CTR and sequence models trace under ``torch.export`` (non-strict).

While a graph is traced the tensors hold no data, so eager-only idioms fail with
``GuardOnDataDependentSymNode``: a Python branch on a value (``if int(t.max()) > 1: raise``), a size
read from a value (``int(t.sum())``), an op whose output size depends on the data without an
``output_size`` hint. The modules keep their eager code (and its errors) and, where the two differ,
trace another form with the same result:

* checks become runtime asserts of the traced program (``torch._check`` on sizes,
  ``torch._assert_async`` on tensor values), so an exported program still refuses bad input;
* sizes come from shapes (symbolic) instead of tensor values;
* data-dependent branches (skip work when nothing needs it) take the general path.

:func:`tracing` is also True under ``torch.compile``, which then traces the same forms.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tracing() -> bool:
    """True while ``torch.export`` / ``torch.compile`` traces the forward (no data to branch on)."""
    return torch.compiler.is_compiling()


def assert_all(condition: Tensor, message: str) -> None:
    """Traced form of ``if not condition.all(): raise``: a runtime assert kept in the exported program."""
    torch._assert_async(condition.all(), message)
