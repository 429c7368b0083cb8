"""The 1D schemes v2pe and pixtral: worked examples, padding, decoding through the cache with fractional ids, the
rotary maths on fractional ids, and Pixtral's break tokens wherever a media block is laid out."""

import pytest
import torch
from padding import padded

from mmrope.data.collate import CaptionCollator
from mmrope.data.tokenizer import ByteTokenizer
from mmrope.model.config import CaptionerConfig, TextConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.generation import image_prompts
from mmrope.model.position_ids import PAD_POSITION
from mmrope.model.rope import apply_rotary
from mmrope.model.tokens import (
    EOS_ID,
    IGNORE_INDEX,
    IMAGE_BREAK_ID,
    IMAGE_TOKEN_ID,
    PAD_ID,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    vision_block,
)

VS, VE, IMG, VID, BRK = VISION_START_ID, VISION_END_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, IMAGE_BREAK_ID
WORD = 20  # any text id


def scheme(name: str):
    return SCHEMES[name](CaptionerConfig(position_scheme=name))


def ids_of(name, tokens, grids, clip=None):
    ids, deltas = scheme(name).position_ids(torch.tensor([tokens]), torch.tensor(grids), clip=clip)
    return ids[:, 0], deltas[0, 0]


# --- v2pe -------------------------------------------------------------------------------------------------------

def test_v2pe_worked_examples_match_the_collection():
    """Numbers from running the collection's get_v2pe_index (JJJYmmm/Multimodal-RoPEs, visual_stride=4.0) on these
    sequences; V = 4 is our visual_stride."""
    assert SCHEMES["v2pe"].visual_stride == 4.0
    ids, delta = ids_of("v2pe", [VS] + [IMG] * 6 + [VE], [[1, 4, 6]])  # 2 x 3 tokens: steps of 4/6
    expected = [0.0, 2 / 3, 4 / 3, 2.0, 8 / 3, 10 / 3, 4.0, 5.0]
    torch.testing.assert_close(ids, torch.tensor([expected] * 3))
    assert delta.item() == -2.0
    ids, delta = ids_of("v2pe", [WORD, WORD, VS] + [IMG] * 16 + [VE, WORD, WORD], [[1, 8, 8]])  # 4 x 4: steps of 1/4
    expected = [0.0, 1.0, 2.0] + [2 + k / 4 for k in range(1, 17)] + [7.0, 8.0, 9.0]
    assert ids.tolist() == [expected] * 3 and delta.item() == -12.0  # quarters are exact in float32


def test_v2pe_clip_frames_are_blocks_one_after_another():
    """By hand from the rule: after vs at 1, frame 0 steps 2/3 to 5, frame 1 starts from ceil(5) and ends at 9, the
    text resumes at 9 + 1 (the collection gives each of Qwen3-VL's frames a block of its own)."""
    ids, delta = ids_of("v2pe", [WORD, VS] + [VID] * 12 + [VE, WORD], [[2, 4, 6]], clip=torch.tensor([True]))
    frame0 = [1 + k * 2 / 3 for k in range(1, 7)]
    expected = [0.0, 1.0] + frame0 + [f + 4 for f in frame0] + [10.0, 11.0]
    torch.testing.assert_close(ids, torch.tensor([expected] * 3))
    assert delta.item() == 11 + 1 - 16


def test_v2pe_ids_are_float32_and_deltas_float64():
    ids, delta = ids_of("v2pe", [VS] + [IMG] * 6 + [VE], [[1, 4, 6]])
    assert ids.dtype == torch.float32 and delta.dtype == torch.float64


# --- both: padding and decoding -----------------------------------------------------------------------------------

