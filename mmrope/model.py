"""The captioner: ViT encoder -> image tokens spliced into the text sequence -> RoPE decoder, joined by M-RoPE.

Per sample the decoder reads ``[vision_start, image tokens ..., vision_end, caption tokens ..., eos]``, with one such
block per image or clip of the sample. The merger projects the encoder's tokens to the decoder's width; they replace
the ``IMAGE_TOKEN_ID`` slots (images) and ``VIDEO_TOKEN_ID`` slots (clips) in order of appearance over the batch.
``position_scheme`` decides the joint positions, computed once per forward:

    mrope              (t, h, w) ids from get_rope_index: a token at decoder cell (t, i, j) of a block that
                       starts at s gets (s + t, s + i, s + j); text continues after the block's largest id + 1
                       (Qwen2-VL; with ``tokens_per_second``, a clip's t is its time, as Qwen2.5-VL)
    mrope_interleaved  the same ids, rotary pairs cycling t, h, w (Qwen3-VL)
    flat               the running index on all three rows: 1D RoPE over the flattened sequence

Einstein legend: b batch, n tokens, c decoder dim, v vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmrope.config import CaptionerConfig
from mmrope.generation import Prompt, generate
from mmrope.positions import flat_position_ids, get_rope_index
from mmrope.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID
from mmrope.text import TextDecoder, is_right_padded
from mmrope.vision import VisionEncoder, is_clip

Images = Sequence[torch.Tensor] | torch.Tensor  # images (3, H, W) and clips (T, 3, H, W), or a (b, 3, H, W) batch


class Layout(NamedTuple):
    """What the forward needs from a batch's token layout, which depends on token ids and media sizes alone."""

    position_ids: torch.Tensor  # (3, b, n) (t, h, w) ids
    attention_mask: torch.Tensor | None  # (b, n); None where causal attention alone is exact (right padding)
    media_slots: torch.Tensor | None = None  # (sum N_i,) flat indices into (b * n) of the media slots, in order


class CaptionerOutput(NamedTuple):
    logits: torch.Tensor  # (b, n, v)
    loss: torch.Tensor | None  # mean over caption targets; 0 when there is none


