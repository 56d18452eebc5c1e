"""The statistics of scores: intervals, pass@k and paired tests a reader can trust.

Pure functions of numbers, no I/O and no polars: :mod:`batchrun.report.scores` feeds them the
scores of a run folder. Every random draw comes from a generator seeded here, so the same
scores give the same intervals. Choices, and why:

- a mean of 0/1 scores gets the Wilson interval (right near 0 and 1, where the normal one
  leaves [0, 1]); any other mean a percentile bootstrap that resamples whole ids, since the
  samples of one id are not independent draws;
- pass@k is the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)`` per id
  with ``n`` samples of which ``c`` passed, averaged over ids;
- two variants are compared on the rows both scored: the mean difference with a bootstrap
  interval over ids, and McNemar's test for 0/1 scores with one sample an id (exact binomial
  when fewer than 25 pairs disagree, else chi-square with continuity correction); otherwise a
  sign-flip permutation test of the per-id differences (exact when 2**ids is small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALPHA",
    "Interval",
    "PairedTest",
    "bootstrap_mean",
    "mcnemar",
    "pass_at_k",
    "sign_flip",
    "wilson",
]

ALPHA = 0.05  # 95% intervals; a difference is "distinguishable" when p < ALPHA
SEED = 20260
BOOTSTRAP = 2000
_Z = 1.959963984540054  # the normal quantile of 0.975
_EXACT_BELOW = 25  # discordant pairs under which McNemar's test is the exact binomial
_EXACT_IDS = 12  # ids up to which the sign-flip test enumerates all 2**ids flips


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval, and how it was made (``wilson`` or ``bootstrap``)."""

    mean: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class PairedTest:
    """A two-sided test of no difference: its name, statistic (if any) and p-value."""

    name: str
    statistic: float | None
    p_value: float


def wilson(successes: int, n: int) -> Interval:
    """The Wilson score interval of a proportion (n > 0)."""
    p = successes / n
    centre = (p + _Z**2 / (2 * n)) / (1 + _Z**2 / n)
    half = _Z / (1 + _Z**2 / n) * math.sqrt(p * (1 - p) / n + _Z**2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), "wilson")


def _cluster_sums(
    values: Sequence[float], clusters: Sequence[object]
) -> tuple[np.ndarray, np.ndarray]:
    index: dict[object, int] = {}
    codes = np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.int64)
    sums = np.bincount(codes, weights=np.asarray(values, dtype=float), minlength=len(index))
    counts = np.bincount(codes, minlength=len(index)).astype(float)
    return sums, counts


def bootstrap_mean(
    values: Sequence[float], clusters: Sequence[object], *, draws: int = BOOTSTRAP
) -> Interval:
    """The mean of ``values`` with a 95% percentile bootstrap interval, resampling whole
    clusters (ids): each draw takes as many clusters as there are, with replacement."""
    sums, counts = _cluster_sums(values, clusters)
    mean = float(sums.sum() / counts.sum())
    if len(sums) < 2:
        return Interval(mean, mean, mean, "bootstrap")
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(sums), size=(draws, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return Interval(mean, float(low), float(high), "bootstrap")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one id: ``n`` samples, ``c`` of them passed (k <= n)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mcnemar(a: Sequence[int], b: Sequence[int]) -> PairedTest:
    """McNemar's test of paired 0/1 outcomes: exact binomial when fewer than 25 pairs
    disagree, else chi-square with continuity correction."""
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        return PairedTest("mcnemar exact", None, 1.0)
    if discordant < _EXACT_BELOW:
        tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1))
        return PairedTest("mcnemar exact", None, min(1.0, 2 * tail / 2**discordant))
    stat = (abs(only_a - only_b) - 1) ** 2 / discordant
    return PairedTest("mcnemar chi2", stat, math.erfc(math.sqrt(stat / 2)))


def sign_flip(differences: Sequence[float], *, draws: int = BOOTSTRAP) -> PairedTest:
    """A two-sided sign-flip permutation test that the per-id differences centre on 0:
    exact over every flip for up to 12 ids, else ``draws`` seeded random flips."""
    d = np.asarray(differences, dtype=float)
    observed = abs(d.mean())
    if len(d) <= _EXACT_IDS:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        means = np.abs((signs * d).mean(axis=1))
        p = float(np.mean(means >= observed - 1e-12))
    else:
        rng = np.random.default_rng(SEED)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(draws, len(d)))
        means = np.abs((signs * d).mean(axis=1))
        p = float((np.sum(means >= observed - 1e-12) + 1) / (draws + 1))
    return PairedTest("sign-flip permutation", float(d.mean()), p)
