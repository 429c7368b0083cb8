"""What a grid's results look like to a reader: results.csv, results.md (mean ± 95% CI per cell) and plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from mmrope.ablation.plan import Plan, arm_name
from mmrope.ablation.stats import METRICS, summarize
from mmrope.viz.figures import pyplot, save

CSV_COLUMNS = ("encoder", "scheme", "seed", "split", "factor", "size", "frames", "n") + METRICS


def format_cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return ""
    mean, ci = value
    return f"{mean:.3f}" if ci is None else f"{mean:.3f} ± {ci:.3f}"


def format_results(summary: list[dict], plan: Plan, metrics: tuple[str, ...] | None = None) -> str:
    """Markdown: per split and metric, one row per arm and one column per size (and frame count), cells
    "mean ± 95% CI"."""
    metrics = metrics or (plan.metric, "attribute")
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    cells = {(arm_name(s["encoder"], s["scheme"]), s["split"], s["factor"], s.get("frames")): s for s in summary}
    counts = sorted({min(s["seeds"] for s in summary), max(s["seeds"] for s in summary)})
    seeds = f"{'-'.join(map(str, counts))} {'seed' if counts == [1] else 'seeds'}"
    read_as = "one (t, h, w) block" if plan.clip_mode == "block" else "separate images"
    clips = "" if plan.frames is None else f" Clips of {plan.train_frames} frames in training, read as {read_as}."
    lines = [f"# Ablation results: preset {plan.preset}", "",
             f"Base `{plan.base}`, {plan.max_steps} training steps per run, {seeds} per arm; `last.ckpt` of each "
             f"run, greedy decoding, {plan.n} {'clips' if plan.frames else 'scenes'} per split (the same for every "
             "run). Cells: mean ± half-width of the 95% confidence interval across seeds (Student's t; no interval "
             f"with one seed). Trained at {plan.train_size} px.{clips}"]
    columns = []
    for f, n in plan.points:
        train = f == 1 and (n is None or n == plan.train_frames)
        columns.append(f"{round(f * plan.train_size)} px ({f:g}x)" + (f", {n} frames" if n else "")
                       + (" train" if train else ""))
    for split in plan.splits:
        for metric in metrics:
            name = plan.label if metric == plan.metric else metric
            lines += ["", f"## {split}: {name} accuracy", "", "| arm | " + " | ".join(columns) + " |",
                      "| --- |" + " ---: |" * len(columns)]
            for arm in arms:
                row = [format_cell(cells.get((arm, split, f, n), {}).get(metric)) for f, n in plan.points]
                lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return path


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
                              metric: str = "relation", along: str = "size", label: str | None = None) -> Path:
    """One line per arm (mean across seeds) with its 95% CI band, against image side (``along="size"``) or, for
    clips at the training size, frame count (``along="frames"``); the training value marked. ``label`` names the
    metric on the plot (default: ``metric``)."""
    plt = pyplot()
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    fig, ax = plt.subplots(figsize=(8.6 if len(arms) > MANY_ARMS else 6.4, 4.2))
    colours = arm_colours(len(arms))
    for i, arm in enumerate(arms):
        points = sorted((s[along], *s[metric]) for s in summary
                        if s["split"] == split and arm_name(s["encoder"], s["scheme"]) == arm and metric in s
                        and (along == "size" or s["factor"] == 1))
        if not points:
            continue
        x = [p[0] for p in points]
        y = [p[1] for p in points]
        ax.plot(x, y, marker="o", color=colours[i], label=arm)
        if all(p[2] is not None for p in points):
            ax.fill_between(x, [m - c for _, m, c in points], [m + c for _, m, c in points], color=colours[i],
                            alpha=0.18 if len(arms) <= MANY_ARMS else 0.07, linewidth=0)
    ax.axvline(train_size, color="grey", linestyle="--", linewidth=1)
    ax.annotate("training " + ("size" if along == "size" else "frames"), (train_size, 0.02), xytext=(3, 0),
                textcoords="offset points", fontsize=8, color="grey")
    ticks = sorted({s[along] for s in summary})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(s) for s in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("image side (px)" if along == "size" else "frames per clip")
    ax.set_ylabel(f"{label or metric} accuracy")
    ax.set_title(f"{split}: {label or metric} accuracy, mean and 95% CI across seeds", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, arms)
    return save(fig, path)


def plot_metric_bars(summary: list[dict], split: str, path: Path, points: list[tuple[float, int | None]],
                     metric: str = "relation", label: str | None = None) -> Path:
    """Grouped bars, one group per (factor of the training size, frames) point, one bar per arm, 95% CIs as error
    bars; ``label`` as for :func:`plot_metric_vs_resolution`."""
    plt = pyplot()
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    cells = {(arm_name(s["encoder"], s["scheme"]), s["factor"], s.get("frames")): s for s in summary
             if s["split"] == split}
    fig, ax = plt.subplots(figsize=(8.6 if len(arms) > MANY_ARMS else 6.4, 4.2))
    colours = arm_colours(len(arms))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        values = [cells.get((arm, *p), {}).get(metric, (math.nan, None)) for p in points]
        errors = [c if c is not None else 0.0 for _, c in values]
        xs = [g + (i - (len(arms) - 1) / 2) * width for g in range(len(points))]
        ax.bar(xs, [m for m, _ in values], width, yerr=errors, capsize=3, color=colours[i], label=arm)
    ax.set_xticks(range(len(points)), [f"{f:g}x ({cells.get((arms[0], f, n), {}).get('size', '?')} px"
                                       + (f", {n} frames)" if n else ")") for f, n in points])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{label or metric} accuracy")
    ax.set_title(f"{split}: {label or metric} accuracy at the training size and beyond (95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, arms)
    return save(fig, path)


def write_results(rows: list[dict], plan: Plan, out: str | Path) -> list[Path]:
    """results.csv, results.md and, per split, <metric>_vs_resolution_<split>.png (images) or
    <metric>_vs_frames_<split>.png (clips), and <metric>_bars_<split>.png, where metric is relation on shapes (place
    at level 1) and event on clips."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    paths = [write_csv(rows, out / "results.csv")]
    (out / "results.md").write_text(format_results(summary, plan), encoding="utf-8")
    paths.append(out / "results.md")
    metric, label = plan.metric, plan.label
    if plan.frames is None:
        along, train_value = "size", plan.train_size
        bars = [(f, None) for f in dict.fromkeys((1.0, max(plan.factors))) if f in plan.factors] or plan.points
    else:
        along, train_value = "frames", plan.train_frames
        bars = [p for p in plan.points if p[0] == 1 and p[1] in (plan.train_frames, max(plan.frames))] or plan.points
    axis = "resolution" if along == "size" else "frames"
    for split in plan.splits:
        paths.append(plot_metric_vs_resolution(summary, split, out / f"{label}_vs_{axis}_{split}.png", train_value,
                                               metric, along, label))
        paths.append(plot_metric_bars(summary, split, out / f"{label}_bars_{split}.png", bars, metric, label))
    return paths
