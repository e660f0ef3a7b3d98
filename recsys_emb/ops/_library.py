"""The op registry: ``recsys_emb::*`` schemas, pure-PyTorch references, fake kernels and autograd.

DESIGN.md rule 4 ("every fast op has a readable reference"): each op is declared ONCE here with
``torch.library`` (namespace ``recsys_emb``). Its pure-PyTorch reference is registered under the
``CompositeExplicitAutograd`` dispatch key, i.e. for every device (CPU, CUDA, ...). A compiled kernel
from ``csrc/`` (extension ``recsys_emb._C``, loaded by :mod:`recsys_emb.ops._loader`) registers with
``TORCH_LIBRARY_IMPL(recsys_emb, CPU|CUDA, m)`` and then wins for that device only, because a
backend key takes precedence over ``CompositeExplicitAutograd``; every other device keeps the
reference. Fake kernels (``torch.library.register_fake``) give output metadata without data so the ops
trace under ``torch.compile`` / ``torch.export``; autograd is registered with
``torch.library.register_autograd`` at the Python level, so it applies to compiled kernels as well
(their backward calls the ``*_backward`` op, which a compiled kernel may override too).

Ops (shapes: N ids, F features, K probes, B bags, M table rows, D embedding dim):

* ``multi_probe_hash(values, feature_index, coefficients, num_rows) -> (N, K) int64``: the salted
  multilinear hash of :mod:`recsys_emb.modules.unified` (bit-exact), row ``j`` of id ``i`` is
  ``((a0 lo(z) + a1 hi(z) + b) mod (2^61 - 1)) mod num_rows[f]`` with ``(a0, a1, b) = coefficients[f, j]``,
  ``f = feature_index[i]`` and ``z`` the splitmix64 finaliser of ``values[i]`` (a fixed bijection of the
  64-bit pattern that scatters consecutive ids; ``lo``/``hi`` its unsigned 32-bit halves).
* ``hashed_embedding_bag(weight, values, offsets, feature_index, coefficients, num_rows, mode,
  per_sample_weights) -> (B, K, D)``: hash every id, gather its K rows of the shared ``weight``
  (M, D), pool each bag (``offsets`` (B + 1,), KJT-style, ``offsets[-1] == N``) per probe: ``sum`` of
  ``psw_i * weight[row_ij]``, or ``mean`` = that sum divided by the number of ids of the bag (empty bags
  give zeros). Accumulation is in float32 (float64 for float64 weights), output in the weight dtype.
* ``hashed_embedding_bag_backward(grad_output, values, offsets, feature_index, coefficients, num_rows,
  num_weight_rows, mode, per_sample_weights) -> (M, D)``: the dense weight gradient, every row the sum
  of the contributions of all (id, probe) pairs hashed to it (reduced per unique row).
* ``sid_pieces(ids, lengths, item_offsets, item_rows, id_offset) -> (values, lengths, owner)``: item
  id -> table rows of its semantic-ID pieces, exactly ``SemanticIdTransform.pieces`` of
  :mod:`recsys_emb.modules.semantic_ids`. The code table is jagged: item ``i`` owns
  ``item_rows[item_offsets[i]:item_offsets[i + 1]]`` (rows already n-gram hashed / mapped offline by
  ``recsys_emb.semantic_ids.tokenizers.PieceTable``); the LAST item of the table is the "unknown"
  item used for every id whose ``id - id_offset`` is outside ``[0, I - 1)``. Outputs: (T,) piece rows,
  (B,) new bag lengths (dtype of ``lengths``), (T,) index of the input id of every piece (to repeat
  per-id weights). T is data-dependent (an unbacked size under ``torch.compile``).

The hash is re-implemented here (not imported from ``recsys_emb.modules``, which will call these ops);
``tests/ops`` checks that both agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

NAMESPACE = "recsys_emb"
MERSENNE_61 = (1 << 61) - 1
_LOW30 = (1 << 30) - 1
_LOW31 = (1 << 31) - 1
_LOW32 = (1 << 32) - 1
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 finaliser multipliers, as int64 two's complement
_MIX2 = 0x94D049BB133111EB - (1 << 64)
MODES = ("sum", "mean")


@dataclass(frozen=True)
class OpSpec:
    """One registered op: its schema, reference, fake kernel and whether it has autograd."""

    name: str
    schema: str
    reference: Callable[..., Tensor]
    fake: Callable[..., Tensor]
    differentiable: bool

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    @property
    def op(self) -> torch._ops.OpOverloadPacket:
        return getattr(getattr(torch.ops, NAMESPACE), self.name)


OPS: dict[str, OpSpec] = {}


def _define(name: str, schema: str, reference: Callable[..., Tensor], fake: Callable[..., Tensor], differentiable: bool) -> OpSpec:
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "CompositeExplicitAutograd")(reference)
    torch.library.register_fake(qualname)(fake)
    spec = OpSpec(name, schema, reference, fake, differentiable)
    OPS[name] = spec
    return spec


# ------------------------------------------------------------------------------------- hash helpers
def _reduce61(s: Tensor) -> Tensor:
    """``s mod p`` for int64 ``0 <= s < 2^63`` (``2^61 = 1 mod p``)."""
    s = (s & MERSENNE_61) + (s >> 61)
    return torch.where(s >= MERSENNE_61, s - MERSENNE_61, s)


def _mulmod61(a: Tensor, x: Tensor) -> Tensor:
    """``a * x mod p`` for ``0 <= a, x < 2^61`` on 31/30-bit limbs (no int64 overflow)."""
    ah, al = a >> 31, a & _LOW31
    xh, xl = x >> 31, x & _LOW31
    mid = ah * xl + al * xh
    folded = (mid >> 30) + ((mid & _LOW30) << 31)  # mid * 2^31 mod p (2^61 = 1)
    return _reduce61(2 * (ah * xh) + folded + _reduce61(al * xl))


def _splitmix64(v: Tensor) -> Tensor:
    """splitmix64 finaliser of the int64 bit patterns ``v`` (logical shifts = arithmetic shift + mask; products wrap)."""
    z = v ^ ((v >> 30) & ((1 << 34) - 1))
    z = z * _MIX1
    z = z ^ ((z >> 27) & ((1 << 37) - 1))
    z = z * _MIX2
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def _check_hash_inputs(values: Tensor, feature_index: Tensor, coefficients: Tensor, num_rows: Tensor) -> None:
    torch._check(values.dim() == 1, lambda: f"values must be 1-D, got shape {tuple(values.shape)}")
    torch._check(values.dtype in (torch.int32, torch.int64), lambda: f"values must be int32/int64, got {values.dtype}")
    torch._check(feature_index.dim() == 1, lambda: "feature_index must be 1-D")
    torch._check(feature_index.dtype in (torch.int32, torch.int64), lambda: "feature_index must be int32/int64")
    torch._check(feature_index.shape[0] == values.shape[0], lambda: "feature_index and values must have the same length")
    torch._check(coefficients.dim() == 3 and coefficients.shape[2] == 3, lambda: "coefficients must be (F, K, 3)")
    torch._check(coefficients.dtype == torch.int64, lambda: "coefficients must be int64")
    torch._check(num_rows.dim() == 1 and num_rows.shape[0] == coefficients.shape[0], lambda: "num_rows must be (F,)")
    torch._check(num_rows.dtype == torch.int64, lambda: "num_rows must be int64")


# ----------------------------------------------------------------------------- op 1: multi_probe_hash
def _multi_probe_hash_ref(values: Tensor, feature_index: Tensor, coefficients: Tensor, num_rows: Tensor) -> Tensor:
    _check_hash_inputs(values, feature_index, coefficients, num_rows)
    v = _splitmix64(values.to(torch.int64))  # (N,) premixed ids
    fi = feature_index.to(torch.int64)
    c = coefficients[fi]  # (N, K, 3)
    lo = (v & _LOW32).unsqueeze(1)  # (N, 1)
    hi = ((v >> 32) & _LOW32).unsqueeze(1)  # (N, 1): unsigned high half
    h = _reduce61(_mulmod61(c[..., 0], lo) + _mulmod61(c[..., 1], hi) + c[..., 2])  # (N, K) in [0, p)
    return torch.remainder(h, num_rows[fi].unsqueeze(1))  # (N, K)


def _multi_probe_hash_fake(values: Tensor, feature_index: Tensor, coefficients: Tensor, num_rows: Tensor) -> Tensor:
    _check_hash_inputs(values, feature_index, coefficients, num_rows)
    return values.new_empty((values.shape[0], coefficients.shape[1]), dtype=torch.int64)


_define(
    "multi_probe_hash",
    "(Tensor values, Tensor feature_index, Tensor coefficients, Tensor num_rows) -> Tensor",
    _multi_probe_hash_ref,
    _multi_probe_hash_fake,
    differentiable=False,
)


# ------------------------------------------------------------------------- op 2: hashed_embedding_bag
def _check_bag_inputs(weight: Tensor, values: Tensor, offsets: Tensor, mode: str, per_sample_weights: Tensor | None) -> None:
    torch._check(weight.dim() == 2, lambda: f"weight must be (M, D), got shape {tuple(weight.shape)}")
    torch._check(weight.is_floating_point(), lambda: f"weight must be floating point, got {weight.dtype}")
    torch._check(offsets.dim() == 1 and offsets.shape[0] >= 1, lambda: "offsets must be 1-D with B + 1 >= 1 entries")
    torch._check(offsets.dtype in (torch.int32, torch.int64), lambda: "offsets must be int32/int64")
    torch._check(mode in MODES, lambda: f"mode must be one of {MODES}, got {mode!r}")
    if per_sample_weights is not None:
        torch._check(per_sample_weights.shape == values.shape, lambda: "per_sample_weights must have the shape of values")
        torch._check(per_sample_weights.is_floating_point(), lambda: "per_sample_weights must be floating point")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bags(offsets: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(N,) bag of every id and (B,) ids per bag, from KJT-style ``offsets`` (B + 1,)."""
    offsets = offsets.to(torch.int64)
    counts = offsets[1:] - offsets[:-1]  # (B,)
    bag = torch.repeat_interleave(torch.arange(counts.shape[0], device=offsets.device), counts, output_size=n)  # (N,)
    return bag, counts


