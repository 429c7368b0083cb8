"""The spatial-reset schemes (mrope_i, mhrope, il_rope, omni_rope): worked examples from the reference collection,
a slow token-by-token reference on random padded layouts, decode continuity, MHRoPE's per-head tables through the
attention layer, and the relative-position properties the MRoPE-I paper claims."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.decoder_schemes.spatial_reset import head_section
from mmrope.model.layers import Attention
from mmrope.model.position_ids import PAD_POSITION, get_rope_index
from mmrope.model.rope import RotaryEmbedding, apply_rotary

X, VS, VE, IMG, VID = 20, 3, 4, 5, 6  # a text token, vision start/end, image and clip placeholders
RESET = ["mrope_i", "mhrope", "il_rope", "omni_rope"]
SAME_IDS = ["mrope_i", "mhrope"]  # the reference's position design
TEXT_ON_T = ["il_rope", "omni_rope"]  # the same media ids, text (p, 0, 0)


def make(name, tokens_per_second=None, **text):
    """The scheme on the default model (head_dim 32, 16 pairs), four key/value heads so MHRoPE fits."""
    config = CaptionerConfig(text=TextConfig(**{"num_kv_heads": 4, **text}), position_scheme=name,
                             tokens_per_second=tokens_per_second)
    return SCHEMES[name](config)


def ids_of(name, tokens, grids, clip=None, mask=None, timing=None, tokens_per_second=None):
    tokens = torch.tensor(tokens if isinstance(tokens[0], list) else [tokens])
    grids = torch.tensor(grids).reshape(-1, 3)
    clip = torch.tensor(clip) if clip is not None else None
    mask = torch.tensor(mask) if mask is not None else None
    return make(name, tokens_per_second).position_ids(tokens, grids, mask, clip, timing)


# Worked examples: ids and deltas printed by the reference collection (JJJYmmm/Multimodal-RoPEs at cd413b9),
# get_mrope_interleave_index with spatial_reset=True and get_omnirope_index (= get_ilrope_index), merge 2; for the
# clip with the Qwen3-VL per-frame split of video grids removed, as its comment says to for Qwen2/2.5-VL layouts
# (one block per clip). Both functions give every example the same ids.
WORKED = {
    "one image": ([VS] + [IMG] * 6 + [VE], [[1, 4, 6]], [False],
                  [[0, 1, 1, 1, 1, 1, 1, 4],
                   [0, 0, 0, 0, 1, 1, 1, 4],
                   [0, 0, 1, 2, 0, 1, 2, 4]], -3),
    "text, image, text": ([X, X, X, VS] + [IMG] * 6 + [VE, X, X], [[1, 4, 6]], [False],
                          [[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9],
                           [0, 1, 2, 3, 0, 0, 0, 1, 1, 1, 7, 8, 9],
                           [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 7, 8, 9]], -3),
    "two images": ([X, VS, IMG, VE, X, VS] + [IMG] * 4 + [VE, X], [[1, 2, 2], [1, 4, 4]], [False, False],
                   [[0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 8, 9],
                    [0, 1, 0, 3, 4, 5, 0, 0, 1, 1, 8, 9],
                    [0, 1, 0, 3, 4, 5, 0, 1, 0, 1, 8, 9]], -2),
    "tall image": ([X, VS] + [IMG] * 8 + [VE, X], [[1, 8, 4]], [False],  # decoder grid 4 x 2: the end follows h
                   [[0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 6, 7],
                    [0, 1, 0, 0, 1, 1, 2, 2, 3, 3, 6, 7],
                    [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 6, 7]], -4),
    "clip": ([X, VS] + [VID] * 12 + [VE, X], [[3, 4, 4]], [True],
             [[0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 6],
              [0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 5, 6],
              [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 5, 6]], -9),
}


@pytest.mark.parametrize("example", list(WORKED))
@pytest.mark.parametrize("name", SAME_IDS)
def test_worked_examples_are_the_references(name, example):
    tokens, grids, clip, expected, delta = WORKED[example]
    pos, deltas = ids_of(name, tokens, grids, clip)
    assert pos[:, 0].tolist() == expected and deltas.tolist() == [[delta]]


@pytest.mark.parametrize("example", list(WORKED))
@pytest.mark.parametrize("name", TEXT_ON_T)
def test_il_rope_and_omni_rope_give_text_h_and_w_zero(name, example):
    """By hand from the rule: the reference's media ids and t row, the text's h and w rows 0."""
    tokens, grids, clip, expected, delta = WORKED[example]
    pos, deltas = ids_of(name, tokens, grids, clip)
    media = torch.tensor([tok in (IMG, VID) for tok in tokens])
    t, h, w = torch.tensor(expected)
    assert pos[0, 0].tolist() == t.tolist() and deltas.tolist() == [[delta]]
    assert pos[1:, 0].tolist() == [h.where(media, 0).tolist(), w.where(media, 0).tolist()]
    if example == "text, image, text":  # written out, as the docstring shows it
        assert pos[1:, 0].tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 0, 0]]


@pytest.mark.parametrize("name", RESET)
def test_clip_time_scaling_floors_as_the_reference_stores_it(name):
    """tokens_per_second 2 x 0.7 s per temporal patch: t offsets floor(0, 1.4, 2.8). The reference's MRoPE-I with
    temporal_stride 1.4 stores the same ids (it floors when it writes them) but returns the delta -8.2, which would
    decode the next token at 7.8 rather than the 7 the full sequence gives it: ours is -9."""
    tokens, grids, clip, expected, _ = WORKED["clip"]
    pos, deltas = ids_of(name, tokens, grids, clip, timing=[0.7], tokens_per_second=2)
    assert pos[0, 0].tolist() == expected[0] and deltas.tolist() == [[-9]]
    with pytest.raises(ValueError, match="expected second_per_grid_t"):
        ids_of(name, tokens, grids, clip, tokens_per_second=2)


def slow_reference(rows, masks, grids, clip, merge, scale=None, text_hw_zero=False):
    """Token by token, the rule as written: text (p, p, p) (il_rope: (p, 0, 0)), p the next id; a block starting at
    p gives its token (t, i, j) the ids (p + t', i, j), t' = floor(t * scale) for a clip with a time scale, and the
    text after it continues at p + max(largest t', H - 1, W - 1) + 1."""
    out = torch.full((3, len(rows), len(rows[0])), PAD_POSITION, dtype=torch.long)
    media, scales, deltas = iter(zip(grids, clip)), iter(scale or []), []
    for b, (row, mask) in enumerate(zip(rows, masks)):
        real = [n for n in range(len(row)) if mask[n]]
        p, k = 0, 0
        while k < len(real):
            if row[real[k]] in (IMG, VID):
                (t_size, h_size, w_size), is_clip = next(media)
                stretch = next(scales) if is_clip and scale else 1.0
                largest = 0
                for t in range(t_size):
                    for i in range(h_size // merge):
                        for j in range(w_size // merge):
                            t_id = math.floor(t * stretch)
                            out[:, b, real[k]] = torch.tensor([p + t_id, i, j])
                            largest = max(largest, t_id, i, j)
                            k += 1
                p += largest + 1
            else:
                out[:, b, real[k]] = torch.tensor([p, 0, 0] if text_hw_zero else [p, p, p])
                p, k = p + 1, k + 1
        deltas.append(p - len(row))
    return out, torch.tensor(deltas)[:, None]


def random_layout(rng, merge):
    """Rows of text, images and clips in any order, each left- or right-padded -> (rows, masks, grids, clip)."""
    rows, grids, clip = [], [], []
    for _ in range(rng.randint(1, 4)):
        row = []
        for _ in range(rng.randint(0, 3)):
            row += [X] * rng.randint(0, 2)
            is_clip = rng.random() < 0.4
            grid = [rng.randint(2, 4) if is_clip else 1, merge * rng.randint(1, 4), merge * rng.randint(1, 4)]
            grids.append(grid)
            clip.append(is_clip)
            row += [VS] + [VID if is_clip else IMG] * (grid[0] * grid[1] * grid[2] // merge ** 2) + [VE]
        rows.append(row + [X] * rng.randint(1, 3))
    n = max(map(len, rows)) + rng.randint(0, 2)
    padded, masks = [], []
    for row in rows:
        pad, left = n - len(row), rng.random() < 0.5
        padded.append([0] * pad + row if left else row + [0] * pad)
        masks.append([0] * pad + [1] * len(row) if left else [1] * len(row) + [0] * pad)
    return padded, masks, grids, clip


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_ids_follow_the_rule_token_by_token(seed):
    rng = random.Random(seed)
    merge = rng.choice([1, 2])
    rows, masks, grids, clip = random_layout(rng, merge)
    timed = seed % 2 == 1  # odd seeds scale clip time: 1.5 tokens/s x 0.5 .. 1.5 s per temporal patch
    timing = [rng.choice([0.5, 0.9, 1.5]) for c in clip if c] if timed else None
    for name in RESET:
        config = CaptionerConfig(VisionConfig(spatial_merge_size=merge), TextConfig(num_kv_heads=4), name,
                                 tokens_per_second=1.5 if timed else None)
        pos, deltas = SCHEMES[name](config).position_ids(
            torch.tensor(rows), torch.tensor(grids, dtype=torch.long).reshape(-1, 3), torch.tensor(masks),
            torch.tensor(clip, dtype=torch.bool), timing)
        scale = [s * 1.5 for s in timing] if timed else None
        ref, ref_deltas = slow_reference(rows, masks, grids, clip, merge, scale, text_hw_zero=name in TEXT_ON_T)
        assert torch.equal(pos, ref) and torch.equal(deltas, ref_deltas), name


@pytest.mark.parametrize("name", RESET)
def test_left_and_right_padding_give_real_tokens_their_unpadded_ids(name):
    row = [X, VS] + [IMG] * 6 + [VE, X, VS] + [VID] * 8 + [VE, X]
    grids, clip = [[1, 4, 6], [2, 4, 4]], [False, True]
    alone, alone_delta = ids_of(name, row, grids, clip)
    for pad in ("left", "right"):
        tokens = [0, 0, 0] + row if pad == "left" else row + [0, 0, 0]
        mask = [int(t != 0) for t in tokens]
        pos, delta = ids_of(name, [tokens, row + [X] * 3], grids * 2, clip * 2, mask=[mask, [1] * len(tokens)])
        keep = torch.tensor(mask).bool()
        assert torch.equal(pos[:, 0, keep], alone[:, 0]) and (pos[:, 0, ~keep] == PAD_POSITION).all()
        # the next token continues where the unpadded row would
        assert int(delta[0]) + len(tokens) == int(alone_delta[0]) + len(row)


@pytest.mark.parametrize("name", RESET)
def test_decoding_continues_the_ids_of_the_longer_sequence(name):
    """A left-padded prompt's deltas give the tokens decoded after it the ids the full sequence gives them."""
    prompt = [VS] + [VID] * 12 + [VE]
    full = prompt + [X] * 5
    scheme = make(name, tokens_per_second=2)
    grids, clip = torch.tensor([[3, 4, 4]]), torch.tensor([True])
    _, delta = scheme.position_ids(torch.tensor([[0, 0] + prompt]), grids, torch.tensor([[0, 0] + [1] * len(prompt)]),
                                   clip, [0.7])
    longer, _ = scheme.position_ids(torch.tensor([full]), grids, clip=clip, second_per_grid_t=[0.7])
    decoded = scheme.decode_position_ids(2 + len(prompt), delta, length=5)  # the padded prompt fills 2 + its length
    assert torch.equal(decoded[:, 0], longer[:, 0, len(prompt):])
    if name in TEXT_ON_T:
        assert (decoded[1:] == 0).all()


@pytest.mark.parametrize("name", RESET)
def test_a_block_keeps_m_ropes_relative_ids_and_its_own_h_w_wherever_it_sits(name):
    """Spatial reset: the same image after 0 or 5 text tokens has the same h and w ids (its grid coordinates) and t
    ids 5 apart, so the ids' differences inside the block, all q·k depends on, equal M-RoPE's; text continues where
    M-RoPE's does."""
    block = [VS] + [IMG] * 6 + [VE]
    early, _ = ids_of(name, block + [X], [[1, 4, 6]])
    late, _ = ids_of(name, [X] * 5 + block + [X], [[1, 4, 6]])
    media = slice(1, 7)
    assert torch.equal(late[1:, 0, 5:][:, media], early[1:, 0, media])
    assert torch.equal(late[0, 0, 5:], early[0, 0] + 5)
    mrope, _ = get_rope_index(torch.tensor([[X] * 5 + block + [X]]), torch.tensor([[1, 4, 6]]), image_token_id=IMG)
    inside = late[:, 0, 5 + 1:5 + 7]
    assert torch.equal(inside - inside[:, :1], mrope[:, 0, 6:12] - mrope[:, 0, 6:7])
    rows = slice(0, 1) if name in TEXT_ON_T else slice(0, 3)
    assert torch.equal(late[rows, 0, -2:], mrope[rows, 0, -2:])  # vision end and the text after: M-RoPE's


@pytest.mark.parametrize("name", RESET)
def test_the_vision_end_lies_past_every_id_of_its_block(name):
    """The reference's explicit end rule: the vision end's t is s + max(T, H, W), past the block's largest id on
    every row, not s + T, one past its t ids, which continuing after the largest id of the reset block would give
    (the "too narrow stride" its comment avoids)."""
    pos, _ = ids_of(name, [X, VS] + [IMG] * 16 + [VE, X], [[1, 4, 16]])  # decoder grid 2 x 8, starting at s = 2
    end = pos[0, 0, 18]
    assert end == 2 + 8 and (pos[:, 0, 2:18] < end).all() and pos[0, 0, 19] == end + 1


@pytest.mark.parametrize("name", SAME_IDS)
def test_text_alone_is_1d_rope(name):
    """Preservation of textual priors: on text the tables are 1D RoPE's over the running index, in every head."""
    scheme = make(name)
    pos, delta = scheme.position_ids(torch.tensor([[X] * 7]), torch.zeros(0, 3, dtype=torch.long))
    cos, sin = scheme(pos)
    cos1d, sin1d = RotaryEmbedding(32, 10000.0)(torch.arange(7))
    assert delta.tolist() == [[0]]
    assert torch.allclose(cos, cos1d.expand_as(cos)) and torch.allclose(sin, sin1d.expand_as(sin))


@pytest.mark.parametrize("name", TEXT_ON_T)
def test_text_turns_only_its_t_pairs(name):
    scheme = make(name)
    pos, _ = scheme.position_ids(torch.tensor([[X] * 7]), torch.zeros(0, 3, dtype=torch.long))
    angles = scheme.angles(pos)[0]  # (n, k)
    _, axis = scheme.pair_frequencies()
    assert (angles[:, axis != 0] == 0).all() and (angles[1:, axis == 0] > 0).all()


@pytest.mark.parametrize("name, axes", [("mrope_i", [0, 1, 2] * 5 + [0]), ("il_rope", [0, 1, 2] * 5 + [0]),
                                        ("omni_rope", [0] * 4 + [1] * 6 + [2] * 6)])
def test_allocation_and_tables_agree(name, axes):
    """Interleaved: pairs cycle t, h, w (default section [6, 5, 5] of 16); chunked: t, h, w sections [4, 6, 6]; the
    tables turn pair k by the id of the axis pair_frequencies names for it."""
    scheme = make(name)
    frequencies, axis = scheme.pair_frequencies()
    assert axis.tolist() == axes and torch.allclose(frequencies, 10000.0 ** (-torch.arange(16) / 16).double())
    pos, _ = scheme.position_ids(torch.tensor([[X, VS] + [IMG] * 6 + [VE, X]]), torch.tensor([[1, 4, 6]]))
    cos, _ = scheme(pos)
    expected = (pos[:, 0].double().T[:, axis] * frequencies).cos()  # (n, k)
    assert torch.allclose(cos[0].double(), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["mrope_i", "il_rope"])
def test_a_section_that_does_not_interleave_is_refused_naming_the_scheme(name):
    with pytest.raises(ValueError, match=rf"text.mrope_section=\[4, 6, 6\] does not fit position_scheme='{name}'"):
        CaptionerConfig(text=TextConfig(mrope_section=[4, 6, 6]), position_scheme=name)  # h and w: at most 5 of 16


@pytest.mark.parametrize("heads, section", [(3, [1, 1, 1]), (4, [2, 1, 1]), (5, [1, 2, 2]), (6, [2, 2, 2]),
                                            (7, [3, 2, 2]), (8, [2, 3, 3]), (16, [6, 5, 5])])
def test_mhrope_splits_key_value_heads_evenly_h_and_w_alike(heads, section):
    assert head_section(heads) == section  # 8 -> [2, 3, 3]: the reference's default


def test_mhrope_refuses_fewer_than_three_key_value_heads():
    with pytest.raises(ValueError, match=r"^text.num_kv_heads=2 cannot hold position_scheme='mhrope': .*at least 3$"):
        CaptionerConfig(text=TextConfig(num_heads=4, num_kv_heads=2), position_scheme="mhrope")


def test_each_mhrope_head_turns_every_pair_with_its_axis_alone():
    scheme = make("mhrope")  # 4 key/value heads: t, t, h, w
    pos, _ = scheme.position_ids(torch.tensor([[X, VS] + [IMG] * 6 + [VE, X]]), torch.tensor([[1, 4, 6]]))
    angles = scheme.angles(pos)  # (b, g, n, k)
    frequencies, axis = scheme.pair_frequencies()
    assert angles.shape == (1, 4, 10, 16) and axis.tolist() == [[0] * 16] * 2 + [[1] * 16, [2] * 16]
    for head, head_axis in enumerate([0, 0, 1, 2]):  # the full spectrum on the head's axis
        assert torch.allclose(angles[0, head].double(), pos[head_axis, 0, :, None].double() * frequencies)
    moved = pos.clone()
    moved[2] += 3  # shift the w ids: only the w head's table changes
    changed = (scheme.angles(moved) != angles).flatten(2).any(-1)[0]
    assert changed.tolist() == [False, False, False, True]
    # the w head turns 1 rad per column on its fastest pair, across the 2 x 3 grid 2 rad; interleaved w gets pair 2
    assert float(scheme.grid_turns((1, 2, 3))["w"][1].max()) == pytest.approx(2.0)


def test_mhrope_query_heads_share_their_groups_table_through_attention():
    """Attention with MHRoPE's (b, g, n, k) tables equals the reference's apply_multihead_rotary_pos_emb written
    out: each key head turned by its own table, each query head by the table of the key head it attends with."""
    torch.manual_seed(0)
    attn = Attention(dim=48, num_heads=6, num_kv_heads=3)  # head_dim 8, two query heads per key/value head
    scheme = make("mhrope", dim=48, num_heads=6, num_kv_heads=3)
    pos, _ = scheme.position_ids(torch.tensor([[X, VS] + [IMG] * 6 + [VE, X, X]]), torch.tensor([[1, 4, 6]]))
    cos, sin = scheme(pos)  # (1, 3, n, 4)
    x = torch.randn(1, pos.shape[-1], 48)
    q, k, v = attn.qkv(x).split([48, 24, 24], -1)
    q, k, v = (t.unflatten(-1, (-1, 8)).transpose(1, 2) for t in (q, k, v))  # (b, heads, n, 8)
    q = torch.cat([apply_rotary(q[:, j:j + 1], cos[:, j // 2:j // 2 + 1], sin[:, j // 2:j // 2 + 1]) for j in range(6)],
                  1)
    k = torch.cat([apply_rotary(k[:, g:g + 1], cos[:, g:g + 1], sin[:, g:g + 1]) for g in range(3)], 1)
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    expected = attn.proj(out.transpose(1, 2).flatten(2))
    assert torch.allclose(attn(x, (cos, sin), is_causal=True), expected, atol=1e-6)


def test_the_triton_kernel_leaves_a_table_per_key_value_head_to_the_reference():
    triton_rope = pytest.importorskip("mmrope.model.triton_rope")
    q, k, cos = torch.randn(1, 6, 5, 16), torch.randn(1, 3, 5, 16), torch.randn(1, 3, 5, 8)
    assert not triton_rope.supports(q, cos) and triton_rope.supports(k, cos)
    with pytest.raises(ValueError, match="rotary table has 4 heads but x has 6"):
        apply_rotary(q, torch.randn(1, 4, 5, 8), torch.randn(1, 4, 5, 8))
