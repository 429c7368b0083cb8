"""The shapes benchmark (:mod:`mmrope.data.shapes`): scenes of coloured shapes whose captions are only right if the
model reads positions. Level 1 names one object and its place (headline: place accuracy), levels 2 and 3 relations
between objects (headline: relation accuracy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmrope.benchmarks.base import Benchmark, EvalSet, register_benchmark


@dataclass
class ShapesConfig:
    """``data.shapes``: which scenes (see :mod:`mmrope.data.shapes`)."""
    level: int = 2
    canvas: int | None = None  # the size scenes are drawn at; None: data.image_size (the model's training size)
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    background: Literal["plain", "noisy"] = "plain"
    fresh_each_epoch: bool = True  # new scenes every epoch: no memorising
    val_split: Literal["val", "compositional"] = "val"
    colours: list[str] | None = None  # the scene vocabulary; None: red, green, blue, yellow
    shapes: list[str] | None = None  # None: circle, square, triangle
    max_objects: int = 4  # level 3: objects per scene, 3 to this
    inside_cells: bool = False  # level 1: each object wholly inside its place's cell of the 3 x 3 grid
    caption_order: Literal["random", "reading", "place_first"] = "random"  # reading (levels 2-3): the leftmost /
    # topmost object first; place_first (level 1): "in the top left is a red circle"
    mix_levels: list[int] | None = None  # training scenes drawn from these levels in equal shares; None: level
    loss_words: list[str] | None = None  # a diagnostic: only these caption words are predicted (the rest is given)
    train_sizes: list[int] | None = None  # training scenes drawn at one of these canvases each (objects scaled)


@register_benchmark("shapes")
class Shapes(Benchmark):
    summary = "procedural scenes of coloured shapes: a place (level 1), relations (level 2), chains and counts (3)"
    config_class = ShapesConfig
    generated = True
    columns = ("exact", "attribute", "place", "relation", "axis", "named", "relation_named", "axis_named", "count")

    @property
    def metric(self) -> str:
        return "place" if self.config.level == 1 else "relation"

    @property
    def canvas(self) -> int:
        return self.config.canvas or self.image_size

    def probe_words(self) -> dict[str, tuple[str, ...]]:
        if self.config.level == 1:
            return {"place": ("top", "bottom", "left", "right", "centre")}
        return {"relation": ("left", "right", "above", "below")}

    def vocabulary(self) -> list[str]:
        from mmrope.data.shapes import vocabulary_captions

        return vocabulary_captions()

    def scene_options(self, split: str) -> dict:
        """What :class:`mmrope.data.shapes.ShapesDataset` draws ``split``'s scenes with (but their count)."""
        from mmrope.data.shapes import DEFAULT_COLOURS, DEFAULT_SHAPES

        c = self.config
        return {"split": {"train": "train", "val": c.val_split}.get(split, split), "seed": self.seed,
                "level": c.level, "canvas": self.canvas, "background": c.background,
                "colours": c.colours or DEFAULT_COLOURS, "shapes": c.shapes or DEFAULT_SHAPES,
                "max_objects": c.max_objects, "inside_cells": c.inside_cells, "caption_order": c.caption_order}

    def dataset(self, split, size=None, frames=None, transform=None, **loader):
        from mmrope.data.shapes_dataset import ShapesDataset

        c = self.config
        n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
        train = split == "train"
        return ShapesDataset(n, size=size, transform=transform, fresh_each_epoch=c.fresh_each_epoch and train,
                             mix_levels=c.mix_levels if train else None, loss_words=c.loss_words,
                             sizes=c.train_sizes if train and size is None else None, **self.scene_options(split))

    def eval_set(self, split="test", n=None, protocol: str = "scaled", **options) -> EvalSet:
        """``n`` scenes of ``split`` ("val", "test", "compositional"), redrawn at each size under ``protocol``
        (:data:`mmrope.data.shapes.SIZE_PROTOCOLS`)."""
        from mmrope.data.shapes import SIZE_PROTOCOLS, render_at
        from mmrope.data.shapes_dataset import ShapesDataset

        if protocol not in SIZE_PROTOCOLS:
            raise ValueError(f"size protocol {protocol!r} is unknown: expected one of {', '.join(SIZE_PROTOCOLS)}")
        data = ShapesDataset(n or 500, **{**self.scene_options(split), "split": split})
        scenes = [data.scene(i) for i in range(len(data))]
        what = f"shapes level {self.config.level} ({split})" + ("" if protocol == "scaled" else f", {protocol}")
        return EvalSet(what, lambda size, frames=None: [render_at(s, size, protocol) for s in scenes],
                       [list(s["captions"]) for s in scenes], scenes, accuracies=self.accuracies,
                       columns=self.columns)

    def accuracies(self, predictions, scenes):
        return shapes_accuracies(predictions, scenes)


def shapes_accuracies(predictions: list[str], scenes: list[dict]) -> dict[str, float]:
    """Mean shapes accuracies of captions against their scenes (:mod:`mmrope.eval.shapes_scoring`)."""
    from mmrope.eval.shapes_scoring import score_captions

    return {k: v for k, v in score_captions(predictions, scenes).items() if k != "n"}
