"""What position geometry alone predicts off the training size: rules that train nothing.

A model that names places from a patch's position code (its rotary offset to the caption, its absolute table
entry, its coordinates) and meets a new image size answers with the place that code had in training. Each rule
below is such a model: it finds the patch under the object's centre at the evaluation size, reads its position as
one family of codes does, and answers the place that position had on the training grid. Its accuracy on the
evaluation scenes is what the geometry predicts; a trained arm's accuracy minus it is what training added.

    corner      patches counted from the top-left corner (M-RoPE's ids, an absolute sin-cos table counted in
                patches): index (row, col) answers the training place of patch (row, col), clamped to the grid
    centre      patches counted from the grid's centre (VideoRoPE's and HoPE's centred layouts)
    raster      patches counted in raster order, row * width + col (a flat 1D decoder, a ``rope1d_flat`` encoder):
                index n answers the training place of patch (n // training width, n % training width), clamped
    normalised  the patch's centre as a fraction of the canvas (``rope2d_norm``, a learned table resampled to the
                new grid): it answers the third of the canvas that fraction falls in
    caption     patches counted back from the caption: M-RoPE's text starts max(H, W) ids after the block's
                start, so what a rotary decoder reads is a patch's offset to the caption, (max side - row, max side -
                col) on a square grid; the offset answers the training place of the patch it named there, (row, col)
                shifted by (training side - side), clamped. (The corner rule is this rule for a decoder that read
                its ids absolutely; the time offset, which grows with the side too, is left out.)

A training patch's place is the place of its centre on the training canvas (with ``inside_cells`` on a canvas of 3
patches a side, each patch is one place's cell).
"""

from __future__ import annotations

from mmrope.data.shapes import COLS, ROWS, place_name

RULES = ("corner", "centre", "raster", "normalised", "caption")


def _third(fraction: float) -> int:
    return min(2, max(0, int(fraction * 3)))


def _clamp(i: int, n: int) -> int:
    return min(n - 1, max(0, i))


def predicted_place(scene: dict, size: int, protocol: str, rule: str, patch: int, train_size: int) -> str:
    """The place ``rule`` answers for the level-1 ``scene`` shown at ``size`` px under ``protocol``
    (:data:`mmrope.data.shapes.SIZE_PROTOCOLS`), for a model with ``patch`` px patches trained at ``train_size``."""
    if rule not in RULES:
        raise ValueError(f"transfer rule {rule!r} is unknown: expected one of {', '.join(RULES)}")
    obj = scene["objects"][0]
    canvas = scene["canvas"] if protocol == "anchored" else size  # where the scene's unit square lies, in px
    col, row = int(obj["x"] * canvas) // patch, int(obj["y"] * canvas) // patch  # the patch under the centre
    grid, train_grid = size // patch, train_size // patch
    if rule == "corner":
        col, row = _clamp(col, train_grid), _clamp(row, train_grid)
    elif rule in ("centre", "caption"):
        # centre: offsets from the centre patch, (n - 1) // 2, as VideoRoPE centres h and w; caption: offsets from
        # the caption, which M-RoPE puts max(H, W) = n ids after the block's first
        shift = (train_grid - 1) // 2 - (grid - 1) // 2 if rule == "centre" else train_grid - grid
        col, row = _clamp(col + shift, train_grid), _clamp(row + shift, train_grid)
    elif rule == "raster":
        index = row * grid + col
        col, row = index % train_grid, _clamp(index // train_grid, train_grid)
    if rule == "normalised":
        x, y = (col + 0.5) / grid, (row + 0.5) / grid
    else:
        x, y = (col + 0.5) / train_grid, (row + 0.5) / train_grid
    return place_name(ROWS[_third(y)], COLS[_third(x)])


def rule_accuracy(scenes: list[dict], size: int, protocol: str, rule: str, patch: int, train_size: int) -> float:
    """The share of level-1 ``scenes`` whose place ``rule`` gets right at ``size`` under ``protocol``."""
    right = [predicted_place(s, size, protocol, rule, patch, train_size) == s["objects"][0]["place"] for s in scenes]
    return sum(right) / len(right)
