"""``mmrope train stacked``: the stacked engine's command line.

    mmrope train stacked --run 0=runs/a/seed0 --run 1=runs/a/seed1 [options] -- fit --config CONFIG [overrides]

Everything after ``--`` is a ``mmrope train fit`` command line; each ``--run SEED=DIR`` adds its seed and folder.
Every message starts with ``mmrope train stacked:`` (the ablation's runner looks for ``... seed <k>: error``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrope.errors import one_line
from mmrope.train import PROG as TRAIN_PROG

PROG = f"{TRAIN_PROG} stacked"
USAGE = f"{PROG} --run SEED=DIR [--run SEED=DIR ...] [options] -- fit --config CONFIG [mmrope train fit arguments]"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from mmrope.train.stacked.data import RENDERERS
    from mmrope.train.stacked.step import COMPILE_MODES, STACKS

    if "--" not in argv:
        raise ValueError(f"usage: {USAGE}")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog=PROG, usage=USAGE,
                                description="train several seeds of one configuration as one set of batched weights")
    p.add_argument("--run", action="append", required=True, metavar="SEED=DIR",
                   help="a run: its seed (seed_everything and data.seed) and its folder (trainer.default_root_dir)")
    p.add_argument("--stack", default="auto", choices=STACKS)
    p.add_argument("--renderer", default="auto", choices=RENDERERS + ("auto",))
    p.add_argument("--compile", default="none", choices=COMPILE_MODES)
    p.add_argument("--save-steps", default="", help="comma-separated steps to keep checkpoints/step<N>.ckpt at")
    p.add_argument("--resume", action="store_true", help="continue every run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in folders that hold a run: their checkpoints are deleted")
    return p.parse_args(argv[:split]), argv[split + 1:]


def main(argv: list[str] | None = None) -> int:
    """Train the runs -> 0, 1 when a run failed or the arguments are wrong, 128 + a signal after a clean stop."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def say(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    try:
        from mmrope.train.stacked.engine import EngineOptions, StackedTrainer

        args, train_args = parse_args(argv)
        runs = []
        for spec in args.run:
            seed, sep, root = spec.partition("=")
            if not sep or not seed.strip().lstrip("-").isdigit() or not root:
                raise ValueError(f"--run {spec!r}: expected SEED=DIR, such as 0=runs/a/seed0")
            runs.append((int(seed), Path(root)))
        save_steps = [int(s) for s in args.save_steps.split(",") if s.strip()]
        options = EngineOptions(args.stack, args.renderer, args.compile, save_steps)
        trainer = StackedTrainer(runs, train_args, options, resume=args.resume, overwrite=args.overwrite)
        return trainer.train(say)
    except (ValueError, OSError) as err:
        say(f"error: {one_line(err)}")
        return 1
