"""The position-blind controls: one id per media block, and (``blind``) a block read as a set, so that the decoder
cannot tell where a media token came from. Cache and batch equivalence are in test_generation.py, as for every
scheme; here, the ids, the mask, and the property the control exists for."""

import pytest
import torch
from padding import padded

from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.position_ids import PAD_POSITION
from mmrope.model.text import attention_mask_4d
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_END_ID, VISION_START_ID, media_blocks

VS, VE, IMG, VID = VISION_START_ID, VISION_END_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID
WORD = 20


def scheme(name: str):
    return SCHEMES[name](CaptionerConfig(position_scheme=name))


@pytest.mark.parametrize("name", ["blind", "blind_causal"])
def test_a_block_takes_one_id_and_text_goes_on_after_it(name):
    tokens = [WORD, VS] + [IMG] * 6 + [VE, WORD, VS] + [VID] * 8 + [VE, WORD]
    ids, deltas = scheme(name).position_ids(torch.tensor([tokens]), torch.tensor([[1, 4, 6], [2, 4, 4]]),
                                           clip=torch.tensor([False, True]))
    expected = [0, 1] + [2] * 6 + [3, 4, 5] + [6] * 8 + [7, 8]
    assert ids[:, 0].tolist() == [[float(i) for i in expected]] * 3
    assert deltas.item() == 8 + 1 - len(tokens)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_slots_not_ids(side):
    rows = [[WORD, VS] + [IMG] * 6 + [VE, WORD], [VS] + [IMG] * 16 + [VE]]
    grid_thw = torch.tensor([[1, 4, 6], [1, 8, 8]])
    ids, mask = padded(rows, side)
    batch, deltas = scheme("blind").position_ids(ids, grid_thw, mask)
    for i, row in enumerate(rows):
        alone, delta = scheme("blind").position_ids(torch.tensor([row]), grid_thw[i:i + 1])
        assert torch.equal(batch[:, i][:, mask[i].bool()], alone[:, 0])
        assert (batch[:, i][:, ~mask[i].bool()] == PAD_POSITION).all()
        assert deltas[i].item() == delta.item() + len(row) - ids.shape[1]


def test_media_blocks_number_each_run_of_media_tokens_per_row():
    ids = torch.tensor([[WORD, VS, IMG, IMG, VE, VS, VID, VID, VID, VE, WORD],
                        [0, 0, 0, 0, VS, IMG, IMG, VE, WORD, WORD, WORD]])
    mask = torch.tensor([[1] * 11, [0] * 4 + [1] * 7])
    assert media_blocks(ids, mask).tolist() == [[0, 0, 1, 1, 0, 0, 2, 2, 2, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]]


def test_a_group_sees_itself_whole_and_text_stays_causal():
    groups = torch.tensor([[0, 1, 1, 1, 0, 0]])
    mask = attention_mask_4d(None, 6, 6, 0, torch.device("cpu"), groups)[0, 0]
    assert mask[1, 3] and mask[3, 1]  # media tokens see each other both ways
    assert not mask[0, 1] and mask[4, 1] and not mask[4, 5]  # text before the block cannot look ahead; after: causal
    # the same rows of a prefill into a longer cache: the keys beyond the prompt stay hidden
    cached = attention_mask_4d(torch.ones(1, 9), 6, 9, 0, torch.device("cpu"), groups)[0, 0]
    assert torch.equal(cached[:, :6], mask) and not cached[:, 6:].any()


def _model(name: str) -> Captioner:
    torch.manual_seed(0)
    config = CaptionerConfig(vision=VisionConfig(dim=32, depth=1, num_heads=2, image_size=32),
                             text=TextConfig(dim=32, depth=2, num_heads=2, num_kv_heads=1), position_scheme=name)
    return Captioner(config).eval()


@pytest.mark.parametrize("name, invariant", [("blind", True), ("blind_causal", False), ("mrope_interleaved", False)])
def test_only_blind_reads_an_image_as_a_set(name, invariant):
    """Permuting the media tokens of a block leaves the caption's logits of ``blind`` unchanged (the decoder cannot
    tell where a token came from); one id per block with causal order, or M-RoPE's ids, change them."""
    model = _model(name)
    images = torch.rand(2, 3, 32, 32)
    media, grid_thw = model.vision(list(images))
    from mmrope.model.generation import image_prompts

    prompt, _ = image_prompts(grid_thw, model.config.vision.spatial_merge_size)
    input_ids = torch.cat((prompt, torch.randint(10, 30, (2, 5))), dim=1)
    layout = model.layout(input_ids, grid_thw)
    n = media.shape[0] // 2
    permuted = media[torch.cat((torch.randperm(n), n + torch.randperm(n)))]
    logits = [model.text(model.embed(input_ids, m), layout.position_ids, layout.attention_mask, groups=layout.groups)
              for m in (media, permuted)]
    caption = slice(prompt.shape[1], None)
    same = torch.allclose(logits[0][:, caption], logits[1][:, caption], atol=1e-5)
    assert same == invariant


def test_blind_schemes_do_not_warn_of_still_axes(caplog):
    _model("blind")
    assert "turns the decoder" not in caplog.text
