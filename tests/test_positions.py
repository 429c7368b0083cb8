"""Who gets which position: worked examples, padding invariance, decode continuity, a slow reference, parity."""

import random
from types import SimpleNamespace

import pytest
import torch

from mmrope.model.position_ids import (
    PAD_POSITION,
    decode_position_ids,
    flat_position_ids,
    get_rope_index,
    grid_positions,
    raster_positions,
)

X, VS, VE, IMG, VID = 20, 3, 4, 5, 6  # a text token, vision start/end, image and video placeholders


def rope_index(ids, grids=None, mask=None, **kw):
    ids = torch.as_tensor(ids)
    ids = ids if ids.ndim == 2 else ids[None]
    grids = None if grids is None else torch.tensor(grids)
    return get_rope_index(ids, grids, attention_mask=mask, image_token_id=IMG, video_token_id=VID, **kw)


def test_worked_example_one_image():
    ids = [X, X, X, VS] + [IMG] * 6 + [VE, X, X]
    pos, delta = rope_index(ids, [[1, 4, 6]])
    assert pos[:, 0].tolist() == [[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9],
                                  [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9],
                                  [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]]
    assert delta.tolist() == [[-3]]


def test_worked_example_two_images():
    ids = [X, VS, IMG, VE, X, VS] + [IMG] * 4 + [VE, X]
    pos, delta = rope_index(ids, [[1, 2, 2], [1, 4, 4]])
    assert pos[:, 0].tolist() == [[0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 8, 9],
                                  [0, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 9],
                                  [0, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9]]
    assert delta.tolist() == [[-2]]


def test_text_only_is_running_index():
    pos, delta = rope_index([[X] * 5])
    assert pos.tolist() == [[list(range(5))]] * 3 and delta.tolist() == [[0]]


