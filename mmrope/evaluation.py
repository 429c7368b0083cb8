"""Scoring a captioner at one or more resolutions (and, for clips, frame counts): what ``mmrope eval`` prints.

An evaluation set is images with their reference captions, and shapes scenes when there are any. Shapes scenes are
rendered afresh at each size (objects scaled with the canvas), as training's ``eval_sizes`` do, so every size sees
the same scenes drawn sharply; image files are resized by the pipeline. Each size gets BLEU-4 and CIDEr-D and, with
scenes, the accuracies of :mod:`mmrope.data.scoring` (exact, attribute, relation, and axis / count where the level
has them). Clips are rendered afresh at each size and frame count (the same events, sampled more finely: temporal
extrapolation) and scored by :func:`mmrope.data.clips.score_clip_captions` (exact, attribute, event, and motion /
order / change by event type).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmrope.inference import CaptionPipeline

DEFAULT_SHAPES_N = 500
SHAPES_COLUMNS = ("exact", "attribute", "relation", "axis", "count")  # in the order the table shows them
CLIP_COLUMNS = ("exact", "attribute", "event", "motion", "order", "change")


@dataclass
class EvalSet:
    name: str
    # (size, frames) -> what to caption at that size (paths, PIL images or Clips); frames is None except for clips
    images: Callable[[int, int | None], list]
    references: list[list[str]]
    scenes: list[dict] | None  # shapes scenes or clips, for the accuracies; None for other data
    resize: str = "fixed"  # what the data's config trained with
    frames: int | None = None  # clips: the frame count they were made with

    @property
    def columns(self) -> tuple[str, ...]:
        return CLIP_COLUMNS if self.frames is not None else SHAPES_COLUMNS

    def __len__(self) -> int:
        return len(self.references)


def shapes_set(level: int = 2, canvas: int = 64, split: str = "test", n: int = DEFAULT_SHAPES_N, seed: int = 0,
               background: str = "plain") -> EvalSet:
    """``n`` scenes of the shapes benchmark; the same scenes at every size."""
    from mmrope.data.shapes import ShapesDataset, render_scene

    data = ShapesDataset(n, split=split, seed=seed, level=level, canvas=canvas, background=background)
    scenes = [data.scene(i) for i in range(n)]
    return EvalSet(f"shapes level {level} ({split})", lambda size, frames=None: [render_scene(s, size) for s in scenes],
                   [list(s["captions"]) for s in scenes], scenes)


def clips_set(canvas: int = 64, split: str = "test", n: int = DEFAULT_SHAPES_N, seed: int = 0, frames: int = 4,
              duration: float = 2.0) -> EvalSet:
    """``n`` synthetic clips; the same events at every size and frame count."""
    from mmrope.data.clips import ClipsDataset, clip_fps, render_clip
    from mmrope.data.videos import Clip

    data = ClipsDataset(n, split=split, seed=seed, frames=frames, canvas=canvas, duration=duration)
    clips = [data.scene(i) for i in range(n)]

    def render(size: int, count: int | None = None) -> list[Clip]:
        count = count or frames
        return [Clip(render_clip(c, size, count), clip_fps(count, c["duration"]), f"clip {c['index']}") for c in clips]

    return EvalSet(f"clips ({split})", render, [list(c["captions"]) for c in clips], clips, frames=frames)


def records_set(path: str | Path, image_dir: str | Path | None = None, n: int | None = None,
                resize: str = "fixed", allow_outside: bool = False) -> EvalSet:
    """Images and captions of a COCO json, an imagefolder (``metadata.jsonl``) or a CSV; an imagefolder that
    ``mmrope data shapes`` wrote keeps its scenes, so it gets the shapes accuracies too."""
    from mmrope.data.captions import load_caption_records

    records = load_caption_records(path, image_dir, allow_outside)[:n]
    if not records:
        raise ValueError(f"{path}: no images to evaluate on")
    scenes = [r.scene for r in records]
    return EvalSet(str(path), lambda size, frames=None: [r.image for r in records], [r.captions for r in records],
                   scenes if all(s is not None for s in scenes) else None, resize)


def resolve_data(data: str, train_size: int, split: str = "test", n: int | None = None,
                 level: int = 2, allow_outside: bool = False) -> EvalSet:
    """What ``--data`` names: ``shapes`` (``level``, canvas ``train_size``), a training YAML (its ``data:``
    section, the shapes settings or the test / val caption file) or a dataset path."""
    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if data == "shapes":
        return shapes_set(level, train_size, split, n or DEFAULT_SHAPES_N)
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        return _config_set(path, split, n, allow_outside)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder: expected a YAML config, a dataset (a folder with "
                         "metadata.jsonl, a COCO .json or a .csv) or the word shapes")
    return records_set(path, n=n, allow_outside=allow_outside)


def _config_set(path: Path, split: str, n: int | None, allow_outside: bool = False) -> EvalSet:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the config ({' '.join(str(e).split())[:200]})") from None
    data = config.get("data", {}) if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the data: section must be a mapping")
    if data.get("dataset") == "clips":
        clips = data.get("clips") or {}
        return clips_set(clips.get("canvas", 64), split, n or DEFAULT_SHAPES_N, data.get("seed", 0),
                         clips.get("frames", 4), clips.get("duration", 2.0))
    if data.get("dataset", "shapes") == "shapes":
        shapes = data.get("shapes") or {}
        return shapes_set(shapes.get("level", 2), shapes.get("canvas", 64), split, n or DEFAULT_SHAPES_N,
                          data.get("seed", 0), shapes.get("background", "plain"))
    file = (data.get(split) if split in ("val", "test") else None) or data.get("test") or data.get("val")
    if not file:
        raise ValueError(f"{path}: data has no test or val caption file to evaluate on")
    return records_set(file, data.get("image_dir"), n, data.get("resize", "fixed"),
                       allow_outside or bool(data.get("allow_outside_paths")))


def parse_sizes(text: str, option: str = "--sizes") -> list[int]:
    """``"64,96,128"`` -> [64, 96, 128]."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated whole numbers, e.g. 64,96,128") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"{option} {text!r}: expected positive numbers, e.g. 64,96,128")
    return sizes


