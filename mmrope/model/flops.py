"""What a model costs: parameters, and training FLOPs per token for MFU."""

from __future__ import annotations

from torch import nn

from mmrope.model.config import CaptionerConfig


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
    patches = v.patch_grid_side ** 2
    encoder = (6 * patches * weights["per_patch"] + 6 * v.merged_grid_side**2 * weights["per_merged"]
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
