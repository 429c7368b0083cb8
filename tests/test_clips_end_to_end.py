"""Clips end to end: temporal patches and (t, h, w) RoPE in the encoder, T > 1 M-RoPE ids in the decoder, the
collator's two clip modes, generation with clips (the KV cache against the full recompute), and the CLI on GIFs and
frame folders."""

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from clip_writers import frames_to_folder, frames_to_gif

from mmrope.data.clips import ClipsDataset, render_clip, sample_clip
from mmrope.data.collate import CaptionCollator
from mmrope.data.tokenizer import build_tokenizer
from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.rope import AxialRotaryEmbedding
from mmrope.model.tokens import (
    EOS_ID,
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    NUM_SPECIAL,
    PAD_ID,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
)

ROOT = Path(__file__).resolve().parents[1]
X = 7  # a text token


def clip_config(pos_encoding="rope3d", scheme="mrope", tp=2, tokens_per_second=None, depth=1) -> CaptionerConfig:
    vision = VisionConfig(image_size=32, dim=32, depth=depth, num_heads=2, pos_encoding=pos_encoding,
                          temporal_patch_size=tp)
    text = TextConfig(vocab_size=16, dim=32, depth=1, num_heads=2, num_kv_heads=1, max_seq_len=128)
    return CaptionerConfig(vision, text, scheme, tokens_per_second=tokens_per_second)


def random_clip(frames, h=32, w=32, seed=0):
    return torch.randn(frames, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- encoder -----------------------------------------------------------------------------------------------------

def test_rope3d_is_relative_in_time_row_and_col():
    rope = AxialRotaryEmbedding(16, theta=100.0, axes=3).double()
    assert rope.sections == [2, 3, 3]
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g, dtype=torch.float64)
    p1, p2, shift = (torch.randint(0, 30, (1, 3), generator=g) for _ in range(3))

    def score(a, b):
        from mmrope.model.rope import apply_rotary

        (cq, sq), (ck, sk) = rope(a), rope(b)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    assert torch.allclose(score(p1, p2), score(p1 + shift, p2 + shift), atol=1e-12)
    assert not torch.allclose(score(p1, p2), score(p1 + torch.tensor([[1, 0, 0]]), p2), atol=1e-6)  # time counts


def test_rope3d_needs_a_head_dim_split_three_ways():
    with pytest.raises(ValueError, match=r"vision.head_dim=12 .*pos_encoding='rope3d': expected a multiple of 8"):
        VisionConfig(dim=24, num_heads=2, pos_encoding="rope3d")


def test_temporal_patches_grid_padding_and_images_as_two_identical_frames():
    torch.manual_seed(0)
    vision = Captioner(clip_config()).vision.eval()
    clip = random_clip(3)
    tokens, grid = vision([clip])
    assert grid.tolist() == [[2, 4, 4]] and tokens.shape == (2 * 4, 32)  # 3 frames -> 2 temporal patches of 2x2
    padded, _ = vision([torch.cat((clip, clip[-1:]))])  # the last frame repeated, as the encoder pads
    torch.testing.assert_close(tokens, padded)
    image = clip[0]
    as_image, grid = vision([image])
    assert grid.tolist() == [[1, 4, 4]]
    torch.testing.assert_close(as_image, vision([torch.stack((image, image))])[0])  # Qwen2-VL: an image, twice


def test_tp1_one_frame_clip_is_the_image():
    torch.manual_seed(0)
    vision = Captioner(clip_config(pos_encoding="rope2d", tp=1)).vision.eval()
    image = random_clip(1)[0]
    torch.testing.assert_close(vision([image])[0], vision([image[None]])[0])


@pytest.mark.parametrize("pos_encoding", ["rope3d", "rope1d_flat"])
def test_time_aware_encoders_see_frame_order_and_are_shift_invariant(pos_encoding):
    torch.manual_seed(0)
    vision = Captioner(clip_config(pos_encoding, tp=1, depth=2)).vision.eval()
    clip = random_clip(3)[None]  # (1, T, 3, H, W)
    base = vision.forward_features(clip)
    torch.testing.assert_close(vision.forward_features(clip, position_offset=(5, 2, 3)), base, atol=1e-5, rtol=1e-5)
    n = base.shape[1] // 3
    reversed_out = vision.forward_features(clip.flip(1))
    unreversed = torch.cat([reversed_out[:, i * n:(i + 1) * n] for i in (2, 1, 0)], dim=1)
    assert not torch.allclose(unreversed, base, atol=1e-4)  # frames are told apart by when they are


