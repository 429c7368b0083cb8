"""Model configuration: three dataclasses that map 1:1 to the YAML (``model.vision.dim: 128`` and so on).

``CaptionerConfig()`` is a small model that trains on a CPU. ``__post_init__`` checks every field's type and value
and rejects a bad one with one line that names the field, the value and what is allowed (configs also arrive as
JSON, where nothing else checks them). Derived fields are ``None`` until resolved where they cannot freeze: the
decoder's MLP width by a property (``TextConfig.mlp_hidden_dim``), the scheme-dependent ``mrope_section`` by
``CaptionerConfig``. Fixed string choices are ``Literal``; the plug-in choices (``vision.pos_encoding``,
``position_scheme``) are plain strings checked against the live registries when a config is made, so that a class
registered in a user's own file after this module was imported counts. Configs stay plain data for jsonargparse;
:meth:`CaptionerConfig.to_dict` / :meth:`CaptionerConfig.from_dict` give the config.json of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from mmrope.model.decoder_schemes import SCHEMES
from mmrope.model.pos_encodings import ENCODERS
from mmrope.model.rope import check_mrope_section
from mmrope.model.tokens import NUM_SPECIAL

# the name of a rotary apply (mmrope.model.rotary_apply.ROTARY_APPLIES); the apply itself is a RotaryApply there
RotaryApplyName = Literal["auto", "reference", "fused"]


def check_types(prefix: str, obj: Any) -> None:
    """Every field of the dataclass ``obj`` holds a value of its annotated type, or one line naming the field says
    what it holds and what was expected. Configs also come from JSON (an exported ``config.json``) and checkpoints,
    where nothing else checks them: 96.0 for an int, "64" for a number, Infinity for a float."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # checked by its own __post_init__
        value = getattr(obj, f.name)
        expected = _type_problem(value, hints[f.name])
        if expected:
            unknown = " is unknown" if get_origin(hints[f.name]) is Literal else ""
            raise ValueError(f"{prefix}{f.name}={value!r}{unknown}: expected {expected}")


def _type_problem(value: Any, hint: Any) -> str | None:
    """None if ``value`` fits ``hint``, else what was expected."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if None in problems else " or ".join(problems) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return None if value in args else f"one of {', '.join(repr(a) for a in args)}"
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return "a list"
        problems = [_type_problem(v, args[0]) for v in value] if args else []
        plural = {"a whole number": "whole numbers", "a finite number": "finite numbers", "a string": "strings"}
        return next((f"a list of {plural.get(p, p)}" for p in problems if p), None)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None


def _check_positive(prefix: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{prefix}.{name}={value} must be positive")


def _check_divisible(prefix: str, obj: Any, name: str, by: str) -> None:
    value, divisor = getattr(obj, name), getattr(obj, by)
    if value % divisor:
        raise ValueError(f"{prefix}.{name}={value} is not divisible by {prefix}.{by}={divisor}: "
                         f"expected {name} % {by} == 0")


@dataclass
class VisionConfig:
    """The ViT encoder. Images may have any size whose sides are multiples of patch_size * spatial_merge_size; a clip
    is a stack of such frames, cut into temporal patches of ``temporal_patch_size`` frames."""

    patch_size: int = 8
    image_size: int = 64  # training size: the default resize and the grid of the `learned` table
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    pos_encoding: str = "rope2d"  # the ablation switch: a name in ENCODERS (README "Model")
    # RoPE-ViT's image base (an 8x8 grid never needs Llama's slow frequencies), for rope2d and rope1d_flat alike;
    # rope2d_mixed learns its frequencies from the paper's init (theta 10)
    rope_theta: float = 100.0
    spatial_merge_size: int = 2  # 2: each 2x2 window of patches becomes one decoder token (Qwen2-VL)
    # frames per patch along time (Qwen2-VL: 2): clips are padded to a multiple by repeating their last frame, and
    # an image is a one-frame clip, so with 2 it is seen as two identical frames, as Qwen2-VL does
    temporal_patch_size: int = 1
    in_channels: int = 3

    def __post_init__(self):
        check_types("vision.", self)
        encoding = ENCODERS[self.pos_encoding]  # the live registry: an unknown name is one line listing the known
        _check_positive("vision", self, "patch_size", "image_size", "dim", "depth", "num_heads", "mlp_ratio",
                        "rope_theta", "temporal_patch_size", "in_channels")
        if self.spatial_merge_size not in (1, 2):
            raise ValueError(f"vision.spatial_merge_size={self.spatial_merge_size} is not supported: expected 1 or 2")
        if self.image_size % self.merged_patch_size:
            raise ValueError(f"vision.image_size={self.image_size} gives a patch grid that "
                             f"vision.spatial_merge_size={self.spatial_merge_size} does not divide: expected a "
                             f"multiple of patch_size * spatial_merge_size = {self.merged_patch_size}")
        _check_divisible("vision", self, "dim", "num_heads")
        encoding.check(self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def merged_patch_size(self) -> int:
        """The side in pixels of what one decoder token sees (a merged window of patches): image sides are
        multiples of it."""
        return self.patch_size * self.spatial_merge_size

    @property
    def patch_grid_side(self) -> int:
        """Encoder patches per side of a training image (``image_size`` square)."""
        return self.image_size // self.patch_size

    @property
    def merged_grid_side(self) -> int:
        """Decoder tokens per side of a training image: its grid of merged patches."""
        return self.image_size // self.merged_patch_size


# `--help` shows the names registered when this module is imported (jsonargparse reads the docstrings); the configs
# check the live registries, so a plug-in registered later counts as well
VisionConfig.__doc__ += f"""
    Attributes:
        pos_encoding: a name in ENCODERS (README "Model"): {', '.join(ENCODERS)}, or a plug-in's
