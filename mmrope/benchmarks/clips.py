"""The clips benchmark (:mod:`mmrope.data.clips`): short synthetic videos whose captions are only right if the model
reads the time axis. Headline: event accuracy; scored at more frames than trained to test temporal extrapolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmrope.benchmarks.base import Benchmark, EvalSet, register_benchmark


@dataclass
class ClipsConfig:
    """``data.clips``: which clips (see :mod:`mmrope.data.clips`)."""
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


@register_benchmark("clips")
class Clips(Benchmark):
    summary = "synthetic clips of shapes that move, appear or change colour: one event each"
    config_class = ClipsConfig
    generated = True
    columns = ("exact", "attribute", "event", "motion", "order", "change")

    @property
    def metric(self) -> str:
        return "event"

    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def eval_frames(self) -> list[int]:
        return list(self.config.eval_frames or [])

    @property
    def clip_mode(self) -> str:
        return self.config.clip_mode

    @property
    def canvas(self) -> int:
        return self.config.canvas or self.image_size

    def vocabulary(self) -> list[str]:
        from mmrope.data.clips import clip_vocabulary_captions

        return clip_vocabulary_captions()

    def dataset(self, split, size=None, frames=None, transform=None, **loader):
        from mmrope.data.clips import ClipsDataset

        c = self.config
        n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
        return ClipsDataset(n, split={"train": "train", "val": c.val_split}.get(split, split), seed=self.seed,
                            frames=frames or c.frames, canvas=self.canvas, size=size, duration=c.duration,
                            transform=transform, fresh_each_epoch=c.fresh_each_epoch and split == "train")

    def eval_set(self, split="test", n=None, **options) -> EvalSet:
        """``n`` clips of ``split``; the same events at every size and frame count."""
        from mmrope.data.clips import ClipsDataset, clip_fps, render_clip
        from mmrope.data.videos import Clip

        c = self.config
        data = ClipsDataset(n or 500, split=split, seed=self.seed, frames=c.frames, canvas=self.canvas,
                            duration=c.duration)
        clips = [data.scene(i) for i in range(len(data))]

        def render(size: int, count: int | None = None) -> list[Clip]:
            count = count or c.frames
            return [Clip(render_clip(clip, size, count), clip_fps(count, clip["duration"]), f"clip {clip['index']}")
                    for clip in clips]

        return EvalSet(f"clips ({split})", render, [list(clip["captions"]) for clip in clips], clips,
                       frames=c.frames, accuracies=self.accuracies, columns=self.columns)

    def accuracies(self, predictions, scenes):
        from mmrope.eval.clips_scoring import score_clip_captions

        return {k: v for k, v in score_clip_captions(predictions, scenes).items() if k != "n" and v is not None}
