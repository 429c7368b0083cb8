"""Scoring one run of a grid: its ``last.ckpt`` on every split, at every size under every size protocol (and frame
count), as rows of metrics and as per-scene predictions (``predictions.csv``, what the paired tests and the
ablation page read). Every run of a grid is scored on the same scenes, drawn once per process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmrope.ablation.plan import Plan

SCENES_FILE = "predictions.csv"  # a run's per-scene predictions and scores


def score_run(plan: Plan, ckpt: Path, device: str | None = None) -> tuple[list[dict], list[dict]]:
    """Score ``ckpt`` on every split, at every size under every size protocol (and frame count) -> (rows ``{split,
    protocol, factor, size, [frames,] n, <metrics>}``, one row per scene and point ``{split, protocol, factor,
    size, [frames,] index, prediction, <its scores>}``: the per-scene predictions that paired tests read)."""
    from mmrope.eval.evaluation import evaluate
    from mmrope.inference import load

    pipeline = load(ckpt, device=device)
    if pipeline.config.vision.image_size != plan.train_size:
        raise ValueError(f"{ckpt}: trained at {pipeline.config.vision.image_size} px, the grid's base config says "
                         f"{plan.train_size}")
    rows, scenes = [], []
    clips = {} if plan.frames is None else {"frames": plan.frames, "clip_mode": plan.clip_mode}
    for split in plan.splits:
        for protocol in plan.protocols:
            factors = [f for p, f in plan.scored if p == protocol]
            sizes = [round(f * plan.train_size) for f in factors]
            results, _ = evaluate(pipeline, _eval_set(plan, split, protocol), sizes, batch_size=plan.batch_size,
                                  max_new_tokens=plan.max_new_tokens, samples=True, **clips)
            factor_of = dict(zip(sizes, factors))
            for r in results:  # one row per size and frame count
                where = {"split": split, "protocol": protocol, "factor": factor_of[r["size"]], "size": r["size"],
                         **({"frames": r["frames"]} if "frames" in r else {})}
                rows.append({**where, **{k: v for k, v in r.items() if k != "samples"}})
                scenes += [{**where, **sample} for sample in r["samples"]]
    return rows, scenes


_EVAL_SETS: dict[str, dict] = {}  # the scored grid's evaluation sets, by split and protocol


def _eval_set(plan: Plan, split: str, protocol: str = "scaled"):
    """The evaluation set of ``split`` under ``protocol``, its images drawn once per size and kept for every run this
    process scores: every run of a grid is scored on the same scenes, and drawing them is most of the scoring's
    host time."""
    from functools import lru_cache

    from mmrope.eval.evaluation import data_set

    key = json.dumps([plan.data, plan.n], sort_keys=True, default=str)
    if key not in _EVAL_SETS:
        _EVAL_SETS.clear()  # one grid at a time
        _EVAL_SETS[key] = {}
    sets = _EVAL_SETS[key]
    if (split, protocol) not in sets:
        eval_set = data_set(plan.data, split=split, n=plan.n, protocol=protocol)
        eval_set.images = lru_cache(maxsize=None)(eval_set.images)
        sets[split, protocol] = eval_set
    return sets[split, protocol]


def write_scenes(path: Path, scenes: list[dict]) -> None:
    """Per-scene predictions as CSV, atomically: one row per scene and point scored."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in scenes for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(scenes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
