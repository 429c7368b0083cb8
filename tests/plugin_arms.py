"""A user's own file of plug-ins, as README "Model" describes one: a decoder scheme, an encoder position encoding and
a benchmark, each one registered class defined outside the package. tests/test_plugins.py trains them from a YAML
that names them, loaded the way the command-line tools load such a file (``MMROPE_PLUGINS``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from mmrope.benchmarks import Benchmark, EvalSet, register_benchmark
from mmrope.model.decoder_schemes import PlacedMedia, register_scheme
from mmrope.model.pos_encodings import RotaryPosEncoding, register_encoder
from mmrope.model.rope import RotaryEmbedding


@register_scheme("plugin_grid")
class PlacedGrid(PlacedMedia):
    """M-RoPE's ids laid out through :class:`PlacedMedia`: token (t, i, j) of a block at s takes (s + t, s + i, s + j)
    and the text after it continues at s + max(T, H, W), with the pairs cycling t, h, w (Qwen3-VL)."""

    design = "M-RoPE's ids, placed by the scheme"
    allocation = "interleaved: pairs cycle t, h, w"
    interleaved = True

    def place(self, media, clip, second_per_grid_t):
        return media.thw.double(), media.grid.amax(1).double()


@register_encoder("plugin_rows")
class RowRoPE(RotaryPosEncoding):
    """1D RoPE on the patch row alone: the encoder can tell rows apart, never columns."""

    summary = "1D RoPE on the patch row"
    head_dim_multiple, head_dim_reason = 2, "channels rotate in pairs"

    def make_rope(self, config):
        return RotaryEmbedding(config.head_dim, config.rope_theta)

    def ids(self, positions, grid):
        return positions[:, 1]


SIDES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


@dataclass
class BarsConfig:
    """``data.options`` of the bars benchmark."""
    n_train: int = 64
    n_val: int = 8
    n_test: int = 8


class BarsDataset(Dataset):
    """A white bar along one side of a black square, drawn from (seed, split, index); the caption names the side."""

    def __init__(self, n: int, size: int, seed: int, split: str):
        self.n, self.size, self.seed, self.split = n, size, seed, split

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> dict:
        return {"side": random.Random(f"{self.seed}:{self.split}:{index}").choice(list(SIDES))}

    def draw(self, scene: dict, size: int) -> torch.Tensor:
        image, bar = torch.zeros(3, size, size), size // 4
        region = {"left": (slice(None), slice(0, bar)), "right": (slice(None), slice(size - bar, None)),
                  "top": (slice(0, bar), slice(None)), "bottom": (slice(size - bar, None), slice(None))}
        image[(slice(None), *region[scene["side"]])] = 1.0
        return image

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        caption = f"a bar {SIDES[scene['side']]}"
        return {"image": self.draw(scene, self.size), "caption": caption, "references": [caption], "scene": scene,
                "id": f"bars/{self.split}/{index}"}


@register_benchmark("plugin_bars")
class Bars(Benchmark):
    summary = "a bar along one side of a square: which side"
    config_class = BarsConfig
    generated = True
    columns = ("side",)

    @property
    def metric(self) -> str:
        return "side"

    def vocabulary(self) -> list[str]:
        return [f"a bar {where}" for where in SIDES.values()]

    def dataset(self, split, size=None, frames=None, transform=None, **loader):
        n = {"train": self.config.n_train, "val": self.config.n_val, "test": self.config.n_test}[split]
        return BarsDataset(n, size or self.image_size, self.seed, split)

    def eval_set(self, split="test", n=None, **options) -> EvalSet:
        data = BarsDataset(n or self.config.n_test, self.image_size, self.seed, split)
        scenes = [data.scene(i) for i in range(len(data))]
        return EvalSet(f"bars ({split})", lambda size, frames=None: [data.draw(s, size) for s in scenes],
                       [[f"a bar {SIDES[s['side']]}"] for s in scenes], scenes, accuracies=self.accuracies,
                       columns=self.columns)

    def accuracies(self, predictions, scenes):
        right = [SIDES[s["side"]].split()[-1] in p.split() for p, s in zip(predictions, scenes)]
        return {"side": sum(right) / max(len(right), 1)}
