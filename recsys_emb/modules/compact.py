"""The REAL compact embedding module a dimension/row search ends in (DNIS, OptEmbed).

A search result is, per original feature ``f`` (full output dim ``D_f``), a list of *parts*: each
part is a stock table holding a subset of ``f``'s rows and a subset of its output columns. DNIS gives
one part per frequency block (each block keeps its own columns); OptEmbed gives one part per feature
(the kept rows, the first ``d_f`` columns). Ids in no part (pruned rows) are dropped from their bag,
so with SUM pooling they contribute exactly zero; a feature with no part at all outputs zeros.

:class:`CompactEmbeddingBagCollection` is

1. a parameter-free pre-lookup transform :class:`PartRemap` (``KJT -> KJT``): id ``i`` of feature
   ``f`` -> local row of its part, under the key ``f@p`` of that part; pruned ids are removed;
2. a stock ``torchrec.EmbeddingBagCollection`` with one table per part (``t_f@p``, mixed dims), which
   DistributedModelParallel shards like any other (the remap runs before its input all-to-all);
3. a parameter-free post-lookup scatter: each part's pooled output is added into its columns of a
   ``(B, D_f)`` zero tensor, so the model above sees the same ``KeyedTensor`` layout as before the
   search (DLRM's dot interaction and DeepFM's FM need one shared dim).

Why drop pruned ids instead of mapping them to a shared zero row: a zero row inside a trained table
receives gradient updates during retraining and stops being zero; an empty bag stays exactly zero.
SUM pooling is required for this to be exact (checked).

The layout (``feature_dims``, ``parts``, per-feature int32 ``codes``) is saved by :func:`save_layout`
to a ``.pt`` file read with ``torch.load(weights_only=True)``; an experiment selects it with
the chain entry ``{dnis|optembed: {compact_layout: PATH}}``, so a derived model is rebuilt
in a fresh process from its config + layout and then loads its ``model.pt``.

It lives in ``recsys_emb.modules`` (not ``recsys_emb.search``) because the technique modules build it
from a config: ``modules/`` never depends on ``search/``. ``recsys_emb.search.compact`` re-exports it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.utils import atomic_write_bytes

LAYOUT_FORMAT = 1
FBGEMM_DIM_MULTIPLE = 4


@dataclass(frozen=True)
class PartSpec:
    """One compact table: ``num_rows`` rows of ``feature``, written into output ``columns`` of it."""

    feature: str
    index: int  # part number within the feature (the key is f"{feature}@{index}")
    num_rows: int
    columns: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.feature}@{self.index}"


@dataclass
class CompactLayout:
    """A search result as real tables.

    Args:
        feature_dims: ``[(feature, D_f), ...]`` in the output order of the original module.
        parts: the compact tables.
        codes: per feature, an int32 tensor over the feature's ORIGINAL ids: ``local_row * P_f + part``
            (``P_f`` = number of parts of the feature) or ``-1`` for a pruned id.
    """

    feature_dims: list[tuple[str, int]]
    parts: list[PartSpec]
    codes: dict[str, Tensor]

    def num_parts(self, feature: str) -> int:
        return sum(1 for p in self.parts if p.feature == feature)

    def embedding_bytes(self, bytes_per_value: int = 4) -> int:
        return sum(p.num_rows * len(p.columns) for p in self.parts) * bytes_per_value

    def remap_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.codes.values())

    def to_dict(self) -> dict:
        return {
            "format": LAYOUT_FORMAT,
            "feature_dims": [[f, int(d)] for f, d in self.feature_dims],
            "parts": [
                {"feature": p.feature, "index": p.index, "num_rows": p.num_rows, "columns": list(p.columns)} for p in self.parts
            ],
            "codes": {f: c.to(torch.int32).contiguous() for f, c in self.codes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "layout") -> CompactLayout:
        if data.get("format") != LAYOUT_FORMAT:
            raise ValueError(f"{where}: unsupported compact layout format {data.get('format')!r} (expected {LAYOUT_FORMAT})")
        feature_dims = [(str(f), int(d)) for f, d in data["feature_dims"]]
        parts = [PartSpec(str(p["feature"]), int(p["index"]), int(p["num_rows"]), tuple(int(c) for c in p["columns"])) for p in data["parts"]]
        layout = cls(feature_dims, parts, {str(f): c for f, c in data["codes"].items()})
        layout.validate(where)
        return layout

    def validate(self, where: str = "layout") -> None:
        dims = dict(self.feature_dims)
        for p in self.parts:
            if p.feature not in dims:
                raise ValueError(f"{where}: part {p.key} names unknown feature {p.feature!r}")
            if p.num_rows < 1 or not p.columns:
                raise ValueError(f"{where}: part {p.key} is empty ({p.num_rows} rows, {len(p.columns)} columns): drop it")
            if len(set(p.columns)) != len(p.columns) or min(p.columns) < 0 or max(p.columns) >= dims[p.feature]:
                raise ValueError(f"{where}: part {p.key} has bad columns {p.columns} for dim {dims[p.feature]}")
        for f, _ in self.feature_dims:
            if f not in self.codes:
                raise ValueError(f"{where}: no id codes for feature {f!r}")
            n = self.num_parts(f)
            indices = sorted(p.index for p in self.parts if p.feature == f)
            if indices != list(range(n)):
                raise ValueError(f"{where}: parts of {f!r} must be numbered 0..{n - 1}, got {indices}")


def save_layout(layout: CompactLayout, path: str | Path) -> None:
    """Write ``layout`` atomically as a ``.pt`` of plain containers + int32 tensors."""
    buffer = io.BytesIO()
    torch.save(layout.to_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_layout(path: str | Path) -> CompactLayout:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compact layout not found: {path}")
    return CompactLayout.from_dict(torch.load(path, map_location="cpu", weights_only=True), where=str(path))


def round_up(dim: int, multiple: int = FBGEMM_DIM_MULTIPLE) -> int:
    return -(-dim // multiple) * multiple


def buffer_device(device: torch.device | None) -> torch.device | None:
    """Where index buffers of a module built on ``device`` go: the CPU for ``meta``, else ``device``."""
    # DMP zero-fills META buffers; index buffers are therefore built on the CPU (DMP's data-parallel
    # wrapper moves them to the training device).
    return torch.device("cpu") if device is not None and device.type == "meta" else device


class PartRemap(nn.Module):
    """Parameter-free ``KJT -> KJT``: original ids -> (part key, local row); pruned ids removed.

    Output keys are the part keys ``f@p`` in layout order; every bag keeps its position (stride B)
    and the order of its ids. Vectorised over all features: one code gather, one stable sort by
    (part, bag), one bincount. Input keys outside the layout are ignored.
    """

    def __init__(self, layout: CompactLayout, device: torch.device | None = None) -> None:
        super().__init__()
        self.features = [f for f, _ in layout.feature_dims]
        self.part_keys = [p.key for p in layout.parts]
        slot_of = {(p.feature, p.index): i for i, p in enumerate(layout.parts)}
        dev = buffer_device(device)
        codes = [layout.codes[f].to(torch.int32) for f in self.features]
        vocab = [c.numel() for c in codes]
        nparts = [layout.num_parts(f) for f in self.features]
        slots = [slot_of[(f, p)] for f, n in zip(self.features, nparts) for p in range(n)]

        def offsets(sizes: list[int]) -> Tensor:
            return torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)

        def buffer(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.to(dev), persistent=False)

        buffer("codes", torch.cat(codes) if codes else torch.empty(0, dtype=torch.int32))  # (sum V_f,)
        buffer("code_offset", offsets(vocab))  # (F,)
        buffer("vocab", torch.tensor(vocab, dtype=torch.int64))  # (F,)
        buffer("nparts", torch.tensor(nparts, dtype=torch.int64))  # (F,)
        buffer("slots", torch.tensor(slots, dtype=torch.int64))  # (P,) output key index of (f, p)
        buffer("slot_offset", offsets(nparts))  # (F,)
        self._key_maps: dict[tuple[str, ...], Tensor] = {}

    def _feature_of_key(self, keys: list[str], device: torch.device) -> Tensor:
        cached = self._key_maps.get(tuple(keys))
        if cached is None or cached.device != device:
            index = {f: i for i, f in enumerate(self.features)}
            cached = torch.tensor([index.get(k, -1) for k in keys], dtype=torch.int64, device=device)
            self._key_maps[tuple(keys)] = cached
        return cached

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        batch, keys = features.stride(), features.keys()
        lengths, values = features.lengths(), features.values()  # (K*B,), (N,)
        device = values.device
        segment = torch.repeat_interleave(torch.arange(len(keys) * batch, device=device), lengths)  # (N,)
        feat = self._feature_of_key(keys, device)[segment // batch]  # (N,) layout feature or -1
        bag = segment % batch  # (N,)
        ids = values.to(torch.int64)
        ours = feat >= 0
        feat, bag, ids = feat[ours], bag[ours], ids[ours]
        bad = (ids < 0) | (ids >= self.vocab[feat])
        if bool(bad.any()):
            f = self.features[int(feat[bad][0])]
            raise ValueError(f"feature {f!r}: ids must be in [0, {int(self.vocab[feat[bad][0]])}), got {int(ids[bad][0])}")
        code = self.codes[self.code_offset[feat] + ids].to(torch.int64)  # (N,) local_row * P_f + part, or -1
        kept = code >= 0
        code, feat, bag = code[kept], feat[kept], bag[kept]
        nparts = self.nparts[feat]
        slot = self.slots[self.slot_offset[feat] + code % nparts]  # (M,) output key index
        sort_key = slot * batch + bag  # (M,)
        order = torch.sort(sort_key, stable=True).indices
        out_lengths = torch.bincount(sort_key, minlength=len(self.part_keys) * batch)  # (P*B,)
        return KeyedJaggedTensor.from_lengths_sync(
            keys=self.part_keys, values=(code // nparts)[order], lengths=out_lengths.to(lengths.dtype), stride=batch
        )


class CompactEmbeddingBagCollection(nn.Module):
    """EBC-compatible module of a derived search result: remap -> stock mixed-dim EBC -> column scatter.

    Shapes: B batch, F original features with output dims D_f; part p of f has R_p rows, C_p columns.

    Args:
        layout: the search result (see :class:`CompactLayout`).
        device: where the tables live (``meta`` for DistributedModelParallel).
        init_bound: optional uniform(+-bound) table init (else TorchRec's default).

    Example::

        layout = CompactLayout([("a", 8)], [PartSpec("a", 0, num_rows=3, columns=(0, 1, 2, 3))],
                               {"a": torch.tensor([0, -1, 1 * 1 + 0, -1, 2 * 1 + 0], dtype=torch.int32)})
        m = CompactEmbeddingBagCollection(layout)
        kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([0, 1]), torch.tensor([1, 1]))
        #        example 0   example 1
        #  "a"    [0]         [1] (pruned -> zeros)
        m(kjt).values().shape  # (2, 8); columns 4..7 are zeros
    """

    def __init__(self, layout: CompactLayout, device: torch.device | str | None = None, init_bound: float | None = None) -> None:
        super().__init__()
        layout.validate()
        device = torch.device(device) if device is not None else None
        self.layout_dims = list(layout.feature_dims)
        self.parts = list(layout.parts)
        if not self.parts:
            raise ValueError("the compact layout keeps no rows at all: every feature was pruned entirely")
        init = {} if init_bound is None else {"weight_init_min": -init_bound, "weight_init_max": init_bound}
        tables = [
            EmbeddingBagConfig(
                name=f"t_{p.key}", embedding_dim=len(p.columns), num_embeddings=p.num_rows, feature_names=[p.key],
                pooling=PoolingType.SUM, **init,
            )
            for p in self.parts
        ]
        self.remap = PartRemap(layout, device)
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        dev = buffer_device(device)
        for i, p in enumerate(self.parts):
            self.register_buffer(f"columns_{i}", torch.tensor(p.columns, dtype=torch.int64, device=dev), persistent=False)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.ebc(self.remap(features)).to_dict()  # part key -> (B, C_p)
        batch = features.stride()
        ref = next(iter(pooled.values()))
        outputs = {f: torch.zeros(batch, d, dtype=ref.dtype, device=ref.device) for f, d in self.layout_dims}
        for i, p in enumerate(self.parts):
            cols = getattr(self, f"columns_{i}")
            outputs[p.feature] = outputs[p.feature].index_add(1, cols, pooled[p.key])  # (B, D_f)
        keys = [f for f, _ in self.layout_dims]
        return KeyedTensor(
            keys=keys, length_per_key=[d for _, d in self.layout_dims], values=torch.cat([outputs[k] for k in keys], dim=1)
        )

    def output_feature_dims(self) -> list[tuple[str, int]]:
        return list(self.layout_dims)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.ebc.embedding_bag_configs()


def check_sum_pooling(tables: Sequence[EmbeddingBagConfig], technique: str) -> None:
    bad = [t.name for t in tables if t.pooling != PoolingType.SUM]
    if bad:
        raise ValueError(f"{technique}: tables {bad} do not use SUM pooling; the post-lookup masks are exact only for SUM")
