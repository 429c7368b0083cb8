"""The captioner: every encoder variant x every joint scheme trains, and the position plumbing holds its promises."""

import itertools

import pytest
import torch

from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.flops import flops_per_token, matmul_weights, num_parameters
from mmrope.model.pos_encodings.absolute import sincos_2d
from mmrope.model.tokens import EOS_ID, IGNORE_INDEX, IMAGE_TOKEN_ID, PAD_ID, VISION_END_ID, VISION_START_ID

ENCODINGS = ["rope2d", "rope2d_mixed", "rope1d_flat", "sincos2d", "learned", "none"]
SCHEMES = ["mrope", "mrope_interleaved", "flat"]
ROPE_ENCODINGS = ["rope2d", "rope2d_mixed", "rope1d_flat"]


def tiny_config(pos_encoding="rope2d", position_scheme="mrope", **vision) -> CaptionerConfig:
    """Patch 8, merge 2: a 32x32 image is a 4x4 patch grid and 4 decoder tokens."""
    vision = {"image_size": 32, "dim": 32, "depth": 1, "num_heads": 2, "pos_encoding": pos_encoding, **vision}
    text = TextConfig(vocab_size=16, dim=32, depth=1, num_heads=2, num_kv_heads=1, max_seq_len=64)
    return CaptionerConfig(VisionConfig(**vision), text, position_scheme)


def caption_batch(sizes, captions, seed=0):
    """The data contract: [vision_start, image x N, vision_end, caption, eos], right-padded; labels on caption + eos."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    rows = [[VISION_START_ID] + [IMAGE_TOKEN_ID] * (h // 16 * (w // 16)) + [VISION_END_ID] + c + [EOS_ID]
            for (h, w), c in zip(sizes, captions)]
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), PAD_ID)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    for i, (row, caption) in enumerate(zip(rows, captions)):
        input_ids[i, :len(row)] = torch.tensor(row)
        labels[i, len(row) - len(caption) - 1:len(row)] = torch.tensor(caption + [EOS_ID])
    return images, input_ids, (input_ids != PAD_ID).long(), labels


SIZES = [(32, 32), (32, 48), (32, 32), (48, 32)]
CAPTIONS = [[7, 8, 9, 10], [11, 12, 13, 14], [15, 7, 9, 11], [8, 10, 12, 14]]  # first token needs the image


@pytest.mark.parametrize("pos_encoding, scheme", itertools.product(ENCODINGS, SCHEMES))
def test_forward_backward_shapes_and_every_parameter_used(pos_encoding, scheme):
    torch.manual_seed(0)
    model = Captioner(tiny_config(pos_encoding, scheme))
    images, input_ids, attention_mask, labels = caption_batch(SIZES, CAPTIONS)
    tokens, grid_thw = model.vision(images)
    assert tokens.shape == (4 + 6 + 4 + 6, 32) and grid_thw.tolist() == [[1, 4, 4], [1, 4, 6], [1, 4, 4], [1, 6, 4]]
    out = model(images, input_ids, attention_mask, labels)
    assert out.logits.shape == (*input_ids.shape, 16) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient (DDP would fail): {unused}"


@pytest.mark.parametrize("pos_encoding, scheme", itertools.product(ENCODINGS, SCHEMES))
def test_overfits_one_batch(pos_encoding, scheme):
    torch.manual_seed(0)
    model = Captioner(tiny_config(pos_encoding, scheme))
    batch = caption_batch(SIZES, CAPTIONS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(*batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_no_target_gives_zero_loss_not_nan():
    model = Captioner(tiny_config())
    images, input_ids, attention_mask, labels = caption_batch(SIZES[:2], CAPTIONS[:2])
    out = model(images, input_ids, attention_mask, torch.full_like(labels, IGNORE_INDEX))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    labels[0] = IGNORE_INDEX  # one sample without targets: the loss is the other sample's
    both = model(images, input_ids, attention_mask, labels).loss
    alone = model(images[1:], input_ids[1:], attention_mask[1:], labels[1:]).loss
    torch.testing.assert_close(both, alone)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_padding_left_or_right_changes_nothing(scheme):
    """Each row counts its own positions and never attends to padding."""
    torch.manual_seed(0)
    model = Captioner(tiny_config(position_scheme=scheme)).eval()
    images, input_ids, attention_mask, _ = caption_batch([(32, 48)], [[7, 8]])
    alone = model(images, input_ids, attention_mask).logits
    pad = torch.full((1, 3), PAD_ID)
    right = model(images, torch.cat((input_ids, pad), 1), torch.cat((attention_mask, pad), 1)).logits
    left = model(images, torch.cat((pad, input_ids), 1), torch.cat((pad, attention_mask), 1)).logits
    torch.testing.assert_close(right[:, :-3], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_position_scheme_decides_the_image_ids():
    _, input_ids, attention_mask, _ = caption_batch([(32, 48)], [[7]])  # decoder grid 2 x 3
    mrope, _ = Captioner(tiny_config()).position_ids(input_ids, torch.tensor([[1, 4, 6]]), attention_mask)
    flat, _ = Captioner(tiny_config(position_scheme="flat")).position_ids(input_ids, torch.tensor([[1, 4, 6]]))
    assert mrope[:, 0, 1:7].tolist() == [[1] * 6, [1, 1, 1, 2, 2, 2], [1, 2, 3, 1, 2, 3]]
    assert (flat == torch.arange(10)).all()


def test_mixed_image_sizes_encode_as_if_alone():
    torch.manual_seed(0)
    vision = Captioner(tiny_config("rope2d_mixed")).vision
    images = [torch.randn(3, *size) for size in [(32, 48), (32, 32), (48, 32), (32, 48)]]
    tokens, _ = vision(images)
    alone = torch.cat([vision([img])[0] for img in images])
    torch.testing.assert_close(tokens, alone, atol=1e-5, rtol=1e-5)
    stacked, _ = vision(torch.stack([images[0], images[3]]))  # a (B, 3, H, W) tensor works too
    torch.testing.assert_close(stacked, torch.cat((alone[:6], alone[-6:])), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(30, 32), (32, 40), (3, 32, 32, 1)])
def test_bad_image_size_raises_one_line(size):
    vision = Captioner(tiny_config()).vision
    with pytest.raises(ValueError, match=r"clip 0 has shape .*multiples of patch_size \* spatial_merge_size = 16"):
        vision([torch.zeros(size if len(size) > 2 else (3, *size))])


def test_non_square_windows_land_where_the_decoder_grid_says():
    """With the blocks silenced, a pixel in window (1, 2) of a 32x48 image (decoder grid 2 x 3) moves only token
    1 * 3 + 2 = 5: the merger's order is the raster order of windows that get_rope_index assumes (no H/W swap)."""
    torch.manual_seed(0)
    vision = Captioner(tiny_config("sincos2d")).vision
    for block in vision.blocks:
        for layer in (block.attn.proj, block.mlp.fc2):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    image = torch.randn(3, 32, 48)
    before, grid_thw = vision([image])
    image[:, 20, 40] += 1.0  # patch (2, 5), window (1, 2)
    after, _ = vision([image])
    assert grid_thw.tolist() == [[1, 4, 6]]
    assert (before != after).any(-1).nonzero().flatten().tolist() == [5]


