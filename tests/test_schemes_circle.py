"""circle_rope: the collection's worked examples, the paper's claim (every text token equally far from every patch
of a block), rings stacked along the text direction for clips, padding, and decoding with fractional ids."""

import math

import pytest
import torch
from padding import padded

from mmrope.model.config import CaptionerConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.position_ids import PAD_POSITION
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID

VS, VE, IMG, VID = VISION_START_ID, VISION_END_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID
WORD = 20  # any text id
CircleRoPE = SCHEMES["circle_rope"]


def scheme():
    return CircleRoPE(CaptionerConfig(position_scheme="circle_rope"))


def ids_of(tokens, grids, clip=None, attention_mask=None):
    ids, deltas = scheme().position_ids(torch.tensor([tokens]), torch.tensor(grids), attention_mask, clip)
    return ids[:, 0], deltas[0, 0]


# Numbers from running the collection's get_circlerope_index (JJJYmmm/Multimodal-RoPEs) with the official config
# (move_to_origin=True, radius=10, alpha=0.5) on these sequences; the clip passed as one block of t = 2, which its
# code stacks into two rings (its Qwen3-VL path would cut a clip into one block per frame).
WORKED = {
    "image 2x3": ([VS] + [IMG] * 6 + [VE], [[1, 4, 6]], False, [
        [0.0, 1.0, 8.527473, 6.831871, -7.164967, -7.100424, -6.907818, 9.527473],
        [0.0, 8.071068, -0.024600, -6.864871, 5.082483, 4.162885, 3.193280, 9.527473],
        [0.0, -6.071068, -5.502873, 3.033000, 5.082483, 5.937539, 6.714539, 9.527473]], 2.527473),
    "text, image 2x2, text": ([WORD, WORD, VS] + [IMG] * 4 + [VE, WORD, WORD], [[1, 4, 4]], False, [
        [0.0, 1.0, 2.0, 3.0, 10.886752, -5.164967, -4.886752, 11.886752, 12.886752, 13.886752],
        [0.0, 1.0, 2.0, 10.071068, -2.773502, 7.082483, 5.113250, 11.886752, 12.886752, 13.886752],
        [0.0, 1.0, 2.0, -4.071068, 0.886750, 7.082483, 8.773502, 11.886752, 12.886752, 13.886752]], 4.886752),
    "text, clip 2x2x2, text": ([WORD, VS] + [VID] * 8 + [VE, WORD], [[2, 4, 4]], True, [
        [0.0, 1.0, 2.0, 9.886752, -6.164967, -5.886752, 3.0, 10.886752, -5.164967, -4.886752, 11.886752, 12.886752],
        [0.0, 1.0, 9.071068, -3.773502, 6.082483, 4.113250, 10.071068, -2.773502, 7.082483, 5.113250, 11.886752,
         12.886752],
        [0.0, 1.0, -5.071068, -0.113250, 6.082483, 7.773502, -4.071068, 0.886750, 7.082483, 8.773502, 11.886752,
         12.886752]], 1.886752),
    "image 1x3": ([VS] + [IMG] * 3 + [VE], [[1, 2, 6]], False, [
        [0.0, 1.0, 8.071068, 8.071068, 9.071068],
        [0.0, -6.071068, 1.0, -6.071068, 9.071068],
        [0.0, 8.071068, -6.071068, 1.0, 9.071068]], 5.071068),
}


@pytest.mark.parametrize("case", list(WORKED))
def test_worked_examples_match_the_collection(case):
    tokens, grids, clip, expected, delta = WORKED[case]
    ids, got_delta = ids_of(tokens, grids, torch.tensor([clip]))
    assert ids.dtype == torch.float32 and got_delta.dtype == torch.float64
    torch.testing.assert_close(ids, torch.tensor(expected), atol=1e-5, rtol=0)  # the collection computes in float32
    assert got_delta.item() == pytest.approx(delta, abs=1e-5)


def block_offsets(ids, tokens, token=IMG):
    """The ids (3, m) of the media tokens, as float64."""
    return ids[:, torch.tensor(tokens) == token].double()


