"""Learning curves of a grid's runs: each run's validation scores during training, from its CSV logs, and the step
at which each first reached the preset's ``threshold``."""

from __future__ import annotations

import math
from pathlib import Path

from mmrope.ablation.plan import Plan, arm_name


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """A run's validation ``metric`` against optimizer steps ([] when it was never validated)."""
    from mmrope.viz.curves import validation_curves

    return validation_curves(run_dir, metric)


def steps_to(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first validated step at which the curve reaches ``threshold``; None if it never does (censored)."""
    return next((step for step, value in curve if value >= threshold), None)


def curve_table(plan: Plan, out: Path) -> tuple[str, dict[str, list[list[tuple[int, float]]]]]:
    """Markdown: per arm, each seed's steps to the threshold (">N" where it never got there) and the median over
    seeds (censored runs count as never); and the curves by arm, for the plot."""
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for encoder, scheme in plan.arms:
        arm = arm_name(encoder, scheme)
        curves[arm] = [read_curve(out / arm / f"seed{seed}", plan.metric) for seed in plan.seeds]
    if plan.threshold is None or not any(c for cs in curves.values() for c in cs):
        return "", curves
    lines = [f"## Steps to {plan.metric} {plan.threshold:g} (validation during training)", "",
             f"The first validation at which a run's {plan.metric} accuracy reached {plan.threshold:g}; "
             f"'>{plan.max_steps}' where it never did within the budget (censored). The median counts censored runs "
             "as slower than every run that got there.", "",
             "| arm | " + " | ".join(f"seed {k}" for k in plan.seeds) + " | median | last validation (mean) |",
             "| --- |" + " ---: |" * (len(plan.seeds) + 2)]
    for arm, seeds in curves.items():
        reached = [steps_to(c, plan.threshold) for c in seeds]
        cells = [str(s) if s is not None else (f">{plan.max_steps}" if c else "") for s, c in zip(reached, seeds)]
        ranked = sorted(s if s is not None else math.inf for s, c in zip(reached, seeds) if c)
        median = ranked[len(ranked) // 2] if ranked and len(ranked) % 2 else (
            (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2 if ranked else None)
        last = [c[-1][1] for c in seeds if c]
        shown = "" if median is None else (f">{plan.max_steps}" if math.isinf(median) else f"{median:g}")
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {shown} | "
                     + (f"{sum(last) / len(last):.3f}" if last else "") + " |")
    return "\n".join(lines) + "\n", curves
