"""M-RoPE, the scheme of the Qwen-VL models: a media block's ids on its (t, h, w) grid from where the block starts,
text on the diagonal t = h = w after it; the rotary pairs in sections (Qwen2-VL) or cycling t, h, w (Qwen3-VL).

Einstein legend: b batch, n tokens.
"""

from __future__ import annotations

import torch

from mmrope.model.decoder_schemes.base import DecoderScheme, register_scheme
from mmrope.model.position_ids import get_rope_index
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID


@register_scheme("mrope")
class MRoPE(DecoderScheme):
    """Qwen2-VL's M-RoPE. A media block of decoder grid (T, H, W) starting at s gives its token (t, i, j) the ids
    (s + t, s + i, s + j); text continues after the block's largest id, with t = h = w, so on text alone it is 1D
    RoPE. Chunked allocation: t takes the first (fastest) section of pairs, h the next, w the last (slowest). With
    ``tokens_per_second`` a clip's t is its time (Qwen2.5-VL)."""

    design = "(s+t, s+i, s+j) per media token; text continues after the block's largest id"
    allocation = "chunked: t, h, w sections, fastest first"
    source = "Qwen2-VL (arXiv 2409.12191); Qwen2.5-VL's absolute time"
    transfer_rule = "corner"

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        clip = torch.zeros(len(grid_thw), dtype=torch.bool) if clip is None else clip.to(grid_thw.device)
        seconds = self.clip_seconds(clip, second_per_grid_t)
        time_scale = {} if seconds is None else {"second_per_grid_t": seconds,
                                                 "tokens_per_second": self.tokens_per_second}
        return get_rope_index(input_ids, grid_thw[~clip], grid_thw[clip], attention_mask,
                              image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                              spatial_merge_size=self.merge, **time_scale)


@register_scheme("mrope_interleaved")
class InterleavedMRoPE(MRoPE):
    """M-RoPE's ids with the rotary pairs cycling t, h, w, t, h, w, ... (Qwen3-VL), so every axis gets fast and slow
    pairs: chunked M-RoPE leaves w only the slowest ones, nearly still across a small grid."""

    design = MRoPE.design
    allocation = "interleaved: pairs cycle t, h, w"
    source = "Qwen3-VL"
    interleaved = True