class Captioner(nn.Module):
    """ViT encoder (``vision``) and text decoder (``text``); plain PyTorch, so any training loop can hold it."""

    def __init__(self, config: CaptionerConfig | None = None):
        super().__init__()
        self.config = config = config or CaptionerConfig()
        self.vision = VisionEncoder(config.vision, out_dim=config.text.dim)
        self.text = TextDecoder(config.text, interleaved=config.position_scheme == "mrope_interleaved")

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
        if attention_mask is not None and is_right_padded(attention_mask):
            attention_mask = None  # so that SDPA may take its flash kernel
        return Layout(position_ids, attention_mask, slots)

    def position_ids(self, input_ids: torch.Tensor, grid_thw: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, clip: torch.Tensor | None = None,
                     second_per_grid_t: Sequence[float] | torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h, w) ids (3, b, n) and rope deltas (b, 1) under ``config.position_scheme``. ``grid_thw`` (num_media,
        3) of all media in order; ``clip`` (num_media,) marks the clips (default: none); ``second_per_grid_t`` (one
        per clip: temporal_patch_size / fps) is needed when ``config.tokens_per_second`` is set."""
        if self.config.position_scheme == "flat":
            return flat_position_ids(input_ids, attention_mask=attention_mask)
        clip = torch.zeros(len(grid_thw), dtype=torch.bool) if clip is None else clip.to(grid_thw.device)
        time_scale = {}
        if self.config.tokens_per_second is not None and bool(clip.any()):
            if second_per_grid_t is None or len(second_per_grid_t) != int(clip.sum()):
                raise ValueError(f"tokens_per_second={self.config.tokens_per_second} scales clip time: expected "
                                 f"second_per_grid_t (temporal_patch_size / fps) for each of the {int(clip.sum())} "
                                 f"clips, got {second_per_grid_t!r}")
            time_scale = {"second_per_grid_t": torch.as_tensor(second_per_grid_t, dtype=torch.float64),
                          "tokens_per_second": self.config.tokens_per_second}
        return get_rope_index(input_ids, grid_thw[~clip], grid_thw[clip], attention_mask,
                              image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                              spatial_merge_size=self.config.vision.spatial_merge_size, **time_scale)

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
            layout = self.layout(input_ids, grid_thw, attention_mask, is_clip(images), second_per_grid_t)
        x = self.embed(input_ids, media_tokens, layout.media_slots)
        logits = self.text(x, layout.position_ids, layout.attention_mask)
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
        return CaptionerOutput(logits, loss)

    def generate(self, images: Sequence[Prompt] | torch.Tensor, max_new_tokens: int = 32, strategy: str = "greedy",
                 num_beams: int = 4, length_penalty: float = 1.0, temperature: float = 1.0, top_p: float = 1.0,
                 use_cache: bool = True, generator: torch.Generator | None = None,
                 second_per_grid_t: Sequence[float] | None = None) -> list[torch.Tensor]:
        """Caption each prompt (an image, a clip, or a list of them) -> one 1-D tensor of new token ids per prompt,
        without the final EOS. See :func:`mmrope.generation.generate` for the prompts and strategies.
        """
        return generate(self, images, max_new_tokens=max_new_tokens, strategy=strategy, num_beams=num_beams,
                        length_penalty=length_penalty, temperature=temperature, top_p=top_p, use_cache=use_cache,
                        generator=generator, second_per_grid_t=second_per_grid_t)


def _check_slots(slots: int, media_tokens: int) -> None:
    if slots != media_tokens:
        raise ValueError(f"input_ids hold {slots} image and video tokens but the images and clips give "
                         f"{media_tokens}: expected one slot per merged patch")


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count; tied weights count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(config: CaptionerConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per joint-sequence token, for samples of ``seq_len`` tokens, each with
    one image of ``config.vision.image_size``.

    PaLM's estimate (Chowdhery et al. 2022, appendix B): 6 FLOPs per matmul weight for every token that passes
    through it (2 forward, 4 backward), plus 6 * 2 * depth * dim * context for the attention scores and the
    weighted values (counted over the full context, as PaLM does, not halved for causality). The encoder's work on
    an image's P patches (context P) is spread over the sample's ``seq_len`` tokens. Embedding lookups are free;
    the tied output head is a matmul and counts. :func:`matmul_weights` gives the weight counts.
    """
    v, t = config.vision, config.text
    weights = matmul_weights(config)
    patches = (v.image_size // v.patch_size) ** 2
    encoder = (6 * patches * weights["per_patch"] + 6 * patches // v.spatial_merge_size**2 * weights["per_merged"]
               + 12 * v.depth * v.dim * patches**2)
    decoder = 6 * seq_len * weights["per_token"] + 12 * t.depth * t.num_heads * t.head_dim * seq_len**2
    return (encoder + decoder) / seq_len


def matmul_weights(config: CaptionerConfig) -> dict[str, int]:
    """Weights of the linear maps (and the patch conv) each encoder patch, merged patch and decoder token meets."""
    v, t = config.vision, config.text
    m2 = v.spatial_merge_size**2
    vision_block = 4 * v.dim**2 + 2 * v.dim * int(v.dim * v.mlp_ratio)  # qkv + proj, fc1 + fc2
    text_block = (t.dim * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim + t.num_heads * t.head_dim * t.dim
                  + 3 * t.dim * t.mlp_hidden_dim)  # qkv + proj, SwiGLU's fused fc1 (gate, up) + fc2
    return {
        "per_patch": v.in_channels * v.patch_size**2 * v.dim + v.depth * vision_block,
        "per_merged": (v.dim * m2) ** 2 + v.dim * m2 * t.dim,
        "per_token": t.depth * text_block + t.vocab_size * t.dim,  # + the output head
    }