@pytest.mark.parametrize("grid", [[1, 4, 6], [1, 8, 8], [1, 6, 10], [1, 2, 2]])
def test_every_text_token_is_equally_far_from_every_patch(grid):
    """The paper's claim: the ring is centred on the text line and orthogonal to it, so a text token at (p, p, p) is
    sqrt(3 (p - s)^2 + R^2) from each patch of a block centred at (s, s, s)."""
    n = grid[1] * grid[2] // 4
    tokens = [WORD] * 3 + [VS] + [IMG] * n + [VE] + [WORD] * 3
    ids, _ = ids_of(tokens, [grid])
    patches = block_offsets(ids, tokens)  # (3, n)
    centre = 4.0  # the id the first image token would get as text: after three words and vs
    torch.testing.assert_close(patches.sum(0), torch.full((n,), 3 * centre, dtype=torch.float64), atol=1e-5, rtol=0)
    text = [i for i, t in enumerate(tokens) if t != IMG]
    for i in text:
        p = ids[:, i].double()
        assert p[0] == p[1] == p[2]  # text lies on the line (1, 1, 1)
        distances = (patches - p[:, None]).norm(dim=0)
        expected = math.sqrt(3 * (p[0].item() - centre) ** 2 + CircleRoPE.radius ** 2)
        torch.testing.assert_close(distances, torch.full_like(distances, expected), atol=1e-4, rtol=0)
    if n == 1:
        return
    # under M-RoPE the same text token is nearer some patches than others: the bias the ring removes
    mrope, _ = SCHEMES["mrope"](CaptionerConfig(position_scheme="mrope")).position_ids(torch.tensor([tokens]),
                                                                                       torch.tensor([grid]))
    distances = (block_offsets(mrope[:, 0], tokens) - mrope[:, 0, 0].double()[:, None]).norm(dim=0)
    assert distances.max() - distances.min() > 1


def test_a_clips_rings_are_stacked_along_the_text_direction():
    tokens = [WORD, VS] + [VID] * 12 + [VE, WORD]
    ids, _ = ids_of(tokens, [[3, 4, 4]], torch.tensor([True]))
    frames = block_offsets(ids, tokens, VID).view(3, 3, 4)  # (rows, frames, tokens per frame)
    for f in (1, 2):  # frame f is frame 0 moved by f along (1, 1, 1)
        torch.testing.assert_close(frames[:, f], frames[:, 0] + f, atol=1e-5, rtol=0)
    first_word = ids[:, 0].double()
    for f in range(3):  # each ring is centred on the text line, one id further along it per frame
        distances = (frames[:, f] - first_word[:, None]).norm(dim=0)
        expected = math.sqrt(3 * (2 + f) ** 2 + CircleRoPE.radius ** 2)
        torch.testing.assert_close(distances, torch.full_like(distances, expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_slots_not_ids(side):
    grids = [[1, 4, 6], [1, 8, 8], [2, 4, 4]]
    rows = [[WORD, VS] + [IMG] * 6 + [VE, WORD], [VS] + [IMG] * 16 + [VE], [WORD, WORD, VS] + [VID] * 8 + [VE]]
    clip = torch.tensor([False, False, True])
    ids, mask = padded(rows, side)
    batch, deltas = scheme().position_ids(ids, torch.tensor(grids), mask, clip)
    for i, row in enumerate(rows):
        alone, delta = ids_of(row, grids[i:i + 1], clip[i:i + 1])
        assert torch.equal(batch[:, i][:, mask[i].bool()], alone)
        assert (batch[:, i][:, ~mask[i].bool()] == PAD_POSITION).all()
        assert deltas[i].item() == delta.item() + len(row) - ids.shape[1]


def test_decoding_continues_the_full_sequences_fractional_ids_exactly():
    """Two media in one row, left padding, five decoded tokens: cache_index + delta (float64) gives each the float32
    id the scheme gives the whole sequence, bit for bit, though the ids after a ring are fractional."""
    rows = [[VS] + [IMG] * 6 + [VE, WORD, VS] + [IMG] * 6 + [VE], [WORD, VS] + [IMG] * 16 + [VE]]
    grid_thw = torch.tensor([[1, 4, 6], [1, 6, 4], [1, 8, 8]])
    ids, mask = padded(rows, "left")
    s = scheme()
    _, deltas = s.position_ids(ids, grid_thw, mask)
    assert deltas.dtype == torch.float64 and (deltas.frac() != 0).all()
    decoded = s.decode_position_ids(ids.shape[1], deltas, length=5)
    full_ids = torch.cat((ids, torch.full((2, 5), WORD)), 1)
    full, _ = s.position_ids(full_ids, grid_thw, torch.cat((mask, torch.ones(2, 5, dtype=mask.dtype)), 1))
    assert decoded.dtype == torch.float32 and torch.equal(decoded, full[..., -5:])


def test_chunked_allocation_and_what_it_says_of_itself():
    s = scheme()
    _, axes = s.pair_frequencies()
    t, h, w = s.rope.mrope_section
    assert axes.tolist() == [0] * t + [1] * h + [2] * w
    assert "2505.16416" in CircleRoPE.source and "AGE" in CircleRoPE.__doc__
    turns = s.grid_turns((2, 4, 4))  # the spectrum diagnostic reads fractional ids too
    assert set(turns) == {"t", "h", "w"} and all(torch.isfinite(v).all() for pair in turns.values() for v in pair)


def test_a_block_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="input_ids hold 5 media tokens"):
        ids_of([VS] + [IMG] * 5 + [VE], [[1, 4, 6]])
