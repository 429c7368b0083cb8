"""Captioning images with a trained model: load a checkpoint or an exported folder, preprocess, generate, export.

    pipeline = mmrope.load("runs/shapes_small/checkpoints/last.ckpt")   # or an exported folder
    pipeline.caption(["photo.jpg", Image.open("other.png")])            # -> ["red circle left of ...", ...]
    pipeline.caption(["clip.gif", "frames_folder/"])                    # clips: animated files, frame folders
    pipeline.export("exported/")                                        # config.json, model.safetensors, tokenizer.json

Nothing here imports Lightning: checkpoints are read by :mod:`mmrope.checkpoints` (``weights_only=True``, the
model keys lose their ``model.`` prefix). Every way a checkpoint can be wrong (unreadable, not mmrope's, weights of
another architecture) is a one-line ``ValueError`` naming the file, as a bad image is an ``ImageError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps

from mmrope.checkpoints import load_weights, read_checkpoint, read_exported, write_exported
from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, ImageTransform, load_image, to_rgb
from mmrope.data.tokenizer import Tokenizer
from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS, Clip, is_clip_path, load_clip
from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig

ImageInput = str | Path | Image.Image | Clip  # a path to an image, a frame folder or an animated file
DEFAULT_MAX_FRAMES = 32  # a longer clip is thinned to this many evenly spaced frames
DEFAULT_FPS = 2.0  # of a clip whose frame rate nothing says (a folder of frames, a list of frames)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given and usable, else the fastest there is: cuda, then mps, then cpu."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is unknown: expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device}: MPS is not available on this machine")
    return device


def load(ckpt_or_dir: str | Path, device: str | torch.device | None = None) -> CaptionPipeline:
    """A ready captioner from a Lightning checkpoint (``last.ckpt``, ``best-*.ckpt``) or a folder ``export`` wrote."""
    path = Path(ckpt_or_dir)
    if path.is_dir():
        config, tokenizer, state = read_exported(path)
    elif path.is_file():
        config, tokenizer, state, _ = read_checkpoint(path)
    else:
        raise ValueError(f"{path}: no such checkpoint file or exported folder")
    model = Captioner(config)
    load_weights(model, state, path)
    return CaptionPipeline(model, tokenizer, device=device)


class CaptionPipeline:
    """A captioner with its tokenizer, on a device, with the preprocessing its training used.

    ``size=None`` means the training resolution (``config.vision.image_size``). ``resize="fixed"`` stretches every
    image to ``size x size``, as training on shapes did; ``resize="native"`` keeps the aspect ratio (Qwen2-VL's
    ``smart_resize``, at most ``size * size`` pixels, padded to whole merged patches), better for real photos.
    """

    def __init__(self, model: Captioner, tokenizer: Tokenizer, config: CaptionerConfig | None = None,
                 device: str | torch.device | None = None):
        self.config = config or model.config
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this: one merged patch."""
        return self.config.vision.merged_patch_size

    def transform(self, size: int | None = None, resize: str = "fixed") -> ImageTransform:
        """The PIL -> tensor transform for ``size`` (default: the training size) and ``resize``."""
        size = self.config.vision.image_size if size is None else size
        if resize not in ("fixed", "native"):
            raise ValueError(f"resize={resize!r} is unknown: expected 'fixed' or 'native'")
        f = self.factor
        if size <= 0 or size % f:
            lower = max(f, size // f * f)
            raise ValueError(f"size {size} is not a multiple of patch_size * spatial_merge_size = {f}: "
                             f"try {lower} or {lower + f}")
        v = self.config.vision
        if resize == "fixed":
            return ImageTransform("fixed", size, v.patch_size, v.spatial_merge_size)
        # between a quarter of and all of size^2 pixels: no image shrinks to a few tokens or outgrows the budget
        return ImageTransform("native", None, v.patch_size, v.spatial_merge_size, min_pixels=(size // 2) ** 2,
                              max_pixels=size * size)

    def preprocess(self, image: ImageInput, size: int | None = None, resize: str = "fixed",
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
        """One image (a path or a PIL image) -> the normalised (3, H, W) tensor the model reads; a clip (a frame
        folder, an animated file or a :class:`Clip`) -> (T, 3, H, W)."""
        media, _ = self._prepare(image, self.transform(size, resize), max_pixels, DEFAULT_MAX_FRAMES)
        return media

    def prepare(self, image: ImageInput, size: int | None = None, resize: str = "fixed",
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_frames: int = DEFAULT_MAX_FRAMES,
                fps: float | None = None, max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS,
                max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES) -> tuple[torch.Tensor, float | None]:
        """As :meth:`preprocess`, with the clip's seconds per temporal patch (None for an image): what
        ``Captioner.generate`` takes as ``second_per_grid_t``, as :meth:`caption` passes it."""
        return self._prepare(image, self.transform(size, resize), max_pixels, max_frames, fps,
                             (max_clip_pixels, max_clip_frames))

    @staticmethod
    def _open(image: ImageInput, max_pixels: int, max_frames: int,
              clip_limits: tuple[int, int] = (DEFAULT_MAX_CLIP_PIXELS, DEFAULT_MAX_CLIP_FRAMES)) -> Image.Image | Clip:
        if isinstance(image, Clip):
            return image
        if isinstance(image, Image.Image):
            return to_rgb(ImageOps.exif_transpose(image))  # upright, as load_image makes files
        if isinstance(image, str | Path):
            if is_clip_path(image):
                return load_clip(image, max_frames, max_pixels, *clip_limits)
            return load_image(image, max_pixels)
        raise TypeError(f"cannot caption a {type(image).__name__}: expected a path, a PIL image or a Clip")

    def _prepare(self, image: ImageInput, transform: ImageTransform, max_pixels: int, max_frames: int,
                 fps: float | None = None,
                 clip_limits: tuple[int, int] = (DEFAULT_MAX_CLIP_PIXELS, DEFAULT_MAX_CLIP_FRAMES),
                 ) -> tuple[torch.Tensor, float | None]:
        """-> (image (3, H, W) or clip (T, 3, H, W), the clip's seconds per temporal patch or None). ``fps`` is the
        frame rate of a clip that does not give one (default :data:`DEFAULT_FPS`); ``clip_limits`` are
        (``max_clip_pixels``, ``max_clip_frames``) of :func:`mmrope.data.videos.load_clip`."""
        opened = self._open(image, max_pixels, max_frames, clip_limits)
        if isinstance(opened, Image.Image):
            return transform(opened), None
        frames = [to_rgb(f) for f in opened.frames]
        if not frames:
            raise ImageError(opened.path, "a clip with no frames")
        fps = opened.fps or fps or DEFAULT_FPS
        return torch.stack([transform(f) for f in frames]), self.config.vision.temporal_patch_size / fps

    def caption(self, images: ImageInput | Sequence[ImageInput], size: int | None = None, resize: str = "fixed",
                batch_size: int = 16, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, seed: int | None = 0,
                clip_mode: str = "block", max_frames: int = DEFAULT_MAX_FRAMES, fps: float | None = None,
                max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS, max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES,
                **generate_kwargs) -> list[str]:
        r"""One caption per image or clip (paths, PIL images or :class:`Clip`\ s, any sizes); a bad file raises its
        ``ImageError``. A path to a folder or an animated GIF / WebP / PNG is a clip (at most ``max_frames``
        frames, evenly spaced), read as one (t, h, w) block or, with ``clip_mode="frames"``, as one image per
        frame: use what the model was trained with. ``fps``: the frame rate of clips whose file gives none (a
        folder); it matters to models with ``tokens_per_second``. ``max_pixels`` limits each image or frame;
        ``max_clip_frames`` the frames of an animated file and ``max_clip_pixels`` the pixels of all the frames a
        clip needs decoded, checked before decoding.

        ``generate_kwargs`` go to :meth:`Captioner.generate`: ``max_new_tokens`` (32), ``strategy`` ("greedy",
        "beam" or "sample"), ``num_beams``, ``length_penalty``, ``temperature``, ``top_p``. ``seed`` makes sampling
        repeatable (None: torch's global generator).
        """
        captions = []
        for result in self.caption_each(images, size, resize, batch_size, max_pixels, seed, clip_mode, max_frames,
                                        fps, max_clip_pixels, max_clip_frames, **generate_kwargs):
            if isinstance(result, ImageError):
                raise result
            captions.append(result)
        return captions

    def caption_each(self, images: ImageInput | Sequence[ImageInput], size: int | None = None,
                     resize: str = "fixed", batch_size: int = 16, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                     seed: int | None = 0, clip_mode: str = "block", max_frames: int = DEFAULT_MAX_FRAMES,
                     fps: float | None = None, max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS,
                     max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES, **generate_kwargs) -> Iterator[str | ImageError]:
        """As :meth:`caption`, but lazily, a batch at a time, and a bad file gives its ``ImageError`` in its place
        instead of stopping the others. Only one batch of images is in memory at once; a bad ``size``, ``resize``,
        ``batch_size``, ``clip_mode``, ``max_frames``, ``fps`` or clip limit raises here, before any image is read."""
        if isinstance(images, str | Path | Image.Image | Clip):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected at least 1")
        if clip_mode not in ("block", "frames"):
            raise ValueError(f"clip_mode={clip_mode!r} is unknown: expected 'block' or 'frames'")
        if max_frames < 1:
            raise ValueError(f"max_frames={max_frames}: expected at least 1")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps={fps}: expected a positive frame rate")
        if max_clip_pixels < 1 or max_clip_frames < 1:
            raise ValueError(f"max_clip_pixels={max_clip_pixels}, max_clip_frames={max_clip_frames}: expected at "
                             "least 1")
        transform = self.transform(size, resize)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        return self._caption_batches(list(images), transform, batch_size, max_pixels, generator,
                                     (clip_mode, max_frames, fps, (max_clip_pixels, max_clip_frames)),
                                     generate_kwargs)

    def _caption_batches(self, images: list[ImageInput], transform: ImageTransform, batch_size: int,
                         max_pixels: int, generator: torch.Generator | None,
                         clips: tuple[str, int, float | None, tuple[int, int]],
                         generate_kwargs: dict) -> Iterator[str | ImageError]:
        clip_mode, max_frames, fps, clip_limits = clips
        for start in range(0, len(images), batch_size):
            prompts, timing, errors = [], [], []
            for image in images[start:start + batch_size]:
                try:
                    media, seconds = self._prepare(image, transform, max_pixels, max_frames, fps, clip_limits)
                except ImageError as e:
                    errors.append(e)
                    continue
                errors.append(None)
                if media.ndim == 4 and clip_mode == "frames":
                    prompts.append(list(media))
                else:
                    prompts.append(media)
                    timing += [seconds] if seconds is not None else []
            with torch.inference_mode():
                ids = self.model.generate(prompts, generator=generator, second_per_grid_t=timing,
                                          **generate_kwargs) if prompts else []
            captions = iter([self.tokenizer.decode(t.tolist()) for t in ids])
            for error in errors:
                yield next(captions) if error is None else error

    def export(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` to ``directory``, atomically (see
        :func:`mmrope.checkpoints.write_exported`)."""
        return write_exported(directory, self.config, self.model, self.tokenizer)

    def __repr__(self) -> str:
        v = self.config.vision
        return (f"CaptionPipeline(image_size={v.image_size}, pos_encoding={v.pos_encoding!r}, "
                f"position_scheme={self.config.position_scheme!r}, tokenizer={self.tokenizer!r}, "
                f"device={str(self.device)!r})")