def test_2d_encoders_see_frames_only_by_content():
    torch.manual_seed(0)
    vision = Captioner(clip_config("rope2d", tp=1, depth=2)).vision.eval()
    clip = random_clip(3)[None]
    base = vision.forward_features(clip)
    n = base.shape[1] // 3
    reversed_out = vision.forward_features(clip.flip(1))
    unreversed = torch.cat([reversed_out[:, i * n:(i + 1) * n] for i in (2, 1, 0)], dim=1)
    torch.testing.assert_close(unreversed, base, atol=1e-5, rtol=1e-5)  # permuting frames permutes the output


# --- decoder positions ---------------------------------------------------------------------------------------------

def test_clip_ids_are_t_major_and_text_continues_after_the_largest():
    model = Captioner(clip_config())
    # a clip of 4 frames (2 temporal patches) of a 4x4 patch grid: decoder grid 2 x 2 x 2
    input_ids = torch.tensor([[X, VISION_START_ID] + [VIDEO_TOKEN_ID] * 8 + [VISION_END_ID, X, X]])
    ids, delta = model.position_ids(input_ids, torch.tensor([[2, 4, 4]]), clip=torch.tensor([True]))
    t, h, w = ids[:, 0].tolist()
    assert t == [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5, 6]
    assert h == [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4, 5, 6]
    assert w == [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5, 6]
    assert delta.tolist() == [[6 + 1 - 13]]


def test_absolute_time_scales_clip_t_ids():
    model = Captioner(clip_config(tokens_per_second=2.0))
    input_ids = torch.tensor([[VISION_START_ID] + [VIDEO_TOKEN_ID] * 12 + [VISION_END_ID, X]])
    grid, clip = torch.tensor([[3, 4, 4]]), torch.tensor([True])
    ids, _ = model.position_ids(input_ids, grid, clip=clip, second_per_grid_t=[1.5])  # 3 s per id step
    assert ids[0, 0, 1:13:4].tolist() == [1, 4, 7]  # t = 1 + floor(k * 1.5 s * 2 tokens/s)
    assert ids[0, 0, -2:].tolist() == [8, 9]  # vision_end after the largest id (7, not h or w)
    with pytest.raises(ValueError, match="expected second_per_grid_t"):
        model.position_ids(input_ids, grid, clip=clip)


def test_frames_as_images_take_their_order_from_the_sequence():
    model = Captioner(clip_config())
    block = [VISION_START_ID] + [IMAGE_TOKEN_ID] * 4 + [VISION_END_ID]
    input_ids = torch.tensor([block * 2 + [X]])
    ids, _ = model.position_ids(input_ids, torch.tensor([[1, 4, 4], [1, 4, 4]]))
    assert ids[0, 0].tolist() == [0, 1, 1, 1, 1, 3, 4, 5, 5, 5, 5, 7, 8]  # each frame a t = 0 block of its own


# --- collation ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_samples():
    ds = ClipsDataset(3, seed=0, frames=5, canvas=32)
    return [ds[i] for i in range(3)]


def test_collate_block_mode(clip_samples):
    tok = build_tokenizer("word", [s["caption"] for s in clip_samples])
    batch = CaptionCollator(tok, patch_size=8, merge_size=2, temporal_patch_size=2)(clip_samples)
    assert [m.shape for m in batch["images"]] == [(5, 3, 32, 32)] * 3
    assert batch["image_grid_thw"].tolist() == [[3, 4, 4]] * 3  # 5 frames -> 3 temporal patches
    assert batch["second_per_grid_t"] == [2 / s["fps"] for s in clip_samples]
    row = batch["input_ids"][0].tolist()
    assert row[:14] == [VISION_START_ID] + [VIDEO_TOKEN_ID] * 12 + [VISION_END_ID]
    assert (batch["labels"][0, :14] == IGNORE_INDEX).all() and batch["labels"][0, 14] == row[14]


def test_collate_frames_mode(clip_samples):
    tok = build_tokenizer("word", [s["caption"] for s in clip_samples])
    batch = CaptionCollator(tok, patch_size=8, merge_size=2, temporal_patch_size=2, clip_mode="frames")(clip_samples)
    assert len(batch["images"]) == 15 and [len(p) for p in batch["prompts"]] == [5, 5, 5]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 15 and batch["second_per_grid_t"] == []
    block = [VISION_START_ID] + [IMAGE_TOKEN_ID] * 4 + [VISION_END_ID]
    assert batch["input_ids"][0, :30].tolist() == block * 5
    with pytest.raises(ValueError, match="clip_mode='film' is unknown"):
        CaptionCollator(tok, clip_mode="film")


