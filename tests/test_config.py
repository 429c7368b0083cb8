"""Config: defaults are valid, derived fields are derived, bad values fail with one line naming the field."""

import dataclasses

import pytest

from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.rope import default_mrope_section


def test_defaults_are_valid_and_derive_fields():
    config = CaptionerConfig()
    assert config.vision.head_dim == 32 and config.text.head_dim == 32
    assert config.text.mlp_hidden_dim % 32 == 0 and config.text.mlp_hidden_dim >= 2 / 3 * 4 * config.text.dim
    assert config.position_scheme == "mrope_interleaved"  # chunked leaves head_dim 32's w axis nearly still
    assert config.text.mrope_section == default_mrope_section(16, interleaved=True) == [6, 5, 5]
    assert CaptionerConfig(position_scheme="mrope").text.mrope_section == default_mrope_section(16) == [4, 6, 6]


def test_mrope_section_default_follows_the_scheme():
    interleaved = CaptionerConfig(position_scheme="mrope_interleaved")
    assert interleaved.text.mrope_section == default_mrope_section(16, interleaved=True)
    shared = TextConfig()  # deriving must not write into a TextConfig another config shares
    CaptionerConfig(text=shared, position_scheme="mrope_interleaved")
    assert shared.mrope_section is None


def test_the_model_keys_are_the_dataclass_fields_and_the_training_module_takes_them_first():
    import inspect

    from mmrope.model.config import ARCHITECTURE_KEYS, CONFIG_KEYS
    from mmrope.train.module import CaptionModule

    fields = dataclasses.fields(CaptionerConfig)
    assert CONFIG_KEYS == tuple(f.name for f in fields)
    assert set(CONFIG_KEYS) - set(ARCHITECTURE_KEYS) == {"rotary_apply"}  # speed only: a checkpoint does not fix it
    parameters = list(inspect.signature(CaptionModule).parameters.values())[:len(fields)]
    assert [p.name for p in parameters] == list(CONFIG_KEYS)  # the YAML's model.vision, model.text, ...
    defaults = CaptionerConfig(position_scheme=parameters[2].default)
    assert all(p.default == getattr(defaults, p.name) for p in parameters if p.name != "text")  # text: derived later
    section = {"vision": {"depth": 2}, "position_scheme": "flat", "optim": {"lr": 1.0}, "max_new_tokens": 3}
    assert CaptionerConfig.from_model_section(section) == CaptionerConfig(VisionConfig(depth=2), position_scheme="flat")


def test_the_config_names_every_rotary_apply():
    from typing import get_args

    from mmrope.model.config import RotaryApplyName
    from mmrope.model.rotary_apply import ROTARY_APPLIES

    assert get_args(RotaryApplyName) == tuple(ROTARY_APPLIES)


def test_vision_grid_properties():
    v = VisionConfig(patch_size=8, image_size=64, spatial_merge_size=2)
    assert (v.merged_patch_size, v.patch_grid_side, v.merged_grid_side) == (16, 8, 4)


def test_dict_round_trip():
    config = CaptionerConfig(VisionConfig(pos_encoding="learned", depth=2), TextConfig(vocab_size=100),
                             position_scheme="flat")
    d = config.to_dict()
    assert d["vision"]["pos_encoding"] == "learned" and d["text"]["mrope_section"] == [4, 6, 6]
    assert CaptionerConfig.from_dict(d) == config
    assert CaptionerConfig.from_dict({"vision": {"dim": 64}}).vision.dim == 64  # missing keys take defaults


@pytest.mark.parametrize("d, key", [({"vison": {}}, "'vison'"), ({"vision": {"patchsize": 4}}, "'vision.patchsize'"),
                                    ({"text": {"heads": 2}}, "'text.heads'")])
def test_unknown_key_names_its_path(d, key):
    with pytest.raises(ValueError, match=key) as err:
        CaptionerConfig.from_dict(d)
    assert "expected one of" in str(err.value)


