"""Clips: the frames of a short video a user wants captioned, from a folder of frame images or an animated file.

``load_clip`` reads a folder of frames (natural order: ``frame2`` before ``frame10``), an animated GIF, WebP or
PNG, or a still image (a clip of one frame; callers decide whether that is enough). Long clips are thinned to
``max_frames`` evenly spaced frames. As with ``load_image``, every failure is an ``ImageError`` whose one-line
message names the file or folder and the reason.

What reading a clip costs is not its file size: each frame of an animation is decoded onto the whole canvas, in
order (a GIF frame may draw only what changed since the one before), so 8 KB of GIF can describe 300 frames of
4000 x 4000, 4.8 billion pixels to decode. So ``max_pixels`` limits each frame, and before any frame is decoded an
animation with more than ``max_clip_frames`` frames is refused, and a clip whose frames to decode hold more than
``max_clip_pixels`` pixels in all.
"""

import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageSequence

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, load_image, missing_reason, to_rgb
from mmrope.errors import one_line

FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Formats whose extra frames are animation. A multi-page TIFF, or the MPO JPEG that many cameras and phones write
# (a photo plus a smaller preview or depth map), also has n_frames > 1 but is one picture, not a clip.
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# About 100 frames of 1920 x 1080 decoded. At the limit, 12 frames of 4000 x 4000 took 0.8 s and 0.8 GB, 4 of
# 7000 x 7000 1.0 s and 1.0 GB (one core; the kept frames are most of the memory).
DEFAULT_MAX_CLIP_PIXELS = 200_000_000
# A 30 fps animation of half a minute; each frame costs Pillow a fixed time, however small it is.
DEFAULT_MAX_CLIP_FRAMES = 1000


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB, all the same size
    fps: float | None  # frames per second of ``frames`` when the file gives frame durations; None for a folder
    path: str


