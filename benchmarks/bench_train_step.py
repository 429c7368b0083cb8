"""Training step of the ``shapes_small`` model: what 2D RoPE and M-RoPE cost over 1D, and eager against compiled.

    pip install -e ".[bench]" && python benchmarks/bench_train_step.py [--batch 64] [--no-compile]

One step is forward, loss, backward and an AdamW step on a batch laid out as the shapes data is (64 px images,
``[vision_start, image x 16, vision_end, caption, eos]`` right-padded, captions of 8 to 14 words; the token ids are
random, which changes nothing in the cost). The model is ``configs/shapes_small.yaml``'s, with the encoder
encoding and the decoder scheme varied; the 1D baseline is ``rope1d_flat`` + ``flat``. Each configuration is built
from the same seed, its steps timed side by side with the others in interleaved rounds.

Three modes: eager (the default path), eager with ``rotary_apply: fused`` (only the rotary apply compiled), and
the whole model under ``torch.compile`` (``model.compile: true``), which also fuses the rotary maths. Each step
works out positions and mask first (``Captioner.layout``), as the training module does on the host, so the
compiled forward is one graph; ``--compare-layout`` adds the compiled model left to do that inside its forward.
Compile time is left out (one warm-up step before the rounds); it is printed separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, time_side_by_side

from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.tokens import EOS_ID, IGNORE_INDEX, NUM_SPECIAL, PAD_ID, vision_block

ROOT = Path(__file__).resolve().parents[1]
LAYOUT_INSIDE = "compiled, layout in forward"
CONFIGS = {  # name -> (vision.pos_encoding, position_scheme)
    "1d": ("rope1d_flat", "flat"),  # the baseline every other row is compared with
    "2d": ("rope2d", "flat"),
    "mrope": ("rope1d_flat", "mrope"),
    "2d+mrope": ("rope2d", "mrope"),  # the shapes_small recipe
}


def small_config(pos_encoding: str, scheme: str, vocab_size: int) -> CaptionerConfig:
    model = yaml.safe_load((ROOT / "configs/shapes_small.yaml").read_text())["model"]
    vision = VisionConfig(**{**model["vision"], "pos_encoding": pos_encoding})
    return CaptionerConfig(vision=vision, text=TextConfig(**model["text"], vocab_size=vocab_size),
                           position_scheme=scheme)


def make_batch(config: CaptionerConfig, batch: int, seed: int = 0) -> dict:
    """A shapes-like batch: images, input_ids, attention_mask, labels (as CaptionCollator lays them out)."""
    rng = random.Random(seed)
    v = config.vision
    tokens = (v.image_size // (v.patch_size * v.spatial_merge_size)) ** 2
    rows = []
    for _ in range(batch):
        caption = [rng.randrange(NUM_SPECIAL, config.text.vocab_size) for _ in range(rng.randint(8, 14))] + [EOS_ID]
        rows.append((vision_block(tokens), caption))
    n = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((batch, n), PAD_ID)
    labels = torch.full((batch, n), IGNORE_INDEX)
    for i, (prompt, caption) in enumerate(rows):
        input_ids[i, :len(prompt) + len(caption)] = torch.tensor(prompt + caption)
        labels[i, len(prompt):len(prompt) + len(caption)] = torch.tensor(caption)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, v.image_size, v.image_size, generator=g)
    return {"images": images, "input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long(),
            "labels": labels}


def batch_grid(config: CaptionerConfig, batch: int) -> torch.Tensor:
    """grid_thw (batch, 3) of make_batch's images, as the collator reports it."""
    side = config.vision.image_size // config.vision.patch_size
    return torch.tensor([[1, side, side]] * batch)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, layout_first: bool = True):
    """One step as the training module runs it: positions and mask worked out first (``Captioner.layout``, outside
    a compiled graph), then forward, backward and AdamW. ``layout_first=False`` leaves that to the forward."""
    grid = batch_grid(model.config, len(batch["images"]))

    def step():
        layout = model.layout(batch["input_ids"], grid, batch["attention_mask"]) if layout_first else None
        loss = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                     layout=layout).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=64, help="shapes' word vocabulary is about this size")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode (saves minutes)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--compare-layout", action="store_true",
                        help=f"add the mode '{LAYOUT_INSIDE}': the compiled model working out positions and mask "
                        "inside its forward (graph breaks), against the training module's way (layout first)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # every configuration is a new model through the same code: past dynamo's default limit of 8 recompiles a
    # frame, the later ones would quietly run eager
    torch._dynamo.config.recompile_limit = 64
    modes = ["eager", "eager, fast RoPE"] + ([] if args.no_compile else ["compiled model"])
    if args.compare_layout and not args.no_compile:
        modes.append(LAYOUT_INSIDE)
    fns, compile_s = {}, {}
    batch = None
    for name in args.configs:
        pos_encoding, scheme = CONFIGS[name]
        config = small_config(pos_encoding, scheme, args.vocab_size)
        batch = batch or make_batch(config, args.batch)
        for mode in modes:
            torch.manual_seed(0)
            rotary = "fused" if mode == "eager, fast RoPE" else "reference"  # chosen once, at build
            model = Captioner(dataclasses.replace(config, rotary_apply=rotary))
            if mode in ("compiled model", LAYOUT_INSIDE):
                model.compile()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            fns[name, mode] = train_step(model, optimizer, batch, layout_first=mode != LAYOUT_INSIDE)
            start = time.perf_counter()
            fns[name, mode]()  # compile here, outside the timed rounds
            compile_s[name, mode] = time.perf_counter() - start
    times = time_side_by_side(fns, rounds=args.rounds, repeats=args.repeats)

    tokens = int(batch["attention_mask"].sum())
    print(f"shapes_small training step (forward, backward, AdamW), batch {args.batch} images of 64 px, {tokens} "
          f"joint-sequence tokens, float32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    first = args.configs[0]
    rows = []
    for (name, mode), t in times.items():
        vs_first = t / times[first, mode] - 1
        rows.append([f"{name} ({' + '.join(CONFIGS[name])})", mode, f"{t * 1e3:.1f}", f"{vs_first * 100:+.1f}%",
                     f"{times[first, 'eager'] / t:.2f}x", f"{args.batch / t:.0f}", f"{tokens / t:.0f}",
                     f"{compile_s[name, mode]:.1f}"])
    print(markdown_table(["positions", "mode", "median ms / step", f"vs {first}, same mode",
                          f"speed-up vs eager {first}", "images/s", "tokens/s", "first step s"], rows))

if __name__ == "__main__":
    main()
