"""DNIS: differentiable neural input search (soft-selection weights per frequency block x dimension).

Paper: W. Cheng, Y. Shen, L. Huang, "Differentiable Neural Input Search for Recommender Systems",
arXiv:2006.04466, 2020; its journal version AutoSrh (IEEE TKDE 2022) is the form of the authors' code.

What it does: the ids of each feature are ordered by descending training frequency and split into
``L`` blocks; a weight ``alpha[f][b, :]`` (one per block ``b`` and embedding dimension) is
initialised to 1 and multiplied into every looked-up embedding of that block:
``e'(i) = alpha[f][block(i)] * E_f[i]``. The bi-level search (``recsys_emb.search.dnis``) alternates
a weight step on a training batch and an alpha step (loss + l1 * sum|alpha|, per-row normalised
gradient, clamp to [0, 1]) on a validation batch, then prunes the entries of ``|alpha * E|`` below a
threshold found by binary search for a target compression, and ``derive_tables`` turns what is left
into real smaller tables.

Layout: the big parameters are a stock ``EmbeddingBagCollection`` (``self.ebc``, sharded as usual);
``alpha`` is a small ``nn.ParameterDict`` (data-parallel under DMP); the id -> block maps are
buffers. The mask is a post-lookup transform.

Deviations / restrictions (see docs/techniques/dnis.md):
- the post-lookup mask needs the id of each bag, so every bag must hold at most one id (true for
  Criteo-style CTR data); multi-id bags raise a clear error, and tables must use SUM pooling;
- frequencies are counted on the training split (``frequency: data``), or taken from the id order
  (``frequency: index``: our Criteo vocabularies already number ids by descending frequency);
- blocks hold equal numbers of ids by default (``block_split: rows``) or equal occurrence mass
  (``block_split: mass``); the paper leaves the split to the user.

Reduction: all alpha == 1 and no pruning mask -> exactly the plain EBC (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.modules.spec import Tables, register_technique
from recsys_emb.modules.tracing import assert_all, fx_tracing, tracing


@dataclass
class DNISSearchConfig:
    """Settings of the bi-level search driver (``recsys-emb search dnis``); ignored by ``train``."""

    warmup_steps: int = 200  # plain training steps before the search (warm start)
    search_steps: int = 400  # alternating (weight step, alpha step) pairs
    alpha_lr: float = 0.01  # step size of the (normalised) alpha gradient
    l1: float = 1e-4  # weight of sum |alpha| in the alpha step's loss
    target_compression: float = 0.5  # fraction of embedding values to prune (0.5 = keep half)
    prune_by: str = "column"  # column: real (block, dim) columns (what the tables can drop); entry: single values
    retrain: bool = True  # retrain the derived compact model from scratch with the train loop

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_compression < 1.0:
            raise ValueError(f"search.target_compression must be in [0, 1), got {self.target_compression}")
        if self.prune_by not in ("column", "entry"):
            raise ValueError(f"search.prune_by must be 'column' or 'entry', got {self.prune_by!r}")
        if self.warmup_steps < 0 or self.search_steps < 0:
            raise ValueError("search.warmup_steps and search.search_steps must be >= 0")
        if self.alpha_lr <= 0 or self.l1 < 0:
            raise ValueError("search.alpha_lr must be > 0 and search.l1 >= 0")


@dataclass
class DNISOptions:
    """Options of the chain entry ``dnis: {...}`` (a post-lookup transform)."""

    num_blocks: int = 4  # L frequency blocks per feature
    block_split: str = "rows"  # rows: equal ids per block | mass: equal occurrence counts per block
    frequency: str = "data"  # data: count ids on the training split | index: ids already sorted by frequency
    compact_layout: str | None = None  # a derived layout (.pt): build the REAL compact model instead
    search: DNISSearchConfig = field(default_factory=DNISSearchConfig)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.block_split not in ("rows", "mass"):
            raise ValueError(f"block_split must be 'rows' or 'mass', got {self.block_split!r}")
        if self.frequency not in ("data", "index"):
            raise ValueError(f"frequency must be 'data' or 'index', got {self.frequency!r}")


@torch.fx.wrap
def single_ids(features: KeyedJaggedTensor, technique: str) -> dict[str, tuple[Tensor, Tensor]]:
    """Per feature ``(ids (B,), present (B,) bool)`` of a KJT whose bags hold at most one id each.

    Empty bags get id 0 and ``present == False`` (their pooled output is zero anyway). Every id is
    copied to its bag's slot (``repeat_interleave`` with the known output size, not a boolean-mask
    assignment, whose size is data-dependent: this traces under ``torch.export``). fx-wrapped with a
    TorchScript body: the TorchScript export records one call (callers index the result by their own,
    configured feature names) and the scripted program checks and splits every batch.
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for key, jt in features.to_dict().items():
        lengths, values = jt.lengths(), jt.values()  # (B,), (N,)
        if tracing():  # export: the check is a runtime assert of the exported program
            assert_all(lengths <= 1, f"{technique}: feature '{key}' has bags with several ids; the per-id post-lookup "
                       "mask needs at most one id per bag (CTR data); use the plain EBC for multi-id features")
        elif lengths.numel() > 0 and int(lengths.max()) > 1:
            raise ValueError(
                f"{technique}: feature '{key}' has bags with {int(lengths.max())} ids; the per-id post-lookup mask "
                "needs at most one id per bag (CTR data); use the plain EBC for multi-id features"
            )
        batch = lengths.numel()
        present = lengths.to(torch.bool)
        bag = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths.long(), output_size=values.numel())  # (N,)
        ids = torch.zeros(batch, dtype=torch.int64, device=lengths.device).index_copy(0, bag, values.to(torch.int64))  # (B,)
        out[key] = (ids, present)
    return out


