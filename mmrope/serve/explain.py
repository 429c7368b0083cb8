"""What ``mmrope serve`` shows for one upload, as JSON the page draws: the caption, the beam alternatives, where the
decoder looked for each word, and the (t, h, w) ids of the sequence.

Everything is computed the way the commands compute it: the file is read and preprocessed as ``mmrope caption``
reads it (:meth:`CaptionPipeline.prepare`: the same one-line ``ImageError`` for a bad file), captions come from
``Captioner.generate``, the maps from the model's own attention (:mod:`mmrope.viz.attention`, as ``mmrope viz
attention``), and the ids from the model's own position scheme, so every registered scheme is drawn as it reads.
Pictures travel as ``data:`` URLs of small PNGs: the server hands out no files.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, denormalize
from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
from mmrope.inference import DEFAULT_MAX_FRAMES, CaptionPipeline
from mmrope.model.tokens import IMAGE_TOKEN_ID, SPECIAL_TOKENS, VIDEO_TOKEN_ID
from mmrope.viz.attention import CaptionAttention, attention_maps, decoder_attention
from mmrope.viz.figures import overlay_attention

SHORT_NAMES = {"<vision_start>": "<vs>", "<vision_end>": "<ve>", "<image_break>": "<br>"}
SHOWN_SIDE = 160  # pixels: small model inputs (32 px) are enlarged by a whole factor to about this, kept sharp


def explain(pipeline: CaptionPipeline, path: str | Path, strategy: str = "greedy", num_beams: int = 4,
            max_new_tokens: int = 32, size: int | None = None, resize: str = "fixed", clip_mode: str = "block",
            max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_frames: int = DEFAULT_MAX_FRAMES,
            max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS, max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES) -> dict:
    """Caption the image or clip at ``path`` -> what the page shows (JSON-ready). ``strategy`` ("greedy" or "beam")
    makes the caption; with ``num_beams`` > 1 the beam search's ``num_beams`` best captions are the alternatives.
    A bad file raises its ``ImageError``; a bad ``size`` or option a ``ValueError``."""
    if strategy not in ("greedy", "beam") or clip_mode not in ("block", "frames"):
        raise ValueError(f"strategy={strategy!r}, clip_mode={clip_mode!r}: expected greedy or beam, block or frames")
    model, device = pipeline.model, pipeline.device
    media, seconds = pipeline.prepare(path, size, resize, max_pixels, max_frames,
                                      max_clip_pixels=max_clip_pixels, max_clip_frames=max_clip_frames)
    clip = media.ndim == 4
    if clip and clip_mode == "frames":  # each frame its own image block, as caption_each reads it
        prompt, timing = [frame.to(device) for frame in media], []
    else:
        prompt, timing = media.to(device), [seconds] if seconds is not None else []
    options = {"max_new_tokens": max_new_tokens, "second_per_grid_t": timing}
    with torch.inference_mode():
        beams = model.generate([prompt], strategy="beam", num_beams=num_beams, num_return_sequences=num_beams,
                               **options) if num_beams > 1 else []
        # the best of the n best is what beam search alone gives (tests/test_generation.py checks it)
        caption_ids = beams[0] if strategy == "beam" and beams else model.generate(
            [prompt], strategy=strategy, num_beams=num_beams, **options)[0]
    attention = decoder_attention(model, prompt, caption_ids.to(device), timing)
    maps = attention_maps(attention, model.config.vision.spatial_merge_size)  # (w, T', H', W')
    frames = shown_frames(media, maps.shape[1], clip_mode)  # (T', H, W, 3)
    tokenizer = pipeline.tokenizer
    words = []
    for token, word_maps in zip(caption_ids.tolist(), maps.cpu()):  # word_maps (T', H', W')
        peak = float(word_maps.max())  # one scale across a clip's frames, so they compare
        overlays = [overlay_attention(frame, m, peak) for frame, m in zip(frames, word_maps)]
        words.append({"word": tokenizer.decode([token]) or "?", "share": round(float(word_maps.sum()), 4),
                      "overlay": png_data_url(strip(overlays))})
    h, w = media.shape[-2:]
    return {
        "caption": tokenizer.decode(caption_ids.tolist()),
        "strategy": strategy,
        "alternatives": [tokenizer.decode(b.tolist()) for b in beams],
        "kind": "clip" if clip else "image",
        "frames": len(media) if clip else 1,
        "size": [int(h), int(w)],
        "scheme": model.config.position_scheme,
        "pos_encoding": model.config.vision.pos_encoding,
        "image": png_data_url(strip(list(frames))),
        "words": words,
        "ids": position_table(attention, [tokenizer.decode([t]) or "?" for t in caption_ids.tolist()],
                              model.config.vision.spatial_merge_size),
    }


def shown_frames(media: torch.Tensor, temporal_patches: int, clip_mode: str) -> np.ndarray:
    """The frame drawn under each temporal patch's map (the first of its frames) -> (T', H, W, 3) in [0, 1]."""
    pictures = denormalize(media.detach().float().cpu())
    if media.ndim == 3:
        return pictures.permute(1, 2, 0).numpy()[None]
    step = 1 if clip_mode == "frames" else -(-len(media) // temporal_patches)
    chosen = [min(k * step, len(media) - 1) for k in range(temporal_patches)]
    return pictures[chosen].permute(0, 2, 3, 1).numpy()


def strip(pictures: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Pictures (H, W, 3) in [0, 1] side by side, enlarged by a whole factor to about :data:`SHOWN_SIDE` ->
    (H', W', 3) uint8."""
    h, w = pictures[0].shape[:2]
    scale = max(1, SHOWN_SIDE // max(h, w))
    white = np.ones((h, gap, 3))
    joined = np.concatenate([p for picture in pictures for p in (picture, white)][:-1], axis=1)
    return (joined.clip(0, 1) * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def position_table(attention: CaptionAttention, words: list[str], merge: int) -> dict:
    """The (t, h, w) ids of the sequence, one column per token, with a label each: ``<vs>``, ``img i,j`` (``vid
    t,i,j`` in a clip), ``<ve>``, then the caption's words; ids are whole numbers, or rounded to 0.01 when the
    scheme gives fractions."""
    labels, cells, caption = [], iter(media_cells(attention.grid_thw.tolist(), merge)), iter(words)
    for k, token in enumerate(attention.input_ids.tolist()):
        if k >= attention.prompt_length:
            labels.append(next(caption))
        elif token == IMAGE_TOKEN_ID:
            _, i, j = next(cells)
            labels.append(f"img {i},{j}")
        elif token == VIDEO_TOKEN_ID:
            labels.append("vid {},{},{}".format(*next(cells)))
        else:
            name = SPECIAL_TOKENS[token] if token < len(SPECIAL_TOKENS) else str(token)
            labels.append(SHORT_NAMES.get(name, name))
    ids = attention.position_ids.cpu()
    values = ids.long() if not ids.is_floating_point() or bool((ids == ids.round()).all()) else ids.round(decimals=2)
    t, h, w = values.tolist()
    return {"tokens": labels, "t": t, "h": h, "w": w}


def media_cells(grid_thw: list[list[int]], merge: int) -> list[tuple[int, int, int]]:
    """(temporal patch, row, column) of each merged media token of each medium, in sequence order."""
    return [(t, i, j) for frames, rows, columns in grid_thw
            for t in range(frames) for i in range(rows // merge) for j in range(columns // merge)]
