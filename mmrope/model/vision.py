"""The ViT encoder: native-resolution patches, one switchable position encoding, and a Qwen2-VL patch merger.

Patches are kept in merge-window order (each m x m window contiguous, windows in raster order; see
:mod:`mmrope.model.position_ids`), so the merger is a reshape and token k of an image sits at decoder grid cell
(k // (W/m), k % (W/m)), which is what ``get_rope_index`` assumes. Media of one shape run as one dense batch, so
each image or clip attends only within itself with no mask.

Clips. A clip (T, 3, H, W) is cut into temporal patches of ``temporal_patch_size`` (tp) frames, each a patch of
tp * 3 channels (Qwen2-VL's Conv3d, written as a Conv2d over stacked frames, so tp = 1 is the plain image ViT);
T is padded to a multiple of tp by repeating the last frame, and an image is a one-frame clip. Every token of a
clip attends to every other, across time: ``rope3d`` gives them (t, row, col) rotations, ``rope1d_flat`` the
raster index t * H * W + row * W + col; the 2D encodings (rope2d, rope2d_mixed, sincos2d, learned) see only
(row, col), so the frames of a clip differ to them only by content.

Einstein legend: b media (of one shape), t temporal patches, n patches, c channels (vision dim), m merge size,
k rotary pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from mmrope.model.config import VisionConfig
from mmrope.model.layers import Attention, Mlp
from mmrope.model.pos_encodings import ENCODERS
from mmrope.model.position_ids import patch_positions
from mmrope.model.rotary_apply import RotaryApply, reference

Rope = tuple[torch.Tensor, torch.Tensor]


class Block(nn.Module):
    """Pre-norm ViT block with timm's names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rotary: RotaryApply = reference):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, rotary=rotary)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: Rope | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Qwen2-VL's merger: LayerNorm each patch, concatenate each m x m window, MLP to the decoder's width."""

    def __init__(self, dim: int, out_dim: int, merge: int):
        super().__init__()
        self.merge = merge
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim * merge**2, dim * merge**2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.norm(x), "b (n win) c -> b n (win c)", win=self.merge**2)  # windows are contiguous
        return self.mlp(x)


def clip_mask(media: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(num_media,) bool: which of ``media`` are clips (T, 3, H, W) rather than images (3, H, W); a (b, 3, H, W)
    tensor is b images."""
    if isinstance(media, torch.Tensor) and media.ndim == 4:
        return torch.zeros(len(media), dtype=torch.bool)
    return torch.tensor([m.ndim == 4 for m in media], dtype=torch.bool)


class VisionEncoder(nn.Module):
    """ViT with the position encoding ``config.pos_encoding`` names (:mod:`mmrope.model.pos_encodings`); only
    that encoding's module is built, as ``self.positions``."""

    def __init__(self, config: VisionConfig, out_dim: int, rotary: RotaryApply = reference):
        super().__init__()
        self.config = c = config
        # a temporal patch is tp frames stacked on the channels: the same weights as a Conv3d of kernel (tp, p, p)
        self.patch_embed = nn.Conv2d(c.in_channels * c.temporal_patch_size, c.dim, kernel_size=c.patch_size,
                                     stride=c.patch_size)
        self.positions = ENCODERS[c.pos_encoding](c)
        rotary = self.positions.rotary_apply(rotary)  # the build's (cos, sin) apply, unless the encoding brings its own
        self.blocks = nn.ModuleList([Block(c.dim, c.num_heads, c.mlp_ratio, rotary) for _ in range(c.depth)])
        self.merger = PatchMerger(c.dim, out_dim, c.spatial_merge_size)

    def forward(self, media: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (3, H_i, W_i) and clips (T_i, 3, H_i, W_i), as a list, or a (B, 3, H, W) tensor of images ->
        (tokens (sum_i N_i, out_dim) in media order, grid_thw (B, 3) long: temporal patches, then encoder patches
        down and across)."""
        media = list(media)
        channels, window = self.config.in_channels, self.config.merged_patch_size
        clips = []
        for i, m in enumerate(media):
            clip = m.unsqueeze(0) if m.ndim == 3 else m  # an image is a one-frame clip
            if clip.ndim != 4 or clip.shape[0] < 1 or clip.shape[1] != channels or clip.shape[2] % window \
                    or clip.shape[3] % window:
                raise ValueError(f"image or clip {i} has shape {tuple(m.shape)}: expected ({channels}, H, W) or "
                                 f"(T, {channels}, H, W) with H and W multiples of patch_size * spatial_merge_size "
                                 f"= {window}")
            clips.append(clip)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(tuple(clip.shape), []).append(i)
        tokens: list[torch.Tensor] = [None] * len(clips)  # type: ignore[list-item]
        for index in groups.values():
            out = self.merger(self.forward_features(torch.stack([clips[i] for i in index])))  # (b, t*n/m^2, out)
            for i, t in zip(index, out):
                tokens[i] = t
        p, tp = self.config.patch_size, self.config.temporal_patch_size
        grid_thw = torch.tensor([[-(-c.shape[0] // tp), c.shape[2] // p, c.shape[3] // p] for c in clips],
                                dtype=torch.long, device=tokens[0].device)
        return torch.cat(tokens), grid_thw

    def forward_features(self, pixels: torch.Tensor, position_offset: tuple[int, ...] = (0, 0)) -> torch.Tensor:
        """Same-shape images (b, 3, H, W) or clips (b, T, 3, H, W) -> patch features (b, t * n, c), time-major, each
        frame in merge-window order, before the merger.

        ``position_offset`` is added to every patch's (row, col) id, or (t, row, col) id when it has three entries.
        The RoPE variants only see differences of ids, so their output does not change (a test checks it); sincos2d
        shifts with it; learned ignores ids.
        """
        c, m = self.config, self.config.spatial_merge_size
        clips = pixels.unsqueeze(1) if pixels.ndim == 4 else pixels  # (b, T, 3, H, W)
        if pad := -clips.shape[1] % c.temporal_patch_size:  # repeat the last frame up to whole temporal patches
            clips = torch.cat((clips, clips[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        x = rearrange(clips, "b (t tp) ch hh ww -> (b t) (tp ch) hh ww", tp=c.temporal_patch_size)
        x = self.patch_embed(x.to(self.patch_embed.weight.dtype))  # (b t, c, h, w)
        t, (h, w) = clips.shape[1] // c.temporal_patch_size, x.shape[-2:]
        x = rearrange(x, "(b t) c (hh m1) (ww m2) -> b (t hh ww m1 m2) c", t=t, m1=m, m2=m)  # merge-window order
        offset = torch.tensor(tuple(position_offset)[-3:], device=x.device)
        positions = patch_positions(t, h, w, m, device=x.device)  # (t*n, 3) as (t, row, col)
        positions[:, 3 - len(offset):] += offset
        x = self.positions.embed(x, positions, (t, h, w))
        for block, rope in zip(self.blocks, self.positions.rotary(positions, (t, h, w))):
            x = block(x, rope)
        return x
