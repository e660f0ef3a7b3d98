"""Bytes of a built embedding module, and the settings of each layout that meet a byte budget.

Every layout keeps its rows in stock TorchRec collections wherever they sit in the module: plain
tables, the shared tables of ``hash`` / ``unified``, the quotient and remainder tables of ``qr``, the
part tables of a derived DNIS / OptEmbed model (``CompactEmbeddingBagCollection``), and the same after
``recsys_emb.inference.quantize`` (quantised collections). :func:`embedding_bytes` therefore counts
those collections' tables for any technique chain, and separates what is not a table:

* ``dense``: trained parameters outside the tables, i.e. the post-lookup techniques' small weights
  (DNIS alphas, OptEmbed thresholds): data-parallel, counted apart from the tables;
* ``buffers``: untrained state a server also needs: a derived model's id remap codes (one int32 per
  original id, ``CompactLayout.remap_bytes``), hash coefficients, qr's collision counts.

Optimizer state is never counted. The table total equals ``search.derive.full_embedding_bytes`` (a
module's own ``embedding_bag_configs``) and ``4 x train.trainer.embedding_parameter_count``; with
``bytes_per_value=None`` the stored bytes per table come from ``inference.quantize.table_bytes``
(dtype-aware, quantised rows with their scale/bias and row padding).

:func:`budget_options` turns a plain model's bytes and a fraction into the explicit settings of
``hash`` (rows per table), ``unified`` (rows of the shared table) and ``qr`` (collisions per feature)
whose tables fill that budget to within one row: the points of the budget frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys_emb.modules.qr import collisions_for_budget, qr_rows
from recsys_emb.modules.unified import split_rows

FRONTIER_FRACTIONS = (1.0, 1 / 4, 1 / 16, 1 / 64)


@dataclass(frozen=True)
class EmbeddingBytes:
    """What an embedding module holds, in bytes (see the module docstring)."""

    tables: dict[str, int] = field(default_factory=dict)  # table name -> bytes of its rows
    dense: dict[str, int] = field(default_factory=dict)  # parameter outside the tables -> bytes (post techniques)
    buffers: dict[str, int] = field(default_factory=dict)  # buffer -> bytes (remap codes, hash coefficients, ...)

    @property
    def embedding(self) -> int:
        """Bytes of all the tables."""
        return sum(self.tables.values())

    @property
    def dense_total(self) -> int:
        return sum(self.dense.values())

    @property
    def buffer_total(self) -> int:
        return sum(self.buffers.values())

    def as_dict(self) -> dict[str, Any]:
        """Totals and the per-table / per-tensor bytes, for a JSON report."""
        return {"embedding_bytes": self.embedding, "dense_bytes": self.dense_total, "buffer_bytes": self.buffer_total,
                "tables": dict(self.tables), "dense": dict(self.dense), "buffers": dict(self.buffers)}


def _table_holders(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every stock or quantised TorchRec collection in ``module``."""
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEC

    kinds = (EmbeddingBagCollection, EmbeddingCollection, QuantEBC, QuantEC)
    return [(name, m) for name, m in module.named_modules() if isinstance(m, kinds)]


def _configs(holder: nn.Module) -> list[Any]:
    fn = getattr(holder, "embedding_bag_configs", None) or getattr(holder, "embedding_configs")
    return list(fn())


