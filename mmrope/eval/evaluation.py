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
from pathlib import Path

from mmrope.benchmarks.base import EvalSet
from mmrope.inference import CaptionPipeline

DEFAULT_N = 500  # scenes or clips when --n is not given


def resolve_data(data: str | dict, train_size: int, split: str = "test", n: int | None = None,
                 level: int = 2, allow_outside: bool = False, trust_shards: bool = False) -> EvalSet:
    """What ``--data`` names: ``shapes`` (``level``, canvas ``train_size``), a resolved ``data:`` section of a
    training config (:func:`data_set`; ``mmrope eval`` resolves a YAML with ``mmrope.train.config_reader``) or a
    dataset path. ``allow_outside``: caption files may name images outside their folder; ``trust_shards``: a
    shard index may name URLs, commands and other paths."""
    from mmrope.benchmarks.captions import records_set, shards_set

    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if isinstance(data, dict):
        return data_set(data, split, n, allow_outside, trust_shards=trust_shards)
    if data == "shapes":
        return data_set({"dataset": "shapes", "image_size": train_size, "shapes": {"level": level}}, split, n)
    path = Path(data)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder: expected a YAML config, a dataset (a folder with "
                         "metadata.jsonl, a COCO .json, a .csv, a datasets save_to_disk folder or a .parquet), "
                         "shards (their index.json) or the word shapes")
    if path.name == "index.json" or (path / "index.json").is_file() and not (path / "metadata.jsonl").is_file():
        return shards_set(path, n, trust=trust_shards)
    return records_set(path, n=n, allow_outside=allow_outside)


def data_set(data: dict, split: str = "test", n: int | None = None, allow_outside: bool = False,
             trust_shards: bool = False, protocol: str = "scaled") -> EvalSet:
    """The evaluation set of a resolved ``data:`` section (:func:`mmrope.train.config_reader.read_config`): what its
    benchmark scores, ``n`` samples of ``split`` (``protocol``: how shapes scenes are shown at other sizes,
    :data:`mmrope.data.shapes.SIZE_PROTOCOLS`)."""
    from mmrope.benchmarks import benchmark_of

    return benchmark_of(data).eval_set(split, n or DEFAULT_N, allow_outside=allow_outside, trust=trust_shards,
                                       protocol=protocol)


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
             progress: bool = False, frames: list[int] | None = None, samples: bool = False, **caption_kwargs
             ) -> tuple[list[dict], list[str]]:
    """One row of metrics per size, and for clips per size x frame count (``size``, [``frames``,] ``n``,
    ``bleu4``, ``cider`` and, with scenes, the benchmark's accuracies), and the ``"path: reason"`` of each image
    that could not be read (left out of every row). ``frames`` defaults to the clips' own count. ``samples``: each
    row also holds ``samples``, one ``{index, prediction, <accuracies>}`` per sample scored (paired tests read
    them)."""
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
            scores = score_generated(predictions, [eval_set.references[i] for i in kept], scenes,
                                     eval_set.accuracies)
            row = {"size": size, **({"frames": count} if count else {}), "n": len(kept), **scores}
            if samples:
                row["samples"] = [{"index": i, "prediction": p,
                                   **(eval_set.accuracies([p], [eval_set.scenes[i]]) if scenes else {})}
                                  for i, p in zip(kept, predictions)]
            rows.append(row)
    return rows, list(skipped)


def format_table(rows: list[dict], train_size: int | None = None) -> str:
    """A markdown table, one line per size; the training size is marked."""
    names = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}
    from mmrope.benchmarks import BENCHMARKS

    accuracies = dict.fromkeys(c for benchmark in BENCHMARKS.values() for c in benchmark.columns)
    metrics = ["bleu4", "cider"] + [k for k in accuracies if any(k in r for r in rows)]
    clips = any("frames" in r for r in rows)
    header = ["size"] + (["frames"] if clips else []) + ["images"] + [names.get(m, m) for m in metrics]
    lines = [header, ["---:"] * len(header)]
    for r in rows:
        size = f"{r['size']} (train)" if r["size"] == train_size else str(r["size"])
        lines.append([size] + ([str(r.get("frames", ""))] if clips else []) + [str(r["n"])]
                     + [f"{r[m]:.3f}" if m in r else "" for m in metrics])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
