"""What a captioner is trained and scored on: one registered class per benchmark, the third plug-in axis after the
encoder's and the decoder's position encodings.

``data.dataset`` names a benchmark of :data:`BENCHMARKS`. The class holds everything that depends on which one it
is, so that the data module, evaluation, the ablation and the stacked engine ask it instead of comparing names: its
settings (``data.<name>``, a dataclass), the text its word tokenizer learns, its datasets per split, size and frame
count, the evaluation set ``mmrope eval`` and the ablation score, its accuracies and which of them is the headline
(the metric the best checkpoint is chosen by, and the ablation's tables lead with). A benchmark defined in a
user's own file is a subclass registered with :func:`register_benchmark`; once that file is imported its name is a
valid ``data.dataset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch.utils.data import Dataset

from mmrope.model.config import as_config
from mmrope.model.registry import Registry

BENCHMARKS = Registry("data.dataset")
register_benchmark = BENCHMARKS.register


@dataclass
class EvalSet:
    """What a benchmark is scored on: images (or clips) with their reference captions, and the scenes its accuracies
    read (None for real captions)."""

    name: str
    # (size, frames) -> what to caption at that size (paths, PIL images or Clips); frames is None except for clips
    images: Callable[[int, int | None], list]
    references: list[list[str]]
    scenes: list[dict] | None
    resize: str = "fixed"  # what the data's config trained with
    frames: int | None = None  # clips: the frame count they were made with
    accuracies: Callable[[list[str], list[dict]], dict] | None = None  # the benchmark's own scores of a caption
    columns: tuple[str, ...] = ()  # those accuracies in table order

    def __len__(self) -> int:
        return len(self.references)


class Benchmark:
    """The base every benchmark extends. ``data`` is the resolved ``data:`` section of a config (a mapping, as
    :func:`mmrope.train.config_reader.read_config` gives it, or the data module's own settings): the benchmark reads
    its own section ``data[name]`` and the shared keys it needs (``image_size``, ``seed``, file paths, ...)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # what it is, in a few words (README, ``mmrope eval``)
    config_class: ClassVar[type | None] = None  # the dataclass of ``data.<name>``
    generated: ClassVar[bool] = False  # samples drawn from (seed, index), as the stacked engine draws them
    columns: ClassVar[tuple[str, ...]] = ()  # its accuracies, in the order tables show them

    def __init__(self, data: Mapping[str, Any]):
        self.data = data
        self.image_size = int(data.get("image_size") or 64)
        self.seed = int(data.get("seed") or 0)
        self.config = (as_config(self.config_class, data.get(self.name), f"data.{self.name}.")
                       if self.config_class is not None else None)

    @property
    def metric(self) -> str:
        """The headline: the accuracy the best checkpoint is chosen by and the ablation leads with."""
        return "cider"

    @property
    def frames(self) -> int | None:
        """Frames per training clip, for a benchmark of clips; None for images."""
        return None

    @property
    def eval_frames(self) -> list[int]:
        """Frame counts of the extra validation sets (temporal extrapolation); none for images."""
        return []

    @property
    def clip_mode(self) -> str:
        """How the collator lays out a clip: "block" (one (t, h, w) block) or "frames" (an image each)."""
        return "block"

    def vocabulary(self) -> list[str]:
        """Text holding every word its captions use: what a word tokenizer is built from."""
        raise NotImplementedError

    def dataset(self, split: str, size: int | None = None, frames: int | None = None, transform=None,
                **loader: Any) -> Dataset:
        """The samples of ``split`` ("train", "val", "test"), at ``size`` px (None: as trained) and, for clips,
        ``frames``; ``transform`` an ``ImageTransform`` (None: the benchmark's own plain one). ``loader``: what a
        dataset that makes its own batches needs (``rank``, ``world_size``, ``batch_size``, ``num_workers``)."""
        raise NotImplementedError

    def eval_set(self, split: str = "test", n: int | None = None, **options: Any) -> EvalSet:
        """``n`` samples of ``split`` to score, the same at every size."""
        raise NotImplementedError

    def probe_words(self) -> dict[str, tuple[str, ...]]:
        """Words whose teacher-forced prediction validation reports as ``val/tf_<name>``: given the true caption
        so far, is the model's most likely next word the right one where the target is one of these? It reads one
        skill apart from the others (the relation once both objects are named); {} for none."""
        return {}

    def accuracies(self, predictions: list[str], scenes: list[dict]) -> dict[str, float]:
        """The benchmark's own scores of captions (mean over samples); {} for a benchmark without scenes."""
        return {}


def benchmark_of(data: Mapping[str, Any]) -> Benchmark:
    """The benchmark ``data["dataset"]`` names, built from the resolved data section; one line naming the allowed
    values for an unknown one. Import it from :mod:`mmrope.benchmarks`, which registers the built-in ones."""
    return BENCHMARKS[data.get("dataset", "shapes")](data)
