"""A worker of parallel ablations (:mod:`mmrope.ablation.parallel`): trains and scores one run, or one arm's seeds
together with the stacked engine. A private entry, started by ``mmrope ablate`` as ``python -m mmrope.ablation.worker``;
its output goes to the run's (or arm's) ``worker.log``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrope.ablation.plan import load_plan
from mmrope.ablation.runner import RunFailed, RunInterrupted, run_arm, run_arm_stacked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmrope ablate (worker)", description="train and score one run, or one arm's "
                                "seeds with the stacked engine: a worker of parallel ablations")
    p.add_argument("--grid", type=Path, required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seeds", type=int, required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, help="one run of the arm (Lightning's engine); without it, all its seeds")
    args = p.parse_args(argv)
    plan = load_plan(args.grid, args.preset, seeds=args.seeds, max_steps=args.max_steps, arms=[args.arm])
    encoder, scheme = plan.arms[0]

    def say(message: str) -> None:
        print(f"{args.arm}: {message}", file=sys.stderr, flush=True)

    try:
        if args.seed is not None:
            try:
                run_arm(plan, encoder, scheme, args.seed, args.out, args.device, say)
            except RunFailed as e:
                say(f"failed: {e}")
                return 1
            return 0
        _, failures = run_arm_stacked(plan, encoder, scheme, args.out, args.device, say)
    except RunInterrupted as e:
        say(str(e))
        return 130
    for line in failures:
        say(f"failed: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
