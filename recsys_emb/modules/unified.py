"""Unified Embedding (feature multiplexing): many features share one table through salted hashing.

Paper: B. Coleman, W.-C. Kang, M. Fahrbach, R. Wang, L. Hong, E. H. Chi, D. Z. Cheng, "Unified
Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023.

What it does. Every categorical feature ``t`` of a multiplexing group looks its values up in ONE
shared table of ``M`` rows. Value ``v`` of feature ``t`` and probe ``j`` goes to row
``h_{t,j}(v) mod M``, where ``h_{t,j}`` is drawn independently for every (feature, probe) pair, so
equal raw values of different features do not collide systematically (they collide with the
probability ``1/M`` of any two independent keys). Feature ``t`` gets ``k_t`` probes of width
``d_chunk``; the pooled probe vectors are concatenated (``dim_t = k_t * d_chunk``, the paper's
variable-length representation) or, as an option, averaged (``dim_t = d_chunk``). ``k_t = 1`` for
every feature is the single-probe multiplexing of the paper's Table 1. Several groups (several shared
tables) may coexist.

How it is built (DESIGN.md: techniques wrap the table, they never fork it):

* :class:`MultiProbeHash`, a parameter-free ``KJT -> KJT`` transform from raw ids to row ids of the
  shared tables; one output key ``"{feature}@{probe}"`` per (feature, probe). Its hash parameters are
  buffers (saved with the model, identical across processes: they are derived from ``hash_seed`` and
  the feature name, not from an RNG state).
* a stock ``EmbeddingBagCollection`` with one table per group, inside
  :class:`~recsys_emb.modules.wrapper.TransformedEmbeddingBagCollection` (so the wrapper sharder
  runs the transform before the input all-to-all and row-wise sharding buckets the hashed ids);
* a parameter-free regrouping of the pooled probes into one output per original feature.

The gather plan reads the batch's keys (:func:`probe_plan`, cached per key list in eager); a TorchScript
export (fx tracing, where the keys are unknown) records one call of it, run per batch by the scripted
program, and takes the stock transform + EBC path instead of the fused op.

The hash. ``h(v) = ((a_0 * lo(z) + a_1 * hi(z) + b) mod p) mod M`` with ``p = 2^61 - 1``,
``z = splitmix64(v)`` and ``lo, hi`` the low/high 32 bits of ``z``; ``v`` and ``z`` are read as
unsigned 64-bit numbers (so every int64, negative ones included, is a valid id). ``(a_0, a_1, b)``
are uniform in ``[0, p)`` per (feature, probe): a multilinear, pairwise-independent family (two
distinct ids collide before the final ``mod M`` with probability ``1/p``). ``splitmix64`` is the fixed
finaliser of Steele et al.'s SplitMix64 generator (:func:`premix64`), a bijection of the 64-bit ids
applied BEFORE the salted hash: the multilinear hash alone is linear in the id, and vocabulary ids are
consecutive, so for an unlucky draw every pair ``(v, v + D)`` of a feature collided (MovieLens-100K,
1x budget, hash seed 0: 54.6% of the frequent values shared a row vs 30.6% for a uniform hash; with
the premix 32.8%, and 30.0% / 27.3% for seeds 1 / 2). Being a bijection, the premix keeps the family
universal over distinct ids. All products of the multilinear part are done on 31/30-bit limbs so no
intermediate exceeds ``2^63``: no int64 overflow (the premix's products wrap mod ``2^64`` by
definition), vectorised in torch; the ``recsys_emb::multi_probe_hash`` / ``hashed_embedding_bag`` ops
(compiled kernels in ``csrc/``, docs/kernels.md) compute the same bits.

Baselines in the same code path (``UnifiedOptions.layout``):

* ``multiplexed``: the paper's method (one group of all features unless ``groups`` says otherwise);
* ``per_feature_hashing``: the hashing trick, one table per feature, the byte budget split in
  proportion to vocabulary size (= every feature its own group);
* ``collisionless``: one table per feature with its full vocabulary, ids used as rows (identity).

Deviations from the paper: the paper uses a generic universal hash and (for its production system)
per-feature probe counts chosen by hand; we use the multilinear family above, preceded by the fixed
splitmix64 premix of the id (a detail beyond the paper, see "The hash"), and a config-chosen
``k_t``. The paper's mean-combine variant is the ``combine: mean`` option. Budget split across
several groups follows the per-feature-hashing rule (bytes proportional to the summed vocabulary of
each group); the paper does not prescribe one.

Reduction: one probe, ``hashing="identity"`` (row = offset of the feature in the group + raw id) and
``M >= sum of vocabularies`` is exactly the plain ``EmbeddingBagCollection`` (tested bit for bit).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType, data_type_to_dtype
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys_emb.modules.spec import Tables, register_technique
from recsys_emb.modules.tracing import assert_all, fx_tracing, tracing
from recsys_emb.ops import has_compiled_kernel, hashed_embedding_bag, multi_probe_hash
from recsys_emb.modules.wrapper import TransformedEmbeddingBagCollection

MERSENNE_61 = (1 << 61) - 1  # the prime modulus p of the hash family
_LOW31 = (1 << 31) - 1
_LOW30 = (1 << 30) - 1
_LOW32 = (1 << 32) - 1
# splitmix64 finaliser multipliers 0xbf58476d1ce4e5b9 / 0x94d049bb133111eb as int64 (two's complement)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
PROBE_SEPARATOR = "@"  # output key of probe j of feature f: f"{f}@{j}"
LAYOUTS = ("multiplexed", "per_feature_hashing", "collisionless")
COMBINES = ("concat", "mean")
HASHINGS = ("salted", "identity")


# ---------------------------------------------------------------------------------------------- hash
def hash_coefficients(seed: int, feature: str, probe: int) -> tuple[int, int, int]:
    """``(a_0, a_1, b)`` in ``[0, p)`` for one (feature, probe): SHA-256 of ``seed:feature:probe``.

    Deterministic and independent of every other feature, so adding a feature or reordering features
    never changes the rows of the others, and every process derives the same values.
    """
    digest = hashlib.sha256(f"{int(seed)}:{feature}:{int(probe)}".encode()).digest()
    return tuple(int.from_bytes(digest[8 * i : 8 * i + 8], "little") % MERSENNE_61 for i in range(3))  # type: ignore[return-value]


def _reduce61(s: Tensor) -> Tensor:
    """``s mod p`` for ``0 <= s < 2^63`` (int64), using ``2^61 = 1 (mod p)``."""
    s = (s & MERSENNE_61) + (s >> 61)  # < 2^61 + 4
    return torch.where(s >= MERSENNE_61, s - MERSENNE_61, s)


def mulmod61(a: Tensor, x: Tensor) -> Tensor:
    """``(a * x) mod (2^61 - 1)`` for int64 ``0 <= a, x < 2^61`` without any int64 overflow.

    With ``a = ah 2^31 + al`` and ``x = xh 2^31 + xl`` (``ah, xh < 2^30``; ``al, xl < 2^31``):
    ``a x = ah xh 2^62 + (ah xl + al xh) 2^31 + al xl`` and ``2^62 = 2``, ``2^61 = 1 (mod p)``.
    Every partial term stays below ``2^62`` and their sum below ``2^63``.
    """
    ah, al = a >> 31, a & _LOW31
    xh, xl = x >> 31, x & _LOW31
    mid = ah * xl + al * xh  # < 2^62
    high = 2 * (ah * xh)  # < 2^61
    mid_folded = (mid >> 30) + ((mid & _LOW30) << 31)  # mid * 2^31 mod p, up to < 2^61 + 2^32
    low = _reduce61(al * xl)  # < 2^61
    return _reduce61(high + mid_folded + low)  # sum < 3 * 2^61 + 2^32 < 2^63


def _lsr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of the 64-bit pattern of int64 ``z`` (arithmetic shift, then clear the sign copies)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def premix64(values: Tensor) -> Tensor:
    """The splitmix64 finaliser of int64 ``values`` (their 64-bit patterns), as int64.

    ``z ^= z >>> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >>> 27; z *= 0x94d049bb133111eb; z ^= z >>> 31``
    (``>>>`` logical shift, products mod ``2^64``: int64 multiplication wraps). A bijection of the
    64-bit ids that scatters consecutive ids, applied before the multilinear hash.
    """
    z = values.to(torch.int64)
    z = (z ^ _lsr(z, 30)) * _MIX1
    z = (z ^ _lsr(z, 27)) * _MIX2
    return z ^ _lsr(z, 31)


def salted_hash(values: Tensor, coefficients: Tensor, num_rows: Tensor) -> Tensor:
    """Rows ``((a_0 lo(z) + a_1 hi(z) + b) mod p) mod M`` of int64 ``values``, ``z = premix64(v)``.

    Args:
        values: (N,) any int64 ids (negative ids are read as unsigned 64-bit numbers).
        coefficients: (N, K, 3) int64 per-value ``(a_0, a_1, b)`` for K probes, each in ``[0, p)``.
        num_rows: (N,) or (N, 1) int64 table size ``M`` per value.

    Returns:
        (N, K) int64 rows in ``[0, M)``.
    """
    z = premix64(values)  # (N,) splitmix64 of the id (bijective): scatters consecutive ids
    lo = (z & _LOW32).unsqueeze(1)  # (N, 1), < 2^32
    hi = ((z >> 32) & _LOW32).unsqueeze(1)  # (N, 1): arithmetic shift, then mask = unsigned high half
    h = mulmod61(coefficients[..., 0], lo) + mulmod61(coefficients[..., 1], hi) + coefficients[..., 2]  # (N, K), < 3p
    h = _reduce61(h)  # (N, K) in [0, p)
    return torch.remainder(h, num_rows.reshape(-1, 1))  # (N, K)


# ------------------------------------------------------------------------------------------ transform
@torch.fx.wrap
def probe_plan(keys: list[str], features: list[str], probes: list[int]) -> tuple[list[int], list[int], list[int]]:
    """The gather plan of :class:`MultiProbeHash` for an input KJT with ``keys``: the configured index of
    every input key, and for every output key (feature, probe) the position of its feature among the
    input keys (-1: absent) and its probe index.

    fx-wrapped with a TorchScript body: the TorchScript export records one call and the scripted program
    plans every batch from its keys (eager caches it per key list).
    """
    index: dict[str, int] = {}
    for i, f in enumerate(features):
        index[f] = i
    unknown: list[str] = []
    for k in keys:
        if k not in index:
            unknown.append(k)
    if len(unknown) > 0:
        raise KeyError(f"MultiProbeHash: input features {unknown} are not configured (known: {features})")
    position: dict[str, int] = {}
    for p, k in enumerate(keys):
        position[k] = p
    key_index = [index[k] for k in keys]
    src: list[int] = []
    probe: list[int] = []
    for f, k in zip(features, probes):
        for j in range(k):
            src.append(position.get(f, -1))
            probe.append(j)
    return key_index, src, probe


@torch.fx.wrap
def scalar_int(t: Tensor) -> int:
    """The value of a one-element integer tensor (fx-wrapped: TorchScript's ``Tensor.item`` is no ``int``)."""
    return int(t.item())


@torch.fx.wrap
def take_optional(weights: Tensor | None, index: Tensor) -> Tensor | None:
    """``weights[index]``, None without weights (fx-wrapped: the optional is unknown while fx traces)."""
    return weights[index] if weights is not None else None


class MultiProbeHash(nn.Module):
    """Parameter-free ``KJT -> KJT``: raw ids of each feature -> rows of its group's shared table.

    Output keys are ``"{feature}@{j}"`` for every feature (in ``features`` order) and probe ``j <
    k_feature``; every output bag holds the hashed ids of the input bag (same lengths). A feature
    missing from the input KJT gives empty bags; a key the transform does not know is an error.

    Shapes: B batch (stride), F features, K max probes, N ids in the batch.

    Args:
        features: feature names, grouped: ``features[i]`` belongs to the table of size ``num_rows[i]``.
        num_rows: (F,) rows ``M`` of the shared table each feature is looked up in.
        probes: (F,) probes ``k_t`` per feature (1 for ``hashing="identity"``).
        hashing: ``salted`` (the multilinear hash) or ``identity`` (row = ``offsets[i]`` + raw id,
            ids must lie in ``[0, vocab_sizes[i])``).
        offsets, vocab_sizes: (F,) needed for ``identity``.
        hash_seed: seed of the hash coefficients.
        hash_keys: (F,) the name each feature's coefficients are drawn for (default: the feature's own);
            features with the same key (a shared table) map an id to the same rows.

    Example::

        t = MultiProbeHash(["a", "b"], num_rows=[100, 100], probes=[2, 1])
        kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([7, 8, 7]), torch.tensor([1, 1, 1, 0]))
        #        batch 0   batch 1
        # a      [7]       [8]
        # b      [7]       []
        out = t(kjt)  # keys a@0, a@1, b@0; rows of 7 under a@0, a@1 and b@0 differ (w.p. 1 - 1/M)
    """

    def __init__(
        self,
        features: Sequence[str],
        num_rows: Sequence[int],
        probes: Sequence[int],
        *,
        hashing: str = "salted",
        offsets: Sequence[int] | None = None,
        vocab_sizes: Sequence[int] | None = None,
        hash_seed: int = 0,
        hash_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if hashing not in HASHINGS:
            raise ValueError(f"hashing must be one of {HASHINGS}, got {hashing!r}")
        if not (len(features) == len(num_rows) == len(probes)) or not features:
            raise ValueError("features, num_rows and probes must be non-empty and of equal length")
        if len(set(features)) != len(features):
            raise ValueError(f"duplicate feature names in {list(features)}")
        if any(k < 1 for k in probes) or any(m < 1 for m in num_rows):
            raise ValueError(f"probes and num_rows must be >= 1, got {list(probes)} and {list(num_rows)}")
        keys = list(hash_keys) if hash_keys is not None else list(features)
        if len(keys) != len(features):
            raise ValueError(f"hash_keys has {len(keys)} entries for {len(features)} features")
        if hashing == "identity":
            if offsets is None or vocab_sizes is None:
                raise ValueError("hashing='identity' needs offsets and vocab_sizes")
            if any(k != 1 for k in probes):
                raise ValueError("hashing='identity' supports one probe per feature only")
            for name, off, voc, m in zip(features, offsets, vocab_sizes, num_rows):
                if off < 0 or off + voc > m:
                    raise ValueError(f"identity rows [{off}, {off + voc}) of feature '{name}' exceed its table of {m} rows")
        self.features = list(features)
        self.probes = [int(k) for k in probes]
        self.hashing = hashing
        self.hash_seed = int(hash_seed)
        self.max_probes = max(self.probes)
        self.output_keys = [f"{f}{PROBE_SEPARATOR}{j}" for f, k in zip(self.features, self.probes) for j in range(k)]
        self._index = {f: i for i, f in enumerate(self.features)}
        coefficients = torch.zeros(len(features), self.max_probes, 3, dtype=torch.int64)  # (F, K, 3)
        for i, (key, k) in enumerate(zip(keys, self.probes)):
            for j in range(k):
                coefficients[i, j] = torch.tensor(hash_coefficients(self.hash_seed, key, j))
        # Buffers live on the CPU even when the model is built on `meta` (DMP would zero-fill meta buffers);
        # forward moves them to the ids' device.
        self.register_buffer("coefficients", coefficients)
        self.register_buffer("num_rows", torch.tensor(list(num_rows), dtype=torch.int64))
        self.register_buffer("offsets", torch.tensor(list(offsets or [0] * len(features)), dtype=torch.int64))
        self.register_buffer("vocab_sizes", torch.tensor(list(vocab_sizes or [0] * len(features)), dtype=torch.int64))
        self._plans: dict[tuple[str, ...], tuple[list[int], list[int], list[int]]] = {}

    def _plan(self, keys: list[str]) -> tuple[list[int], list[int], list[int]]:
        """:func:`probe_plan` of ``keys``, cached per key list."""
        plan = self._plans.get(tuple(keys))
        if plan is None:
            plan = self._plans[tuple(keys)] = probe_plan(keys, self.features, self.probes)
        return plan

    def row_ids(self, feature_index: Tensor, values: Tensor) -> Tensor:
        """(N, K) rows of ``values`` whose features are ``feature_index`` (N,) (columns >= k_t unused)."""
        values = values.to(torch.int64)
        device = values.device
        if self.hashing == "identity":
            vocab = self.vocab_sizes.to(device)[feature_index]  # (N,)
            bad = (values < 0) | (values >= vocab)
            if tracing() or fx_tracing():  # export / TorchScript: the check is a runtime assert of the program
                assert_all(~bad, "identity hashing: an id is outside its feature's vocabulary; use hashing='salted' "
                           "or a larger vocab size", scripted=fx_tracing())
            elif bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                name = self.features[int(feature_index[i])]
                raise ValueError(
                    f"identity hashing: id {int(values[i])} of feature '{name}' is outside its vocabulary "
                    f"[0, {int(vocab[i])}); use hashing='salted' or a larger vocab size"
                )
            return (self.offsets.to(device)[feature_index] + values).unsqueeze(1)  # (N, 1)
        # recsys_emb::multi_probe_hash: the compiled kernel when recsys_emb._C is built, else the torch
        # reference; bit-identical with salted_hash (tests/ops).
        return multi_probe_hash(values, feature_index, self.coefficients.to(device), self.num_rows.to(device))  # (N, K)

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        # TorchScript (fx-traced): the keys are a proxy, the plan is computed per batch by the scripted program;
        # its batches are never variable-batch KJTs
        fx = fx_tracing()
        if not fx and features.variable_stride_per_key():
            raise NotImplementedError("MultiProbeHash does not support variable-batch (VBE) KJTs")
        key_index_l, src, probe = probe_plan(features.keys(), self.features, self.probes) if fx else self._plan(list(features.keys()))
        stride = features.stride()
        values, lengths, weights = features.values(), features.lengths(), features.weights_or_none()
        device = values.device
        per_key = torch.tensor(features.length_per_key(), dtype=torch.int64, device=device)  # (F_in,)
        key_index = torch.tensor(key_index_l, dtype=torch.int64, device=device)  # (F_in,)
        feature_index = torch.repeat_interleave(key_index, per_key, output_size=values.numel())  # (N,)
        rows = self.row_ids(feature_index, values)  # (N, K_used)
        k_used = rows.shape[1]

        # Gather, key-major, the ids of every (feature, probe) output key; absent features -> empty bags.
        src_t = torch.tensor(src, dtype=torch.int64, device=device)  # (S,)
        probe_t = torch.tensor(probe, dtype=torch.int64, device=device)  # (S,)
        counts_ext = torch.cat([per_key, per_key.new_zeros(1)])  # (F_in + 1,): index -1 -> 0 ids
        starts_ext = torch.cat([per_key.new_zeros(1), torch.cumsum(per_key, 0)])  # (F_in + 1,); [-1] unused
        seg_counts = counts_ext[src_t]  # (S,)
        seg_starts = starts_ext[src_t]  # (S,)
        total = seg_counts.sum().item() if not fx else scalar_int(seg_counts.sum())  # a size-like SymInt under torch.export
        if not fx:
            torch._check(total >= 0)
        seg = torch.repeat_interleave(torch.arange(src_t.shape[0], device=device), seg_counts, output_size=total)  # (T,)
        seg_begin = torch.cumsum(seg_counts, 0) - seg_counts  # (S,)
        within = torch.arange(total, device=device) - seg_begin[seg]  # (T,)
        source = seg_starts[seg] + within  # (T,) index into the input ids
        out_values = rows.reshape(-1)[source * k_used + probe_t[seg]]  # (T,)

        lengths_ext = torch.cat([lengths.to(torch.int64), lengths.new_zeros(stride, dtype=torch.int64)])  # (F_in*B + B,)
        block = torch.where(src_t >= 0, src_t, torch.full_like(src_t, per_key.shape[0]))  # (S,): absent -> zero block
        out_lengths = lengths_ext[(block.unsqueeze(1) * stride + torch.arange(stride, device=device)).reshape(-1)]  # (S*B,)
        out_weights = take_optional(weights, source)
        return KeyedJaggedTensor(
            keys=self.output_keys, values=out_values, lengths=out_lengths, weights=out_weights, stride=stride
        )


# -------------------------------------------------------------------------------------------- module
@dataclass
class MultiplexGroup:
    """One shared table: its name, the features multiplexed into it and its number of rows ``M``."""

    name: str
    features: list[str]
    num_rows: int


class UnifiedEmbeddingBagCollection(nn.Module):
    """EBC-compatible feature multiplexing: groups of features share tables; one output per feature.

    Shapes: B batch, F features, k_t probes of feature t, d chunk dim; output ``KeyedTensor`` with
    keys ``features`` and per-feature dim ``k_t * d`` (``concat``) or ``d`` (``mean``).

    Args:
        groups: the shared tables (a feature may be in one group only).
        chunk_dim: width ``d`` of every table (and of one probe).
        probes: probes ``k_t`` per feature (an int for all, or a mapping; missing features get 1).
        combine: ``concat`` the pooled probes, or ``mean`` them.
        hashing: ``salted`` (the paper) or ``identity`` (collisionless; needs ``vocab_sizes``).
        vocab_sizes: per-feature vocabulary sizes (identity hashing; collisionless-bytes report).
        feature_order: order of the output keys (default: group order).
        hash_seed: seed of the per-(feature, probe) hash coefficients.
        pooling: bag pooling of the tables.
        weight_init_min, weight_init_max: table init bounds (None: TorchRec's default ``+-sqrt(1/M)``).
        init_fn: table init function (overrides the bounds), e.g. the graph models' normal init.
        data_type: table dtype (bytes are reported for it).
        pre: a parameter-free ``KJT -> KJT`` transform applied before the hashing (same output keys).
        device: table device (``meta`` for DistributedModelParallel); the transform stays on the CPU.
        shared: feature -> the table it shares with other features of its group (the data's ``table:``):
            features sharing a table hash an id to the same rows (coefficients drawn for the table's name;
            ``identity``: the same offset), so they look up the same rows.

    Example::

        ebc = UnifiedEmbeddingBagCollection([MultiplexGroup("shared", ["user", "item"], 1000)], chunk_dim=8, probes=2)
        kjt = KeyedJaggedTensor.from_lengths_sync(["user", "item"], torch.tensor([3, 4, 4]), torch.tensor([1, 0, 1, 1]))
        #          batch 0   batch 1
        # user     [3]       []
        # item     [4]       [4]
        out = ebc(kjt)  # KeyedTensor keys user, item; values (2, 32)
    """

    def __init__(
        self,
        groups: Sequence[MultiplexGroup],
        chunk_dim: int,
        probes: int | Mapping[str, int] = 1,
        *,
        combine: str = "concat",
        hashing: str = "salted",
        vocab_sizes: Mapping[str, int] | None = None,
        feature_order: Sequence[str] | None = None,
        hash_seed: int = 0,
        pooling: PoolingType = PoolingType.SUM,
        weight_init_min: float | None = None,
        weight_init_max: float | None = None,
        init_fn: Callable[[Tensor], Any] | None = None,
        data_type: DataType = DataType.FP32,
        pre: nn.Module | None = None,
        device: torch.device | str | None = None,
        shared: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if chunk_dim < 1:
            raise ValueError(f"chunk_dim must be >= 1, got {chunk_dim}")
        seen: dict[str, str] = {}
        for g in groups:
            for f in g.features:
                if f in seen:
                    raise ValueError(f"feature '{f}' is listed in two multiplexing groups ('{seen[f]}' and '{g.name}')")
                seen[f] = g.name
        grouped = [f for g in groups for f in g.features]
        if not grouped:
            raise ValueError("UnifiedEmbeddingBagCollection needs at least one feature")
        key = {f: (shared or {}).get(f, f) for f in grouped}  # the table a feature's ids are hashed for
        for t in {key[f] for f in grouped if f != key[f]}:
            users = [f for f in grouped if key[f] == t]
            holders = {seen[f] for f in users}
            if len(holders) > 1:
                raise ValueError(f"features {users} share table '{t}' but are in different multiplexing groups "
                                 f"{sorted(holders)}; list them in one group")
            if t in key and key[t] != t:
                raise ValueError(f"shared table '{t}' of {users} has the name of feature '{t}', which uses another table")
        k = {f: (probes if isinstance(probes, int) else int(probes.get(f, 1))) for f in grouped}
        if isinstance(probes, Mapping) and set(probes) - set(grouped):
            raise ValueError(f"probes given for unknown features {sorted(set(probes) - set(grouped))}")
        for g in groups:
            need = max(k[f] for f in g.features)
            if g.num_rows < need:
                raise ValueError(f"group '{g.name}' has {g.num_rows} rows, fewer than one row per probe ({need} probes)")
        order = list(feature_order) if feature_order is not None else grouped
        if sorted(order) != sorted(grouped):
            raise ValueError(f"feature_order {order} is not a permutation of the grouped features {grouped}")
        offsets: list[int] = []
        vocab_list: list[int] | None = None
        if hashing == "identity":
            if vocab_sizes is None:
                raise ValueError("hashing='identity' needs vocab_sizes")
            vocab_list = [int(vocab_sizes[f]) for f in grouped]
            for g in groups:  # the features of a shared table get its offset: the same rows
                starts: dict[str, int] = {}
                end = 0
                for f in g.features:
                    if key[f] not in starts:
                        starts[key[f]], end = end, end + int(vocab_sizes[f])
                    offsets.append(starts[key[f]])
        self.groups = [MultiplexGroup(g.name, list(g.features), int(g.num_rows)) for g in groups]
        self.chunk_dim, self.combine, self.hashing = int(chunk_dim), combine, hashing
        self.feature_names = order
        self.probes = k
        self.data_type = data_type
        self.vocab_sizes = {f: int(v) for f, v in vocab_sizes.items()} if vocab_sizes is not None else None
        transform = MultiProbeHash(
            grouped,
            [g.num_rows for g in groups for _ in g.features],
            [k[f] for f in grouped],
            hashing=hashing,
            offsets=offsets or None,
            vocab_sizes=vocab_list,
            hash_seed=hash_seed,
            hash_keys=[key[f] for f in grouped],
        )
        self.shared = {f: t for f, t in key.items() if f != t}
        init = {"weight_init_min": weight_init_min, "weight_init_max": weight_init_max, "init_fn": init_fn}
        tables = [
            EmbeddingBagConfig(
                name=g.name,
                embedding_dim=self.chunk_dim,
                num_embeddings=g.num_rows,
                feature_names=[f"{f}{PROBE_SEPARATOR}{j}" for f in g.features for j in range(k[f])],
                pooling=pooling,
                data_type=data_type,
                **{key: v for key, v in init.items() if v is not None},
            )
            for g in groups
        ]
        # A pre-transform of the chain (e.g. item id -> semantic-ID pieces) runs before the hashing.
        self.has_pre = pre is not None
        self.lookup = TransformedEmbeddingBagCollection(
            transform if pre is None else nn.Sequential(pre, transform), tables, device=device
        )
        # Column order of the lookup's KeyedTensor (tables in order, probes of a feature contiguous) -> ours.
        position = {key: i for i, key in enumerate(transform.output_keys)}
        self._columns = [
            c
            for f in order
            for j in range(k[f])
            for c in range(position[f"{f}{PROBE_SEPARATOR}{j}"] * self.chunk_dim, (position[f"{f}{PROBE_SEPARATOR}{j}"] + 1) * self.chunk_dim)
        ]
        self._identity_columns = self._columns == list(range(len(self._columns)))
        self._column_index: dict[torch.device, Tensor] = {}

    # -- contract -------------------------------------------------------------------------------
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The shared tables (one per group)."""
        return self.lookup.embedding_bag_configs()

    def output_feature_dims(self) -> list[tuple[str, int]]:
        """``[(feature, k_t * d)]`` for ``concat``, ``[(feature, d)]`` for ``mean``, in output order."""
        return [(f, self.chunk_dim * (self.probes[f] if self.combine == "concat" else 1)) for f in self.feature_names]

    def is_weighted(self) -> bool:
        return self.lookup.is_weighted()

    # -- bytes ----------------------------------------------------------------------------------
    def parameter_bytes(self) -> int:
        """Exact bytes of the table parameters: ``sum_g M_g * d * bytes(dtype)``."""
        return sum(c.num_embeddings * c.embedding_dim * _dtype_bytes(c.data_type) for c in self.embedding_bag_configs())

    def byte_report(self) -> dict[str, object]:
        """Rows, dims and bytes of every table, the total, and the collisionless reference when known."""
        tables = [
            {"name": c.name, "rows": c.num_embeddings, "dim": c.embedding_dim, "bytes": c.num_embeddings * c.embedding_dim * _dtype_bytes(c.data_type)}
            for c in self.embedding_bag_configs()
        ]
        report: dict[str, object] = {"tables": tables, "parameter_bytes": self.parameter_bytes()}
        if self.vocab_sizes is not None:  # a shared table once, at its widest feature's dim
            widest: dict[str, tuple[int, int]] = {}
            for f, d in self.output_feature_dims():
                t = self.shared.get(f, f)
                widest[t] = (self.vocab_sizes[f], max(d, widest.get(t, (0, 0))[1]))
            full = sum(v * d * _dtype_bytes(self.data_type) for v, d in widest.values())
            report["collisionless_bytes"] = full
            report["fraction_of_collisionless"] = self.parameter_bytes() / full if full else math.nan
        return report

    # -- forward --------------------------------------------------------------------------------
    def _fused_pooled(self, features: KeyedJaggedTensor) -> Tensor | None:
        """(B, sum_t k_t * d) pooled probes in output order from the fused op, or None where it does not apply.

        Single-device / inference path: one ``recsys_emb::hashed_embedding_bag`` (hash + gather + pool,
        compiled when ``recsys_emb._C`` is built) per group instead of transform + EBC. Used only where it
        is bit-identical with that stock path (salted hash, FP32 tables, SUM pooling, unweighted KJT with
        every feature, fixed stride: float32 rows added in bag order, as ``nn.EmbeddingBag`` does) and
        while ``lookup`` is the plain module over a stock float EBC (a sharded lookup, or one quantised by
        ``recsys_emb.inference.quantize``, runs the stock path). The weight gradient
        is the same sum, reduced in another order (equal up to float rounding). Only where the op has a
        compiled kernel for the input's device: its torch reference is slower than the stock path
        (docs/kernels.md, "The modules use the ops").
        """
        lookup = self.lookup
        if (
            fx_tracing()  # TorchScript export: the stock path (the conditions below read the batch)
            or not has_compiled_kernel("hashed_embedding_bag", features.values().device.type)
            or not isinstance(lookup, TransformedEmbeddingBagCollection)
            or type(lookup.ebc) is not EmbeddingBagCollection  # e.g. quantised: its weights are packed bytes
            or self.has_pre
            or self.hashing != "salted"
            or self.data_type != DataType.FP32
            or features.weights_or_none() is not None
            or features.variable_stride_per_key()
            or sorted(features.keys()) != sorted(self.feature_names)
            or any(c.pooling != PoolingType.SUM for c in lookup.embedding_bag_configs())
        ):
            return None
        transform = lookup.transform
        keys = features.keys()
        stride = features.stride()
        values, lengths = features.values(), features.lengths()
        device = values.device
        per_key = features.length_per_key()
        starts = [0]
        for n in per_key:
            starts.append(starts[-1] + n)
        position = {k: i for i, k in enumerate(keys)}
        pooled: dict[str, Tensor] = {}
        for g in self.groups:
            pos = [position[f] for f in g.features]
            index = torch.tensor([transform._index[f] for f in g.features], dtype=torch.int64)  # rows of the transform buffers
            k_g = max(self.probes[f] for f in g.features)
            if pos == list(range(pos[0], pos[0] + len(pos))):  # contiguous in the KJT: no copy
                ids = values[starts[pos[0]] : starts[pos[-1] + 1]]
                bag_lengths = lengths[pos[0] * stride : (pos[-1] + 1) * stride]
            else:
                ids = torch.cat([values[starts[p] : starts[p + 1]] for p in pos])
                bag_lengths = torch.cat([lengths[p * stride : (p + 1) * stride] for p in pos])
            counts = torch.tensor([per_key[p] for p in pos], dtype=torch.int64, device=device)
            feature_index = torch.repeat_interleave(torch.arange(len(pos), device=device), counts, output_size=ids.numel())  # (N_g,)
            offsets = torch.cat([bag_lengths.new_zeros(1, dtype=torch.int64), torch.cumsum(bag_lengths.to(torch.int64), 0)])  # (F_g B + 1,)
            out = hashed_embedding_bag(
                lookup.ebc.embedding_bags[g.name].weight,
                ids,
                offsets,
                feature_index,
                transform.coefficients[index, :k_g].to(device),
                transform.num_rows[index].to(device),
                "sum",
                None,
            )  # (F_g B, k_g, d)
            out = out.view(len(pos), stride, k_g * self.chunk_dim)
            for t, f in enumerate(g.features):
                pooled[f] = out[t, :, : self.probes[f] * self.chunk_dim]  # (B, k_t d)
        return torch.cat([pooled[f] for f in self.feature_names], dim=1)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self._fused_pooled(features)  # (B, sum_t k_t * d), output order, or None
        if pooled is None:
            pooled = self.lookup(features).values()  # (B, sum_t k_t * d), lookup order
            if not self._identity_columns and fx_tracing():  # TorchScript: the index is a constant of the program
                pooled = pooled.index_select(1, torch.tensor(self._columns, device=pooled.device))
            elif not self._identity_columns:
                index = self._column_index.get(pooled.device)
                if index is None:
                    index = self._column_index[pooled.device] = torch.tensor(self._columns, device=pooled.device)
                pooled = pooled.index_select(1, index)  # (B, sum_t k_t * d), output order
        if self.combine == "mean":
            batch = pooled.shape[0]
            ks = [self.probes[f] for f in self.feature_names]
            if len(set(ks)) == 1:
                pooled = pooled.view(batch, len(ks), ks[0], self.chunk_dim).mean(2).reshape(batch, -1)  # (B, F*d)
            else:
                parts = pooled.split([k * self.chunk_dim for k in ks], dim=1)
                pooled = torch.cat([parts[i].view(batch, k, self.chunk_dim).mean(1) for i, k in enumerate(ks)], 1)  # (B, F*d)
        dims = [d for _, d in self.output_feature_dims()]
        return KeyedTensor(keys=list(self.feature_names), length_per_key=dims, values=pooled)


def _dtype_bytes(data_type: DataType) -> int:
    return torch.empty((), dtype=data_type_to_dtype(data_type)).element_size()


# ------------------------------------------------------------------------------------ config + build
@dataclass
class UnifiedOptions:
    """Options of the chain entry ``unified: {...}``. Size by exactly one of num_rows, budget_bytes, budget_fraction."""

    layout: str = "multiplexed"  # multiplexed | per_feature_hashing | collisionless (the baselines)
    groups: list[list[str]] | None = None  # multiplexing groups (multiplexed only); None = all features in one
    num_rows: int | list[int] | None = None  # rows M of each shared table (an int, or one per group)
    budget_bytes: int | None = None  # total table bytes, split over tables in proportion to vocabulary
    budget_fraction: float | None = None  # budget as a fraction of the collisionless tables' bytes
    probes: int = 1  # probes k_t per feature (1 = the paper's Table 1 setting)
    probes_per_feature: dict[str, int] = field(default_factory=dict)  # per-feature overrides of `probes`
    chunk_dim: int | None = None  # width of a probe; None = model embedding_dim / k (concat) or embedding_dim (mean)
    combine: str = "concat"  # concat | mean: how a feature's probe vectors are combined
    hash_seed: int = 0  # seeds the per-(feature, probe) hash coefficients

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        sizing = [n for n in ("num_rows", "budget_bytes", "budget_fraction") if getattr(self, n) is not None]
        if self.layout == "collisionless":
            if sizing:
                raise ValueError(f"layout 'collisionless' uses the full vocabularies; remove {sizing}")
        elif len(sizing) != 1:
            raise ValueError(f"layout '{self.layout}' needs exactly one of num_rows, budget_bytes, budget_fraction (got {sizing or 'none'})")
        if self.num_rows is not None:
            rows = self.num_rows if isinstance(self.num_rows, list) else [self.num_rows]
            if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rows):
                raise ValueError(f"num_rows must be a positive integer or a list of them, got {self.num_rows!r}")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {self.budget_bytes}")
        if self.budget_fraction is not None and self.budget_fraction <= 0:
            raise ValueError(f"budget_fraction must be > 0, got {self.budget_fraction}")
        if self.probes < 1 or any(k < 1 for k in self.probes_per_feature.values()):
            raise ValueError("probes must be >= 1")
        if self.groups is not None and self.layout != "multiplexed":
            raise ValueError(f"groups apply to layout 'multiplexed' only (layout is '{self.layout}')")
        if self.chunk_dim is not None and self.chunk_dim < 1:
            raise ValueError(f"chunk_dim must be >= 1, got {self.chunk_dim}")


def split_rows(budget_bytes: int, weights: Sequence[int], row_bytes: int, minimum: Sequence[int] | None = None) -> list[int]:
    """Rows per table for a byte budget split in proportion to ``weights`` (largest remainder).

    The total is ``floor(budget_bytes / row_bytes)`` rows, so the bytes used are within one row of the
    budget and never above it. A table whose share falls below its ``minimum`` (one row per probe) is
    held at the minimum and the rest is split among the others (water-filling).

    Raises:
        ValueError: when the budget cannot give every table its minimum.
    """
    total_rows = budget_bytes // row_bytes
    minimum = list(minimum) if minimum is not None else [1] * len(weights)
    if total_rows < sum(minimum):
        raise ValueError(
            f"embedding budget too small: {budget_bytes} bytes are {total_rows} rows of {row_bytes} bytes, fewer than "
            f"one row per probe of every table ({sum(minimum)} rows = {sum(minimum) * row_bytes} bytes)"
        )
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        left = total_rows - sum(fixed.values())
        weight = sum(weights[i] for i in free)
        exact = {i: left * weights[i] / weight if weight else 0.0 for i in free}
        low = [i for i in free if exact[i] < minimum[i]]
        if not low:
            break
        fixed.update({i: minimum[i] for i in low})
    rows = {i: int(math.floor(exact[i])) for i in free}
    for i in sorted(free, key=lambda i: rows[i] - exact[i])[: left - sum(rows.values())]:
        rows[i] += 1
    rows.update(fixed)
    return [rows[i] for i in range(len(weights))]


def unified_from_tables(
    options: UnifiedOptions, tables: Sequence[EmbeddingBagConfig], device: torch.device | str | None = None,
    *, pre: nn.Module | None = None, name: str = "unified", prefix: str = "", suffix: str = "",
    shared: Mapping[str, str] | None = None,
) -> UnifiedEmbeddingBagCollection:
    """Build the module ``options`` describes over the plain per-feature ``tables`` of a model.

    The tables give the features (in output order), their vocabulary sizes and the model's
    embedding dim ``D`` (every table must have the same one); output dims are ``k_t * chunk_dim``.
    ``pre`` is a parameter-free transform applied before the hashing (a chain's pre-transform);
    ``name`` names the shared table (``name_i`` for several multiplexing groups) and ``prefix`` /
    ``suffix`` the per-feature tables (``{prefix}hashed_{feature}{suffix}``).

    ``shared`` maps features that share a data table (a schema's ``table:``) to it: they hash an id to the
    same rows, and the per-table layouts give them ONE table (``{prefix}hashed_{table}{suffix}``,
    ``{prefix}full_{table}{suffix}``), counted once in the budget and the collisionless bytes.
    """
    features = [f for t in tables for f in t.feature_names]
    if len(set(features)) != len(features):
        raise ValueError(f"a feature appears in two base tables: {features}")
    vocab = {f: int(t.num_embeddings) for t in tables for f in t.feature_names}
    shared = {f: t for f, t in (shared or {}).items() if f in vocab}
    key = {f: shared.get(f, f) for f in features}  # the table of each feature
    by_key: dict[str, list[str]] = {}
    for f in features:
        by_key.setdefault(key[f], []).append(f)
    for t, fs in by_key.items():
        if len({vocab[f] for f in fs}) > 1:
            raise ValueError(f"features {fs} share table '{t}' but have different vocabularies {[vocab[f] for f in fs]}")
    dims = {t.embedding_dim for t in tables}
    if len(dims) != 1:
        raise ValueError(f"unified embedding needs one embedding_dim across the base tables, got {sorted(dims)}")
    (model_dim,) = dims
    unknown = sorted(set(options.probes_per_feature) - set(features))
    if unknown:
        raise ValueError(f"unified.probes_per_feature names unknown features {unknown} (features: {features})")
    probes = {f: int(options.probes_per_feature.get(f, options.probes)) for f in features}
    if options.layout == "collisionless":
        probes = dict.fromkeys(features, 1)
    chunk = options.chunk_dim
    if chunk is None:
        ks = {probes[f] for f in features}
        k = ks.pop() if len(ks) == 1 else None
        if options.combine == "mean" or options.layout == "collisionless":
            chunk = model_dim
        elif k is None or model_dim % k:
            raise ValueError(
                f"set unified.chunk_dim: model embedding_dim {model_dim} is not divisible by the probes {sorted(set(probes.values()))}"
            )
        else:
            chunk = model_dim // k
    row_bytes = chunk * _dtype_bytes(DataType.FP32)

    if options.layout == "multiplexed":
        members = options.groups if options.groups is not None else [features]
        listed = [f for g in members for f in g]
        dup = sorted({f for f in listed if listed.count(f) > 1})
        if dup:
            raise ValueError(f"unified.groups: features {dup} are listed in two groups")
        missing, extra = sorted(set(features) - set(listed)), sorted(set(listed) - set(features))
        if missing or extra:
            raise ValueError(f"unified.groups must cover every feature once: missing {missing}, unknown {extra}")
        names = [name] if len(members) == 1 else [f"{name}_{i}" for i in range(len(members))]
    else:  # one table per data table: a shared one holds all its features
        members = list(by_key.values())
        stems = [t if len(fs) > 1 else fs[0] for t, fs in by_key.items()]
        names = [f"{prefix}{'hashed' if options.layout == 'per_feature_hashing' else 'full'}_{t}{suffix}" for t in stems]
    tables_of = [list({key[f]: f for f in g}.values()) for g in members]  # one feature per distinct table in each member

    if options.layout == "collisionless":
        rows = [vocab[g[0]] for g in members]
    elif options.num_rows is not None:
        rows = options.num_rows if isinstance(options.num_rows, list) else [options.num_rows] * len(members)
        if len(rows) != len(members):
            raise ValueError(f"unified.num_rows has {len(rows)} entries for {len(members)} tables")
    else:
        full_rows = sum(vocab[fs[0]] * max(probes[f] for f in fs) for fs in by_key.values())  # a shared table once
        full_bytes = full_rows * chunk * _dtype_bytes(DataType.FP32)
        budget = options.budget_bytes if options.budget_bytes is not None else int(options.budget_fraction * full_bytes)
        rows = split_rows(budget, [sum(vocab[f] for f in t) for t in tables_of], row_bytes,
                          [max(probes[f] for f in g) for g in members])
    for g, r, n in zip(members, rows, names):
        need = max(probes[f] for f in g)
        if r < need:
            raise ValueError(
                f"embedding budget too small: table '{n}' gets {r} rows, fewer than one row per probe ({need}); "
                f"it needs at least {need * row_bytes} bytes"
            )
    bounds = {(t.weight_init_min, t.weight_init_max) for t in tables}
    lo, hi = bounds.pop() if len(bounds) == 1 else (None, None)
    init_fns = {t.init_fn for t in tables}
    init_fn = init_fns.pop() if len(init_fns) == 1 else None
    return UnifiedEmbeddingBagCollection(
        [MultiplexGroup(n, list(g), int(r)) for n, g, r in zip(names, members, rows)],
        chunk,
        probes,
        combine=options.combine,
        hashing="identity" if options.layout == "collisionless" else "salted",
        vocab_sizes=vocab,
        feature_order=features,
        hash_seed=options.hash_seed,
        pooling=tables[0].pooling,
        weight_init_min=lo,
        weight_init_max=hi,
        init_fn=init_fn,
        pre=pre,
        device=device,
        shared=shared,
    )


@register_technique("unified", "layout", UnifiedOptions, doc="feature multiplexing: the group's features share one table (Coleman et al. 2023)")
def build_unified(options: UnifiedOptions, tables: Tables) -> UnifiedEmbeddingBagCollection:
    """Chain layout ``unified: {...}`` (see :class:`UnifiedOptions`)."""
    return unified_from_tables(options, tables.feature_configs(), tables.device, pre=tables.transform(),
                               name=tables.shared_name("unified"), prefix=tables.role_prefix, suffix=tables.suffix,
                               shared=tables.shared_keys())


@dataclass
class HashOptions:
    """``hash: {...}``: the hashing trick, one table per feature. Size by exactly one of the three."""

    num_rows: int | list[int] | None = None  # rows per feature table (an int, or one per table: a shared table once)
    budget_bytes: int | None = None  # total bytes, split over the features in proportion to vocabulary
    budget_fraction: float | None = None  # budget as a fraction of the plain tables' bytes
    hash_seed: int = 0  # seeds the per-feature hash coefficients

    def __post_init__(self) -> None:
        sizing = [n for n in ("num_rows", "budget_bytes", "budget_fraction") if getattr(self, n) is not None]
        if len(sizing) != 1:
            raise ValueError(f"hash needs exactly one of num_rows, budget_bytes, budget_fraction (got {sizing or 'none'})")


@register_technique("hash", "layout", HashOptions, doc="per-feature hashing into fewer rows (the budget baseline)")
def build_hash(options: HashOptions, tables: Tables) -> UnifiedEmbeddingBagCollection:
    """Chain layout ``hash: {...}``: Unified Embedding's ``per_feature_hashing`` layout, one probe."""
    unified = UnifiedOptions(layout="per_feature_hashing", num_rows=options.num_rows, budget_bytes=options.budget_bytes,
                             budget_fraction=options.budget_fraction, hash_seed=options.hash_seed)
    return unified_from_tables(unified, tables.feature_configs(), tables.device, pre=tables.transform(),
                               prefix=tables.role_prefix, suffix=tables.suffix, shared=tables.shared_keys())