def test_sincos2d_is_row_then_column():
    emb = sincos_2d(torch.tensor([[0, 0], [2, 0], [0, 2]]), 8)  # channels [sin r, sin r, cos r, cos r, same for c]
    assert torch.equal(emb[0], torch.tensor([0.0] * 2 + [1.0] * 2 + [0.0] * 2 + [1.0] * 2))
    assert torch.equal(emb[1, 4:], emb[0, 4:]) and torch.equal(emb[2, :4], emb[0, :4])


@pytest.mark.parametrize("pos_encoding", ROPE_ENCODINGS)
def test_rope_encoder_ignores_a_constant_position_shift(pos_encoding):
    """RoPE sees only differences of positions (for rope1d_flat a 2D shift is a constant raster shift)."""
    torch.manual_seed(0)
    vision = Captioner(tiny_config(pos_encoding, depth=2)).vision
    pixels = torch.randn(2, 3, 32, 48)
    base = vision.forward_features(pixels)
    shifted = vision.forward_features(pixels, position_offset=(3, 5))
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)


def test_absolute_sincos_moves_with_a_shift():
    vision = Captioner(tiny_config("sincos2d")).vision
    pixels = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(vision.forward_features(pixels), vision.forward_features(pixels, (3, 5)), atol=1e-3)


def test_learned_table_resamples_to_a_new_grid():
    torch.manual_seed(0)
    model = Captioner(tiny_config("learned"))
    pos_embed = model.vision.positions.pos_embed  # trained at 32 px: a 4x4 grid
    at_training_size = pos_embed(4, 4, merge=2)
    assert torch.equal(at_training_size, pos_embed.weight[[0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]])
    assert pos_embed(6, 8, merge=2).shape == (48, 32)
    with torch.no_grad():
        pos_embed.weight.copy_(torch.arange(4.0).repeat_interleave(4)[:, None].expand(16, 32))  # = row index
    resampled = pos_embed(8, 4, merge=1).view(8, 4, 32)
    assert torch.allclose(resampled[:, 0], resampled[:, 3]) and (resampled[1:, 0] >= resampled[:-1, 0]).all()
    images, input_ids, attention_mask, labels = caption_batch([(48, 64), (32, 32)], [[7, 8], [9]])
    out = model(images, input_ids, attention_mask, labels)
    assert out.logits.shape[1] == input_ids.shape[1] and torch.isfinite(out.loss)


