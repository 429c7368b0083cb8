"""Image-caption shards: WebDataset tar files, as img2dataset writes them, read as a stream that every epoch splits
over ranks and DataLoader workers so that each sample is read once, that resumes mid-epoch exactly, and that skips
a bad sample with one line.

A shard is a tar file of samples; a sample is the members that share a key (the name up to the first dot):
``{key}.jpg`` (or ``.jpeg``, ``.png``, ``.webp``), ``{key}.txt`` (a caption) and/or ``{key}.json``: all the
captions as ``"captions"`` (what ``mmrope data shard`` writes, so evaluation has every reference), or one as
img2dataset's ``"caption"``, and optionally ``"id"`` and a shapes ``"scene"``. An index (``index.json``) lists the
shards and their sample counts, and names a file of every caption, one a line, for the word tokenizer:

    {"format": "mmrope-shards", "version": 1, "samples": 2000, "captions": "captions.txt",
     "shards": [{"url": "000000.tar", "samples": 256}, {"url": "000001.tar", "samples": 256}, ...]}

An index is a data file that arrives with a dataset, so by default a shard's ``url`` and the ``captions`` file
must be files inside the index's folder (after ``..`` and symbolic links; :func:`resolve_entry`), checked to exist
when the index is read. An index one trusts (``data.shards.trust_index``, ``--trust-shard-index``) may also name
absolute paths, paths outside its folder and anything ``webdataset.gopen`` opens (``https://``, ``gs://``,
``pipe:aws s3 cp s3://bucket/000000.tar -``, a command run by the shell). ``mmrope data shard`` writes shards and
index from any caption format the project reads; ``mmrope data index`` indexes shards someone else wrote.

How an epoch is split (:func:`plan_epoch`), N samples over W ranks, K workers per rank, batches of B:

1. The shards are put in an order drawn from (seed, epoch) and read as one stream of N samples.
2. Rank r takes a contiguous stretch of it: N // W samples, one more for the first N % W ranks. Shard counts need
   not divide anything: a shard may be split between two ranks, each reading only its part.
3. Every rank takes the same number of batches, ceil(ceil(N / W) / B) (DDP needs every rank to step together): a
   rank with one sample fewer makes one of its last batches one smaller. Nothing is repeated and nothing dropped.
4. The rank's batch j is made by worker j % K, and each worker reads one contiguous stretch of the rank's part:
   its batches' samples, in order. The DataLoader takes batches from its workers in turn, so the trainer gets
   batches 0, 1, 2, ... whatever K is (the samples in them do depend on K).
5. Within a worker's stretch, training samples are shuffled in windows of ``shuffle_window`` (a permutation drawn
   from the seed, the epoch and the window's place): a shuffle buffer's mixing, but one a resume can replay.

Resume: after ``b`` finished batches of an epoch, worker k has made the batches j < b with j % K == k, so it knows
how many of its samples were used. It skips the shards before them without decoding, reads the window it stopped
in, permutes it as before, and goes on after the used samples; the worker that starts is the one that owes batch
b. The checkpoint holds the epoch and b (:class:`mmrope.train.datamodule.CaptionDataModule` keeps them), with the
samples each rank's workers had used; resuming needs the same number of ranks, workers and batch size.

Bad data. A sample whose image is corrupt or missing, whose caption is missing or empty, whose ``"scene"`` is not
a shapes scene, or whose text is not UTF-8 is skipped with one warning naming the shard and the key: it becomes
None in its batch, which the collator drops and counts, as :class:`mmrope.data.captions.CaptionDataset` does for a
bad image (``on_bad_image="raise"`` stops instead). A shard that cannot be opened, is cut short, or holds fewer or
more samples than its index says stops the run with one :class:`ShardError` line naming it.

Why WebDataset and not litdata: img2dataset and most image-text sets already come as these tar files, which any
tool reads; litdata would add a conversion to its own chunk format and a heavier dependency for what an index of
shard counts gives here. Only webdataset's reading and writing of tar shards is used (``gopen``, its tar
iterators, ``ShardWriter``); the splitting and resuming are ours, because its own (shards split by node and
worker) reads a sample twice or not at all when shard counts do not divide, and cannot resume mid-epoch.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, ImageTransform, image_from_bytes, sample_rng
from mmrope.data.shapes import check_scene
from mmrope.errors import one_line

log = logging.getLogger(__name__)

INDEX_FORMAT = "mmrope-shards"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class ShardError(ValueError):
    """A shard that cannot be read as its index says: one line naming it. Stops the run."""


class BadSample(ValueError):
    """A sample that cannot be used (no image, no caption, text that is not UTF-8); ``str(e)`` names shard and key."""


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int | None  # None: not counted yet (`mmrope data index` counts it)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in index order, and the file of all their captions (None when unknown)."""

    shards: tuple[Shard, ...]
    where: str
    captions: str | None = None

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def read_captions(self) -> list[str]:
        """Every caption of the set, for the word tokenizer's vocabulary."""
        if self.captions is None:
            raise ValueError(f"{self.where}: the index names no captions file, which the word tokenizer is built "
                             "from: re-index with `mmrope data index`, or set data.tokenizer to byte or to a "
                             "tokenizer.json")
        try:
            with open_url(self.captions) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"{self.captions}: cannot read the captions file ({e.strerror or e})") from None
        try:
            return [line for line in text.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.captions}: not UTF-8 text (byte {e.start})") from None