def reference_rope_index(ids, mask, image_grids, video_grids, merge, time_scale=None):
    """Token by token, the rule as written: text t = h = w = next; a block starting at s gives (s+t, s+i, s+j)."""
    out = torch.full((3, len(ids), len(ids[0])), PAD_POSITION, dtype=torch.long)
    deltas = []
    grids = {IMG: iter(image_grids), VID: iter(video_grids)}
    scales = iter(time_scale or [])
    for b, (row, row_mask) in enumerate(zip(ids, mask)):
        real = [n for n in range(len(row)) if row_mask[n]]
        nxt, k, largest = 0, 0, -1
        while k < len(real):
            tok = row[real[k]]
            if tok in (IMG, VID):
                t, h, w = next(grids[tok])
                h, w = h // merge, w // merge
                scale = next(scales) if tok == VID and time_scale else 1.0
                block_max = 0
                for ti in range(t):
                    for i in range(h):
                        for j in range(w):
                            tid = int(ti * scale // 1) if tok == VID and time_scale else ti
                            out[:, b, real[k]] = torch.tensor([nxt + tid, nxt + i, nxt + j])
                            block_max = max(block_max, tid, i, j)
                            k += 1
                nxt += block_max + 1
            else:
                out[:, b, real[k]] = nxt
                nxt += 1
                k += 1
            largest = nxt - 1
        deltas.append(largest + 1 - len(row))
    return out, torch.tensor(deltas).unsqueeze(1)


def random_layout(rng, merge=2, videos=False):
    """A batch of rows mixing text, images and (optionally) videos, each left- or right-padded."""
    rows, image_grids, video_grids = [], [], []
    for _ in range(rng.randint(1, 4)):
        row = []
        for _ in range(rng.randint(0, 3)):
            row += [X] * rng.randint(0, 3)
            kind = VID if videos and rng.random() < 0.4 else IMG
            t = rng.randint(1, 3) if kind == VID else 1
            grid = [t, merge * rng.randint(1, 4), merge * rng.randint(1, 4)]
            (video_grids if kind == VID else image_grids).append(grid)
            row += [VS] + [kind] * (t * grid[1] * grid[2] // merge ** 2) + [VE]
        row += [X] * rng.randint(1, 4)
        rows.append(row)
    n = max(map(len, rows)) + rng.randint(0, 3)
    ids, mask = [], []
    for row in rows:
        pad = n - len(row)
        left = rng.random() < 0.5
        ids.append([0] * pad + row if left else row + [0] * pad)
        mask.append([0] * pad + [1] * len(row) if left else [1] * len(row) + [0] * pad)
    return ids, mask, image_grids, video_grids


@pytest.mark.parametrize("seed", range(25))
def test_agrees_with_slow_reference_on_random_layouts(seed):
    rng = random.Random(seed)
    merge = rng.choice([1, 2])
    ids, mask, image_grids, video_grids = random_layout(rng, merge, videos=True)
    pos, delta = get_rope_index(torch.tensor(ids), torch.tensor(image_grids) if image_grids else None,
                                torch.tensor(video_grids) if video_grids else None, torch.tensor(mask),
                                image_token_id=IMG, video_token_id=VID, spatial_merge_size=merge)
    ref_pos, ref_delta = reference_rope_index(ids, mask, image_grids, video_grids, merge)
    assert torch.equal(pos, ref_pos) and torch.equal(delta, ref_delta)


def test_video_time_scaling_floors_after_float_multiply():
    ids = [[X, VS] + [VID] * 12 + [VE, X]]
    grids = [[3, 4, 4]]
    seconds = [0.7]  # 0.7 s per temporal patch x 2 tokens/s -> t ids floor(0, 1.4, 2.8) = 0, 1, 2
    pos, delta = get_rope_index(torch.tensor(ids), None, torch.tensor(grids), image_token_id=IMG,
                                video_token_id=VID, second_per_grid_t=torch.tensor(seconds), tokens_per_second=2)
    ref, ref_delta = reference_rope_index(ids, [[1] * len(ids[0])], [], grids, 2, time_scale=[1.4])
    assert torch.equal(pos, ref) and torch.equal(delta, ref_delta)
    assert pos[0, 0, 2:14].unique().tolist() == [2, 3, 4]


@pytest.mark.parametrize("seed", range(10))
def test_padding_never_changes_real_ids(seed):
    rng = random.Random(100 + seed)
    ids, mask, image_grids, _ = random_layout(rng)
    grids = torch.tensor(image_grids) if image_grids else None
    pos, delta = get_rope_index(torch.tensor(ids), grids, None, torch.tensor(mask), image_token_id=IMG)
    seen = 0
    for b, (row, row_mask) in enumerate(zip(ids, mask)):
        real = [t for t, m in zip(row, row_mask) if m]
        n_img = real.count(IMG)
        own = []
        while n_img:
            g = image_grids[seen + len(own)]
            own.append(g)
            n_img -= g[1] * g[2] // 4
        seen += len(own)
        alone, alone_delta = get_rope_index(torch.tensor([real]), torch.tensor(own) if own else None,
                                            image_token_id=IMG)
        keep = torch.tensor(row_mask).bool()
        assert torch.equal(pos[:, b, keep], alone[:, 0])
        assert (pos[:, b, ~keep] == PAD_POSITION).all()
        # the next token continues where the unpadded row would: cache index len(row) + delta == len(real) + own delta
        assert int(delta[b]) + len(row) == int(alone_delta[0]) + len(real)


def test_decode_ids_from_rope_deltas_equal_ids_of_the_longer_sequence():
    prompt = [VS] + [IMG] * 6 + [VE]
    full = prompt + [X] * 5
    _, delta = rope_index([[0, 0] + prompt], [[1, 4, 6]], mask=torch.tensor([[0, 0] + [1] * len(prompt)]))
    longer, _ = rope_index([full], [[1, 4, 6]])
    cache_index = 2 + len(prompt)  # the left-padded prompt fills the cache up to here
    decoded = decode_position_ids(cache_index, delta, length=5)
    assert torch.equal(decoded[:, 0], longer[:, 0, len(prompt):])


def test_flat_ids_are_running_index_with_padding():
    ids = torch.tensor([[0, 0, VS, IMG, IMG, IMG, IMG, VE, X], [VS, IMG, IMG, IMG, IMG, VE, X, X, 0]])
    mask = (ids != 0).long()
    pos, delta = flat_position_ids(ids, torch.tensor([[1, 4, 4], [1, 4, 4]]), attention_mask=mask)
    assert pos[0, 0].tolist() == [PAD_POSITION, PAD_POSITION, 0, 1, 2, 3, 4, 5, 6]
    assert pos[2, 1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, PAD_POSITION]
    assert torch.equal(pos[0], pos[1]) and torch.equal(pos[1], pos[2])
    assert delta.tolist() == [[-2], [-1]]


@pytest.mark.parametrize("ids, grids, match", [
    ([X, VS, IMG, IMG, IMG, VE], [[1, 4, 4]], "3 image tokens"),
    ([X, VS, IMG, IMG, IMG, IMG, VE], None, "no image_grid_thw"),
    ([X, VS, IMG, IMG, VE, IMG, IMG, VE], [[1, 4, 4]], "contiguous"),
    ([X, VS, IMG, VE], [[1, 3, 3]], "divisible"),
])
def test_mismatched_image_tokens_raise_one_line_errors(ids, grids, match):
    with pytest.raises(ValueError, match=match) as err:
        rope_index(ids, grids)
    assert "\n" not in str(err.value)


def test_grid_positions_keep_each_merge_window_contiguous():
    pos = grid_positions(4, 6, merge=2)
    windows = pos.view(-1, 4, 2)  # consecutive groups of 4 patches
    assert (windows.amax(1) - windows.amin(1) == 1).all()  # each group spans one 2x2 window
    assert torch.equal(windows[:, 0] // 2, torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3),
                                                                      indexing="ij"), -1).view(-1, 2))
    assert sorted(map(tuple, pos.tolist())) == [(r, c) for r in range(4) for c in range(6)]
    assert torch.equal(grid_positions(3, 5), torch.stack(torch.meshgrid(torch.arange(3), torch.arange(5),
                                                                        indexing="ij"), -1).view(-1, 2))


def test_raster_positions_follow_grid_order():
    pos = grid_positions(4, 6, merge=2)
    assert torch.equal(raster_positions(4, 6, merge=2), pos[:, 0] * 6 + pos[:, 1])
    assert raster_positions(2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="divisible"):
        grid_positions(3, 4, merge=2)


def transformers_rope_index(ids, grids, mask, merge):
    """Call transformers' Qwen2-VL get_rope_index without building a model."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    host = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)))
    host.get_vision_position_ids = lambda *a, **k: Qwen2VLModel.get_vision_position_ids(host, *a, **k)
    token_type = (ids == IMG).int()
    return Qwen2VLModel.get_rope_index(host, ids, token_type, grids, None, mask)


@pytest.mark.parametrize("seed", range(5))
def test_matches_transformers_on_images(seed):
    pytest.importorskip("transformers")
    ids, mask, image_grids, _ = random_layout(random.Random(200 + seed))
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    grids = torch.tensor(image_grids) if image_grids else None
    pos, _ = get_rope_index(ids, grids, attention_mask=mask, image_token_id=IMG)
    hf_pos, _ = transformers_rope_index(ids, grids, mask, 2)
    real = mask.bool()
    assert torch.equal(pos[:, real], hf_pos[:, real])