def prompt(name, grids):
    """One row per grid: text, the block as the scheme lays it out, text."""
    breaks = SCHEMES[name].row_breaks
    return [[WORD] + vision_block(t * h * w // 4, t > 1, w // 2 if breaks else None) + [WORD + 1] for t, h, w in grids]


GRIDS = [[1, 4, 6], [1, 8, 8], [2, 4, 4]]  # an image of 2 x 3 tokens, one of 4 x 4, a clip of 2 frames of 2 x 2


@pytest.mark.parametrize("name", ["v2pe", "pixtral"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_slots_not_ids(name, side):
    rows = prompt(name, GRIDS)
    grid_thw, clip = torch.tensor(GRIDS), torch.tensor([False, False, True])
    ids, mask = padded(rows, side)
    batch, deltas = scheme(name).position_ids(ids, grid_thw, mask, clip)
    for i, row in enumerate(rows):
        alone, delta = scheme(name).position_ids(torch.tensor([row]), grid_thw[i:i + 1], clip=clip[i:i + 1])
        assert torch.equal(batch[:, i][:, mask[i].bool()], alone[:, 0])
        assert (batch[:, i][:, ~mask[i].bool()] == PAD_POSITION).all()
        # the delta continues the row's own ids from its slot in the padded batch
        assert deltas[i].item() == delta.item() + len(row) - ids.shape[1]


@pytest.mark.parametrize("name", ["v2pe", "pixtral"])
def test_decoding_continues_the_full_sequences_ids_exactly(name):
    """Two media in a row with text between, left padding, five decoded tokens: cache_index + delta gives each the
    very id (bit for bit) that the scheme gives the whole sequence."""
    block = prompt(name, [[1, 4, 6]])[0] + prompt(name, [[1, 6, 4]])[0]
    rows = [block, prompt(name, [[1, 8, 8]])[0]]
    grid_thw = torch.tensor([[1, 4, 6], [1, 6, 4], [1, 8, 8]])
    ids, mask = padded(rows, "left")
    s = scheme(name)
    _, deltas = s.position_ids(ids, grid_thw, mask)
    decoded = s.decode_position_ids(ids.shape[1], deltas, length=5)  # (3, 2, 5)
    full_ids = torch.cat((ids, torch.full((2, 5), WORD)), 1)
    full, _ = s.position_ids(full_ids, grid_thw, torch.cat((mask, torch.ones(2, 5, dtype=mask.dtype)), 1))
    assert decoded.dtype == full.dtype and torch.equal(decoded, full[..., -5:])


# --- fractional ids through the rotary maths ----------------------------------------------------------------------

def test_fractional_ids_rotate_by_their_exact_angles():
    s = SCHEMES["v2pe"](CaptionerConfig(position_scheme="v2pe", text=TextConfig(dim=32, num_heads=2)))
    ids, _ = s.position_ids(torch.tensor([[VS] + [IMG] * 6 + [VE]]), torch.tensor([[1, 4, 6]]))
    cos, sin = s(ids)
    assert cos.dtype == torch.float32
    angles = ids[0].double()[:, :, None].mean(0) * s.rope.inv_freq.double()  # (n, k): one id on every row
    torch.testing.assert_close(cos[0].double(), angles.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0].double(), angles.sin(), atol=1e-6, rtol=0)
    # q·k depends on the fractional offset alone: the pairs (2/3, 0) and (10/3, 8/3) are both 2/3 apart
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)
    rotated = [apply_rotary(x, cos[:, i:i + 1], sin[:, i:i + 1]) for x, i in ((q, 1), (k, 0), (q, 5), (k, 4))]
    torch.testing.assert_close((rotated[0] * rotated[1]).sum(), (rotated[2] * rotated[3]).sum(), atol=1e-5, rtol=0)


def test_v2pe_and_pixtral_are_1d():
    for name in ("v2pe", "pixtral"):
        frequencies, axes = scheme(name).pair_frequencies()
        assert (axes == -1).all() and frequencies.shape == (16,)
        for attribute in ("design", "allocation", "source"):
            assert getattr(SCHEMES[name], attribute)
    assert "2412.09616" in SCHEMES["v2pe"].source and "2410.07073" in SCHEMES["pixtral"].source


# --- pixtral ------------------------------------------------------------------------------------------------------

def test_pixtral_worked_example():
    """By hand from Pixtral's layout: a break after every row but the last, the running index over everything."""
    tokens = [VS, IMG, IMG, IMG, BRK, IMG, IMG, IMG, VE, WORD]
    assert vision_block(6, row_length=3) + [WORD] == tokens
    ids, delta = ids_of("pixtral", tokens, [[1, 4, 6]])
    assert ids.tolist() == [list(range(10))] * 3 and delta.item() == 0
    clip = vision_block(8, clip=True, row_length=2)  # 2 frames of 2 x 2: four rows, three breaks
    assert clip == [VS, VID, VID, BRK, VID, VID, BRK, VID, VID, BRK, VID, VID, VE]


def test_pixtral_refuses_blocks_without_breaks():
    with pytest.raises(ValueError, match="position_scheme='pixtral' reads a break token .* hold 0, .* need 1"):
        ids_of("pixtral", [VS] + [IMG] * 6 + [VE], [[1, 4, 6]])


def sample(h, w, caption, video_frames=0):
    if video_frames:
        return {"video": torch.zeros(video_frames, 3, h, w), "fps": 2.0, "caption": caption, "references": [caption],
                "id": "v"}
    return {"image": torch.zeros(3, h, w), "caption": caption, "references": [caption], "id": "i"}


def test_the_collator_lays_out_pixtrals_rows():
    tok = ByteTokenizer()
    batch = CaptionCollator(tok, row_breaks=True)([sample(32, 48, "hi"), sample(32, 32, "a", video_frames=2)])
    image = [VS, IMG, IMG, IMG, BRK, IMG, IMG, IMG, VE] + tok.encode("hi") + [EOS_ID]
    clip = [VS, VID, VID, BRK, VID, VID, BRK, VID, VID, BRK, VID, VID, VE] + tok.encode("a") + [EOS_ID]
    for row, expected in enumerate((image, clip)):
        assert batch["input_ids"][row, :len(expected)].tolist() == expected
        labels = batch["labels"][row]
        caption = expected.index(VE) + 1  # where the caption starts
        assert (labels[:caption] == IGNORE_INDEX).all()  # breaks are part of the block: never targets
        assert labels[caption:len(expected)].tolist() == expected[caption:]
    plain = CaptionCollator(tok)([sample(32, 48, "hi")])["input_ids"][0].tolist()
    assert plain[:8] == [VS] + [IMG] * 6 + [VE] and BRK not in plain


def test_generation_prompts_lay_out_pixtrals_rows():
    grid_thw = torch.tensor([[1, 4, 4], [1, 4, 6]])  # 2 x 2 and 2 x 3 tokens
    input_ids, mask = image_prompts(grid_thw, 2, row_breaks=True)
    assert input_ids.tolist() == [[PAD_ID, PAD_ID, VS, IMG, IMG, BRK, IMG, IMG, VE],
                                  [VS, IMG, IMG, IMG, BRK, IMG, IMG, IMG, VE]]
    assert mask.tolist() == [[0, 0] + [1] * 7, [1] * 9]
    ids, _ = scheme("pixtral").position_ids(input_ids, grid_thw, mask)
    assert ids[0, 0, 2:].tolist() == list(range(7)) and ids[0, 1].tolist() == list(range(9))


def test_a_pixtral_model_generates_with_breaks_in_its_prompts():
    from mmrope.model.captioner import Captioner
    from mmrope.model.config import VisionConfig

    torch.manual_seed(0)
    model = Captioner(CaptionerConfig(VisionConfig(image_size=32, dim=32, depth=1, num_heads=2),
                                      TextConfig(vocab_size=16, dim=32, depth=1, num_heads=2, num_kv_heads=1),
                                      "pixtral"))
    images = [torch.randn(3, 32, 48), torch.randn(3, 48, 32)]
    cached = model.generate(images, max_new_tokens=3)
    assert [c.tolist() for c in cached] == [c.tolist() for c in model.generate(images, max_new_tokens=3,
                                                                               use_cache=False)]


def test_the_training_cli_links_row_breaks_to_the_scheme(tmp_path, monkeypatch):
    from mmrope.train.cli import CaptionCLI
    from mmrope.train.datamodule import CaptionDataModule
    from mmrope.train.module import CaptionModule

    monkeypatch.setattr("sys.argv", ["train.py"])  # the arguments are those given below, not pytest's
    for name, breaks in (("pixtral", True), ("v2pe", False)):
        cli = CaptionCLI(CaptionModule, CaptionDataModule, run=False,
                         args=["--model.position_scheme", name, "--data.tokenizer", "byte",
                               "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
        assert cli.datamodule.row_breaks is breaks
