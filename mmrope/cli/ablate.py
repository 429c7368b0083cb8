"""``mmrope ablate``: train and score every arm of an ablation grid, then write its tables and plots.

    mmrope ablate --config configs/ablation/shapes.yaml --preset cpu --seeds 3 --out runs/ablation
    mmrope ablate --preset cpu --dry-run          the command of every run, nothing trained

Progress goes to stderr; the results table to stdout. Heavy imports stay inside ``run_ablate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="train and score the ablation grid; write results.csv, results.md and plots",
        description="Train every arm (encoder pos_encoding x decoder position_scheme) and seed of a preset for the "
                    "same number of steps, score each last.ckpt on every split at every factor of the training "
                    "size, and write results.csv, results.md (mean ± 95% CI across seeds) and PNG plots to OUT. "
                    "Finished runs are not trained again; an interrupted one resumes from its last checkpoint: "
                    "rerun the same command.")
    p.add_argument("--config", type=Path, default=Path("configs/ablation/shapes.yaml"),
                   help="the grid file (default: configs/ablation/shapes.yaml)")
    p.add_argument("--preset", default="cpu", help="a preset of the grid file; shapes.yaml has cpu (places: encoders "
                                                   "and the first three schemes, 2 CPU cores), cpu-schemes (places: "
                                                   "every decoder scheme), cpu-relation (relations, 2 cores) and gpu "
                                                   "(relations, one GPU) (default: cpu)")
    p.add_argument("--seeds", type=int, help="seeds per arm, 0..N-1 (default: the grid file's)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder (default: runs/ablation)")
    p.add_argument("--max-steps", type=int, help="training steps of every run (default: the preset's max_steps)")
    p.add_argument("--arms", help="comma-separated arms to run instead of the preset's, e.g. "
                                  "rope2d-mrope,rope1d_flat-mrope (any <encoder>-<scheme> of the grid)")
    p.add_argument("--device", help="device for scoring: cpu, cuda, cuda:N or mps (default: the fastest there is); "
                                    "training uses the base config's trainer settings")
    p.add_argument("--dry-run", action="store_true", help="print the training command of every run and stop")
    p.set_defaults(func=run_ablate)


def run_ablate(args: argparse.Namespace) -> int:
    import shlex

    from mmrope.ablation.plan import arm_name, load_plan
    from mmrope.ablation.report import results_text, write_results
    from mmrope.ablation.runner import RunInterrupted, run_ablation, stacked_command, train_command

    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    plan = load_plan(args.config, args.preset, seeds=args.seeds, max_steps=args.max_steps, arms=arms)
    runs = len(plan.arms) * len(plan.seeds)
    print(f"{args.preset}: {plural(len(plan.arms), 'arm')} x {plural(len(plan.seeds), 'seed')} = "
          f"{plural(runs, 'run')} of {plan.max_steps} steps "
          f"on {plan.base}; scored on {', '.join(plan.splits)} at {', '.join(map(str, plan.sizes))} px"
          + (f" x {', '.join(map(str, plan.frames))} frames ({plan.clip_mode})" if plan.frames else "")
          + f", {plan.n} {'clips' if plan.frames else 'scenes'} each", file=sys.stderr)
    if args.dry_run:
        for encoder, scheme in plan.arms:
            run_dirs = [(seed, args.out / arm_name(encoder, scheme) / f"seed{seed}") for seed in plan.seeds]
            if plan.engine == "stacked":  # an arm's seeds in one process
                print(shlex.join(stacked_command(plan, encoder, scheme, run_dirs)))
                continue
            for seed, run_dir in run_dirs:
                print(shlex.join(train_command(plan, encoder, scheme, seed, run_dir)))
        return 0
    write_plan(plan, args.out)
    try:
        rows, failures = run_ablation(plan, args.out, args.device)
    except RunInterrupted as e:
        print(f"mmrope ablate: {e}", file=sys.stderr)
        return 130
    if rows:
        paths = write_results(rows, plan, args.out)
        print(results_text(plan, args.out))
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    if failures:
        print(f"mmrope ablate: {len(failures)} of {runs} runs failed (rerun to retry them):", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def write_plan(plan, out: Path) -> None:
    """``OUT/plan.json``: which grid and preset (and command-line seeds, steps and arms) the folder holds, so that
    ``mmrope serve --ablation OUT`` can read it; the last preset run into a folder is the one results.md shows."""
    import json

    from mmrope.ablation.plan import arm_name

    out.mkdir(parents=True, exist_ok=True)
    plan_json = {"grid": str(Path(plan.grid).resolve()), "preset": plan.preset, "seeds": len(plan.seeds),
                 "max_steps": plan.max_steps, "arms": [arm_name(e, s) for e, s in plan.arms]}
    tmp = out / ".plan.json.tmp"
    tmp.write_text(json.dumps(plan_json) + "\n", encoding="utf-8")
    tmp.replace(out / "plan.json")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