def embedding_bytes(module: nn.Module, bytes_per_value: int | None = 4) -> EmbeddingBytes:
    """Bytes of an unsharded embedding module's tables (any technique chain), its dense weights and buffers.

    Args:
        module: a pooled / sequence module (or a whole model: then ``dense`` holds its MLPs too); built on
            any device, ``meta`` included. A DMP-sharded model is not handled (its tables are shards).
        bytes_per_value: bytes of one table value (4: fp32 rows, ``rows x dim x 4``); None: the bytes the
            tables actually store (:func:`recsys_emb.inference.quantize.table_bytes`: their dtypes,
            quantised rows with scale/bias and row alignment). Dense parameters and buffers are always
            counted at their own element size.

    Raises:
        ValueError: two tables share a name.
    """
    holders = _table_holders(module)
    tables: dict[str, int] = {}
    if bytes_per_value is None:
        from recsys_emb.inference.quantize import table_bytes

        tables = table_bytes(module)
    else:
        for _, holder in holders:
            for c in _configs(holder):
                if c.name in tables:
                    raise ValueError(f"embedding_bytes: two tables are named {c.name!r}")
                tables[c.name] = int(c.num_embeddings) * int(c.embedding_dim) * int(bytes_per_value)
    root = any(name == "" for name, _ in holders)  # the module is itself a collection: nothing is outside it
    inside = tuple(f"{name}." for name, _ in holders if name)

    def outside(name: str) -> bool:
        return not root and not name.startswith(inside)

    dense = {n: p.numel() * p.element_size() for n, p in module.named_parameters() if outside(n)}
    buffers = {n: b.numel() * b.element_size() for n, b in module.named_buffers() if outside(n)}
    return EmbeddingBytes(tables, dense, buffers)


# ------------------------------------------------------------------------------------------ frontier
def budget_options(
    plain: nn.Module | Sequence[EmbeddingBagConfig], fraction: float, *, operation: str = "mult", bytes_per_value: int = 4,
) -> dict[str, dict[str, Any] | None]:
    """The chain options of ``hash``, ``unified`` and ``qr`` whose tables fill ``fraction`` of the plain tables' bytes.

    The target is ``int(fraction x plain bytes)``. Every setting uses the budget to within one plain row
    (``dim x bytes_per_value``) and never exceeds it: ``hash`` splits ``floor(target / row)`` rows over
    the tables in proportion to their vocabularies (what ``hash: {budget_bytes}`` does), ``unified`` puts
    them in one shared table, ``qr`` takes the largest collision counts that fit
    (:func:`recsys_emb.modules.qr.collisions_for_budget`). The options are explicit (``num_rows``,
    ``collisions``), so a report can print them; they build the same tables as the budget options.

    Args:
        plain: the plain pooled module (its ``embedding_bag_configs``) or its table configs; one dim.
        fraction: of the plain bytes, e.g. one of :data:`FRONTIER_FRACTIONS`.
        operation: qr's operation (``concat`` rows are half as wide, so twice as many fit).
        bytes_per_value: bytes of one table value.

    Returns:
        technique -> its options, or None where no setting of the technique meets the budget: below its
        fewest rows (one row per table for ``hash``, one row for ``unified``, about ``2 sqrt(V)`` rows per
        feature for ``qr``) or, for ``qr``, above its most (``m = V`` everywhere, ``V + 1`` rows per feature:
        ``concat``'s half-wide rows reach only about half the plain bytes).
        qr's ``collisions`` are per feature, in the tables' feature order (a shared table's features alike).
    """
    configs = list(plain.embedding_bag_configs()) if isinstance(plain, nn.Module) else list(plain)
    dims = {int(c.embedding_dim) for c in configs}
    if len(dims) != 1:
        raise ValueError(f"budget_options: the plain tables must share one dim, got {sorted(dims)}")
    if fraction <= 0:
        raise ValueError(f"budget_options: fraction must be > 0, got {fraction}")
    dim = dims.pop()
    vocab = [int(c.num_embeddings) for c in configs]
    row_bytes = dim * bytes_per_value
    target = int(fraction * sum(vocab) * row_bytes)
    rows = target // row_bytes
    out: dict[str, dict[str, Any] | None] = {
        "hash": {"num_rows": split_rows(target, vocab, row_bytes)} if rows >= len(vocab) else None,
        "unified": {"num_rows": rows} if rows >= 1 else None,
    }
    table_dim = dim // 2 if operation == "concat" else dim
    try:
        per_table = collisions_for_budget(vocab, target, table_dim * bytes_per_value)
    except ValueError:  # below the fewest rows
        out["qr"] = None
    else:  # above the most (m = V everywhere) the budget is not spent: not a point of this budget
        used = sum(sum(qr_rows(v, m)) for v, m in zip(vocab, per_table)) * table_dim * bytes_per_value
        collisions = [m for c, m in zip(configs, per_table) for _ in c.feature_names]
        out["qr"] = {"collisions": collisions, "operation": operation} if used > target - row_bytes else None
    return out
