"""A grid's per-scene outcomes, and the statistics read from them.

Every run is scored on the same scenes, and seed k of every arm sees the same training data in the same order, so two
arms' outcomes pair up by (seed, scene): an arm's outcomes at a point (split, size protocol, factor, frames) are an
array (seeds, scenes). :func:`summarize_scenes` gives each cell its mean and a two-level bootstrap interval (seeds,
then scenes: inside [0, 1], carrying the variation between training runs as well as the sampling of scenes);
:func:`compare` tests the comparisons a preset states in advance (:mod:`mmrope.ablation.paired`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mmrope.ablation.paired import (
    bootstrap_difference,
    bootstrap_mean,
    holm,
    mcnemar,
    minimum_detectable_difference,
    sign_test,
)
from mmrope.ablation.plan import Plan, arm_name

ROUNDS = 1000  # bootstrap resamples per table cell (comparisons: 4000)


def read_scenes(plan: Plan, out: Path) -> dict[tuple[str, int], list[dict]]:
    """Every run's ``predictions.csv`` -> rows by (arm, seed); scores as floats, NaN where a scene has none."""
    from mmrope.ablation.scoring import SCENES_FILE

    runs = {}
    for encoder, scheme in plan.arms:
        for seed in plan.seeds:
            path = out / arm_name(encoder, scheme) / f"seed{seed}" / SCENES_FILE
            if not path.is_file():
                continue
            with open(path, newline="", encoding="utf-8") as f:
                runs[arm_name(encoder, scheme), seed] = list(csv.DictReader(f))
    return runs


def _point(row: dict) -> tuple:
    frames = row.get("frames")
    return row["split"], row.get("protocol", "scaled"), float(row["factor"]), int(frames) if frames else None


def outcomes(plan: Plan, runs: dict, arm: str, point: tuple, metric: str) -> np.ndarray | None:
    """(seeds, scenes) of one arm's ``metric`` at ``point`` (split, protocol, factor, frames); NaN where a scene has
    no such score; None when no seed has the point."""
    per_seed = []
    for seed in plan.seeds:
        rows = runs.get((arm, seed))
        if rows is None:
            continue
        scores = {int(r["index"]): _number(r.get(metric)) for r in rows if _point(r) == point}
        if scores:
            per_seed.append([scores.get(i, math.nan) for i in range(plan.n)])
    return np.array(per_seed, dtype=np.float64) if per_seed else None


def _number(cell) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def _defined(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The scene columns where every seed of every array (a comparison's arms) has a score: a conditional score
    (``relation_named``) is compared on the scenes where it is defined for all."""
    keep = ~np.any([np.isnan(x).any(0) for x in arrays], axis=0)
    return [x[:, keep] for x in arrays]


def summarize_scenes(plan: Plan, runs: dict, metrics: tuple[str, ...]) -> list[dict]:
    """One cell per arm x point: ``{arm, split, protocol, factor, size, frames, seeds, scenes, <metric>: (mean,
    low, high)}``, the interval a two-level bootstrap of the (seed, scene) outcomes."""
    cells = []
    points = [(split, protocol, factor, frames) for split in plan.splits for protocol, factor in plan.scored
              for frames in (plan.frames or [None])]
    for encoder, scheme in plan.arms:
        arm = arm_name(encoder, scheme)
        for point in points:
            cell = {"arm": arm, "split": point[0], "protocol": point[1], "factor": point[2],
                    "size": round(point[2] * plan.train_size), "frames": point[3]}
            for metric in metrics:
                a = outcomes(plan, runs, arm, point, metric)
                if a is None:
                    continue
                a, = _defined([a])
                if a.size:
                    cell[metric] = bootstrap_mean(a, rounds=ROUNDS)
                    cell["seeds"] = a.shape[0]
            if "seeds" in cell:
                cells.append(cell)
    return cells


def compare(plan: Plan, runs: dict) -> list[dict]:
    """Each stated comparison: the two arms' means, their difference with its bootstrap interval, McNemar's exact
    test on the paired (seed, scene) outcomes, the Holm-adjusted p over all of them and the minimum detectable
    difference at the strictest Holm level (level / m, power 0.8). An interaction's sides are the two differences
    (means in [-1, 1]), its test the sign test on the per-pair contrast (a - b) - (c - d). Everything is at
    ``plan.level`` (0.05 over the preset's looks): Holm's threshold, the interval's confidence and the MDD."""
    level = plan.level
    results = []
    for c in plan.comparisons:
        metric = c.metric or plan.metric
        point = (c.split, c.protocol, c.factor, c.frames)
        arrays = [outcomes(plan, runs, arm, point, metric) for arm in c.arms]
        if any(x is None for x in arrays) or len({x.shape[0] for x in arrays}) > 1:
            results.append({"comparison": c, "metric": metric, "missing": True})
            continue
        arrays = _defined(arrays)
        if c.minus is None:
            a, b = arrays
            only_a, only_b, p = mcnemar(a, b)
        else:
            a, b = arrays[0] - arrays[1], arrays[2] - arrays[3]
            only_a, only_b, p = sign_test(a - b)
        diff, lo, hi, se = bootstrap_difference(a, b, rounds=4000, confidence=1 - level)
        results.append({"comparison": c, "metric": metric, "a": float(a.mean()), "b": float(b.mean()),
                        "diff": diff, "lo": lo, "hi": hi, "se": se, "only_a": only_a, "only_b": only_b, "p": p,
                        "pairs": a.size, "seeds": a.shape[0]})
    tested = [r for r in results if not r.get("missing")]
    for r, adjusted in zip(tested, holm([r["p"] for r in tested])):
        r["holm"] = adjusted
        r["mdd"] = minimum_detectable_difference(r["se"], level / max(1, len(tested)))
        # separated only when the test on these runs' scenes and the interval over seeds agree: McNemar alone
        # speaks of these trained models, not of the training procedure
        apart = r["lo"] > 0 or r["hi"] < 0
        r["verdict"] = ("a" if r["diff"] > 0 else "b") if adjusted < level and apart else (
            "runs_only" if adjusted < level else "null")
    return results
