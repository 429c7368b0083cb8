"""What can be written as shards (:func:`mmrope.data.shards.writer.write_shards`): caption records of any format
the project reads, and the scenes of the shapes benchmark.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from mmrope.data.images import ImageError
from mmrope.data.shards.reader import IMAGE_EXTENSIONS


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
    from mmrope.data.shapes import render_scene, sample_scene

    for i in range(n):
        scene = sample_scene(seed, i, split=split, level=level, max_objects=max_objects, background=background,
                             canvas=size)
        buffer = io.BytesIO()
        render_scene(scene).save(buffer, format="PNG", compress_level=6)
        yield ShardSample(buffer.getvalue(), "png", list(scene["captions"]), f"{split}/{i}", scene)

