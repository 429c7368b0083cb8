"""VideoRoPE, HoPE and Lumos-1's MM-RoPE (mmrope.model.decoder_schemes.videorope): ids against the reference code's
numbers, padding, decoding, the rotary allocations, HoPE's training draws, and the relative-position properties the
papers claim."""

from __future__ import annotations

import pytest
import torch

from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.rope import apply_rotary
from mmrope.model.tokens import IMAGE_TOKEN_ID, NUM_SPECIAL, PAD_ID, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID

NAMES = ["videorope", "hope", "lumos_mmrope"]
X = NUM_SPECIAL + 1  # a caption token


def make(name, vision=None, tokens_per_second=None, seed=0):
    torch.manual_seed(seed)
    config = CaptionerConfig(vision or VisionConfig(), TextConfig(), name, tokens_per_second=tokens_per_second)
    return SCHEMES[name](config).eval()


def block(n, clip=False):
    return [VISION_START_ID] + [VIDEO_TOKEN_ID if clip else IMAGE_TOKEN_ID] * n + [VISION_END_ID]


def ids_of(scheme, tokens, grid, clip=None, **kwargs):
    ids, deltas = scheme.position_ids(torch.tensor([tokens]), torch.tensor(grid),
                                      clip=None if clip is None else torch.tensor(clip), **kwargs)
    return ids[:, 0].tolist(), deltas[0, 0].item()


IMAGE = block(6)  # grid [1, 4, 6], merge 2: a 2 x 3 decoder grid
TEXT_IMAGE_TEXT = [X, X, X] + IMAGE + [X, X]
CLIP = [X] + block(12, clip=True) + [X, X]  # grid [3, 4, 4]: 3 x 2 x 2

# From running the official code on these layouts (Wiselnn570/VideoRoPE get_t_scale_rope_index, scale 2.0; hrlics/HoPE
# get_dynamic_rope_index, scale_factors=[0.75]; the Multimodal-RoPEs collection's get_mmrope_index with
# position_scale (1, 16, 16)): (t, h, w) rows, rope delta.
REFERENCE = {
    ("videorope", "image"): ([[0, 1, 1, 1, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 2, 0, 1, 2, 2]], -5),
    ("videorope", "text image text"): ([[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 5, 6, 7],
                                        [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 6, 7],
                                        [0, 1, 2, 3, 3, 4, 5, 3, 4, 5, 5, 6, 7]], -5),
    ("videorope", "clip"): ([[0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8, 9],
                             [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7, 8, 9],
                             [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 7, 8, 9]], -7),
    ("hope", "image"): ([[0, 1, 1, 1, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 2, 0, 1, 2, 2]], -5),
    ("hope", "clip"): ([[0, 1, 2, 2, 2, 2, 2.75, 2.75, 2.75, 2.75, 3.5, 3.5, 3.5, 3.5, 4.5, 5.5, 6.5],
                        [0, 1, 2, 2, 3, 3, 2.75, 2.75, 3.75, 3.75, 3.5, 3.5, 4.5, 4.5, 4.5, 5.5, 6.5],
                        [0, 1, 2, 3, 2, 3, 2.75, 3.75, 2.75, 3.75, 3.5, 4.5, 3.5, 4.5, 4.5, 5.5, 6.5]], -9.5),
    ("lumos_mmrope", "image"): ([[0, 1, 1, 1, 1, 1, 1, 34], [0, 1, 1, 1, 17, 17, 17, 34],
                                 [0, 1, 17, 33, 1, 17, 33, 34]], 27),
    ("lumos_mmrope", "text image text"): ([[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 37, 38, 39],
                                           [0, 1, 2, 3, 4, 4, 4, 20, 20, 20, 37, 38, 39],
                                           [0, 1, 2, 3, 4, 20, 36, 4, 20, 36, 37, 38, 39]], 27),
}
LAYOUTS = {"image": (IMAGE, [[1, 4, 6]], None), "text image text": (TEXT_IMAGE_TEXT, [[1, 4, 6]], None),
           "clip": (CLIP, [[3, 4, 4]], [True])}


@pytest.mark.parametrize("name, layout", list(REFERENCE))
def test_ids_are_the_reference_codes(name, layout):
    tokens, grid, clip = LAYOUTS[layout]
    assert ids_of(make(name), tokens, grid, clip) == REFERENCE[name, layout]


