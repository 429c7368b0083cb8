"""A shard set as a stream of batches, split over ranks and DataLoader workers by the epoch's plan
(:mod:`mmrope.data.shards.plan`), resumable mid-epoch, a bad sample skipped and named; and the DataLoader that
runs it.

Within a worker's stretch, training samples are shuffled in windows of ``shuffle_window``: a permutation drawn from
the seed, the epoch and the window's place, a shuffle buffer's mixing but one a resume can replay. A resumed worker
skips the shards before its used samples without decoding, reads the window it stopped in, permutes it as before,
and goes on after them; the worker that starts is the one that owes the next batch. A bad sample becomes a
:class:`Skipped` in its batch, which the collator drops and counts and the loader names once (its reason travels with
the batch, so that workers forked anew every epoch do not repeat it), as for a bad image of a
:class:`mmrope.data.captions.CaptionDataset`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Literal, NamedTuple

from torch.utils.data import IterableDataset, get_worker_info

from mmrope.data.collate import Skipped
from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, ImageTransform, sample_rng
from mmrope.data.loader import SkipWarningLoader
from mmrope.data.shards.index import ShardError, ShardSet
from mmrope.data.shards.plan import Piece, RankPlan, plan_epoch
from mmrope.data.shards.reader import BadSample, parse_sample, read_shard


class ShardFailure(NamedTuple):
    """What a DataLoader worker hands back instead of raising, so the stop is one line, not a wrapped traceback."""

    message: str


class ShardStream(IterableDataset):
    """Batches (lists of samples, a :class:`Skipped` for a bad one) from a :class:`ShardSet`, split over ranks and
    workers (:mod:`mmrope.data.shards.plan`). A sample is ``{"image", "caption", "references", "scene", "id"}`` as
    :class:`mmrope.data.captions.CaptionDataset` gives; caption choice and augmentation are seeded by (seed, epoch,
    the sample's place in the index). ``len()`` is the number of batches every rank makes per epoch.
    """

    def __init__(self, shard_set: ShardSet, transform: ImageTransform | None = None, *, train: bool = True,
                 seed: int = 0, batch_size: int = 64, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_window: int = 1000, on_bad_image: Literal["skip", "raise"] = "skip",
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        if on_bad_image not in ("skip", "raise"):
            raise ValueError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        if shuffle_window < 1:
            raise ValueError(f"data.shards.shuffle_window={shuffle_window}: expected at least 1")
        self.shard_set, self.transform = shard_set, transform if transform is not None else ImageTransform()
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.shuffle_window, self.on_bad_image, self.max_pixels = shuffle_window, on_bad_image, max_pixels
        self.counts = tuple(s.samples for s in shard_set.shards)
        self.offsets = [sum(self.counts[:i]) for i in range(len(self.counts))]  # first sample number of each shard
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches of it already taken)
        self.num_skipped = 0  # bad samples met in this process
        self.plan(0)  # refuse a split that cannot work now, not in a worker

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int, rank: int | None = None) -> RankPlan:
        return plan_epoch(self.counts, epoch, self.seed, self.train, self.rank if rank is None else rank,
                          self.world_size, self.workers, self.batch_size)

    def __len__(self) -> int:
        return len(self.plan(0).batch_sizes)

    def state(self, epoch: int, batches: int) -> dict:
        """Where an epoch stands after ``batches`` batches, for the checkpoint: the layout it was split for and the
        samples every rank's workers had used."""
        return {"samples": self.num_samples, "world_size": self.world_size, "num_workers": self.workers,
                "batch_size": self.batch_size,
                "used": [self.plan(epoch, r).used(batches) for r in range(self.world_size)]}

    def check_state(self, state: dict) -> None:
        """Refuse to resume an epoch that was split another way: its used samples would not be these."""
        mine = {"samples": self.num_samples, "world_size": self.world_size, "num_workers": self.workers,
                "batch_size": self.batch_size}
        for key, value in mine.items():
            if state.get(key) != value:
                raise ValueError(f"cannot resume mid-epoch: the checkpoint's epoch was split for {key}="
                                 f"{state.get(key)}, this run has {value} (the ranks, data.num_workers and "
                                 "data.batch_size must match, and the shards be the same)")

    def __iter__(self) -> Iterator[list[dict | Skipped] | ShardFailure]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise ValueError(f"ShardStream was planned for {self.workers} DataLoader workers, runs under {workers}")
        resume = self.resume_at[1] if self.resume_at is not None and self.resume_at[0] == self.epoch else 0
        plan = self.plan(self.epoch)
        k = (worker + resume) % workers  # the worker that starts owes batch `resume`
        try:
            yield from self._batches(plan, k, resume)
        except (ShardError, BadSample, ImageError) as e:
            if info is None:
                raise
            yield ShardFailure(str(e))

    def _batches(self, plan: RankPlan, k: int, resume: int) -> Iterator[list[dict | Skipped]]:
        sizes = plan.worker_batches(k)
        done = len(range(k, resume, plan.workers))  # worker k's batches among the first `resume`
        used, total, start = sum(sizes[:done]), sum(sizes), plan.worker_starts[k]
        window = self.shuffle_window if self.train else 1
        first = used // window * window  # the window the used samples end in is read again and permuted as before
        raw = self._raw(plan.pieces(start + first, start + total))
        samples = self._shuffled(raw, start + first, start + total, window, drop=used - first)
        for size in sizes[done:]:
            yield [self._decode(next(samples)) for _ in range(size)]

    def _shuffled(self, raw: Iterator[dict], start: int, stop: int, window: int, drop: int) -> Iterator[dict]:
        """The raw samples of stream positions [start, stop), permuted within each window of training, less the
        first ``drop``."""
        if not self.train:
            yield from itertools.islice(raw, drop, None)
            return
        for lo in range(start, stop, window):
            chunk = [next(raw) for _ in range(min(window, stop - lo))]
            random.Random(f"window:{self.seed}:{self.epoch}:{lo}").shuffle(chunk)
            yield from chunk[drop:]
            drop = 0

    def _raw(self, pieces: list[Piece]) -> Iterator[dict]:
        """Undecoded samples (members by extension, plus ``__key__``, ``__url__`` and ``__number__``: the sample's
        place in the index) of the given parts of shards, in order."""
        for piece in pieces:
            shard = self.shard_set.shards[piece.shard]
            for i, sample in enumerate(read_shard(shard, piece.start, piece.stop), start=piece.start):
                sample["__number__"] = self.offsets[piece.shard] + i
                yield sample

    def _decode(self, raw: dict) -> dict | Skipped:
        number = raw["__number__"]
        rng = sample_rng(self.seed, self.epoch, number, "shards")
        try:
            image, captions, meta = parse_sample(raw, self.max_pixels)
        except (BadSample, ImageError) as e:
            if self.on_bad_image == "raise":
                raise
            self.num_skipped += 1
            return Skipped(f"bad sample {e}")
        caption = rng.choice(captions) if self.train else captions[0]
        pixels = self.transform(image, rng if self.transform.augment else None)
        sample_id = meta.get("id")
        return {"image": pixels, "caption": caption, "references": captions, "scene": meta.get("scene"),
                "id": str(sample_id) if sample_id is not None else f"{raw['__url__']}/{raw['__key__']}"}


class _CollateBatches:
    """The loader's collate: a batch the stream made -> the collator's batch; a failure passes through."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, item):
        return item if isinstance(item, ShardFailure) else self.collate(item)


class ShardLoader(SkipWarningLoader):
    """A DataLoader over a :class:`ShardStream` (which makes the batches itself): passes Lightning's per-epoch
    ``set_epoch`` on to the stream, names each skipped sample once, and turns a worker's :class:`ShardFailure` into a
    one-line :class:`ShardError` in the main process."""

    def __init__(self, stream: ShardStream, collate, num_workers: int = 0, pin_memory: bool = False):
        super().__init__(stream, batch_size=None, collate_fn=_CollateBatches(collate), num_workers=num_workers,
                         pin_memory=pin_memory, persistent_workers=False)
        # Lightning calls the sampler's set_epoch before each epoch (ResumableSampler relies on it too); the loader
        # of an IterableDataset has only a placeholder sampler, which hands the call on to the stream
        self.sampler.set_epoch = stream.set_epoch

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, ShardFailure):
                raise ShardError(batch.message)
            yield batch

