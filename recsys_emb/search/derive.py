"""``derive_tables``: turn a DNIS / OptEmbed search result into REAL smaller tables.

The result is a :class:`~recsys_emb.modules.compact.CompactLayout` (which rows and columns survive,
id remap codes) plus the values of the compact tables, such that the
:class:`~recsys_emb.modules.compact.CompactEmbeddingBagCollection` built from them gives exactly the
output of the masked module it came from (the compact tables hold the masked values; everything
dropped was exactly zero).

Dims are rounded UP to a multiple of 4 (FBGEMM TBE kernels and fused optimizers need it) by adding
columns that were pruned, with zero values: the derived model's output is unchanged and retraining
may use them. A part whose kept dims are 0, or that keeps no row, is dropped; a feature with no part
left outputs zeros (a defined output, documented in docs/techniques/dnis.md and docs/techniques/optembed.md). When a
feature's full dim is not a multiple of 4 the rounding stops at the full dim.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recsys_emb.modules.dnis import DNISEmbeddingBagCollection
from recsys_emb.modules.optembed import OptEmbedEmbeddingBagCollection
from recsys_emb.modules.compact import (
    FBGEMM_DIM_MULTIPLE,
    CompactEmbeddingBagCollection,
    CompactLayout,
    PartSpec,
    round_up,
    save_layout,
)


def _pad_columns(columns: list[int], dim: int, multiple: int) -> list[int]:
    """Add the lowest unused columns until ``len`` is a multiple of ``multiple`` (or all ``dim`` used)."""
    target = min(round_up(len(columns), multiple), dim)
    used = set(columns)
    extra = [c for c in range(dim) if c not in used][: target - len(columns)]
    return sorted(columns + extra)


def _part_from_values(
    feature: str, ids: Tensor, values: Tensor, multiple: int
) -> tuple[Tensor, list[int], Tensor] | None:
    """From the masked values (n, D) of ids (n,): kept ids, kept (padded) columns, compact values."""
    nonzero = values != 0  # (n, D)
    keep_rows = nonzero.any(dim=1)  # (n,)
    if not bool(keep_rows.any()):
        return None
    columns = torch.nonzero(nonzero[keep_rows].any(dim=0)).flatten().tolist()
    columns = _pad_columns(columns, values.shape[1], multiple)
    return ids[keep_rows], columns, values[keep_rows][:, columns].clone()


def _assemble(
    feature_dims: list[tuple[str, int]], vocab: dict[str, int], parts_by_feature: dict[str, list[tuple[Tensor, list[int], Tensor]]]
) -> tuple[CompactLayout, dict[str, Tensor]]:
    parts: list[PartSpec] = []
    codes: dict[str, Tensor] = {}
    weights: dict[str, Tensor] = {}
    for f, _ in feature_dims:
        found = parts_by_feature.get(f, [])
        code = torch.full((vocab[f],), -1, dtype=torch.int64)
        n_parts = len(found)
        for p, (ids, columns, values) in enumerate(found):
            code[ids] = torch.arange(len(ids), dtype=torch.int64) * n_parts + p
            spec = PartSpec(f, p, len(ids), tuple(columns))
            parts.append(spec)
            weights[f"t_{spec.key}"] = values
        if code.numel() and int(code.max()) >= 2**31:
            raise ValueError(f"feature {f!r}: {vocab[f]} ids x {n_parts} parts overflow the int32 remap codes")
        codes[f] = code.to(torch.int32)
    layout = CompactLayout(list(feature_dims), parts, codes)
    layout.validate()
    return layout, weights


@torch.no_grad()
def derive_dnis(module: DNISEmbeddingBagCollection, multiple: int = FBGEMM_DIM_MULTIPLE) -> tuple[CompactLayout, dict[str, Tensor]]:
    """One part per (feature, frequency block): values ``alpha[block] * E * mask`` of the kept entries."""
    parts: dict[str, list] = {}
    alphas = module.alphas()
    for f in module.features:
        weight = module.table_weight(f).detach().float().cpu()  # (V, D)
        blocks = module.block_of(f).cpu()  # (V,)
        values = weight * alphas[f].detach().cpu()[blocks]  # (V, D)
        mask = module.entry_mask(f)
        if mask is not None:
            values = values * mask.cpu().to(values.dtype)
        parts[f] = []
        for b in range(module.num_blocks):
            ids = torch.nonzero(blocks == b).flatten()
            part = _part_from_values(f, ids, values[ids], multiple)
            if part is not None:
                parts[f].append(part)
    return _assemble(module.output_feature_dims(), dict(module.vocab), parts)


@torch.no_grad()
def derive_optembed(module: OptEmbedEmbeddingBagCollection, multiple: int = FBGEMM_DIM_MULTIPLE) -> tuple[CompactLayout, dict[str, Tensor]]:
    """One part per field: the rows above the field threshold, the first ``d_f`` dims (rounded up)."""
    parts: dict[str, list] = {}
    for f in module.features:
        dim = module.dims[f]
        d = dim if module.field_dims is None else module.field_dims[f]
        kept = module.kept_rows(f).cpu()
        ids = torch.nonzero(kept).flatten()
        if d == 0 or ids.numel() == 0:
            parts[f] = []
            continue
        columns = list(range(min(round_up(d, multiple), dim)))
        values = module.table_weight(f).detach().float().cpu()[ids][:, columns].clone()  # (n, C)
        values[:, d:] = 0.0  # rounding only adds zero columns
        parts[f] = [(ids, columns, values)]
    return _assemble(module.output_feature_dims(), dict(module.vocab), parts)


def derive_tables(module: nn.Module, multiple: int = FBGEMM_DIM_MULTIPLE) -> tuple[CompactLayout, dict[str, Tensor]]:
    """Compact layout + table values of a searched DNIS or OptEmbed module (see module docstring)."""
    if isinstance(module, DNISEmbeddingBagCollection):
        return derive_dnis(module, multiple)
    if isinstance(module, OptEmbedEmbeddingBagCollection):
        return derive_optembed(module, multiple)
    raise TypeError(f"derive_tables: expected a DNIS or OptEmbed module, got {type(module).__name__}")


def compact_module(layout: CompactLayout, weights: dict[str, Tensor]) -> CompactEmbeddingBagCollection:
    """The compact module of a layout, with the derived table values loaded."""
    module = CompactEmbeddingBagCollection(layout)
    with torch.no_grad():
        for name, value in weights.items():
            module.ebc.embedding_bags[name].weight.copy_(value)
    return module


def full_embedding_bytes(module: nn.Module, bytes_per_value: int = 4) -> int:
    """fp32 bytes of a module's stock tables (rows x dim)."""
    return sum(c.num_embeddings * c.embedding_dim for c in module.embedding_bag_configs()) * bytes_per_value


