"""Inference quantisation of embedding tables: stock TorchRec collections -> FBGEMM IntN TBE modules.

:func:`quantize_tables` swaps every stock ``torchrec.EmbeddingBagCollection`` (and
``torchrec.EmbeddingCollection``) anywhere in a model -- including the ones inside our technique
modules (``TransformedEmbeddingBagCollection.ebc``, ``UnifiedEmbeddingBagCollection.lookup.ebc``,
``DNIS/OptEmbedEmbeddingBagCollection.ebc``, ``CompactEmbeddingBagCollection.ebc``, the groups of
``PooledGroups`` / ``SequenceLookup``) -- for TorchRec's inference modules
``torchrec.quant.embedding_modules.EmbeddingBagCollection`` / ``EmbeddingCollection`` (printed as
``QuantizedEmbeddingBagCollection``). Those hold the tables in one FBGEMM
``IntNBitTableBatchedEmbeddingBagsCodegen`` per pooling type, whose forward is the op
``fbgemm::int_nbit_split_embedding_codegen_lookup_function`` (CPU and CUDA kernels; fbgemm_gpu registers a
meta kernel, so the module goes through ``torch.export``). The swap is TorchRec's own
``from_float`` (what ``torchrec.inference.modules.quantize_embeddings`` / ``quantize_inference_model``
run through ``torch.ao.quantization.quantize_dynamic``), called per module with a ``QuantConfig``
whose ``per_table_weight_dtype`` gives every table its dtype; weights are quantised by
``fbgemm::FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf`` (row-wise asymmetric: per row an fp16
scale and an fp16 bias, ``x ~ scale * q + bias``).

dtypes: ``fp32`` (alias ``none``; kept: a collection whose tables all stay fp32 is not swapped),
``fp16``, ``int8``, ``int4``, ``int2``. ``dtype`` is one name for every table, or a mapping table
name -> name whose key ``"*"`` is the default of the tables it does not name (else they stay fp32).
Measured on the composition cells' tiny models (dim 8, logits |.| <= 2.2): max |logit - fp32 logit|
is <= 3e-4 for fp16, <= 3.3e-3 for int8, <= 8e-2 for int4, <= 0.32 for int2 (the worst: DeepFM, whose FM
term sums products of rows; tests/inference/test_quantize.py).

Bytes per table (:func:`table_bytes`), exactly what the TBE allocates for its rows::

    rows * round_up(ceil(dim * bits / 8) + sb, row_alignment)     sb = 4 (fp16 scale + bias) for int8/4/2, else 0

with ``row_alignment`` 16 (TorchRec's default, FBGEMM's on CUDA; its CPU kernels also take 1); fp32 tables of a stock
collection are ``rows * dim * 4``. FBGEMM also pads each table's region of its one weight buffer to
128 bytes (not counted). At small dims the row padding dominates: dim 8 is 16 bytes per row for fp16,
int8, int4 and int2 alike (fp32: 32); ``row_alignment=1`` (CPU serving) stores unpadded rows.

Packing: FBGEMM's row-wise quantiser needs a row's packed payload to be whole 2-byte units,
``dim * bits % 16 == 0`` (int8: even dims, int4: multiples of 4, int2: multiples of 8; the TBE itself
asserts whole bytes). Rule: a table named explicitly in the mapping whose dim does not pack is an
error naming it; a table that gets its dtype from a single name or ``"*"`` falls back to the
narrowest wider type that packs (int2 -> int4 -> int8 -> fp16), with a warning naming it.

The per-table ``embedding_bags[name].weight`` byte views TorchRec registers on the quantised module
(state-dict compatibility) are dropped unless ``weight_views=True``: they alias the TBE's weight
buffer, which ``torch.export`` lifts as a constant of its own, so an exported program would store
every table twice (16.2 MB instead of 8.1 MB for 8.08 MB of int8 rows). The packed rows then live
only in the TBE (``module._emb_modules[i].weights_host``), outside ``state_dict()``. TorchRec's
``register_tbes`` is left off: a registered TBE carries an ``fbgemm::AtomicCounter`` script object
that ``torch.export`` cannot fake.

Limitations: inference only (the model is put in eval mode; the quantised tables have no gradient
and are not parameters); the swap is in place (deep-copy first to keep the float model);
tables must be materialised (not ``meta``); sharded (DMP) models are not handled; a module that
reads table weights directly breaks on quantised tables: ``DNIS/OptEmbed.table_weight`` (search-time
only) raise ``TypeError``; LightGCN's ``full`` mode (graph training model) reads raw weights, so
quantise a serving module of its final embeddings instead; ``UnifiedEmbeddingBagCollection`` falls back from its fused float kernel to the stock
transform + lookup path when its lookup is quantised. OptEmbed's row mask is computed on the
dequantised rows, so a row whose L1 norm is within the quantisation error of its threshold can flip.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torchrec.modules.embedding_configs import DATA_TYPE_NUM_BITS, DataType, QuantConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.quant.embedding_modules import DEFAULT_ROW_ALIGNMENT, MODULE_ATTR_ROW_ALIGNMENT_INT
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

DTYPES: dict[str, DataType] = {
    "fp32": DataType.FP32, "fp16": DataType.FP16, "int8": DataType.INT8, "int4": DataType.INT4, "int2": DataType.INT2,
}
ALIASES = {"none": "fp32"}
_TORCH_DTYPE: dict[DataType, torch.dtype] = {  # TorchRec's dtype_to_data_type inverts these
    DataType.FP32: torch.float32, DataType.FP16: torch.float16, DataType.INT8: torch.int8,
    DataType.INT4: torch.quint4x2, DataType.INT2: torch.quint2x4,
}
_INT = (DataType.INT8, DataType.INT4, DataType.INT2)
_FALLBACK = {"int2": "int4", "int4": "int8", "int8": "fp16"}
SCALE_BIAS_BYTES = 4  # fp16 scale + fp16 bias per row of an int8 / int4 / int2 table
_FLOAT = (EmbeddingBagCollection, EmbeddingCollection)
_QUANT = (QuantEmbeddingBagCollection, QuantEmbeddingCollection)


def packs(dim: int, dtype: str) -> bool:
    """Whether FBGEMM can store a ``dim``-wide row as ``dtype`` (intN: a payload of whole 2-byte units)."""
    data = DTYPES[ALIASES.get(dtype, dtype)]
    return data not in _INT or dim * DATA_TYPE_NUM_BITS[data] % 16 == 0


def row_bytes(dim: int, dtype: str, row_alignment: int = DEFAULT_ROW_ALIGNMENT) -> int:
    """Bytes of one stored row: ``round_up(ceil(dim * bits / 8) + scale/bias, row_alignment)``."""
    data = DTYPES[ALIASES.get(dtype, dtype)]
    raw = -(-dim * DATA_TYPE_NUM_BITS[data] // 8) + (SCALE_BIAS_BYTES if data in _INT else 0)
    return -(-raw // row_alignment) * row_alignment


def _configs(module: nn.Module) -> list:
    """The table configs of a float or quantised EBC / EC."""
    fn = getattr(module, "embedding_bag_configs", None) or module.embedding_configs
    return list(fn())


def _resolve(dtype: str | Mapping[str, str], dims: Mapping[str, int]) -> tuple[dict[str, str], list[str]]:
    """(table -> dtype name, the fallbacks taken as ``"table (dim d) -> dtype"``). ``dims``: table -> dim."""

    def check(name: str, where: str) -> str:
        name = ALIASES.get(name, name)
        if name not in DTYPES:
            raise ValueError(f"quantize_tables: unknown dtype {name!r} for {where} (choose from {sorted(DTYPES)})")
        return name

    if isinstance(dtype, str):
        explicit: dict[str, str] = {}
        default: str | None = check(dtype, "all tables")
    else:
        unknown = sorted(set(dtype) - set(dims) - {"*"})
        if unknown:
            raise ValueError(f"quantize_tables: unknown table name(s) {unknown}; the model's tables are {sorted(dims)}")
        explicit = {t: check(d, f"table {t!r}") for t, d in dtype.items() if t != "*"}
        default = check(dtype["*"], "'*'") if "*" in dtype else None
    bad = [t for t, d in explicit.items() if not packs(dims[t], d)]
    if bad:
        raise ValueError("quantize_tables: " + "; ".join(
            f"table {t!r} (dim {dims[t]}) cannot be stored as {explicit[t]}: FBGEMM's row-wise quantiser needs "
            f"dim * {DATA_TYPE_NUM_BITS[DTYPES[explicit[t]]]} bits to be a multiple of 16" for t in bad))
    out, fell_back = dict(explicit), []
    for t, dim in dims.items():
        if t not in out:
            d = default or "fp32"
            while not packs(dim, d):
                d = _FALLBACK[d]
            if d != (default or "fp32"):
                fell_back.append(f"{t} (dim {dim}) -> {d}")
            out[t] = d
    return out, fell_back


def _quantize_one(module: nn.Module, choice: Mapping[str, str], row_alignment: int, weight_views: bool) -> nn.Module:
    """TorchRec's ``from_float`` of one stock EBC / EC with per-table dtypes."""
    configs = _configs(module)
    meta = sorted({k.rsplit(".", 2)[-2] for k, t in module.state_dict().items() if t.is_meta})
    if meta:
        raise ValueError(f"quantize_tables: tables {meta} are on the meta device; load their weights first")
    placeholder = torch.ao.quantization.PlaceholderObserver
    module.qconfig = QuantConfig(  # what from_float reads; removed again below
        activation=placeholder.with_args(dtype=torch.float),  # output dtype of the lookup
        weight=placeholder.with_args(dtype=torch.float),  # unused: every table is in per_table_weight_dtype
        per_table_weight_dtype={c.name: _TORCH_DTYPE[DTYPES[choice[c.name]]] for c in configs},
    )
    setattr(module, MODULE_ATTR_ROW_ALIGNMENT_INT, row_alignment)
    try:
        quant = QuantEmbeddingBagCollection if isinstance(module, EmbeddingBagCollection) else QuantEmbeddingCollection
        out = quant.from_float(module)
    finally:
        del module.qconfig
        delattr(module, MODULE_ATTR_ROW_ALIGNMENT_INT)
    if not weight_views:
        views = out.embedding_bags if isinstance(out, QuantEmbeddingBagCollection) else out.embeddings
        for table in views.values():
            for name in ("weight", "weight_qscale", "weight_qbias"):
                table._buffers.pop(name, None)
    return out