def frequency_blocks(counts: np.ndarray, num_blocks: int, split: str = "rows") -> np.ndarray:
    """Block of every id: ids sorted by descending count (stable: ties keep id order), cut into blocks.

    Args:
        counts: (V,) occurrence counts per id.
        num_blocks: L.
        split: ``rows`` (equal ids per block) or ``mass`` (equal total count per block).

    Returns:
        (V,) int64 block index in [0, L); block 0 holds the most frequent ids.
    """
    vocab = len(counts)
    order = np.argsort(-counts, kind="stable")  # rank -> id
    if split == "rows":
        rank_block = (np.arange(vocab) * num_blocks) // max(vocab, 1)
    else:
        mass = np.cumsum(counts[order].astype(np.float64))
        total = mass[-1] if vocab and mass[-1] > 0 else 1.0
        rank_block = np.minimum(((mass - counts[order]) / total * num_blocks).astype(np.int64), num_blocks - 1)
    blocks = np.empty(vocab, dtype=np.int64)
    blocks[order] = rank_block
    return blocks


class DNISEmbeddingBagCollection(nn.Module):
    """Stock EBC + DNIS soft-selection weights ``alpha[f] (L, D_f)`` applied per looked-up id.

    Shapes: B batch, F features, L blocks, D_f dim of feature f, V_f vocabulary of f.

    Args:
        tables: stock table configs (SUM pooling).
        blocks: per feature, the (V_f,) int64 block of every id.
        num_blocks: L.
        device: where tables and alpha live (``meta`` for DMP; index buffers then stay on the CPU).
        inner: the lookup to mask (default: a stock EBC of ``tables``); ``tables`` then only give each
            feature's raw vocabulary (the id space of the blocks), e.g. for ``unified`` rows.

    Example::

        tables = [EmbeddingBagConfig(name="t_a", embedding_dim=4, num_embeddings=6, feature_names=["a"])]
        m = DNISEmbeddingBagCollection(tables, {"a": torch.tensor([0, 0, 0, 1, 1, 1])}, num_blocks=2)
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 5]), torch.tensor([1, 1]))
        #        example 0   example 1
        #  "a"    [1]         [5]
        out = m(kjt)  # KeyedTensor (2, 4): rows E[1] * alpha["a"][0], E[5] * alpha["a"][1]
    """

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        blocks: dict[str, Tensor],
        num_blocks: int,
        device: torch.device | str | None = None,
        inner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from recsys_emb.modules.compact import buffer_device, check_sum_pooling
        from recsys_emb.modules.contract import output_feature_dims

        device = torch.device(device) if device is not None else None
        if inner is None:
            check_sum_pooling(tables, "dnis")
            inner = EmbeddingBagCollection(tables=list(tables), device=device)
        self.ebc = inner  # the looked-up rows: a stock EBC, or any EBC-compatible layout (e.g. unified)
        self.num_blocks = num_blocks
        self.vocab: dict[str, int] = {f: cfg.num_embeddings for cfg in tables for f in cfg.feature_names}
        self.dims: dict[str, int] = dict(output_feature_dims(inner))
        self.features: list[str] = [f for f in self.dims]
        if sorted(self.features) != sorted(self.vocab):
            raise ValueError(f"dnis: the lookup's features {self.features} differ from the tables' {sorted(self.vocab)}")
        # Parameters directly on this module (not an nn.ParameterDict): DMP re-initialises meta
        # parameters through the OWNING module's reset_parameters().
        for i, f in enumerate(self.features):
            self.register_parameter(f"alpha_{i}", nn.Parameter(torch.ones(num_blocks, self.dims[f], device=device)))
        dev = buffer_device(device)
        for i, f in enumerate(self.features):
            b = blocks[f].to(torch.int64)
            if b.numel() != self.vocab[f] or (b.numel() and (int(b.min()) < 0 or int(b.max()) >= num_blocks)):
                raise ValueError(f"dnis: block map of {f!r} must have {self.vocab[f]} entries in [0, {num_blocks})")
            self.register_buffer(f"block_{i}", b.to(dev))
        self._entry_masks: dict[str, str] = {}  # feature -> buffer name of its (V_f, D_f) keep-mask

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for a in self.alphas().values():
                a.fill_(1.0)

    def alphas(self) -> dict[str, nn.Parameter]:
        """Feature -> its (L, D_f) soft-selection weights."""
        return {f: getattr(self, f"alpha_{i}") for i, f in enumerate(self.features)}

    def block_of(self, feature: str) -> Tensor:
        return getattr(self, f"block_{self.features.index(feature)}")

    def set_entry_masks(self, masks: dict[str, Tensor] | None) -> None:
        """Fix a pruning result: per feature a (V_f, D_f) bool keep-mask multiplied into the output."""
        for name in self._entry_masks.values():
            delattr(self, name)
        self._entry_masks = {}
        for i, f in enumerate(self.features):
            if masks is not None and f in masks:
                name = f"entry_mask_{i}"
                self.register_buffer(name, masks[f].to(torch.bool), persistent=False)
                self._entry_masks[f] = name

    def entry_mask(self, feature: str) -> Tensor | None:
        name = self._entry_masks.get(feature)
        return None if name is None else getattr(self, name)

    def scales(self, features: KeyedJaggedTensor) -> dict[str, Tensor]:
        """Per feature the (B, D_f) factor multiplied into the pooled output."""
        out = {}
        singles = single_ids(features, "dnis")
        for f in self.features:  # configured keys (a TorchScript export traces the KJT without its keys)
            ids = singles[f][0]
            block = self.block_of(f).to(ids.device)[ids]  # (B,)
            scale = getattr(self, f"alpha_{self.features.index(f)}")[block]  # (B, D_f)
            mask = self.entry_mask(f)
            if mask is not None:
                scale = scale * mask.to(ids.device)[ids].to(scale.dtype)  # (B, D_f)
            out[f] = scale
        return out

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.ebc(features)
        scales = self.scales(features)
        keys = self.features if fx_tracing() else pooled.keys()  # fx: the (unsharded) lookup's keys are ours
        factor = torch.cat([scales[k] for k in keys], dim=1)  # (B, sum D_f)
        return KeyedTensor(keys=pooled.keys(), length_per_key=pooled.length_per_key(), values=pooled.values() * factor)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.ebc.embedding_bag_configs()

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return [(f, self.dims[f]) for f in self.features]

    def table_weight(self, feature: str) -> Tensor:
        if not isinstance(self.ebc, EmbeddingBagCollection):
            raise TypeError(f"dnis: per-feature table weights exist only over plain tables, not {type(self.ebc).__name__}")
        for cfg in self.ebc.embedding_bag_configs():
            if feature in cfg.feature_names:
                return self.ebc.embedding_bags[cfg.name].weight
        raise KeyError(feature)


