"""The ViT encoder: native-resolution patches, one switchable position encoding, and a Qwen2-VL patch merger.

Patches are kept in merge-window order (each m x m window contiguous, windows in raster order; see
:mod:`mmrope.positions`), so the merger is a reshape and token k of an image sits at decoder grid cell
(k // (W/m), k % (W/m)), which is what ``get_rope_index`` assumes. Images of one size run as one dense batch, so
each image attends only within itself with no mask.

Einstein legend: b images (of one size), n patches, c channels (vision dim), m merge size, k rotary pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmrope.config import VisionConfig
from mmrope.layers import Attention, Mlp
from mmrope.positions import grid_positions, raster_positions
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


class VisionEncoder(nn.Module):
    """ViT with the position encoding ``config.pos_encoding`` picks; only that encoding's module is built.

    rope2d        axial 2D RoPE on (row, col), theta = rope_theta
    rope2d_mixed  RoPE-Mixed: learnable per-layer, per-head frequencies over (row, col)
    rope1d_flat   1D RoPE on the raster index row * W + col (the flattened baseline), same theta
    sincos2d      fixed 2D sin-cos added to the patch embeddings
    learned       absolute table at the training grid, resampled for other grids
    none          no position information
    """

    def __init__(self, config: VisionConfig, out_dim: int):
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        if c.pos_encoding in ("rope2d", "rope2d_mixed", "rope1d_flat"):
            rope_type = "rope1d" if c.pos_encoding == "rope1d_flat" else c.pos_encoding
            theta = None if c.pos_encoding == "rope2d_mixed" else c.rope_theta  # Mixed keeps its paper init (10)
            self.rope = create_rope(rope_type, c.head_dim, theta=theta, num_heads=c.num_heads, depth=c.depth)
        elif c.pos_encoding == "learned":
            self.pos_embed = LearnedPosEmbed(c.dim, c.image_size // c.patch_size)
        self.blocks = nn.ModuleList([Block(c.dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.merger = PatchMerger(c.dim, out_dim, c.spatial_merge_size)

    def forward(self, images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images: a list of (3, H_i, W_i) or a (B, 3, H, W) tensor ->
        (tokens (sum_i N_i, out_dim) in image order, grid_thw (B, 3) long in encoder patches, T = 1)."""
        images = list(images)
        channels, window = self.config.in_channels, self.config.patch_size * self.config.spatial_merge_size
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[0] != channels or img.shape[1] % window or img.shape[2] % window:
                raise ValueError(f"image {i} has shape {tuple(img.shape)}: expected ({channels}, H, W) "
                                 f"with H and W multiples of patch_size * spatial_merge_size = {window}")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[1:]), []).append(i)
        tokens: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
        for index in groups.values():
            out = self.merger(self.forward_features(torch.stack([images[i] for i in index])))  # (b, n/m^2, out_dim)
            for i, t in zip(index, out):
                tokens[i] = t
        p = self.config.patch_size
        grid_thw = torch.tensor([[1, img.shape[1] // p, img.shape[2] // p] for img in images], dtype=torch.long,
                                device=tokens[0].device)
        return torch.cat(tokens), grid_thw

    def forward_features(self, pixels: torch.Tensor, position_offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Same-size images (b, 3, H, W) -> patch features (b, n, c) in merge-window order, before the merger.

        ``position_offset`` is added to every patch's (row, col) id. The RoPE variants only see differences of
        ids, so their output does not change (a test checks it); sincos2d shifts with it; learned ignores ids.
        """
        m = self.config.spatial_merge_size
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (b, c, h, w)
        h, w = x.shape[-2:]
        x = rearrange(x, "b c (hh m1) (ww m2) -> b (hh ww m1 m2) c", m1=m, m2=m)  # merge-window order
        positions = grid_positions(h, w, m, device=x.device) + torch.tensor(position_offset, device=x.device)
        if self.config.pos_encoding == "sincos2d":
            x = x + sincos_2d(positions, x.shape[-1]).to(x.dtype)
        elif self.config.pos_encoding == "learned":
            x = x + self.pos_embed(h, w, m)
        for block, rope in zip(self.blocks, self.rotary_tables(positions, w)):
            x = block(x, rope)
        return x

    def rotary_tables(self, positions: torch.Tensor, w: int) -> list[Rope | None]:
        """One (cos, sin) per block, built once per forward from the (row, col) ids (n, 2)."""
        depth, encoding = self.config.depth, self.config.pos_encoding
        if encoding == "rope2d":
            return [self.rope(positions)] * depth  # (n, k) each
        if encoding == "rope1d_flat":
            return [self.rope(positions[:, 0] * w + positions[:, 1])] * depth  # raster index: rows sit w apart
        if encoding == "rope2d_mixed":
            cos, sin = self.rope(positions)  # (depth, 1, heads, n, k): every layer its own frequencies
            return list(zip(cos, sin))
        return [None] * depth