BAD = [
    (lambda: VisionConfig(dim=130), "vision.dim=130 is not divisible by vision.num_heads=4"),
    (lambda: VisionConfig(dim=120), "vision.head_dim=30"),  # 30 channels cannot split into row and column pairs
    (lambda: VisionConfig(dim=120, pos_encoding="rope2d_mixed"), "vision.head_dim=30"),
    (lambda: VisionConfig(pos_encoding="rope4d"), "vision.pos_encoding='rope4d'"),
    (lambda: VisionConfig(spatial_merge_size=3), "vision.spatial_merge_size=3"),
    (lambda: VisionConfig(image_size=72), "vision.image_size=72"),  # a 9x9 grid has no 2x2 windows
    (lambda: VisionConfig(image_size=60), "vision.image_size=60"),
    (lambda: VisionConfig(depth=0), "vision.depth=0"),
    (lambda: TextConfig(dim=130), "text.dim=130 is not divisible by text.num_heads=4"),
    (lambda: TextConfig(num_kv_heads=3), "text.num_heads=4 is not divisible by text.num_kv_heads=3"),
    (lambda: TextConfig(dim=12, num_heads=4), "text.head_dim=3"),
    (lambda: TextConfig(mrope_section=[4, 4, 4]), r"text.mrope_section=\[4, 4, 4\]"),
    (lambda: TextConfig(vocab_size=5), "text.vocab_size=5"),
    (lambda: CaptionerConfig(position_scheme="rope"), "position_scheme='rope'"),
    (lambda: CaptionerConfig(text=TextConfig(mrope_section=[4, 6, 6]), position_scheme="mrope_interleaved"),
     r"text.mrope_section=\[4, 6, 6\]"),
]


@pytest.mark.parametrize("build, message", BAD, ids=[m.split("=")[0].split()[0] + str(i) for i, (_, m) in
                                                     enumerate(BAD)])
def test_bad_config_raises_one_line(build, message):
    with pytest.raises(ValueError, match=message) as err:
        build()
    assert "\n" not in str(err.value) and ("expected" in str(err.value) or "must" in str(err.value))


def test_jsonargparse_reads_the_dataclasses():
    """LightningCLI builds these from YAML; Literal choices are checked while parsing, the registries' names when the
    config is made (the live registry: a plug-in registered after import counts)."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--config", type=CaptionerConfig)
    yaml = "config:\n  vision: {pos_encoding: rope1d_flat, dim: 64}\n  position_scheme: flat\n"
    config = parser.instantiate_classes(parser.parse_string(yaml)).config
    assert config == CaptionerConfig(VisionConfig(pos_encoding="rope1d_flat", dim=64), position_scheme="flat")
    assert dataclasses.is_dataclass(config)
    with pytest.raises(SystemExit):
        parser.parse_string("config:\n  rotary_apply: triton\n")
    bad = parser.parse_string("config:\n  vision: {pos_encoding: rope4d}\n")
    with pytest.raises(ValueError, match="vision.pos_encoding='rope4d' is unknown: expected one of 'none', 'rope2d'"):
        parser.instantiate_classes(bad)


def test_config_files_whose_aliases_explode_are_refused(tmp_path):
    """yaml.safe_load keeps an alias as a reference to its anchor; jsonargparse expanded 413 bytes of nested
    anchors (a "billion laughs") for 54 s and 3.5 GB. Files are read once, first, with a bound on the expansion."""
    from mmrope.train.config_files import MAX_YAML_VALUES, read_yaml

    shared = tmp_path / "shared.yaml"
    shared.write_text("size: &size {dim: 64, depth: 2}\nmodel: {vision: *size, text: *size}\n")
    assert read_yaml(shared, "shared.yaml")["model"] == {"vision": {"dim": 64, "depth": 2},
                                                         "text": {"dim": 64, "depth": 2}}
    rows = ["a: &a [" + ", ".join(["lol"] * 10) + "]"]
    rows += [f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abc", "bcd")]  # d: 10^4 lols and more
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError) as err:
        read_yaml(laughs, "laughs.yaml")
    assert str(err.value) == f"laughs.yaml: more than {MAX_YAML_VALUES} values once its aliases are expanded " \
                             "(nested anchors?): refused"
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("a: &a [1, *a]\n")
    with pytest.raises(ValueError, match="^cyclic.yaml: nested too deeply, or an alias inside its own anchor$"):
        read_yaml(cyclic, "cyclic.yaml")