def _counts(data: Any, feature_index: int, vocab: int) -> np.ndarray:
    name, jagged = list(data.sparse_features)[feature_index], getattr(data, "jagged", {})
    ids = np.asarray(jagged[name][0] if name in jagged else data.sparse[:, feature_index])  # multi-valued: every bag entry
    counts = np.bincount(ids[ids >= 0], minlength=vocab)
    return counts[:vocab]


def block_maps(options: DNISOptions, tables: Sequence[EmbeddingBagConfig], data: Any | None,
               counts_by_feature: dict[str, np.ndarray] | None = None) -> dict[str, Tensor]:
    """The id -> block map of every feature, from training counts or from the id order.

    Counts come from ``counts_by_feature`` (feature -> (rows,) counts, given by sequence and graph
    families) or are counted on ``data`` (the CTR training split)."""
    out = {}
    for cfg in tables:
        for f in cfg.feature_names:
            vocab = cfg.num_embeddings
            if options.frequency == "data":
                if counts_by_feature is not None and f in counts_by_feature:
                    counts = np.asarray(counts_by_feature[f])[:vocab]
                    counts = np.concatenate([counts, np.zeros(vocab - len(counts), dtype=counts.dtype)])
                elif data is None:
                    raise ValueError(f"dnis: frequency 'data' needs the training counts of '{f}', which this model family "
                                     "does not provide; use frequency: index")
                else:
                    counts = _counts(data, list(data.sparse_features).index(f), vocab)
            else:
                counts = np.arange(vocab, 0, -1)  # id order == frequency order
            out[f] = torch.from_numpy(frequency_blocks(counts, options.num_blocks, options.block_split))
    return out