def _id_scale(bag: Tensor, counts: Tensor, mode: str, per_sample_weights: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(N,) factor of every id in its bag's pooled vector (None: all ones)."""
    scale = None if per_sample_weights is None else per_sample_weights.to(dtype)
    if mode == "mean":
        inv = 1.0 / counts.clamp(min=1).to(dtype)[bag]  # (N,)
        scale = inv if scale is None else scale * inv
    return scale


def _hashed_embedding_bag_ref(
    weight: Tensor,
    values: Tensor,
    offsets: Tensor,
    feature_index: Tensor,
    coefficients: Tensor,
    num_rows: Tensor,
    mode: str,
    per_sample_weights: Tensor | None,
) -> Tensor:
    _check_bag_inputs(weight, values, offsets, mode, per_sample_weights)
    rows = _multi_probe_hash_ref(values, feature_index, coefficients, num_rows)  # (N, K)
    n, k = rows.shape
    acc = _acc_dtype(weight.dtype)
    bag, counts = _bags(offsets, n)
    vectors = weight[rows].to(acc)  # (N, K, D)
    scale = _id_scale(bag, counts, mode, per_sample_weights, acc)
    if scale is not None:
        vectors = vectors * scale[:, None, None]
    out = torch.zeros(counts.shape[0], k, weight.shape[1], dtype=acc, device=weight.device)  # (B, K, D)
    return out.index_add_(0, bag, vectors).to(weight.dtype)


def _hashed_embedding_bag_fake(weight, values, offsets, feature_index, coefficients, num_rows, mode, per_sample_weights):
    _check_bag_inputs(weight, values, offsets, mode, per_sample_weights)
    _check_hash_inputs(values, feature_index, coefficients, num_rows)
    return weight.new_empty((offsets.shape[0] - 1, coefficients.shape[1], weight.shape[1]))


def _hashed_embedding_bag_backward_ref(
    grad_output: Tensor,
    values: Tensor,
    offsets: Tensor,
    feature_index: Tensor,
    coefficients: Tensor,
    num_rows: Tensor,
    num_weight_rows: int,
    mode: str,
    per_sample_weights: Tensor | None,
) -> Tensor:
    rows = _multi_probe_hash_ref(values, feature_index, coefficients, num_rows)  # (N, K)
    n, k = rows.shape
    acc = _acc_dtype(grad_output.dtype)
    bag, counts = _bags(offsets, n)
    grads = grad_output.to(acc)[bag]  # (N, K, D)
    scale = _id_scale(bag, counts, mode, per_sample_weights, acc)
    if scale is not None:
        grads = grads * scale[:, None, None]
    d = grad_output.shape[2]
    grad_weight = torch.zeros(num_weight_rows, d, dtype=acc, device=grad_output.device)  # (M, D)
    return grad_weight.index_add_(0, rows.reshape(-1), grads.reshape(n * k, d)).to(grad_output.dtype)


def _hashed_embedding_bag_backward_fake(
    grad_output, values, offsets, feature_index, coefficients, num_rows, num_weight_rows, mode, per_sample_weights
):
    torch._check(grad_output.dim() == 3, lambda: "grad_output must be (B, K, D)")
    return grad_output.new_empty((num_weight_rows, grad_output.shape[2]))


_define(
    "hashed_embedding_bag",
    "(Tensor weight, Tensor values, Tensor offsets, Tensor feature_index, Tensor coefficients, Tensor num_rows, "
    "str mode, Tensor? per_sample_weights) -> Tensor",
    _hashed_embedding_bag_ref,
    _hashed_embedding_bag_fake,
    differentiable=True,
)
_define(
    "hashed_embedding_bag_backward",
    "(Tensor grad_output, Tensor values, Tensor offsets, Tensor feature_index, Tensor coefficients, Tensor num_rows, "
    "SymInt num_weight_rows, str mode, Tensor? per_sample_weights) -> Tensor",
    _hashed_embedding_bag_backward_ref,
    _hashed_embedding_bag_backward_fake,
    differentiable=False,
)


def _heb_setup_context(ctx, inputs, output) -> None:
    weight, values, offsets, feature_index, coefficients, num_rows, mode, psw = inputs
    ctx.mode = mode
    ctx.num_weight_rows = weight.shape[0]
    ctx.save_for_backward(weight if psw is not None else None, values, offsets, feature_index, coefficients, num_rows, psw)


def _heb_backward(ctx, grad_output: Tensor):
    weight, values, offsets, feature_index, coefficients, num_rows, psw = ctx.saved_tensors
    grad_output = grad_output.contiguous()
    grad_weight = grad_psw = None
    if ctx.needs_input_grad[0]:
        grad_weight = torch.ops.recsys_emb.hashed_embedding_bag_backward(
            grad_output, values, offsets, feature_index, coefficients, num_rows, ctx.num_weight_rows, ctx.mode, psw
        )
    if psw is not None and ctx.needs_input_grad[7]:
        # d out[b, j] / d psw_i = weight[row_ij] (/ count_b for mean), for the bag b of id i.
        rows = torch.ops.recsys_emb.multi_probe_hash(values, feature_index, coefficients, num_rows)  # (N, K)
        acc = _acc_dtype(weight.dtype)
        bag, counts = _bags(offsets, values.shape[0])
        g = (grad_output.to(acc)[bag] * weight[rows].to(acc)).sum(dim=(1, 2))  # (N,)
        if ctx.mode == "mean":
            g = g / counts.clamp(min=1).to(acc)[bag]
        grad_psw = g.to(psw.dtype)
    return grad_weight, None, None, None, None, None, None, grad_psw


torch.library.register_autograd(f"{NAMESPACE}::hashed_embedding_bag", _heb_backward, setup_context=_heb_setup_context)


# ---------------------------------------------------------------------------------- op 3: sid_pieces
def _check_sid_inputs(ids: Tensor, lengths: Tensor, item_offsets: Tensor, item_rows: Tensor) -> None:
    torch._check(ids.dim() == 1 and ids.dtype in (torch.int32, torch.int64), lambda: "ids must be 1-D int32/int64")
    torch._check(lengths.dim() == 1 and lengths.dtype in (torch.int32, torch.int64), lambda: "lengths must be 1-D int32/int64")
    torch._check(item_offsets.dim() == 1 and item_offsets.shape[0] >= 2, lambda: "item_offsets must be (I + 1,) with I >= 1 items")
    torch._check(item_offsets.dtype == torch.int64 and item_rows.dtype == torch.int64, lambda: "item_offsets/item_rows must be int64")
    torch._check(item_rows.dim() == 1, lambda: "item_rows must be 1-D")


def _sid_pieces_ref(ids: Tensor, lengths: Tensor, item_offsets: Tensor, item_rows: Tensor, id_offset: int) -> tuple[Tensor, Tensor, Tensor]:
    _check_sid_inputs(ids, lengths, item_offsets, item_rows)
    unknown = item_offsets.shape[0] - 2  # the last item of the table: every id without codes
    item = ids.to(torch.int64) - id_offset  # (n,)
    known = (item >= 0) & (item < unknown)
    item = torch.where(known, item, torch.full_like(item, unknown))
    start = item_offsets[item]  # (n,)
    count = item_offsets[item + 1] - start  # (n,)
    owner = torch.repeat_interleave(torch.arange(item.numel(), device=ids.device), count)  # (T,)
    first = torch.cumsum(count, 0) - count  # (n,)
    within = torch.arange(owner.numel(), device=ids.device) - first[owner]  # (T,)
    values = item_rows[start[owner] + within]  # (T,)
    bag = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=ids.device), lengths.to(torch.int64), output_size=ids.numel()
    )  # (n,)
    new_lengths = torch.zeros(lengths.numel(), dtype=torch.int64, device=ids.device).index_add_(0, bag, count)
    return values, new_lengths.to(lengths.dtype), owner


def _sid_pieces_fake(ids, lengths, item_offsets, item_rows, id_offset):
    _check_sid_inputs(ids, lengths, item_offsets, item_rows)
    total = torch.library.get_ctx().new_dynamic_size()  # data-dependent number of pieces
    return ids.new_empty((total,), dtype=torch.int64), lengths.new_empty(lengths.shape), ids.new_empty((total,), dtype=torch.int64)


_define(
    "sid_pieces",
    "(Tensor ids, Tensor lengths, Tensor item_offsets, Tensor item_rows, int id_offset) -> (Tensor, Tensor, Tensor)",
    _sid_pieces_ref,
    _sid_pieces_fake,
    differentiable=False,
)
