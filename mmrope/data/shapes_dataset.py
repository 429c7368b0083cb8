"""The datasets that draw their samples on the fly from (split, seed, index): the bookkeeping every generated
benchmark shares (:class:`GeneratedDataset`, also the base of :class:`mmrope.data.clips.ClipsDataset`) and the
shapes scenes as training and validation read them (:class:`ShapesDataset`)."""

import random
from typing import Literal

from torch.utils.data import Dataset

from mmrope.data.images import ImageTransform, sample_rng, to_tensor
from mmrope.data.shapes import DEFAULT_COLOURS, DEFAULT_SHAPES, _check_config, render_scene, sample_scene


class GeneratedDataset(Dataset):
    """``n`` samples of one split, each drawn from (seed, index) alone: the bookkeeping the shapes and clips datasets
    share. ``fresh_each_epoch`` moves the training split to new indices every epoch (nothing to memorise), so call
    ``set_epoch`` each epoch."""

    name = "generated"  # what an index error calls the samples

    def __init__(self, n: int, split: str, seed: int, fresh_each_epoch: bool):
        self.n, self.split, self.seed, self.fresh_each_epoch = n, split, seed, fresh_each_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def stream_index(self, index: int) -> int:
        """Where sample ``index`` of the current epoch sits in the split's stream."""
        if not 0 <= index < self.n:
            raise IndexError(f"{self.name} index {index} out of range for {self.n} samples")
        return self.epoch * self.n + index if self.fresh_each_epoch and self.split == "train" else index


class ShapesDataset(GeneratedDataset):
    """``n`` scenes of one split, rendered on the fly; a sample is
    ``{"image": (3, H, W) float, "caption": str, "references": list[str], "scene": dict, "id": str}``.

    ``size`` renders at a canvas other than the scene's own (evaluation at unseen resolutions), ``sizes`` at one
    of several per scene (training on several sizes, :meth:`size_of`); ``transform``
    (an ``ImageTransform``) replaces plain normalisation, and its augmentation is seeded from (seed, epoch,
    index), so call ``set_epoch`` each epoch. ``fresh_each_epoch`` draws new training scenes every epoch.
    """

    name = "shapes"

    def __init__(
        self,
        n: int,
        split: str = "train",
        seed: int = 0,
        level: int = 2,
        canvas: int = 64,
        size: int | None = None,
        scale_objects: bool = True,
        background: Literal["plain", "noisy"] = "plain",
        max_objects: int = 4,
        colours=DEFAULT_COLOURS,
        shapes=DEFAULT_SHAPES,
        transform: ImageTransform | None = None,
        fresh_each_epoch: bool = False,
        inside_cells: bool = False,
        caption_order: str = "random",
        mix_levels: tuple[int, ...] | None = None,
        loss_words: tuple[str, ...] | None = None,
        sizes: tuple[int, ...] | None = None,
    ):
        if n <= 0:
            raise ValueError(f"shapes n must be positive, got {n}")
        if size is not None and (size <= 0 or size % 16):
            raise ValueError(f"shapes size must be a positive multiple of 16, got {size}")
        self.scene_args = {"split": split, "level": level, "max_objects": max_objects, "colours": tuple(colours),
                           "shapes": tuple(shapes), "background": background, "canvas": canvas,
                           "inside_cells": inside_cells, "caption_order": caption_order}
        for lv in mix_levels or (level,):
            _check_config(lv, split, max_objects, tuple(colours), tuple(shapes), background, canvas, caption_order)
        super().__init__(n, split, seed, fresh_each_epoch)
        self.size, self.scale_objects, self.transform = size or canvas, scale_objects, transform
        self.mix_levels, self.loss_words = tuple(mix_levels or ()), tuple(loss_words or ())
        if any(not isinstance(z, int) or z <= 0 or z % 16 for z in sizes or ()):
            raise ValueError(f"shapes sizes must be positive multiples of 16, got {list(sizes)}")
        self.sizes = tuple(sizes or ())

    def scene(self, index: int) -> dict:
        stream_index = self.stream_index(index)
        args = self.scene_args
        if self.mix_levels:  # each scene's level from its own (seed, index), so the mix is the same on a resume
            level = random.Random(f"shapes-level:{self.split}:{self.seed}:{stream_index}").choice(self.mix_levels)
            args = {**args, "level": level}
        return sample_scene(self.seed, stream_index, **args)

    def size_of(self, index: int) -> int:
        """The canvas sample ``index`` is drawn at: ``size``, or with ``sizes`` one of them per scene, drawn from the
        scene's own (seed, index) (training on several sizes, as NaViT and Qwen2-VL do; objects scale with it)."""
        if not self.sizes:
            return self.size
        return random.Random(f"shapes-size:{self.split}:{self.seed}:{self.stream_index(index)}").choice(self.sizes)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        img = render_scene(scene, self.size_of(index), self.scale_objects)
        if self.transform is None:
            image = to_tensor(img)  # (3, size, size)
        else:
            rng = sample_rng(self.seed, self.epoch, index, "shapes") if self.transform.augment else None
            image = self.transform(img, rng)
        captions = scene["captions"]
        sample = {
            "image": image,
            "caption": captions[0],
            "references": list(captions),
            "scene": scene,
            "id": f"shapes/{self.split}/{self.seed}/{scene['index']}",
        }
        if self.loss_words:  # a diagnostic target: only these words of the caption are predicted
            sample["loss_words"] = self.loss_words
        return sample