@register_technique("dnis", "post", DNISOptions, doc="differentiable search of dims per frequency block (Cheng et al. 2020)")
def build_dnis(options: DNISOptions, module: nn.Module, tables: Tables) -> nn.Module:
    """Chain post-transform ``dnis: {...}`` over the group's lookup (plain or unified rows); refused over a
    table that several features share (a row has one dim, but each feature has its own frequency blocks)."""
    tables.refuse_shared("dnis", "its dim search prices each feature's own rows (per-feature frequency blocks, "
                         "derived per-feature tables), but these features look up the same rows")
    raw = tables.feature_configs()
    if options.compact_layout is not None:
        return compact_from_layout(options.compact_layout, module, raw, "dnis")
    blocks = block_maps(options, raw, tables.context.get("data"), tables.context.get("counts"))
    return DNISEmbeddingBagCollection(raw, blocks, options.num_blocks, tables.device, inner=module)


def compact_from_layout(path: str, module: nn.Module, tables: Sequence[EmbeddingBagConfig], technique: str) -> nn.Module:
    """The derived compact tables of a search (``compact_layout``), which replace plain tables only."""
    from recsys_emb.modules.compact import CompactEmbeddingBagCollection, load_layout

    if type(module) is not EmbeddingBagCollection:
        raise ValueError(f"{technique}.compact_layout: derived compact tables replace plain tables, not "
                         f"{type(module).__name__}; derive over a chain whose layout is plain")
    layout = load_layout(path)
    derived, group = sorted(f for f, _ in layout.feature_dims), sorted(f for t in tables for f in t.feature_names)
    if derived != group:
        raise ValueError(f"{technique}.compact_layout {path} was derived for features {derived}, not this group's {group}")
    init = tables[0].weight_init_max if tables and tables[0].weight_init_max is not None else None
    return CompactEmbeddingBagCollection(layout, device=tables_device(module), init_bound=init)


def tables_device(module: nn.Module) -> torch.device | None:
    """The device of a module's parameters (None when it has none)."""
    return next((p.device for p in module.parameters()), None)