def test_lumos_clip_by_the_rule():
    """By hand from the rule (the collection splits clips into one-frame blocks): a = (temporal_patch_size 2, 16,
    16), so t steps 2 per temporal patch and the text after continues at s + max(2 * 2, 16, 16) + 1."""
    scheme = make("lumos_mmrope", VisionConfig(temporal_patch_size=2))
    assert scheme.scale == (2, 16, 16)
    assert ids_of(scheme, CLIP, [[3, 4, 4]], [True]) == ([
        [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 19, 20, 21],
        [0, 1, 2, 2, 18, 18, 2, 2, 18, 18, 2, 2, 18, 18, 19, 20, 21],
        [0, 1, 2, 18, 2, 18, 2, 18, 2, 18, 2, 18, 2, 18, 19, 20, 21]], 5)
    # a long clip of 1 x 1 frames: time is the largest offset, 2 * 9, so the text goes on at s + 19
    ids, delta = ids_of(scheme, block(10, clip=True) + [X], [[10, 2, 2]], [True])
    assert ids[0] == [0] + list(range(1, 20, 2)) + [20, 21] and ids[1][1:11] == [1] * 10 and delta == 21 + 1 - 13


def test_time_in_tokens_per_second():
    """With tokens_per_second, tau is Qwen2.5-VL's absolute time floor(t * second_per_grid_t * tokens_per_second)
    before the scheme spaces or scales it; Lumos then takes a_t = 1."""
    tokens, grid = [X] + block(3, clip=True) + [X], [[3, 2, 2]]  # 3 x 1 x 1
    videorope = make("videorope", tokens_per_second=2.0)
    ids, _ = ids_of(videorope, tokens, grid, [True], second_per_grid_t=[0.75])  # tau = floor(1.5 t) = 0, 1, 3
    assert ids[0] == [0, 1, 2, 4, 8, 9, 10]
    with pytest.raises(ValueError, match="expected second_per_grid_t"):
        ids_of(videorope, tokens, grid, [True])
    lumos = make("lumos_mmrope", VisionConfig(temporal_patch_size=2), tokens_per_second=2.0)
    assert lumos.scale == (1, 16, 16)
    ids, _ = ids_of(lumos, tokens, grid, [True], second_per_grid_t=[0.75])
    assert ids[0] == [0, 1, 2, 3, 5, 6, 7]  # s + tau, then s + max(3, 0, 0) + 1


@pytest.mark.parametrize("name", NAMES)
def test_padding_left_or_right_leaves_each_rows_ids(name):
    scheme = make(name)
    rows = [TEXT_IMAGE_TEXT, [X] + block(4) + [X] + block(12, clip=True), CLIP]
    grids = [[1, 4, 6], [1, 4, 4], [3, 4, 4], [3, 4, 4]]
    clips = [False, False, True, True]
    alone = []
    for row, grid, clip in ((rows[0], grids[:1], clips[:1]), (rows[1], grids[1:3], clips[1:3]),
                            (rows[2], grids[3:], clips[3:])):
        alone.append(scheme.position_ids(torch.tensor([row]), torch.tensor(grid), clip=torch.tensor(clip)))
    n = max(map(len, rows))
    for side in ("left", "right"):
        pad = [[PAD_ID] * (n - len(r)) for r in rows]
        padded = [p + r if side == "left" else r + p for p, r in zip(pad, rows)]
        mask = [[int(t != PAD_ID) for t in r] for r in padded]
        ids, deltas = scheme.position_ids(torch.tensor(padded), torch.tensor(grids), torch.tensor(mask),
                                          clip=torch.tensor(clips))
        for i, (own_ids, own_delta) in enumerate(alone):
            real = torch.tensor(mask[i]).bool()
            assert torch.equal(ids[:, i, real], own_ids[:, 0]) and (ids[:, i, ~real] == 1).all()
            # the same next id: the padded row's delta is counted from its padded length
            assert deltas[i, 0] + n == own_delta[0, 0] + real.sum()


@pytest.mark.parametrize("name", NAMES)
def test_decoding_continues_each_rows_ids(name):
    """Left-padded prompts decode at cache index n: the next three ids are those the full sequences give."""
    scheme = make(name)
    prompts = [block(6), block(12, clip=True), [X] + block(4)]
    grids, clips = [[1, 4, 6], [3, 4, 4], [1, 4, 4]], [False, True, False]
    n = max(map(len, prompts))
    padded = [[PAD_ID] * (n - len(p)) + p for p in prompts]
    mask = torch.tensor([[int(t != PAD_ID) for t in p] for p in padded])
    _, deltas = scheme.position_ids(torch.tensor(padded), torch.tensor(grids), mask, clip=torch.tensor(clips))
    decoded = scheme.decode_position_ids(n, deltas, length=3)  # (3, b, 3)
    for i, prompt in enumerate(prompts):
        full, _ = scheme.position_ids(torch.tensor([prompt + [X] * 3]), torch.tensor(grids[i:i + 1]),
                                      clip=torch.tensor(clips[i:i + 1]))
        assert torch.equal(decoded[:, i], full[:, 0, -3:])
    assert decoded.dtype == torch.float32


