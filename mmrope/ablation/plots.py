"""The plots of a grid: accuracy against image size (or frame count), bars at the training size and beyond, and the
learning curves, each arm one colour with its 95% interval."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from mmrope.viz.figures import pyplot, save

MANY_ARMS = 6  # above this many arms a plot puts its legend beside the axes and takes 20 colours


def arm_colours(n: int) -> list:
    """Matplotlib's 10-colour cycle, or tab20 for more arms, so that no two arms of a plot share a colour."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    import matplotlib

    return [matplotlib.colormaps["tab20"](i % 20) for i in range(n)]


def _legend(ax, arms: list[str]) -> None:
    if len(arms) > MANY_ARMS:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8, loc="best")


def plot_metric_vs_resolution(summary: list[dict], split: str, path: Path, train_size: int,
                              metric: str = "relation", along: str = "size", label: str | None = None,
                              protocol: str = "scaled") -> Path:
    """One line per arm (mean) with its 95% interval as a band, against image side (``along="size"``) or, for clips
    at the training size, frame count (``along="frames"``); the training value marked."""
    plt = pyplot()
    arms = list(dict.fromkeys(c["arm"] for c in summary))
    fig, ax = plt.subplots(figsize=(8.6 if len(arms) > MANY_ARMS else 6.4, 4.2))
    colours = arm_colours(len(arms))
    for i, arm in enumerate(arms):
        points = sorted((c[along], *c[metric]) for c in summary
                        if c["split"] == split and c["arm"] == arm and metric in c and c[along] is not None
                        and (c["protocol"] == protocol or c["factor"] == 1) and (along == "size" or c["factor"] == 1))
        if not points:
            continue
        x = [p[0] for p in points]
        ax.plot(x, [p[1] for p in points], marker="o", color=colours[i], label=arm)
        ax.fill_between(x, [p[2] for p in points], [p[3] for p in points], color=colours[i],
                        alpha=0.18 if len(arms) <= MANY_ARMS else 0.07, linewidth=0)
    ax.axvline(train_size, color="grey", linestyle="--", linewidth=1)
    ax.annotate("training " + ("size" if along == "size" else "frames"), (train_size, 0.02), xytext=(3, 0),
                textcoords="offset points", fontsize=8, color="grey")
    ticks = sorted({c[along] for c in summary if c[along] is not None})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(s) for s in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("image side (px)" if along == "size" else "frames per clip")
    ax.set_ylabel(f"{label or metric} accuracy")
    shown = "" if protocol == "scaled" else f" ({protocol})"
    ax.set_title(f"{split}{shown}: {label or metric} accuracy, mean and 95% interval", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, arms)
    return save(fig, path)


def plot_metric_bars(summary: list[dict], split: str, path: Path, points: list[tuple[float, int | None]],
                     metric: str = "relation", label: str | None = None) -> Path:
    """Grouped bars, one group per (factor of the training size, frames) point, one bar per arm, 95% intervals as
    error bars (scaled protocol)."""
    plt = pyplot()
    arms = list(dict.fromkeys(c["arm"] for c in summary))
    cells = {(c["arm"], c["factor"], c["frames"]): c for c in summary
             if c["split"] == split and c["protocol"] == "scaled"}
    fig, ax = plt.subplots(figsize=(8.6 if len(arms) > MANY_ARMS else 6.4, 4.2))
    colours = arm_colours(len(arms))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        values = [cells.get((arm, *p), {}).get(metric, (math.nan, math.nan, math.nan)) for p in points]
        errors = [[max(0.0, m - lo) for m, lo, _ in values], [max(0.0, hi - m) for m, _, hi in values]]
        xs = [g + (i - (len(arms) - 1) / 2) * width for g in range(len(points))]
        ax.bar(xs, [m for m, _, _ in values], width, yerr=errors, capsize=3, color=colours[i], label=arm)
    ax.set_xticks(range(len(points)), [f"{f:.3g}x ({cells.get((arms[0], f, n), {}).get('size', '?')} px"
                                       + (f", {n} frames)" if n else ")") for f, n in points])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{label or metric} accuracy")
    ax.set_title(f"{split}: {label or metric} accuracy at the training size and beyond (95% interval)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, arms)
    return save(fig, path)


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, metric: str,
                threshold: float | None) -> Path | None:
    """Validation ``metric`` against step, one colour per arm, one thin line per seed and the mean over seeds."""
    if not any(c for cs in curves.values() for c in cs):
        return None
    plt = pyplot()
    arms = list(curves)
    fig, ax = plt.subplots(figsize=(8.6 if len(arms) > MANY_ARMS else 6.4, 4.2))
    for colour, arm in zip(arm_colours(len(arms)), arms):
        by_step = defaultdict(list)
        for curve in curves[arm]:
            if curve:
                ax.plot(*zip(*curve), color=colour, linewidth=0.6, alpha=0.35)
            for step, value in curve:
                by_step[step].append(value)
        if by_step:
            steps = sorted(by_step)
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=colour, linewidth=1.8,
                    label=arm)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {metric} accuracy")
    ax.set_title(f"validation {metric} accuracy during training: seeds (thin) and their mean", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, arms)
    return save(fig, path)
