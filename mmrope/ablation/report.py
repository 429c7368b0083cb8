"""What a grid's results look like to a reader: results.csv, results.md and plots, from every run's per-scene
predictions.

Every cell is a mean over (seed, scene) outcomes with a two-level bootstrap interval (:mod:`mmrope.ablation.scenes`).
The comparisons a preset states in advance get an exact McNemar test on the paired outcomes, Holm's correction across
them all, the bootstrap interval of the difference and, for a null, the smallest difference the comparison could
have detected. Level-1 shapes grids also show what position geometry alone predicts at each size
(:mod:`mmrope.eval.transfer`), and runs validated during training their steps to the preset's ``threshold``
(:mod:`mmrope.ablation.curves`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from mmrope.ablation.curves import curve_table
from mmrope.ablation.plan import ALPHA, Plan, arm_name
from mmrope.ablation.plots import plot_curves, plot_metric_bars, plot_metric_vs_resolution
from mmrope.ablation.scenes import compare, read_scenes, summarize_scenes
from mmrope.ablation.stats import METRICS

CSV_COLUMNS = ("encoder", "scheme", "seed", "split", "protocol", "factor", "size", "frames", "n") + METRICS


def format_cell(value: tuple[float, float, float] | None) -> str:
    return "" if value is None else f"{value[0]:.3f} [{value[1]:.2f}, {value[2]:.2f}]"


def format_comparisons(results: list[dict], plan: Plan) -> str:
    if not results:
        return ""
    m = sum(not r.get("missing") for r in results)
    level, looks = f"{plan.level:.3g}", plan.looks
    confidence = f"{100 * (1 - plan.level):.4g}%"
    looked = (f" Read at {level} = {ALPHA:g} / {looks}: these comparisons were read {looks} times, runs or seeds "
              f"added after a look left one open, so each look gets {level} (Bonferroni over the looks keeps the "
              f"chance of a false difference at {ALPHA:g})." if looks > 1 else "")
    lines = ["## Stated comparisons", "",
             f"Stated in the grid before the runs; each on the paired (seed, scene) outcomes of its two arms. p: exact "
             f"McNemar on the discordant pairs; Holm: adjusted over these {m} comparisons (significant below "
             f"{level}); interval: two-level bootstrap of the difference (seeds, then scenes), {confidence}; MDD: "
             f"the difference the comparison had an 80% chance to detect at the strictest Holm level ({level}/{m})."
             f"{looked} Read as separated when both the Holm-adjusted test and the interval say so." + (
                 " An interaction row (A and B each a difference of two arms) asks whether what one arm adds over "
                 "another depends on the decoder or size: p is the exact sign test on the per-pair contrast (A - B), "
                 "the counts the pairs where it favours A / B." if any(r["comparison"].minus for r in results)
                 else ""), "",
             f"| A | B | at | A | B | A - B [{confidence} CI] | only A / only B right | p | Holm p | MDD | reading |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:  # the interval to 3 digits: whether it is off 0 is the verdict, and +0.00 hides it
        c = r["comparison"]
        name_a, name_b = c.sides
        if r.get("missing"):
            lines.append(f"| {name_a} | {name_b} | {c.where} | | | | | | | | not scored yet |")
            continue
        readings = {"a": "A > B", "b": "B > A", "runs_only": "these runs differ; the interval over seeds includes 0"}
        reading = readings.get(r["verdict"], f"no difference detected (one below {r['mdd']:.2f} could be missed)")
        sign = "+" if c.minus else ""  # an interaction's sides are differences
        lines.append(f"| {name_a} | {name_b} | {c.where}: {r['metric']} | {r['a']:{sign}.3f} | {r['b']:{sign}.3f} | "
                     f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['only_a']} / {r['only_b']} | "
                     f"{_p(r['p'])} | {_p(r['holm'])} | {r['mdd']:.3f} | {reading} |")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


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
    trained = plan.trained_sizes
    trained_at = f"at {plan.train_size} px" if len(trained) == 1 else (
        f"at {', '.join(map(str, trained[:-1]))} and {trained[-1]} px (each training scene at one of them; 1x is "
        f"the model's image size, {plan.train_size} px)")
    lines = [f"# Ablation results: preset {plan.preset}", "",
             f"Base `{plan.base}`, {plan.max_steps} training steps per run, {seeds} per arm; `last.ckpt` of each "
             f"run, greedy decoding, {plan.n} {'clips' if plan.frames else 'scenes'} per split (the same for every "
             "run). Cells: mean over (seed, scene) [95% interval: two-level bootstrap, seeds then scenes]. Trained "
             f"{trained_at}.{clips}"]
    from mmrope.data.shapes import SIZE_PROTOCOLS

    for split in plan.splits:
        for protocol in plan.protocols:
            factors = [f for p, f in plan.scored if p == protocol]
            points = [(f, n) for f in factors for n in (plan.frames or [None])]
            trained_here = [f for f in factors if round(f * plan.train_size) in trained and (
                f == 1 or protocol == "scaled")]  # a training picture: off 1x, only scaled ones are
            columns = [f"{round(f * plan.train_size)} px ({f:.3g}x)" + (f", {n} frames" if n else "")
                       + (" train" if f in trained_here and (n is None or n == plan.train_frames) else "")
                       for f, n in points]
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


def format_rule_gaps(summary: list[dict], plan: Plan, transfer: list[dict]) -> str:
    """For a place grid: each arm whose decoder's media ids follow a transfer rule
    (:attr:`mmrope.model.decoder_schemes.base.DecoderScheme.transfer_rule`), off the training size, as measured minus
    what the rule predicts on the same scenes, with the measured cell's interval shifted alike: what training added
    to (or took from) id geometry."""
    from mmrope.model.decoder_schemes import SCHEMES

    rules = {arm_name(e, s): SCHEMES[s].transfer_rule for e, s in plan.arms if SCHEMES[s].transfer_rule}
    if not transfer or not rules:
        return ""
    predicted = {(t["split"], t["protocol"], t["factor"]): t for t in transfer}
    cells = {(c["arm"], c["split"], c["protocol"], c["factor"]): c.get(plan.metric) for c in summary}
    points = [(p, f) for p, f in plan.scored if f != 1]
    lines = ["## What training adds to id geometry", "",
             f"{plan.metric} accuracy minus what the arm's decoder's transfer rule predicts on the same scenes "
             "(`mmrope.eval.transfer`: the decoder answers for the patch under the object the place that patch's "
             "id had in training), [95% interval of the measured cell, shifted alike]. 0: the arm does what its "
             "ids' geometry says; above: it learned more than its ids carry; below: less."]
    if len(plan.trained_sizes) > 1:
        lines[-1] += (f" The rules know one training size ({plan.train_size} px); these runs trained at "
                      f"{', '.join(map(str, plan.trained_sizes))} px, so a gap here also holds what training on "
                      "those sizes taught, and at a trained size it is no transfer at all.")
    for split in plan.splits:
        lines += ["", f"### {split}", "",
                  "| arm (rule) | " + " | ".join(f"{p} {round(f * plan.train_size)} px" for p, f in points) + " |",
                  "| --- |" + " ---: |" * len(points)]
        for arm, rule in rules.items():
            row = []
            for p, f in points:
                cell, rule_row = cells.get((arm, split, p, f)), predicted.get((split, p, f))
                gap = None if cell is None or rule_row is None else [v - rule_row[rule] for v in cell]
                row.append("" if gap is None else f"{gap[0]:+.3f} [{gap[1]:+.2f}, {gap[2]:+.2f}]")
            lines.append(f"| {arm} ({rule}) | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return path


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
    gaps = format_rule_gaps(summary, plan, transfer)
    text += "".join("\n" + part for part in (gaps, format_comparisons(comparisons, plan), curves_md) if part)
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
