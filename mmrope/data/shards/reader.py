"""Reading one shard: its samples as dicts of members, through webdataset's tar iterators, checked against the index
(a shard missing, cut short or miscounted is one :class:`~mmrope.data.shards.index.ShardError` line), and a sample
parsed into an image and its captions (one that cannot be used is a :class:`BadSample`, which a stream skips).

A sample is the members of a tar file that share a key (the name up to the first dot): ``{key}.jpg`` (or ``.jpeg``,
``.png``, ``.webp``), ``{key}.txt`` (a caption) and/or ``{key}.json``: all the captions as ``"captions"`` (what
``mmrope data shard`` writes, so evaluation has every reference), or one as img2dataset's ``"caption"``, and
optionally ``"id"`` and a shapes ``"scene"``.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Iterator
from typing import Any

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, image_from_bytes
from mmrope.data.shapes import check_scene
from mmrope.data.shards.index import Shard, ShardError, open_url
from mmrope.errors import one_line

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class BadSample(ValueError):
    """A sample that cannot be used (no image, no caption, text that is not UTF-8); ``str(e)`` names shard and key."""


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


def decode_text(data: bytes, where: str) -> str:
    """A text member as UTF-8 (a byte-order mark dropped); :class:`BadSample` naming ``where`` if it is not."""
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
            meta = json.loads(decode_text(raw["json"], f"{name}.json"))
        except json.JSONDecodeError as e:
            raise BadSample(f"{name}.json: invalid JSON ({e.msg})") from None
        if not isinstance(meta, dict):
            raise BadSample(f"{name}.json: expected a JSON object")
    captions = meta.get("captions")
    if captions is None and "txt" in raw:
        captions = [decode_text(raw["txt"], f"{name}.txt")]
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


def sample_captions(raw: dict) -> list[str]:
    """The captions of a raw sample, its image left unread (``mmrope data index``); :class:`BadSample` if none."""
    name = f"{raw['__url__']} {raw['__key__']}"
    try:
        meta = json.loads(decode_text(raw["json"], name)) if "json" in raw else {}
    except json.JSONDecodeError as e:
        raise BadSample(f"{name}.json: invalid JSON ({e.msg})") from None
    found = meta.get("captions") if isinstance(meta, dict) else None
    if found is None and "txt" in raw:
        found = [decode_text(raw["txt"], name)]
    if found is None and isinstance(meta, dict):
        found = meta.get("caption", meta.get("text"))
    found = [found] if isinstance(found, str) else found
    if not isinstance(found, list) or not [c for c in found if isinstance(c, str) and c.strip()]:
        raise BadSample(f"{name}: no caption")
    return [" ".join(c.split()) for c in found if isinstance(c, str) and c.strip()]
