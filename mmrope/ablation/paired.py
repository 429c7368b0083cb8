"""Statistics that can say "no": per-scene paired tests across arms, Holm's correction, intervals inside [0, 1], and
the smallest difference a comparison could have detected.

Every run of a grid is scored on the same scenes, and seed k of every arm sees the same training data in the same
order, so two arms' outcomes pair up by (seed, scene). An arm's outcomes are an array (seeds, scenes) of per-scene
scores in [0, 1] (1 or 0 for place accuracy).

- :func:`mcnemar` is the exact McNemar test on the discordant (seed, scene) pairs: the stated comparisons' test. It
  treats the pairs as independent, so it speaks of these trained models on these scenes; :func:`sign_test` is the
  same test on any per-pair contrast, an interaction's (two arms' difference minus two others') included;
- :func:`bootstrap_difference` resamples seeds, then scenes within them (the same scenes for both arms), so its
  interval also carries the variation between training runs: the interval a reader should quote, and the standard
  error the minimum detectable difference is computed from;
- :func:`holm` adjusts the p-values of all comparisons stated in advance together;
- :func:`minimum_detectable_difference` is what a null result comes with: the difference the comparison had an 80%
  chance to detect at its Holm-adjusted level, given the bootstrap's standard error.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

Z = NormalDist()


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion: inside [0, 1] even at 0/n and n/n (where mean ± t·s collapses)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got {n}")
    z = Z.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = centre - half, centre + half  # 0 and 1 exactly at 0/n and n/n, but for rounding
    return (0.0 if successes <= 0 else max(0.0, lo)), (1.0 if successes >= n else min(1.0, hi))


def mcnemar(a: list[list[float]], b: list[list[float]]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test of paired 0/1 outcomes ``a`` and ``b`` (seeds, scenes) -> (pairs only ``a`` got
    right, pairs only ``b`` got right, p). Scores that are not 0 or 1 count as right when >= 0.5."""
    a, b = np.asarray(a, dtype=np.float64) >= 0.5, np.asarray(b, dtype=np.float64) >= 0.5
    if a.shape != b.shape:
        raise ValueError(f"mcnemar needs two arrays of one (seeds, scenes) shape, got {a.shape} and {b.shape}")
    return sign_test(a.astype(np.int64) - b.astype(np.int64))


def sign_test(contrast) -> tuple[int, int, float]:
    """Exact two-sided sign test of per-pair contrasts -> (pairs above 0, pairs below 0, p): McNemar's test when the
    contrast is one 0/1 outcome minus another, and the test of an interaction when it is a difference of two such
    differences ((a - b) - (c - d) per (seed, scene)). Zeros say nothing either way and are left out."""
    contrast = np.asarray(contrast, dtype=np.float64)
    above, below = int((contrast > 0).sum()), int((contrast < 0).sum())
    n = above + below
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(min(above, below) + 1)) / 2**n
    return above, below, min(1.0, 2 * tail)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (controls the family-wise error at any level), in input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bootstrap_mean(a, rounds: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a`` (seeds, scenes) and its two-level bootstrap percentile interval (seeds resampled, then scenes):
    inside [0, 1], since every resample is a mean of scores in [0, 1]."""
    a = np.asarray(a, dtype=np.float64)
    mean, lo, hi, _ = bootstrap_difference(a, np.zeros_like(a), rounds, confidence, seed)
    return mean, lo, hi


def bootstrap_difference(a, b, rounds: int = 2000, confidence: float = 0.95, seed: int = 0
                         ) -> tuple[float, float, float, float]:
    """Mean of ``a - b`` over paired (seed, scene) outcomes (arrays (seeds, scenes)), its two-level bootstrap
    percentile interval and standard error -> (difference, low, high, se). Each round draws the seeds with
    replacement, then the scenes with replacement, the same scenes for both arms (the pairing), so the interval
    carries both the seed-to-seed variation of training and the sampling of scenes. One seed: scenes only."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"bootstrap_difference needs two arrays of one (seeds, scenes) shape, got {a.shape} and "
                         f"{b.shape}")
    d = a - b
    n_seeds, n_scenes = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, (rounds, n_seeds)) if n_seeds > 1 else np.zeros((rounds, 1), dtype=np.int64)
    scenes = rng.integers(0, n_scenes, (rounds, n_scenes))
    draws = np.array([d[np.ix_(s, j)].mean() for s, j in zip(seeds, scenes)])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(d.mean()), float(lo), float(hi), float(draws.std(ddof=1))


def minimum_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true difference a two-sided test at level ``alpha`` detects with probability ``power`` when its estimate
    has standard error ``se``: (z_{1-alpha/2} + z_{power}) * se."""
    return (Z.inv_cdf(1 - alpha / 2) + Z.inv_cdf(power)) * se