def quantize_tables(
    model: nn.Module,
    dtype: str | Mapping[str, str],
    *,
    row_alignment: int = DEFAULT_ROW_ALIGNMENT,
    weight_views: bool = False,
) -> nn.Module:
    """Swap every stock EBC / EC in ``model`` for TorchRec's quantised inference module, IN PLACE.

    Args:
        model: any module tree (a ``CTRModel``, a sequence model, a serving wrapper, a bare EBC, ...),
            with materialised tables (CPU or CUDA).
        dtype: ``fp32`` (``none``) | ``fp16`` | ``int8`` | ``int4`` | ``int2`` for every table, or a
            mapping table name -> dtype (``"*"``: the default of unnamed tables, else they stay fp32).
        row_alignment: byte alignment of the stored rows (16: TorchRec's default and FBGEMM's on CUDA;
            the CPU kernels also take 1).
        weight_views: keep TorchRec's per-table byte views ``embedding_bags[name].weight`` (see the
            module docstring: an exported program then stores every table twice).

    Returns:
        ``model`` in eval mode (a new module when ``model`` itself is a stock EBC / EC).

    Raises:
        ValueError: an unknown dtype or table name, a table mapped by name to a dtype its dim cannot
            pack, tables on the meta device, or no stock collection to quantise.
    """
    found = {id(m): m for m in model.modules() if type(m) in _FLOAT}  # exact types: subclasses may differ
    dims = {c.name: int(c.embedding_dim) for m in found.values() for c in _configs(m)}
    choice, fell_back = _resolve(dtype, dims)
    if not found and any(ALIASES.get(d, d) != "fp32" for d in ([dtype] if isinstance(dtype, str) else dtype.values())):
        raise ValueError(f"quantize_tables: no stock TorchRec EmbeddingBagCollection / EmbeddingCollection in "
                         f"{type(model).__name__} (already quantised, or sharded? quantise the unsharded model)")
    if fell_back:
        warnings.warn("quantize_tables: tables whose dim does not pack fall back to a wider type: " + ", ".join(fell_back),
                      stacklevel=2)
    swapped = {key: _quantize_one(m, choice, row_alignment, weight_views)
               for key, m in found.items() if any(choice[c.name] != "fp32" for c in _configs(m))}
    if id(model) in swapped:
        return swapped[id(model)].eval()
    for parent in model.modules():  # every reference, so a collection shared by two parents is swapped in both
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in swapped:
                parent._modules[name] = swapped[id(child)]
    return model.eval()


