"""The hidden click model and the row sampler behind ``recsys-emb synth criteo``.

A block of rows is drawn in three vectorised steps (see :meth:`SynthCriteoModel.sample`):

1. which fields are missing (the groups and shared factors of :data:`MISSING_GROUPS`);
2. integer counts I1..I13 (Gaussian copula over the measured quantile functions) and categorical
   ranks C1..C26 (measured head + Zipf-Mandelbrot tail, near-copy columns tied by a copula);
3. the label, ``Bernoulli(sigmoid(logit))`` with the hidden model below.

The hidden model is a factorisation machine over all 39 fields plus per-value effects and smooth
dense effects, built so that the signal lives where a 1M-row data set can learn it::

    logit = bias + sum_j beta_j z_j + sum_j gamma_j bump(z_j - c_j)   dense main effects
                 + sum_c w_c(v_c)                                     per-value effects
                 + sum_{f < f'} <u_f, u_f'>                           interactions (rank k)

``z_j = (log1p(max(I_j, 0)) - mean_j) / std_j`` with missing -> 0 before standardising, which is
exactly what a model trained on prepared data sees; ``bump(x) = exp(-x^2 / (2 width^2))``. Fields
``f`` are the 26 categorical columns (``u`` = latent of the value) and the 13 dense ones (``u = z_j
D_j``). For a value with full-scale frequency ``pi`` and ``n = pi * reference_rows`` expected
occurrences, the effect is ``w = t_c + sigma_c * s(n, kappa_effect) * N(0, 1)`` and the latent ``u
= alpha_c * s(n, kappa_latent) * N(0, I_k)`` with ``s(n, kappa) = n / (n + kappa)``: rare values
shrink towards the column's shared tail effect ``t_c`` and carry no interactions (ranks beyond
``head_ranks`` share the tail parameters exactly, so tables stay small at full scale). Only the
low-cardinality ``interaction_columns`` have latents. Every parameter is drawn from the seed alone;
each logit component is then rescaled to its configured std on a fixed full-scale sample, and the
bias is calibrated (Newton) so that the expected CTR is ``target_ctr``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from recsys_emb.data.synthetic_marginals import (
    DENSE_CORRELATION,
    DENSE_MISSING_RATES,
    DENSE_QUANTILE_PROBS,
    DENSE_QUANTILES,
    DENSE_SMALL_CDF,
    DENSE_SMALL_VALUES,
    MISSING_GROUPS,
    VALUE_COPULA_GROUPS,
    CatColumnSampler,
    build_cat_column,
    norm_cdf,
    norm_ppf,
)

__all__ = ["HiddenModelConfig", "SCALES", "SynthBlock", "SynthCriteoModel", "block_rng", "rng_for"]

NUM_DENSE = 13
NUM_SPARSE = 26
SCALES = ("small", "full")

# Missing rate of C1..C26 (from the groups).
CAT_MISSING_RATES = [0.0] * NUM_SPARSE
for _rate, _members, _factor, _loading in MISSING_GROUPS:
    for _m in _members:
        if _m >= NUM_DENSE:
            CAT_MISSING_RATES[_m - NUM_DENSE] = _rate

# Stream ids of the SeedSequence spawn keys (see rng_for).
_STREAM_MODEL, _STREAM_CODES, _STREAM_CALIBRATION, _STREAM_ROWS = 1, 2, 3, 4


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """A PCG64 generator for the stream ``key`` of ``seed`` (independent of every other key).

    Args:
        seed: the user's seed (non-negative int).
        key: stream path (``SeedSequence`` spawn key), e.g. ``(4, split, block)`` for rows.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def block_rng(seed: int, split: int, block: int) -> np.random.Generator:
    """The generator of rows ``[block * B, (block + 1) * B)`` of split ``split`` (0 train, 1 test).

    Args:
        seed: the user's seed.
        split: split id.
        block: block index.
    """
    return rng_for(seed, _STREAM_ROWS, split, block)