def evaluate(pipeline: CaptionPipeline, eval_set: EvalSet, sizes: list[int], resize: str = "fixed",
             progress: bool = False, frames: list[int] | None = None, **caption_kwargs
             ) -> tuple[list[dict], list[str]]:
    """One row of metrics per size, and for clips per size x frame count (``size``, [``frames``,] ``n``,
    ``bleu4``, ``cider`` and, with scenes, the accuracies), and the ``"path: reason"`` of each image that could
    not be read (left out of every row). ``frames`` defaults to the clips' own count."""
    from tqdm import tqdm

    from mmrope.data.clips import score_clip_captions
    from mmrope.data.images import ImageError
    from mmrope.data.scoring import score_captions
    from mmrope.metrics import bleu4, cider_d

    for size in sizes:
        pipeline.transform(size, resize)  # a bad size fails before any captioning
    counts = (frames or [eval_set.frames]) if eval_set.frames is not None else [None]
    score = score_clip_captions if eval_set.frames is not None else score_captions
    rows, skipped = [], {}
    for size in sizes:
        for count in counts:
            images = eval_set.images(size, count)
            results = pipeline.caption_each(images, size=size, resize=resize, **caption_kwargs)
            what = f"{size} px" + (f", {count} frames" if count else "")
            bar = tqdm(results, total=len(images), desc=what, unit="image", file=sys.stderr, leave=False,
                       disable=not progress or not (sys.stderr.isatty() or len(images) > 32))
            kept, predictions = [], []
            for i, result in enumerate(bar):
                if isinstance(result, ImageError):
                    skipped[str(result)] = None
                else:
                    kept.append(i)
                    predictions.append(result)
            references = [eval_set.references[i] for i in kept]
            row = {"size": size, **({"frames": count} if count else {}), "n": len(kept),
                   "bleu4": bleu4(predictions, references), "cider": cider_d(predictions, references)}
            if eval_set.scenes is not None and kept:
                scores = score(predictions, [eval_set.scenes[i] for i in kept])
                row.update({k: scores[k] for k in eval_set.columns if scores.get(k) is not None})
            rows.append(row)
    return rows, list(skipped)


def format_table(rows: list[dict], train_size: int | None = None) -> str:
    """A markdown table, one line per size; the training size is marked."""
    names = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}
    accuracies = dict.fromkeys(SHAPES_COLUMNS + CLIP_COLUMNS)
    metrics = ["bleu4", "cider"] + [k for k in accuracies if any(k in r for r in rows)]
    clips = any("frames" in r for r in rows)
    header = ["size"] + (["frames"] if clips else []) + ["images"] + [names.get(m, m) for m in metrics]
    lines = [header, ["---:"] * len(header)]
    for r in rows:
        size = f"{r['size']} (train)" if r["size"] == train_size else str(r["size"])
        lines.append([size] + ([str(r.get("frames", ""))] if clips else []) + [str(r["n"])]
                     + [f"{r[m]:.3f}" if m in r else "" for m in metrics])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