def _is_url(name: str) -> bool:
    return len(urlparse(name).scheme) > 1  # a drive letter is not a scheme


def open_url(url: str):
    """A binary stream of a local path or, through ``webdataset.gopen``, of a URL or ``pipe:`` command. A local
    path never reaches gopen, so a file named ``-`` or ``pipe:x`` is read as a file, not stdin or a command."""
    if _is_url(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _outside(folder: str, url: str) -> str | None:
    """Why an index in ``folder`` may not name ``url`` untrusted (None when it may): only files inside the
    folder, after ``..`` and symbolic links, are read from an index nobody vouched for."""
    if url.startswith("pipe:"):
        return "a pipe: command"
    if _is_url(url):
        return "a URL"
    if _is_url(folder):
        return "a URL, as the index is"
    if "\0" in url:
        return "not a path"
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(os.path.join(folder, url))]) != root:
        return f"outside {folder}"
    return None


def resolve_entry(index: str, entry: str, url: str, trust: bool = False) -> str:
    """What the shard index ``index`` means by ``url`` (its ``entry``: a shard or the captions file): a path
    inside the index's folder, joined to it. Anything else (a URL, a ``pipe:`` command, an absolute path or one
    that leads out of the folder, also through a link) is refused in one line unless ``trust``, and then taken
    as given (relative paths still relative to the index). Every reader of an index goes through here."""
    folder = index.rsplit("/", 1)[0] if _is_url(index) else os.path.dirname(index) or "."
    why = None if trust else _outside(folder, url)
    if why is not None:
        raise ValueError(f"{index}: {entry} {url!r} is {why}: refused (an index may name only files inside its "
                         "own folder; data.shards.trust_index: true, or --trust-shard-index, lets an index you "
                         "trust name URLs, pipe: commands and other paths)")
    if _is_url(url) or os.path.isabs(url):
        return url
    if _is_url(folder):
        return folder + "/" + url
    return os.path.join(folder, url)  # not normalised: ``./pipe:x`` stays a path


