"""The LightningDataModule: shapes, clips or caption files, their tokenizer, and the samplers that make a resumed run
see exactly the samples an uninterrupted one would."""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mmrope.benchmarks import BENCHMARKS, Benchmark
from mmrope.benchmarks.captions import CaptionsConfig, ShardsConfig
from mmrope.benchmarks.clips import ClipsConfig
from mmrope.benchmarks.shapes import ShapesConfig
from mmrope.data.tokenizer import Tokenizer, load_tokenizer
from mmrope.model.config import as_config


class ResumableSampler(DistributedSampler):
    """Seeded shuffle per epoch, one shard per rank, and an optional start mid-epoch after a resume.

    It also passes the epoch to the dataset, whose augmentation and caption choice are seeded by
    (seed, epoch, index): no global RNG is involved, so a resumed run sees exactly the same samples.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples of this rank's shard already seen)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            indices = indices[self.resume_at[1]:]
        self.resume_at = None
        return iter(indices)


class CaptionDataModule(L.LightningDataModule):
    """The data of any registered benchmark (``dataset``, :mod:`mmrope.benchmarks`): shapes (default), synthetic
    clips, a real caption set (COCO JSON, imagefolder ``metadata.jsonl``, CSV, or a Hugging Face dataset on disk whose
    columns ``captions.image_column`` / ``captions.caption_column`` name), or WebDataset shards (``dataset:
    shards``; ``train``, ``val``, ``test``: their ``index.json``), streamed so that every rank and worker reads its
    own samples once an epoch and a resumed run goes on where it stopped. The benchmark decides what its datasets,
    vocabulary and headline metric are; this module adds tokenizer, transforms, samplers and loaders.

    ``eval_sizes`` adds one validation set per extra resolution (objects scale with the canvas), logged as
    ``val@96/relation`` and so on; for clips, ``clips.eval_frames`` adds one per frame count (``val@8f/event``).
    ``patch_size``, ``merge_size`` and ``temporal_patch_size`` are linked from the model's config, and ``row_breaks``
    (break tokens closing media rows) from its ``position_scheme``. Unreadable images are skipped
    (``on_bad_image: skip``) until more than ``max_skipped_fraction`` of the samples drawn were (see
    :class:`BadDataGuard`); ``on_bad_image: raise`` stops at the first. Caption files may only name images
    inside their folder (or ``image_dir``) unless ``allow_outside_paths`` is set, and a shard index only files
    inside its own folder unless ``shards.trust_index`` is. ``options``: the settings of a benchmark registered
    outside the package (the fields of its ``config_class``).
    """

    def __init__(self, dataset: str = "shapes",
                 shapes: ShapesConfig = ShapesConfig(),  # noqa: B008
                 clips: ClipsConfig = ClipsConfig(),  # noqa: B008
                 shards: ShardsConfig = ShardsConfig(),  # noqa: B008
                 captions: CaptionsConfig = CaptionsConfig(),  # noqa: B008
                 options: dict | None = None,
                 train: str | None = None, val: str | None = None, test: str | None = None,
                 image_dir: str | None = None, karpathy_split: str | None = None,
                 image_size: int = 64, resize: Literal["fixed", "native"] = "fixed",  # image_size: linked
                 min_pixels: int = 32 * 32, max_pixels: int = 512 * 512, augment: bool = False,
                 tokenizer: Literal["word", "byte"] | str = "word", batch_size: int = 64, num_workers: int = 0,
                 eval_sizes: list[int] | None = None, eval_batch_size: int | None = None,
                 max_caption_tokens: int = 32, seed: int = 0,
                 on_bad_image: Literal["skip", "raise"] = "skip", max_skipped_fraction: float = 0.1,
                 allow_outside_paths: bool = False,
                 patch_size: int = 8, merge_size: int = 2, temporal_patch_size: int = 1, row_breaks: bool = False):
        super().__init__()
        benchmark = BENCHMARKS[dataset]  # the live registry: an unknown name is one line listing the known
        if not (isinstance(max_skipped_fraction, (int, float)) and 0 <= max_skipped_fraction <= 1):
            raise ValueError(f"data.max_skipped_fraction={max_skipped_fraction!r}: expected a share in [0, 1]")
        self.dataset = dataset
        self.shapes = copy.deepcopy(as_config(ShapesConfig, shapes, "data.shapes."))
        self.clips = copy.deepcopy(as_config(ClipsConfig, clips, "data.clips."))
        self.shards = copy.deepcopy(as_config(ShardsConfig, shards, "data.shards."))
        self.captions = copy.deepcopy(as_config(CaptionsConfig, captions, "data.captions."))
        self.paths = {"train": train, "val": val, "test": test}
        self.image_size, self.resize = image_size, resize
        self.min_pixels, self.max_pixels, self.augment = min_pixels, max_pixels, augment
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_sizes = list(eval_sizes or [])
        self.max_caption_tokens, self.seed, self.on_bad_image = max_caption_tokens, seed, on_bad_image
        self.max_skipped_fraction = float(max_skipped_fraction)
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        self.row_breaks = row_breaks
        sections = {"shapes": self.shapes, "clips": self.clips, "shards": self.shards, "captions": self.captions}
        self.benchmark: Benchmark = benchmark({
            "dataset": dataset, **sections, **({dataset: options} if options is not None else {}),
            **self.paths, "image_dir": image_dir, "karpathy_split": karpathy_split, "image_size": image_size,
            "resize": resize, "seed": seed, "allow_outside_paths": allow_outside_paths, "on_bad_image": on_bad_image})
        self.eval_frames = list(self.benchmark.eval_frames)
        self.tokenizer = self._build_tokenizer(tokenizer)
        self._resume: dict | None = None
        self._sets: dict[str, Any] = {}

    @property
    def tokenizer_state(self) -> dict:
        return self.tokenizer.to_dict()

    @property
    def monitor(self) -> str:
        """The metric the best checkpoint is chosen by: the benchmark's headline (place or relation accuracy on
        shapes, event accuracy on clips, CIDEr-D on real captions)."""
        return f"val/{self.benchmark.metric}"

    @property
    def eval_names(self) -> list[str]:
        """What each extra validation set is logged as, after the ``@``: its size, or its frame count + "f"."""
        return [str(s) for s in self.eval_sizes] + [f"{f}f" for f in self.eval_frames]

    def _build_tokenizer(self, kind: str) -> Tokenizer:
        from mmrope.data.tokenizer import build_tokenizer

        if kind not in ("word", "byte"):
            return load_tokenizer(kind)  # a saved tokenizer.json
        if kind == "byte":
            return build_tokenizer("byte", [])
        return build_tokenizer("word", self.benchmark.vocabulary())

    def _transform(self, train: bool, size: int | None = None):
        from mmrope.data.images import ImageTransform

        return ImageTransform(mode=self.resize, size=size or self.image_size, patch_size=self.patch_size,
                              merge_size=self.merge_size, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                              augment=self.augment and train)

    def _make(self, split: str, size: int | None = None, frames: int | None = None):
        train = split == "train"
        # drawn samples are plain tensors of their own size unless augmented; files always go through the resize
        plain = self.benchmark.generated and not (self.augment and train)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return self.benchmark.dataset(split, size, frames, None if plain else self._transform(train, size),
                                      rank=rank, world_size=world, num_workers=self.num_workers,
                                      batch_size=self.batch_size if train else self.eval_batch_size)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self._sets["train"] = self._make("train")
        for split, stages in (("val", ("fit", "validate", None)), ("test", ("test", None))):
            if stage in stages:
                self._sets[split] = ([self._make(split)] + [self._make(split, size=s) for s in self.eval_sizes]
                                     + [self._make(split, frames=f) for f in self.eval_frames])
        if stage == "predict":
            self._sets["predict"] = self._make("test")

    def _loader(self, dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        from mmrope.data.collate import CaptionCollator
        from mmrope.data.loader import SkipWarningLoader
        from mmrope.data.shards import ShardLoader, ShardStream

        collate = CaptionCollator(self.tokenizer, self.patch_size, self.merge_size, self.max_caption_tokens,
                                  self.temporal_patch_size, self.benchmark.clip_mode, self.row_breaks)
        if isinstance(dataset, ShardStream):  # it makes its own batches, split over ranks and workers
            return ShardLoader(dataset, collate, self.num_workers, pin_memory=torch.cuda.is_available())
        return SkipWarningLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None,
                                 sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                                 persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        from mmrope.data.shards import ShardStream

        if isinstance(self._sets["train"], ShardStream):  # it keeps its own place in the epoch
            stream = self._sets["train"]
            if self._resume is not None:
                if "stream" in self._resume:
                    stream.check_state(self._resume["stream"])
                stream.set_epoch(self._resume["epoch"])
                stream.resume_at = (self._resume["epoch"], self._resume["batches"])
                self._resume = None
            return self._loader(stream, self.batch_size, shuffle=False)
        sampler = ResumableSampler(self._sets["train"], world, rank, shuffle=True, seed=self.seed)
        if self._resume is not None:
            sampler.resume_at = (self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return self._loader(self._sets["train"], self.batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self._sets["val"]]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self._sets["test"]]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._sets["predict"], self.eval_batch_size, shuffle=False)

    # where in the epoch the last finished step left the data: saved in every checkpoint
    def state_dict(self) -> dict:
        """``{"epoch": e, "batches": k}``: the last finished step was batch k of epoch e (and, for shards, the samples
        every rank's workers had used). Read from the fit loop's progress, so it holds whatever hook the checkpoint
        is written from: a step's end (Ctrl-C), a validation (all that a crash leaves), the end of training."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        from mmrope.data.shards import ShardStream

        state = training_position(trainer.fit_loop)
        if isinstance(self._sets.get("train"), ShardStream):  # the samples every rank's workers had used, and the
            # split they were used in
            state["stream"] = self._sets["train"].state(state["epoch"], state["batches"])
        return state

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None


def training_position(fit_loop) -> dict:
    """The epoch the last batch was drawn from and how many of its batches were trained on, from Lightning's loop
    progress.

    Not ``trainer.current_epoch``: that counts completed epochs, and the fit loop completes an epoch that
    ``max_steps`` cut short, so the end-of-training checkpoint would name the next epoch. An epoch counts as begun
    once ``on_train_epoch_start`` ran (``started``), and its batch counter is only reset when the next one begins,
    so both hold at a step's end, at a validation and at the end of training."""
    epoch = max(fit_loop.epoch_progress.current.started - 1, 0)
    return {"epoch": epoch, "batches": fit_loop.epoch_loop.batch_progress.current.processed}


# `--help` shows the names registered when this module is imported (jsonargparse reads the docstring); __init__
# checks the live registry, so a benchmark registered later (MMROPE_PLUGINS) counts as well
CaptionDataModule.__doc__ += f"""
    Args:
        dataset: a name in BENCHMARKS (mmrope.benchmarks): {', '.join(BENCHMARKS)}, or a plug-in's
"""
