"""Real caption sets: files on disk (``captions``: a COCO captions JSON, an imagefolder ``metadata.jsonl``, a CSV, or a
Hugging Face dataset saved with ``save_to_disk`` or as parquet) and WebDataset shards (``shards``,
:mod:`mmrope.data.shards`). Headline: CIDEr-D. An imagefolder that ``mmrope data shapes`` wrote keeps its scenes, so
it is scored with the shapes accuracies as well."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmrope.benchmarks.base import Benchmark, EvalSet, register_benchmark
from mmrope.benchmarks.shapes import Shapes, shapes_accuracies


def records_set(path: str | Path, image_dir: str | Path | None = None, n: int | None = None,
                resize: str = "fixed", allow_outside: bool = False, image_column: str | None = None,
                caption_column: str | None = None) -> EvalSet:
    """Images and captions of a COCO json, an imagefolder (``metadata.jsonl``), a CSV or a Hugging Face dataset on
    disk (whose images are decoded here, evaluation sets being small; a bad one is left out with one warning); an
    imagefolder that ``mmrope data shapes`` wrote keeps its scenes (checked by
    :func:`mmrope.data.shapes.check_scene` as they are read), so it gets the shapes accuracies too."""
    from mmrope.data.captions import load_caption_records

    records = load_caption_records(path, image_dir, allow_outside, image_column, caption_column)[:n]
    images = [r.image for r in records]
    if not all(isinstance(image, Path) for image in images):
        records, images = _decoded(records)
    if not records:
        raise ValueError(f"{path}: no images to evaluate on")
    scenes = [r.scene for r in records]
    scored = all(s is not None for s in scenes)
    return EvalSet(str(path), lambda size, frames=None: images, [r.captions for r in records],
                   scenes if scored else None, resize, accuracies=shapes_accuracies if scored else None,
                   columns=Shapes.columns if scored else ())


def _decoded(records: list) -> tuple[list, list]:
    """The records whose images decode, and those images (PIL)."""
    import logging

    from mmrope.data.captions import load_record_image
    from mmrope.data.images import ImageError

    kept, images = [], []
    for record in records:
        try:
            images.append(load_record_image(record.image))
        except ImageError as e:
            logging.getLogger("mmrope").warning("skipping bad image %s", e)
            continue
        kept.append(record)
    return kept, images


def shards_set(spec: str | Path, n: int | None = None, resize: str = "fixed", trust: bool = False) -> EvalSet:
    """The first ``n`` samples of WebDataset shards (an ``index.json`` or its folder; ``trust``: may the index name
    URLs, commands and other paths), read into memory (evaluation sets are small); a bad sample is left out with
    one warning naming it."""
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
    scored = all(s is not None for s in scenes)
    return EvalSet(str(spec), lambda size, frames=None: images, references, scenes if scored else None, resize,
                   accuracies=shapes_accuracies if scored else None, columns=Shapes.columns if scored else ())


class _Files(Benchmark):
    """What both real-caption benchmarks share: file paths per split in ``data.train`` / ``val`` / ``test``."""

    def path(self, split: str, fallback: str | None = None) -> str:
        path = self.data.get(split) or fallback
        if not path and split == "train":
            raise ValueError(f"data.train is required with data.dataset: {self.name} ({self.what})")
        if not path:
            raise ValueError(f"data.{split} is not set: give the {self.what.split(',')[0]} of that split")
        return path

    def eval_file(self, split: str) -> str:
        file = (self.data.get(split) if split in ("val", "test") else None) or self.data.get("test") \
            or self.data.get("val")
        if not file:
            raise ValueError("the data config has no test or val file to evaluate on")
        return file


@dataclass
class CaptionsConfig:
    """``data.captions``: the columns of a Hugging Face dataset on disk (:mod:`mmrope.data.hf_datasets`); the other
    caption formats have fixed names."""
    image_column: str = "image"  # datasets' Image feature (bytes and path), bytes, or a path inside the folder
    caption_column: str | None = None  # a string or a list of strings; None: the first of caption, text, captions


@register_benchmark("captions")
class Captions(_Files):
    summary = ("a caption set on disk: a COCO captions JSON, an imagefolder metadata.jsonl, a CSV, or a Hugging Face "
               "dataset (save_to_disk folder or parquet)")
    config_class = CaptionsConfig
    what = ("a COCO captions JSON, a folder with metadata.jsonl, a CSV file, a datasets save_to_disk folder or a "
            ".parquet file")

    def records(self, split: str):
        """Caption records of a split: its own file, or with a Karpathy split file, the train file's share."""
        from mmrope.data.captions import load_caption_records

        karpathy = self.data.get("karpathy_split")
        path = self.path(split, self.data.get("train") if karpathy else None)
        coco = {"karpathy_split": karpathy, "split": split} if karpathy else {}
        return load_caption_records(path, self.data.get("image_dir"), bool(self.data.get("allow_outside_paths")),
                                    self.config.image_column, self.config.caption_column, **coco)

    def vocabulary(self) -> list[str]:
        return [c for r in self.records("train") for c in r.captions]

    def dataset(self, split, size=None, frames=None, transform=None, **loader):
        from mmrope.data.captions import CaptionDataset

        return CaptionDataset(self.records(split), transform, train=split == "train", seed=self.seed,
                              on_bad_image=self.data.get("on_bad_image", "skip"))

    def eval_set(self, split="test", n=None, allow_outside: bool = False, **options) -> EvalSet:
        return records_set(self.eval_file(split), self.data.get("image_dir"), n, self.data.get("resize", "fixed"),
                           allow_outside or bool(self.data.get("allow_outside_paths")), self.config.image_column,
                           self.config.caption_column)


@dataclass
class ShardsConfig:
    """``data.shards``: WebDataset shards (see :mod:`mmrope.data.shards`)."""
    shuffle_window: int = 1000  # training samples shuffled together within each worker: memory is this many samples
    # may an index name URLs, pipe: commands and files outside its folder? Only an index you trust: an index arrives
    # with a downloaded dataset, and a pipe: url runs a shell command
    trust_index: bool = False


@register_benchmark("shards")
class Shards(_Files):
    summary = "WebDataset shards (an index.json per split), read once per epoch over ranks and workers"
    config_class = ShardsConfig
    what = "a shard index.json, or its folder"

    def shard_set(self, split: str):
        from mmrope.data.shards import read_shard_set

        return read_shard_set(self.path(split), self.config.trust_index)

    def vocabulary(self) -> list[str]:
        return self.shard_set("train").read_captions()

    def dataset(self, split, size=None, frames=None, transform=None, rank: int = 0, world_size: int = 1,
                batch_size: int = 64, num_workers: int = 0, **loader):
        """A stream that makes its own batches, split over ranks and workers (:class:`ShardStream`)."""
        from mmrope.data.shards import ShardStream

        return ShardStream(self.shard_set(split), transform, train=split == "train", seed=self.seed,
                           batch_size=batch_size, rank=rank, world_size=world_size, num_workers=num_workers,
                           shuffle_window=self.config.shuffle_window,
                           on_bad_image=self.data.get("on_bad_image", "skip"))

    def eval_set(self, split="test", n=None, trust: bool = False, **options) -> EvalSet:
        return shards_set(self.eval_file(split), n, self.data.get("resize", "fixed"),
                          trust or self.config.trust_index)