def layout_report(module: nn.Module, layout: CompactLayout) -> dict[str, Any]:
    """Bytes before/after and, per feature, kept rows and the dims of its parts."""
    per_feature = {}
    for f, dim in layout.feature_dims:
        parts = [p for p in layout.parts if p.feature == f]
        per_feature[f] = {
            "full_dim": dim,
            "vocab": int(layout.codes[f].numel()),
            "kept_rows": sum(p.num_rows for p in parts),
            "part_dims": [len(p.columns) for p in parts],
            "part_rows": [p.num_rows for p in parts],
        }
    before = full_embedding_bytes(module)
    after = layout.embedding_bytes()
    return {
        "embedding_parameters_before": before // 4,
        "embedding_parameters_after": after // 4,
        "embedding_bytes_before": before,
        "embedding_bytes_after": after,
        "compression": before / max(after, 1),
        "remap_bytes": layout.remap_bytes(),
        "features": per_feature,
    }


def save_derived(run_dir: str | Path, cfg: Any, train_model: nn.Module, layout: CompactLayout, weights: dict[str, Tensor]) -> tuple[Any, Path]:
    """Write ``layout.pt``, ``derived_config.yaml`` and ``derived_model.pt`` (a full CTR state dict).

    The derived config is ``cfg`` with the chain ``[{technique: {compact_layout: <abs layout path>}}]``; its
    model loads ``derived_model.pt`` in a fresh process (``build_ctr_model`` + ``load_state_dict``).
    Dense weights come from ``train_model`` (the searched ``CTRTrain``); table values from ``weights``.
    """
    import io

    from recsys_emb.config.io import save_config
    from recsys_emb.utils import atomic_write_bytes

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    layout_path = (run_dir / "layout.pt").resolve()
    save_layout(layout, layout_path)
    from recsys_emb.config.embedding import EmbeddingSpec, TableGroup, technique_entry

    (group,) = cfg.embedding.groups  # a search config (search_config): one group, chain [technique]
    technique = next(n for n, _ in (technique_entry(e, group.name) for e in group.chain) if n != "plain")
    new_cfg = dataclasses.replace(
        cfg, embedding=EmbeddingSpec(groups=[TableGroup(name=group.name, chain=[{technique: {"compact_layout": str(layout_path)}}])]),
        name=f"{cfg.name}_derived",
    )
    save_config(new_cfg, run_dir / "derived_config.yaml")
    state = {k: v.detach().cpu().clone() for k, v in train_model.state_dict().items() if not k.startswith("model.embedding.")}
    for name, value in weights.items():
        state[f"model.embedding.ebc.embedding_bags.{name}.weight"] = value
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(run_dir / "derived_model.pt", buffer.getvalue())
    return new_cfg, run_dir / "derived_model.pt"