def read_shard_set(spec: str | Path, trust: bool = False) -> ShardSet:
    """The shards an index names: ``spec`` is an ``index.json`` (a path or URL) or a folder holding one. Its
    entries go through :func:`resolve_entry` (``trust``: see there); a local shard that does not exist is one
    line naming it and the index, now rather than when an epoch reaches it."""
    spec = str(spec)
    if not _is_url(spec) and Path(spec).is_dir():
        spec = str(Path(spec) / "index.json")
    if not spec.endswith(".json"):
        raise ValueError(f"{spec}: expected a shard index (index.json, as `mmrope data shard` or `mmrope data index` "
                         "write) or a folder holding one")
    try:
        with open_url(spec) as f:
            index = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{spec}: no such shard index") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{spec}: cannot read the shard index ({one_line(e)})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        raise ValueError(f"{spec}: not a shard index (expected a JSON object with \"format\": \"{INDEX_FORMAT}\" and "
                         "a list of \"shards\")")
    shards = []
    for i, entry in enumerate(index["shards"]):
        url, count = (entry.get("url"), entry.get("samples")) if isinstance(entry, dict) else (None, None)
        if not isinstance(url, str) or not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{spec}: shard {i} needs a \"url\" string and a \"samples\" count, got {entry!r}")
        shards.append(Shard(resolve_entry(spec, f"shard {i}", url, trust), count))
    if not sum(s.samples for s in shards):
        raise ValueError(f"{spec}: the index lists no samples")
    for shard in shards:
        if not _is_url(shard.url) and not os.path.isfile(shard.url):
            raise ShardError(f"{shard.url}: shard missing (no such file; {spec} lists it)")
    captions = index.get("captions")
    if captions is not None and not isinstance(captions, str):
        raise ValueError(f"{spec}: \"captions\" must name a file of captions, got {captions!r}")
    return ShardSet(tuple(shards), spec, resolve_entry(spec, "captions", captions, trust) if captions else None)


