"""Marginal distributions of the synthetic Criteo-like generator, measured on real Criteo rows.

Every constant below was measured once on the first 7,500 rows of the Kaggle DAC ``train.txt``
(``/work/shared/datasets/criteo_dac_kaggle_head/train_rows_00001-07500.txt.gz``, see its
PROVENANCE.md) with a throw-away script (described in ``docs/synthetic_criteo.md``); the generator
never reads that file. The 26 full-scale vocabulary sizes are the public Kaggle figures printed by
the DLRM reference preprocessing (facebookresearch/dlrm, ``bench/dlrm_s_criteo_kaggle.sh``).

What is modelled (per column unless noted):

- missing rates, and which columns go missing together (Criteo has exact groups such as
  {I1, I10} or {C3, C4, C12, C16, C21, C24}, and correlated groups sharing a latent factor);
- integer counts: the exact empirical CDF for values -3..10 and the empirical quantile function
  on a grid of probabilities above (log-linear interpolation between knots, so heavy tails
  survive), joined by a Gaussian copula whose correlations come from the measured Spearman rank
  correlations;
- categorical values: an explicit head (shares of the values seen >= 20 times in the 7,500 rows)
  plus a Zipf-Mandelbrot tail ``p(x) ~ (x + q) ** -a`` over the remaining vocabulary, with
  ``(a, q)`` fitted (grid search, squared log error) to the distinct-count growth at
  500/1,000/2,000/4,000/7,500 rows; columns that are near copies of each other in Criteo
  (C3/C12/C16/C21, C4/C24, C7/C11) draw their ranks through a Gaussian copula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "CAT_MARGINALS",
    "CatColumnSampler",
    "CatMarginal",
    "DENSE_CORRELATION",
    "DENSE_QUANTILE_PROBS",
    "DENSE_SMALL_CDF",
    "DENSE_SMALL_VALUES",
    "DENSE_QUANTILES",
    "DENSE_MISSING_RATES",
    "MISSING_GROUPS",
    "VALUE_COPULA_GROUPS",
    "build_cat_column",
    "norm_cdf",
    "norm_ppf",
]

# fmt: off
# Fraction of rows with an empty field, I1..I13 (measured; the head's CTR was 0.2165).
DENSE_MISSING_RATES = (
    0.4509, 0.0, 0.2033, 0.2048, 0.0501, 0.252, 0.0485, 0.0009, 0.0485, 0.4509, 0.0485, 0.7779,
    0.2048,
)

# (missing rate, member columns, latent factor index or -1, loading on that factor). Columns of a
# group are missing together (all Jaccard indices were 1.0 in the head); groups loading on the same
# factor go missing together more often than chance: measured Jaccard indices of 0.34-0.67 for
# factor 0 (e.g. I12 with C22: 0.67) and 0.38 for factor 1 (I3 with I4). Column names index
# I1..I13 as 0..12 and C1..C26 as 13..38. Columns in no group are never missing.
MISSING_GROUPS: tuple[tuple[float, tuple[int, ...], int, float], ...] = (
    (0.4509, (0, 9), 0, 0.75),  # I1, I10
    (0.2033, (2,), 1, 0.8),  # I3
    (0.2048, (3, 12), 1, 0.8),  # I4, I13
    (0.0501, (4,), -1, 0.0),  # I5
    (0.252, (5,), 0, 0.75),  # I6
    (0.0485, (6, 8, 10), -1, 0.0),  # I7, I9, I11
    (0.0009, (7,), -1, 0.0),  # I8
    (0.7779, (11,), 0, 0.65),  # I12
    (0.0337, (15, 16, 24, 28, 33, 36), -1, 0.0),  # C3, C4, C12, C16, C21, C24
    (0.1301, (18,), -1, 0.0),  # C6
    (0.4555, (31, 32, 37, 38), 0, 0.55),  # C19, C20, C25, C26
    (0.8184, (34,), 0, 0.65),  # C22
)

# Probabilities at which the integer quantiles below were taken (numpy "inverted_cdf" method).
DENSE_QUANTILE_PROBS = (
    0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35,
    0.375, 0.4, 0.425, 0.45, 0.475, 0.5, 0.525, 0.55, 0.575, 0.6, 0.625, 0.65, 0.675, 0.7, 0.725,
    0.75, 0.775, 0.8, 0.825, 0.85, 0.875, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99,
    0.995, 0.998, 0.999, 1.0,
)
# Quantiles of the present values of I1..I13 (the last knot is the observed maximum).
DENSE_QUANTILES = (
    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3,
     4, 4, 5, 6, 8, 10, 13, 15, 18, 24, 30, 35, 44, 62, 76, 88, 214),
    (-2, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 5, 7, 9, 12, 16, 20, 25,
     30, 38, 48, 60, 74, 99, 137, 193, 282, 424, 574, 739, 982, 1433, 1697, 2214, 2886, 3351, 3582,
     18522),
    (0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 7, 7, 8, 9, 10, 11, 12, 14, 16, 18,
     20, 23, 27, 30, 36, 43, 51, 63, 82, 91, 113, 136, 182, 241, 306, 601, 1947, 4307, 65535),
    (0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 9, 10,
     12, 13, 14, 16, 18, 20, 23, 26, 28, 31, 34, 38, 41, 44, 52, 68, 87, 280),
    (0, 1, 4, 8, 14, 25, 46, 74, 132, 203, 312, 442, 587, 786, 1285, 1450, 1530, 1661, 1844, 2099,
     2779, 2982, 3330, 4207, 4507, 5041, 6017, 7092, 7750, 9188, 10481, 12149, 15274, 18149, 21751,
     27730, 32400, 36574, 42157, 49078, 70912, 111399, 165968, 213618, 293196, 439608, 663183,
     857285, 1618112),
    (0, 0, 0, 1, 2, 3, 4, 5, 7, 8, 10, 12, 14, 17, 19, 22, 25, 29, 33, 37, 41, 47, 52, 58, 64, 73,
     81, 90, 101, 115, 131, 151, 175, 203, 239, 283, 344, 416, 521, 594, 700, 871, 1088, 1333, 1755,
     2211, 3396, 4452, 8000),
    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10,
     12, 14, 16, 20, 24, 30, 36, 49, 58, 67, 82, 119, 143, 181, 314, 507, 613, 1658),
    (0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 14, 15, 17,
     18, 20, 22, 24, 26, 29, 32, 35, 37, 40, 42, 44, 46, 47, 48, 49, 49, 49, 79, 547),
    (0, 0, 1, 2, 2, 3, 4, 5, 7, 8, 10, 12, 15, 17, 20, 23, 26, 30, 33, 38, 42, 47, 52, 57, 64, 71,
     79, 89, 99, 110, 124, 142, 162, 187, 221, 258, 312, 367, 455, 506, 584, 697, 887, 968, 1229,
     1634, 2642, 3189, 5639),
    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
     1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4, 4),
    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3,
     3, 3, 4, 4, 5, 6, 7, 8, 10, 12, 15, 17, 22, 27, 38, 49, 74),
    (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1,
     1, 1, 1, 1, 2, 2, 3, 4, 5, 7, 9, 10, 12, 21, 39, 72, 98),
    (0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12,
     13, 15, 16, 18, 21, 23, 27, 30, 35, 38, 42, 46, 52, 58, 74, 113, 166, 307, 770),
)
# Exact empirical CDF of the present values of I1..I13 at -3, -2, ..., 10 (P(X <= v)): small counts
# are sampled from it exactly (point masses such as I1's 48% zeros); larger ones from the
# quantiles above, interpolated in log space.
DENSE_SMALL_VALUES = tuple(range(-3, 11))
DENSE_SMALL_CDF = (
    (0.0, 0.0, 0.0, 0.4811, 0.6406, 0.7302, 0.7868, 0.8271, 0.8531, 0.8766, 0.8941, 0.9077, 0.9169,
     0.9262),
    (0.0, 0.0007, 0.0997, 0.2817, 0.4388, 0.4933, 0.5229, 0.5408, 0.5577, 0.5703, 0.5824, 0.5933,
     0.6028, 0.6125),
    (0.0, 0.0, 0.0, 0.0085, 0.1607, 0.2624, 0.3409, 0.4033, 0.4537, 0.4939, 0.5287, 0.5657, 0.5923,
     0.6151),
    (0.0, 0.0, 0.0, 0.0728, 0.2235, 0.3466, 0.4366, 0.5168, 0.5716, 0.6212, 0.6623, 0.698, 0.7279,
     0.7535),
    (0.0, 0.0, 0.0, 0.0156, 0.0331, 0.0477, 0.0477, 0.0598, 0.0681, 0.0681, 0.0748, 0.081, 0.081,
     0.0879),
    (0.0, 0.0, 0.0, 0.0613, 0.0923, 0.1182, 0.1433, 0.1626, 0.177, 0.1966, 0.213, 0.2317, 0.2439,
     0.2586),
    (0.0, 0.0, 0.0, 0.2548, 0.3956, 0.4843, 0.549, 0.5973, 0.6383, 0.6719, 0.6983, 0.721, 0.7386,
     0.7574),
    (0.0, 0.0, 0.0, 0.1206, 0.2041, 0.272, 0.328, 0.3798, 0.4216, 0.4623, 0.5029, 0.53, 0.5551,
     0.5796),
    (0.0, 0.0, 0.0, 0.0312, 0.0717, 0.1055, 0.1334, 0.1557, 0.1761, 0.1967, 0.211, 0.2269, 0.2416,
     0.2569),
    (0.0, 0.0, 0.0, 0.5078, 0.9344, 0.9908, 0.9988, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    (0.0, 0.0, 0.0, 0.2675, 0.6281, 0.7633, 0.836, 0.8763, 0.9055, 0.926, 0.9406, 0.9508, 0.9571,
     0.9629),
    (0.0, 0.0, 0.0, 0.7443, 0.8842, 0.928, 0.9454, 0.9574, 0.9628, 0.97, 0.976, 0.979, 0.982,
     0.9862),
    (0.0, 0.0, 0.0, 0.0585, 0.2002, 0.3137, 0.3987, 0.4676, 0.5178, 0.5642, 0.6008, 0.637, 0.6645,
     0.6875),
)
# Spearman rank correlations of I1..I13 (mid-ranks, pairwise-complete rows).
_DENSE_SPEARMAN = (
    (1.0, -0.01, 0.08, 0.1, -0.78, -0.62, 0.33, 0.04, -0.2, 0.88, 0.17, 0.16, -0.14),
    (-0.01, 1.0, -0.08, -0.09, -0.02, 0.02, 0.0, 0.04, 0.03, -0.01, 0.01, -0.02, -0.07),
    (0.08, -0.08, 1.0, 0.37, -0.1, 0.1, 0.04, 0.31, 0.07, 0.06, 0.03, 0.01, 0.38),
    (0.1, -0.09, 0.37, 1.0, -0.16, 0.12, 0.13, 0.57, 0.29, 0.08, 0.12, 0.03, 0.75),
    (-0.78, -0.02, -0.1, -0.16, 1.0, 0.63, -0.39, -0.21, 0.05, -0.82, -0.41, -0.23, 0.07),
    (-0.62, 0.02, 0.1, 0.12, 0.63, 1.0, -0.22, 0.2, 0.48, -0.63, -0.22, -0.17, 0.39),
    (0.33, 0.0, 0.04, 0.13, -0.39, -0.22, 1.0, 0.18, 0.42, 0.19, 0.88, 0.1, 0.04),
    (0.04, 0.04, 0.31, 0.57, -0.21, 0.2, 0.18, 1.0, 0.44, 0.03, 0.2, 0.06, 0.6),
    (-0.2, 0.03, 0.07, 0.29, 0.05, 0.48, 0.42, 0.44, 1.0, -0.2, 0.47, -0.09, 0.34),
    (0.88, -0.01, 0.06, 0.08, -0.82, -0.63, 0.19, 0.03, -0.2, 1.0, 0.18, 0.16, -0.15),
    (0.17, 0.01, 0.03, 0.12, -0.41, -0.22, 0.88, 0.2, 0.47, 0.18, 1.0, 0.06, 0.04),
    (0.16, -0.02, 0.01, 0.03, -0.23, -0.17, 0.1, 0.06, -0.09, 0.16, 0.06, 1.0, -0.01),
    (-0.14, -0.07, 0.38, 0.75, 0.07, 0.39, 0.04, 0.6, 0.34, -0.15, 0.04, -0.01, 1.0),
)
# Gaussian-copula correlations: Pearson of the normal scores = 2 sin(pi * spearman / 6); positive
# definite as is (smallest eigenvalue 0.03).
DENSE_CORRELATION = 2.0 * np.sin(np.pi * np.asarray(_DENSE_SPEARMAN) / 6.0)


class CatMarginal(NamedTuple):
    """Value distribution of one categorical column (ranks 0.. in descending probability).

    Args:
        vocab_full: support size at full scale = the public Kaggle distinct count of the column.
        vocab_small: support size at the default ("small") scale: the number of distinct values
            that 1M rows drawn at full scale are expected to contain (computed from the fit).
        tail_a: Zipf-Mandelbrot exponent of the tail.
        tail_q: Zipf-Mandelbrot offset of the tail.
        head: shares of the most frequent values among present values (measured).
    """

    vocab_full: int
    vocab_small: int
    tail_a: float
    tail_q: float
    head: tuple[float, ...]


_M = CatMarginal
CAT_MARGINALS = (
    _M(1460, 1378, 1.398, 3.684, (0.49787, 0.1728, 0.08507, 0.04867, 0.0352, 0.02133, 0.016,
       0.01493, 0.01027, 0.0076, 0.0072, 0.00533, 0.00493, 0.00467, 0.004, 0.00387, 0.00373,
       0.00307)),  # C1
    _M(583, 583, 3.458, 135.721, (0.12267, 0.06733, 0.04453, 0.038, 0.0348, 0.032, 0.0276, 0.02493,
       0.0216, 0.01867, 0.01627, 0.01587, 0.01453, 0.01413, 0.014, 0.01307, 0.01213, 0.01173,
       0.01147, 0.0108, 0.01067, 0.01027, 0.01027, 0.00987)),  # C2
    _M(10131227, 331403, 0.96, 3.684, (0.04968, 0.03643, 0.0287, 0.01863, 0.01642, 0.01421, 0.00966,
       0.00925, 0.0069, 0.00676, 0.00552, 0.00483, 0.00455, 0.00455, 0.00442, 0.00428, 0.004, 0.004,
       0.00373, 0.00331)),  # C3
    _M(2202608, 193901, 1.02, 3.684, (0.07948, 0.0661, 0.03519, 0.01835, 0.0138, 0.00966, 0.00966,
       0.00925, 0.00856, 0.00704, 0.0069, 0.00607, 0.00552, 0.00469, 0.00469, 0.00455, 0.00442,
       0.00428, 0.004, 0.004, 0.00373, 0.00359, 0.00317, 0.00317)),  # C4
    _M(305, 293, 1.777, 3.684, (0.6668, 0.15227, 0.06373, 0.03587, 0.02173, 0.014, 0.0092, 0.00667,
       0.00467, 0.0044, 0.0028)),  # C5
    _M(24, 8, 3.164, 0.1, (0.52759, 0.22456, 0.14301, 0.04844, 0.04031, 0.01563)),  # C6
    _M(12517, 12509, 1.524, 236.385, (0.01093, 0.00893, 0.00787, 0.00747, 0.00707, 0.0068, 0.0064,
       0.00587, 0.00587, 0.00533, 0.00507, 0.00507, 0.00507, 0.00493, 0.0048, 0.0048, 0.00467,
       0.00453, 0.00413, 0.00413, 0.004, 0.00387, 0.0036, 0.0036)),  # C7
    _M(633, 620, 1.23, 0.4, (0.5968, 0.16307, 0.07787, 0.03933, 0.02733, 0.01667, 0.0132, 0.00987,
       0.00867, 0.00507, 0.00413, 0.00387, 0.00333, 0.00293)),  # C8
    _M(3, 3, 0.4, 0.1, (0.88747, 0.112)),  # C9
    _M(93145, 49999, 1.356, 102.84, (0.27813, 0.01213, 0.0104, 0.0072, 0.00653, 0.006, 0.00573,
       0.00507, 0.00493, 0.0044, 0.0044, 0.00427, 0.00387, 0.0036, 0.0036, 0.00347, 0.0032,
       0.0028)),  # C10
    _M(5683, 5678, 2.827, 717.076, (0.02027, 0.01747, 0.01213, 0.0096, 0.00947, 0.00893, 0.00813,
       0.008, 0.00787, 0.00773, 0.00747, 0.0068, 0.0068, 0.00653, 0.0064, 0.0064, 0.00587, 0.00573,
       0.00573, 0.00547, 0.00547, 0.00507, 0.00493, 0.00467)),  # C11
    _M(8351593, 325339, 0.94, 0.92, (0.04968, 0.03643, 0.0287, 0.01863, 0.01642, 0.01421, 0.00966,
       0.00966, 0.00925, 0.0069, 0.00676, 0.00552, 0.00552, 0.00483, 0.00455, 0.00455, 0.00442,
       0.00428, 0.004, 0.004, 0.00373, 0.00331)),  # C12
    _M(3194, 3194, 2.365, 411.711, (0.02227, 0.01827, 0.01333, 0.0128, 0.01253, 0.012, 0.012,
       0.00947, 0.00867, 0.00813, 0.008, 0.00787, 0.00773, 0.00747, 0.00747, 0.00693, 0.0068,
       0.00653, 0.0064, 0.00587, 0.00573, 0.00573, 0.00573, 0.00547)),  # C13
    _M(27, 27, 3.458, 6.416, (0.36267, 0.3456, 0.15773, 0.03493, 0.02613, 0.02293, 0.01507, 0.01107,
       0.0064, 0.00507, 0.00307, 0.00293)),  # C14
    _M(14992, 13702, 1.777, 135.721, (0.0204, 0.01493, 0.0108, 0.0108, 0.01027, 0.00987, 0.00893,
       0.00853, 0.0084, 0.0084, 0.008, 0.0076, 0.0072, 0.00693, 0.0064, 0.0064, 0.00613, 0.00613,
       0.00587, 0.00547, 0.00533, 0.00533, 0.00533, 0.0052)),  # C15
    _M(5461306, 267050, 0.98, 2.115, (0.04968, 0.03643, 0.0287, 0.01863, 0.01642, 0.01421, 0.00966,
       0.00966, 0.00925, 0.00842, 0.00759, 0.0069, 0.0069, 0.00676, 0.00552, 0.00455, 0.00455,
       0.00442, 0.00428, 0.004, 0.004, 0.00373, 0.00359, 0.00359)),  # C16
    _M(10, 9, 0.4, 0.1, (0.428, 0.13347, 0.1288, 0.0756, 0.0624, 0.05013, 0.04373, 0.04147,
       0.0364)),  # C17
    _M(5652, 5370, 2.239, 135.721, (0.05147, 0.02813, 0.02293, 0.01987, 0.01907, 0.0176, 0.01627,
       0.014, 0.014, 0.01373, 0.0132, 0.01307, 0.01293, 0.01213, 0.01213, 0.0108, 0.01027, 0.00987,
       0.0096, 0.00907, 0.00773, 0.00747, 0.00733, 0.00733)),  # C18
    _M(2173, 2075, 3.206, 311.965, (0.59819, 0.0355, 0.02449, 0.01641, 0.00881, 0.00833, 0.00808,
       0.0071, 0.00686, 0.00686, 0.00637, 0.00637, 0.00539, 0.00514, 0.0049, 0.0049)),  # C19
    _M(4, 3, 0.4, 0.1, (0.35602, 0.32591, 0.31807)),  # C20
    _M(7046547, 297451, 0.96, 1.603, (0.04968, 0.03643, 0.0287, 0.01863, 0.01642, 0.01421, 0.00966,
       0.00966, 0.00925, 0.00842, 0.0069, 0.0069, 0.00676, 0.00552, 0.00483, 0.00455, 0.00455,
       0.00442, 0.00428, 0.004, 0.004, 0.00373, 0.00331)),  # C21
    _M(18, 17, 3.206, 2.115, (0.52717, 0.38032, 0.03744, 0.0301, 0.02203)),  # C22
    _M(15, 12, 0.4, 0.1, (0.4464, 0.20133, 0.1048, 0.074, 0.06147, 0.04147, 0.03173, 0.014, 0.01173,
       0.00507, 0.00507, 0.00293)),  # C23
    _M(286181, 77193, 1.146, 14.749, (0.08196, 0.07672, 0.07258, 0.06265, 0.0345, 0.02387, 0.0167,
       0.00966, 0.00925, 0.00883, 0.00856, 0.00787, 0.00704, 0.00704, 0.00635, 0.00607, 0.00566,
       0.00469, 0.00455, 0.00442, 0.00428, 0.00428, 0.00414, 0.004)),  # C24
    _M(105, 102, 3.416, 8.468, (0.32811, 0.18928, 0.1141, 0.06391, 0.04432, 0.04358, 0.03648,
       0.02963, 0.02938, 0.02253, 0.01885, 0.01347, 0.01102, 0.00784, 0.00588, 0.00514)),  # C25
    _M(142572, 31690, 1.566, 179.115, (0.08595, 0.03257, 0.02816, 0.02644, 0.02204, 0.02032,
       0.01959, 0.01934, 0.01273, 0.00979, 0.00808, 0.00759, 0.00661, 0.00612, 0.00563, 0.00514,
       0.0049, 0.0049, 0.0049)),  # C26
)
del _M
# fmt: on

# (categorical column indices 0..25, copula correlation): columns whose ranks move together. In the
# head, C3 determines C12/C16/C21 (the most frequent values coincide row for row), C4 -> C24 and
# C7 -> C11 are near-functional too (majority-value purity 0.96-1.0).
VALUE_COPULA_GROUPS: tuple[tuple[tuple[int, ...], float], ...] = (
    ((2, 11, 15, 20), 0.95),  # C3, C12, C16, C21
    ((3, 23), 0.85),  # C4, C24
    ((6, 10), 0.85),  # C7, C11
)

# Smallest probability mass per tail value (capped at 1% per column): values never seen in the
# 7,500 rows still exist (the Kaggle counts say so), so a column's tail never has zero mass.
MIN_TAIL_MASS_PER_VALUE = 1e-6


@dataclass
class CatColumnSampler:
    """Sampler of one categorical column at one scale, plus the full-scale P(rank) of its head.

    Args:
        vocab: support size at this scale.
        head_cdf: cumulative shares of the explicit head values (renormalised for this scale).
        tail_a: Zipf-Mandelbrot exponent of the tail.
        tail_q: Zipf-Mandelbrot offset of the tail.
        tail_size: number of tail ranks at this scale.
        full_probs: P(rank) at full scale for the first ``head_ranks`` ranks.
    """

    vocab: int  # support size at the chosen scale
    head_cdf: np.ndarray  # cumulative shares of the explicit head values (scale's renormalisation)
    tail_a: float
    tail_q: float
    tail_size: int  # number of tail ranks at this scale
    full_probs: np.ndarray = field(repr=False)  # P(rank) at full scale for ranks < head_ranks

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """Map uniforms in [0, 1) to ranks (inverse CDF)."""
        k = len(self.head_cdf)
        head_mass = float(self.head_cdf[-1]) if k else 0.0
        out = np.searchsorted(self.head_cdf, u, side="right").astype(np.int64)  # (N,)
        if self.tail_size > 0:
            in_tail = u >= head_mass
            w = (u[in_tail] - head_mass) / max(1.0 - head_mass, 1e-300)
            x = _tail_inverse_cdf(w, self.tail_a, self.tail_q, self.tail_size)
            out[in_tail] = k + np.minimum(x, self.tail_size - 1)
        else:
            np.minimum(out, k - 1, out=out)
        return out


def _tail_cdf(x: np.ndarray, a: float, q: float, size: int) -> np.ndarray:
    """CDF at ``x`` of the continuous density ``~ (x + q) ** -a`` on ``[0, size]``."""
    if abs(a - 1.0) < 1e-9:
        return np.log1p(x / q) / math.log1p(size / q)
    g0, gs = q ** (1.0 - a), (size + q) ** (1.0 - a)
    return (g0 - (x + q) ** (1.0 - a)) / (g0 - gs)


def _tail_inverse_cdf(w: np.ndarray, a: float, q: float, size: int) -> np.ndarray:
    """Tail ranks (floor of the inverse of :func:`_tail_cdf`) for uniforms ``w`` in [0, 1]."""
    if abs(a - 1.0) < 1e-9:
        x = q * np.expm1(w * math.log1p(size / q))
    else:
        g0, gs = q ** (1.0 - a), (size + q) ** (1.0 - a)
        x = (g0 - w * (g0 - gs)) ** (1.0 / (1.0 - a)) - q
    return np.floor(np.maximum(x, 0.0)).astype(np.int64)


def _column_probs(
    head: np.ndarray, tail_mass: float, a: float, q: float, tail_size: int, n: int
) -> np.ndarray:
    """P(rank) for ranks 0..n-1 (head shares, then the tail's discretised density)."""
    k = len(head)
    out = np.zeros(n)
    out[: min(k, n)] = head[: min(k, n)]
    m = min(n, k + tail_size) - k
    if m > 0:
        edges = _tail_cdf(np.arange(m + 1, dtype=np.float64), a, q, tail_size)
        out[k : k + m] = tail_mass * np.diff(edges)
    return out


def build_cat_column(c: int, scale: str, head_ranks: int) -> CatColumnSampler:
    """Sampler of column ``c`` at ``scale``, with the full-scale P(rank) of its first ranks."""
    spec = CAT_MARGINALS[c]
    head = np.asarray(spec.head, dtype=np.float64)
    k = len(head)

    def masses(vocab: int) -> tuple[np.ndarray, float, int]:
        tail_size = max(vocab - k, 0)
        floor = min(MIN_TAIL_MASS_PER_VALUE * tail_size, 0.01)  # unseen values still occur
        tail_mass = max(1.0 - float(head.sum()), floor) if tail_size else 0.0
        return head / head.sum() * (1.0 - tail_mass), tail_mass, tail_size

    full_head, full_tail_mass, full_tail = masses(spec.vocab_full)
    full_probs = _column_probs(
        full_head,
        full_tail_mass,
        spec.tail_a,
        spec.tail_q,
        full_tail,
        min(head_ranks, spec.vocab_full),
    )
    vocab = spec.vocab_full if scale == "full" else spec.vocab_small
    scale_head, _, tail_size = masses(vocab)
    return CatColumnSampler(
        vocab, np.cumsum(scale_head), spec.tail_a, spec.tail_q, tail_size, full_probs
    )


_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (Abramowitz-Stegun 7.1.26 erf, abs error < 1.5e-7).

    Args:
        x: any float array.
    """
    z = np.abs(x) * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + _ERF_P * z)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    half_tail = 0.5 * poly * np.exp(-z * z)  # = 1 - Phi(|x|)
    return np.where(x >= 0, 1.0 - half_tail, half_tail)


def norm_ppf(p: float) -> float:
    """Inverse of :func:`norm_cdf` for one probability in (0, 1) (bisection, 1e-12 in x).

    Args:
        p: probability strictly between 0 and 1.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"norm_ppf needs 0 < p < 1, got {p}")
    lo, hi = -40.0, 40.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if float(norm_cdf(np.asarray(mid))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
