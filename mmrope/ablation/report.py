"""What a grid's results look like to a reader: results.csv, results.md and plots, from every run's per-scene
predictions.

Every cell is a mean over (seed, scene) outcomes with a two-level bootstrap interval (seeds resampled, then scenes):
inside [0, 1], and carrying the variation between training runs as well as the sampling of scenes. The comparisons
a preset states in advance get an exact McNemar test on the paired (seed, scene) outcomes, Holm's correction across
them all, the bootstrap interval of the difference and, for a null, the smallest difference the comparison could
have detected (:mod:`mmrope.ablation.paired`). Level-1 shapes grids also show what position geometry alone predicts
at each size (:mod:`mmrope.eval.transfer`), and runs validated during training their steps to the preset's
``threshold``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmrope.ablation.paired import (
    bootstrap_difference,
    bootstrap_mean,
    holm,
    mcnemar,
    minimum_detectable_difference,
)
from mmrope.ablation.plan import Plan, arm_name
from mmrope.ablation.stats import METRICS
from mmrope.viz.figures import pyplot, save

CSV_COLUMNS = ("encoder", "scheme", "seed", "split", "protocol", "factor", "size", "frames", "n") + METRICS
ROUNDS = 1000  # bootstrap resamples per table cell (comparisons: 4000)


# --- per-scene outcomes ----------------------------------------------------------------------------------------

def read_scenes(plan: Plan, out: Path) -> dict[tuple[str, int], list[dict]]:
    """Every run's ``predictions.csv`` -> rows by (arm, seed); scores as floats, NaN where a scene has none."""
    from mmrope.ablation.runner import SCENES_FILE

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


