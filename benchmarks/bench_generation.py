"""Greedy captioning with the KV cache against recomputing the whole sequence at every step.

    pip install -e ".[bench]" && python benchmarks/bench_generation.py [--batch 8 --new-tokens 64]

The model is ``configs/shapes_small.yaml``'s, randomly initialised (timing does not depend on the weights). So that
no row stops early, EOS is banned for the benchmark: ``mmrope.model.generation.suppress_special_tokens`` is wrapped to
also put -inf on EOS, and every caption is checked to have exactly ``--new-tokens`` ids. Both paths first give
the same tokens (the cached path must match the reference token for token), then are timed side by side.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import small_config
from common import markdown_table, time_side_by_side

import mmrope.model.generation as generation
from mmrope.model.captioner import Captioner
from mmrope.model.tokens import EOS_ID

_suppress = generation.suppress_special_tokens


def suppress_special_tokens_and_eos(logits: torch.Tensor) -> torch.Tensor:
    return _suppress(logits).index_fill(-1, torch.tensor([EOS_ID], device=logits.device), -math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generation.suppress_special_tokens = suppress_special_tokens_and_eos

    torch.manual_seed(0)
    config = small_config("rope2d", "mrope", vocab_size=64)
    model = Captioner(config).eval()
    images = torch.rand(args.batch, 3, config.vision.image_size, config.vision.image_size)
    outputs = {cache: model.generate(images, max_new_tokens=args.new_tokens, use_cache=cache)
               for cache in (True, False)}
    assert all(len(ids) == args.new_tokens for out in outputs.values() for ids in out), "a caption stopped early"
    assert all(torch.equal(a, b) for a, b in zip(*outputs.values())), "cached and recomputed tokens differ"

    times = time_side_by_side({
        "KV cache": lambda: model.generate(images, max_new_tokens=args.new_tokens, use_cache=True),
        "recompute": lambda: model.generate(images, max_new_tokens=args.new_tokens, use_cache=False),
    }, rounds=args.rounds, repeats=1)
    tokens = args.batch * args.new_tokens
    print(f"greedy generation, batch {args.batch} images of {config.vision.image_size} px, {args.new_tokens} new "
          f"tokens each (EOS banned), shapes_small model, float32, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    print(markdown_table(["decoding", "median s", "new tokens/s", "speed-up vs recompute"],
                         [[name, f"{t:.3f}", f"{tokens / t:.0f}", f"{times['recompute'] / t:.1f}x"]
                          for name, t in times.items()]))


if __name__ == "__main__":
    main()
