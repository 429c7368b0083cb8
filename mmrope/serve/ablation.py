"""What ``mmrope serve --ablation OUT`` shows of an ablation folder, as JSON the page draws: the arms x sizes table
with its intervals and the stated tests, each arm's learning curves, the caption every arm wrote for every scene,
and, for one scene, two arms' attention per word and (t, h, w) ids at the training size and off it.

The folder is read as ``mmrope ablate`` writes it (:mod:`mmrope.ablation.runner`): ``<arm>/seed<k>/`` holds
``predictions.csv``, ``logs/version_*/metrics.csv`` and ``checkpoints/last.ckpt``. Cells and tests are the report's
own (:func:`mmrope.ablation.scenes.summarize_scenes`, :func:`~mmrope.ablation.scenes.compare`), so the page shows the
numbers results.md holds; scenes are re-drawn from the grid's evaluation sets (scene i of ``predictions.csv`` is
``eval_set.scenes[i]``); the inspector is the caption page's :func:`mmrope.serve.explain.explain`. The scenes
and the inspector are :mod:`mmrope.serve.ablation_scenes`; this module reads the plan, the runs and their numbers.

Which grid the folder was run with comes from ``OUT/plan.json``, when ``mmrope ablate`` wrote one (:data:`PLAN_FILE`:
``{"grid": path, "preset": name, "seeds": count, "max_steps": steps, "arms": [names]}``, what
:func:`mmrope.ablation.plan.load_plan` takes), else from ``--grid`` and ``--preset``, the seeds and budget then read
from the runs' ``arm.json``. Either is read once, at start, from the command line's side: no client names a file.

What a client may name, each checked against the plan before anything is read: an arm, a seed, a split, a scored
(protocol, factor, frames) point, a scene index below ``n``, a metric, a curve series. Files are only ever the ones
above, under ``OUT/<arm>/seed<k>/``, and each is resolved first: one that a link leads outside OUT is refused.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path

import numpy as np

from mmrope.ablation.plan import Plan, arm_name, load_plan
from mmrope.ablation.scoring import SCENES_FILE
from mmrope.errors import one_line

PLAN_FILE = "plan.json"  # what `mmrope ablate` was run with; see the module's docstring
MARKER_FILE = "eval.json"  # a scored run's marker: the evaluation settings it was scored with
MAX_FILE_BYTES = 64 * 2**20  # a predictions.csv or metrics.csv larger than this is not read (a full grid's: ~1 MB)
MAX_ROWS = 200  # scenes listed at once; the rest are counted
MAX_CURVE_POINTS = 300  # per run and series: a long run's loss, thinned evenly
CURVE_PREFIXES = ("val/", "train/loss")  # what the curves offer of Lightning's CSV logs


class OutsideFolder(ValueError):
    """A file of the folder that a link leads outside it: refused, never read."""


class NotThere(LookupError):
    """A run's file that is not (yet) written: a run not trained or not scored."""


def read_plan(out: str | Path, grid: str | Path | None = None, preset: str | None = None) -> Plan:
    """The plan ``out`` was run with: from ``grid`` and ``preset`` when given (seeds and steps as the runs' arm.json
    say), else from ``out/plan.json``. A one-line ``ValueError`` when neither tells it."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"--ablation {out}: no such folder")
    if (grid is None) != (preset is None):
        raise ValueError("--grid and --preset go together: the grid file and the preset the folder was run with")
    if grid is not None:
        return _plan_from_flags(out, grid, preset)
    path = out / PLAN_FILE
    if not path.is_file():
        raise ValueError(f"{out}: no {PLAN_FILE}: give the grid it was run with, --grid GRID --preset PRESET")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("grid"), str) or not isinstance(
                record.get("preset"), str):
            raise ValueError("expected an object with grid and preset")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read ({one_line(e, 120)}); give --grid and --preset") \
            from None
    try:
        return load_plan(record["grid"], record["preset"], seeds=record.get("seeds"),
                         max_steps=record.get("max_steps"), arms=record.get("arms"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}; give --grid and --preset") from None


def _plan_from_flags(out: Path, grid: str | Path, preset: str) -> Plan:
    """The preset's arms; its seeds, or more when the folder has more; the budget the runs were trained with."""
    signatures = []
    for path in sorted(out.glob("*/seed*/arm.json")):
        try:
            signature = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a damaged run: the page shows it as not scored
        if isinstance(signature, dict):
            signatures.append(signature)
    steps = {s.get("max_steps") for s in signatures}
    seeds = [s["seed"] for s in signatures if isinstance(s.get("seed"), int) and s["seed"] >= 0]
    plan = load_plan(grid, preset, max_steps=steps.pop() if len(steps) == 1 else None)
    if seeds and max(seeds) + 1 > len(plan.seeds):
        plan.seeds = list(range(max(seeds) + 1))
    return plan


