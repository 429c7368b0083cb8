"""What every decoder position scheme is: the registry :data:`SCHEMES`, the base :class:`DecoderScheme` and the
shared bases of the families (:class:`PlacedMedia`). The schemes themselves are the other modules of this package,
one per family; this module imports none of them.

A scheme is two decisions (the split the MRoPE-I paper, arXiv 2510.23095, makes): a *position design*, which ids
each token of ``[vision_start, media tokens ..., vision_end, caption ...]`` gets, and a *frequency allocation*, which
rotary pairs each id axis drives. It gives the ids of a batch and the rope deltas that continue them during cached
decoding (:meth:`DecoderScheme.position_ids`, :meth:`DecoderScheme.decode_position_ids`), and turns ids into the
half tables every attention layer applies (``forward``). :meth:`DecoderScheme.pair_frequencies` tells which axis
each pair reads and how fast it turns: the spectrum diagnostic and the build-time warning read it. Adding a scheme is
one registered class (and its tests), in this package or in a user's own file; the config, the README tables and
the ablation read :data:`SCHEMES`.

Einstein legend: b batch, n tokens, m media tokens, k rotary pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mmrope.model.position_ids import MediaTokens, decode_position_ids, media_tokens, placed_position_ids
from mmrope.model.registry import Registry
from mmrope.model.rope import MultimodalRotaryEmbedding, default_mrope_section, mrope_axis_of_pair
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, media_blocks, vision_block

if TYPE_CHECKING:
    from mmrope.model.config import CaptionerConfig

SCHEMES = Registry("position_scheme")
register_scheme = SCHEMES.register


class DecoderScheme(nn.Module):
    """What every scheme provides. Ids are (3, b, n) rows (t, h, w); a 1D scheme repeats one id on all three."""

    name: ClassVar[str]
    design: ClassVar[str] = ""  # the position design, in a few words
    allocation: ClassVar[str] = ""  # the frequency allocation, in a few words
    source: ClassVar[str] = ""
    interleaved: ClassVar[bool] = False  # rotary pairs cycle t, h, w rather than taking contiguous sections
    # each row of a media block but the last ends in a break token (Pixtral): the collator, generation's prompts and
    # every other place that lays out a block read this (:func:`mmrope.model.tokens.vision_block`'s row_length)
    row_breaks: ClassVar[bool] = False
    # the media tokens of a block attend to each other in both directions, as a prefix-LM's prefix, rather than
    # causally: their order then tells the decoder nothing (:meth:`attention_groups`)
    bidirectional_media: ClassVar[bool] = False
    # whether a media block's ids that barely turn along an axis deserve the build-time warning; a control whose
    # media ids are still on purpose says no
    warn_if_still: ClassVar[bool] = True
    # one id repeated on the three rows, so that every rotary pair reads it (1D RoPE): the rows' sections do not
    # matter, and :meth:`pair_frequencies` says so
    one_index: ClassVar[bool] = False
    # how an id learned at the training size points at another size (a rule of :mod:`mmrope.eval.transfer`: ids
    # counted from the grid's corner, its centre, or in raster order), for the ablation's "what training adds to id
    # geometry"; None where the media ids follow none of them
    transfer_rule: ClassVar[str | None] = None

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        text = config.text
        self.merge = config.vision.spatial_merge_size
        self.tokens_per_second = config.tokens_per_second
        self.rope = MultimodalRotaryEmbedding(text.head_dim, text.rope_theta, text.mrope_section, self.interleaved)

    @classmethod
    def default_section(cls, num_pairs: int) -> list[int]:
        """``text.mrope_section`` when the config leaves it None: rotary pairs per (t, h, w)."""
        return default_mrope_section(num_pairs, cls.interleaved)

    @classmethod
    def axis_of_pair(cls, config: CaptionerConfig) -> torch.Tensor:
        """Which id row (0 t, 1 h, 2 w) each rotary pair reads under ``text.mrope_section`` -> (k,); a ValueError
        saying why when the section cannot be laid out the way this scheme allocates its pairs."""
        return mrope_axis_of_pair(config.text.head_dim // 2, config.text.mrope_section, cls.interleaved)

    @classmethod
    def check(cls, config: CaptionerConfig) -> None:
        """One line naming the field when ``config`` cannot hold this scheme: by default, when its
        ``text.mrope_section`` does not fit the scheme's allocation (:meth:`axis_of_pair`)."""
        try:
            cls.axis_of_pair(config)
        except ValueError as err:
            raise ValueError(f"text.mrope_section={config.text.mrope_section} does not fit "
                             f"position_scheme={cls.name!r}: {err}") from None

    def clip_seconds(self, clip: torch.Tensor | None, second_per_grid_t: Sequence[float] | torch.Tensor | None,
                     ) -> torch.Tensor | None:
        """Seconds per temporal patch of each clip of a batch (num_clips,) float64, when ``tokens_per_second``
        makes a clip's t ids its time (Qwen2.5-VL); None when it does not, or the batch has no clip. ``clip``
        (num_media,) marks the clips; one line when ``second_per_grid_t`` does not give one value per clip."""
        if self.tokens_per_second is None or clip is None or not bool(clip.any()):
            return None
        clips = int(clip.sum())
        if second_per_grid_t is None or len(second_per_grid_t) != clips:
            raise ValueError(f"tokens_per_second={self.tokens_per_second} scales clip time: expected "
                             f"second_per_grid_t (temporal_patch_size / fps) for each of the {clips} clips, got "
                             f"{second_per_grid_t!r}")
        return torch.as_tensor(second_per_grid_t, dtype=torch.float64)

    def position_ids(self, input_ids: torch.Tensor, grid_thw: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, clip: torch.Tensor | None = None,
                     second_per_grid_t: Sequence[float] | torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (3, b, n) and rope deltas (b, 1) of a batch: ``grid_thw`` (num_media, 3) of all media in order of
        appearance, ``clip`` (num_media,) marks the clips, ``second_per_grid_t`` (one per clip) their timing."""
        raise NotImplementedError

    def attention_groups(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                         ) -> torch.Tensor | None:
        """(b, n) group ids of the tokens that attend to each other in both directions (each media block, under a
        scheme with :attr:`bidirectional_media`), 0 elsewhere; None when attention is causal throughout."""
        return media_blocks(input_ids, attention_mask) if self.bidirectional_media else None

    def decode_position_ids(self, cache_index: int | torch.Tensor, rope_deltas: torch.Tensor,
                            length: int = 1) -> torch.Tensor:
        """Ids (3, b, length) of the next tokens decoded at ``cache_index``: text continues the running index."""
        return decode_position_ids(cache_index, rope_deltas, length)

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Ids (3, b, n) -> the angle each rotary pair of each token turns by (b, n, k), or (b, heads, n, k) for a
        scheme whose heads differ."""
        return self.rope.angles(position_ids)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (3, b, n) -> half tables ``(cos, sin)`` (b, n, k), shared by every layer."""
        angles = self.angles(position_ids)
        return angles.cos(), angles.sin()

    def pair_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(radians per unit of id for each rotary pair (k,), the axis each reads (k,): 0 t, 1 h, 2 w, -1 the one
        index of a :attr:`one_index` scheme)."""
        axes = self.rope.axis_of_pair
        return self.rope.inv_freq.double(), torch.full_like(axes, -1) if self.one_index else axes

    @torch.no_grad()
    def grid_turns(self, grid: Sequence[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """How far each rotary pair turns across a media block of decoder grid ``grid`` = (t, h, w) merged tokens,
        measured on the ids this scheme gives such a block: for each axis the grid spans, (radians between
        neighbours, radians between the first and the last token along it), each (k,), the largest over the block
        (and over heads). What the decoder can tell apart along an axis is bounded by the second."""
        t, h, w = grid
        clip = t > 1
        n = t * h * w
        input_ids = torch.tensor([vision_block(n, clip, w if self.row_breaks else None)])
        grid_thw = torch.tensor([[t, h * self.merge, w * self.merge]])
        timing = [1.0] if clip and self.tokens_per_second is not None else None
        ids, _ = self.position_ids(input_ids, grid_thw, clip=torch.tensor([clip]), second_per_grid_t=timing)
        is_media = (input_ids[0] == IMAGE_TOKEN_ID) | (input_ids[0] == VIDEO_TOKEN_ID)
        angles = self.angles(ids.double())[..., is_media, :]  # (1, [heads,] n, k)
        angles = angles.reshape(-1, t, h, w, angles.shape[-1])  # (1 or heads, t, h, w, k)
        turns = {}
        for axis, dim, size in (("t", 1, t), ("h", 2, h), ("w", 3, w)):
            if size > 1:
                step = (angles.narrow(dim, 1, 1) - angles.narrow(dim, 0, 1)).abs()
                span = (angles.narrow(dim, size - 1, 1) - angles.narrow(dim, 0, 1)).abs()
                turns[axis] = (step.flatten(0, -2).amax(0), span.flatten(0, -2).amax(0))
        return turns


ALMOST_STILL = 0.1  # radians: an axis whose fastest pair turns less than this across a grid barely tells its ends apart
AXIS_NAMES = {"t": "time", "h": "rows", "w": "columns"}


def still_axes(scheme: DecoderScheme, grid: Sequence[int]) -> dict[str, float]:
    """The axes of ``grid`` along which no rotary pair of ``scheme`` turns by :data:`ALMOST_STILL` or more from one
    end to the other -> {axis: the largest turn}. The model-build warning and ``mmrope viz spectrum`` ask this."""
    return {axis: float(span.max()) for axis, (_, span) in scheme.grid_turns(grid).items()
            if float(span.max()) < ALMOST_STILL}


class PlacedMedia(DecoderScheme):
    """The base of the schemes that place each media token's ids themselves (not registered itself): a media block
    starts at s, the id its first token would get if it were text; :meth:`place` gives each of its tokens its ids
    relative to s and the block its advance, where the text after it continues relative to s
    (:func:`mmrope.model.position_ids.placed_position_ids`). Ids are float32 and rope deltas float64, so that a layout
    may use fractional ids; decoding continues each row's running index with the base class's
    ``cache_index + rope_delta``. The centred (videorope.py), ring (circle.py), fractional (flat.py: v2pe) and
    one-id (blind.py) layouts are such schemes."""

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        media = media_tokens(input_ids, grid_thw, attention_mask, token_ids=(IMAGE_TOKEN_ID, VIDEO_TOKEN_ID),
                             spatial_merge_size=self.merge)
        if media is None:
            return placed_position_ids(input_ids, None, None, None, attention_mask)
        relative, advance = self.place(media, clip, second_per_grid_t)
        return placed_position_ids(input_ids, media, relative, advance, attention_mask)

    def place(self, media: MediaTokens, clip: torch.Tensor | None,
              second_per_grid_t: Sequence[float] | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids of each media token relative to its block's s (3, m), each block's advance (num_media,)); ``clip``
        and ``second_per_grid_t`` as in :meth:`DecoderScheme.position_ids`, for a layout that reads time."""
        raise NotImplementedError

    def temporal_index(self, media: MediaTokens, clip: torch.Tensor | None,
                       second_per_grid_t: Sequence[float] | torch.Tensor | None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """tau of each media token (m,) and the largest of each block (num_media,): the temporal patch index, or
        with ``tokens_per_second`` floor(t * second_per_grid_t * tokens_per_second) for clips (an image's is 0),
        M-RoPE's rule."""
        tau, tau_max = media.thw[0], media.grid[:, 0] - 1
        seconds = self.clip_seconds(clip, second_per_grid_t)
        if seconds is None:
            return tau, tau_max
        clip = clip.to(media.grid.device)
        scale = torch.ones(len(media.grid), dtype=torch.float64, device=media.grid.device)
        scale[clip] = seconds.to(scale.device) * self.tokens_per_second
        return (tau * scale[media.block]).floor().long(), (tau_max * scale).floor().long()
