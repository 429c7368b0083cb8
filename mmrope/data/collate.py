"""Collation: images of different sizes and captions of different lengths into one batch.

Each row of ``input_ids`` is the joint sequence the decoder reads (Qwen2-VL's layout, without a chat template):

    [VISION_START, IMAGE x N, VISION_END, caption tokens ..., EOS, PAD ...]
    labels:  -100  -100 x N     -100    caption tokens ..., EOS, -100 ...

where N = (H / (patch_size * merge_size)) * (W / (patch_size * merge_size)) merged image tokens. Labels are
aligned with ``input_ids``; the model shifts them (logits[:, :-1] predict labels[:, 1:]).
"""

import torch

from mmrope.special_tokens import EOS_ID, IGNORE_INDEX, IMAGE_TOKEN_ID, PAD_ID, VISION_END_ID, VISION_START_ID


def image_token_count(height: int, width: int, patch_size: int, merge_size: int) -> int:
    """Merged image tokens the decoder gets for an image of ``height x width`` pixels."""
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch_size*merge_size = {factor}")
    return (height // factor) * (width // factor)


def vision_block(num_image_tokens: int) -> list[int]:
    """The ids that stand for one image in the decoder: the prompt a caption is generated from."""
    return [VISION_START_ID] + [IMAGE_TOKEN_ID] * num_image_tokens + [VISION_END_ID]


class CaptionCollator:
    """List of samples (``ShapesDataset`` / ``CaptionDataset``; None for a skipped bad image) -> batch dict:

    ``images``          list of B tensors (3, H_i, W_i); sizes may differ
    ``image_grid_thw``  (B, 3) long, encoder patches per image (1, H_i / patch_size, W_i / patch_size)
    ``input_ids``       (B, L) long, right-padded with PAD_ID
    ``attention_mask``  (B, L) long, 1 on real tokens
    ``labels``          (B, L) long, caption ids and EOS; IGNORE_INDEX on the vision block and padding
    ``captions``, ``references``, ``scenes`` (None entries for real data), ``ids``: lists of B
    ``num_skipped``     int, None samples dropped from this batch

    Returns None when every sample was None (skip the step). Captions longer than ``max_caption_tokens - 1``
    tokens are cut so that caption plus EOS fits in ``max_caption_tokens``.
    """

    def __init__(self, tokenizer, patch_size: int = 8, merge_size: int = 2, max_caption_tokens: int = 64):
        if max_caption_tokens < 1:
            raise ValueError(f"max_caption_tokens must be at least 1 (room for EOS), got {max_caption_tokens}")
        self.tokenizer, self.patch_size, self.merge_size = tokenizer, patch_size, merge_size
        self.max_caption_tokens = max_caption_tokens

    def __call__(self, samples: list[dict | None]) -> dict | None:
        kept = [s for s in samples if s is not None]
        if not kept:
            return None
        rows, label_rows, grids = [], [], []
        for s in kept:
            _, h, w = s["image"].shape
            try:
                n = image_token_count(h, w, self.patch_size, self.merge_size)
            except ValueError as e:
                raise ValueError(f"sample {s['id']}: {e}") from None
            caption = self.tokenizer.encode(s["caption"])[: self.max_caption_tokens - 1] + [EOS_ID]
            rows.append(vision_block(n) + caption)
            label_rows.append([IGNORE_INDEX] * (n + 2) + caption)
            grids.append((1, h // self.patch_size, w // self.patch_size))

        B, L = len(rows), max(map(len, rows))
        input_ids = torch.full((B, L), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            labels[i, : len(lab)] = torch.tensor(lab)
        return {
            "images": [s["image"] for s in kept],
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),  # (B, 3)
            "input_ids": input_ids,  # (B, L)
            "attention_mask": attention_mask,  # (B, L)
            "labels": labels,  # (B, L)
            "captions": [s["caption"] for s in kept],
            "references": [s["references"] for s in kept],
            "scenes": [s.get("scene") for s in kept],
            "ids": [s["id"] for s in kept],
            "num_skipped": len(samples) - len(kept),
        }
