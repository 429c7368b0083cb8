"""The ViT encoder: native-resolution patches, one switchable position encoding, and a Qwen2-VL patch merger.

Patches are kept in merge-window order (each m x m window contiguous, windows in raster order; see
:mod:`mmrope.positions`), so the merger is a reshape and token k of an image sits at decoder grid cell
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
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmrope.config import VisionConfig
from mmrope.layers import Attention, Mlp
from mmrope.positions import patch_positions, raster_positions
from mmrope.rope import create_rope

Rope = tuple[torch.Tensor, torch.Tensor]


def sincos_2d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (MAE, timm): the first half of the channels encode the row, the second the column.
    positions (n, 2) -> (n, dim), each axis as [sin(p * w_i), cos(p * w_i)] with w_i = temperature^(-i / (dim/4))."""
    omega = temperature ** (-torch.arange(dim // 4, device=positions.device, dtype=torch.float32) / (dim // 4))
    angles = positions.float().unsqueeze(-1) * omega  # (n, rc, dim/4), rc = (row, col)
    return rearrange(torch.cat((angles.sin(), angles.cos()), dim=-1), "n rc c -> n (rc c)")


class LearnedPosEmbed(nn.Module):
    """Absolute table at the training grid (ViT, nanoVLM); bicubically resampled for any other grid (DeiT, timm's
    ``resample_abs_pos_embed``: align_corners=False, no antialias)."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(grid * grid, dim))  # raster order
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, h: int, w: int, merge: int) -> torch.Tensor:
        """Table for an h x w patch grid, in merge-window order -> (h * w, c)."""
        table = self.weight
        if (h, w) != (self.grid, self.grid):
            image = rearrange(table, "(gh gw) c -> 1 c gh gw", gh=self.grid)
            image = F.interpolate(image.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=False)
            table = rearrange(image, "1 c h w -> (h w) c").to(self.weight.dtype)
        return table[raster_positions(h, w, merge, device=table.device)]


class Block(nn.Module):
    """Pre-norm ViT block with timm's names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
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


def is_clip(media: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(num_media,) bool: which of ``media`` are clips (T, 3, H, W) rather than images (3, H, W); a (b, 3, H, W)
    tensor is b images."""
    if isinstance(media, torch.Tensor) and media.ndim == 4:
        return torch.zeros(len(media), dtype=torch.bool)
    return torch.tensor([m.ndim == 4 for m in media], dtype=torch.bool)


class VisionEncoder(nn.Module):
    """ViT with the position encoding ``config.pos_encoding`` picks; only that encoding's module is built.

    rope2d        axial 2D RoPE on (row, col), theta = rope_theta
    rope3d        axial 3D RoPE on (t, row, col), for clips; on an image (t = 0) it is 2D RoPE with fewer pairs
    rope2d_mixed  RoPE-Mixed: learnable per-layer, per-head frequencies over (row, col)
    rope1d_flat   1D RoPE on the raster index (t * H +) row * W + col (the flattened baseline), same theta
    sincos2d      fixed 2D sin-cos added to the patch embeddings
    learned       absolute table at the training grid, resampled for other grids
    none          no position information
    """

    def __init__(self, config: VisionConfig, out_dim: int):
        super().__init__()
        self.config = c = config
        # a temporal patch is tp frames stacked on the channels: the same weights as a Conv3d of kernel (tp, p, p)
        self.patch_embed = nn.Conv2d(c.in_channels * c.temporal_patch_size, c.dim, kernel_size=c.patch_size,
                                     stride=c.patch_size)
        if c.pos_encoding in ("rope2d", "rope3d", "rope2d_mixed", "rope1d_flat"):
            rope_type = "rope1d" if c.pos_encoding == "rope1d_flat" else c.pos_encoding
            theta = None if c.pos_encoding == "rope2d_mixed" else c.rope_theta  # Mixed keeps its paper init (10)
            self.rope = create_rope(rope_type, c.head_dim, theta=theta, num_heads=c.num_heads, depth=c.depth)
        elif c.pos_encoding == "learned":
            self.pos_embed = LearnedPosEmbed(c.dim, c.image_size // c.patch_size)
        self.blocks = nn.ModuleList([Block(c.dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.merger = PatchMerger(c.dim, out_dim, c.spatial_merge_size)

    def forward(self, media: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (3, H_i, W_i) and clips (T_i, 3, H_i, W_i), as a list, or a (B, 3, H, W) tensor of images ->
        (tokens (sum_i N_i, out_dim) in media order, grid_thw (B, 3) long: temporal patches, then encoder patches
        down and across)."""
        media = list(media)
        channels, window = self.config.in_channels, self.config.patch_size * self.config.spatial_merge_size
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
        if c.pos_encoding == "sincos2d":
            x = x + sincos_2d(positions[:, 1:], x.shape[-1]).to(x.dtype)
        elif c.pos_encoding == "learned":
            x = x + self.pos_embed(h, w, m).repeat(t, 1)
        for block, rope in zip(self.blocks, self.rotary_tables(positions, h, w)):
            x = block(x, rope)
        return x

    def rotary_tables(self, positions: torch.Tensor, h: int, w: int) -> list[Rope | None]:
        """One (cos, sin) per block, built once per forward from the (t, row, col) ids (n, 3) of an h x w grid."""
        depth, encoding = self.config.depth, self.config.pos_encoding
        if encoding == "rope2d":
            return [self.rope(positions[:, 1:])] * depth  # (n, k) each
        if encoding == "rope3d":
            return [self.rope(positions)] * depth
        if encoding == "rope1d_flat":  # raster index: rows sit w apart, frames h * w apart
            return [self.rope(positions[:, 0] * h * w + positions[:, 1] * w + positions[:, 2])] * depth
        if encoding == "rope2d_mixed":
            cos, sin = self.rope(positions[:, 1:])  # (depth, 1, heads, n, k): every layer its own frequencies
            return list(zip(cos, sin))
        return [None] * depth
