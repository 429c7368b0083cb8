"""Plug-ins: the configs check their names against the live registries, a scheme, an encoder and a benchmark
defined in a user's own file train from a YAML that names them, every registered encoder and scheme builds, trains a
step and generates through the one model, and the hand-written maths agrees with timm's where timm has the same
thing (RoPE-Mixed, 2D sin-cos, the resampling of an absolute table)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmrope import plugins
from mmrope.benchmarks import BENCHMARKS
from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.decoder_schemes import SCHEMES, register_scheme
from mmrope.model.decoder_schemes.flat import FlatPositions
from mmrope.model.pos_encodings import ENCODERS
from mmrope.model.pos_encodings.absolute import LearnedPosEmbed, sincos_2d
from mmrope.model.position_ids import patch_positions
from mmrope.model.rope import MixedRotaryEmbedding, apply_rotary
from mmrope.model.tokens import vision_block

ROOT = Path(__file__).resolve().parents[1]
USER_FILE = Path(__file__).with_name("plugin_arms.py")  # the user's own file of plug-ins


def test_the_configs_check_names_against_the_live_registries():
    with pytest.raises(ValueError, match="vision.pos_encoding='rope9' is unknown: expected one of 'none', 'rope2d'"):
        VisionConfig(pos_encoding="rope9")
    with pytest.raises(ValueError, match="position_scheme='rope9' is unknown: expected one of 'mrope', ") as err:
        CaptionerConfig(position_scheme="rope9")
    assert "MMROPE_PLUGINS" in str(err.value) and "\n" not in str(err.value)  # says how to add one's own
    for name, cls in {**ENCODERS, **SCHEMES}.items():
        assert cls.name == name and cls.__doc__, name  # every plug-in says what it is

    @register_scheme("late_flat")  # after mmrope.model.config was imported: it counts all the same
    class LateFlat(FlatPositions):
        """flat, registered late."""

    try:
        assert isinstance(Captioner(CaptionerConfig(position_scheme="late_flat")).scheme, LateFlat)
    finally:
        del SCHEMES["late_flat"]


def test_the_readme_lists_every_registered_arm_as_the_registry_describes_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for registry, described in ((ENCODERS, ("summary", "source")), (SCHEMES, ("design", "allocation"))):
        ours = [name for name, cls in registry.items() if cls.__module__.startswith("mmrope.")]
        for name in ours:
            assert f"| `{name}`" in readme and all(getattr(registry[name], a) in readme for a in described), name
        rows = [readme.index(f"| `{name}`") for name in ours]
        assert rows == sorted(rows), "the table lists the arms in the registry's order"


@pytest.fixture
def user_plugins(monkeypatch):
    """``MMROPE_PLUGINS`` naming tests/plugin_arms.py, as a user sets it; what the file registers is removed after
    the test, so that no other test sees it."""
    monkeypatch.setenv(plugins.PLUGINS_VARIABLE, str(USER_FILE))
    monkeypatch.setattr(plugins, "_loaded", {})
    before = [(registry, set(registry)) for registry in (SCHEMES, ENCODERS, BENCHMARKS)]
    yield
    for registry, names in before:
        for name in set(registry) - names:
            del registry[name]
    sys.modules.pop(USER_FILE.stem, None)


def test_a_scheme_from_a_users_file_places_media_through_the_shared_base(user_plugins):
    plugins.load_plugins()
    config = CaptionerConfig(text=TextConfig(dim=32, num_heads=2, num_kv_heads=1), position_scheme="plugin_grid")
    mine, mrope = SCHEMES["plugin_grid"](config), SCHEMES["mrope"](config)
    input_ids = torch.tensor([[1] + vision_block(6) + [10, 11], [1, 7] + vision_block(4) + [10, 11, 0]])
    mask = torch.tensor([[1] * 11, [1] * 10 + [0]])
    grid_thw = torch.tensor([[1, 4, 6], [1, 4, 4]])  # decoder grids 2 x 3 and 2 x 2
    (ids, deltas), (expected, expected_deltas) = (s.position_ids(input_ids, grid_thw, mask) for s in (mine, mrope))
    assert torch.equal(ids[:, mask.bool()], expected[:, mask.bool()].float())  # M-RoPE's ids, placed by the base
    assert torch.equal(deltas, expected_deltas.double())


def test_a_scheme_an_encoder_and_a_benchmark_from_a_users_file_train_from_a_yaml(user_plugins, tmp_path, capsys,
                                                                                 monkeypatch):
    from mmrope.train import cli as train
    from mmrope.train.module import CaptionModule

    config = tmp_path / "plugins.yaml"
    config.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer:
          accelerator: cpu
          devices: 1
          max_steps: 4
          val_check_interval: 4
          check_val_every_n_epoch: null
          num_sanity_val_steps: 0
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path / "run"}
        model:
          vision: {{patch_size: 8, image_size: 32, dim: 32, depth: 1, num_heads: 2, pos_encoding: plugin_rows}}
          text: {{dim: 32, depth: 1, num_heads: 2, num_kv_heads: 1}}
          position_scheme: plugin_grid
          max_new_tokens: 4
        data:
          dataset: plugin_bars
          options: {{n_train: 32, n_val: 8}}
          batch_size: 8
        """), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI warns when it also sees pytest's arguments
    assert train.main(["fit", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "mmrope train: validation at step 4" in capsys.readouterr().out  # scored by the benchmark's own accuracy
    checkpoints = tmp_path / "run" / "checkpoints"
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)["mmrope"]["config"]
    assert (saved["vision"]["pos_encoding"], saved["position_scheme"]) == ("plugin_rows", "plugin_grid")
    assert list(checkpoints.glob("best-*.ckpt"))  # chosen by val/side, the benchmark's headline
    module = CaptionModule.load_from_checkpoint(checkpoints / "last.ckpt", weights_only=True)
    assert type(module.model.scheme) is SCHEMES["plugin_grid"]
    assert type(module.model.vision.positions) is ENCODERS["plugin_rows"]


def test_the_command_line_imports_the_files_mmrope_plugins_lists(tmp_path):
    """A fresh process: nothing but MMROPE_PLUGINS brings the names in."""
    args = ["fit", "--config", str(ROOT / "configs/debug.yaml"), "--model.position_scheme=plugin_grid",
            "--model.vision.pos_encoding=plugin_rows", "--data.dataset=plugin_bars", "--print_config"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mmrope.train", *args], capture_output=True, text=True, timeout=300,
                          env={**env, "MMROPE_PLUGINS": str(USER_FILE)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "position_scheme: plugin_grid" in done.stdout and "dataset: plugin_bars" in done.stdout


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    for entry, message in ((str(tmp_path / "missing.py"), "no such file"), ("no_such_module_here", "no such module")):
        with pytest.raises(ValueError, match=f"MMROPE_PLUGINS entry '{entry}': {message}"):
            plugins.load_plugins(entry)


def tiny(pos_encoding: str, scheme: str) -> Captioner:
    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, dim=32, depth=2, num_heads=2, pos_encoding=pos_encoding,
                          temporal_patch_size=2 if pos_encoding == "rope3d" else 1)
    heads = {"dim": 32, "num_heads": 2, "num_kv_heads": 1}
    if scheme == "mhrope":  # whole key/value heads for each of t, h and w: three, of head_dim 16 as the others
        heads = {"dim": 96, "num_heads": 6, "num_kv_heads": 3}
    return Captioner(CaptionerConfig(vision, TextConfig(vocab_size=16, depth=1, **heads), scheme))


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_every_encoder_trains_and_generates(encoding):
    model = tiny(encoding, "mrope")
    images = [torch.randn(3, 32, 48), torch.randn(3, 48, 32)]  # sizes the table was not made for
    input_ids = torch.tensor([[3] + [5] * 6 + [4, 10, 11], [3] + [5] * 6 + [4, 12, 2]])
    loss = model(images, input_ids, labels=input_ids).loss
    loss.backward()
    grads = [p.grad for p in model.vision.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None for g in grads)
    assert [len(c) for c in model.generate(images, max_new_tokens=3)] == [3, 3]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_trains_and_generates(scheme):
    model = tiny("rope2d", scheme)
    images = [torch.randn(3, 32, 48)]
    block = vision_block(6, row_length=3 if model.scheme.row_breaks else None)  # 2 x 3 merged tokens
    input_ids = torch.tensor([block + [10, 11]])
    loss = model(images, input_ids, labels=input_ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    frequencies, axes = model.scheme.pair_frequencies()
    assert frequencies.shape == axes.shape[-1:] == (8,)  # axes (heads, k) for MHRoPE
    assert (frequencies >= 0).all() and (frequencies > 0).any()  # 0: a NoPE pair (HoPE's slowest)
    assert model.generate(images, max_new_tokens=2)[0].shape == (2,)


def test_a_module_given_parts_of_a_config_derives_the_rest_for_its_scheme():
    """Before, the training module built a throwaway config with the default scheme, whose chunked section then
    failed the interleaved check."""
    from mmrope.train.module import CaptionModule

    module = CaptionModule(text={}, position_scheme="mrope_interleaved")
    assert module.config.text.mrope_section == [6, 5, 5]


def test_rope_mixed_matches_timm():
    from timm.layers.pos_embed_sincos import get_mixed_freqs

    depth, heads, head_dim, grid = 2, 3, 16, (4, 5)
    ours = MixedRotaryEmbedding(head_dim, heads, depth=depth)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    cos, sin = ours(torch.stack((rows, cols), -1))  # (depth, 1, heads, n, k)
    # timm keeps (2, depth, heads, pairs) as (x, y) = (col, row); ours is (depth, 2, heads, pairs) as (row, col)
    freqs = ours.freqs.detach().permute(1, 0, 2, 3).flip(0)
    embed = get_mixed_freqs(freqs, cols.float(), rows.float())  # (depth, heads, n, 2 * head_dim): [sin | cos]
    sin_t, cos_t = embed.chunk(2, dim=-1)
    q = torch.randn(1, heads, len(rows), head_dim)
    for layer in range(depth):
        timm_q = q * cos_t[layer] + _rotate_half_timm(q) * sin_t[layer]  # timm's apply_rot_embed(half=False)
        torch.testing.assert_close(apply_rotary(_ours(q), cos[layer], sin[layer]), _ours(timm_q), rtol=1e-5,
                                   atol=1e-5)


def _rotate_half_timm(x):
    """timm's ``rot``: adjacent pairs (x0, x1) -> (-x1, x0), the GPT-J layout."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), -1).reshape(x.shape)


def _ours(x):
    """timm's GPT-J layout (pairs adjacent) in ours (pair k couples channels k and k + d/2)."""
    return torch.cat((x[..., ::2], x[..., 1::2]), -1)


def test_sincos_2d_holds_timms_values():
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    dim, grid = 32, (3, 5)
    theirs = build_sincos2d_pos_embed(list(grid), dim=dim, temperature=10000)  # (n, dim): sin r, sin c, cos r, cos c
    ours = sincos_2d(patch_positions(1, *grid)[:, 1:], dim)  # (n, dim): sin r, cos r, sin c, cos c
    q = dim // 4
    reordered = torch.cat((ours[:, :q], ours[:, 2 * q:3 * q], ours[:, q:2 * q], ours[:, 3 * q:]), -1)
    torch.testing.assert_close(reordered, theirs, rtol=1e-6, atol=1e-6)


def test_learned_table_resamples_as_deit_does():
    import torch.nn.functional as F

    table = LearnedPosEmbed(dim=8, grid=4)
    resampled = table(6, 4, merge=1)  # raster order with merge 1
    image = table.weight.detach().T.reshape(1, 8, 4, 4)
    expected = F.interpolate(image, size=(6, 4), mode="bicubic", align_corners=False).reshape(8, 24).T
    torch.testing.assert_close(resampled.detach(), expected)
    assert torch.equal(table(4, 4, merge=1), table.weight)  # its own grid: the table itself


def test_image_statistics_are_timms_clip_constants():
    from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from mmrope.data.images import MEAN, STD

    assert (MEAN, STD) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _rotated_dot(positions, grid, a, b, head_dim=16):
    """q·k of the patches at raster indices a and b (q = k = ones), under an encoder plug-in's first table."""
    cos, sin = positions.rotary(patch_positions(1, *grid), (1, *grid))[0]
    ones = torch.ones(1, 1, 1, head_dim)
    q = apply_rotary(ones, cos[a:a + 1], sin[a:a + 1])
    k = apply_rotary(ones, cos[b:b + 1], sin[b:b + 1])
    return float((q * k).sum())


def test_normalised_rope_sees_the_same_image_distance_at_every_size():
    """DINOv3's coordinates: half the image apart is half the image apart, at 8x8 patches as at 16x16, where
    rope2d counts patches."""
    from mmrope.viz.similarity import encoder_positions

    norm, axial = encoder_positions("rope2d_norm", head_dim=16), encoder_positions("rope2d", head_dim=16)
    for enc, same in ((norm, True), (axial, False)):
        small = _rotated_dot(enc, (8, 8), 0, 4)  # row 0, columns 0 and 4 of 8
        large = _rotated_dot(enc, (16, 16), 0, 8)  # row 0, columns 0 and 8 of 16: the same fraction of the image
        assert (abs(small - large) < 1e-5) == same
    # relative: shifting both patches by the same number of patches keeps q·k (within one grid)
    assert abs(_rotated_dot(norm, (8, 8), 0, 9) - _rotated_dot(norm, (8, 8), 18, 27)) < 1e-5
    cos, _ = norm.rotary(patch_positions(1, 8, 8), (1, 8, 8))[0]
    assert cos.shape == (64, 8) and cos.dtype == torch.float32


def test_rescaled_normalised_rope_is_rope2d_norm_in_evaluation_and_rescaled_in_training():
    """DINOv3's training rescale: one factor in [1/2, 2] per forward on both axes, drawn from the module's own
    generator (the global stream untouched), resumed with the checkpoint; evaluation is rope2d_norm exactly."""
    from mmrope.model.config import VisionConfig

    config = VisionConfig(dim=32, num_heads=2, depth=2, image_size=32)
    torch.manual_seed(3)
    aug, norm = ENCODERS["rope2d_norm_aug"](config), ENCODERS["rope2d_norm"](config)
    ids, grid = patch_positions(1, 4, 6), (1, 4, 6)
    plain = norm.ids(ids, grid)
    aug.eval()
    torch.testing.assert_close(aug.ids(ids, grid), plain)
    assert aug.draws == 0
    aug.train()
    before = torch.get_rng_state()
    factors = []
    for _ in range(40):
        ratio = aug.ids(ids, grid) / plain  # (n, 2): one factor everywhere
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))
        factors.append(float(ratio[0, 0]))
    assert torch.equal(torch.get_rng_state(), before) and aug.draws == 40
    assert 0.5 <= min(factors) < 0.8 and 1.25 < max(factors) <= 2.0  # log-uniform over [1/2, 2]
    assert sum(f < 1 for f in factors) not in (0, 40)
    torch.manual_seed(3)
    resumed = ENCODERS["rope2d_norm_aug"](config)
    resumed.load_state_dict({"_extra_state": torch.tensor([aug.seed, 20])})  # a checkpoint taken after 20 draws
    resumed.train()
    assert [float((resumed.ids(ids, grid) / plain)[0, 0]) for _ in range(20)] == factors[20:]


def test_hybrid_adds_the_learned_table_and_rotates_as_rope2d():
    from mmrope.model.config import VisionConfig

    torch.manual_seed(0)
    config = VisionConfig(dim=32, num_heads=2, depth=2, image_size=32)
    hybrid = ENCODERS["rope2d_learned"](config)
    learned, axial = ENCODERS["learned"](config), ENCODERS["rope2d"](config)
    learned.pos_embed.weight.data = hybrid.pos_embed.weight.data.clone()
    ids, grid = patch_positions(1, 4, 6, merge=2), (1, 4, 6)
    x = torch.randn(2, 24, 32)
    assert torch.equal(hybrid.embed(x, ids, grid), learned.embed(x, ids, grid))
    for a, b in zip(hybrid.rotary(ids, grid), axial.rotary(ids, grid)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert hybrid.absolute and [n for n, _ in hybrid.named_parameters()] == ["pos_embed.weight"]


def test_a_scheme_that_leaves_an_axis_still_is_named_at_build(caplog):
    import logging

    from mmrope.model.decoder_schemes import ALMOST_STILL, still_axes

    caplog.set_level(logging.WARNING, logger="mmrope")
    chunked = Captioner(CaptionerConfig(position_scheme="mrope"))  # head_dim 32, 64 px: a 4x4 grid
    assert still_axes(chunked.scheme, (1, 4, 4)).keys() == {"w"}
    assert still_axes(chunked.scheme, (1, 4, 4))["w"] == pytest.approx(3 * 10000 ** (-20 / 32))  # pair 10, 3 steps
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "turns the decoder's columns (w axis) by at most 0.0095 rad" in warnings[0]
    assert "\n" not in warnings[0]
    caplog.clear()
    interleaved = Captioner(CaptionerConfig(position_scheme="mrope_interleaved"))
    assert not caplog.records and not still_axes(interleaved.scheme, (1, 4, 4))
    turns = interleaved.scheme.grid_turns((1, 4, 4))
    assert float(turns["w"][1].max()) == pytest.approx(3 * 10000 ** (-4 / 32))  # pair 2, three steps
    assert float(turns["w"][1].max()) > ALMOST_STILL
