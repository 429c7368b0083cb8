"""Planning an epoch of shards: which samples each rank and DataLoader worker reads, in which batches. Pure
arithmetic on the shards' sample counts, nothing is read (data/README.md, "Shards", says how an epoch is split).

N samples over W ranks, K workers per rank, batches of B: the shards are put in an order drawn from (seed, epoch)
and read as one stream; rank r takes a contiguous stretch of N // W samples (one more for the first N % W ranks);
every rank takes ceil(ceil(N / W) / B) batches (DDP steps every rank together), a rank one sample short making its
last batches one smaller; batch j is made by worker j % K, and each worker reads one contiguous stretch of the rank's
part, its batches' samples in order. The DataLoader takes batches from its workers in turn, so the trainer gets
batches 0, 1, 2, ... whatever K is (the samples in them do depend on K). After b finished batches worker k has made
the batches j < b with j % K == k, so it knows how many of its samples were used (:meth:`RankPlan.used`): that is
how a run resumes mid-epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


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
    """One rank's epoch (the module docstring): its batches in the order the trainer takes them, and for each
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
    """Rank ``rank``'s share of an epoch over shards of ``counts`` samples (the module docstring)."""
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