def is_clip_path(path: str | Path) -> bool:
    """True for a folder or an animated GIF / WebP / PNG; False for anything else, including unreadable files and
    what is not a regular file (a named pipe would block the reader; ``load_image`` names it without opening it)."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # is_animated looks for a second frame; n_frames would read them all
                return img.format in ANIMATED_FORMATS and bool(getattr(img, "is_animated", False))
    except Exception:  # noqa: BLE001 - missing, not an image, corrupt: not a clip, and load_clip will say why
        return False


def load_clip(path: str | Path, max_frames: int = 32, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
              max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS, max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES) -> Clip:
    """Read the clip at ``path`` (a folder of frames, an animated file or a still image) as RGB frames.

    At most ``max_frames`` frames are kept, evenly spaced, first and last included, and ``fps`` is scaled to match,
    so the thinned clip still lasts as long as the original. ``max_pixels`` limits each frame, as in ``load_image``;
    ``max_clip_frames`` the frames of an animated file and ``max_clip_pixels`` the pixels of all the frames to
    decode, both checked before decoding (see the module's docstring).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, max_frames, max_pixels, max_clip_pixels)
    if not path.exists():
        raise ImageError(path, "no such file or folder")
    if not path.is_file():
        raise ImageError(path, missing_reason(path))
    return _load_file(path, max_frames, max_pixels, max_clip_pixels, max_clip_frames)


def frame_indices(n: int, max_frames: int) -> list[int]:
    """Indices of the frames kept from ``n``: all of them, or ``max_frames`` evenly spaced with the first and last.

    The spacing (n - 1) / (max_frames - 1) is over 1, so rounding never picks a frame twice. One frame is the
    middle one, the most typical of the clip.
    """
    if n <= max_frames:
        return list(range(n))
    if max_frames == 1:
        return [(n - 1) // 2]
    return [round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)]


def _thinned_fps(fps: float | None, n: int, kept: int) -> float | None:
    """Frame rate after keeping ``kept`` of ``n`` frames: the same span is now covered by ``kept - 1`` steps."""
    if fps is None or kept == n:
        return fps
    return fps * (kept - 1) / (n - 1) if kept > 1 else None  # one frame has no rate


def _natural_key(name: str) -> tuple:
    # "frame10.png" -> ("frame", 10, ".png"): numbers compare as numbers. re.split with a group alternates text
    # and digits, so the tuples always compare text with text and int with int; the name breaks ties ("01" vs "1").
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _load_folder(folder: Path, max_frames: int, max_pixels: int, max_clip_pixels: int) -> Clip:
    try:
        # a broken link, or a named pipe, is named by load_image (without opening it), not dropped
        files = [p for p in folder.iterdir()
                 if not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
                 and (p.is_symlink() or not p.is_dir())]
    except OSError as e:
        raise ImageError(folder, f"cannot list the folder ({one_line(e, 200)})") from None
    if not files:
        raise ImageError(folder, "no frames: expected image files such as 0001.png")
    files.sort(key=lambda p: _natural_key(p.name))
    # Only the kept frames are read: a folder of a few thousand frames costs max_frames decodes, not thousands.
    files = [files[i] for i in frame_indices(len(files), max_frames)]
    frames = [load_image(files[0], max_pixels)]  # ImageError naming the frame file
    (w0, h0) = frames[0].size
    _check_clip_pixels(folder, len(files), w0, h0, max_clip_pixels)  # every frame must have the first one's size
    for p in files[1:]:
        frames.append(load_image(p, max_pixels))
        if frames[-1].size != (w0, h0):
            w, h = frames[-1].size
            raise ImageError(folder, f"frames differ in size: {p.name} is {w}x{h} but {files[0].name} is {w0}x{h0}")
    return Clip(frames, None, str(folder))


def _check_clip_pixels(path: Path, frames: int, w: int, h: int, max_clip_pixels: int) -> None:
    if frames * w * h > max_clip_pixels:
        raise ImageError(path, f"{frames} frames of {w}x{h} = {frames * w * h} pixels to decode is over the limit "
                               f"max_clip_pixels={max_clip_pixels}")


def _load_file(path: Path, max_frames: int, max_pixels: int, max_clip_pixels: int, max_clip_frames: int) -> Clip:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Exception:  # noqa: BLE001 - load_image below opens it again and reports the failure in its own words
        img = None
    if img is not None and img.format in ANIMATED_FORMATS:
        with img:
            canvas, many = img.size, False
            try:
                if img.format == "GIF":  # Pillow would read every frame's blocks to count them, however many
                    counted, *canvas = gif_frames(path, max_clip_frames + 1)
                    many = counted > max_clip_frames
                n = max_clip_frames + 1 if many else getattr(img, "n_frames", 1)  # WebP and PNG: from the header
            except Exception as e:  # noqa: BLE001 - EOFError, OSError, SyntaxError, ... by format
                raise ImageError(path, f"truncated or corrupt animation ({one_line(e, 200)})") from None
            if n > max_clip_frames:
                count = f"more than {max_clip_frames}" if many else str(n)
                raise ImageError(path, f"{count} frames is over the limit max_clip_frames={max_clip_frames}")
            if n > 1:
                return _load_animation(path, img, n, tuple(canvas), max_frames, max_pixels, max_clip_pixels)
    elif img is not None:
        img.close()
    return Clip([load_image(path, max_pixels)], None, str(path))


def gif_frames(path: Path, stop: int) -> tuple[int, int, int]:
    """(frames, width, height) of the GIF at ``path``, read without decoding a frame: its frames (image blocks),
    counted up to ``stop`` at most, and the canvas they are drawn on, which Pillow enlarges past the header's size
    for a frame that reaches beyond it.

    A GIF is a header, an optional colour table, then blocks: ``!`` an extension and ``,`` an image, each followed by
    sub-blocks (a length byte, then that many bytes) up to an empty one, and ``;`` at the end. Bytes between blocks
    are skipped, as Pillow skips them, so the count is the one Pillow's ``n_frames`` reaches by reading them all.
    """
    with open(path, "rb") as f:
        header = f.read(13)
        width, height = struct.unpack("<HH", header[6:10]) if len(header) == 13 else (0, 0)
        if len(header) == 13 and header[10] & 0x80:  # the global colour table: 3 bytes x 2^(size + 1)
            f.seek(3 << ((header[10] & 7) + 1), 1)
        n = 0
        while n < stop:
            block = f.read(1)
            if block in (b"", b";"):
                break
            if block == b",":
                descriptor = f.read(9)  # left, top, width, height, flags
                if len(descriptor) < 9:
                    break
                n += 1
                left, top, w, h = struct.unpack("<HHHH", descriptor[:8])
                width, height = max(width, left + w), max(height, top + h)
                if descriptor[8] & 0x80:  # a local colour table
                    f.seek(3 << ((descriptor[8] & 7) + 1), 1)
                f.read(1)  # the LZW minimum code size, then the image data's sub-blocks
            elif block == b"!":
                f.read(1)  # the extension's label
            else:
                continue
            while (size := f.read(1)) and size != b"\0":
                f.seek(size[0], 1)
    return n, width, height


def _load_animation(path: Path, img: Image.Image, n: int, canvas: tuple[int, int], max_frames: int, max_pixels: int,
                    max_clip_pixels: int) -> Clip:
    w, h = canvas  # every frame is composited onto the canvas, so a frame has (at most) this size
    if w * h > max_pixels:
        raise ImageError(path, f"{w}x{h} = {w * h} pixels is over the limit max_pixels={max_pixels}")
    keep = set(frame_indices(n, max_frames))
    last = max(keep)  # n - 1, but for a single kept frame, the middle one
    _check_clip_pixels(path, last + 1, w, h, max_clip_pixels)
    frames, durations = [], []
    i = 0
    try:
        # Every frame up to the last kept one is decoded, in order: a GIF frame may draw only what changed since the
        # previous one.
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            frame.load()  # WebP sets info["duration"] only once the frame is decoded
            durations.append(frame.info.get("duration"))
            if i in keep:
                frames.append(to_rgb(frame.copy()))  # a copy: the iterator reuses one image for every frame
            if i == last:
                break
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ... by format
        raise ImageError(path, f"truncated or corrupt animation at frame {i} of {n} ({one_line(e, 200)})") from None
    if len(durations) != last + 1:
        raise ImageError(path, f"truncated animation: the header counts {n} frames, {len(durations)} were decoded")
    known = [d for d in durations if d is not None]
    fps = 1000 * len(known) / sum(known) if known and sum(known) > 0 else None  # ms per frame -> frames per second
    # A GIF frame that reaches past the canvas makes Pillow enlarge it from there on, keeping what was drawn at the
    # top left: earlier frames get the same room, empty (white, as transparency is composited)
    size = frames[-1].size
    frames = [f if f.size == size else _on_white(f, size) for f in frames]
    return Clip(frames, _thinned_fps(fps, n, len(frames)), str(path))


def _on_white(frame: Image.Image, size: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(frame, (0, 0))
    return canvas
