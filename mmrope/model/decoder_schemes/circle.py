"""Circle-RoPE: a medium's ids on a ring orthogonal to the text direction, so that no patch is nearer the text.

Text tokens have ids (p, p, p): they walk the line along (1, 1, 1). M-RoPE puts an image's patches at various
distances from that line's points, so some patches sit closer to the caption than others only because of where
they are. Circle-RoPE puts them on a circle of radius R, centred on the line, in the plane orthogonal to it: a text
token at p is sqrt(3 (p - s)^2 + R^2) from every patch of a block centred at (s, s, s).

Einstein legend: m media tokens.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mmrope.model.decoder_schemes.base import PlacedMedia, register_scheme
from mmrope.model.position_ids import MediaTokens


@register_scheme("circle_rope")
class CircleRoPE(PlacedMedia):
    """Circle-RoPE's ids, built as the Multimodal-RoPEs collection's circlerope.py builds them with the official
    config (radius R = 10, alpha = 0.5, coordinates centred; no distance blending), chunked allocation as M-RoPE.

    Token (i, j) of a block's H x W grid, centred to x = j - (W - 1) / 2, y = i - (H - 1) / 2, takes the angle
    a = alpha * a_spatial + (1 - alpha) * a_index: a_spatial is atan2(y, x) stretched linearly from the block's
    smallest to its largest onto [0, 2 pi] (left as is when they agree), a_index = 2 pi (i W + j) / (H W). The ring
    point (X, Y) = R (cos a, sin a) is laid in the plane spanned by u = (-1, 1, 0) / sqrt 2 and
    v = (-1, -1, 2) / sqrt 6 of the (w, h, t) space, both orthogonal to (1, 1, 1):
    (t, h, w) = s + (2 Y / sqrt 6, X / sqrt 2 - Y / sqrt 6, -X / sqrt 2 - Y / sqrt 6), s being the id the block's
    first token would get as text. Text after the block continues at s + its largest id offset + 1, a fractional
    id. A 2 x 2 image after two text tokens (ids from the collection's code, rounded)::

        tokens  x  x  vs  img0    img1    img2    img3    ve      x
        t       0  1  2   3.00    10.89   -5.16   -4.89   11.89   12.89
        h       0  1  2   10.07   -2.77   7.08    5.11    11.89   12.89
        w       0  1  2   -4.07   0.89    7.08    8.77    11.89   12.89

    A clip stacks one ring per temporal patch along the text direction, frame f shifted by f on every row (the
    collection's extension: the paper has images only); t counts temporal patches (``tokens_per_second`` is not
    read). The paper's AGE mode, which alternates Circle-RoPE and M-RoPE ids across layers, is not supported, as in
    the collection. Ids are float32 and rope deltas float64 (:class:`~mmrope.model.decoder_schemes.base.PlacedMedia`).
    """

    design = "media on a ring of radius R orthogonal to the text line (1, 1, 1), frames stacked along it"
    allocation = "chunked: t, h, w sections, fastest first"
    source = "Circle-RoPE (Wang et al. 2025, arXiv 2505.16416), as the Multimodal-RoPEs collection implements it"
    radius: ClassVar[float] = 10.0  # the official config.json's
    alpha: ClassVar[float] = 0.5  # weight of the spatial angle against the raster-index angle
    temporal_stride: ClassVar[float] = 1.0  # ids between the rings of consecutive temporal patches

    def place(self, media, clip, second_per_grid_t):
        relative = self.ring(media)  # (3, m)
        extent = relative.new_full((len(media.grid),), -math.inf)
        extent = extent.scatter_reduce(0, media.block, relative.amax(0), "amax")  # largest id offset per block
        return relative, extent + 1

    def ring(self, media: MediaTokens) -> torch.Tensor:
        """Each media token's (t, h, w) ids relative to its block's start s -> (3, m) float64."""
        t, i, j = media.thw.double()
        _, rows, cols = media.grid[media.block].double().unbind(-1)
        spatial = torch.atan2(i - (rows - 1) / 2, j - (cols - 1) / 2)
        low = spatial.new_full((len(media.grid),), math.inf).scatter_reduce(0, media.block, spatial, "amin")
        high = spatial.new_full((len(media.grid),), -math.inf).scatter_reduce(0, media.block, spatial, "amax")
        low, spread = low[media.block], (high - low)[media.block]
        spatial = torch.where(spread > 0, (spatial - low) / spread * (2 * math.pi), spatial)
        index = (i * cols + j) / (rows * cols) * (2 * math.pi)
        angle = self.alpha * spatial + (1 - self.alpha) * index
        x, y = self.radius * angle.cos(), self.radius * angle.sin()
        ring = torch.stack((2 * y / math.sqrt(6), x / math.sqrt(2) - y / math.sqrt(6),
                            -x / math.sqrt(2) - y / math.sqrt(6)))
        return ring + t * self.temporal_stride
