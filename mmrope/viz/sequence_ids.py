"""The (t, h, w) ids a decoder position scheme gives one image (or clip) followed by a caption: the numbers
``mmrope demo`` prints and ``mmrope viz ids`` draws, for any registered scheme, through the scheme's own
``position_ids`` (a 1D scheme repeats its one id on the three rows; v2pe and the placed layouts give fractions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.tokens import IMAGE_BREAK_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, vision_block
from mmrope.viz.figures import format_id

WORD_ID = 100  # any id of an ordinary token: the ids do not depend on which word it is


@dataclass(frozen=True)
class SequenceIds:
    """A media block and its caption: ``tokens`` ("<vs>", "img" or "vid", "<br>" for a row break, "<ve>", the
    words), ``cells`` each media token's (t, i, j) in its block (None for the others), ``position_ids`` (3, n),
    ``rope_delta`` (what continues the ids in cached decoding), ``patches`` the encoder grid (t, rows, columns)
    and ``merged`` the decoder's."""

    tokens: list[str]
    cells: list[tuple[int, int, int] | None]
    position_ids: torch.Tensor
    rope_delta: float
    patches: tuple[int, int, int]
    merged: tuple[int, int, int]

    def labels(self) -> list[str]:
        """``tokens`` with each media token's place: ``img i,j``, or ``vid t,i,j`` in a clip."""
        clip = self.patches[0] > 1
        return [token if cell is None else f"{token} {','.join(map(str, cell[0 if clip else 1:]))}"
                for token, cell in zip(self.tokens, self.cells)]


def sequence_ids(scheme: str, height: int, width: int, patch_size: int = 8, merge: int = 2, frames: int = 1,
                 text: str = "red circle left of blue square") -> SequenceIds:
    """The ids ``scheme`` gives ``[vision_start, media tokens, vision_end, words]`` for a ``height`` x ``width``
    image (``frames`` > 1: a clip of that many temporal patches) cut into ``patch_size`` patches merged
    ``merge`` x ``merge``; a bad size or an unknown scheme is one line."""
    window = patch_size * merge
    if min(height, width, patch_size, merge) <= 0 or height % window or width % window:
        raise ValueError(f"image size {height}x{width} must be positive multiples of patch_size x merge = {window}")
    if frames < 1:
        raise ValueError(f"frames={frames}: expected at least 1")
    # the ids do not depend on the widths; three key/value heads let mhrope give t, h and w one each
    config = CaptionerConfig(VisionConfig(patch_size=patch_size, spatial_merge_size=merge, image_size=window),
                             TextConfig(dim=192, num_heads=6, num_kv_heads=3), position_scheme=scheme)
    rule = SCHEMES[scheme](config)
    clip = frames > 1
    rows, columns = height // window, width // window
    words = text.split()
    block = vision_block(frames * rows * columns, clip, columns if rule.row_breaks else None)
    input_ids = torch.tensor([block + [WORD_ID] * len(words)])
    grid_thw = torch.tensor([[frames, rows * merge, columns * merge]])
    position_ids, deltas = rule.position_ids(input_ids, grid_thw, clip=torch.tensor([clip]))
    media = iter((k // (rows * columns), k % (rows * columns) // columns, k % columns)
                 for k in range(frames * rows * columns))
    names = {IMAGE_TOKEN_ID: "img", VIDEO_TOKEN_ID: "vid", IMAGE_BREAK_ID: "<br>"}
    tokens = ["<vs>"] + [names[i] for i in block[1:-1]] + ["<ve>"] + words
    cells = [next(media) if token in ("img", "vid") else None for token in tokens]
    patches = (frames, rows * merge, columns * merge)
    return SequenceIds(tokens, cells, position_ids[:, 0], float(deltas.flatten()[0]), patches, (frames, rows, columns))


def format_ids(labels: list[str], position_ids: torch.Tensor) -> str:
    """A table with one column per token and the t, h, w rows."""
    cells = [labels] + [[format_id(v) for v in row] for row in position_ids.tolist()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(labels))]
    names = ["token", "t", "h", "w"]
    return "\n".join(f"{name:>5}  " + " ".join(c.rjust(w) for c, w in zip(row, widths))
                     for name, row in zip(names, cells))
