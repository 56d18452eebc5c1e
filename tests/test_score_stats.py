"""The score statistics (batchrun.score.stats) against independent computations: statsmodels
for Wilson and McNemar, scipy for the permutation test and the bootstrap, brute force for
pass@k."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from batchrun.score.stats import bootstrap_mean, mcnemar, pass_at_k, sign_flip, wilson


def test_wilson_18_of_30() -> None:
    """30 rows, 18 correct: mean exactly 0.6, interval [0.423, 0.754], as statsmodels has it."""
    interval = wilson(18, 30)
    assert interval.mean == 0.6
    assert (round(interval.low, 3), round(interval.high, 3)) == (0.423, 0.754)
    low, high = proportion_confint(18, 30, method="wilson")
    assert interval.low == pytest.approx(low, abs=1e-12)
    assert interval.high == pytest.approx(high, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (1, 7), (333, 1000), (5, 5000)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    """Every proportion, at the edges too, has the Wilson interval statsmodels computes."""
    low, high = proportion_confint(k, n, method="wilson")
    interval = wilson(k, n)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)


def _table(a: list[int], b: list[int]) -> list[list[int]]:
    return [
        [
            sum(x == 1 and y == 1 for x, y in zip(a, b, strict=True)),
            sum(x == 1 and y == 0 for x, y in zip(a, b, strict=True)),
        ],
        [
            sum(x == 0 and y == 1 for x, y in zip(a, b, strict=True)),
            sum(x == 0 and y == 0 for x, y in zip(a, b, strict=True)),
        ],
    ]


@pytest.mark.parametrize(
    ("only_a", "only_b", "both"), [(3, 9, 20), (0, 6, 5), (15, 35, 40), (7, 7, 3)]
)
def test_mcnemar_matches_statsmodels(only_a: int, only_b: int, both: int) -> None:
    """McNemar's p-value is statsmodels': exact binomial under 25 discordant pairs, else the
    chi-square with continuity correction."""
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * 4
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * 4
    test = mcnemar(a, b)
    exact = only_a + only_b < 25
    expected = sm_mcnemar(_table(a, b), exact=exact, correction=True)
    assert test.name == ("mcnemar exact" if exact else "mcnemar chi2")
    assert test.p_value == pytest.approx(float(expected.pvalue), rel=1e-9)


def test_mcnemar_with_no_disagreement_is_p_one() -> None:
    """Two variants that agree on every row are not told apart."""
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0


def _pass_at_k_brute(n: int, c: int, k: int) -> float:
    """The share of k-subsets of the n samples holding at least one pass."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 6), (8, 3, 2), (4, 4, 2)]
)
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int) -> None:
    """pass@k is the chance that k samples drawn without replacement hold a pass."""
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute(n, c, k), abs=1e-12)


def test_sign_flip_exact_matches_scipy() -> None:
    """With few ids the sign-flip test enumerates every flip, as scipy's exact test does."""
    diffs = [0.5, 1.0, -0.25, 0.75, 1.0, 0.0, 0.5, 0.25, -0.5, 1.0]
    test = sign_flip(diffs)
    expected = sps.permutation_test(
        (np.array(diffs),),
        np.mean,
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=10_000,
    )
    assert test.p_value == pytest.approx(float(expected.pvalue), rel=1e-9)


def test_sign_flip_sees_a_clear_difference_and_not_noise() -> None:
    """Many ids: a shift of one standard deviation is found, centred noise is not."""
    rng = random.Random(3)
    shifted = [rng.gauss(1.0, 1.0) for _ in range(60)]
    noise = [rng.gauss(0.0, 1.0) for _ in range(60)]
    assert sign_flip(shifted).p_value < 0.001
    assert sign_flip(noise).p_value > 0.05
    expected = sps.ttest_1samp(noise, 0.0).pvalue
    assert sign_flip(noise).p_value == pytest.approx(float(expected), abs=0.08)


def test_bootstrap_agrees_with_scipy_and_is_reproducible() -> None:
    """One row an id: the interval is scipy's percentile bootstrap's, within resampling noise,
    and the same on every call (seeded)."""
    rng = random.Random(5)
    values = [rng.random() for _ in range(200)]
    ids = list(range(200))
    ours = bootstrap_mean(values, ids)
    theirs = sps.bootstrap(
        (np.array(values),), np.mean, method="percentile", n_resamples=4000, random_state=1
    ).confidence_interval
    assert ours.mean == pytest.approx(sum(values) / 200)
    assert ours.low == pytest.approx(theirs.low, abs=0.01)
    assert ours.high == pytest.approx(theirs.high, abs=0.01)
    assert bootstrap_mean(values, ids) == ours


def test_bootstrap_clusters_by_id() -> None:
    """Samples of one id that agree are one draw, not five: the clustered interval is about
    sqrt(5) times wider than one that treats them as independent rows."""
    rng = random.Random(9)
    per_id = [rng.random() for _ in range(100)]
    values = [v for v in per_id for _ in range(5)]
    clustered = bootstrap_mean(values, [i for i in range(100) for _ in range(5)])
    naive = bootstrap_mean(values, list(range(500)))
    ratio = (clustered.high - clustered.low) / (naive.high - naive.low)
    assert 1.8 < ratio < 2.7