class AblationFolder:
    """An ablation folder and its plan, read for the page. Reading is cached until a run's predictions change (an
    ablation still running adds runs). The scenes and the inspector: :mod:`mmrope.serve.ablation_scenes`."""

    def __init__(self, out: str | Path, plan: Plan, device: str = "cpu"):
        self.out, self.root, self.plan = Path(out), Path(out).resolve(), plan
        self.arms = [arm_name(e, s) for e, s in plan.arms]
        self.device = device  # where the scenes' inspector runs the runs' checkpoints (mmrope.serve.ablation_scenes)
        self.lock = threading.RLock()  # guards the caches below; requests come from several threads
        self.stamps: dict = {}
        self.runs: dict[tuple[str, int], list[dict]] = {}
        self.refused: list[str] = []  # links out of the folder, runs left out: what the page says it does not show
        self.notes: list[str] = []
        self.cache: dict = {}  # per runs' stamps: tables by metric, the comparisons

    # --- what a client may name -------------------------------------------------------------------------------

    def arm(self, value: str) -> str:
        if value not in self.arms:
            raise ValueError(f"arm {value[:80]!r} is not one of the plan's {len(self.arms)}")
        return value

    def seed(self, value: str) -> int:
        if not (value.isascii() and value.isdigit() and int(value) in self.plan.seeds):
            raise ValueError(f"seed {value[:20]!r}: expected one of {', '.join(map(str, self.plan.seeds))}")
        return int(value)

    def index(self, value: str) -> int:
        if not (value.isascii() and value.isdigit() and int(value) < self.plan.n):
            raise ValueError(f"scene {value[:20]!r}: expected 0 to {self.plan.n - 1}")
        return int(value)

    def point(self, split: str, protocol: str = "scaled", factor: str = "1", frames: str = "") -> tuple:
        """(split, protocol, factor, frames) of a point the runs were scored at."""
        plan = self.plan
        if split not in plan.splits:
            raise ValueError(f"split {split[:40]!r}: expected one of {', '.join(plan.splits)}")
        try:
            f = float(factor)
        except ValueError:
            f = math.nan
        match = next((g for p, g in plan.scored if p == protocol and g == f), None)
        if match is None:
            scored = ", ".join(f"{g:.3g}x" + ("" if p == "scaled" else f" {p}") for p, g in plan.scored)
            raise ValueError(f"point {protocol[:40]} at {factor[:20]}x is not scored by the plan ({scored})")
        if plan.frames is None:
            if frames:
                raise ValueError("frames: this grid scores images")
            return split, protocol, match, None
        count = int(frames) if frames.isascii() and frames.isdigit() else plan.train_frames if not frames else -1
        if count not in plan.frames:
            raise ValueError(f"frames {frames[:20]!r}: expected one of {', '.join(map(str, plan.frames))}")
        return split, protocol, match, count

    # --- files --------------------------------------------------------------------------------------------------

    def file(self, arm: str, seed: int, *parts: str) -> Path:
        """``OUT/<arm>/seed<seed>/<parts>``, resolved; :class:`OutsideFolder` when a link leads out of OUT. ``arm``
        and ``seed`` are the plan's (checked by :meth:`arm`, :meth:`seed`)."""
        path = (self.root / arm / f"seed{seed}").joinpath(*parts).resolve()
        if not path.is_relative_to(self.root):
            raise OutsideFolder(f"{arm}/seed{seed}/{'/'.join(parts)} leads outside the ablation folder; not read")
        return path

    def read_runs(self) -> dict[tuple[str, int], list[dict]]:
        """Every scored run's predictions.csv, read again when a run's files change. A run its eval.json says was
        scored under other evaluation settings than the plan's is left out, and said so: its scenes are others."""
        stamps, refused = {}, []
        for arm in self.arms:
            for seed in self.plan.seeds:
                try:
                    files = [self.file(arm, seed, name) for name in (SCENES_FILE, MARKER_FILE)]
                except OutsideFolder as e:
                    refused.append(str(e))
                    continue
                if files[0].is_file():
                    stamps[arm, seed] = tuple((p, p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                                              for p in files)
        with self.lock:
            if stamps != self.stamps:
                self.runs, self.notes = {}, []
                for (arm, seed), (scenes, marker) in stamps.items():
                    problem = self._left_out(scenes, marker)
                    if problem:
                        self.notes.append(f"{arm}/seed{seed}: {problem}")
                        continue
                    with open(scenes[0], newline="", encoding="utf-8", errors="replace") as f:
                        self.runs[arm, seed] = list(csv.DictReader(f))
                self.stamps, self.cache = stamps, {}
            self.refused = refused + self.notes
            return self.runs

    def _left_out(self, scenes: tuple, marker: tuple | None) -> str | None:
        """Why a run's predictions are not shown, or None. Its eval.json is compared with the plan on what decides
        the scenes and points (not on the base config's path, which may be written relative or absolute)."""
        if scenes[2] > MAX_FILE_BYTES:
            return f"{SCENES_FILE} is over {MAX_FILE_BYTES} bytes; not read"
        if marker is None:
            return None  # predictions.csv is written first: a run between the two is shown as it is
        try:
            if marker[2] > MAX_FILE_BYTES:
                raise ValueError("too large")
            settings = json.loads(marker[0].read_text(encoding="utf-8"))["eval"]
            if not isinstance(settings, dict):
                raise ValueError("no eval settings")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return f"{MARKER_FILE} cannot be read; not shown (mmrope ablate scores the run again)"
        expected = self.plan.eval_settings()
        differ = [k for k in expected.keys() | settings.keys() if k != "data" and settings.get(k) != expected.get(k)]
        if differ:
            return (f"scored with other evaluation settings than the plan's ({', '.join(sorted(differ))}); not "
                    "shown")
        return None

    # --- the page's answers --------------------------------------------------------------------------------------

    def summary(self) -> dict:
        """The plan, which runs are scored and trained, the metrics and curve series there are, the stated tests."""
        plan, runs = self.plan, self.read_runs()
        columns = dict.fromkeys(k for rows in runs.values() for k in (rows[0] if rows else {}))
        from mmrope.ablation.stats import METRICS

        metrics = [plan.metric] + [m for m in METRICS if m in columns and m != plan.metric]
        trained = {arm: [k for k in plan.seeds if _is_file(self, arm, k, "checkpoints", "last.ckpt")]
                   for arm in self.arms}
        series = dict.fromkeys(s for arm in self.arms for k in plan.seeds for s in self._logs(arm, k))
        headline = f"val/{plan.metric}"
        series = ([headline] if headline in series else []) + sorted(s for s in series if s != headline)
        return {
            "folder": str(self.out), "grid": str(plan.grid), "preset": plan.preset, "base": str(plan.base),
            "metric": plan.metric, "threshold": plan.threshold, "max_steps": plan.max_steps, "n": plan.n,
            "train_size": plan.train_size, "train_frames": plan.train_frames, "splits": plan.splits,
            "protocols": plan.protocols, "points": [self.point_json(p, f, n) for p, f in plan.scored
                                                    for n in (plan.frames or [None])],
            "arms": self.arms, "seeds": plan.seeds, "metrics": metrics, "series": series[:40],
            "scored": {arm: [k for k in plan.seeds if (arm, k) in runs] for arm in self.arms},
            "trained": trained, "refused": self.refused, "comparisons": self.comparisons(), "looks": plan.looks,
            "level": plan.level,
        }

    def point_json(self, protocol: str, factor: float, frames: int | None) -> dict:
        size = round(factor * self.plan.train_size)
        train = factor == 1 and protocol == "scaled" and frames in (None, self.plan.train_frames)
        label = f"{size} px ({factor:.3g}x)" + (f", {frames} frames" if frames else "")  # as results.md
        return {"protocol": protocol, "factor": factor, "size": size, "frames": frames, "train": train,
                "label": label + ("" if protocol == "scaled" else f" {protocol}")}

    def table(self, metric: str) -> dict:
        """Every arm x point cell of ``metric``: mean over (seed, scene) and its two-level bootstrap interval, as
        results.md has it."""
        from mmrope.ablation.scenes import summarize_scenes
        from mmrope.ablation.stats import METRICS

        if metric not in METRICS:
            raise ValueError(f"metric {metric[:40]!r}: expected one of {', '.join(METRICS)}")
        with self.lock:  # the runs and the cells computed from them, together
            runs, key = self.read_runs(), ("table", metric)
            if key not in self.cache:
                cells = summarize_scenes(self.plan, runs, (metric,))
                self.cache[key] = [{"arm": c["arm"], "split": c["split"], "protocol": c["protocol"],
                                    "factor": c["factor"], "frames": c["frames"], "seeds": c["seeds"],
                                    "mean": c[metric][0], "low": c[metric][1], "high": c[metric][2]}
                                   for c in cells if metric in c]
            return {"metric": metric, "cells": self.cache[key]}

    def comparisons(self) -> list[dict]:
        """The stated comparisons, tested as results.md tests them (McNemar, Holm, bootstrap interval, MDD)."""
        from mmrope.ablation.scenes import compare

        with self.lock:
            runs = self.read_runs()
            if "compare" not in self.cache:
                rows = []
                for r in compare(self.plan, runs):
                    c = r["comparison"]
                    row = {"a": c.sides[0], "b": c.sides[1], "arms": list(c.arms), "where": c.where,
                           "metric": r["metric"], "interaction": c.minus is not None,
                           "missing": bool(r.get("missing"))}
                    if not row["missing"]:
                        row |= {"mean_a": r["a"], "mean_b": r["b"], "diff": r["diff"], "low": r["lo"],
                                "high": r["hi"], "only_a": r["only_a"], "only_b": r["only_b"], "p": r["p"],
                                "holm": r["holm"], "mdd": r["mdd"], "verdict": r["verdict"], "pairs": r["pairs"],
                                "seeds": r["seeds"]}
                    rows.append(row)
                self.cache["compare"] = rows
            return self.cache["compare"]

    def _logs(self, arm: str, seed: int) -> dict[str, list[tuple[int, float]]]:
        """A run's CSV logs, every version (a resumed run writes a new one): series -> (step, value), the series
        :data:`CURVE_PREFIXES` names. Steps count optimizer steps taken, as ``ablation.curves.read_curve`` counts."""
        from mmrope.viz.curves import read_metrics

        try:
            logs = self.file(arm, seed, "logs")
        except OutsideFolder:
            return {}
        series: dict[str, dict[int, float]] = {}
        for path in sorted(logs.glob("version_*/metrics.csv")) if logs.is_dir() else []:
            path = path.resolve()
            if not path.is_relative_to(self.root) or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                continue
            for name, points in read_metrics(path).items():
                if name.startswith(CURVE_PREFIXES) and not name.endswith("num_samples"):
                    series.setdefault(name, {}).update((step + 1, value) for step, value in points)
        return {name: sorted(points.items()) for name, points in series.items()}

    def curves(self, series: str) -> dict:
        """``series`` (``val/place``, ``train/loss``, ...) against steps: each run's, and each arm's mean over its
        seeds at the steps they share."""
        if not series.startswith(CURVE_PREFIXES) or len(series) > 80:
            raise ValueError(f"series {series[:80]!r}: expected val/<metric> or train/loss")
        arms = []
        for arm in self.arms:
            runs = {seed: self._logs(arm, seed).get(series, []) for seed in self.plan.seeds}
            runs = {seed: _thin(points) for seed, points in runs.items() if points}
            steps = sorted(set.intersection(*(set(s for s, _ in p) for p in runs.values()))) if runs else []
            values = [{s: v for s, v in p} for p in runs.values()]
            mean = [[s, float(np.mean([v[s] for v in values]))] for s in steps]
            arms.append({"arm": arm, "seeds": {str(k): [list(p) for p in points] for k, points in runs.items()},
                         "mean": mean})
        threshold = self.plan.threshold if series == f"val/{self.plan.metric}" else None
        return {"series": series, "max_steps": self.plan.max_steps, "threshold": threshold, "arms": arms}


def _is_file(folder: AblationFolder, arm: str, seed: int, *parts: str) -> bool:
    try:
        return folder.file(arm, seed, *parts).is_file()
    except OutsideFolder:
        return False


def row_point(row: dict) -> tuple:
    """(split, protocol, factor, frames) of a predictions.csv row."""
    try:
        factor = float(row.get("factor", "nan"))
    except ValueError:
        factor = math.nan
    frames = row.get("frames")
    return (row.get("split"), row.get("protocol") or "scaled", factor,
            int(frames) if frames and frames.isdigit() else None)


def score_of(cell) -> float | None:
    """A score cell as a number; None where the scene has none (JSON has no NaN)."""
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _thin(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """At most :data:`MAX_CURVE_POINTS`, evenly spaced, the last always kept."""
    if len(points) <= MAX_CURVE_POINTS:
        return points
    step = len(points) / MAX_CURVE_POINTS
    return [points[int(i * step)] for i in range(MAX_CURVE_POINTS - 1)] + [points[-1]]
