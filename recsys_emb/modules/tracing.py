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

TorchScript (``--format torchscript``) goes through ``torch.fx`` symbolic tracing (TorchRec's tracer)
instead, where :func:`fx_tracing` is True: the KJT is a proxy whose keys and sizes are unknown, no
Python control flow may read it, and the traced graph is then compiled by ``torch.jit.script``. There
the modules keep their keys fixed at construction and put what must read the batch's keys or sizes
in small ``torch.fx.wrap``-ed functions with TorchScript-compatible bodies: fx records one call, and
TorchScript compiles the body, so the check or plan runs per batch in the scripted program. Value
checks become ``torch._assert`` (raised by the scripted program).
"""

from __future__ import annotations

import torch
from torch import Tensor


def tracing() -> bool:
    """True while ``torch.export`` / ``torch.compile`` traces the forward (no data to branch on)."""
    return torch.compiler.is_compiling()


def fx_tracing() -> bool:
    """True while ``torch.fx`` symbolically traces the forward (TorchScript export; not ``torch.export``)."""
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def assert_all(condition: Tensor, message: str, scripted: bool = False) -> None:
    """Traced form of ``if not condition.all(): raise``: a runtime assert kept in the exported program.

    ``scripted`` (fx tracing for TorchScript, :func:`fx_tracing`): ``torch._assert``, which TorchScript
    compiles to a raise (it would drop an ``_assert_async`` whose result nothing uses)."""
    if scripted:
        torch._assert(condition.all(), message)
    else:
        torch._assert_async(condition.all(), message)
