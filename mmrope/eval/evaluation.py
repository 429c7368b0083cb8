"""Scoring a captioner at one or more resolutions (and, for clips, frame counts): what ``mmrope eval`` prints.

An evaluation set is images with their reference captions, and shapes scenes when there are any. Shapes scenes are
rendered afresh at each size (objects scaled with the canvas), as training's ``eval_sizes`` do, so every size sees
the same scenes drawn sharply; image files are resized by the pipeline. Clips are rendered afresh at each size and
frame count (the same events, sampled more finely: temporal extrapolation). Every row is scored by
:func:`mmrope.eval.scoring.score_generated`, as training's validation is: BLEU-4, CIDEr-D and, with scenes or clips,
the benchmark's accuracies.
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


def shards_set(spec: str | Path, n: int | None = None, resize: str = "fixed", trust: bool = False) -> EvalSet:
    """The first ``n`` samples of WebDataset shards (an ``index.json`` or its folder; :mod:`mmrope.data.shards`;
    ``trust``: may the index name URLs, commands and other paths), read into memory (evaluation sets are small); a
    bad sample is left out with one warning naming it."""
    import logging

    from mmrope.data.images import ImageError
    from mmrope.data.shards import BadSample, parse_sample, read_shard, read_shard_set

    images, references, scenes = [], [], []
    for shard in read_shard_set(spec, trust).shards:
        for raw in read_shard(shard):
            if n is not None and len(images) >= n:
                break
            try:
                image, captions, meta = parse_sample(raw)
            except (BadSample, ImageError) as e:
                logging.getLogger("mmrope").warning("skipping bad sample %s", e)
                continue
            images.append(image)
            references.append(captions)
            scenes.append(meta.get("scene"))
    if not images:
        raise ValueError(f"{spec}: no readable sample to evaluate on")
    return EvalSet(str(spec), lambda size, frames=None: images, references,
                   scenes if all(s is not None for s in scenes) else None, resize)


def resolve_data(data: str | dict, train_size: int, split: str = "test", n: int | None = None,
                 level: int = 2, allow_outside: bool = False, trust_shards: bool = False) -> EvalSet:
    """What ``--data`` names: ``shapes`` (``level``, canvas ``train_size``), a resolved ``data:`` section of a
    training config (:func:`data_set`; ``mmrope eval`` resolves a YAML with ``mmrope.train.config_reader``) or a
    dataset path. ``allow_outside``: caption files may name images outside their folder; ``trust_shards``: a
    shard index may name URLs, commands and other paths."""
    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if isinstance(data, dict):
        return data_set(data, split, n, allow_outside, trust_shards=trust_shards)
    if data == "shapes":
        return shapes_set(level, train_size, split, n or DEFAULT_SHAPES_N)
    path = Path(data)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder: expected a YAML config, a dataset (a folder with "
                         "metadata.jsonl, a COCO .json or a .csv), shards (their index.json) or the word shapes")
    if path.name == "index.json" or (path / "index.json").is_file() and not (path / "metadata.jsonl").is_file():
        return shards_set(path, n, trust=trust_shards)
    return records_set(path, n=n, allow_outside=allow_outside)


def data_set(data: dict, split: str = "test", n: int | None = None, allow_outside: bool = False,
             where: str | Path = "the data config", trust_shards: bool = False) -> EvalSet:
    """The evaluation set of a resolved ``data:`` section (:func:`mmrope.train.config_reader.read_config`): ``n``
    scenes or clips of ``split`` drawn as training draws them, or the split's caption file."""
    size = data["image_size"]
    if data["dataset"] == "clips":
        clips = data["clips"]
        return clips_set(clips["canvas"] or size, split, n or DEFAULT_SHAPES_N, data["seed"], clips["frames"],
                         clips["duration"])
    if data["dataset"] == "shapes":
        shapes = data["shapes"]
        return shapes_set(shapes["level"], shapes["canvas"] or size, split, n or DEFAULT_SHAPES_N, data["seed"],
                          shapes["background"])
    file = (data.get(split) if split in ("val", "test") else None) or data.get("test") or data.get("val")
    if not file:
        raise ValueError(f"{where}: data has no test or val caption file to evaluate on")
    if data["dataset"] == "shards":
        trust = trust_shards or bool((data.get("shards") or {}).get("trust_index"))
        return shards_set(file, n, data.get("resize", "fixed"), trust)
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

    from mmrope.data.images import ImageError
    from mmrope.eval.scoring import score_generated

    for size in sizes:
        pipeline.transform(size, resize)  # a bad size fails before any captioning
    counts = (frames or [eval_set.frames]) if eval_set.frames is not None else [None]
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
            scenes = [eval_set.scenes[i] for i in kept] if eval_set.scenes is not None else None
            scores = score_generated(predictions, [eval_set.references[i] for i in kept], scenes)
            rows.append({"size": size, **({"frames": count} if count else {}), "n": len(kept), **scores})
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
