"""The LightningDataModule: shapes, clips or caption files, their tokenizer, and the samplers that make a resumed run
see exactly the samples an uninterrupted one would."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

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


@dataclass
class ShapesConfig:
    """The built-in benchmark (see :mod:`mmrope.data.shapes`)."""
    level: int = 2
    canvas: int | None = None  # the size scenes are drawn at; None: data.image_size (the model's training size)
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    background: Literal["plain", "noisy"] = "plain"
    fresh_each_epoch: bool = True  # new scenes every epoch: no memorising
    val_split: Literal["val", "compositional"] = "val"


@dataclass
class ClipsConfig:
    """Synthetic clips of moving, appearing and recolouring shapes (see :mod:`mmrope.data.clips`)."""
    frames: int = 4  # frames per training clip; temporal patches = ceil(frames / temporal_patch_size)
    canvas: int | None = None  # the size clips are drawn at; None: data.image_size (the model's training size)
    duration: float = 2.0  # seconds every clip lasts, whatever its frame count (sets fps, for tokens_per_second)
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    fresh_each_epoch: bool = True
    val_split: Literal["val", "compositional"] = "val"
    clip_mode: Literal["block", "frames"] = "block"  # one (t, h, w) video block, or each frame its own image
    eval_frames: list[int] | None = None  # extra validation sets at these frame counts: temporal extrapolation


@dataclass
class ShardsConfig:
    """WebDataset shards (``data.dataset: shards``; see :mod:`mmrope.data.shards`)."""
    shuffle_window: int = 1000  # training samples shuffled together within each worker: memory is this many samples


class CaptionDataModule(L.LightningDataModule):
    """Shapes (default), synthetic clips, a real caption set (COCO JSON, imagefolder ``metadata.jsonl`` or CSV), or
    WebDataset shards (``dataset: shards``; ``train``, ``val``, ``test``: their ``index.json``), streamed so that every
    rank and worker reads its own samples once an epoch and a resumed run goes on where it stopped.

    ``eval_sizes`` adds one validation set per extra resolution (objects scale with the canvas), logged as
    ``val@96/relation`` and so on; for clips, ``clips.eval_frames`` adds one per frame count (``val@8f/event``).
    ``patch_size``, ``merge_size`` and ``temporal_patch_size`` are linked from the model's config, and ``row_breaks``
    (break tokens closing media rows) from its ``position_scheme``. Unreadable images are skipped
    (``on_bad_image: skip``) until more than ``max_skipped_fraction`` of the samples drawn were (see
    :class:`BadDataGuard`); ``on_bad_image: raise`` stops at the first. Caption files may only name images
    inside their folder (or ``image_dir``) unless ``allow_outside_paths`` is set.
    """

    def __init__(self, dataset: Literal["shapes", "clips", "captions", "shards"] = "shapes",
                 shapes: ShapesConfig = ShapesConfig(),  # noqa: B008
                 clips: ClipsConfig = ClipsConfig(),  # noqa: B008
                 shards: ShardsConfig = ShardsConfig(),  # noqa: B008
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
        if dataset not in ("shapes", "clips", "captions", "shards"):
            raise ValueError(f"data.dataset={dataset!r}: expected 'shapes', 'clips', 'captions' or 'shards'")
        if not (isinstance(max_skipped_fraction, (int, float)) and 0 <= max_skipped_fraction <= 1):
            raise ValueError(f"data.max_skipped_fraction={max_skipped_fraction!r}: expected a share in [0, 1]")
        if dataset == "captions" and not train:
            raise ValueError("data.train is required with data.dataset: captions (a COCO captions JSON, a folder "
                             "with metadata.jsonl, or a CSV file)")
        if dataset == "shards" and not train:
            raise ValueError("data.train is required with data.dataset: shards (a shard index.json, or its folder)")
        self.dataset, self.shapes = dataset, copy.deepcopy(as_config(ShapesConfig, shapes, "data.shapes."))
        self.clips = copy.deepcopy(as_config(ClipsConfig, clips, "data.clips."))
        self.shards = copy.deepcopy(as_config(ShardsConfig, shards, "data.shards."))
        self.paths = {"train": train, "val": val, "test": test}
        self.image_dir, self.karpathy_split = image_dir, karpathy_split
        self.image_size, self.resize = image_size, resize
        self.min_pixels, self.max_pixels, self.augment = min_pixels, max_pixels, augment
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_sizes = list(eval_sizes or [])
        self.max_caption_tokens, self.seed, self.on_bad_image = max_caption_tokens, seed, on_bad_image
        self.max_skipped_fraction = float(max_skipped_fraction)
        self.allow_outside_paths = allow_outside_paths
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        self.row_breaks = row_breaks
        self.eval_frames = list(self.clips.eval_frames or []) if dataset == "clips" else []
        self.tokenizer = self._build_tokenizer(tokenizer)
        self._resume: dict | None = None
        self._sets: dict[str, Any] = {}

    @property
    def tokenizer_state(self) -> dict:
        return self.tokenizer.to_dict()

    @property
    def monitor(self) -> str:
        """The metric the best checkpoint is chosen by: relation accuracy on shapes, event accuracy on clips,
        CIDEr-D on real captions."""
        return {"shapes": "val/relation", "clips": "val/event"}.get(self.dataset, "val/cider")

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
        return build_tokenizer("word", self._training_captions())

    def _training_captions(self) -> list[str]:
        if self.dataset == "shapes":
            from mmrope.data.shapes import vocabulary_captions

            return vocabulary_captions()
        if self.dataset == "clips":
            from mmrope.data.clips import clip_vocabulary_captions

            return clip_vocabulary_captions()
        if self.dataset == "shards":
            from mmrope.data.shards import read_shard_set

            return read_shard_set(self.paths["train"]).read_captions()
        return [c for r in self._records("train") for c in r.captions]

    def _records(self, split: str):
        """Caption records of a split: its own file, or with a Karpathy split file, the train file's share."""
        from mmrope.data.captions import load_caption_records

        path = self.paths[split] or (self.paths["train"] if self.karpathy_split else None)
        if path is None:
            raise ValueError(f"data.{split} is not set: give a caption file for it (or data.karpathy_split)")
        coco = {"karpathy_split": self.karpathy_split, "split": split} if self.karpathy_split else {}
        return load_caption_records(path, self.image_dir, self.allow_outside_paths, **coco)

    def _transform(self, train: bool, size: int | None = None):
        from mmrope.data.images import ImageTransform

        return ImageTransform(mode=self.resize, size=size or self.image_size, patch_size=self.patch_size,
                              merge_size=self.merge_size, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                              augment=self.augment and train)

    def _make(self, split: str, size: int | None = None, frames: int | None = None):
        if self.dataset == "clips":
            from mmrope.data.clips import ClipsDataset

            c = self.clips
            n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
            name = {"train": "train", "val": c.val_split, "test": "test"}[split]
            transform = self._transform(split == "train", size) if (self.augment and split == "train") else None
            return ClipsDataset(n, split=name, seed=self.seed, frames=frames or c.frames,
                                canvas=c.canvas or self.image_size, size=size, duration=c.duration,
                                transform=transform, fresh_each_epoch=c.fresh_each_epoch and split == "train")
        if self.dataset == "shapes":
            from mmrope.data.shapes import ShapesDataset

            c = self.shapes
            n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
            name = {"train": "train", "val": c.val_split, "test": "test"}[split]
            transform = self._transform(split == "train", size) if (self.augment and split == "train") else None
            return ShapesDataset(n, split=name, seed=self.seed, level=c.level, canvas=c.canvas or self.image_size,
                                 size=size, background=c.background, transform=transform,
                                 fresh_each_epoch=c.fresh_each_epoch and split == "train")
        if self.dataset == "shards":
            return self._shard_stream(split, size)
        from mmrope.data.captions import CaptionDataset

        return CaptionDataset(self._records(split), self._transform(split == "train", size), train=split == "train",
                              seed=self.seed, on_bad_image=self.on_bad_image)  # max_pixels: the resize budget

    def _shard_stream(self, split: str, size: int | None = None):
        from mmrope.data.shards import ShardStream, read_shard_set

        if self.paths[split] is None:
            raise ValueError(f"data.{split} is not set: give the shard index.json of that split")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ShardStream(read_shard_set(self.paths[split]), self._transform(split == "train", size),
                           train=split == "train", seed=self.seed,
                           batch_size=self.batch_size if split == "train" else self.eval_batch_size, rank=rank,
                           world_size=world, num_workers=self.num_workers, shuffle_window=self.shards.shuffle_window,
                           on_bad_image=self.on_bad_image)

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
        from mmrope.data.shards import ShardLoader, ShardStream

        collate = CaptionCollator(self.tokenizer, self.patch_size, self.merge_size, self.max_caption_tokens,
                                  self.temporal_patch_size, self.clips.clip_mode, self.row_breaks)
        if isinstance(dataset, ShardStream):  # it makes its own batches, split over ranks and workers
            return ShardLoader(dataset, collate, self.num_workers, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.dataset == "shards":
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
        state = training_position(trainer.fit_loop)
        if self.dataset == "shards":  # the samples every rank's workers had used, and the split they were used in
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


# Our sampler resumes through CaptionDataModule.state_dict; Lightning cannot see that and warns otherwise.
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
# A shard stream's len() is exact over any number of workers (mmrope.data.shards plans them); Lightning cannot know.
warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")
