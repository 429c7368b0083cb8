"""Rotary encodings whose every pair turns with one coordinate of the patch: axial RoPE on (row, col) and on
(t, row, col), 1D RoPE on the raster index, and axial RoPE on normalised coordinates (DINOv3), plain and with
DINOv3's training-time rescale.

Einstein legend: n patches (t * h * w).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmrope.model.draws import TrainingDraws
from mmrope.model.pos_encodings.base import Grid, RotaryPosEncoding, register_encoder
from mmrope.model.rope import AxialRotaryEmbedding, RotaryEmbedding

if TYPE_CHECKING:
    from mmrope.model.config import VisionConfig



@register_encoder("rope2d")
class AxialRoPE2D(RotaryPosEncoding):
    """2D axial RoPE: half of each head's rotary pairs turn with the patch row, half with the column."""

    summary = "2D axial RoPE on (row, col), theta `vision.rope_theta`"
    source = "RoPE-ViT Axial (Heo et al. 2024); Qwen2-VL's vision tower"
    head_dim_multiple, head_dim_reason = 4, "half of the rotary pairs per axis"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return AxialRotaryEmbedding(config.head_dim, config.rope_theta)


@register_encoder("rope3d")
class AxialRoPE3D(RotaryPosEncoding):
    """3D axial RoPE for clips: a quarter of the pairs turn with time, the rest as ``rope2d``."""

    summary = "3D axial RoPE on (t, row, col) for clips: a quarter of the pairs turn with time, the rest as rope2d"
    source = "Qwen2-VL's M-RoPE proportions, in the encoder"
    head_dim_multiple = 8
    head_dim_reason = "a quarter of the rotary pairs for time, the rest split between row and column"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return AxialRotaryEmbedding(config.head_dim, config.rope_theta, axes=3)

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        return positions


@register_encoder("rope1d_flat")
class FlatRoPE(RotaryPosEncoding):
    """1D RoPE on the raster index t * h * w + row * w + col: vertical neighbours sit w apart, and w changes with
    the image size. The flattened baseline."""

    summary = "1D RoPE on the raster index (t·H·W +) row·W + col, same theta: the flattened baseline"
    source = "1D RoPE (Su et al. 2021) over a raster scan"
    head_dim_multiple, head_dim_reason = 2, "channels rotate in pairs"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return RotaryEmbedding(config.head_dim, config.rope_theta)

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        _, h, w = grid
        return positions[:, 0] * h * w + positions[:, 1] * w + positions[:, 2]


@register_encoder("rope2d_norm")
class NormalizedRoPE2D(AxialRoPE2D):
    """2D axial RoPE on normalised coordinates: a patch centre's row and column scaled to [-1, 1] of the image,
    (i + 0.5) / h * 2 - 1, each axis by its own side, and pair j turning 2π · rope_theta^(-4j/d) rad per unit
    (DINOv3, ``normalize_coords="separate"``, base 100). The same place in the image gets the same angle at every
    resolution, where ``rope2d`` counts patches: the encoding built for images of sizes never seen in training.
    (DINOv3 also rescales the coordinates in training: ``rope2d_norm_aug``.)"""

    summary = "2D axial RoPE on patch centres scaled to [-1, 1] per axis, pair j at 2π·theta^(-4j/d) rad per unit"
    source = "DINOv3 (Siméoni et al. 2025)"

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        _, h, w = grid
        sides = torch.tensor([h, w], device=positions.device, dtype=torch.float32)
        return 2 * math.pi * ((positions[:, 1:] + 0.5) / sides * 2 - 1)  # (n, 2) in radians before the frequency


@register_encoder("rope2d_norm_aug")
class RescaledNormalizedRoPE2D(TrainingDraws, NormalizedRoPE2D):
    """``rope2d_norm`` as DINOv3 trains it: in training every forward multiplies the normalised coordinates by one
    factor drawn log-uniformly from [1/2, 2] (DINOv3's ``rescale_coords=2``, its ViT-7B setting; its shift and
    per-axis jitter are off there too), so the encoder meets coordinate spacings other than its training grid's
    before it is scored at other sizes. Evaluation is exactly ``rope2d_norm``. The draws are the module's own
    (:class:`mmrope.model.draws.TrainingDraws`): reproducible, and restored with a checkpoint."""

    summary = "rope2d_norm with DINOv3's training rescale: coordinates x one factor log-uniform in [1/2, 2] per step"
    source = "DINOv3 (Siméoni et al. 2025), rescale_coords=2"
    rescale: float = 2.0

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.init_draws()

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        coords = super().ids(positions, grid)  # (n, 2)
        if not self.training:
            return coords
        log_rescale = math.log(self.rescale)
        u = torch.empty(1, dtype=torch.float64).uniform_(-log_rescale, log_rescale, generator=self.next_generator())
        return coords * math.exp(u.item())
