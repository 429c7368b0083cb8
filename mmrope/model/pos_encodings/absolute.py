"""Encodings that add a table to the patch embeddings: fixed 2D sin-cos (MAE), a learned table resampled to each
grid (ViT, DeiT), and that learned table together with 2D axial RoPE (Qwen3-VL's vision tower).

Einstein legend: n patches (t * h * w), c channels (vision dim).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn

from mmrope.model.pos_encodings.axial import AxialRoPE2D
from mmrope.model.pos_encodings.base import Grid, PosEncoding, register_encoder
from mmrope.model.position_ids import raster_positions

if TYPE_CHECKING:
    from mmrope.model.config import VisionConfig



def sincos_2d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (MAE, timm): the first half of the channels encode the row, the second the column.
    positions (n, 2) -> (n, dim), each axis as [sin(p * w_i), cos(p * w_i)] with w_i = temperature^(-i / (dim/4)).
    timm's ``build_sincos2d_pos_embed`` holds the same values in the order [sin row, sin col, cos row, cos col]."""
    omega = temperature ** (-torch.arange(dim // 4, device=positions.device, dtype=torch.float32) / (dim // 4))
    angles = positions.float().unsqueeze(-1) * omega  # (n, rc, dim/4), rc = (row, col)
    return rearrange(torch.cat((angles.sin(), angles.cos()), dim=-1), "n rc c -> n (rc c)")


@register_encoder("sincos2d")
class SinCos2D(PosEncoding):
    """A fixed 2D sin-cos table added to the patch embeddings: absolute positions, counted in patches."""

    summary = "fixed 2D sin-cos added to the patch embeddings"
    source = "MAE (He et al. 2022)"
    absolute = True

    @classmethod
    def check(cls, config: VisionConfig) -> None:
        if config.dim % 4:
            raise ValueError(f"vision.dim={config.dim} cannot hold a 2D sin-cos embedding: expected a multiple of 4 "
                             "(sin and cos of the row and of the column)")

    def embed(self, x: torch.Tensor, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x + sincos_2d(positions[:, 1:], x.shape[-1]).to(x.dtype)


class LearnedPosEmbed(nn.Module):
    """Absolute table at the training grid (ViT, nanoVLM); bicubically resampled for any other grid with timm's
    ``resample_abs_pos_embed`` (align_corners=False, no antialias, as DeiT fine-tunes at a new size)."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(grid * grid, dim))  # raster order
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, h: int, w: int, merge: int) -> torch.Tensor:
        """Table for an h x w patch grid, in merge-window order -> (h * w, c)."""
        from timm.layers import resample_abs_pos_embed

        table = self.weight
        if (h, w) != (self.grid, self.grid):
            table = resample_abs_pos_embed(table.float()[None], new_size=[h, w], old_size=[self.grid, self.grid],
                                           num_prefix_tokens=0, interpolation="bicubic", antialias=False)
            table = table[0].to(self.weight.dtype)
        return table[raster_positions(h, w, merge, device=table.device)]


@register_encoder("learned")
class LearnedTable(PosEncoding):
    """A learned absolute table at the training grid (``vision.image_size``), resampled for other grids."""

    summary = "absolute table at `vision.image_size`, bicubically resampled for other sizes"
    source = "ViT (Dosovitskiy et al. 2021), DeiT's resampling"
    absolute = True

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.merge = config.spatial_merge_size
        self.pos_embed = LearnedPosEmbed(config.dim, config.patch_grid_side)

    def embed(self, x: torch.Tensor, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        t, h, w = grid
        return x + self.pos_embed(h, w, self.merge).repeat(t, 1)


@register_encoder("rope2d_learned")
class LearnedPlusRoPE2D(AxialRoPE2D, LearnedTable):
    """A learned absolute table added to the patch embeddings and 2D axial RoPE in every block: token contents carry
    where a patch is, attention scores how far apart two patches are. Qwen3-VL's vision tower (a table interpolated
    to each image) and CoMP's C-RoPE combine the two."""

    summary = "learned absolute table (as `learned`) + 2D axial RoPE (as `rope2d`)"
    source = "Qwen3-VL's vision tower; CoMP (arXiv 2503.18931) C-RoPE"
    absolute = True
