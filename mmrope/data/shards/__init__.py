"""Image-caption shards: WebDataset tar files, as img2dataset writes them, read as a stream that every epoch splits
over ranks and DataLoader workers so that each sample is read once, that resumes mid-epoch exactly, and that skips
a bad sample with one line. data/README.md, "Shards", says what the files hold and how an epoch is split.

    index.py     index.json -> ShardSet; what an index may name (resolve_entry), ShardError
    plan.py      plan_epoch: which samples each rank and worker reads, in which batches (arithmetic only)
    reader.py    read_shard: one shard's samples, checked against its index; parse_sample, BadSample
    stream.py    ShardStream (an epoch's batches for one rank's workers, resumable) and ShardLoader
    sources.py   what can be written: caption records (record_samples) and shapes scenes (shapes_samples)
    writer.py    write_shards (`mmrope data shard`) and index_shards (`mmrope data index`)

Why WebDataset and not litdata: img2dataset and most image-text sets already come as these tar files, which any tool
reads; litdata would add a conversion to its own chunk format and a heavier dependency for what an index of shard
counts gives here. Only webdataset's reading and writing of tar shards is used (``gopen``, its tar iterators,
``ShardWriter``); the splitting and resuming are ours, because its own (shards split by node and worker) reads a
sample twice or not at all when shard counts do not divide, and cannot resume mid-epoch.
"""

from mmrope.data.shards.index import INDEX_FORMAT, Shard, ShardError, ShardSet, open_url, read_shard_set, resolve_entry
from mmrope.data.shards.plan import Piece, RankPlan, plan_epoch
from mmrope.data.shards.reader import IMAGE_EXTENSIONS, BadSample, parse_sample, read_shard
from mmrope.data.shards.sources import ShardSample, image_extension, record_samples, shapes_samples
from mmrope.data.shards.stream import ShardFailure, ShardLoader, ShardStream
from mmrope.data.shards.writer import index_shards, write_shards

__all__ = [
    "INDEX_FORMAT", "IMAGE_EXTENSIONS", "BadSample", "Piece", "RankPlan", "Shard", "ShardError", "ShardFailure",
    "ShardLoader", "ShardSample", "ShardSet", "ShardStream", "image_extension", "index_shards", "open_url",
    "parse_sample", "plan_epoch", "read_shard", "read_shard_set", "record_samples", "resolve_entry",
    "shapes_samples", "write_shards",
]
