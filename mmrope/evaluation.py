"""Scoring a captioner at one or more resolutions: what ``mmrope eval`` prints.

An evaluation set is images with their reference captions, and shapes scenes when there are any. Shapes scenes are
rendered afresh at each size (objects scaled with the canvas), as training's ``eval_sizes`` do, so every size sees
the same scenes drawn sharply; image files are resized by the pipeline. Each size gets BLEU-4 and CIDEr-D and, with
scenes, the accuracies of :mod:`mmrope.data.scoring` (exact, attribute, relation, and axis / count where the level
has them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmrope.inference import CaptionPipeline

DEFAULT_SHAPES_N = 500
SHAPES_COLUMNS = ("exact", "attribute", "relation", "axis", "count")  # in the order the table shows them


@dataclass
class EvalSet:
    name: str
    images: Callable[[int], list]  # size -> the images to caption at that size (paths or PIL images)
    references: list[list[str]]
    scenes: list[dict] | None  # shapes scenes, for the accuracies; None for other data
    resize: str = "fixed"  # what the data's config trained with

    def __len__(self) -> int:
        return len(self.references)


def shapes_set(level: int = 2, canvas: int = 64, split: str = "test", n: int = DEFAULT_SHAPES_N, seed: int = 0,
               background: str = "plain") -> EvalSet:
    """``n`` scenes of the shapes benchmark; the same scenes at every size."""
    from mmrope.data.shapes import ShapesDataset, render_scene

    data = ShapesDataset(n, split=split, seed=seed, level=level, canvas=canvas, background=background)
    scenes = [data.scene(i) for i in range(n)]
    return EvalSet(f"shapes level {level} ({split})", lambda size: [render_scene(s, size) for s in scenes],
                   [list(s["captions"]) for s in scenes], scenes)


def records_set(path: str | Path, image_dir: str | Path | None = None, n: int | None = None,
                resize: str = "fixed") -> EvalSet:
    """Images and captions of a COCO json, an imagefolder (``metadata.jsonl``) or a CSV; an imagefolder that
    ``mmrope data shapes`` wrote keeps its scenes, so it gets the shapes accuracies too."""
    from mmrope.data.captions import load_caption_records

    records = load_caption_records(path, image_dir)[:n]
    if not records:
        raise ValueError(f"{path}: no images to evaluate on")
    scenes = [r.scene for r in records]
    return EvalSet(str(path), lambda size: [r.image for r in records], [r.captions for r in records],
                   scenes if all(s is not None for s in scenes) else None, resize)


def resolve_data(data: str, train_size: int, split: str = "test", n: int | None = None,
                 level: int = 2) -> EvalSet:
    """What ``--data`` names: ``shapes`` (``level``, canvas ``train_size``), a training YAML (its ``data:``
    section, the shapes settings or the test / val caption file) or a dataset path."""
    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if data == "shapes":
        return shapes_set(level, train_size, split, n or DEFAULT_SHAPES_N)
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        return _config_set(path, split, n)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder: expected a YAML config, a dataset (a folder with "
                         "metadata.jsonl, a COCO .json or a .csv) or the word shapes")
    return records_set(path, n=n)


def _config_set(path: Path, split: str, n: int | None) -> EvalSet:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the config ({' '.join(str(e).split())[:200]})") from None
    data = config.get("data", {}) if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the data: section must be a mapping")
    if data.get("dataset", "shapes") == "shapes":
        shapes = data.get("shapes") or {}
        return shapes_set(shapes.get("level", 2), shapes.get("canvas", 64), split, n or DEFAULT_SHAPES_N,
                          data.get("seed", 0), shapes.get("background", "plain"))
    file = (data.get(split) if split in ("val", "test") else None) or data.get("test") or data.get("val")
    if not file:
        raise ValueError(f"{path}: data has no test or val caption file to evaluate on")
    return records_set(file, data.get("image_dir"), n, data.get("resize", "fixed"))


def parse_sizes(text: str) -> list[int]:
    """``"64,96,128"`` -> [64, 96, 128]."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes {text!r}: expected comma-separated whole numbers, e.g. 64,96,128") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"--sizes {text!r}: expected positive sizes, e.g. 64,96,128")
    return sizes


def evaluate(pipeline: CaptionPipeline, eval_set: EvalSet, sizes: list[int], resize: str = "fixed",
             progress: bool = False, **caption_kwargs) -> tuple[list[dict], list[str]]:
    """One row of metrics per size (``size``, ``n``, ``bleu4``, ``cider`` and, with scenes, the accuracies), and
    the ``"path: reason"`` of each image that could not be read (left out of every row)."""
    from tqdm import tqdm

    from mmrope.data.images import ImageError
    from mmrope.data.scoring import score_captions
    from mmrope.metrics import bleu4, cider_d

    for size in sizes:
        pipeline.transform(size, resize)  # a bad size fails before any captioning
    rows, skipped = [], {}
    for size in sizes:
        images = eval_set.images(size)
        results = pipeline.caption_each(images, size=size, resize=resize, **caption_kwargs)
        bar = tqdm(results, total=len(images), desc=f"{size} px", unit="image", file=sys.stderr, leave=False,
                   disable=not progress or not (sys.stderr.isatty() or len(images) > 32))
        kept, predictions = [], []
        for i, result in enumerate(bar):
            if isinstance(result, ImageError):
                skipped[str(result)] = None
            else:
                kept.append(i)
                predictions.append(result)
        references = [eval_set.references[i] for i in kept]
        row = {"size": size, "n": len(kept), "bleu4": bleu4(predictions, references),
               "cider": cider_d(predictions, references)}
        if eval_set.scenes is not None and kept:
            scores = score_captions(predictions, [eval_set.scenes[i] for i in kept])
            row.update({k: scores[k] for k in SHAPES_COLUMNS if k in scores})
        rows.append(row)
    return rows, list(skipped)


def format_table(rows: list[dict], train_size: int | None = None) -> str:
    """A markdown table, one line per size; the training size is marked."""
    names = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}
    metrics = ["bleu4", "cider"] + [k for k in SHAPES_COLUMNS if any(k in r for r in rows)]
    header = ["size", "images"] + [names.get(m, m) for m in metrics]
    lines = [header, ["---:"] * len(header)]
    for r in rows:
        size = f"{r['size']} (train)" if r["size"] == train_size else str(r["size"])
        lines.append([size, str(r["n"])] + [f"{r[m]:.3f}" if m in r else "" for m in metrics])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
