"""Decoder schemes with one id per token, repeated on the (t, h, w) rows, so that every rotary pair reads it (1D
RoPE). They differ in where the media tokens sit on that line: ``flat`` gives them the running index in raster
order, V2PE steps through a medium by a fraction of an id per token, Pixtral reads it row by row with a break token
closing each row.

Einstein legend: b batch, n tokens, m media tokens.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mmrope.model.decoder_schemes.base import DecoderScheme, PlacedMedia, register_scheme
from mmrope.model.position_ids import flat_position_ids
from mmrope.model.tokens import IMAGE_BREAK_ID


@register_scheme("flat")
class FlatPositions(DecoderScheme):
    """The running index on all three rows, media tokens in raster order: 1D RoPE over the flattened sequence, as a
    text-only decoder would read it (nanoVLM, the prototype this project started from)."""

    design = "the running index on all rows (media in raster order)"
    allocation = "1D: every pair on the one index"
    source = "1D RoPE (Su et al. 2021) over the flattened sequence"
    one_index = True
    transfer_rule = "raster"

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        return flat_position_ids(input_ids, attention_mask=attention_mask)


@register_scheme("v2pe")
class V2PE(PlacedMedia):
    """V2PE: text advances one id per token, a medium's tokens a fraction of one, so that long visual contexts use up
    few positions. The rule the Multimodal-RoPEs collection implements (the official ``rope_pos_id_stride /
    num_image_token``): a block of N tokens after the token at id p puts its k-th token (k = 1..N) at
    p + k * V / N, V = :attr:`visual_stride`, and the text after it resumes at ceil(p + V) + 1. Text ids are whole,
    so p is. A clip's frames are such blocks one after another, frame f from p + f * ceil(V) (the collection gives
    Qwen3-VL's frames a block each). One id on all three rows; 1D allocation. With V = 4, a 2 x 3 image::

        tokens  x   vs  img   img   img  img   img   img  ve  x
        id      0   1   1.67  2.33  3    3.67  4.33  5    6   7        rope_delta = 7 + 1 - 10 = -2

    Ids are float32 and rope deltas float64 (:class:`~mmrope.model.decoder_schemes.base.PlacedMedia`).
    """

    design = "one id per token; a medium's N tokens step V / N ids each, text resumes at ceil(end) + 1"
    allocation = "1D: every pair on the one index"
    source = "V2PE (Ge et al. 2024, arXiv 2412.09616), as the Multimodal-RoPEs collection implements it"
    # V, the ids one block (one frame) spans. The collection defaults to 16 for Qwen's hundreds of tokens per image;
    # V2PE was evaluated at rope_pos_id_stride 64 per tile of 256 tokens, a step of 1/4. Our 64 px training image
    # has 16 merged tokens: V = 4 gives it that step of 1/4 (V = 16 would give it step 1, flat's ids).
    visual_stride: ClassVar[float] = 4.0
    one_index = True

    def place(self, media, clip, second_per_grid_t):
        t, i, j = media.thw.double()
        _, rows, cols = media.grid[media.block].double().unbind(-1)
        frame_span = math.ceil(self.visual_stride)  # ids a frame uses up: the next starts at ceil of its end
        # relative to s = p + 1, the id the first token would get as text
        relative = t * frame_span + (i * cols + j + 1) * self.visual_stride / (rows * cols) - 1  # (m,)
        advance = media.grid[:, 0].double() * frame_span
        return relative.expand(3, -1), advance


@register_scheme("pixtral")
class Pixtral(FlatPositions):
    """Pixtral 12B's decoder: the image flattened in raster order with a break token after each row, the end token
    in place of the last break, and plain 1D RoPE over the running index, breaks included. Here a block is
    ``[vision_start, row 1, BREAK, row 2, BREAK, ..., row H, vision_end]``, vision_end playing Pixtral's [IMG_END]
    (:func:`mmrope.model.tokens.vision_block`). A 2 x 3 image::

        tokens  vs  img img img  brk  img img img  ve  x
        id      0   1   2   3    4    5   6   7    8   9

    The breaks tell apart images of one area but different shapes; vertical neighbours sit W + 1 ids apart. Pixtral
    defines no video layout: a clip's frames are read as rows one after another, each frame's rows as Pixtral reads
    an image, a break closing every row but the clip's last. Break tokens are ordinary embedded tokens.
    """

    design = "the running index over media rows in raster order, a break token after each row but the last"
    allocation = "1D: every pair on the one index"
    source = "Pixtral 12B (Mistral AI 2024, arXiv 2410.07073)"
    row_breaks = True
    transfer_rule = None  # rows are W + 1 ids apart: raster order with a stride that changes with the width

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        breaks = input_ids == IMAGE_BREAK_ID
        if attention_mask is not None:
            breaks &= attention_mask.bool()
        grid = torch.as_tensor(grid_thw if grid_thw is not None else [], device=input_ids.device).long().view(-1, 3)
        expected = int((grid[:, 0] * (grid[:, 1] // self.merge)).sum()) - len(grid)  # rows, less one per block
        if int(breaks.sum()) != expected:
            raise ValueError(f"position_scheme='pixtral' reads a break token after every media row but a block's "
                             f"last: input_ids hold {int(breaks.sum())}, the media grids {grid.tolist()} need "
                             f"{expected} (lay blocks out with row_breaks, as CaptionCollator and image_prompts do)")
        return super().position_ids(input_ids, grid_thw, attention_mask, clip, second_per_grid_t)
