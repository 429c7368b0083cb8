"""What every position encoding of the encoder is: the registry :data:`ENCODERS`, the base :class:`PosEncoding`,
the shared base :class:`RotaryPosEncoding`, and ``none``, the encoding that gives no positions. The other encodings
are the other modules of this package, one per family; this module imports none of them.

An encoding either adds a table to the patch embeddings (:meth:`PosEncoding.embed`), or rotates every block's
queries and keys (:meth:`PosEncoding.rotary`, one ``(cos, sin)`` per block), or both. It gets the patches'
(t, row, col) ids in the encoder's merge-window order (:func:`mmrope.model.position_ids.patch_positions`) and the grid
they come from, so a new image size needs no change: the ids are recomputed. Adding an arm is one registered class
(and its tests), in this package or in a user's own file; the config, the encoder, the plots, the README tables and
the ablation all read :data:`ENCODERS`.

A rotation that is not a set of channel-pair turns (ComRoPE-LD's 8 x 8 blocks) cannot be written as ``(cos, sin)``:
such an encoding returns its own per-block rope from :meth:`PosEncoding.rotary` and names the function that
applies it in :meth:`PosEncoding.rotary_apply`, which the encoder hands to every block instead of the build's
``(cos, sin)`` apply. Every other encoding keeps that apply, so its numbers do not change.

Einstein legend: n patches (t * h * w), c channels (vision dim), k rotary pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mmrope.model.registry import Registry

if TYPE_CHECKING:
    from mmrope.model.config import VisionConfig
    from mmrope.model.rotary_apply import RotaryApply

Rope = tuple[torch.Tensor, ...]  # (cos, sin) half tables, or what the encoding's rotary_apply takes after q and k
Grid = tuple[int, int, int]  # (t, h, w): temporal patches and encoder patches down and across

ENCODERS = Registry("vision.pos_encoding")
register_encoder = ENCODERS.register


class PosEncoding(nn.Module):
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
class NoPositions(PosEncoding):
    """Patches with no position information: attention sees a bag of patches."""

    summary = "no positions"
    source = "the floor every encoding is measured against"


class RotaryPosEncoding(PosEncoding):
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
