"""Who gets which position: (t, h, w) ids for the joint sequence, (row, col) ids for encoder patches.

Positions are data: they are computed here, once, from the token layout, and passed down to the rotary modules.

Joint sequence (decoder side, Qwen2-VL semantics). A media block of decoder grid (T, H, W) that starts at id s gives
its token (t, i, j) the ids (s + t, s + i, s + j), tokens in t-major raster order; the text after it continues at the
block's largest id + 1; text tokens get t = h = w. Example, merge 2, image grid [1, 4, 6] (decoder grid 1 x 2 x 3):

    tokens  x  x  x  vs  img img img img img img  ve  x  x
    t       0  1  2  3   4   4   4   4   4   4    7   8  9
    h       0  1  2  3   4   4   4   5   5   5    7   8  9
    w       0  1  2  3   4   5   6   4   5   6    7   8  9        rope_delta = 9 + 1 - 13 = -3

Schemes that place media ids themselves (V2PE's fractional steps, Circle-RoPE's ring) hand their per-token offsets
to :func:`placed_position_ids`, which lays text around them by the same rules: float32 ids, float64 rope deltas.

Encoder side. The patch merger fuses each m x m window of patches into one decoder token, so the encoder keeps the
patches of a window contiguous (Qwen2-VL's order): windows in raster order, patches within a window in raster order,
and a clip's temporal patches one after another. :func:`grid_positions`, :func:`raster_positions` and
:func:`patch_positions` return ids in exactly that order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PAD_POSITION = 1  # filler id for padded slots (Qwen2-VL uses 1); attention masks them anyway


def grid_positions(h: int, w: int, merge: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """(row, col) of each patch of an h x w grid, in merge-window order -> (h * w, 2) long."""
    if h % merge or w % merge:
        raise ValueError(f"patch grid {h}x{w} is not divisible by spatial_merge_size={merge}")
    rows = torch.arange(h, device=device).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
    cols = torch.arange(w, device=device).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
    # (h/m, m, w/m, m) -> (h/m, w/m, m, m): window-major, then raster inside the window
    rows, cols = (t.permute(0, 2, 1, 3).reshape(-1) for t in (rows, cols))
    return torch.stack((rows, cols), dim=-1)


def patch_positions(t: int, h: int, w: int, merge: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """(t, row, col) of each patch of ``t`` temporal patches of an h x w grid -> (t * h * w, 3) long: time-major,
    each frame in merge-window order (:func:`grid_positions`), so a clip's merged tokens come out in the t-major
    raster order that :func:`get_rope_index` gives its ids in. An image is t = 1, with t id 0."""
    spatial = grid_positions(h, w, merge, device)  # (h*w, 2)
    time = torch.arange(t, device=device).repeat_interleave(h * w)
    return torch.cat((time[:, None], spatial.repeat(t, 1)), dim=1)


def raster_positions(h: int, w: int, merge: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """Raster index row * w + col of each patch, in the same (merge-window) order as :func:`grid_positions` -> (h*w,).

    This is the flattened 1D arm: vertical neighbours sit w apart, and w changes with the image size.
    """
    pos = grid_positions(h, w, merge, device)
    return pos[:, 0] * w + pos[:, 1]


def real_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(b, n) bool: the tokens of ``input_ids`` that ``attention_mask`` keeps (all of them when it is None)."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}: expected {tuple(input_ids.shape)} "
                         "like input_ids")
    return attention_mask.bool()


def _media_ids(is_media: torch.Tensor, grid_thw: torch.Tensor | None, merge: int,
               time_scale: torch.Tensor | None, kind: str):
    """For the media tokens of one kind: (t, i, j) inside their block, their offset in it, and per token the
    block's token count, its largest (t, i, j) id and the token's flat index. Blocks are matched to grids in order
    of appearance over the batch."""
    flat = is_media.reshape(-1)
    n_tokens = int(flat.sum())
    if grid_thw is None or len(grid_thw) == 0:
        if n_tokens:
            raise ValueError(f"input_ids hold {n_tokens} {kind} tokens but no {kind}_grid_thw was given")
        return None
    grid = grid_thw if isinstance(grid_thw, torch.Tensor) and grid_thw.dtype == torch.long and grid_thw.ndim == 2 \
        else torch.as_tensor(grid_thw, device=is_media.device).long().reshape(-1, 3)
    t, h, w = grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge  # decoder grid
    counts = t * h * w
    ends = counts.cumsum(0)
    # one host sync for all three checks: a bad grid, or a token count that does not match it
    if bool((grid[:, 1:] % merge != 0).any() | (grid <= 0).any() | (ends[-1] != n_tokens)):
        if ((grid[:, 1:] % merge) != 0).any() or (grid <= 0).any():
            raise ValueError(f"{kind}_grid_thw {grid.tolist()} must hold positive (T, H, W) with H and W divisible "
                             f"by spatial_merge_size={merge}")
        raise ValueError(f"input_ids hold {n_tokens} {kind} tokens but {kind}_grid_thw {grid.tolist()} with "
                         f"spatial_merge_size={merge} needs {int(counts.sum())} ({counts.tolist()} per {kind})")
    starts = ends - counts  # ordinal of each block's first token among the media tokens
    ordinal = torch.arange(n_tokens, device=flat.device)
    block = torch.searchsorted(ends, ordinal, right=True)  # which grid each media token belongs to
    offset = ordinal - starts[block]  # index of each media token inside its block
    hw, w_tok = (h * w)[block], w[block]
    ti, rest = offset // hw, offset % hw
    ii, ji = rest // w_tok, rest % w_tok
    t_max = t - 1
    if time_scale is not None:  # Qwen2.5-VL absolute time: t * seconds_per_grid * tokens_per_second, floored
        scale = torch.as_tensor(time_scale, dtype=torch.float64, device=flat.device).reshape(-1)
        ti = (ti.double() * scale[block]).floor().long()
        t_max = ((t - 1).double() * scale).floor().long()
    # Each block must be one contiguous run of tokens within one row: its k-th token sits k after its first.
    where = flat.nonzero().squeeze(1)  # flat position of each media token
    first = where[starts]  # flat position of each block's first token
    row_len = is_media.shape[1]
    if bool((where != first[block] + offset).any() | (first % row_len + counts > row_len).any()):
        raise ValueError(f"{kind} tokens do not form one contiguous run per {kind} of the sizes "
                         f"{kind}_grid_thw gives ({counts.tolist()} tokens)")
    extent = torch.stack((t_max, h - 1, w - 1), dim=-1).amax(dim=-1)  # largest id offset in each block
    return torch.stack((ti, ii, ji)), offset, counts[block], extent[block], where


def get_rope_index(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                   video_grid_thw: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                   image_token_id: int, video_token_id: int | None = None, spatial_merge_size: int = 2,
                   second_per_grid_t: torch.Tensor | None = None, tokens_per_second: float | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE ids of a batch -> (position_ids (3, b, n), rope_deltas (b, 1)), vectorised over tokens and images.

    ``image_grid_thw`` / ``video_grid_thw``: (num_media, 3) encoder-patch grids, in order of appearance over the
    batch. Padded slots (``attention_mask`` 0, left or right) get :data:`PAD_POSITION`; real tokens get exactly the
    ids they would get unpadded. ``rope_deltas = max_id + 1 - n`` so that the token decoded at cache index c takes
    id c + delta on all three rows. ``second_per_grid_t`` (per video) with ``tokens_per_second`` turns on
    Qwen2.5-VL's absolute-time scaling of video t ids.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: expected (batch, seq)")
    real = real_token_mask(input_ids, attention_mask)
    b, n = input_ids.shape
    compact = real.long().cumsum(1) - 1  # running index over real tokens
    thw = torch.zeros(3, b, n, dtype=torch.long, device=input_ids.device)  # (t, i, j) inside a block; 0 for text
    offset = torch.zeros(b, n, dtype=torch.long, device=input_ids.device)  # index inside a block; 0 for text
    shift_at_end = torch.zeros(b * n, dtype=torch.long, device=input_ids.device)

    kinds = [("image", image_token_id, image_grid_thw, None)]
    if video_token_id is not None:
        scale = None
        if second_per_grid_t is not None and tokens_per_second is not None:
            scale = torch.as_tensor(second_per_grid_t, dtype=torch.float64) * tokens_per_second
        kinds.append(("video", video_token_id, video_grid_thw, scale))
    for kind, token_id, grid, scale in kinds:
        is_media = (input_ids == token_id) & real
        found = _media_ids(is_media, grid, spatial_merge_size, scale, kind)
        if found is None:
            continue
        ids, media_offset, count, extent, where = found
        thw.view(3, -1)[:, where] = ids
        offset.view(-1)[where] = media_offset
        # A block of `count` tokens advances the text ids by extent + 1: the shift lands on its last token.
        last = media_offset == count - 1
        shift_at_end[where[last]] = (extent + 1 - count)[last]

    shift_at_end = shift_at_end.view(b, n)
    shift_before = shift_at_end.cumsum(1) - shift_at_end  # exclusive: blocks that ended strictly before
    start = compact - offset + shift_before  # text: its own id; media: the id its block starts at
    position_ids = (start.unsqueeze(0) + thw).masked_fill_(~real, PAD_POSITION)
    # ids only ever grow by one past the previous maximum, so the largest is (real tokens - 1) + all shifts
    rope_deltas = (real.sum(1) + shift_at_end.sum(1) - n).unsqueeze(1)
    return position_ids, rope_deltas


def flat_position_ids(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                      video_grid_thw: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat arm: every real token, image tokens in raster order, gets its running index on all three rows, so
    M-RoPE degenerates to 1D RoPE over the flattened sequence. Same inputs and outputs as :func:`get_rope_index`."""
    real = real_token_mask(input_ids, attention_mask)
    compact = (real.long().cumsum(1) - 1).masked_fill(~real, PAD_POSITION)
    position_ids = compact.unsqueeze(0).expand(3, -1, -1).clone()
    rope_deltas = (real.sum(1, keepdim=True) - input_ids.shape[1]).long()
    return position_ids, rope_deltas