# --- training step and generation ----------------------------------------------------------------------------------

def _train(model, prompts, captions, timing, steps=25):
    """A few steps on fixed prompts so that outputs depend on the clip and end at varied lengths."""
    blocks = []
    for prompt in prompts:
        row = []
        for m in prompt:
            n = (-(-m.shape[0] // model.config.vision.temporal_patch_size) if m.ndim == 4 else 1) * 4
            row += [VISION_START_ID] + [VIDEO_TOKEN_ID if m.ndim == 4 else IMAGE_TOKEN_ID] * n + [VISION_END_ID]
        blocks.append(row)
    rows = [b + c + [EOS_ID] for b, c in zip(blocks, captions)]
    length = max(map(len, rows))
    input_ids = torch.tensor([r + [PAD_ID] * (length - len(r)) for r in rows])
    labels = torch.tensor([[IGNORE_INDEX] * len(b) + c + [EOS_ID] + [IGNORE_INDEX] * (length - len(r))
                           for b, c, r in zip(blocks, captions, rows)])
    media = [m for p in prompts for m in p]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(media, input_ids, (input_ids != PAD_ID).long(), labels, second_per_grid_t=timing).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


@pytest.mark.parametrize("scheme, tokens_per_second", [("mrope", None), ("mrope", 2.0), ("mrope_interleaved", None),
                                                       ("flat", None)])
def test_cache_matches_full_recompute_with_clips_frames_and_images(scheme, tokens_per_second):
    torch.manual_seed(0)
    model = Captioner(clip_config(scheme=scheme, tokens_per_second=tokens_per_second))
    clips = [random_clip(n, seed=n) for n in (2, 3, 5)]
    prompts = [[clips[0]], [clips[1]], list(random_clip(3, seed=9)), [random_clip(1, seed=4)[0]], [clips[2]]]
    timing = [1.0, 0.5, 0.75]  # seconds per temporal patch of the three clips, in order
    g = torch.Generator().manual_seed(1)
    captions = [torch.randint(NUM_SPECIAL, 16, (n,), generator=g).tolist() for n in (1, 3, 5, 2, 4)]
    loss = _train(model, prompts, captions, timing)
    assert torch.isfinite(loss)
    model.eval()
    cached = model.generate(prompts, max_new_tokens=8, second_per_grid_t=timing)
    full = model.generate(prompts, max_new_tokens=8, second_per_grid_t=timing, use_cache=False)
    assert [c.tolist() for c in cached] == [f.tolist() for f in full]
    beams = model.generate(prompts, max_new_tokens=6, strategy="beam", num_beams=3, second_per_grid_t=timing)
    slow = model.generate(prompts, max_new_tokens=6, strategy="beam", num_beams=3, second_per_grid_t=timing,
                          use_cache=False)
    assert [b.tolist() for b in beams] == [s.tolist() for s in slow]


def test_generate_checks_clip_timing():
    model = Captioner(clip_config(tokens_per_second=1.0)).eval()
    with pytest.raises(ValueError, match="second_per_grid_t has 2 values: expected one per clip"):
        model.generate([random_clip(2)], max_new_tokens=2, second_per_grid_t=[1.0, 2.0])


# --- end to end: train from the YAML, caption GIFs and frame folders, evaluate longer clips --------------------------

@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> Path:
    from mmrope.train import cli as train

    root = tmp_path_factory.mktemp("clips")
    args = ["fit", "--config", str(ROOT / "configs/clips_debug.yaml"), f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=12", "--trainer.val_check_interval=12", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.batch_size=8",
            "--data.clips.n_val=4", "--model.max_new_tokens=4"]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(args) == 0
    return root / "checkpoints" / "last.ckpt"


def mmrope_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmrope", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_caption_gif_webp_and_frame_folder(clip_checkpoint, tmp_path):
    frames = render_clip(sample_clip(0, 3, "test", frames=4, canvas=32))
    frames_to_gif(frames, tmp_path / "clip.gif", fps=1.5)
    frames[0].save(tmp_path / "clip.webp", save_all=True, append_images=frames[1:], duration=667, loop=0)
    frames_to_folder(frames, tmp_path / "frames")
    frames[0].save(tmp_path / "still.png")
    result = mmrope_cli("caption", tmp_path / "clip.gif", tmp_path / "clip.webp", tmp_path / "frames",
                        tmp_path / "still.png", "--clips", "--ckpt", clip_checkpoint, "--max-new-tokens", 6)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / n) for n in
                                                       ("clip.gif", "clip.webp", "frames", "still.png")]
    assert all(line.split("\t")[1].strip() for line in lines[:3])
    gif, webp, folder = (line.split("\t")[1] for line in lines[:3])
    assert gif == webp == folder  # the same frames, whatever the container (GIF keeps these flat colours exact)
    frames_mode = mmrope_cli("caption", tmp_path / "clip.gif", "--clip-mode", "frames", "--ckpt", clip_checkpoint)
    assert frames_mode.returncode == 0, frames_mode.stderr