# planning an epoch: which samples each rank and worker reads, in which batches
def _split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` counts differing by at most one, the larger first."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def _batch_sizes(n: int, batches: int, batch_size: int) -> list[int]:
    """``n`` samples in ``batches`` batches: full ones, then what is left, keeping at least one for each batch to
    come (so a rank one sample short makes its last batches one smaller, never one fewer)."""
    sizes, left = [], n
    for j in range(batches):
        size = min(batch_size, left - (batches - j - 1))
        sizes.append(size)
        left -= size
    return sizes


class Piece(NamedTuple):
    """Samples ``start`` to ``stop`` (exclusive) of shard ``shard`` (its place in the index)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class RankPlan:
    """One rank's epoch (see the module docstring): its batches in the order the trainer takes them, and for each
    worker k (making batches k, k + K, ...) where its contiguous stretch of the epoch's stream starts."""

    batch_sizes: tuple[int, ...]
    worker_starts: tuple[int, ...]
    order: tuple[int, ...]  # the shards in this epoch's order
    counts: tuple[int, ...]  # samples per shard, in index order

    @property
    def workers(self) -> int:
        return len(self.worker_starts)

    def worker_batches(self, k: int) -> list[int]:
        return list(self.batch_sizes[k::self.workers])

    def used(self, batches: int) -> list[int]:
        """Samples each worker had put in the first ``batches`` batches of the epoch."""
        return [sum(self.batch_sizes[k:batches:self.workers]) for k in range(self.workers)]

    def pieces(self, start: int, stop: int) -> list[Piece]:
        """Stream positions [start, stop) of this epoch as parts of shards, in stream order."""
        pieces, offset = [], 0
        for s in self.order:
            lo, hi = max(start, offset), min(stop, offset + self.counts[s])
            if lo < hi:
                pieces.append(Piece(s, lo - offset, hi - offset))
            offset += self.counts[s]
        return pieces


def plan_epoch(counts: Iterable[int], epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
               workers: int, batch_size: int) -> RankPlan:
    """Rank ``rank``'s share of an epoch over shards of ``counts`` samples (see the module docstring)."""
    counts = tuple(counts)
    order = list(range(len(counts)))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    total, per_rank = sum(counts), _split(sum(counts), world_size)
    batches = math.ceil(per_rank[0] / batch_size)
    if per_rank[-1] < batches:
        raise ValueError(f"{total} samples cannot be split over {world_size} ranks in batches of {batch_size} "
                         f"with every rank taking {batches} batches: use more samples or a larger batch size")
    sizes = _batch_sizes(per_rank[rank], batches, batch_size)
    start, starts = sum(per_rank[:rank]), []
    for k in range(workers):
        starts.append(start)
        start += sum(sizes[k::workers])
    return RankPlan(tuple(sizes), tuple(starts), tuple(order), counts)


class ShardFailure(NamedTuple):
    """What a DataLoader worker hands back instead of raising, so the stop is one line, not a wrapped traceback."""

    message: str


class ShardStream(IterableDataset):
    """Batches (lists of samples, None for a skipped one) from a :class:`ShardSet`, split over ranks and workers
    (see the module docstring). A sample is ``{"image", "caption", "references", "scene", "id"}`` as
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
        self.num_skipped = 0
        self._warned: set[str] = set()
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

    def __iter__(self) -> Iterator[list[dict | None] | ShardFailure]:
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

    def _batches(self, plan: RankPlan, k: int, resume: int) -> Iterator[list[dict | None]]:
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

    def _decode(self, raw: dict) -> dict | None:
        number = raw["__number__"]
        rng = sample_rng(self.seed, self.epoch, number, "shards")
        try:
            image, captions, meta = parse_sample(raw, self.max_pixels)
        except (BadSample, ImageError) as e:
            if self.on_bad_image == "raise":
                raise
            self.num_skipped += 1
            if str(e) not in self._warned:
                self._warned.add(str(e))
                log.warning("skipping bad sample %s", e)
            return None
        caption = rng.choice(captions) if self.train else captions[0]
        pixels = self.transform(image, rng if self.transform.augment else None)
        sample_id = meta.get("id")
        return {"image": pixels, "caption": caption, "references": captions, "scene": meta.get("scene"),
                "id": str(sample_id) if sample_id is not None else f"{raw['__url__']}/{raw['__key__']}"}


def read_shard(shard: Shard, start: int = 0, stop: int | None = None, select=None, seen: dict | None = None
               ) -> Iterator[dict]:
    """Samples ``start`` to ``stop`` of a shard as dicts of members (bytes by lower-case extension, plus
    ``__key__`` and ``__url__``), through webdataset's tar iterators. Members of samples outside the range are
    not read into memory, nor are those ``select(extension)`` refuses (a sample left with none is not yielded).
    Reading to the end checks the count against the index (``seen["index"] + 1`` is the count of keys read); a
    missing, truncated or miscounted shard raises :class:`ShardError` naming it."""
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

    stop = (shard.samples if shard.samples is not None else math.inf) if stop is None else stop
    seen = seen if seen is not None else {}
    seen.update(key=None, index=-1)

    def wanted(fname: str) -> bool:  # called once per member, in tar order: counts keys as they go by
        key, ext = base_plus_ext(fname)
        if key is None:
            return False
        if key != seen["key"]:
            seen["key"], seen["index"] = key, seen["index"] + 1
        return start <= seen["index"] < stop and (select is None or select(ext.lower()))

    url = shard.url
    try:
        stream = _Ending(open_url(url))
    except FileNotFoundError:
        raise ShardError(f"{url}: shard missing (no such file)") from None
    except OSError as e:
        raise ShardError(f"{url}: cannot open the shard ({e.strerror or e})") from None
    count, to_end = 0, shard.samples is None or stop >= shard.samples

    def check_end() -> None:  # once the last sample is in hand: a consumer may not ask for more
        if shard.samples is not None and seen["index"] + 1 != shard.samples:
            raise ShardError(f"{url}: {seen['index'] + 1}{'' if seen['index'] < shard.samples else ' or more'} "
                             f"samples where the index says {shard.samples}: truncated, or changed since it was "
                             "indexed")
        if not stream.ends_as_a_tar():
            raise ShardError(f"{url}: truncated (it ends without the end-of-archive blocks of a tar file)")

    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=wanted))
        for sample in group_by_keys(files):
            count += 1
            if start + count == stop:
                if to_end:
                    check_end()
                yield sample
                return  # the rest of the shard, if any, is another reader's
            yield sample
        check_end()
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{url}: truncated or not a tar file ({_reason(e)})") from None
    except ValueError as e:  # webdataset: a file name twice in one sample
        raise ShardError(f"{url}: {_reason(e)}") from None
    finally:
        stream.close()


class _Ending:
    """A binary stream that remembers how it began and ended. Python's tarfile reads a tar cut at a member boundary
    as a whole archive; a whole one ends with zero blocks (compressed ones check their own ends)."""

    def __init__(self, raw):
        self.raw, self.head, self.tail = raw, b"", b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if len(self.head) < 6:
            self.head = (self.head + data)[:6]
        self.tail = (self.tail + data)[-512:]
        return data

    def ends_as_a_tar(self) -> bool:
        while self.read(1 << 16):  # the padding after the last member
            pass
        compressed = self.head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
        return compressed or (len(self.tail) == 512 and not any(self.tail))

    def close(self) -> None:
        self.raw.close()


def _reason(e: BaseException) -> str:
    """An error's first argument on one line, less the `` @ <file object>`` webdataset appends."""
    return one_line(str(e.args[0]).split(" @ ")[0] if e.args else "") or type(e).__name__


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadSample(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at {e.start})") from None


def parse_sample(raw: dict, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Any, list[str], dict]:
    """A raw sample -> (RGB image, its captions, its JSON metadata). The captions are the JSON's ``"captions"``,
    else the ``.txt``, else the JSON's ``"caption"`` or ``"text"``; a ``"scene"`` must be a shapes scene
    (:func:`mmrope.data.shapes.check_scene`). Raises :class:`BadSample` or ``ImageError``
    naming the shard and the key."""
    name = f"{raw['__url__']} {raw['__key__']}"
    meta = {}
    if "json" in raw:
        try:
            meta = json.loads(_text(raw["json"], f"{name}.json"))
        except json.JSONDecodeError as e:
            raise BadSample(f"{name}.json: invalid JSON ({e.msg})") from None
        if not isinstance(meta, dict):
            raise BadSample(f"{name}.json: expected a JSON object")
    captions = meta.get("captions")
    if captions is None and "txt" in raw:
        captions = [_text(raw["txt"], f"{name}.txt")]
    if captions is None:
        captions = meta.get("caption", meta.get("text"))
    captions = [captions] if isinstance(captions, str) else captions
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise BadSample(f"{name}: no caption (.txt, or \"captions\" / \"caption\" in .json)")
    captions = [" ".join(c.split()) for c in captions if c.strip()]
    if not captions:
        raise BadSample(f"{name}: empty caption")
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        raise BadSample(f"{name}: no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})")
    if meta.get("scene") is not None:
        try:
            check_scene(meta["scene"], f"{name}.json")
        except ValueError as e:
            raise BadSample(str(e)) from None
    return image_from_bytes(raw[ext], f"{name}.{ext}", max_pixels), captions, meta


class _CollateBatches:
    """The loader's collate: a batch the stream made -> the collator's batch; a failure passes through."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, item):
        return item if isinstance(item, ShardFailure) else self.collate(item)


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` (which makes the batches itself): passes Lightning's per-epoch
    ``set_epoch`` on to the stream, and turns a worker's :class:`ShardFailure` into a one-line :class:`ShardError`
    in the main process."""

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


# writing shards: `mmrope data shard`, and indexing shards written elsewhere: `mmrope data index`
class ShardSample(NamedTuple):
    """What :func:`write_shards` stores: the image file's bytes and extension, every caption, an id, a scene."""

    image: bytes
    ext: str
    captions: list[str]
    id: str
    scene: dict | None = None


