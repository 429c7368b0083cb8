"""Token rows padded into one batch, as the tests of several schemes need them (not a test file)."""

import torch

from mmrope.model.tokens import PAD_ID


def padded(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (ids, attention mask), both (b, n), padded with PAD_ID on the ``side`` ("left" or
    "right") to the longest row."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD_ID)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        where = slice(length - len(row), None) if side == "left" else slice(0, len(row))
        ids[i, where], mask[i, where] = torch.tensor(row), 1
    return ids, mask
