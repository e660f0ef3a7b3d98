"""OptEmbed: learnable row pruning + supernet dimension search for embedding tables.

Paper: F. Lyu, X. Tang, H. Zhu, H. Guo, Y. Zhang, R. Tang, X. Liu, "OptEmbed: Learning Optimal
Embedding Table for Click-through Rate Prediction", CIKM 2022 (arXiv:2208.04482). Reference code:
github.com/fuyuanlyu/OptEmbed.

What it does, per field (= sparse feature) ``f`` with learnable threshold ``t_f``:

- row mask ``m(i) = step(||E_f[i]||_1 - t_f)`` (binary step, :class:`BinaryStep`), whose backward is
  the paper's piecewise straight-through estimate ``2 - 4|x|`` for ``|x| <= 0.4``, ``0.4`` for
  ``0.4 < |x| <= 1``, ``0`` beyond; the regulariser ``reg * sum_f exp(-t_f)`` (:meth:`aux_loss`)
  pushes thresholds up, i.e. prunes rows;
- supernet training: a prefix dimension mask (the first ``d`` of ``D`` dims) with ``d`` drawn
  uniformly per (sample, field) from the candidates in training mode; full dims in eval mode;
- after the evolutionary search (``recsys_emb.search.optembed``), fixed per-field dims
  (:meth:`set_field_dims`): the retrained model uses them with the fixed row mask.

Layout: stock ``EmbeddingBagCollection`` (sharded as usual) + a small ``threshold`` parameter
(data-parallel) + post-lookup masks.

Deviations (docs/techniques/optembed.md): at most one id per bag (the row mask needs the row, not the pooled
sum), SUM pooling; dims rounded up to multiples of 4 when tables are derived (the extra columns
start at zero). Reduction: thresholds at -inf and full dims -> exactly the plain EBC (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.modules.dnis import single_ids
from recsys_emb.modules.spec import Tables, register_technique
from recsys_emb.modules.tracing import fx_tracing

torch.fx.wrap("single_ids")  # this module's name of it: one call in a TorchScript export


class BinaryStep(torch.autograd.Function):
    """``(x > 0).float()`` forward; piecewise straight-through gradient backward (OptEmbed eq. / DST)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        a = x.abs()
        slope = torch.where(a <= 0.4, 2.0 - 4.0 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4), torch.zeros_like(a)))
        return grad * slope


def binary_step(x: Tensor) -> Tensor:
    return BinaryStep.apply(x)


@dataclass
class OptEmbedSearchConfig:
    """Settings of ``recsys-emb search optembed`` (supernet -> evolution -> derive -> retrain)."""

    supernet_steps: int = 600  # supernet training steps (tables, dense net and thresholds together)
    threshold_lr: float = 1e-3  # Adam lr of the thresholds
    generations: int = 10  # evolutionary search iterations
    keep: int = 4  # elites carried over unchanged each generation
    mutations: int = 8  # children by mutation per generation
    crossovers: int = 8  # children by crossover per generation
    mutation_prob: float = 0.1  # per-field probability to redraw a dim
    eval_rows: int | None = 20000  # validation rows scoring each candidate (None = all)
    budget: float | None = None  # max derived-table bytes (kept rows x dims rounded up to 4) of a candidate, as a fraction of the full tables
    retrain: bool = True  # retrain the derived compact model from scratch with the train loop

    def __post_init__(self) -> None:
        if self.keep < 1 or self.mutations < 0 or self.crossovers < 0 or self.generations < 1:
            raise ValueError("search: keep >= 1, mutations >= 0, crossovers >= 0, generations >= 1 are required")
        if not 0.0 < self.mutation_prob <= 1.0:
            raise ValueError(f"search.mutation_prob must be in (0, 1], got {self.mutation_prob}")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"search.budget must be in (0, 1] or null, got {self.budget}")


