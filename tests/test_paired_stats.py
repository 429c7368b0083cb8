"""The paired statistics of the ablation: numbers from scipy (binomtest, its Wilson interval, norm.ppf) as worked
examples, Holm by hand, and the bootstrap's properties."""

import numpy as np
import pytest

from mmrope.ablation.paired import (
    bootstrap_difference,
    bootstrap_mean,
    holm,
    mcnemar,
    minimum_detectable_difference,
    sign_test,
    wilson_interval,
)


def test_wilson_matches_scipy_and_stays_inside_0_1():
    # scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(11, 100) == pytest.approx((0.06254196357064568, 0.18631296503080313), abs=1e-12)
    assert wilson_interval(100, 100) == pytest.approx((0.9630065017930143, 1.0), abs=1e-12)
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and 0 < hi < 1


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    # 12 pairs only a got right, 3 only b: scipy.stats.binomtest(3, 15, 0.5).pvalue
    a = [[1] * 12 + [0] * 3 + [1] * 10 + [0] * 5]
    b = [[0] * 12 + [1] * 3 + [1] * 10 + [0] * 5]
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (12, 3) and p == pytest.approx(0.03515625)
    assert mcnemar([[1, 0], [1, 1]], [[1, 0], [1, 1]]) == (0, 0, 1.0)  # no discordant pair: nothing to test
    assert mcnemar([[1] * 7], [[0] * 7])[2] == pytest.approx(0.015625)  # binomtest(0, 7).pvalue


def test_sign_test_counts_every_nonzero_contrast_once():
    # an interaction's per-pair contrasts (a - b) - (c - d) lie in -2..2: 9 above 0, 2 below, zeros left out;
    # scipy.stats.binomtest(2, 11, 0.5).pvalue
    contrast = [[2, 1, 1, 0, -1, 0, 1, 2], [1, 1, 0, 0, -2, 1, 1, 0]]
    assert sign_test(contrast) == pytest.approx((9, 2, 0.0654296875))
    assert sign_test([[0, 0], [0, 0]]) == (0, 0, 1.0)
    a, b = np.array([[1, 1, 0, 1]]), np.array([[0, 1, 1, 0]])  # McNemar is the sign test of a - b
    assert mcnemar(a, b) == sign_test(a - b) == (2, 1, 1.0)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1, then made monotone: 0.04, 0.09, max(0.08, 0.09), 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2] and holm([0.6, 0.7]) == [1.0, 1.0]


def test_minimum_detectable_difference():
    assert minimum_detectable_difference(1.0) == pytest.approx(2.8015852181129683)  # norm.ppf(.975) + norm.ppf(.8)
    assert minimum_detectable_difference(0.05, alpha=0.05 / 4) > minimum_detectable_difference(0.05)


def test_bootstrap_intervals_stay_in_0_1_and_cover_the_difference():
    rng = np.random.default_rng(0)
    a = (rng.random((5, 200)) < 0.8).astype(float)
    b = (rng.random((5, 200)) < 0.6).astype(float)
    diff, lo, hi, se = bootstrap_difference(a, b, rounds=500)
    assert diff == pytest.approx(a.mean() - b.mean()) and lo < diff < hi and se > 0
    assert lo > 0  # 0.8 against 0.6 on 1000 pairs: apart
    mean, lo, hi = bootstrap_mean(np.ones((3, 50)), rounds=200)
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    mean, lo, hi = bootstrap_mean(a, rounds=500)
    assert 0 <= lo < mean < hi <= 1


def test_the_bootstrap_carries_the_variation_between_seeds():
    """Two arms that agree on average but whose seeds disagree wildly: resampling seeds widens the interval."""
    a = np.array([[1.0] * 100, [0.0] * 100, [1.0] * 100, [0.0] * 100])
    b = np.array([[0.0] * 100, [1.0] * 100, [0.0] * 100, [1.0] * 100])
    diff, lo, hi, _ = bootstrap_difference(a, b, rounds=500)
    assert diff == 0 and lo <= -0.4 and hi >= 0.4
    with pytest.raises(ValueError, match="one \\(seeds, scenes\\) shape"):
        bootstrap_difference(a, b[:2])
