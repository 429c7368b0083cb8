"""Blocks the towers share: multi-head attention with rotary positions and GQA, and the MLPs and norm.

Einstein legend: b batch, n query tokens, s key tokens, h query heads, g key/value heads, d head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmrope.model.rotary_apply import RotaryApply, reference


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), as Llama uses it; statistics in float32 so bf16 activations stay stable."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class Mlp(nn.Module):
    """The ViT MLP, fc1 -> GELU -> fc2, with timm's names (timm's own adds dropout and norm slots we do not use)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): fc2(silu(gate) * up), gate and up from one fused ``fc1`` as timm's GluMlp does."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


class Attention(nn.Module):
    """Self-attention with rotary q/k and grouped-query heads (``num_kv_heads`` < ``num_heads``), through SDPA.

    ``rope`` is a ``(cos, sin)`` half table any :mod:`mmrope.model.rope` module returns; ``rotary`` is the apply
    chosen at build (:func:`mmrope.model.rotary_apply.select_rotary_apply`). A table with one head per key/value
    head, (b, g, n, k) as MHRoPE gives, turns k as it is and each query head by its group's table, the one of the
    keys the repeat below hands it (:func:`mmrope.model.rope.apply_rotary` repeats the table; the Triton kernel
    declines such tables). ``kv_cache`` (text decoding) stores this call's keys and values at ``cache_index`` and
    attends over everything it holds. ``need_weights`` returns the attention weights (b, h, n, s) too, from an
    explicit softmax(q·kᵀ/√d + mask) on the same q, k and v: SDPA never hands them out, and the attention maps must
    come from this code path, not a copy of it.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, qkv_bias: bool = False,
                 rotary: RotaryApply = reference):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = dim // num_heads
        self.rotary = rotary
        self.qkv = nn.Linear(dim, (num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * self.head_dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False, kv_cache=None,
                cache_index: int = 0, need_weights: bool = False):
        q, k, v = self.qkv(x).split([self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2, -1)
        q = rearrange(q, "b n (h d) -> b h n d", d=self.head_dim)
        k, v = (rearrange(t, "b n (g d) -> b g n d", d=self.head_dim) for t in (k, v))
        if rope is not None:
            q, k = self.rotary(q, k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v, cache_index)  # (b, g, s, d): every slot the cache holds
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)  # (b, h, s, d)
        if need_weights:
            out, weights = explicit_attention(q, k, v, attn_mask, is_causal)
            return self.proj(rearrange(out, "b h n d -> b n (h d)")), weights
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """What SDPA computes, written out: softmax(q·kᵀ/√d + mask)·v -> (out (b, h, n, d), weights (b, h, n, s)).
    ``attn_mask`` as SDPA takes it: boolean (True = attend) or added to the scores."""
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])  # (b, h, n, s)
    n, s = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(~torch.ones(n, s, dtype=torch.bool, device=q.device).tril(), -math.inf)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(-1)
    return weights.to(v.dtype) @ v, weights