def table_dtypes(model: nn.Module) -> dict[str, str]:
    """Table name -> its stored dtype (``fp32`` for the tables of stock collections)."""
    names = {v: k for k, v in DTYPES.items()}
    out: dict[str, str] = {}
    for m in model.modules():
        if type(m) in _FLOAT:
            out.update({c.name: "fp32" for c in _configs(m)})
        elif isinstance(m, _QUANT):
            out.update({c.name: names[c.data_type] for c in _configs(m)})
    return out


def table_bytes(model: nn.Module) -> dict[str, int]:
    """Table name -> bytes of its stored rows, for every stock or quantised EBC / EC table in ``model``.

    Stock tables: ``rows * dim * element_size``; quantised ones: ``rows * round_up(ceil(dim * bits / 8)
    + scale/bias, row_alignment)``, from the TBE's own specs and row-size function (each table's
    region of the TBE buffer is further padded to 128 bytes: not counted).

    Raises:
        ValueError: two tables of ``model`` share a name.
    """
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import rounded_row_size_in_bytes

    out: dict[str, int] = {}

    def add(name: str, nbytes: int) -> None:
        if name in out:
            raise ValueError(f"table_bytes: two tables are named {name!r}")
        out[name] = int(nbytes)

    for m in model.modules():
        if type(m) in _FLOAT:
            tables = m.embedding_bags if isinstance(m, EmbeddingBagCollection) else m.embeddings
            for name, table in tables.items():
                add(name, table.weight.numel() * table.weight.element_size())
        elif isinstance(m, _QUANT):
            for tbe in m._emb_modules:
                for name, rows, dim, weight_ty, _ in tbe.embedding_specs:
                    add(name, rows * rounded_row_size_in_bytes(dim, weight_ty, tbe.row_alignment, tbe.scale_bias_size_in_bytes))
    return out