"""


@dataclass
class TextConfig:
    """The Llama-style decoder. ``vocab_size`` is overwritten from the tokenizer by the training code."""

    vocab_size: int = 64
    dim: int = 128
    depth: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention: each K/V head serves num_heads / num_kv_heads query heads
    mlp_ratio: float = 4.0
    hidden_dim: int | None = None  # None: 2/3 * mlp_ratio * dim rounded up to 32, so SwiGLU costs a 4x GELU MLP
    rope_theta: float = 10000.0
    mrope_section: list[int] | None = None  # rotary pairs for (t, h, w); None: derived by CaptionerConfig
    norm_eps: float = 1e-5
    max_seq_len: int = 512  # longest joint sequence generate() will allocate a KV cache for

    def __post_init__(self):
        check_types("text.", self)
        _check_positive("text", self, "dim", "depth", "num_heads", "num_kv_heads", "mlp_ratio", "rope_theta",
                        "norm_eps", "max_seq_len")
        if self.vocab_size <= NUM_SPECIAL:
            raise ValueError(f"text.vocab_size={self.vocab_size} leaves no room for text: expected more than the "
                             f"{NUM_SPECIAL} reserved special ids")
        _check_divisible("text", self, "dim", "num_heads")
        _check_divisible("text", self, "num_heads", "num_kv_heads")
        if self.head_dim % 2:
            raise ValueError(f"text.head_dim={self.head_dim} (dim / num_heads) cannot be split for M-RoPE: expected "
                             "a multiple of 2 (channels rotate in pairs)")
        if self.hidden_dim is not None:
            _check_positive("text", self, "hidden_dim")
        if self.mrope_section is not None:
            self.mrope_section = check_mrope_section(self.mrope_section, self.head_dim // 2, "text.mrope_section")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        """``hidden_dim``, or derived from ``dim`` when it is None. A property rather than a value written in
        ``__post_init__``: the CLI builds its defaults from a ``TextConfig()``, whose derived value (for dim 128)
        would otherwise stick to every config that changes ``dim`` but not ``hidden_dim``."""
        return self.hidden_dim or 32 * math.ceil(2 / 3 * self.mlp_ratio * self.dim / 32)


@dataclass
class CaptionerConfig:
    """Encoder + decoder + the scheme that gives the joint sequence its positions."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # a name in SCHEMES (mmrope.model.decoder_schemes, README "Model"). Interleaved, not Qwen2-VL's chunked mrope:
    # with head_dim 32 chunked sections turn the w axis by under 0.01 rad across a small grid, and the decoder cannot
    # read columns (docs/ablation.md measures both)
    position_scheme: str = "mrope_interleaved"
    # Qwen2.5-VL's absolute time for clips: a temporal patch's t id is floor(seconds since the clip's start *
    # tokens_per_second), so a clip sampled at another frame rate keeps its ids on the same time scale.
    # None: t ids count temporal patches (Qwen2-VL).
    tokens_per_second: float | None = None
    # which rotary apply runs, chosen once at build (mmrope.model.rotary_apply): auto = the Triton kernel on CUDA
    # tensors and the readable reference elsewhere; fused = Triton on CUDA, torch.compile elsewhere; reference
    # everywhere. Speed only: every choice computes the same rotation, so a checkpoint does not fix it.
    rotary_apply: RotaryApplyName = field(default="auto", metadata={"speed_only": True})

    def __post_init__(self):
        check_types("", self)
        scheme = SCHEMES[self.position_scheme]  # the live registry: an unknown name is one line listing the known
        if self.tokens_per_second is not None and not self.tokens_per_second > 0:
            raise ValueError(f"tokens_per_second={self.tokens_per_second} must be positive, or null for Qwen2-VL's "
                             "temporal-patch ids")
        if self.text.mrope_section is None:  # derived here: the default depends on the scheme
            section = scheme.default_section(self.text.head_dim // 2)
            self.text = dataclasses.replace(self.text, mrope_section=section)
        scheme.check(self)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (derived fields included), the content of a checkpoint's config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionerConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, an unknown key raises."""
        return _from_dict(cls, d, prefix="")

    @classmethod
    def from_model_section(cls, model: dict[str, Any]) -> CaptionerConfig:
        """The config in a training YAML's ``model:`` section, which also holds the training module's own keys
        (``optim``, ``max_new_tokens``, ...): those are left out."""
        return cls.from_dict({k: v for k, v in model.items() if k in CONFIG_KEYS})


CaptionerConfig.__doc__ += f"""
    Attributes:
        position_scheme: a name in SCHEMES (README "Model"): {', '.join(SCHEMES)}, or a plug-in's
"""


# CaptionerConfig's fields, and those a checkpoint's weights depend on (all but the speed-only ones)
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(CaptionerConfig))
ARCHITECTURE_KEYS = tuple(f.name for f in dataclasses.fields(CaptionerConfig) if not f.metadata.get("speed_only"))


def as_config(cls: type, value: Any, prefix: str = "") -> Any:
    """A ``cls`` dataclass from an instance of it, a dict (checkpoint hyper-parameters, JSON) or None (its
    defaults); unknown keys are refused in one line naming them under ``prefix``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    return _from_dict(cls, value, prefix)


def _from_dict(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config key {prefix.rstrip('.') or '<root>'!r} holds {d!r}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix + key!r}: expected one of {', '.join(fields)}")
        nested = {"vision": VisionConfig, "text": TextConfig}.get(key) if cls is CaptionerConfig else None
        kwargs[key] = _from_dict(nested, value, f"{prefix}{key}.") if nested else value
    return cls(**kwargs)
