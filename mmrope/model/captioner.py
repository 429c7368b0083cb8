"""The captioner: ViT encoder -> image tokens spliced into the text sequence -> RoPE decoder, joined by M-RoPE.

Per sample the decoder reads ``[vision_start, image tokens ..., vision_end, caption tokens ..., eos]``, with one such
block per image or clip of the sample. The merger projects the encoder's tokens to the decoder's width; they replace
the ``IMAGE_TOKEN_ID`` slots (images) and ``VIDEO_TOKEN_ID`` slots (clips) in order of appearance over the batch.
Break tokens that close media rows under a scheme that reads them (Pixtral's) are ordinary embedded tokens, not slots.
``position_scheme`` (:mod:`mmrope.model.decoder_schemes`) gives the joint sequence its (t, h, w) ids, computed once
per forward, and the decoder its rotary tables.

Einstein legend: b batch, n tokens, c decoder dim, v vocab.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmrope.model.config import CaptionerConfig
from mmrope.model.decoder_schemes import AXIS_NAMES, SCHEMES, DecoderScheme, still_axes
from mmrope.model.generation import Prompt, generate
from mmrope.model.layers import Attention
from mmrope.model.rotary_apply import ROTARY_APPLIES, select_rotary_apply
from mmrope.model.text import TextDecoder, is_right_padded
from mmrope.model.tokens import IGNORE_INDEX, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID
from mmrope.model.vision import VisionEncoder, clip_mask

log = logging.getLogger("mmrope")
Images = Sequence[torch.Tensor] | torch.Tensor  # images (3, H, W) and clips (T, 3, H, W), or a (b, 3, H, W) batch


class Layout(NamedTuple):
    """What the forward needs from a batch's token layout, which depends on token ids and media sizes alone."""

    position_ids: torch.Tensor  # (3, b, n) (t, h, w) ids
    attention_mask: torch.Tensor | None  # (b, n); None where causal attention alone is exact (right padding)
    media_slots: torch.Tensor | None = None  # (sum N_i,) flat indices into (b * n) of the media slots, in order
    groups: torch.Tensor | None = None  # (b, n) tokens that attend to each other both ways (the scheme's); None: causal


class CaptionerOutput(NamedTuple):
    logits: torch.Tensor  # (b, n, v)
    loss: torch.Tensor | None  # mean over caption targets; 0 when there is none


