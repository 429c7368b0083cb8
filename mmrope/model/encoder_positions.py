"""How the encoder's patches know where they are: one small class per ``vision.pos_encoding``, registered under it.

An encoding either adds a table to the patch embeddings (:meth:`EncoderPositions.embed`), or rotates every block's
queries and keys (:meth:`EncoderPositions.rotary`, one ``(cos, sin)`` per block), or both. It gets the patches'
(t, row, col) ids in the encoder's merge-window order (:func:`mmrope.model.positions.patch_positions`) and the grid
they come from, so a new image size needs no change: the ids are recomputed. Adding an arm is one class here (and
its tests); the config's allowed strings, the encoder, the plots and the ablation all read :data:`ENCODERS`.

A rotation that is not a set of channel-pair turns (ComRoPE-LD's 8 x 8 blocks) cannot be written as ``(cos, sin)``:
such an encoding returns its own per-block rope from :meth:`EncoderPositions.rotary` and names the function that
applies it in :meth:`EncoderPositions.rotary_apply`, which the encoder hands to every block instead of the build's
``(cos, sin)`` apply. Every other encoding keeps that apply, so its numbers do not change.

Einstein legend: n patches (t * h * w), c channels (vision dim), k rotary pairs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from einops import rearrange
from torch import nn

from mmrope.model.positions import raster_positions
from mmrope.model.registry import Registry
from mmrope.model.rope import (
    AxialRotaryEmbedding,
    ComRoPELDEmbedding,
    GoldenGateRotaryEmbedding,
    MixedRotaryEmbedding,
    RotaryEmbedding,
    apply_block_rotation_qk,
)

if TYPE_CHECKING:
    from mmrope.model.config import VisionConfig
    from mmrope.model.rotary_apply import RotaryApply

Rope = tuple[torch.Tensor, ...]  # (cos, sin) half tables, or what the encoding's rotary_apply takes after q and k
Grid = tuple[int, int, int]  # (t, h, w): temporal patches and encoder patches down and across

ENCODERS = Registry("vision.pos_encoding")
register_encoder = ENCODERS.register


class EncoderPositions(nn.Module):
    """What every encoding provides; by itself, no position information."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for tables and --help
    source: ClassVar[str] = ""  # where it comes from
    head_dim_multiple: ClassVar[int] = 1  # each head's channels must split this way ...
    head_dim_reason: ClassVar[str] = ""  # ... because
    absolute: ClassVar[bool] = False  # adds a table to the patch embeddings

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.depth = config.depth

    @classmethod
    def check(cls, config: VisionConfig) -> None:
        """One line naming the field when ``config`` cannot hold this encoding."""
        if config.head_dim % cls.head_dim_multiple:
            raise ValueError(f"vision.head_dim={config.head_dim} (dim / num_heads) cannot be split for "
                             f"vision.pos_encoding={cls.name!r}: expected a multiple of {cls.head_dim_multiple} "
                             f"({cls.head_dim_reason})")

    def embed(self, x: torch.Tensor, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Patch embeddings (b, n, c) with this encoding's table added; positions (n, 3) as (t, row, col)."""
        return x

    def rotary(self, positions: torch.Tensor, grid: Grid) -> list[Rope | None]:
        """One ``(cos, sin)`` per block, built once per forward, or None where a block does not rotate."""
        return [None] * self.depth

    def rotary_apply(self, default: RotaryApply) -> RotaryApply:
        """The function every block turns q and k with, ``apply(q, k, *rope)`` for each rope :meth:`rotary` returns:
        ``default``, the build's ``(cos, sin)`` apply, unless the encoding's rotation is not a set of pair turns."""
        return default


@register_encoder("none")
class NoPositions(EncoderPositions):
    """Patches with no position information: attention sees a bag of patches."""

    summary = "no positions"
    source = "the floor every encoding is measured against"


class RotaryPositions(EncoderPositions):
    """An encoding that turns every block's queries and keys by the same tables: ``rope(ids(positions, grid))``."""

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.rope = self.make_rope(config)

    def make_rope(self, config: VisionConfig) -> nn.Module:
        raise NotImplementedError

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        """What the rotary module reads, from the (t, row, col) ids (n, 3)."""
        return positions[:, 1:]

    def rotary(self, positions: torch.Tensor, grid: Grid) -> list[Rope | None]:
        return [self.rope(self.ids(positions, grid))] * self.depth  # (n, k), shared by every block


@register_encoder("rope2d")
class AxialRoPE2D(RotaryPositions):
    """2D axial RoPE: half of each head's rotary pairs turn with the patch row, half with the column."""

    summary = "2D axial RoPE on (row, col), theta `vision.rope_theta`"
    source = "RoPE-ViT Axial (Heo et al. 2024); Qwen2-VL's vision tower"
    head_dim_multiple, head_dim_reason = 4, "half of the rotary pairs per axis"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return AxialRotaryEmbedding(config.head_dim, config.rope_theta)


@register_encoder("rope3d")
class AxialRoPE3D(RotaryPositions):
    """3D axial RoPE for clips: a quarter of the pairs turn with time, the rest as ``rope2d``."""

    summary = "3D axial RoPE on (t, row, col) for clips: a quarter of the pairs turn with time, the rest as rope2d"
    source = "Qwen2-VL's M-RoPE proportions, in the encoder"
    head_dim_multiple = 8
    head_dim_reason = "a quarter of the rotary pairs for time, the rest split between row and column"

    def make_rope(self, config: VisionConfig) -> nn.Module:
        return AxialRotaryEmbedding(config.head_dim, config.rope_theta, axes=3)

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        return positions


@register_encoder("rope2d_mixed")
class MixedRoPE(EncoderPositions):
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


@register_encoder("rope1d_flat")
class FlatRoPE(RotaryPositions):
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


def sincos_2d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (MAE, timm): the first half of the channels encode the row, the second the column.
    positions (n, 2) -> (n, dim), each axis as [sin(p * w_i), cos(p * w_i)] with w_i = temperature^(-i / (dim/4)).
    timm's ``build_sincos2d_pos_embed`` holds the same values in the order [sin row, sin col, cos row, cos col]."""
    omega = temperature ** (-torch.arange(dim // 4, device=positions.device, dtype=torch.float32) / (dim // 4))
    angles = positions.float().unsqueeze(-1) * omega  # (n, rc, dim/4), rc = (row, col)
    return rearrange(torch.cat((angles.sin(), angles.cos()), dim=-1), "n rc c -> n (rc c)")


@register_encoder("sincos2d")
class SinCos2D(EncoderPositions):
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
class LearnedTable(EncoderPositions):
    """A learned absolute table at the training grid (``vision.image_size``), resampled for other grids."""

    summary = "absolute table at `vision.image_size`, bicubically resampled for other sizes"
    source = "ViT (Dosovitskiy et al. 2021), DeiT's resampling"
    absolute = True

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        self.merge = config.spatial_merge_size
        self.pos_embed = LearnedPosEmbed(config.dim, config.image_size // config.patch_size)

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


@register_encoder("rope2d_norm")
class NormalizedRoPE2D(AxialRoPE2D):
    """2D axial RoPE on normalised coordinates: a patch centre's row and column scaled to [-1, 1] of the image,
    (i + 0.5) / h * 2 - 1, each axis by its own side, and pair j turning 2π · rope_theta^(-4j/d) rad per unit
    (DINOv3, ``normalize_coords="separate"``, base 100). The same place in the image gets the same angle at every
    resolution, where ``rope2d`` counts patches: the encoding built for images of sizes never seen in training.
    (DINOv3 also jitters and rescales the coordinates in training; not here.)"""

    summary = "2D axial RoPE on patch centres scaled to [-1, 1] per axis, pair j at 2π·theta^(-4j/d) rad per unit"
    source = "DINOv3 (Siméoni et al. 2025)"

    def ids(self, positions: torch.Tensor, grid: Grid) -> torch.Tensor:
        _, h, w = grid
        sides = torch.tensor([h, w], device=positions.device, dtype=torch.float32)
        return 2 * math.pi * ((positions[:, 1:] + 0.5) / sides * 2 - 1)  # (n, 2) in radians before the frequency


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
class GoldenGateRoPE2D(RotaryPositions):
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
class ComRoPELD(EncoderPositions):
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
