"""A ViT started from a timm checkpoint on disk: random-weight timm models saved to temporary files give the same
features as timm itself, the absolute table is resampled or dropped as the encoding asks, the class token goes, the
first tensor that does not fit is named in one line, a timm model name loads a local file, and freezing holds the
loaded tensors for the first steps, across a resume that no longer has the file."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from mmrope.model.config import VisionConfig
from mmrope.model.position_ids import raster_positions
from mmrope.model.vision import VisionEncoder
from mmrope.train import cli as train
from mmrope.train.pretrained import load_timm_vision, vision_state_from_timm

ROOT = Path(__file__).resolve().parents[1]


def timm_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    kw = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 0, **kw}
    return VisionTransformer(**kw).eval()


def saved(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def encoder(pos_encoding: str = "learned", **kw) -> VisionEncoder:
    kw = {"patch_size": 8, "image_size": 32, "dim": 64, "depth": 2, "num_heads": 2, "pos_encoding": pos_encoding, **kw}
    return VisionEncoder(VisionConfig(**kw), out_dim=64).eval()


def test_loaded_encoder_computes_what_timm_computes(tmp_path):
    """No class token, so every patch attends to the same tokens in both: ours (merge-window order, then the merger's
    norm, which takes timm's final norm) equals timm's forward_features, patch for patch."""
    vit = timm_vit(class_token=False, global_pool="avg", fc_norm=False)  # fc_norm would replace the final norm
    ours = encoder("learned")
    loaded, notes = load_timm_vision(ours, saved(vit, tmp_path / "vit.safetensors"))
    assert "positions.pos_embed.weight" in loaded and "merger.norm.weight" in loaded
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mine = ours.merger.norm(ours.forward_features(x))  # (b, n, c), merge-window order
        theirs = vit.forward_features(x)[:, raster_positions(4, 4, 2)]  # (b, n, c), raster order -> ours
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_class_token_dropped_table_resampled_or_dropped(tmp_path):
    vit = timm_vit(img_size=64)  # a class token and an 8 x 8 table; ours is 4 x 4
    path = saved(vit, tmp_path / "vit.safetensors")
    learned = encoder("learned")
    _, notes = load_timm_vision(learned, path)
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[4, 4], old_size=[8, 8], num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=True)[0, 1:]
    torch.testing.assert_close(learned.positions.pos_embed.weight.detach(), expected)
    assert "pos_embed 8x8 resampled to 4x4" in notes and any("cls_token" in n for n in notes)
    rope = encoder("rope2d")
    before = dict(rope.named_parameters())["merger.mlp.fc1.weight"].clone()
    loaded, notes = load_timm_vision(rope, path)
    assert any("pos_embed dropped" in n for n in notes) and not any("pos_embed" in n for n in loaded)
    torch.testing.assert_close(rope.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert torch.equal(rope.merger.mlp.fc1.weight, before)  # the merger's MLP starts from scratch


def test_temporal_patches_inflate_the_patch_conv(tmp_path):
    vit = timm_vit(class_token=False, global_pool="avg")
    clips = encoder("rope3d", temporal_patch_size=2, num_heads=1)
    state, _ = vision_state_from_timm(vit.state_dict(), clips)
    still = torch.randn(1, 3, 8, 8)
    conv = torch.nn.functional.conv2d
    torch.testing.assert_close(conv(still.repeat(1, 2, 1, 1), state["patch_embed.weight"]),
                               conv(still, vit.patch_embed.proj.weight.detach()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vit_kw, ours_kw, words", [
    ({}, {"dim": 32, "num_heads": 2}, "patch_embed.proj.weight has shape (64, 3, 8, 8), vision.patch_embed.weight "
                                      "expects (32, 3, 8, 8)"),
    ({}, {"depth": 3}, "has no blocks.2.norm1.weight for vision.blocks.2.norm1.weight"),
    ({"depth": 3}, {}, "blocks.2.norm1.weight has no counterpart: the checkpoint has more blocks than vision.depth=2"),
    ({"init_values": 1e-5}, {}, "blocks.0.ls1.gamma (64,) has no counterpart in mmrope's ViT"),
])
def test_the_first_tensor_that_does_not_fit_is_named(tmp_path, vit_kw, ours_kw, words):
    path = saved(timm_vit(**vit_kw), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError) as err:
        load_timm_vision(encoder("rope2d", **ours_kw), path)
    assert words in str(err.value) and str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_timm_model_name_loads_a_local_file(tmp_path, monkeypatch):
    """timm builds the model and loads the file itself (its own converters); nothing is downloaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)  # dim 64, depth 6, 2 heads, patch 16, a 10 x 10 table
    path = tmp_path / "test_vit.pth"
    torch.save(vit.state_dict(), path)
    ours = encoder("learned", patch_size=16, image_size=64, depth=6, mlp_ratio=3.0)
    loaded, notes = load_timm_vision(ours, path, timm_model="test_vit")
    assert "pos_embed 10x10 resampled to 4x4" in notes
    torch.testing.assert_close(ours.blocks[5].attn.qkv.weight, vit.blocks[5].attn.qkv.weight)
    with pytest.raises(ValueError, match="timm could not load it into vit_tiny_patch16_224"):
        load_timm_vision(encoder("learned"), path, timm_model="vit_tiny_patch16_224")


def run_args(root: Path, weights: Path, steps: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={steps}", "--trainer.val_check_interval=100", "--trainer.limit_val_batches=0",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--data.batch_size=8", f"--model.vision_init.path={weights}", "--model.vision_init.freeze_steps=3",
            *extra]


def vision_weights(root: Path) -> dict[str, torch.Tensor]:
    state = torch.load(root / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("model.vision."): v for k, v in state.items() if k.startswith("model.vision.blocks.")}


def test_freezing_holds_the_loaded_tower_for_the_first_steps_across_a_resume(tmp_path):
    """debug.yaml's ViT (dim 64, depth 2, patch 8) from a timm ViT of the same shape, frozen for 3 steps: after 2
    steps and after a resume to 3 (the file deleted: a resume reads the checkpoint, not the file) the blocks are
    timm's; at step 4 they train. A file that does not fit stops with one line."""
    vit = timm_vit()
    weights = saved(vit, tmp_path / "vit.safetensors")
    theirs = {k: v for k, v in vit.state_dict().items() if k.startswith("blocks.")}
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(run_args(tmp_path / "run", weights, 2)) == 0
        assert all(torch.equal(vision_weights(tmp_path / "run")[k], v) for k, v in theirs.items())
        weights.unlink()
        assert train.main(run_args(tmp_path / "run", weights, 3, "--ckpt_path=last")) == 0
        assert all(torch.equal(vision_weights(tmp_path / "run")[k], v) for k, v in theirs.items())
        assert train.main(run_args(tmp_path / "run", weights, 4, "--ckpt_path=last")) == 0
        assert not torch.equal(vision_weights(tmp_path / "run")["blocks.0.attn.qkv.weight"],
                               theirs["blocks.0.attn.qkv.weight"])
        other = saved(timm_vit(embed_dim=32), tmp_path / "narrow.safetensors")
        assert train.main(run_args(tmp_path / "bad", other, 1)) == 1