def decode_position_ids(cache_index: int | torch.Tensor, rope_deltas: torch.Tensor, length: int = 1) -> torch.Tensor:
    """Ids (3, b, length) of the next ``length`` tokens decoded at ``cache_index``: cache_index + delta, all rows.

    Integer deltas give long ids. Float deltas (float64, from :func:`placed_position_ids`) give the float32 ids such
    schemes hand the rotary maths: the sum is exact in float64, so the id is the one the full sequence gives."""
    steps = torch.arange(length, device=rope_deltas.device) + cache_index
    ids = steps.unsqueeze(0) + rope_deltas
    if ids.is_floating_point():
        ids = ids.to(FLOAT_ID_DTYPE)
    return ids.unsqueeze(0).expand(3, -1, -1)


FLOAT_ID_DTYPE = torch.float32  # fractional ids: what the rotary maths computes its angles in
ADVANCE_QUANTUM = 2.0**-20  # a block's advance is a multiple of this: text ids stay exact float64 sums


class MediaTokens(NamedTuple):
    """Every media token of a batch, blocks in order of appearance over the batch (images and clips alike): what a
    scheme that places its media ids itself (:func:`placed_position_ids`) computes them from. m media tokens."""

    where: torch.Tensor  # (m,) flat index into (b * n)
    block: torch.Tensor  # (m,) the medium it belongs to: a row of ``grid``
    offset: torch.Tensor  # (m,) its index inside its block
    thw: torch.Tensor  # (3, m) long: its (t, i, j) on its block's decoder grid (t-major raster order)
    grid: torch.Tensor  # (num_media, 3) long: each block's decoder grid (T, H, W), merged tokens