def test_caption_clip_errors_are_one_line(clip_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0000.png").write_bytes(b"not a png")
    result = mmrope_cli("caption", tmp_path / "empty", bad, "--clips", "--ckpt", clip_checkpoint)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no frames" in result.stderr and "0000.png" in result.stderr


def test_eval_scores_longer_clips(clip_checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    result = mmrope_cli("eval", "--ckpt", clip_checkpoint, "--data", ROOT / "configs/clips_debug.yaml", "--n", 6,
                        "--frames", "4,8", "--out", out, "--max-new-tokens", 6)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["size"], r["frames"], r["n"]) for r in rows] == [(32, 4, 6), (32, 8, 6)]
    assert all(0 <= r["event"] <= 1 and 0 <= r["attribute"] <= 1 for r in rows)
    assert "| 32 (train) | 8 |" in result.stdout


# --- the video ablation and the ids picture --------------------------------------------------------------------------

def test_tiny_clip_ablation_scores_longer_clips(tmp_path, capsys):
    import csv
    import textwrap

    from test_ablation import assert_png

    from mmrope import cli
    from mmrope.ablation.plan import load_plan

    grid = tmp_path / "clips.yaml"
    grid.write_text(textwrap.dedent(f"""\
        encoders: [rope3d]
        schemes: [mrope, flat]
        seeds: 1
        eval: {{splits: [test], factors: [1], frames: [4, 8], n: 4, batch_size: 4, max_new_tokens: 4}}
        presets:
          tiny:
            base: {ROOT / "configs/clips_debug.yaml"}
            arms: [rope3d-mrope]
            max_steps: 2
            train: {{data.batch_size: 4, trainer.limit_val_batches: 0, trainer.enable_model_summary: false,
                    data.clips.clip_mode: frames}}
        """))
    plan = load_plan(grid, "tiny")
    assert (plan.frames, plan.train_frames, plan.clip_mode, plan.metric) == ([4, 8], 4, "frames", "event")
    out = tmp_path / "out"
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert cli.main(["ablate", "--config", str(grid), "--preset", "tiny", "--out", str(out)]) == 0
    assert "32 px (1x), 8 frames" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["encoder"], r["scheme"], r["frames"], r["n"]) for r in rows] == [("rope3d", "mrope", "4", "4"),
                                                                                ("rope3d", "mrope", "8", "4")]
    assert all(0 <= float(r["event"]) <= 1 for r in rows)
    assert "## test: event accuracy" in (out / "results.md").read_text()
    assert_png(out / "event_vs_frames_test.png")
    assert_png(out / "event_bars_test.png")
    image_grid = grid.read_text().replace("clips_debug", "debug")
    (tmp_path / "images.yaml").write_text(image_grid)
    with pytest.raises(ValueError, match="eval.frames is for clip grids"):
        load_plan(tmp_path / "images.yaml", "tiny")


def test_viz_ids_of_a_clip(tmp_path, capsys):
    from mmrope import cli

    assert cli.main(["viz", "ids", "--frames", "3", "--height", "32", "--width", "32",
                     "--out", str(tmp_path / "ids.png")]) == 0
    assert (tmp_path / "ids.png").stat().st_size > 1000
    capsys.readouterr()
    assert cli.main(["viz", "ids", "--frames", "0", "--out", str(tmp_path / "x.png")]) == 1
    assert "--frames 0: expected at least 1" in capsys.readouterr().err


def test_shipped_clip_grid():
    from mmrope.ablation.plan import load_plan

    grid = ROOT / "configs/ablation/clips.yaml"
    cpu, frames = load_plan(grid, "cpu"), load_plan(grid, "cpu-frames")
    assert cpu.frames == frames.frames == [4, 8, 12] and cpu.train_frames == 4 and cpu.sizes == [48]
    assert (cpu.clip_mode, frames.clip_mode) == ("block", "frames") and cpu.max_steps == frames.max_steps
    assert [s for _, s in cpu.arms] == ["mrope", "mrope_interleaved", "flat"]  # the three decoder schemes
    assert len(load_plan(grid, "gpu").arms) == 6 * 3
