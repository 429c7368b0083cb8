"""The pictures: every ``mmrope viz`` figure writes a valid PNG, Mixed maps use the checkpoint's learned frequencies,
and the attention weights behind ``viz attention`` come with outputs exactly equal to the model's SDPA path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrope import cli
from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.layers import Attention
from mmrope.model.rope import RotaryEmbedding
from mmrope.model.text import attention_mask_4d
from mmrope.model.tokens import NUM_SPECIAL
from mmrope.viz.attention import decoder_attention, image_attention_maps
from mmrope.viz.sequence_ids import format_ids, sequence_ids
from mmrope.viz.similarity import encoder_positions, relative_similarity, similarity_maps

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(pos_encoding: str = "rope2d", scheme: str = "mrope") -> Captioner:
    torch.manual_seed(0)
    config = CaptionerConfig(VisionConfig(image_size=32, dim=32, depth=2, num_heads=2, pos_encoding=pos_encoding),
                             TextConfig(dim=32, depth=2, num_heads=4, num_kv_heads=2), position_scheme=scheme)
    return Captioner(config).eval()


def assert_png(path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert path.stat().st_size < 200 * 1024


@pytest.mark.parametrize("mask", ["causal", "padded", "none"])
def test_explicit_attention_equals_sdpa(mask):
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, num_kv_heads=2)  # grouped-query heads, as the decoder has
    x = torch.randn(2, 7, 32)
    rope = RotaryEmbedding(8)(torch.arange(7))
    kwargs = {"is_causal": mask == "causal"}
    if mask == "padded":  # row 1 left-padded by 3
        key_mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
        kwargs["attn_mask"] = attention_mask_4d(key_mask, 7, 7, 0, x.device)
    out, weights = attn(x, rope, **kwargs, need_weights=True)
    torch.testing.assert_close(out, attn(x, rope, **kwargs), atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
    if mask != "none":
        assert weights.triu(1).abs().max() == 0  # nothing from the future


@pytest.mark.parametrize("scheme", ["mrope", "flat"])
def test_decoder_attention_reproduces_the_model(scheme):
    model = tiny_model(scheme=scheme)
    image = torch.randn(3, 32, 48)  # not square: 2 x 3 image tokens
    caption = torch.tensor([NUM_SPECIAL + 3, NUM_SPECIAL + 7, NUM_SPECIAL + 1])
    attention = decoder_attention(model, image, caption)
    logits, weights, n_image = attention.logits, attention.weights, len(attention.media_index)
    assert n_image == 6 and weights.shape == (2, 4, n_image + 2 + 3, n_image + 2 + 3)
    input_ids = torch.cat((torch.tensor([3] + [5] * n_image + [4]), caption)).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(logits, model([image], input_ids).logits[0], atol=1e-5, rtol=1e-5)

    maps = image_attention_maps(model, image, caption, layer=-1)
    assert maps.shape == (3, 2, 3)
    # the query that chose caption token i sits at vision_end + i; its weights over the image, head-averaged
    expected = weights[-1].mean(0)[n_image + 1 + 1, 1:n_image + 1].reshape(2, 3)
    torch.testing.assert_close(maps[1], expected)
    assert (image_attention_maps(model, image, caption).sum((1, 2)) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        image_attention_maps(model, image, caption, layer=5)


def test_attention_maps_of_a_clip_follow_its_temporal_patches():
    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, dim=32, depth=2, num_heads=2, pos_encoding="rope3d", temporal_patch_size=2)
    model = Captioner(CaptionerConfig(vision, TextConfig(dim=32, depth=2, num_heads=4, num_kv_heads=2))).eval()
    clip = torch.randn(4, 3, 32, 48)  # 2 temporal patches of 2 frames, each 2 x 3 merged tokens
    caption = torch.tensor([NUM_SPECIAL + 3, NUM_SPECIAL + 7])
    attention = decoder_attention(model, clip, caption)
    n_video = 2 * 2 * 3
    input_ids = torch.cat((torch.tensor([3] + [6] * n_video + [4]), caption)).unsqueeze(0)  # video tokens
    assert attention.input_ids.tolist() == input_ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(attention.logits, model([clip], input_ids).logits[0], atol=1e-5, rtol=1e-5)
    maps = image_attention_maps(model, clip, caption)
    assert maps.shape == (2, 2, 2, 3)  # (words, t, h, w)
    expected = attention.weights.mean((0, 1))[n_video + 2, 1:n_video + 1].reshape(2, 2, 3)
    torch.testing.assert_close(maps[1], expected)
    assert image_attention_maps(model, list(clip), caption).shape == (2, 4, 2, 3)  # one image block per frame


def test_training_curves_and_eval_plots(tmp_path):
    """curves.png from a CSV as Lightning's logger writes it (a row per logging call, the other cells empty), and
    eval's results.png against size, or frame count for clips."""
    from mmrope.viz.curves import plot_eval_results, plot_training_curves, read_metrics

    rows = ["epoch,step,train/loss,train/lr,val/loss,val/relation,val@96/relation,val/cider,val/num_samples"]
    rows += [f"0,{step},{3.0 / (step + 1)},0.001,,,,," for step in range(10)]
    rows += ["0,4,,,1.5,0.25,0.125,1.5,64", "0,9,,,1.25,0.5,nan,2.0,64"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    series = read_metrics(tmp_path / "metrics.csv")
    assert [step for step, _ in series["train/loss"]] == list(range(10))
    assert series["val@96/relation"] == [(4, 0.125)]  # the NaN left out
    assert series["val/relation"] == [(4, 0.25), (9, 0.5)]
    assert_png(plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png"))
    (tmp_path / "empty.csv").write_text("epoch,step,val/relation\n0,4,0.5\n")
    assert plot_training_curves(tmp_path / "empty.csv", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()

    sizes = [{"size": s, "n": 8, "bleu4": 0.3, "cider": 2.0, "exact": 0.1, "relation": 0.2} for s in (32, 48, 64)]
    assert_png(plot_eval_results(sizes, tmp_path / "results.png", train_size=32, title="shapes"))
    clips = [{"size": s, "frames": f, "n": 8, "bleu4": 0.3, "cider": 2.0, "event": 0.2} for s in (48, 64)
             for f in (4, 8)]
    assert_png(plot_eval_results(clips, tmp_path / "clips.png", train_size=48))


def test_similarity_maps_read_the_learned_mixed_frequencies():
    model = tiny_model("rope2d_mixed")
    freqs = model.vision.positions.rope.freqs
    with torch.no_grad():
        freqs[1].mul_(3.0)  # layer 1 differs from layer 0
    maps = similarity_maps(model, layer=1, head=1, grid=8)
    assert list(maps) == ["2D axial RoPE", "flattened 1D RoPE", "RoPE-Mixed (learned, layer 1), head 1"]
    reference = encoder_positions("rope2d_mixed", head_dim=16, num_heads=2)
    reference.rope.freqs.data = freqs.detach()[1:2].clone()
    torch.testing.assert_close(maps["RoPE-Mixed (learned, layer 1), head 1"],
                               relative_similarity(reference, 8, head=1))
    layer0 = similarity_maps(model, layer=0, head=1, grid=8)["RoPE-Mixed (learned, layer 0), head 1"]
    assert not torch.allclose(layer0, maps["RoPE-Mixed (learned, layer 1), head 1"])
    assert "RoPE-Mixed (init), head 0" in similarity_maps(tiny_model("rope2d"), grid=8)
    with pytest.raises(ValueError, match="layers 0..1"):
        similarity_maps(model, layer=2)


def test_mmrope_demo_prints_what_the_readme_shows(tmp_path, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("`mmrope demo` prints"):]
    shown = section[section.index("```text\n") + 8:section.index("\n```", section.index("```text"))].splitlines()
    assert cli.main(["demo", "--out", str(tmp_path / "demo.png")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {tmp_path / 'demo.png'}" and len(printed) == len(shown) + 1
    for line, expected in zip(printed, shown):  # the README elides the middle of the long rows: "a ... b"
        head, _, tail = expected.partition(" ... ")
        assert line.startswith(head) and line.endswith(tail), (line, expected)
    assert_png(tmp_path / "demo.png")


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_the_ids_of_every_registered_scheme(scheme):
    """``viz ids`` takes any scheme (every one has ``position_ids``): a tiny clip + caption laid out as the model
    reads it, a break token after each row for Pixtral, three rows of ids per token."""
    ids = sequence_ids(scheme, 32, 48, frames=2, text="red circle")
    media = [t for t in ids.tokens if t == "vid"]
    assert len(media) == 2 * 2 * 3 and ids.labels()[1] == "vid 0,0,0" and ids.tokens[-2:] == ["red", "circle"]
    assert ids.tokens.count("<br>") == (2 * 2 - 1 if SCHEMES[scheme].row_breaks else 0)
    assert ids.position_ids.shape == (3, len(ids.tokens))
    assert format_ids(ids.labels(), ids.position_ids).count("\n") == 3


def test_viz_ids_and_similarity_write_pngs(tmp_path, trained_checkpoint, capsys):
    assert cli.main(["viz", "ids", "--height", "32", "--width", "64", "--out", str(tmp_path / "ids.png")]) == 0
    assert_png(tmp_path / "ids.png")
    for scheme in ("flat", "v2pe", "pixtral"):  # any registered scheme: fractional ids, break tokens
        assert cli.main(["viz", "ids", "--scheme", scheme, "--out", str(tmp_path / f"{scheme}.png")]) == 0
        assert_png(tmp_path / f"{scheme}.png")
    capsys.readouterr()
    assert cli.main(["viz", "ids", "--scheme", "nope", "--out", str(tmp_path / "x.png")]) == 1
    assert "position_scheme='nope' is unknown" in capsys.readouterr().err
    assert cli.main(["viz", "similarity", "--grid", "8", "--out", str(tmp_path / "sim.png")]) == 0
    assert_png(tmp_path / "sim.png")

    # a rope2d_mixed checkpoint in train.py's layout: its layer-1 frequencies are drawn
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    config = checkpoint["mmrope"]["config"]
    config["vision"]["pos_encoding"] = "rope2d_mixed"
    mixed = Captioner(CaptionerConfig.from_dict(config))
    torch.save({"mmrope": {**checkpoint["mmrope"], "config": mixed.config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in mixed.state_dict().items()}}, tmp_path / "mixed.ckpt")
    capsys.readouterr()
    assert cli.main(["viz", "similarity", "--ckpt", str(tmp_path / "mixed.ckpt"), "--layer", "1", "--head", "1",
                     "--out", str(tmp_path / "mixed.png")]) == 0
    assert "RoPE-Mixed (learned, layer 1), head 1" in capsys.readouterr().out
    assert_png(tmp_path / "mixed.png")
    assert cli.main(["viz", "similarity", "--ckpt", str(trained_checkpoint), "--out", str(tmp_path / "s2.png")]) == 0
    assert "RoPE-Mixed (init)" in capsys.readouterr().out


def test_viz_attention_writes_an_overlay(tmp_path, trained_checkpoint, capsys):
    from mmrope.data.shapes import render_scene
    from mmrope.data.shapes_dataset import ShapesDataset

    image = tmp_path / "scene.png"
    render_scene(ShapesDataset(1, split="test", canvas=32).scene(0), 32).save(image)
    out = tmp_path / "attention.png"
    assert cli.main(["viz", "attention", "--ckpt", str(trained_checkpoint), str(image), "--out", str(out)]) == 0
    path, caption = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and caption
    assert_png(out)
    assert cli.main(["viz", "attention", "--ckpt", str(trained_checkpoint), str(image), "--layer", "-1",
                     "--size", "64", "--out", str(tmp_path / "last_layer.png")]) == 0
    assert_png(tmp_path / "last_layer.png")
    assert cli.main(["viz", "attention", "--ckpt", str(trained_checkpoint), str(image), "--layer", "9",
                     "--out", str(tmp_path / "bad.png")]) == 1
    assert "layer 9 does not exist" in capsys.readouterr().err


def test_viz_spectrum_names_the_still_axis(tmp_path, capsys):
    out = tmp_path / "spectrum.png"
    assert cli.main(["viz", "spectrum", "--config", "configs/shapes_small.yaml", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    still = [line for line in table.splitlines() if "still" in line]
    assert "| mrope | w | 0.00316 | 0.00949 | still" in table  # chunked at head_dim 32: the slowest pairs for w
    assert "| mrope_interleaved | w | 0.316 | 0.949 |" in table
    assert all("| w |" in line for line in still)  # only columns, only under chunked sections
    assert "| mhrope | | | | not shown: text.num_kv_heads=1 cannot hold" in table  # needs 3 key/value heads
    assert_png(out)
    assert cli.main(["viz", "spectrum", "--schemes", "flat", "--grid", "3,2,2", "--out", str(out)]) == 0
    assert "| flat | t |" in capsys.readouterr().out
    assert cli.main(["viz", "spectrum", "--grid", "1,4", "--out", str(out)]) == 1
    assert "--grid '1,4': expected three positive whole numbers" in capsys.readouterr().err


def test_viz_curves_reads_every_log_version_of_a_resumed_run(tmp_path, capsys):
    """A resumed run writes a second logs/version_1: its curve is both versions, steps counted as taken (Lightning
    logs the validation after step 100 at step 99), the later version winning a step both hold."""
    run = tmp_path / "run"
    for version, rows in {0: [(99, 0.25), (199, 0.5)], 10: [(199, 0.75), (299, 1.0)]}.items():
        folder = run / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,step,train/loss,val/relation\n0,50,1.5,\n" + "".join(
            f"0,{step},,{value}\n" for step, value in rows))
    out = tmp_path / "curves.png"
    assert cli.main(["viz", "curves", f"resumed={run}", "--metrics", "val/relation", "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| run | metric | 100 | 200 | 300 |"
    assert table[2] == "| resumed | relation | 0.25 | 0.75 | 1.00 |"
    assert_png(out)
    assert cli.main(["viz", "curves", str(run), "--metrics", "place", "--out", str(out)]) == 1
    assert f"{run}: no val/place in its logs" in capsys.readouterr().err