def media_tokens(input_ids: torch.Tensor, grid_thw: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                 *, token_ids: tuple[int, ...], spatial_merge_size: int) -> MediaTokens | None:
    """The media tokens (ids in ``token_ids``, real under ``attention_mask``) of ``input_ids`` (b, n), matched to
    ``grid_thw`` (num_media, 3) encoder-patch grids in order of appearance; each block must be one contiguous run of
    its grid's size. None when there are no media."""
    real = real_token_mask(input_ids, attention_mask)
    is_media = torch.zeros_like(real)
    for token_id in token_ids:
        is_media |= input_ids == token_id
    found = _media_ids(is_media & real, grid_thw, spatial_merge_size, None, "media")
    if found is None:
        return None
    thw, offset, _, _, where = found
    grid = torch.as_tensor(grid_thw, device=input_ids.device).long().reshape(-1, 3)
    grid = torch.stack((grid[:, 0], grid[:, 1] // spatial_merge_size, grid[:, 2] // spatial_merge_size), dim=-1)
    block = (offset == 0).long().cumsum(0) - 1
    return MediaTokens(where, block, offset, thw, grid)


def placed_position_ids(input_ids: torch.Tensor, media: MediaTokens | None, relative: torch.Tensor | None,
                        advance: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of a batch whose scheme places each media token itself -> (position_ids (3, b, n) float32, rope_deltas
    (b, 1) float64). Same padding rules as :func:`get_rope_index`.

    A block starts at s, the id its first token would get if it were text; its token m takes s + ``relative[:, m]``
    ((3, m), any float) and the text after it continues at s + ``advance[block]`` ((num_media,)), where
    M-RoPE would continue at s + its largest offset + 1. Text ids are the running index plus the advances beyond the
    token counts of the blocks before them. Advances are rounded to multiples of :data:`ADVANCE_QUANTUM`, so that
    every text id, and the delta, is an exact float64 sum: ``cache_index + delta`` (:func:`decode_position_ids`)
    then gives the next token the float32 id the full sequence gives it, bit for bit.
    """
    real = real_token_mask(input_ids, attention_mask)
    b, n = input_ids.shape
    compact = (real.long().cumsum(1) - 1).double()  # running index over real tokens
    shift_at_end = torch.zeros(b * n, dtype=torch.float64, device=input_ids.device)
    offset = torch.zeros(b * n, dtype=torch.float64, device=input_ids.device)  # index inside a block; 0 for text
    placed = torch.zeros(3, b * n, dtype=torch.float64, device=input_ids.device)  # relative ids; 0 for text
    if media is not None:
        counts = torch.bincount(media.block, minlength=len(media.grid))
        offset[media.where] = media.offset.double()
        placed[:, media.where] = relative.double()
        advance = (advance.double() / ADVANCE_QUANTUM).round() * ADVANCE_QUANTUM
        last = media.offset == counts[media.block] - 1
        shift_at_end[media.where[last]] = (advance - counts.double())[media.block[last]]
    shift = shift_at_end.view(b, n).cumsum(1)
    shift_before = torch.cat((shift.new_zeros(b, 1), shift[:, :-1]), dim=1)  # blocks that ended strictly before
    start = compact - offset.view(b, n) + shift_before  # text: its own id; media: the id its block starts at
    position_ids = start.unsqueeze(0) + placed.view(3, b, n)
    position_ids = position_ids.masked_fill_(~real, PAD_POSITION).to(FLOAT_ID_DTYPE)
    rope_deltas = (real.sum(1) - n).double() + shift[:, -1]
    return position_ids, rope_deltas.unsqueeze(1)
