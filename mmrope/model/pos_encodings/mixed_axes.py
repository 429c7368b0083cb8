"""Rotary encodings whose pairs turn with both coordinates at once, so that a head can attend along a diagonal:
learned per-head frequencies (RoPE-Mixed), fixed golden-angle directions (Golden Gate RoPE), learned commuting
rotation matrices (ComRoPE-LD).

Einstein legend: n patches (t * h * w), k rotary pairs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mmrope.model.pos_encodings.base import Grid, PosEncoding, Rope, RotaryPosEncoding, register_encoder
from mmrope.model.rope import (
    ComRoPELDEmbedding,
    GoldenGateRotaryEmbedding,
    MixedRotaryEmbedding,
    apply_block_rotation_qk,
)

if TYPE_CHECKING:
    from mmrope.model.config import VisionConfig
    from mmrope.model.rotary_apply import RotaryApply



@register_encoder("rope2d_mixed")
class MixedRoPE(PosEncoding):
    """RoPE-Mixed: learnable per-layer, per-head frequencies over (row, col), so a head can turn along a diagonal.
    Its frequencies start from the paper's init (theta 10), not ``rope_theta``, and get no weight decay."""

    summary = "RoPE-Mixed: learnable per-layer, per-head frequencies over (row, col), no weight decay"
    source = "Heo et al. 2024 (RoPE-ViT)"
    head_dim_multiple, head_dim_reason = 4, "rotary pairs initialised in axis-aligned couples"

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.rope = MixedRotaryEmbedding(config.head_dim, config.num_heads, depth=config.depth)

    def rotary(self, positions: torch.Tensor, grid: Grid) -> list[Rope | None]:
        cos, sin = self.rope(positions[:, 1:])  # (depth, 1, heads, n, k): every layer its own frequencies
        return list(zip(cos, sin))


def golden_gate_coordinates(positions: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Golden Gate RoPE's patch coordinates: rows evenly from -sqrt(h/w) to sqrt(h/w), columns from -sqrt(w/h) to
    sqrt(w/h), first patch to last (``torch.linspace``), so every image spans the same area, 4, whatever its aspect.
    (t, row, col) ids (n, 3) -> (n, 2) float32 (row, col). E.g. a 2 x 4 grid: rows -0.707, 0.707; columns -1.414,
    -0.471, 0.471, 1.414."""
    _, h, w = grid
    coords = []
    for ids, side, half in ((positions[:, 1], h, math.sqrt(h / w)), (positions[:, 2], w, math.sqrt(w / h))):
        step = 2 * half / (side - 1) if side > 1 else 0.0  # linspace(-half, half, 1) is [-half]
        coords.append(ids.float() * step - half)
    return torch.stack(coords, dim=-1)


@register_encoder("rope2d_golden")
class GoldenGateRoPE2D(RotaryPosEncoding):
    """Golden Gate RoPE: every rotary pair turns along its own fixed direction of the (row, col) plane, the directions
    spread by the golden angle of the half-turn, so a head attends along diagonals with nothing learned.

    Pair k of head h (k < K = head_dim / 2) turns by f_k * (y cos phi + x sin phi) on the coordinates (y, x) of
    :func:`golden_gate_coordinates`, with f_k = 0.2 * 100^(k / (K - 1)) rad per unit and phi = (h * K + k) * pi (1 -
    sqrt 5) / 2. This is the author's ``UniformRoPE`` (Jerry Xiong, archibox/ropend/positional_embeddings.py, the code
    of "On N-dimensional Rotary Positional Embeddings", jerryxio.ng/posts/nd-rope, 2025) at the final defaults of its
    ImageNet script: min_freq 0.2, max_freq 20, no zero frequencies, directions per head (``sep_rope_heads``), and
    spacing pi (1 - sqrt 5) / 2, which the author recommends over the full-turn golden angle pi (1 - sqrt 5) of the
    post's ImageNet runs. ``vision.rope_theta`` is not read. Coordinates are set by each image's own grid (the code's
    build-time rule), so, as with ``rope2d_norm``, one patch is a shorter step on a larger grid."""

    summary = "Golden Gate RoPE: fixed per-head directions by the half-turn golden angle, f 0.2-20 on centred coords"
    source = "Jerry Xiong 2025, jerryxio.ng/posts/nd-rope (archibox UniformRoPE)"
    head_dim_multiple, head_dim_reason = 2, "channels rotate in pairs"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return GoldenGateRotaryEmbedding(config.head_dim, config.num_heads)

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        return golden_gate_coordinates(positions, grid)


@register_encoder("comrope_ld")
class ComRoPELD(PosEncoding):
    """ComRoPE-LD: every layer learns commuting angle matrices A_axis = theta_axis (P - Pᵀ) per block of 8 channels, and
    a patch at (y, x) turns each block by exp(y A_row + x A_col) (:class:`mmrope.model.rope.ComRoPELDEmbedding`), so
    q(p1)·k(p2) depends only on p1 - p2 for any learned P and theta. Coordinates are patch centres scaled to [0, 1]
    per axis, ((row + 0.5) / h, (col + 0.5) / w), the paper's "relative scaling and center offset" (its training-time
    position perturbation is not used here). Blocks of 8, the paper's largest, cannot be written as (cos, sin) pair
    turns: the tables are the rotations and :meth:`rotary_apply` applies them. P and theta get no weight decay."""

    summary = "ComRoPE-LD: learned commuting angle matrices theta_axis (P - Pᵀ), 8x8 block rotations, no weight decay"
    source = "Yu et al. 2025 (ComRoPE, CVPR, arXiv 2506.03737), the authors' ComRoPELDAttention"
    block_size: ClassVar[int] = 8
    head_dim_multiple, head_dim_reason = block_size, "channels rotate in blocks of 8"

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.rope = ComRoPELDEmbedding(config.head_dim, config.num_heads, depth=config.depth,
                                       block_size=self.block_size)

    def rotary(self, positions: torch.Tensor, grid: Grid) -> list[Rope | None]:
        _, h, w = grid
        sides = torch.tensor([h, w], device=positions.device, dtype=torch.float32)
        rotations = self.rope((positions[:, 1:] + 0.5) / sides)  # (depth, heads, n, blocks, 8, 8)
        return [(r,) for r in rotations]

    def rotary_apply(self, default: RotaryApply) -> RotaryApply:
        return apply_block_rotation_qk
