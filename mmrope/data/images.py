"""Images: open any file robustly, resize to a patch grid, normalise, and augment without breaking the captions.

``load_image`` turns every failure into an ``ImageError`` whose one-line message names the file and the reason,
so a dataset can warn and skip (or stop) without a traceback. ``ImageTransform`` resizes either to a fixed size or,
as Qwen2-VL does, to the native aspect ratio with sides that are multiples of ``patch_size * merge_size``.
"""

import io
import math
import os
import random
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from mmrope.errors import one_line

# OpenAI CLIP's statistics, which Qwen2-VL's image processor also uses: timm.data.constants.OPENAI_CLIP_MEAN / _STD
# (a test ties them; importing timm here would cost every data loader a second).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# 50 megapixels is a 7000 x 7000 photo; anything larger is a mistake or a decompression bomb for a captioner.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# Qwen2-VL refuses aspect ratios above 200; we pad the short side up to this ratio instead.
MAX_ASPECT_RATIO = 200


class ImageError(ValueError):
    """A file that cannot be used as an image; ``str(e)`` is one line: ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str | None = None):
        # one-argument form so that pickling (DataLoader workers) can rebuild it from the message
        self.path, self.reason = str(path), reason
        super().__init__(str(path) if reason is None else f"{path}: {reason}")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, upright as its EXIF orientation says.

    The pixel count is read from the header and checked before any pixel is decoded; pixels are then decoded at
    once so a truncated file fails here and not in the middle of a batch. Truncation is only detected while
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False (Pillow's default).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, missing_reason(path))
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file")
    return decode_image(path, path, max_pixels)


def image_from_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """:func:`load_image` for an image held in memory (a member of a tar shard); errors name ``name``."""
    if not data:
        raise ImageError(name, "empty file")
    return decode_image(io.BytesIO(data), name, max_pixels)


def decode_image(source, path, max_pixels: int) -> Image.Image:
    """Open ``source`` (a path or a binary file object) as :func:`load_image` does; errors name ``path``."""
    with warnings.catch_warnings():
        # Pillow warns above its own limit; ours is checked just below with a clear message.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as e:  # not an OSError: Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
            raise ImageError(path, f"too many pixels, refused before decoding ({one_line(e, 200)})") from None
        except UnidentifiedImageError:
            raise ImageError(path, "not an image (format not recognised)") from None
        except Exception as e:  # noqa: BLE001 - a corrupt header raises OSError, SyntaxError, struct.error, ...
            raise ImageError(path, f"cannot open ({one_line(e, 200)})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageError(path, f"{w}x{h} = {w * h} pixels is over the limit max_pixels={max_pixels}")
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ... by format
        img.close()
        raise ImageError(path, f"truncated or corrupt image data ({one_line(e, 200)})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - malformed EXIF raises almost anything
        raise ImageError(path, f"unreadable EXIF orientation ({one_line(e, 200)})") from None
    try:
        return to_rgb(img)
    except ValueError as e:
        raise ImageError(path, one_line(e, 200)) from None


def missing_reason(path: Path) -> str:
    """Why ``path`` is not a readable file, in a few words: a symbolic link loop and a broken link are not "file not
    found", a folder is not an image, and a named pipe or a device is named without being opened (reading a pipe
    would wait for a writer forever)."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except ValueError:  # Python's "embedded null byte"
        return "a file name cannot contain a NUL byte"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)})"
        if isinstance(e, FileNotFoundError):
            return "file not found"
        return f"cannot read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder, not an image"
    kinds = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a special file")
    return f"{kind}, not a regular file: not read"


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: transparency composited on white, high bit depths scaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(img)
    try:
        return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...
    except ValueError:
        raise ValueError(f"cannot convert image mode {mode} to RGB") from None


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8 bits.

    Pillow's own conversion clips at 255, which turns most 16-bit images white. 16-bit modes are scaled by their
    full range (65535 -> 255). ``I`` and ``F`` carry no range, so values already in 0..255 (or 0..1 for floats)
    keep their meaning, 16-bit values are scaled as above, and anything else is stretched from its min to its max.
    """
    a = np.asarray(img).astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if img.mode.startswith("I;16"):
        a = a / 65535.0 * 255.0
    elif img.mode == "F" and 0.0 <= lo and hi <= 1.0:
        a = a * 255.0
    elif 0.0 <= lo and hi <= 255.0:
        pass
    elif img.mode == "I" and 0.0 <= lo and hi <= 65535.0:
        a = a / 65535.0 * 255.0
    else:
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # mode L
    return grey.convert("RGB")


def smart_resize(
    height: int, width: int, factor: int = 16, min_pixels: int = 32 * 32, max_pixels: int = 256 * 256
) -> tuple[int, int]:
    """Sides, both multiples of ``factor``, close to ``height x width`` with the pixel count in the bounds.

    Qwen2-VL's ``smart_resize`` (transformers ``image_processing_qwen2_vl.py``), except that it never raises:
    a side under ``factor`` becomes ``factor`` and an extreme aspect ratio is allowed. ``preprocess`` pads such
    images rather than stretching them.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize needs positive sides, got {height}x{width}")
    if min_pixels > max_pixels or max_pixels < factor * factor:
        raise ValueError(f"smart_resize: need factor^2 <= max_pixels and min_pixels <= max_pixels, "
                         f"got factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar * w_bar > max_pixels:  # only after a very thin side was raised to ``factor``: shorten the long side
        if h_bar <= w_bar:
            w_bar = max_pixels // h_bar // factor * factor
        else:
            h_bar = max_pixels // w_bar // factor * factor
    return h_bar, w_bar


def pad_to_aspect(img: Image.Image, max_ratio: float = MAX_ASPECT_RATIO, fill=None) -> Image.Image:
    """Pad the short side (centred) so that long / short <= ``max_ratio``; other images are returned unchanged."""
    w, h = img.size
    if max(w, h) <= max_ratio * min(w, h):
        return img
    short = math.ceil(max(w, h) / max_ratio)
    size = (w, short) if w > h else (short, h)
    return _pad_centred(img, size, fill)


def _pad_centred(img: Image.Image, size: tuple[int, int], fill=None) -> Image.Image:
    fill = fill if fill is not None else tuple(round(m * 255) for m in MEAN)  # the mean: zero after normalising
    canvas = Image.new("RGB", size, fill)
    canvas.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return canvas


def augment(
    img: Image.Image, rng: random.Random, crop: float = 0.05, brightness: float = 0.1, contrast: float = 0.1
) -> Image.Image:
    """Jitter that keeps every caption true: no flips or rotations (they swap left/right, up/down), no hue shift
    (colour words are in the captions). Crops at most ``crop`` of each side, so relative layout is unchanged and
    absolute places move by a few percent; brightness and contrast change by at most the given fractions."""
    w, h = img.size
    dw, dh = int(w * crop * rng.random()), int(h * crop * rng.random())
    left, top = rng.randint(0, dw), rng.randint(0, dh)
    if dw or dh:
        img = img.crop((left, top, w - (dw - left), h - (dh - top)))
    img = ImageEnhance.Brightness(img).enhance(1.0 + rng.uniform(-brightness, brightness))
    img = ImageEnhance.Contrast(img).enhance(1.0 + rng.uniform(-contrast, contrast))
    return img


def to_tensor(img: Image.Image, mean=MEAN, std=STD) -> torch.Tensor:
    """Normalised float tensor (3, H, W) from an RGB image."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def denormalize(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Undo ``to_tensor``'s normalisation, clamped to [0, 1], for display. Works on (3, H, W) or (B, 3, H, W)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


class ImageTransform:
    """PIL image -> normalised (3, H, W) tensor whose sides are multiples of ``patch_size * merge_size``.

    mode "native": the Qwen2-VL rule (``smart_resize``) picks the sides; the image is scaled to fit inside them
    keeping its aspect ratio and padded (centred, mean colour) to fill them. Ordinary images get less than one
    merged patch of padding; tiny or very thin ones are padded up instead of refused.
    mode "fixed": resized to ``size`` ((h, w) or one int for a square), aspect ratio not kept.
    ``augment=True`` applies ``augment`` and, in native mode, scales the image by up to ``scale_jitter`` before
    choosing the grid. All randomness comes from the ``rng`` passed in, never from global state.
    """

    def __init__(
        self,
        mode: Literal["native", "fixed"] = "native",
        size: int | tuple[int, int] | None = None,
        patch_size: int = 8,
        merge_size: int = 2,
        min_pixels: int = 32 * 32,
        max_pixels: int = 256 * 256,
        augment: bool = False,
        scale_jitter: float = 0.1,
        crop: float = 0.05,
        brightness: float = 0.1,
        contrast: float = 0.1,
        mean: tuple[float, float, float] = MEAN,
        std: tuple[float, float, float] = STD,
    ):
        self.factor = patch_size * merge_size
        if mode not in ("native", "fixed"):
            raise ValueError(f"image transform mode must be 'native' or 'fixed', got {mode!r}")
        if mode == "fixed":
            if size is None:
                raise ValueError("image transform mode 'fixed' needs a size")
            size = (size, size) if isinstance(size, int) else tuple(size)
            if len(size) != 2 or any(s <= 0 or s % self.factor for s in size):
                raise ValueError(f"image size {size} must be positive multiples of patch_size*merge_size = "
                                 f"{self.factor}")
        smart_resize(self.factor, self.factor, self.factor, min_pixels, max_pixels)  # validates the bounds
        self.mode, self.size = mode, size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.augment, self.scale_jitter = augment, scale_jitter
        self.crop, self.brightness, self.contrast = crop, brightness, contrast
        self.mean, self.std = tuple(mean), tuple(std)

    def target_size(self, height: int, width: int, scale: float = 1.0) -> tuple[int, int]:
        """(H, W) the transform produces for an image of ``height x width`` (before padding to the aspect limit)."""
        if self.mode == "fixed":
            return self.size
        return smart_resize(round(height * scale), round(width * scale), self.factor, self.min_pixels, self.max_pixels)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        if self.augment and rng is None:
            raise ValueError("ImageTransform(augment=True) needs an rng; seed it from (seed, epoch, index)")
        img = to_rgb(img)
        scale = 1.0
        if self.augment:
            img = augment(img, rng, self.crop, self.brightness, self.contrast)
            scale = 1.0 + rng.uniform(-self.scale_jitter, self.scale_jitter)
        if self.mode == "fixed":
            h, w = self.size
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        else:
            img = pad_to_aspect(img, fill=self._fill())
            h, w = self.target_size(img.height, img.width, scale)
            s = min(h / img.height, w / img.width)
            fit = (min(w, max(1, round(img.width * s))), min(h, max(1, round(img.height * s))))
            if fit != img.size:
                img = img.resize(fit, Image.Resampling.BICUBIC)
            if fit != (w, h):
                img = _pad_centred(img, (w, h), self._fill())
        return to_tensor(img, self.mean, self.std)  # (3, h, w)

    def _fill(self) -> tuple[int, int, int]:
        return tuple(round(m * 255) for m in self.mean)

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.mode == "fixed" else f", pixels=[{self.min_pixels}, {self.max_pixels}]"
        return f"ImageTransform(mode={self.mode!r}{size}, factor={self.factor}, augment={self.augment})"


def sample_rng(seed: int, epoch: int, index: int, salt: str = "") -> random.Random:
    """A generator seeded from (seed, epoch, index), so any sample of any epoch can be redrawn after a resume.

    String seeds are hashed with SHA-512 by ``random.Random``, so this does not depend on PYTHONHASHSEED.
    """
    return random.Random(f"{salt}:{seed}:{epoch}:{index}")
