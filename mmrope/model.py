"""The captioner: ViT encoder -> image tokens spliced into the text sequence -> RoPE decoder, joined by M-RoPE.

Per sample the decoder reads ``[vision_start, image tokens ..., vision_end, caption tokens ..., eos]``. The merger
projects the image tokens to the decoder's width; they replace the ``IMAGE_TOKEN_ID`` slots in batch order.
``position_scheme`` decides the joint positions, computed once per forward:

    mrope              (t, h, w) ids from get_rope_index: an image token at decoder cell (i, j) of a block that
                       starts at s gets (s, s + i, s + j); text continues after the block (Qwen2-VL)
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
from mmrope.generation import generate
from mmrope.positions import flat_position_ids, get_rope_index
from mmrope.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_ID
from mmrope.text import TextDecoder
from mmrope.vision import VisionEncoder

Images = Sequence[torch.Tensor] | torch.Tensor


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

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (b, n, c) with the image slots replaced by ``image_tokens`` (sum N_i, c), in order."""
        x = self.text.embed(input_ids)
        is_image = input_ids == IMAGE_TOKEN_ID
        if (slots := int(is_image.sum())) != image_tokens.shape[0]:
            raise ValueError(f"input_ids hold {slots} image tokens but the images give "
                             f"{image_tokens.shape[0]}: expected one slot per merged patch")
        return x.masked_scatter(is_image.unsqueeze(-1), image_tokens.to(x.dtype))

    def position_ids(self, input_ids: torch.Tensor, grid_thw: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h, w) ids (3, b, n) and rope deltas (b, 1) under ``config.position_scheme``."""
        fn = flat_position_ids if self.config.position_scheme == "flat" else get_rope_index
        return fn(input_ids, grid_thw, attention_mask=attention_mask, image_token_id=IMAGE_TOKEN_ID,
                  spatial_merge_size=self.config.vision.spatial_merge_size)

    def forward(self, images: Images, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> CaptionerOutput:
        """images: list of (3, H_i, W_i) or (b, 3, H, W); input_ids, attention_mask, labels (b, n).

        logits[:, i] predicts token i + 1, so the loss compares logits[:, :-1] with labels[:, 1:]; it is summed over
        the targets and divided by their number (at least 1), so a batch without targets gives 0, not NaN.
        """
        image_tokens, grid_thw = self.vision(images)
        x = self.embed(input_ids, image_tokens)
        position_ids, _ = self.position_ids(input_ids, grid_thw, attention_mask)
        logits = self.text(x, position_ids, attention_mask)
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            loss = loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
        return CaptionerOutput(logits, loss)

    def generate(self, images: Images, max_new_tokens: int = 32, strategy: str = "greedy", num_beams: int = 4,
                 length_penalty: float = 1.0, temperature: float = 1.0, top_p: float = 1.0, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Caption each image -> one 1-D tensor of new token ids per image, without the final EOS.

        See :func:`mmrope.generation.generate` for the strategies.
        """
        return generate(self, images, max_new_tokens=max_new_tokens, strategy=strategy, num_beams=num_beams,
                        length_penalty=length_penalty, temperature=temperature, top_p=top_p, use_cache=use_cache,
                        generator=generator)


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
                  + 3 * t.dim * t.hidden_dim)  # qkv + proj, SwiGLU's fused fc1 (gate, up) + fc2
    return {
        "per_patch": v.in_channels * v.patch_size**2 * v.dim + v.depth * vision_block,
        "per_merged": (v.dim * m2) ** 2 + v.dim * m2 * t.dim,
        "per_token": t.depth * text_block + t.vocab_size * t.dim,  # + the output head
    }