@dataclass
class OptEmbedOptions:
    """Options of the chain entry ``optembed: {...}`` (a post-lookup transform)."""

    threshold_init: float = 0.0  # initial t_f (the reference code starts at 0)
    threshold_reg: float = 1e-4  # reg in reg * sum_f exp(-t_f)
    dim_candidates: list[int] | None = None  # supernet dims to sample from (None = 1..D, the reference)
    field_dims: dict[str, int] | None = None  # fixed per-field dims (after the search); None = supernet
    compact_layout: str | None = None  # a derived layout (.pt): build the REAL compact model instead
    search: OptEmbedSearchConfig = field(default_factory=OptEmbedSearchConfig)


class OptEmbedEmbeddingBagCollection(nn.Module):
    """Stock EBC + OptEmbed row mask (learnable per-field L1 thresholds) + prefix dimension mask.

    Shapes: B batch, F fields (features), D_f dim of field f.

    Args:
        tables: stock table configs (SUM pooling).
        threshold_init: initial threshold of every field.
        threshold_reg: weight of ``sum exp(-t)`` in :meth:`aux_loss`.
        dim_candidates: dims the supernet samples uniformly (default 1..D_f per field).
        field_dims: fixed dims per field (disables sampling).
        device: device of tables and thresholds (``meta`` for DMP).
        inner: the lookup to mask (default: a stock EBC of ``tables``), e.g. ``unified`` rows; the row
            mask then prices the pooled row of each id.

    Example::

        tables = [EmbeddingBagConfig(name="t_a", embedding_dim=4, num_embeddings=6, feature_names=["a"])]
        m = OptEmbedEmbeddingBagCollection(tables, field_dims={"a": 2})
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 5]), torch.tensor([1, 1]))
        #        example 0   example 1
        #  "a"    [1]         [5]
        out = m(kjt)  # (2, 4): E[i][:2] where ||E[i]||_1 > t_a, zeros elsewhere
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        *,
        threshold_init: float = 0.0,
        threshold_reg: float = 0.0,
        dim_candidates: Sequence[int] | None = None,
        field_dims: dict[str, int] | None = None,
        device: torch.device | str | None = None,
        inner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from recsys_emb.modules.compact import check_sum_pooling
        from recsys_emb.modules.contract import output_feature_dims

        device = torch.device(device) if device is not None else None
        if inner is None:
            check_sum_pooling(tables, "optembed")
            inner = EmbeddingBagCollection(tables=list(tables), device=device)
        self.ebc = inner  # the looked-up rows: a stock EBC, or any EBC-compatible layout (e.g. unified)
        self.dims = dict(output_feature_dims(inner))
        self.features = list(self.dims)
        self.vocab = {f: cfg.num_embeddings for cfg in tables for f in cfg.feature_names}
        self.threshold_init, self.threshold_reg = float(threshold_init), float(threshold_reg)
        self.threshold = nn.Parameter(torch.full((len(self.features),), self.threshold_init, device=device))  # (F,)
        self.dim_candidates = sorted(set(int(d) for d in dim_candidates)) if dim_candidates else None
        if self.dim_candidates and (self.dim_candidates[0] < 1 or self.dim_candidates[-1] > min(self.dims.values())):
            raise ValueError(f"optembed: dim_candidates must lie in [1, {min(self.dims.values())}], got {self.dim_candidates}")
        self.field_dims: dict[str, int] | None = None
        self.set_field_dims(field_dims)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.threshold.fill_(self.threshold_init)

    def set_field_dims(self, field_dims: dict[str, int] | None) -> None:
        """Fix per-field dims (a search candidate); None returns to supernet sampling."""
        if field_dims is not None:
            missing = [f for f in self.features if f not in field_dims]
            bad = {f: d for f, d in field_dims.items() if f not in self.dims or not 0 <= d <= self.dims[f]}
            if missing or bad:
                raise ValueError(f"optembed field_dims: missing fields {missing}, out of range {bad}")
            field_dims = {f: int(field_dims[f]) for f in self.features}
        self.field_dims = field_dims

    def candidates(self, feature: str) -> list[int]:
        return self.dim_candidates or list(range(1, self.dims[feature] + 1))

    def row_masks(self, pooled: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per field the (B,) binary row mask ``step(||e||_1 - t_f)`` of each looked-up row."""
        return {f: binary_step(pooled[f].abs().sum(dim=1) - self.threshold[i]) for i, f in enumerate(self.features)}

    def dim_masks(self, batch: int, device: torch.device) -> dict[str, Tensor] | None:
        """Per field the (B, D_f) prefix mask: sampled (supernet, training), fixed, or None (full dims)."""
        if self.field_dims is not None:
            return {
                f: (torch.arange(self.dims[f], device=device) < self.field_dims[f]).expand(batch, -1) for f in self.features
            }
        if not self.training:
            return None
        out = {}
        for f in self.features:
            cands = torch.tensor(self.candidates(f), device=device)
            d = cands[torch.randint(len(cands), (batch,), device=device)]  # (B,) uniform over candidates
            out[f] = torch.arange(self.dims[f], device=device).unsqueeze(0) < d.unsqueeze(1)  # (B, D_f)
        return out

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        single_ids(features, "optembed")  # validates one id per bag
        pooled = self.ebc(features)
        per = pooled.to_dict()  # f -> (B, D_f)
        rows = self.row_masks(per)
        dims = self.dim_masks(pooled.values().shape[0], pooled.values().device)
        out = []
        for f in self.features if fx_tracing() else pooled.keys():  # fx: the (unsharded) lookup's keys are ours
            e = per[f] * rows[f].unsqueeze(1)  # (B, D_f)
            if dims is not None:
                e = e * dims[f].to(e.dtype)
            out.append(e)
        return KeyedTensor(keys=pooled.keys(), length_per_key=pooled.length_per_key(), values=torch.cat(out, dim=1))

    def aux_loss(self) -> Tensor | None:
        if self.threshold_reg == 0.0:
            return None
        return self.threshold_reg * torch.exp(-self.threshold).sum()

    def kept_rows(self, feature: str) -> Tensor:
        """(V_f,) bool: the rows whose L1 norm exceeds the field threshold (the row mask of every id)."""
        i = self.features.index(feature)
        weight = self.table_weight(feature)
        return (weight.detach().abs().sum(dim=1) - self.threshold.detach()[i]) > 0

    def table_weight(self, feature: str) -> Tensor:
        if not isinstance(self.ebc, EmbeddingBagCollection):
            raise TypeError(f"optembed: per-feature table weights exist only over plain tables, not {type(self.ebc).__name__}")
        for cfg in self.ebc.embedding_bag_configs():
            if feature in cfg.feature_names:
                return self.ebc.embedding_bags[cfg.name].weight
        raise KeyError(feature)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.ebc.embedding_bag_configs()

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return [(f, self.dims[f]) for f in self.features]


@register_technique("optembed", "post", OptEmbedOptions, doc="row pruning + dim search with a supernet (Lyu et al. 2022)")
def build_optembed(options: OptEmbedOptions, module: nn.Module, tables: Tables) -> nn.Module:
    """Chain post-transform ``optembed: {...}`` over the group's lookup (plain or unified rows)."""
    from recsys_emb.modules.dnis import compact_from_layout

    tables.refuse_shared("optembed", "it prunes and sizes each feature's own rows (a threshold and a dim per feature, "
                         "derived per-feature tables), but these features look up the same rows")
    raw = tables.feature_configs()
    if options.compact_layout is not None:
        return compact_from_layout(options.compact_layout, module, raw, "optembed")
    return OptEmbedEmbeddingBagCollection(
        raw,
        threshold_init=options.threshold_init,
        threshold_reg=options.threshold_reg,
        dim_candidates=options.dim_candidates,
        field_dims=options.field_dims,
        device=tables.device,
        inner=module,
    )