def test_which_pairs_read_t_h_and_w():
    """16 pairs (head_dim 32), fastest first. VideoRoPE's official layout: h, w alternate on the fastest 12, t on the
    slowest 4; HoPE the same with t's pairs unrotated; Lumos-1: T, T, H, W, H, W, H, W twice."""
    diagonal = [1, 2] * 6 + [0] * 4
    for name, axes in (("videorope", diagonal), ("hope", diagonal), ("lumos_mmrope", [0, 0, 1, 2, 1, 2, 1, 2] * 2)):
        frequencies, axis = make(name).pair_frequencies()
        assert axis.tolist() == axes
        expected = 10000.0 ** (-torch.arange(16, dtype=torch.float64) / 16)
        if name == "hope":
            expected[axis == 0] = 0
        torch.testing.assert_close(frequencies, expected, rtol=1e-6, atol=0)
    for name in NAMES:
        assert CaptionerConfig(position_scheme=name).text.mrope_section == [4, 6, 6]
    assert SCHEMES["videorope"].default_section(64) == [16, 24, 24]  # the paper's
    assert SCHEMES["lumos_mmrope"].default_section(20) == [6, 7, 7]  # 2 components and T, T, H, W
    with pytest.raises(ValueError, match=r"text.mrope_section=\[2, 8, 6\] does not fit position_scheme='videorope'"):
        CaptionerConfig(text=TextConfig(mrope_section=[2, 8, 6]), position_scheme="videorope")
    with pytest.raises(ValueError, match="position_scheme='lumos_mmrope'.*expected \\[4, 6, 6\\]"):
        CaptionerConfig(text=TextConfig(mrope_section=[6, 5, 5]), position_scheme="lumos_mmrope")


def test_hopes_slowest_pairs_carry_no_position():
    """The NoPE band turns by 0 for every token, so q·k over its channels is the same at any distance: HoPE's
    semantic-preference argument. The other pairs turn."""
    scheme = make("hope")
    ids, _ = scheme.position_ids(torch.tensor([TEXT_IMAGE_TEXT * 3]), torch.tensor([[1, 4, 6]] * 3))
    cos, sin = scheme(ids)  # (1, n, 16)
    nope = scheme.pair_frequencies()[1] == 0
    assert (cos[..., nope] == 1).all() and (sin[..., nope] == 0).all() and (sin[0, 1:, ~nope] != 0).any(-1).all()
    channels = torch.cat((nope, nope))  # rotate-half: pair k is channels k and k + 16
    q, k = torch.randn(2, 1, 1, 1, 32) * channels
    n = ids.shape[-1]
    qs = apply_rotary(q.expand(1, 1, n, 32), cos, sin)
    ks = apply_rotary(k.expand(1, 1, n, 32), cos, sin)
    scores = qs[0, 0] @ ks[0, 0].T  # (n, n)
    torch.testing.assert_close(scores, torch.full_like(scores, float(scores[0, 0])), rtol=1e-5, atol=1e-5)


def test_hope_draws_its_scale_in_training_and_fixes_it_in_evaluation():
    clips = [X] + block(12, clip=True) + block(12, clip=True) + block(4)
    grid, clip = torch.tensor([[3, 4, 4], [3, 4, 4], [1, 4, 4]]), torch.tensor([True, True, False])

    def strides(scheme):  # the temporal scale each clip got: its frame 1 minus frame 0, on t
        ids, _ = scheme.position_ids(torch.tensor([clips]), grid, clip=clip)
        return [float(ids[0, 0, s + 4] - ids[0, 0, s]) for s in (2, 16)]

    scheme = make("hope", seed=3)
    assert strides(scheme) == [0.75, 0.75] and scheme.draws == 0  # evaluation: fixed, nothing drawn
    scheme.train()
    rng = torch.get_rng_state()
    drawn = [strides(scheme) for _ in range(12)]
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    assert scheme.draws == 12 and {s for d in drawn for s in d} <= set(scheme.train_scales)
    assert len({s for d in drawn for s in d}) > 2 and any(a != b for a, b in drawn)  # per medium, per batch
    image_ids = scheme.position_ids(torch.tensor([IMAGE]), torch.tensor([[1, 4, 6]]))[0][:, 0].tolist()
    assert image_ids == REFERENCE["hope", "image"][0]  # gamma scales time only: images are VideoRoPE's

    again = make("hope", seed=3).train()
    assert [strides(again) for _ in range(12)] == drawn  # reproducible: the run's seed fixes the sequence
    resumed = make("hope", seed=99).train()
    resumed.load_state_dict(again.state_dict())  # a checkpoint taken after 12 draws
    original = make("hope", seed=3).train()
    for _ in range(12):
        strides(original)
    assert [strides(resumed) for _ in range(5)] == [strides(original) for _ in range(5)]
    resumed.grid_turns((3, 2, 2))
    assert resumed.training and resumed.draws == 17  # reading the spectrum draws nothing


