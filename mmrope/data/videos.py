"""Clips: the frames of a short video a user wants captioned, from a folder of frame images or an animated file.

``load_clip`` reads a folder of frames (natural order: ``frame2`` before ``frame10``), an animated GIF, WebP or
PNG, or a still image (a clip of one frame; callers decide whether that is enough). Long clips are thinned to
``max_frames`` evenly spaced frames. As with ``load_image``, every failure is an ``ImageError`` whose one-line
message names the file or folder and the reason. ``frames_to_gif`` and ``frames_to_folder`` write example clips.
"""

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageSequence

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, _one_line, load_image, to_rgb

FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Formats whose extra frames are animation. A multi-page TIFF, or the MPO JPEG that many cameras and phones write
# (a photo plus a smaller preview or depth map), also has n_frames > 1 but is one picture, not a clip.
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB, all the same size
    fps: float | None  # frames per second of ``frames`` when the file gives frame durations; None for a folder
    path: str


def is_clip_path(path: str | Path) -> bool:
    """True for a folder or an animated GIF / WebP / PNG; False for anything else, including unreadable files."""
    path = Path(path)
    if path.is_dir():
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.format in ANIMATED_FORMATS and getattr(img, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - missing, not an image, corrupt: not a clip, and load_clip will say why
        return False


def load_clip(path: str | Path, max_frames: int = 32, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Clip:
    """Read the clip at ``path`` (a folder of frames, an animated file or a still image) as RGB frames.

    At most ``max_frames`` frames are kept, evenly spaced, first and last included, and ``fps`` is scaled to match,
    so the thinned clip still lasts as long as the original. ``max_pixels`` limits each frame, as in ``load_image``.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, max_frames, max_pixels)
    if not path.exists():
        raise ImageError(path, "no such file or folder")
    return _load_file(path, max_frames, max_pixels)


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


def _load_folder(folder: Path, max_frames: int, max_pixels: int) -> Clip:
    try:
        files = [p for p in folder.iterdir()
                 if not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
                 and (p.is_file() or p.is_symlink())]  # a broken link is named by load_image, not dropped
    except OSError as e:
        raise ImageError(folder, f"cannot list the folder ({_one_line(e)})") from None
    if not files:
        raise ImageError(folder, "no frames: expected image files such as 0001.png")
    files.sort(key=lambda p: _natural_key(p.name))
    # Only the kept frames are read: a folder of a few thousand frames costs max_frames decodes, not thousands.
    files = [files[i] for i in frame_indices(len(files), max_frames)]
    frames = [load_image(p, max_pixels) for p in files]  # ImageError naming the frame file
    for p, frame in zip(files[1:], frames[1:]):
        if frame.size != frames[0].size:
            (w0, h0), (w, h) = frames[0].size, frame.size
            raise ImageError(folder, f"frames differ in size: {p.name} is {w}x{h} but {files[0].name} is {w0}x{h0}")
    return Clip(frames, None, str(folder))


def _load_file(path: Path, max_frames: int, max_pixels: int) -> Clip:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Exception:  # noqa: BLE001 - load_image below opens it again and reports the failure in its own words
        img = None
    if img is not None and img.format in ANIMATED_FORMATS:
        with img:
            try:
                n = getattr(img, "n_frames", 1)  # a GIF is read to its end to count frames
            except Exception as e:  # noqa: BLE001 - EOFError, OSError, SyntaxError, ... by format
                raise ImageError(path, f"truncated or corrupt animation ({_one_line(e)})") from None
            if n > 1:
                return _load_animation(path, img, n, max_frames, max_pixels)
    elif img is not None:
        img.close()
    return Clip([load_image(path, max_pixels)], None, str(path))


def _load_animation(path: Path, img: Image.Image, n: int, max_frames: int, max_pixels: int) -> Clip:
    w, h = img.size  # every frame is composited onto the canvas, so all frames have this size
    if w * h > max_pixels:
        raise ImageError(path, f"{w}x{h} = {w * h} pixels is over the limit max_pixels={max_pixels}")
    keep = set(frame_indices(n, max_frames))
    frames, durations = [], []
    i = 0
    try:
        # Every frame is decoded, in order: a GIF frame may draw only what changed since the previous one.
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            frame.load()  # WebP sets info["duration"] only once the frame is decoded
            durations.append(frame.info.get("duration"))
            if i in keep:
                frames.append(to_rgb(frame.copy()))  # a copy: the iterator reuses one image for every frame
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ... by format
        raise ImageError(path, f"truncated or corrupt animation at frame {i} of {n} ({_one_line(e)})") from None
    if len(durations) != n:
        raise ImageError(path, f"truncated animation: the header counts {n} frames, {len(durations)} were decoded")
    known = [d for d in durations if d is not None]
    fps = 1000 * len(known) / sum(known) if known and sum(known) > 0 else None  # ms per frame -> frames per second
    return Clip(frames, _thinned_fps(fps, n, len(frames)), str(path))


def frames_to_gif(frames: list[Image.Image], path: str | Path, fps: float = 2.0) -> Path:
    """Write ``frames`` as a looping GIF, each frame shown for 1000 / ``fps`` ms.

    GIF stores durations in hundredths of a second and up to 256 colours per frame, and Pillow merges a frame
    identical to the one before it into that frame (adding their durations), so a round trip of arbitrary frames
    is not exact.
    """
    if not frames:
        raise ValueError("frames_to_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=list(frames[1:]),
                   duration=round(1000 / fps), loop=0, disposal=2)  # disposal 2: clear to background between frames
    return path


def frames_to_folder(frames: list[Image.Image], folder: str | Path) -> Path:
    """Write ``frames`` into ``folder`` as 0000.png, 0001.png, ...; the folder is created if needed.

    Refuses a folder that already holds frame images: frames left from an older, longer clip would join this one.
    """
    if not frames:
        raise ValueError("frames_to_folder needs at least one frame")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = [p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")]
    if old:
        raise FileExistsError(f"{folder}: already holds {len(old)} frame images (e.g. {min(old)}); use an empty folder")
    digits = max(4, len(str(len(frames) - 1)))
    for i, frame in enumerate(frames):
        frame.save(folder / f"{i:0{digits}d}.png")
    return folder