@dataclass(frozen=True)
class HiddenModelConfig:
    """Knobs of the hidden click model (defaults tuned so that 1M rows suffice to learn it).

    The four ``*_std`` knobs are the standard deviations of the logit's components on a fixed
    calibration sample (parameters are drawn, then each component is rescaled to its std).

    Args:
        latent_dim: rank ``k`` of the pairwise interactions.
        dense_linear_std: std of the linear dense term ``sum_j beta_j z_j``.
        dense_bump_std: std of the non-monotone dense term ``sum_j gamma_j bump(z_j - c_j)``.
        effect_std: std of the summed per-value effects ``sum_c w_c(v_c)``.
        interaction_std: std of the factorisation-machine term over all 39 fields.
        dense_bump_width: width (std, in units of ``z``) of the dense bumps.
        dense_latent_ratio: size of a dense field's latent vector (per unit of ``z``) relative to
            a frequent categorical value's.
        tail_effect_ratio: std of a column's shared tail effect relative to its value effects.
        kappa_effect: expected count (in ``reference_rows`` rows) at which a value keeps half of its
            own effect; rarer values shrink towards the column's tail effect.
        kappa_latent: same for latent factors (interactions need more data to be learnable).
        reference_rows: the data-set size the shrinkage is expressed in.
        head_ranks: values ranked at or beyond this share the tail effect and latent exactly.
        target_ctr: expected click-through rate the bias is calibrated to.
        interaction_columns: 0-based indices of the categorical columns that carry latent
            factors (the others interact with nothing).
    """

    latent_dim: int = 2
    dense_linear_std: float = 0.4
    dense_bump_std: float = 0.8
    effect_std: float = 0.7
    interaction_std: float = 0.6
    dense_latent_ratio: float = 1.0
    dense_bump_width: float = 1.0
    tail_effect_ratio: float = 0.5
    kappa_effect: float = 5000.0
    kappa_latent: float = 5000.0
    reference_rows: float = 1_000_000.0
    head_ranks: int = 32768
    target_ctr: float = 0.22
    interaction_columns: tuple[int, ...] = (0, 1, 4, 5, 7, 8, 13, 16, 19, 21, 22, 24)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_ctr < 1.0:
            raise ValueError(f"target_ctr must be in (0, 1), got {self.target_ctr}")
        if self.latent_dim < 1 or self.head_ranks < 1:
            raise ValueError(
                f"latent_dim and head_ranks must be >= 1, got {self.latent_dim}, {self.head_ranks}"
            )
        stds = (
            "dense_linear_std",
            "dense_bump_std",
            "effect_std",
            "interaction_std",
            "dense_latent_ratio",
            "tail_effect_ratio",
        )
        for name in stds:
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("kappa_effect", "kappa_latent", "reference_rows", "dense_bump_width"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        bad = [c for c in self.interaction_columns if not 0 <= c < NUM_SPARSE]
        if bad:
            raise ValueError(f"interaction_columns must be in 0..{NUM_SPARSE - 1}, got {bad}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (JSON-serialisable)."""
        return asdict(self)


class SynthBlock(NamedTuple):
    """One block of generated rows (N rows).

    Args:
        dense: (N, 13) int64 raw counts (0 where missing).
        dense_missing: (N, 13) bool.
        ranks: (N, 26) int64 value ranks, -1 where missing.
        labels: (N,) uint8 clicks in {0, 1}.
        logits: (N,) float64 true click logits.
        probs: (N,) float64 true click probabilities.
    """

    dense: np.ndarray
    dense_missing: np.ndarray
    ranks: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    probs: np.ndarray


class SynthCriteoModel:
    """Seeded sampler + hidden click model of the synthetic Criteo-like data set.

    Everything (parameters, value codes, bias) derives from ``(seed, scale, config)`` only, never
    from the number of rows, so train and test splits share one model. The per-value parameters
    do not depend on the scale either (only the sampling of tail values and the bias do).

    Args:
        seed: non-negative integer seed.
        scale: ``"small"`` (vocabulary = what 1M full-scale rows are expected to show; default)
            or ``"full"`` (the Kaggle vocabulary sizes).
        config: hidden-model knobs; defaults are the documented ones.

    Example::

        model = SynthCriteoModel(seed=0)
        block = model.sample(block_rng(0, split=0, block=0), 1000)
        p = model.probabilities(block.dense, block.dense_missing, block.ranks)  # == block.probs
    """

    def __init__(
        self, seed: int = 0, scale: str = "small", config: HiddenModelConfig | None = None
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.scale = scale
        self.config = config or HiddenModelConfig()
        cfg = self.config
        self.columns = [build_cat_column(c, scale, cfg.head_ranks) for c in range(NUM_SPARSE)]
        self.vocab_sizes = [col.vocab for col in self.columns]
        # Sampling constants.
        self._dense_chol = np.linalg.cholesky(DENSE_CORRELATION)  # (13, 13)
        self._small_cdf = np.asarray(DENSE_SMALL_CDF)  # (13, 14)
        self._large_knots = []  # per column: (probabilities, log1p(values)) above the small range
        for j in range(NUM_DENSE):
            top = self._small_cdf[j, -1]
            q = np.asarray(DENSE_QUANTILES[j], dtype=np.float64)
            keep = q > DENSE_SMALL_VALUES[-1]
            probs = np.concatenate([[top], np.asarray(DENSE_QUANTILE_PROBS)[keep]])
            self._large_knots.append(
                (probs, np.log1p(np.concatenate([[DENSE_SMALL_VALUES[-1]], q[keep]])))
            )
        self._missing_thresholds = [norm_ppf(rate) for rate, *_ in MISSING_GROUPS]
        self._dense_mean, self._dense_std = self._dense_moments()
        # Value codes: per-column 32-bit keys of the rank <-> hex bijection.
        self.code_keys = rng_for(self.seed, _STREAM_CODES).integers(
            0, 2**32, NUM_SPARSE, dtype=np.uint64
        )
        self._init_parameters()
        self.bias = 0.0
        self.bias = self._calibrate_bias()

    # ----------------------------------------------------------------- parameters
    def _init_parameters(self) -> None:
        """Draw every parameter from the seed (independently of scale and rows), then normalise."""
        cfg = self.config
        k = cfg.latent_dim
        rng = rng_for(self.seed, _STREAM_MODEL, 0)
        col_effect = np.exp(rng.normal(0.0, 0.5, NUM_SPARSE))  # relative importance of columns
        col_latent = np.exp(rng.normal(0.0, 0.4, NUM_SPARSE))
        col_latent *= np.isin(np.arange(NUM_SPARSE), cfg.interaction_columns)
        tail_effect = cfg.tail_effect_ratio * col_effect * rng.standard_normal(NUM_SPARSE)
        self.dense_linear = rng.standard_normal(NUM_DENSE)
        self.dense_bump = rng.standard_normal(NUM_DENSE)
        self.dense_bump_center = rng.uniform(-0.5, 1.0, NUM_DENSE)
        self.dense_latent = cfg.dense_latent_ratio * rng.standard_normal((NUM_DENSE, k))  # (13, k)
        self.effects: list[np.ndarray] = []  # per column (H + 2,): [missing, ranks 0..H-1, tail]
        self.latents: list[np.ndarray] = []  # per column (H + 2, k)
        for c, col in enumerate(self.columns):
            col_rng = rng_for(self.seed, _STREAM_MODEL, 1 + c)
            miss = CAT_MISSING_RATES[c]
            pi = np.concatenate(
                [[miss], (1.0 - miss) * col.full_probs, [0.0]]
            )  # (H + 2,) full scale
            n = pi * cfg.reference_rows  # expected occurrences in reference_rows rows
            zeta = col_rng.standard_normal(len(pi))
            xi = col_rng.standard_normal((len(pi), k))
            shrink_w = n / (n + cfg.kappa_effect)
            shrink_u = n / (n + cfg.kappa_latent)
            eff = tail_effect[c] + col_effect[c] * _normalise(shrink_w, zeta[:, None], pi)[:, 0]
            lat = col_latent[c] * _normalise(shrink_u, xi, pi)  # (H + 2, k)
            self.effects.append(eff)
            self.latents.append(lat)
        self._stack_tables()
        # Rescale each logit component to its configured std on a fixed full-scale sample.
        sample = self._calibration_sample(full_scale=True)
        parts = self.components(sample.dense, sample.dense_missing, sample.ranks)
        self.dense_linear *= cfg.dense_linear_std / max(float(parts["dense_linear"].std()), 1e-12)
        self.dense_bump *= cfg.dense_bump_std / max(float(parts["dense_bump"].std()), 1e-12)
        f_eff = cfg.effect_std / max(float(parts["effects"].std()), 1e-12)
        f_lat = math.sqrt(cfg.interaction_std / max(float(parts["interactions"].std()), 1e-12))
        self.effects = [e * f_eff for e in self.effects]
        self.latents = [u * f_lat for u in self.latents]
        self.dense_latent *= f_lat
        self._stack_tables()

    def _stack_tables(self) -> None:
        """All columns' tables stacked, for one gather per block of rows in components()."""
        sizes = np.array([len(e) for e in self.effects])
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (26,)
        self._head_ranks = sizes - 2  # (26,) ranks with parameters of their own
        self._all_effects = np.concatenate(self.effects)  # (sum(H + 2),)
        self._all_latents = np.concatenate(self.latents)  # (sum(H + 2), k)

    def _calibration_sample(self, full_scale: bool) -> SynthBlock:
        """A fixed 65,536-row feature sample (at full scale, or at this model's scale)."""
        columns = self.columns
        if full_scale and self.scale != "full":
            columns = [
                build_cat_column(c, "full", self.config.head_ranks) for c in range(NUM_SPARSE)
            ]
        return self._sample(rng_for(self.seed, _STREAM_CALIBRATION), 1 << 16, columns, labels=False)

    def _dense_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of log1p(max(I_j, 0)) (missing -> 0) under the marginals (fixed grid)."""
        u = (np.arange(8192) + 0.5) / 8192
        x = self._dense_values(np.repeat(u[:, None], NUM_DENSE, axis=1))  # (8192, 13)
        t = np.log1p(np.maximum(x, 0)).astype(np.float64)
        miss = np.asarray(DENSE_MISSING_RATES)
        mean = (1.0 - miss) * t.mean(0)
        second = (1.0 - miss) * (t**2).mean(0)
        return mean, np.sqrt(np.maximum(second - mean**2, 1e-12))

    def _calibrate_bias(self) -> float:
        """Bias making the mean true probability on a fixed 65,536-row sample ``target_ctr``."""
        block = self._calibration_sample(full_scale=False)
        logits = self.logits(block.dense, block.dense_missing, block.ranks)  # bias is 0 here
        target = self.config.target_ctr
        bias = math.log(target / (1.0 - target)) - float(np.median(logits))
        for _ in range(100):  # Newton on the increasing, smooth mean(sigmoid(logits + bias))
            p = _sigmoid(logits + bias)
            gap = float(p.mean()) - target
            if abs(gap) < 1e-13:
                break
            bias -= gap / max(float((p * (1.0 - p)).mean()), 1e-6)
        return bias

    # ----------------------------------------------------------------- sampling
    def _dense_values(self, u: np.ndarray) -> np.ndarray:
        """Uniforms (N, 13) -> integer counts (N, 13) through the measured distributions.

        Values up to 10 come from the exact small-value CDF; above it, the quantile function is
        interpolated linearly in log1p space and rounded up (so knots map to themselves).
        """
        out = np.empty(u.shape, dtype=np.int64)
        small_values = np.asarray(DENSE_SMALL_VALUES)
        for j in range(NUM_DENSE):
            uj = np.maximum(u[:, j], 1e-12)
            idx = np.searchsorted(self._small_cdf[j], uj, side="left")  # first v with F(v) >= u
            col = small_values[np.minimum(idx, len(small_values) - 1)]
            large = uj > self._small_cdf[j, -1]
            if large.any():
                probs, t = self._large_knots[j]
                x = np.expm1(np.interp(uj[large], probs, t))
                col[large] = np.maximum(np.ceil(x - 1e-6), small_values[-1] + 1)
            out[:, j] = col
        return out

    def sample(self, rng: np.random.Generator, n: int, labels: bool = True) -> SynthBlock:
        """Draw ``n`` rows (features, and labels from the hidden model unless ``labels=False``).

        Args:
            rng: the block's generator (see :func:`block_rng`); draws are consumed in a fixed order.
            n: number of rows.
            labels: also compute probabilities and draw labels.
        """
        return self._sample(rng, n, self.columns, labels)

    def _sample(
        self, rng: np.random.Generator, n: int, columns: list[CatColumnSampler], labels: bool
    ) -> SynthBlock:
        # 1. missingness: two shared factors + one normal per group.
        factors = rng.standard_normal((n, 2))  # (N, 2)
        group_noise = rng.standard_normal((n, len(MISSING_GROUPS)))  # (N, G)
        missing = np.zeros((n, NUM_DENSE + NUM_SPARSE), dtype=bool)  # (N, 39)
        for g, (_, members, factor, loading) in enumerate(MISSING_GROUPS):
            score = group_noise[:, g]
            if factor >= 0:
                score = loading * factors[:, factor] + math.sqrt(1.0 - loading**2) * score
            missing[:, list(members)] = (score < self._missing_thresholds[g])[:, None]
        # 2a. dense counts through a Gaussian copula.
        normals = rng.standard_normal((n, NUM_DENSE)) @ self._dense_chol.T  # (N, 13)
        dense = self._dense_values(norm_cdf(normals))
        # 2b. categorical ranks; copula groups replace their columns' uniforms.
        u = rng.random((n, NUM_SPARSE))  # (N, 26)
        for members, rho in VALUE_COPULA_GROUPS:
            shared = rng.standard_normal((n, 1))
            own = rng.standard_normal((n, len(members)))
            u[:, list(members)] = norm_cdf(rho * shared + math.sqrt(1.0 - rho**2) * own)
        ranks = np.empty((n, NUM_SPARSE), dtype=np.int64)
        for c, col in enumerate(columns):
            ranks[:, c] = col.ranks(u[:, c])
        dense_missing = missing[:, :NUM_DENSE]
        ranks[missing[:, NUM_DENSE:]] = -1
        dense[dense_missing] = 0
        if not labels:
            empty = np.zeros(0)
            return SynthBlock(dense, dense_missing, ranks, empty.astype(np.uint8), empty, empty)
        logits = self.logits(dense, dense_missing, ranks)
        probs = _sigmoid(logits)
        clicks = (rng.random(n) < probs).astype(np.uint8)
        return SynthBlock(dense, dense_missing, ranks, clicks, logits, probs)

    # ----------------------------------------------------------------- hidden model
    def components(
        self, dense: np.ndarray, dense_missing: np.ndarray, ranks: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The logit's terms per row (they sum to ``logits - bias``).

        Args:
            dense: (N, 13) integer counts (ignored where missing).
            dense_missing: (N, 13) bool.
            ranks: (N, 26) int value ranks, -1 = missing.

        Returns:
            ``{"dense_linear", "dense_bump", "effects", "interactions"}``, each (N,) float64.
        """
        t = np.where(dense_missing, 0.0, np.log1p(np.maximum(dense, 0)))  # (N, 13)
        z = (t - self._dense_mean) / self._dense_std  # (N, 13)
        width = self.config.dense_bump_width
        bump = np.exp(-0.5 * ((z - self.dense_bump_center) / width) ** 2)  # (N, 13)
        idx = (
            np.where(ranks < 0, 0, np.minimum(ranks, self._head_ranks) + 1) + self._offsets
        )  # (N, 26)
        lat = self._all_latents[idx]  # (N, 26, k)
        dense_lat = z[:, :, None] * self.dense_latent  # (N, 13, k): latent of each dense field
        total = lat.sum(1) + dense_lat.sum(1)  # (N, k)
        squares = np.einsum("nck,nck->n", lat, lat) + np.einsum(
            "njk,njk->n", dense_lat, dense_lat
        )  # (N,)
        return {
            "dense_linear": z @ self.dense_linear,
            "dense_bump": bump @ self.dense_bump,
            "effects": self._all_effects[idx].sum(1),
            "interactions": 0.5
            * (np.einsum("nk,nk->n", total, total) - squares),  # all field pairs
        }

    def logits(self, dense: np.ndarray, dense_missing: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """True click logits of rows (arguments as in :meth:`components`)."""
        parts = self.components(dense, dense_missing, ranks)
        return (
            self.bias
            + parts["dense_linear"]
            + parts["dense_bump"]
            + parts["effects"]
            + parts["interactions"]
        )

    def probabilities(
        self, dense: np.ndarray, dense_missing: np.ndarray, ranks: np.ndarray
    ) -> np.ndarray:
        """True click probabilities ``sigmoid(logits(...))`` (same arguments as :meth:`logits`)."""
        return _sigmoid(self.logits(dense, dense_missing, ranks))

    # ----------------------------------------------------------------- value codes
    def encode(self, ranks: np.ndarray) -> np.ndarray:
        """Ranks (N, 26) -> 32-bit value codes (N, 26) uint32 (a seeded bijection per column).

        Missing ranks (-1) give arbitrary codes; the writer leaves those fields empty.
        """
        x = (ranks.astype(np.uint64) + self.code_keys) & _MASK32  # (N, 26)
        x ^= x >> 16
        x = (x * _MUL1) & _MASK32
        x ^= x >> 15
        x = (x * _MUL2) & _MASK32
        x ^= x >> 16
        return x.astype(np.uint32)

    def decode(self, codes: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`encode`: codes (N, 26) -> ranks (N, 26) int64, -1 where ``missing``.

        Args:
            codes: (N, 26) value codes (the hex fields as integers).
            missing: optional (N, 26) bool mask of empty fields (their codes are ignored).

        Raises:
            ValueError: when a code maps to a rank outside the column's vocabulary (a value this
                model never generates).
        """
        x = codes.astype(np.uint64)
        x ^= x >> 16
        x = (x * _INV2) & _MASK32
        x ^= (x >> 15) ^ (x >> 30)
        x = (x * _INV1) & _MASK32
        x ^= x >> 16
        ranks = ((x - self.code_keys) & _MASK32).astype(np.int64)
        if missing is not None:
            ranks[missing] = -1
        bad = ranks >= np.asarray(self.vocab_sizes)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"value {int(codes[row, col]):08x} of C{col + 1} (row {row}) was not generated "
                f"by this model (seed {self.seed}, scale {self.scale})"
            )
        return ranks

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this model: seed, scale, config and the calibrated bias."""
        return {"seed": self.seed, "scale": self.scale, "bias": self.bias, **self.config.to_dict()}


_MASK32 = np.uint64(0xFFFFFFFF)
_MUL1, _MUL2 = np.uint64(0x7FEB352D), np.uint64(0x846CA68B)
_INV1, _INV2 = np.uint64(pow(0x7FEB352D, -1, 2**32)), np.uint64(pow(0x846CA68B, -1, 2**32))


def _normalise(shrink: np.ndarray, draws: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Centre ``shrink * draws`` (V, k), rescaled to its expected pi-weighted variance.

    The draws are N(0, 1) for the values of one column with probabilities ``pi`` (mass not in
    ``pi`` sits at 0). A column with a few dominant values would otherwise get a spread set by a
    couple of normal draws; rescaling to ``sum(pi * shrink ** 2)`` per coordinate keeps every
    column's contribution at its expected size for every seed.

    Args:
        shrink: (V,) shrinkage factors in [0, 1].
        draws: (V, k) standard normal draws.
        pi: (V,) probabilities of the values.
    """
    d = shrink[:, None] * draws  # (V, k)
    rest = max(1.0 - float(pi.sum()), 0.0)
    mean = (pi[:, None] * d).sum(0)  # (k,) over all rows
    var = (pi[:, None] * (d - mean) ** 2).sum(0) + rest * mean**2  # (k,)
    expected = float((pi * shrink**2).sum())
    return (d - mean) * np.sqrt(expected / np.maximum(var, 1e-300))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
