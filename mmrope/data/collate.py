"""Collation: images of different sizes and captions of different lengths into one batch.

Each row of ``input_ids`` is the joint sequence the decoder reads (Qwen2-VL's layout, without a chat template):

    [VISION_START, IMAGE x N, VISION_END, caption tokens ..., EOS, PAD ...]
    labels:  -100  -100 x N     -100    caption tokens ..., EOS, -100 ...

where N = (H / (patch_size * merge_size)) * (W / (patch_size * merge_size)) merged image tokens. With ``row_breaks``
(a scheme that reads media rows closed by break tokens: Pixtral's) every row of the decoder grid but the last is
followed by IMAGE_BREAK, so the block is ``[VISION_START, row 1, IMAGE_BREAK, ..., row H', VISION_END]``. A clip
(T frames) is one block of ceil(T / temporal_patch_size) * N video tokens (``clip_mode="block"``), or T image blocks
in a row, one per frame (``clip_mode="frames"``: the frames-as-separate-images arm). Labels are aligned with
``input_ids``; the model shifts them (logits[:, :-1] predict labels[:, 1:]).
"""

from typing import NamedTuple

import torch

from mmrope.model.tokens import (
    EOS_ID,
    IGNORE_INDEX,
    PAD_ID,
    vision_block,
)

CLIP_MODES = ("block", "frames")


class Skipped(NamedTuple):
    """What a dataset gives in place of a sample it cannot read: why, in one line naming the file. The collator
    drops it and the batch carries the reason to the main process (:class:`mmrope.data.loader.SkipWarningLoader`),
    which says it once; a DataLoader worker, forked anew every epoch, would say it again every epoch."""

    reason: str


class SkippedBatch(NamedTuple):
    """What a batch whose every sample was unreadable collates to: nothing to train on, but counted, so that a run
    whose data cannot be read stops instead of cycling through empty epochs."""

    num_skipped: int
    reasons: tuple[str, ...] = ()  # why each sample was skipped (a :class:`Skipped`'s reason)


def image_token_count(height: int, width: int, patch_size: int, merge_size: int) -> int:
    """Merged image tokens the decoder gets for an image of ``height x width`` pixels."""
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch_size*merge_size = {factor}")
    return (height // factor) * (width // factor)


class CaptionCollator:
    """List of samples (``ShapesDataset``, ``ClipsDataset``, ``CaptionDataset``; a :class:`Skipped` or None for a bad
    one) -> batch dict:

    ``images``             the media of every sample in order: images (3, H, W) and clips (T, 3, H, W)
    ``prompts``            B lists: each sample's media (what generation reads)
    ``image_grid_thw``     (num_media, 3) long, encoder patches per medium (temporal patches, H / p, W / p)
    ``second_per_grid_t``  seconds per temporal patch of each clip (temporal_patch_size / fps), in order
    ``input_ids``          (B, L) long, right-padded with PAD_ID
    ``attention_mask``     (B, L) long, 1 on real tokens
    ``labels``             (B, L) long, caption ids and EOS; IGNORE_INDEX on the vision blocks and padding (and
                           on every caption word not in a sample's ``loss_words``, when it has them)
    ``captions``, ``references``, ``scenes`` (None entries for real data), ``ids``: lists of B
    ``num_skipped``        int, samples dropped from this batch (Skipped or None)
    ``skipped``            the reasons of its Skipped samples, for the main process to say once

    A sample holds an ``"image"`` or a ``"video"`` (with its ``"fps"``). Returns a :class:`SkippedBatch` when every
    sample was skipped (skip the step). Captions longer than ``max_caption_tokens - 1`` tokens are cut so that caption
    plus EOS fits in ``max_caption_tokens``. ``row_breaks``: the model's scheme reads break tokens after media rows
    (``DecoderScheme.row_breaks``).
    """

    def __init__(self, tokenizer, patch_size: int = 8, merge_size: int = 2, max_caption_tokens: int = 64,
                 temporal_patch_size: int = 1, clip_mode: str = "block", row_breaks: bool = False):
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be at least 1 (room for EOS), got {max_caption_tokens}")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode={clip_mode!r} is unknown: expected one of {', '.join(CLIP_MODES)}")
        self.tokenizer, self.patch_size, self.merge_size = tokenizer, patch_size, merge_size
        self.max_caption_tokens = max_caption_tokens
        self.temporal_patch_size, self.clip_mode, self.row_breaks = temporal_patch_size, clip_mode, row_breaks

    def media(self, sample: dict) -> tuple[list[torch.Tensor], list[float]]:
        """A sample's media as the decoder will read them, and the seconds per temporal patch of each clip."""
        if "video" not in sample:
            return [sample["image"]], []
        video = sample["video"]  # (T, 3, H, W)
        if self.clip_mode == "frames":
            return list(video), []
        return [video], [self.temporal_patch_size / sample["fps"]]

    def __call__(self, samples: list[dict | Skipped | None]) -> dict | SkippedBatch:
        kept = [s for s in samples if isinstance(s, dict)]
        reasons = tuple(s.reason for s in samples if isinstance(s, Skipped))
        if not kept:
            return SkippedBatch(len(samples), reasons)
        rows, label_rows, grids, prompts, timing = [], [], [], [], []
        for s in kept:
            media, seconds = self.media(s)
            prompt = []
            for m in media:
                h, w = m.shape[-2:]
                try:
                    n = image_token_count(h, w, self.patch_size, self.merge_size)
                except ValueError as e:
                    raise ValueError(f"sample {s['id']}: {e}") from None
                t = -(-m.shape[0] // self.temporal_patch_size) if m.ndim == 4 else 1
                row_length = w // (self.patch_size * self.merge_size) if self.row_breaks else None
                prompt += vision_block(t * n, clip=m.ndim == 4, row_length=row_length)
                grids.append((t, h // self.patch_size, w // self.patch_size))
            caption = self.tokenizer.encode(s["caption"])[: self.max_caption_tokens - 1] + [EOS_ID]
            rows.append(prompt + caption)
            targets = caption
            if s.get("loss_words"):  # only these words are predicted; the rest of the caption is given
                wanted = set(self.tokenizer.encode(" ".join(s["loss_words"])))
                targets = [t if t in wanted else IGNORE_INDEX for t in caption]
            label_rows.append([IGNORE_INDEX] * len(prompt) + targets)
            prompts.append(media)
            timing += seconds

        B, L = len(rows), max(map(len, rows))
        input_ids = torch.full((B, L), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            labels[i, : len(lab)] = torch.tensor(lab)
        return {
            "images": [m for media in prompts for m in media],
            "prompts": prompts,
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),  # (num_media, 3)
            "second_per_grid_t": timing,
            "input_ids": input_ids,  # (B, L)
            "attention_mask": attention_mask,  # (B, L)
            "labels": labels,  # (B, L)
            "captions": [s["caption"] for s in kept],
            "references": [s["references"] for s in kept],
            "scenes": [s.get("scene") for s in kept],
            "ids": [s["id"] for s in kept],
            "num_skipped": len(samples) - len(kept),
            "skipped": list(reasons),
        }
