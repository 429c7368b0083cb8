"""Line plots of the numbers runs write: a training run's loss and validation metrics against step (``curves.png``
beside its ``metrics.csv``), and ``mmrope eval``'s metrics against size or frame count (``results.png`` beside its
JSON)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from mmrope.viz.figures import pyplot, save

UNBOUNDED = ("cider",)  # metrics not in [0, 1], drawn on a panel of their own
LINESTYLES = ("-", "--", ":", "-.")


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning's CSV log -> metric name -> (step, value) in step order; empty cells (a row holds only the metrics
    logged at that step) and non-finite values are left out."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for name, cell in row.items():
                if name in ("step", "epoch") or not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(name, []).append((int(float(step)), value))
    return {name: sorted(points) for name, points in series.items()}


def plot_training_curves(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """Training loss (and validation loss) against step in one panel, every other validation metric (``val/relation``,
    ``val@96/relation``, ...) in a second, CIDEr-D in a third. Colour names the metric, line style the resolution or
    frame count. None, and nothing written, when the log holds no loss."""
    series = read_metrics(metrics_csv)
    losses = {name: points for name, points in series.items() if name.endswith("/loss")}
    if not losses:
        return None
    validation = {name: points for name, points in series.items() if name.startswith("val") and name not in losses}
    panels = [("loss", losses),  # counts such as val/num_samples are left out
              ("validation", {k: v for k, v in validation.items() if all(0 <= y <= 1 for _, y in v)}),
              ("validation CIDEr-D", {k: v for k, v in validation.items() if _metric(k) in UNBOUNDED})]
    panels = [(title, lines) for title, lines in panels if lines]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    # colour names the metric (the stage, for losses), line style the resolution or frame count (val, val@96, ...)
    hue = {key: f"C{i % 10}" for i, key in enumerate(dict.fromkeys(map(_hue_key, series)))}
    style = {p: LINESTYLES[i % len(LINESTYLES)]
             for i, p in enumerate(dict.fromkeys(_prefix(k) for k in validation))}
    for ax, (title, lines) in zip(axes[0], panels):
        for name, points in sorted(lines.items()):
            steps, values = zip(*points)
            marker = "o" if len(points) < 30 else None  # validations are few: show each
            ax.plot(steps, values, label=name, color=hue[_hue_key(name)], linestyle=style.get(_prefix(name), "-"),
                    marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "loss":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=1 + len(lines) // 8)
    return save(fig, path, dpi=90)


def plot_eval_results(rows: list[dict], path: str | Path, train_size: int | None = None,
                      title: str | None = None) -> Path:
    """``mmrope eval``'s rows -> accuracies (and BLEU-4) against image size, one line per metric, and CIDEr-D beside;
    for clips against frame count, one line style per size. The training size is marked."""
    clips = any("frames" in r for r in rows)
    x_key = "frames" if clips else "size"
    metrics = [k for k in rows[0] if k not in ("size", "frames", "n") and isinstance(rows[0][k], int | float)]
    panels = [m for m in metrics if m not in UNBOUNDED], [m for m in metrics if m in UNBOUNDED]
    panels = [p for p in panels if p]
    sizes = list(dict.fromkeys(r["size"] for r in rows)) if clips else [None]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, names in zip(axes[0], panels):
        for colour, metric in enumerate(names):
            for style, size in enumerate(sizes):
                chosen = sorted((r[x_key], r[metric]) for r in rows if metric in r and size in (None, r["size"]))
                if not chosen:
                    continue
                x, y = zip(*chosen)
                label = metric if size is None or len(sizes) == 1 else f"{metric} @{size}"
                ax.plot(x, y, marker="o", markersize=4, color=f"C{colour % 10}",
                        linestyle=LINESTYLES[style % len(LINESTYLES)], label=label)
        if train_size is not None and not clips:
            ax.axvline(train_size, color="grey", linestyle=":", linewidth=1, label=f"trained at {train_size}")
        ax.set_xlabel("frames" if clips else "image side (pixels)")
        ax.set_xticks(sorted({r[x_key] for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if names[0] not in UNBOUNDED:
            ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, dpi=90)


def _hue_key(name: str) -> str:
    """The metric (``val@96/relation`` -> ``relation``), or the whole name for a loss (train and val differ)."""
    return name if _metric(name) == "loss" else _metric(name)


def _metric(name: str) -> str:
    """``val@96/relation`` -> ``relation``."""
    return name.rsplit("/", 1)[-1]


def _prefix(name: str) -> str:
    """``val@96/relation`` -> ``val@96``."""
    return name.rsplit("/", 1)[0]


def validation_curves(run_dir: str | Path, metric: str) -> list[tuple[int, float]]:
    """One run's ``val/<metric>`` against the optimizer steps taken, over every log version (a resumed run writes a
    new one; a later version wins a step both hold). Lightning logs a validation at the index of the step before it,
    so a validation after 100 steps is step 100 here."""
    points: dict[int, float] = {}
    for path in sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        for step, value in read_metrics(path).get(f"val/{metric}", []):
            points[step + 1] = value
    return sorted(points.items())


def curves_table(curves: dict[str, dict[str, list[tuple[int, float]]]], every: int | None = None) -> str:
    """Markdown: one row per run and metric, one column per validated step (every ``every`` steps when given)."""
    steps = sorted({s for by_metric in curves.values() for points in by_metric.values() for s, _ in points})
    if every:
        steps = [s for s in steps if s % every == 0]
    lines = ["| run | metric | " + " | ".join(map(str, steps)) + " |", "| --- | --- |" + " ---: |" * len(steps)]
    for run, by_metric in curves.items():
        for metric, points in by_metric.items():
            if not points:
                continue
            values = dict(points)
            cells = [f"{values[s]:.2f}" if s in values else "" for s in steps]
            lines.append(f"| {run} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_validation_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path,
                           title: str | None = None) -> Path:
    """One panel per metric, one line per run."""
    metrics = list(dict.fromkeys(m for by_metric in curves.values() for m, points in by_metric.items() if points))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (run, by_metric) in enumerate(curves.items()):
            if by_metric.get(metric):
                steps, values = zip(*by_metric[metric])
                ax.plot(steps, values, label=run, color=f"C{i % 10}", linestyle=LINESTYLES[i // 10 % 4],
                        marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(f"val/{metric}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, dpi=90)
