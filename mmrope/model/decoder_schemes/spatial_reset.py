"""Spatial reset: a media block's h and w ids are its own grid coordinates, from 0; its t ids go on with the text.

The position design of MRoPE-I and MHRoPE (Huang et al., "Revisiting Multimodal Positional Encoding in
Vision-Language Models", arXiv 2510.23095), of IL-RoPE (Mogao, arXiv 2505.05472) and Omni-RoPE (OmniGen2, arXiv
2506.18871), as the paper's reference collection JJJYmmm/Multimodal-RoPEs implements it (``pos_design/mrope_i.py``
with ``spatial_reset=True``, ``pos_design/omnirope.py``, which ``ilrope.py`` calls). A block of decoder grid
(T, H, W) whose first token would be text id s gives its token (t, i, j) the ids (s + t, i, j), and the text after it
(the vision end first) continues at s + max(T, H, W): where M-RoPE continues too, since M-RoPE's block spans
s .. s + max(T - 1, H - 1, W - 1). The reference writes this end rule out for MRoPE-I (the vision end token takes
s + the block's largest local id + 1, "to avoid too narrow stride") and as ``shift += max(t_extent, h, w)`` for
Omni-RoPE; both give the same ids. So the t row and the text are M-RoPE's; only media h and w differ. Example, merge
2, image grid [1, 4, 6] (decoder grid 1 x 2 x 3), as the reference gives it::

    tokens  x  x  x  vs  img img img img img img  ve  x  x
    t       0  1  2  3   4   4   4   4   4   4    7   8  9
    h       0  1  2  3   0   0   0   1   1   1    7   8  9
    w       0  1  2  3   0   1   2   0   1   2    7   8  9        rope_delta = 9 + 1 - 13 = -3

A clip is one block (T > 1), as in Qwen2/2.5-VL layouts: the reference splits clips into one-frame blocks only for
Qwen3-VL's timestamped frames, and says to drop that split otherwise. With ``tokens_per_second`` a clip's t offset is
floor(t * seconds per temporal patch * tokens_per_second), M-RoPE's rule, and T above is the largest offset + 1:
the reference's ``temporal_stride`` multiplies t the same way (MRoPE-I floors it when it stores the ids; Omni-RoPE
keeps the fraction, which we floor, so that ids stay whole and decoding continues them exactly).

Einstein legend: b batch, g key/value heads, n tokens, k rotary pairs.
"""

from __future__ import annotations

import torch

from mmrope.model.decoder_schemes.base import register_scheme
from mmrope.model.decoder_schemes.mrope import MRoPE
from mmrope.model.position_ids import media_tokens, real_token_mask
from mmrope.model.rope import rotary_dtype
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID


class SpatialReset(MRoPE):
    """M-RoPE's ids with each media token's h and w replaced by (i, j), its place on its own block's grid. The shared
    position design of the schemes below (not registered itself: they add the frequency allocation)."""

    design = "(s+t, i, j) per media token: h, w local to the block; text continues after s + max(T, H, W)"

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        position_ids, rope_deltas = super().position_ids(input_ids, grid_thw, attention_mask, clip, second_per_grid_t)
        media = media_tokens(input_ids, grid_thw, attention_mask, token_ids=(IMAGE_TOKEN_ID, VIDEO_TOKEN_ID),
                             spatial_merge_size=self.merge)  # images and clips, in order of appearance
        if media is not None:
            n = input_ids.shape[1]
            position_ids[1:, media.where // n, media.where % n] = media.thw[1:]  # local (i, j)
        return position_ids, rope_deltas


@register_scheme("mrope_i")
class MRoPEInterleave(SpatialReset):
    """MRoPE-Interleave with spatial reset, the MRoPE-I paper's proposal: spatial-reset ids (module docstring) and the
    rotary pairs cycling t, h, w, t, h, w, ... (``text.mrope_section`` pairs per axis, Qwen3-VL's interleave), so
    every axis gets fast and slow pairs. On text alone it is 1D RoPE."""

    allocation = "interleaved: pairs cycle t, h, w"
    source = "MRoPE-I, Huang et al. (arXiv 2510.23095)"
    interleaved = True


def head_section(num_kv_heads: int) -> list[int]:
    """Key/value heads per axis (t, h, w) for MHRoPE: as even as possible; of g = 3q + r heads, r = 2 spare heads go
    to h and w ([2, 3, 3] of 8, the reference's default), r = 1 to t, so that h and w always get the same number."""
    q, r = divmod(num_kv_heads, 3)
    return [q + (r == 1), q + (r == 2), q + (r == 2)]


@register_scheme("mhrope")
class MultiHeadRoPE(SpatialReset):
    """Multi-Head RoPE (the MRoPE-I paper's other proposal): spatial-reset ids (module docstring), and whole key/value
    heads per axis, each turning all its rotary pairs (the full spectrum theta^(-2k/d)) with its one axis.

    Heads go to t, h, w in that order (the reference's ``freq_allocation/mhrope.py``), by :func:`head_section`: of
    g = text.num_kv_heads heads, q = g // 3 each, and when g is not divisible by 3 the spare heads go to h and w if
    there are two ([2, 3, 3] of 8, the reference's default ``mrope_section``), to t if there is one ([2, 1, 1] of 4).
    Every head gets an axis, so none is NoPE (the reference leaves heads beyond its section unrotated). Query heads
    share their group's table (the reference's ``apply_multihead_rotary_pos_emb``): the tables are (b, g, n, k), and
    :class:`mmrope.model.layers.Attention` repeats them over each group of query heads, as it repeats k and v. Needs
    g >= 3; ``text.mrope_section`` is not used.
    """

    allocation = "head-wise: whole key/value heads per axis, each with the full spectrum"
    source = "MHRoPE, Huang et al. (arXiv 2510.23095)"

    def __init__(self, config):
        super().__init__(config)
        section = head_section(config.text.num_kv_heads)
        self.register_buffer("head_axis", torch.repeat_interleave(torch.arange(3), torch.tensor(section)),
                             persistent=False)  # (g,): 0 t, 1 h, 2 w

    @classmethod
    def check(cls, config) -> None:
        if config.text.num_kv_heads < 3:
            raise ValueError(f"text.num_kv_heads={config.text.num_kv_heads} cannot hold position_scheme='mhrope': it "
                             "gives t, h and w whole key/value heads, expected at least 3")

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Ids (3, b, n) -> angles (b, g, n, k): key/value head g turns pair k by its axis' id times theta^(-2k/d)."""
        if position_ids.ndim != 3 or position_ids.shape[0] != 3:
            raise ValueError(f"MHRoPE position ids have shape {tuple(position_ids.shape)}: expected (3, batch, seq)")
        inv_freq = self.rope.inv_freq
        dtype = rotary_dtype(position_ids.dtype, inv_freq.dtype)
        ids = position_ids.to(dtype).index_select(0, self.head_axis).transpose(0, 1)  # (b, g, n)
        return ids.unsqueeze(-1) * inv_freq.to(dtype)

    def pair_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(radians per unit of id of each pair (k,), the axis each pair reads in each key/value head (g, k)): every
        pair of a head reads that head's axis."""
        inv_freq = self.rope.inv_freq.double()
        return inv_freq, self.head_axis[:, None].expand(-1, len(inv_freq))


@register_scheme("il_rope")
class ILRoPE(SpatialReset):
    """IL-RoPE (Mogao): spatial-reset media ids (module docstring), text on t alone, interleaved pairs.

    Text tokens (vision start and end included) get (p, 0, 0): p advances as in the other spatial-reset schemes, and
    h and w stay 0, so text turns only its t pairs. Media tokens get (s + t, i, j) and the text after a block
    continues at s + max(T, H, W), the reference's layout (``pos_design/ilrope.py`` is ``omnirope.py``). Allocation
    as MRoPE-I: pairs cycle t, h, w. Example, merge 2, image grid [1, 4, 6]::

        tokens  x  x  x  vs  img img img img img img  ve  x  x
        t       0  1  2  3   4   4   4   4   4   4    7   8  9
        h       0  0  0  0   0   0   0   1   1   1    0   0  0
        w       0  0  0  0   0   1   2   0   1   2    0   0  0        rope_delta = -3, next token (10, 0, 0)

    The reference's code gives text t = h = w (its documentation says text spatial axes reset to zero); with that
    rule this scheme would equal ``mrope_i`` id for id, and h = w = 0 is the distinction this project's scheme table
    draws (text advances on t only).
    """

    allocation = "interleaved: pairs cycle t, h, w"
    source = "IL-RoPE, Mogao (arXiv 2505.05472)"
    interleaved = True
    design = "(s+t, i, j) per media token, h, w local; text (p, 0, 0), p continuing after s + max(T, H, W)"

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        position_ids, rope_deltas = super().position_ids(input_ids, grid_thw, attention_mask, clip, second_per_grid_t)
        text = (input_ids != IMAGE_TOKEN_ID) & (input_ids != VIDEO_TOKEN_ID) & real_token_mask(
            input_ids, attention_mask)
        position_ids[1:].masked_fill_(text, 0)
        return position_ids, rope_deltas

    def decode_position_ids(self, cache_index, rope_deltas, length=1):
        t = super().decode_position_ids(cache_index, rope_deltas, length)[:1]  # (1, b, length)
        return torch.cat((t, torch.zeros_like(t), torch.zeros_like(t)))  # text: h = w = 0


@register_scheme("omni_rope")
class OmniRoPE(ILRoPE):
    """Omni-RoPE (OmniGen2): IL-RoPE's ids (a block's t id fixed at its shift s, its h and w local; text (p, 0, 0);
    ``shift += max(t_extent, H, W)``) with Qwen2-VL's chunked allocation (contiguous t, h, w sections, t on the
    fastest pairs, ``text.mrope_section``). Text h = w = 0 is the description of the project's scheme table and of the
    reference collection's documentation ("text spatial axes reset to zero"); the collection's ``omnirope.py`` code
    gives text t = h = w, which would make these ids ``mrope_i``'s: the two differ there, and this follows the
    description."""

    allocation = "chunked: t, h, w sections, fastest first"
    source = "Omni-RoPE, OmniGen2 (arXiv 2506.18871)"
    interleaved = False