def _defined(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The scene columns where every seed (of both arms) has a score: a conditional score (``relation_named``) is
    compared on the scenes where it is defined for all."""
    keep = ~np.isnan(a).any(0) if b is None else ~(np.isnan(a).any(0) | np.isnan(b).any(0))
    return a[:, keep], None if b is None else b[:, keep]


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
                a, _ = _defined(a)
                if a.size:
                    cell[metric] = bootstrap_mean(a, rounds=ROUNDS)
                    cell["seeds"] = a.shape[0]
            if "seeds" in cell:
                cells.append(cell)
    return cells


def format_cell(value: tuple[float, float, float] | None) -> str:
    return "" if value is None else f"{value[0]:.3f} [{value[1]:.2f}, {value[2]:.2f}]"


# --- stated comparisons ------------------------------------------------------------------------------------------

def compare(plan: Plan, runs: dict, alpha: float = 0.05) -> list[dict]:
    """Each stated comparison: the two arms' means, their difference with its bootstrap interval, McNemar's exact
    test on the paired (seed, scene) outcomes, the Holm-adjusted p over all of them and the minimum detectable
    difference at the strictest Holm level (alpha / m, power 0.8)."""
    results = []
    for c in plan.comparisons:
        metric = c.metric or plan.metric
        point = (c.split, c.protocol, c.factor, c.frames)
        a, b = outcomes(plan, runs, c.a, point, metric), outcomes(plan, runs, c.b, point, metric)
        if a is None or b is None or a.shape[0] != b.shape[0]:
            results.append({"comparison": c, "metric": metric, "missing": True})
            continue
        a, b = _defined(a, b)
        only_a, only_b, p = mcnemar(a.tolist(), b.tolist())
        diff, lo, hi, se = bootstrap_difference(a, b, rounds=4000)
        results.append({"comparison": c, "metric": metric, "a": float(a.mean()), "b": float(b.mean()),
                        "diff": diff, "lo": lo, "hi": hi, "se": se, "only_a": only_a, "only_b": only_b, "p": p,
                        "pairs": a.size, "seeds": a.shape[0]})
    tested = [r for r in results if not r.get("missing")]
    for r, adjusted in zip(tested, holm([r["p"] for r in tested])):
        r["holm"] = adjusted
        r["mdd"] = minimum_detectable_difference(r["se"], alpha / max(1, len(tested)))
        r["verdict"] = (("a" if r["diff"] > 0 else "b") if adjusted < alpha else "null")
    return results


def format_comparisons(results: list[dict], alpha: float = 0.05) -> str:
    if not results:
        return ""
    m = sum(not r.get("missing") for r in results)
    lines = ["## Stated comparisons", "",
             f"Stated in the grid before the runs; each on the paired (seed, scene) outcomes of its two arms. p: exact "
             f"McNemar on the discordant pairs; Holm: adjusted over these {m} comparisons (significant below "
             f"{alpha}); interval: two-level bootstrap of the difference (seeds, then scenes); MDD: the difference "
             f"the comparison had an 80% chance to detect at the strictest Holm level ({alpha}/{m}).", "",
             "| A | B | at | A | B | A - B [95% CI] | only A / only B right | p | Holm p | MDD | reading |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        c = r["comparison"]
        if r.get("missing"):
            lines.append(f"| {c.a} | {c.b} | {c.where} | | | | | | | | not scored yet |")
            continue
        reading = {"a": "A > B", "b": "B > A"}.get(
            r["verdict"], f"no difference detected (one below {r['mdd']:.2f} could be missed)")
        lines.append(f"| {c.a} | {c.b} | {c.where}: {r['metric']} | {r['a']:.3f} | {r['b']:.3f} | "
                     f"{r['diff']:+.3f} [{r['lo']:+.2f}, {r['hi']:+.2f}] | {r['only_a']} / {r['only_b']} | "
                     f"{_p(r['p'])} | {_p(r['holm'])} | {r['mdd']:.3f} | {reading} |")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


# --- what geometry alone predicts (level-1 shapes) ---------------------------------------------------------------

def transfer_rows(plan: Plan) -> list[dict]:
    """For a place grid: each transfer rule's accuracy at every (split, protocol, factor) on the scenes the runs
    were scored on (:mod:`mmrope.eval.transfer`)."""
    if plan.metric != "place":
        return []
    from mmrope.eval.evaluation import data_set
    from mmrope.eval.transfer import RULES, rule_accuracy

    patch = int(plan.data["patch_size"]) * int(plan.data["merge_size"])
    rows = []
    for split in plan.splits:
        scenes = data_set(plan.data, split, plan.n).scenes
        for protocol, factor in plan.scored:
            size = round(factor * plan.train_size)
            rows.append({"split": split, "protocol": protocol, "factor": factor, "size": size,
                         **{rule: rule_accuracy(scenes, size, protocol, rule, patch, plan.train_size)
                            for rule in RULES}})
    return rows


# --- learning curves ---------------------------------------------------------------------------------------------

def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """A run's validation ``metric`` against optimizer steps, from its CSV logs (every version, as a resumed run
    writes a new one); [] when it was never validated."""
    from mmrope.viz.curves import read_metrics

    points: dict[int, float] = {}
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        for step, value in read_metrics(path).get(f"val/{metric}", []):
            points[step + 1] = value  # Lightning logs a validation at the index of the step before it
    return sorted(points.items())


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


# --- the files ---------------------------------------------------------------------------------------------------

def format_results(summary: list[dict], plan: Plan, metrics: tuple[str, ...] | None = None,
                   transfer: list[dict] | None = None) -> str:
    """Markdown: per split, protocol and metric, one row per arm and one column per size (and frame count), cells
    "mean [95% interval]"; under each headline table of a place grid, what each transfer rule predicts."""
    metrics = metrics or (plan.metric, "attribute")
    arms = list(dict.fromkeys(c["arm"] for c in summary))
    cells = {(c["arm"], c["split"], c["protocol"], c["factor"], c["frames"]): c for c in summary}
    counts = sorted({min(c["seeds"] for c in summary), max(c["seeds"] for c in summary)}) if summary else [0]
    seeds = f"{'-'.join(map(str, counts))} {'seed' if counts == [1] else 'seeds'}"
    read_as = "one (t, h, w) block" if plan.clip_mode == "block" else "separate images"
    clips = "" if plan.frames is None else f" Clips of {plan.train_frames} frames in training, read as {read_as}."
    lines = [f"# Ablation results: preset {plan.preset}", "",
             f"Base `{plan.base}`, {plan.max_steps} training steps per run, {seeds} per arm; `last.ckpt` of each "
             f"run, greedy decoding, {plan.n} {'clips' if plan.frames else 'scenes'} per split (the same for every "
             "run). Cells: mean over (seed, scene) [95% interval: two-level bootstrap, seeds then scenes]. Trained "
             f"at {plan.train_size} px.{clips}"]
    from mmrope.data.shapes import SIZE_PROTOCOLS

    for split in plan.splits:
        for protocol in plan.protocols:
            factors = [f for p, f in plan.scored if p == protocol]
            points = [(f, n) for f in factors for n in (plan.frames or [None])]
            columns = [f"{round(f * plan.train_size)} px ({f:.3g}x)" + (f", {n} frames" if n else "")
                       + (" train" if f == 1 and (n is None or n == plan.train_frames) else "") for f, n in points]
            shown = "" if plan.protocols == ["scaled"] else f", {protocol}"
            for metric in metrics:
                lines += ["", f"## {split}{shown}: {metric} accuracy", ""]
                if shown and metric == metrics[0]:
                    lines += [f"*{protocol}*: {SIZE_PROTOCOLS[protocol]}.", ""]
                lines += ["| arm | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
                for arm in arms:
                    row = [format_cell(cells.get((arm, split, protocol, f, n), {}).get(metric)) for f, n in points]
                    lines.append(f"| {arm} | " + " | ".join(row) + " |")
                if metric == plan.metric and transfer:
                    from mmrope.eval.transfer import RULES

                    by = {(t["split"], t["protocol"], t["factor"]): t for t in transfer}
                    for rule in RULES:
                        row = [f"{by[split, protocol, f][rule]:.3f}" if (split, protocol, f) in by else ""
                               for f, _ in points]
                        lines.append(f"| *rule: {rule}* | " + " | ".join(row) + " |")
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


def write_results(rows: list[dict], plan: Plan, out: str | Path) -> list[Path]:
    """results.csv (one row per run and point), results.md (tables, stated comparisons, steps to the threshold),
    per split <metric>_vs_resolution_<split>.png (images; one per size protocol) or <metric>_vs_frames_<split>.png
    (clips) and <metric>_bars_<split>.png, and curves.png when runs were validated during training. Cells and
    tests read each run's per-scene predictions in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = read_scenes(plan, out)
    summary = summarize_scenes(plan, runs, (plan.metric, "attribute"))
    transfer = transfer_rows(plan)
    curves_md, curves = curve_table(plan, out)
    comparisons = compare(plan, runs)
    text = format_results(summary, plan, transfer=transfer)
    text += "".join("\n" + part for part in (format_comparisons(comparisons), curves_md) if part)
    paths = [write_csv(rows, out / "results.csv")]
    (out / "results.md").write_text(text, encoding="utf-8")
    paths.append(out / "results.md")
    metric = plan.metric
    if plan.frames is None:
        along, train_value = "size", plan.train_size
        bars = [(f, None) for f in dict.fromkeys((1.0, max(plan.factors))) if f in plan.factors] or plan.points
    else:
        along, train_value = "frames", plan.train_frames
        bars = [p for p in plan.points if p[0] == 1 and p[1] in (plan.train_frames, max(plan.frames))] or plan.points
    axis = "resolution" if along == "size" else "frames"
    for split in plan.splits:
        for protocol in plan.protocols if along == "size" else ["scaled"]:
            suffix = "" if protocol == "scaled" else f"_{protocol}"
            paths.append(plot_metric_vs_resolution(summary, split, out / f"{metric}_vs_{axis}_{split}{suffix}.png",
                                                   train_value, metric, along, metric, protocol))
        paths.append(plot_metric_bars(summary, split, out / f"{metric}_bars_{split}.png", bars, metric, metric))
    if (curve_plot := plot_curves(curves, out / "curves.png", metric, plan.threshold)) is not None:
        paths.append(curve_plot)
    return paths


def results_text(plan: Plan, out: str | Path) -> str:
    """results.md as :func:`write_results` last wrote it (what ``mmrope ablate`` prints)."""
    return (Path(out) / "results.md").read_text(encoding="utf-8")