def record_samples(records) -> Iterator[ShardSample | str]:
    """Caption records (:mod:`mmrope.data.captions`) as shard samples: JPEG, PNG and WebP files (and such images held
    in a Hugging Face dataset's file) keep their bytes, other formats are decoded and stored as PNG; an image that
    cannot be read is a one-line reason (a str) instead."""
    import io

    from mmrope.data.captions import load_record_image

    for rec in records:
        try:
            if isinstance(rec.image, Path):
                ext = rec.image.suffix.lower().lstrip(".")
                data = rec.image.read_bytes() if ext in IMAGE_EXTENSIONS else None
            else:
                data = rec.image.read_bytes()
                ext = image_extension(data)
            if ext not in IMAGE_EXTENSIONS:
                buffer, ext = io.BytesIO(), "png"
                load_record_image(rec.image).save(buffer, format="PNG")
                data = buffer.getvalue()
        except OSError as e:
            yield f"{rec.image}: cannot read ({e.strerror or e})"
            continue
        except ImageError as e:
            yield str(e)
            continue
        yield ShardSample(data, ext, list(rec.captions), rec.id, rec.scene)


def image_extension(data: bytes) -> str | None:
    """``jpg``, ``png`` or ``webp`` from an image's first bytes (its signature), None for any other format."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def shapes_samples(n: int, size: int = 64, seed: int = 0, level: int = 2, split: str = "train",
                   background: str = "plain", max_objects: int = 4) -> Iterator[ShardSample]:
    """The shapes benchmark as shard samples: the scenes ``mmrope data shapes`` exports, as PNG bytes."""
    import io

    from mmrope.data.shapes import render_scene, sample_scene

    for i in range(n):
        scene = sample_scene(seed, i, split=split, level=level, max_objects=max_objects, background=background,
                             canvas=size)
        buffer = io.BytesIO()
        render_scene(scene).save(buffer, format="PNG", compress_level=6)
        yield ShardSample(buffer.getvalue(), "png", list(scene["captions"]), f"{split}/{i}", scene)


def write_shards(samples: Iterable[ShardSample | str], out: str | Path, samples_per_shard: int = 1000,
                 overwrite: bool = False) -> tuple[ShardSet, list[str]]:
    """Write ``out/000000.tar ...`` (each sample as ``{key}.{ext}``, ``{key}.txt`` with the first caption, as
    img2dataset, and ``{key}.json`` with all of them, the id and the scene), ``out/captions.txt`` and, last,
    ``out/index.json``. The same samples give byte-identical files. A str among ``samples`` is a source that could
    not be read: it is skipped and returned -> (the shard set written, the reasons of the skipped). A folder that
    holds any file of those names is refused, naming them, unless ``overwrite``: then the earlier set's index and
    numbered shards are removed first, and other files are left alone."""
    from webdataset import ShardWriter

    if samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    out = Path(out)
    earlier = _shard_set_files(out)
    if earlier and not overwrite:
        raise ValueError(f"{out}: holds {_listed(earlier)}, which writing shards there would overwrite: write to a "
                         "new folder, or pass --overwrite")
    for name in earlier:  # the index first: a folder with an index is a complete set
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Shard] = []
    skipped: list[str] = []
    captions: list[str] = []

    def finished(fname: str) -> None:
        written.append(Shard(fname, writer.count))

    writer = ShardWriter(str(out / "%06d.tar"), maxcount=samples_per_shard, maxsize=float("inf"), post=finished,
                         verbose=0, encoder=False, mtime=0, user="mmrope", group="mmrope")
    key = 0
    with writer:
        for sample in samples:
            if isinstance(sample, str):
                skipped.append(sample)
                log.warning("skipping %s", sample)
                continue
            meta = {"captions": sample.captions, "id": sample.id}
            if sample.scene is not None:
                meta["scene"] = sample.scene
            writer.write({"__key__": f"{key:09d}", sample.ext: sample.image,
                          "txt": sample.captions[0].encode("utf-8"),
                          "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")})
            captions += [" ".join(c.split()) for c in sample.captions]
            key += 1
    if not key:
        raise ValueError("no sample could be read: nothing written")
    written = [s for s in written if s.samples]  # ShardWriter opens a shard before it knows whether one comes
    kept = {Path(s.url).name for s in written}
    for extra in [n for n in _shard_set_files(out) if n.endswith(".tar") and n not in kept]:
        (out / extra).unlink()  # that empty shard: the folder held no numbered shard before this writer
    _write_index(out / "index.json", written, captions, out)
    return read_shard_set(out / "index.json"), skipped


def _shard_set_files(folder: Path) -> list[str]:
    """The files of ``folder`` that :func:`write_shards` writes: ``index.json``, ``captions.txt``, ``NNNNNN.tar``."""
    if not folder.is_dir():
        return []
    shards = sorted(p.name for p in folder.glob("*.tar") if len(p.stem) == 6 and p.stem.isdigit())
    return [n for n in ("index.json", "captions.txt") if os.path.lexists(folder / n)] + shards


def _listed(names: list[str]) -> str:
    """``index.json, captions.txt and 3 shards (000000.tar ... 000002.tar)``."""
    shards = [n for n in names if n.endswith(".tar")]
    parts = [n for n in names if not n.endswith(".tar")]
    if shards:
        parts.append(f"{len(shards)} shard{'s' * (len(shards) > 1)} ({shards[0]}"
                     f"{' ... ' + shards[-1] if len(shards) > 1 else ''})")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def _index_name(url: str, folder: Path) -> str:
    """How an index in ``folder`` names ``url``: relative to the folder when inside it (after links), else as
    an absolute path; a URL as it is."""
    if _is_url(url):
        return url
    try:
        return str(Path(url).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(url).resolve())


def _write_index(path: Path, shards: list[Shard], captions: list[str], folder: Path) -> None:
    """``captions.txt`` and ``index.json`` (written last, through a temporary file, so a folder with an index is
    complete); local shards under ``folder`` are named relative to it."""
    index = {"format": INDEX_FORMAT, "version": 1, "samples": sum(s.samples for s in shards),
             "captions": "captions.txt", "shards": [{"url": _index_name(s.url, folder), "samples": s.samples}
                                                     for s in shards]}
    for target, text in ((folder / "captions.txt", "".join(c + "\n" for c in captions)),
                         (path, json.dumps(index, indent=1) + "\n")):
        temporary = target.with_name(f".{target.name}.tmp")  # replaced whole: a link there is not written through
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)


def index_shards(urls: str | list[str], out: str | Path, trust: bool = False, overwrite: bool = False
                 ) -> tuple[ShardSet, int]:
    """Count the samples of existing shards (img2dataset's, say: a brace pattern such as
    ``data/laion/{00000..00099}.tar``, expanded by webdataset) and collect their captions -> ``out`` (an
    ``index.json``) with ``captions.txt`` beside it. Reads every shard once, images skipped without decoding ->
    (the shard set, how many samples had no usable caption). Shards the index could not name untrusted (URLs,
    ``pipe:`` commands, files outside its folder: :func:`resolve_entry`) are refused before any is read unless
    ``trust``; an existing ``out`` or ``captions.txt`` beside it unless ``overwrite``."""
    from webdataset.shardlists import expand_urls

    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"{out}: the index is a .json file (index.json)")
    names = expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not names:
        raise ValueError(f"{urls}: names no shard")
    for url in names:
        resolve_entry(str(out), "shard", _index_name(url, out.parent), trust)
        if not _is_url(url) and not Path(url).is_file():
            raise ShardError(f"{url}: shard missing (no such file)")
    earlier = [p.name for p in (out, out.parent / "captions.txt") if os.path.lexists(p)]
    if earlier and not overwrite:
        raise ValueError(f"{out.parent}: holds {_listed(earlier)}, which indexing there would overwrite: choose "
                         "another --out, or pass --overwrite")
    shards, captions, uncaptioned = [], [], 0
    for url in names:
        seen: dict = {}
        with_text = 0
        for sample in read_shard(Shard(url, None), select=_text_members, seen=seen):
            with_text += 1
            try:
                captions += _captions_only(sample)
            except BadSample as e:
                uncaptioned += 1
                log.warning("no usable caption: %s", e)
        count = seen["index"] + 1
        uncaptioned += count - with_text  # samples with neither .txt nor .json
        shards.append(Shard(url, count))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_index(out, shards, captions, out.parent)
    return read_shard_set(out, trust), uncaptioned


def _text_members(ext: str) -> bool:
    return ext in ("txt", "json")


def _captions_only(raw: dict) -> list[str]:
    name = f"{raw['__url__']} {raw['__key__']}"
    try:
        meta = json.loads(_text(raw["json"], name)) if "json" in raw else {}
    except json.JSONDecodeError as e:
        raise BadSample(f"{name}.json: invalid JSON ({e.msg})") from None
    found = meta.get("captions") if isinstance(meta, dict) else None
    if found is None and "txt" in raw:
        found = [_text(raw["txt"], name)]
    if found is None and isinstance(meta, dict):
        found = meta.get("caption", meta.get("text"))
    found = [found] if isinstance(found, str) else found
    if not isinstance(found, list) or not [c for c in found if isinstance(c, str) and c.strip()]:
        raise BadSample(f"{name}: no caption")
    return [" ".join(c.split()) for c in found if isinstance(c, str) and c.strip()]