class Captioner(nn.Module):
    """ViT encoder (``vision``) and text decoder (``text``); plain PyTorch, so any training loop can hold it."""

    def __init__(self, config: CaptionerConfig | None = None):
        super().__init__()
        self.config = config = config or CaptionerConfig()
        rotary = select_rotary_apply(config.rotary_apply)
        self.vision = VisionEncoder(config.vision, out_dim=config.text.dim, rotary=rotary)
        self.text = TextDecoder(config.text, SCHEMES[config.position_scheme](config), rotary)
        warn_still_axes(config, self.scheme)

    @property
    def scheme(self) -> DecoderScheme:
        """The decoder's position scheme: its ids, their continuation while decoding, and its rotary tables."""
        return self.text.positions

    def embed(self, input_ids: torch.Tensor, media_tokens: torch.Tensor,
              media_slots: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (b, n, c) with the image and video slots replaced by ``media_tokens`` (sum N_i, c), in
        order of appearance. ``media_slots``: the slots' flat indices from :meth:`layout` (which checked them), so
        the placement is an index copy whose backward is an index select; without them the slots are counted (a
        host sync) and filled by a masked scatter, whose backward waits on the GPU (it counts the mask) and cannot
        be captured in a CUDA graph."""
        x = self.text.embed(input_ids)
        if media_slots is not None:
            return x.flatten(0, 1).index_copy(0, media_slots, media_tokens.to(x.dtype)).view_as(x)
        is_media = (input_ids == IMAGE_TOKEN_ID) | (input_ids == VIDEO_TOKEN_ID)
        _check_slots(int(is_media.sum()), media_tokens.shape[0])
        return x.masked_scatter(is_media.unsqueeze(-1), media_tokens.to(x.dtype))

    def layout(self, input_ids: torch.Tensor, grid_thw: torch.Tensor, attention_mask: torch.Tensor | None = None,
               clip: torch.Tensor | None = None, second_per_grid_t: Sequence[float] | torch.Tensor | None = None
               ) -> Layout:
        """Positions, the mask and the media slots the forward needs, from token ids and media grids alone (arguments as
        :meth:`position_ids`), after checking that the media slots match the media. :meth:`forward` calls it
        unless given one; the training module calls it on the host, before a batch moves to the GPU, because
        these are data-dependent computations: on the GPU each would stop the host until the GPU caught up, and
        break a compiled model's graph."""
        merge = self.config.vision.spatial_merge_size
        slots = ((input_ids == IMAGE_TOKEN_ID) | (input_ids == VIDEO_TOKEN_ID)).flatten().nonzero().squeeze(1)
        _check_slots(len(slots), int(grid_thw.prod(-1).sum()) // merge**2)
        position_ids, _ = self.position_ids(input_ids, grid_thw, attention_mask, clip, second_per_grid_t)
        groups = self.scheme.attention_groups(input_ids, attention_mask)
        if attention_mask is not None and is_right_padded(attention_mask):
            attention_mask = None  # so that SDPA may take its flash kernel
        return Layout(position_ids, attention_mask, slots, groups)

    def position_ids(self, input_ids: torch.Tensor, grid_thw: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, clip: torch.Tensor | None = None,
                     second_per_grid_t: Sequence[float] | torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h, w) ids (3, b, n) and rope deltas (b, 1) under ``config.position_scheme``. ``grid_thw`` (num_media,
        3) of all media in order; ``clip`` (num_media,) marks the clips (default: none); ``second_per_grid_t`` (one
        per clip: temporal_patch_size / fps) is needed when ``config.tokens_per_second`` is set."""
        return self.scheme.position_ids(input_ids, grid_thw, attention_mask, clip, second_per_grid_t)

    def forward(self, images: Images, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, second_per_grid_t: Sequence[float] | None = None,
                layout: Layout | None = None) -> CaptionerOutput:
        """images: list of images (3, H_i, W_i) and clips (T_i, 3, H_i, W_i) in order of appearance, or (b, 3, H,
        W); input_ids, attention_mask, labels (b, n); ``second_per_grid_t``: see :meth:`position_ids`; ``layout``:
        :meth:`layout` of this batch, computed beforehand (then ``attention_mask`` and ``second_per_grid_t`` are
        not read), or None to compute it here.

        logits[:, i] predicts token i + 1, so the loss compares logits[:, :-1] with labels[:, 1:]; it is summed over
        the targets and divided by their number (at least 1), so a batch without targets gives 0, not NaN.
        """
        media_tokens, grid_thw = self.vision(images)
        if layout is None:
            layout = self.layout(input_ids, grid_thw, attention_mask, clip_mask(images), second_per_grid_t)
        x = self.embed(input_ids, media_tokens, layout.media_slots)
        logits = self.text(x, layout.position_ids, layout.attention_mask, groups=layout.groups)
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
        return CaptionerOutput(logits, loss)

    def generate(self, images: Sequence[Prompt] | torch.Tensor, **options) -> list[torch.Tensor]:
        """Caption each prompt (an image, a clip, or a list of them) -> one 1-D tensor of new token ids per prompt,
        without the final EOS. ``options``: those of :func:`mmrope.model.generation.generate` (``max_new_tokens``,
        ``strategy`` "greedy" | "beam" | "sample", ``num_beams``, ``temperature``, ``top_p``, ...)."""
        return generate(self, images, **options)

    def use_rotary_apply(self, rotary_apply: str) -> None:
        """Rotate q and k with ``rotary_apply``'s apply from now on ("auto", "fused" or "reference", as
        ``config.rotary_apply`` chose at build) in every attention layer that uses the build's apply; an encoding
        with a rotation of its own keeps it. The config keeps its value, so a checkpoint still records what the run
        asked for. ``torch.func`` transforms need "reference": they cannot see inside the Triton kernel's
        ``autograd.Function``, and a compiled step fuses the plain maths anyway."""
        rotary = select_rotary_apply(rotary_apply)
        for module in self.modules():
            if isinstance(module, Attention) and module.rotary in ROTARY_APPLIES.values():
                module.rotary = rotary


def warn_still_axes(config: CaptionerConfig, scheme: DecoderScheme) -> None:
    """One log line per axis of the training image's decoder grid that ``scheme`` turns by almost nothing from edge
    to edge (:func:`mmrope.model.decoder_schemes.base.still_axes`): such a decoder can hardly tell that axis apart."""
    if not scheme.warn_if_still:
        return
    v = config.vision
    side = v.merged_grid_side
    for axis, turn in still_axes(scheme, (1, side, side)).items():
        log.warning("position_scheme=%r turns the decoder's %s (%s axis) by at most %.2g rad across the %dx%d grid "
                    "of a %d px training image, so it can hardly tell them apart; mrope_interleaved turns every axis: "
                    "see `mmrope viz spectrum`", config.position_scheme, AXIS_NAMES[axis], axis, turn, side, side,
                    v.image_size)


def _check_slots(slots: int, media_tokens: int) -> None:
    if slots != media_tokens:
        raise ValueError(f"input_ids hold {slots} image and video tokens but the images and clips give "
                         f"{media_tokens}: expected one slot per merged patch")
