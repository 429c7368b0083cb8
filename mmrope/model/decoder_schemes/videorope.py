"""VideoRoPE and the schemes that build on it: each places media ids off M-RoPE's grid and gives the axes other shares
of the rotary pairs. VideoRoPE and HoPE (the diagonal layout: a frame's h and w ids centred on its t id), Lumos-1's
MM-RoPE (M-RoPE's grid, scaled).

All three number a media block from s, the id its first token would get if it were text, and let the text after it
continue at s + the block's advance (:class:`~mmrope.model.decoder_schemes.base.PlacedMedia`), so decoding continues
each row's running index with the base class's ``cache_index + rope_delta``. A clip is one block of T temporal patches
(Qwen2-VL's layout; the Multimodal-RoPEs collection splits clips into one-frame blocks only for Qwen3-VL's
timestamped frames, and says to drop that split otherwise). The temporal coordinate tau of a token is its temporal
patch index, or with ``tokens_per_second`` Qwen2.5-VL's absolute time floor(t * second_per_grid_t *
tokens_per_second), M-RoPE's rule. Ids are float32 and rope deltas float64, as in the references (float ids).

Einstein legend: b batch, n tokens, m media tokens, k rotary pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from mmrope.model.decoder_schemes.base import PlacedMedia, register_scheme
from mmrope.model.draws import TrainingDraws
from mmrope.model.rope import MultimodalRotaryEmbedding

if TYPE_CHECKING:
    from mmrope.model.config import CaptionerConfig

T_AXIS, H_AXIS, W_AXIS = 0, 1, 2  # rows of the (t, h, w) ids
META_COMPONENT = (T_AXIS, T_AXIS, H_AXIS, W_AXIS, H_AXIS, W_AXIS, H_AXIS, W_AXIS)  # Lumos-1's 8 pairs, 2:3:3


def low_frequency_temporal(num_pairs: int, section: Sequence[int]) -> torch.Tensor:
    """VideoRoPE's low-frequency temporal allocation (LTA), as its official code lays it out
    (``apply_m_modify_multimodal_rotary_pos_emb``): the first s_h + s_w pairs, the fastest, alternate h, w, h, w, ...
    (h on even pairs), and t takes the last s_t, the slowest. Which row each pair reads -> (k,). With d = 32 and
    section [4, 6, 6]: h w h w h w h w h w h w t t t t. The collection's ``freq_allocation/videorope.py`` differs: it
    leaves pair 0 to t and starts h at pair 1."""
    s_t, s_h, s_w = section
    k = torch.arange(num_pairs)
    axis = torch.where(k < s_h + s_w, H_AXIS + k % 2, T_AXIS)
    counts = torch.bincount(axis, minlength=3).tolist()
    if counts != list(section):
        raise ValueError(f"mrope_section={list(section)} cannot alternate h and w over the first {s_h + s_w} pairs "
                         f"(that gives (t, h, w) = {counts}): expected h to get as many pairs as w, or one more")
    return axis


def meta_component_axes(num_pairs: int) -> torch.Tensor:
    """Lumos-1's distributed allocation, as the Multimodal-RoPEs collection's ``freq_allocation/mmrope.py`` lays it
    out: pair k reads row :data:`META_COMPONENT`[k % 8], the meta component T, T, H, W, H, W, H, W repeated over the
    spectrum (a partial last component keeps the pattern), so every axis gets fast and slow pairs in the ratio 2:3:3.
    The official Lumos code repeats 16 pairs, each letter twice (T T T T H H W W H H W W H H W W)."""
    return torch.tensor(META_COMPONENT)[torch.arange(num_pairs) % len(META_COMPONENT)]


class AllocatedRotaryEmbedding(MultimodalRotaryEmbedding):
    """M-RoPE's tables (ids (3, b, n) -> (b, n, k)) for any map ``axis_of_pair`` (k,) from rotary pairs to id rows:
    pair k turns by theta^(-2k/d) times its row's id, or not at all if its row is in ``unrotated`` (frequency 0:
    NoPE, cos 1 and sin 0 whatever the id)."""

    def __init__(self, head_dim: int, theta: float, axis_of_pair: torch.Tensor, unrotated: Sequence[int] = ()):
        super().__init__(head_dim, theta, torch.bincount(axis_of_pair, minlength=3).tolist())
        self.axis_of_pair = axis_of_pair
        if unrotated:
            rotated = ~torch.isin(axis_of_pair, torch.tensor(list(unrotated)))
            self._set_inv_freq(self._inv_freq64 * rotated)


@register_scheme("videorope")
class VideoRoPE(PlacedMedia):
    """VideoRoPE: the diagonal layout (DL) with adjustable temporal spacing (ATS) and low-frequency temporal
    allocation (LTA), as the official code (Wiselnn570/VideoRoPE, ``get_t_scale_rope_index`` with scale 2.0) does it.

    A block of decoder grid (T, H, W) starting at s gives its token (tau, i, j) the ids
    (s + delta tau, s + delta tau + i - (H - 1) // 2, s + delta tau + j - (W - 1) // 2): each frame's spatial ids sit
    around its temporal id (exactly centred for odd H and W, the floor division is the reference's), on the
    diagonal t = h = w that text walks; delta = :attr:`temporal_stride`. The text after the block continues at its
    largest t + 1 = s + delta tau_max + 1, so an image (T = 1) costs one id whatever its size, its centre sitting
    where a text token would (the reference's rule for still images: a one-frame video; the spatial ids can reach
    below s or beyond the next text id). Text is t = h = w. Ids from the official code, merge 2, image grid
    [1, 4, 6] (decoder 2 x 3) and clip grid [3, 4, 4] (decoder 3 x 2 x 2)::

        tokens  x  x  x  vs  img img img img img img  ve  x  x
        t       0  1  2  3   4   4   4   4   4   4    5   6  7
        h       0  1  2  3   4   4   4   5   5   5    5   6  7
        w       0  1  2  3   3   4   5   3   4   5    5   6  7        rope_delta = 7 + 1 - 13 = -5

        tokens  x  vs  frame 0      frame 1      frame 2      ve  x  x
        t       0  1   2  2  2  2   4  4  4  4   6  6  6  6   7   8  9
        h       0  1   2  2  3  3   4  4  5  5   6  6  7  7   7   8  9
        w       0  1   2  3  2  3   4  5  4  5   6  7  6  7   7   8  9     rope_delta = 9 + 1 - 17 = -7

    Allocation (:func:`low_frequency_temporal`): h and w alternate over the fastest s_h + s_w pairs, t takes the
    slowest s_t (``text.mrope_section``, default [k/4, 3k/8, 3k/8] as in the paper's [16, 24, 24]).
    """

    design = "diagonal: t = s + delta tau, h = t + i - (H-1)//2, w = t + j - (W-1)//2; text after at t_max + 1"
    allocation = "LTA: h, w alternating on the fastest pairs, t on the slowest"
    source = "VideoRoPE, Wei et al. (arXiv 2502.05173), official code Wiselnn570/VideoRoPE"
    transfer_rule = "centre"
    temporal_stride: ClassVar[float] = 2.0  # delta: the paper's best and the official code's value

    def __init__(self, config: CaptionerConfig):
        super().__init__(config)
        text = config.text
        self.rope = AllocatedRotaryEmbedding(text.head_dim, text.rope_theta, self.axis_of_pair(config))

    @classmethod
    def axis_of_pair(cls, config: CaptionerConfig) -> torch.Tensor:
        return low_frequency_temporal(config.text.head_dim // 2, config.text.mrope_section)

    @classmethod
    def default_section(cls, num_pairs: int) -> list[int]:
        t = num_pairs // 4
        h = (num_pairs - t + 1) // 2
        return [t, h, num_pairs - t - h]

    def temporal_strides(self, num_media: int) -> torch.Tensor:
        """The temporal spacing of each medium (num_media,), float64."""
        return torch.full((num_media,), float(self.temporal_stride), dtype=torch.float64)

    def place(self, media, clip, second_per_grid_t):
        tau, tau_max = self.temporal_index(media, clip, second_per_grid_t)
        stride = self.temporal_strides(len(media.grid)).to(media.grid.device)
        t = tau * stride[media.block]
        _, i, j = media.thw
        _, rows, cols = media.grid[media.block].unbind(-1)
        relative = torch.stack((t, t + (i - (rows - 1) // 2), t + (j - (cols - 1) // 2)))
        return relative, stride * tau_max + 1


@register_scheme("hope")
class HoPE(TrainingDraws, VideoRoPE):
    """HoPE: VideoRoPE's diagonal layout with dynamic temporal scaling (DTS) in place of the fixed spacing, and the
    hybrid frequency allocation (HFA) that leaves the slowest pairs unrotated, as the official code
    (hrlics/HoPE, ``get_dynamic_rope_index``, ``apply_hybrid_multimodal_rotary_pos_emb``) does it.

    Ids: VideoRoPE's with delta = gamma, the temporal scale of the block. In training each medium draws gamma from
    :attr:`train_scales` (the official set); in evaluation (``scheme.eval()``) every medium takes
    :attr:`eval_scale`. The official inference leaves gamma to the user (it asserts on a placeholder); 0.75 is the
    value its own long-video retrieval evaluation fixes (``vision_niah/eval_vision_niah.py``). gamma scales only
    tau, so images (T = 1) get VideoRoPE's ids in training and evaluation alike; the gamma = 0.75 clip of
    VideoRoPE's example, from the official code::

        tokens  x  vs  frame 0      frame 1                  frame 2              ve   x    x
        t       0  1   2  2  2  2   2.75 2.75 2.75 2.75      3.5 3.5 3.5 3.5      4.5  5.5  6.5
        h       0  1   2  2  3  3   2.75 2.75 3.75 3.75      3.5 3.5 4.5 4.5      4.5  5.5  6.5
        w       0  1   2  3  2  3   2.75 3.75 2.75 3.75      3.5 4.5 3.5 4.5      4.5  5.5  6.5

    Reproducible and resumable draws (:class:`mmrope.model.draws.TrainingDraws`): draw number c picks the scales of
    all the batch's media, in order of appearance; c counts the training batches whose ids were computed and is
    saved in every checkpoint, so a resumed run draws exactly the scales the uninterrupted run would. Reading the
    spectrum (:meth:`grid_turns`) uses the evaluation form and draws nothing.

    Allocation: VideoRoPE's (h, w alternating on the fastest s_h + s_w pairs), with the s_t slowest pairs, t's,
    at frequency 0 (NoPE) for every token, text included: on text alone HoPE is 1D RoPE on the fast pairs and no
    position on the slow ones. The collection reaches the same by zeroing the t ids; the t ids here stay VideoRoPE's
    (they still place h and w on the diagonal) and no pair reads them.
    """

    design = "diagonal as VideoRoPE, temporal scale gamma drawn per medium in training, fixed in evaluation"
    allocation = "HFA: h, w alternating on the fastest pairs, the slowest unrotated (NoPE)"
    source = "HoPE, Li et al. (arXiv 2505.20444), official code hrlics/HoPE"
    train_scales: ClassVar[tuple[float, ...]] = (0.5, 0.75, 1.0, 1.25, 1.5)
    eval_scale: ClassVar[float] = 0.75

    def __init__(self, config: CaptionerConfig):
        super().__init__(config)
        text = config.text
        self.rope = AllocatedRotaryEmbedding(text.head_dim, text.rope_theta, self.axis_of_pair(config),
                                             unrotated=(T_AXIS,))
        self.init_draws()

    def temporal_strides(self, num_media: int) -> torch.Tensor:
        if not self.training:
            return torch.full((num_media,), float(self.eval_scale), dtype=torch.float64)
        pick = torch.randint(len(self.train_scales), (num_media,), generator=self.next_generator())
        return torch.tensor(self.train_scales, dtype=torch.float64)[pick]

    @torch.no_grad()
    def grid_turns(self, grid: Sequence[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        training = self.training
        self.train(False)
        try:
            return super().grid_turns(grid)
        finally:
            self.train(training)


@register_scheme("lumos_mmrope")
class LumosMMRoPE(PlacedMedia):
    """Lumos-1's MM-RoPE: M-RoPE's ids with each axis' in-block offsets scaled, and the distributed 2:3:3
    allocation, as the Multimodal-RoPEs collection's ``mmrope.py`` does it.

    A block of decoder grid (T, H, W) starting at s gives its token (tau, i, j) the ids
    (s + a_t tau, s + a_h i, s + a_w j), and the text after it continues at its largest id + 1 =
    s + max(a_t tau_max, a_h (H - 1), a_w (W - 1)) + 1; text is t = h = w, so on text alone this is 1D RoPE. With
    a = (1, 1, 1) the ids are M-RoPE's. Lumos-1 scales a latent token's coordinates by its tokenizer's compression
    along each axis (Cosmos DV4x8x8: (4, 8, 8)), so that ids count frames and pixels; our tokenizer is the patch
    merger, so a = (temporal_patch_size, patch_size * spatial_merge_size, the same) from the config: (1, 16, 16) by
    default. With ``tokens_per_second`` tau is already time, and a_t = 1. :attr:`position_scale` overrides a. Ids
    from the collection's code with a = (1, 16, 16), merge 2, image grid [1, 4, 6] (decoder 2 x 3)::

        tokens  x  x  x  vs  img img img img img img  ve  x   x
        t       0  1  2  3   4   4   4   4   4   4    37  38  39
        h       0  1  2  3   4   4   4   20  20  20   37  38  39
        w       0  1  2  3   4   20  36  4   20  36   37  38  39        rope_delta = 39 + 1 - 13 = 27

    Allocation (:func:`meta_component_axes`): pairs k, k + 1, ..., in components of 8 reading T, T, H, W, H, W,
    H, W; ``text.mrope_section`` must be the counts this gives ([4, 6, 6] for 16 pairs). The official Lumos code also
    lets text keep its own 1D running index rather than continue after a block; we follow the collection.
    """

    design = "M-RoPE ids with in-block offsets scaled per axis (a_t t, a_h i, a_w j); text after the largest + 1"
    allocation = "distributed 2:3:3: pairs cycle T, T, H, W, H, W, H, W"
    source = "Lumos-1 MM-RoPE, Yuan et al. (arXiv 2507.08801), as the Multimodal-RoPEs collection implements it"
    position_scale: ClassVar[tuple[float, float, float] | None] = None  # a = (a_t, a_h, a_w); None: from the config

    def __init__(self, config: CaptionerConfig):
        super().__init__(config)
        text, vision = config.text, config.vision
        pixels = vision.merged_patch_size
        frames = 1 if config.tokens_per_second is not None else vision.temporal_patch_size
        self.scale = tuple(self.position_scale or (frames, pixels, pixels))
        self.rope = AllocatedRotaryEmbedding(text.head_dim, text.rope_theta, self.axis_of_pair(config))

    @classmethod
    def default_section(cls, num_pairs: int) -> list[int]:
        return torch.bincount(meta_component_axes(num_pairs), minlength=3).tolist()

    @classmethod
    def axis_of_pair(cls, config: CaptionerConfig) -> torch.Tensor:
        num_pairs = config.text.head_dim // 2
        expected = cls.default_section(num_pairs)
        if config.text.mrope_section != expected:
            raise ValueError(f"its pairs cycle T, T, H, W, H, W, H, W: expected {expected} (or null)")
        return meta_component_axes(num_pairs)

    def place(self, media, clip, second_per_grid_t):
        tau, tau_max = self.temporal_index(media, clip, second_per_grid_t)
        scale = torch.tensor(self.scale, dtype=torch.float64, device=media.grid.device)[:, None]  # (3, 1)
        relative = torch.stack((tau, media.thw[1], media.thw[2])) * scale
        extent = torch.stack((tau_max, media.grid[:, 1] - 1, media.grid[:, 2] - 1)) * scale  # (3, num_media)
        return relative, extent.amax(0) + 1