def test_mixed_frequencies_are_flagged_for_no_weight_decay():
    model = Captioner(tiny_config("rope2d_mixed", depth=2))
    assert model.vision.positions.rope.freqs.no_weight_decay and model.vision.positions.rope.freqs.shape == (2, 2, 2, 8)


def test_parameter_and_flop_helpers():
    config = CaptionerConfig()
    model = Captioner(config)
    total = num_parameters(model)
    assert total == sum(p.numel() for p in set(model.parameters()))  # the tied head counts once
    model.vision.requires_grad_(False)
    assert num_parameters(model, trainable_only=True) == num_parameters(model.text)

    def linear_weights(module):
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))

    weights = matmul_weights(config)
    assert weights["per_patch"] == linear_weights(model.vision.patch_embed) + linear_weights(model.vision.blocks)
    assert weights["per_merged"] == linear_weights(model.vision.merger)
    assert weights["per_token"] == linear_weights(model.text)
    seq_len = 16 + 2 + 8
    flops = flops_per_token(config, seq_len)
    assert 6 * weights["per_token"] < flops < 6 * total * 4  # the decoder's 6N plus the encoder's share


def test_right_padded_masks_are_recognised():
    from mmrope.model.text import is_right_padded

    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]))
    assert not is_right_padded(torch.tensor([[0, 1, 1]]))  # left padding (generation) keeps its mask
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))


def _grid(sizes) -> torch.Tensor:
    return torch.tensor([[1, h // 8, w // 8] for h, w in sizes])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_layout_computed_beforehand_changes_nothing(scheme):
    """What the training module computes on the host gives the same loss and logits as the forward's own; a
    right-padded batch needs no mask (causal attention alone, which SDPA may run as flash), a left-padded one
    keeps it."""
    torch.manual_seed(0)
    model = Captioner(tiny_config(position_scheme=scheme)).eval()
    sizes = [(32, 48), (48, 32)]
    images, input_ids, attention_mask, labels = caption_batch(sizes, [[7, 8, 9], [9]])
    layout = model.layout(input_ids, _grid(sizes), attention_mask)
    assert layout.attention_mask is None and layout.position_ids.shape == (3, *input_ids.shape)
    inline = model(images, input_ids, attention_mask, labels)
    ahead = model(images, input_ids, labels=labels, layout=layout)
    torch.testing.assert_close(ahead.loss, inline.loss)
    real = attention_mask.bool()
    torch.testing.assert_close(ahead.logits[real], inline.logits[real])
    media = torch.randn(int(layout.media_slots.numel()), model.config.text.dim)  # placed by index, as by mask
    torch.testing.assert_close(model.embed(input_ids, media, media_slots=layout.media_slots),
                               model.embed(input_ids, media))
    left = torch.cat((torch.zeros(2, 1, dtype=torch.long), attention_mask), 1)
    assert model.layout(torch.cat((torch.full((2, 1), PAD_ID), input_ids), 1), _grid(sizes), left).attention_mask \
        is not None


def test_layout_checks_the_media_slots():
    model = Captioner(tiny_config())
    _, input_ids, attention_mask, _ = caption_batch([(32, 48)], [[7]])  # 6 slots
    with pytest.raises(ValueError, match="input_ids hold 6 image and video tokens but the images and clips give 4"):
        model.layout(input_ids, _grid([(32, 32)]), attention_mask)


def test_training_step_with_a_layout_is_one_graph_that_never_waits():
    """With the layout computed beforehand, nothing in the forward, loss or backward waits for the device:
    torch.compile traces the forward whole (without the layout, data-dependent shapes and host reads break it 17
    times), and neither traced graph holds an op whose output size or value the host must read (a masked scatter's
    backward counts its mask), so a GPU step runs ahead of the device and can be captured as one CUDA graph."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    model = Captioner(tiny_config())
    sizes = [(32, 32)] * 2
    images, input_ids, attention_mask, labels = caption_batch(sizes, [[7, 8], [9]])
    layout = model.layout(input_ids, _grid(sizes), attention_mask)
    ops = set()

    def record(graph, _):
        ops.update(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph.forward)

    step = torch.compile(lambda *a: model(*a, labels=labels, layout=layout).loss, fullgraph=True,
                         backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    step(torch.stack(images), input_ids).backward()
    waits = ("aten.nonzero", "aten.masked_select", "aten.masked_scatter", "aten._local_scalar_dense", "aten.item")
    assert ops and not [op for op in ops if any(w in op for w in waits)]