def test_a_hope_captioners_weights_carry_the_draws():
    from mmrope.checkpoints import load_weights
    from mmrope.model.captioner import Captioner

    torch.manual_seed(5)
    small = CaptionerConfig(VisionConfig(image_size=32, dim=32, depth=1, num_heads=2),
                            TextConfig(vocab_size=16, dim=32, depth=1, num_heads=2, num_kv_heads=1), "hope")
    model = Captioner(small)
    assert model.scheme.draws == 0  # building it (the spectrum warning) drew nothing
    model.scheme.draws = 7
    state = model.state_dict()
    assert state["text.positions._extra_state"].tolist() == [5, 7]
    fresh = Captioner(small)
    fresh.scheme.seed = 0
    load_weights(fresh, state, "test")
    assert (fresh.scheme.seed, fresh.scheme.draws) == (5, 7)


@pytest.mark.parametrize("name", ["videorope", "hope"])
def test_diagonal_frames_move_along_the_text_direction(name):
    """Every token of frame f sits at its frame-0 place + delta f on all three rows (the diagonal (1, 1, 1) text
    walks), so spatial offsets h - t, w - t are the frame's own, i - (H - 1) // 2 and j - (W - 1) // 2."""
    scheme = make(name)
    ids, _ = scheme.position_ids(torch.tensor([[X] + block(4 * 6 * 3, clip=True)]), torch.tensor([[4, 6, 12]]),
                                 clip=torch.tensor([True]))
    frames = ids[:, 0, 2:-1].reshape(3, 4, 6 * 3)  # (rows, frames, H * W)
    delta = 2.0 if name == "videorope" else 0.75
    for f in range(4):
        torch.testing.assert_close(frames[:, f] - frames[:, 0], torch.full_like(frames[:, 0], delta * f))
    i, j = torch.arange(3).repeat_interleave(6), torch.arange(6).repeat(3)
    assert torch.equal(frames[1, 2] - frames[0, 2], (i - 1).float())
    assert torch.equal(frames[2, 2] - frames[0, 2], (j - 2).float())


@pytest.mark.parametrize("name", ["videorope", "hope"])
def test_an_odd_image_is_centred_on_the_text_diagonal(name):
    """VideoRoPE's spatial symmetry: a 3 x 5 image's centre takes the id a text token would, and token (i, j) is as
    far (on every row) from the vision start as its mirror (H-1-i, W-1-j) is from the vision end."""
    ids, _ = make(name).position_ids(torch.tensor([[X, X] + block(15) + [X]]), torch.tensor([[1, 6, 10]]))
    ids = ids[:, 0]  # (3, n)
    start, image, end = ids[:, 2], ids[:, 3:18], ids[:, 18]
    assert image[:, 7].tolist() == [3, 3, 3] and start.tolist() == [2, 2, 2] and end.tolist() == [4, 4, 4]
    torch.testing.assert_close(image - start[:, None], end[:, None] - image.flip(-1))


def test_lumos_block_offsets_are_the_scaled_grid_wherever_it_starts():
    scheme = make("lumos_mmrope")
    a = torch.tensor([1.0, 16.0, 16.0])[:, None]
    for prefix in (0, 5):
        ids, _ = scheme.position_ids(torch.tensor([[X] * prefix + block(6)]), torch.tensor([[1, 4, 6]]))
        media = ids[:, 0, prefix + 1:prefix + 7]  # (3, 6)
        i, j = torch.arange(2).repeat_interleave(3), torch.arange(3).repeat(2)
        grid = torch.stack((torch.zeros(6), i.float(), j.float()))
        assert torch.equal(media - media[:, :1], grid * a)
        assert media[:, 0].tolist() == [prefix + 1] * 3  # the block starts where text would
