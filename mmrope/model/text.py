"""The Llama-style text decoder: RMSNorm, SwiGLU, grouped-query attention, tied embeddings, M-RoPE, a KV cache.

Positions come in explicitly as (t, h, w) ids (3, b, n), computed once by :mod:`mmrope.model.position_ids`; the rotary
tables are built once per forward and shared by every layer. On text alone (t = h = w) M-RoPE is plain 1D RoPE.

Einstein legend: b batch, n new tokens, s key slots (cache length, or n without a cache), c model dim, v vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrope.model.config import TextConfig
from mmrope.model.layers import Attention, RMSNorm, SwiGLU
from mmrope.model.rope import MultimodalRotaryEmbedding
from mmrope.model.rotary_apply import RotaryApply, reference


class KVCache:
    """Keys and values of one layer, preallocated for ``max_len`` slots on first use (gpt-fast's static cache).

    A slot is a place in the (left-padded) sequence, not a position id: positions reach the keys through RoPE
    before they are stored.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (b, g, n, d) at slots index..index+n-1 -> the whole cache (b, g, max_len, d)."""
        if self.k is None:
            b, g, _, d = k.shape
            self.k = k.new_zeros(b, g, self.max_len, d)
            self.v = v.new_zeros(b, g, self.max_len, d)
        if index + k.shape[2] > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} slots cannot hold slots up to {index + k.shape[2]}")
        self.k[:, :, index:index + k.shape[2]] = k
        self.v[:, :, index:index + v.shape[2]] = v
        return self.k, self.v

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the sequences ``rows`` (beam search): row i becomes the old row rows[i]."""
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


def attention_mask_4d(key_mask: torch.Tensor | None, n: int, s: int, cache_index: int,
                      device: torch.device, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (b or 1, 1, n, s): query i (slot cache_index + i) sees slot j <= its own where the key is real.

    A padded query also sees itself, so no row is empty (SDPA would return NaN); its output is never used.
    ``groups`` (b, n): tokens of the same group id > 0 among the n new ones also see each other whatever their
    order (a prefix-LM's prefix; the position-blind scheme's media blocks).
    """
    query_slot = torch.arange(n, device=device).unsqueeze(1) + cache_index  # (n, 1)
    key_slot = torch.arange(s, device=device)  # (s,)
    mask = (key_slot <= query_slot)[None, None]  # (1, 1, n, s)
    if key_mask is not None:
        if key_mask.shape[1] != s:
            raise ValueError(f"attention_mask covers {key_mask.shape[1]} key slots: expected {s}")
        mask = (mask & key_mask[:, None, None, :].bool()) | (key_slot == query_slot)  # (b, 1, n, s)
    if groups is not None:
        key_groups = F.pad(groups, (cache_index, s - cache_index - n))  # (b, s): the new tokens' slots
        mask = mask | ((groups[:, :, None] == key_groups[:, None, :]) & (groups[:, :, None] > 0))[:, None]
    return mask


def is_right_padded(key_mask: torch.Tensor) -> bool:
    """Whether every row is real tokens then padding (as the training collator lays batches out). Then plain causal
    attention is exact for every real token (it never reaches a later slot, and all earlier ones are real); only
    the outputs at padding slots, which nothing reads, differ from the masked ones."""
    key_mask = key_mask.bool()
    return bool((key_mask[:, 1:] <= key_mask[:, :-1]).all())


class Block(nn.Module):
    """Pre-norm Llama block, with the same names as the vision blocks."""

    def __init__(self, config: TextConfig, rotary: RotaryApply = reference):
        super().__init__()
        self.norm1 = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config.dim, config.num_heads, config.num_kv_heads, rotary=rotary)
        self.norm2 = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.mlp_hidden_dim)

    def forward(self, x, rope, attn_mask=None, is_causal=False, kv_cache=None, cache_index=0, need_weights=False):
        out = self.attn(self.norm1(x), rope, attn_mask, is_causal, kv_cache, cache_index, need_weights)
        out, weights = out if need_weights else (out, None)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return (x, weights) if need_weights else x


class TextDecoder(nn.Module):
    """Causal decoder over input embeddings, so the captioner can splice image tokens into the sequence.

    ``positions`` turns position ids into rotary tables: a :class:`mmrope.model.decoder_schemes.base.DecoderScheme`
    in the captioner, any module mapping (3, b, n) ids to ``(cos, sin)`` otherwise (default: M-RoPE with
    ``config.mrope_section``, which on text alone is 1D RoPE)."""

    def __init__(self, config: TextConfig, positions: nn.Module | None = None, rotary: RotaryApply = reference):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.positions = positions if positions is not None else MultimodalRotaryEmbedding(
            config.head_dim, config.rope_theta, config.mrope_section)
        self.blocks = nn.ModuleList([Block(config, rotary) for _ in range(config.depth)])
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: a small vocabulary does not need two tables
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def new_kv_caches(self, max_len: int) -> list[KVCache]:
        return [KVCache(max_len) for _ in self.blocks]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None, cache_index: int = 0, need_weights: bool = False,
                groups: torch.Tensor | None = None):
        """x (b, n, c) embeddings, position_ids (3, b, n) -> logits (b, n, v), and with ``need_weights`` the attention
        weights of every layer (layers, b, h, n, s) too.

        ``attention_mask`` (b, s) marks real key slots (1) and padding (0), left or right; None means no padding.
        With ``kv_caches`` the n new tokens take slots cache_index..cache_index+n-1 and s is the cache length.
        ``groups`` (b, n): new tokens that share a group id > 0 attend to each other in both directions
        (:func:`attention_mask_4d`); None: causal throughout.
        """
        n = x.shape[1]
        s = kv_caches[0].max_len if kv_caches is not None else n
        attn_mask, is_causal = None, False
        if attention_mask is None and kv_caches is None and groups is None:
            is_causal = True  # no mask tensor, so SDPA may take its flash kernel
        else:
            attn_mask = attention_mask_4d(attention_mask, n, s, cache_index, x.device, groups)
        rope = self.positions(position_ids)  # (b, n, k) in float32, shared by every layer
        weights = []
        for i, block in enumerate(self.blocks):
            cache = kv_caches[i] if kv_caches is not None else None
            x = block(x, rope, attn_mask, is_causal, cache, cache_index, need_weights)
            if need_weights:
                x, w = x
                weights.append(w)
        logits = self.head(self.norm(x))
        return (logits, torch.stack(weights)) if need_weights else logits
