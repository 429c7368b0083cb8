"""``mmrope ablate``: train and score every arm of an ablation grid, then write its tables and plots.

    mmrope ablate --config configs/ablation/shapes.yaml --preset cpu --seeds 3 --out runs/ablation
    mmrope ablate --preset cpu --dry-run          the command of every run, nothing trained
    mmrope ablate --preset gpu --cluster ray --address HEAD:6379 --out /shared/runs/ablation-gpu

Progress goes to stderr (and to OUT/ablate.log, each line with its time); the results table to stdout. Heavy
imports stay inside ``run_ablate``.
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
                    "size, and write results.csv, results.md (means with 95% bootstrap intervals over seeds and "
                    "scenes, and the preset's stated comparisons) and PNG plots to OUT. "
                    "Finished runs are not trained again; an interrupted one resumes from its last checkpoint: "
                    "rerun the same command. What it says on stderr is also appended to OUT/ablate.log, each line "
                    "with its time.")
    p.add_argument("--config", type=Path, default=Path("configs/ablation/shapes.yaml"),
                   help="the grid file (default: configs/ablation/shapes.yaml)")
    p.add_argument("--preset", default="cpu", help="a preset of the grid file; shapes.yaml has cpu-relations (B: "
                                                   "relations under the blind decoder), cpu-places (A), cpu-sizes and "
                                                   "cpu-sizes-mixed (C: off the training size), "
                                                   "cpu-relations-crossed (encoders x decoders) and "
                                                   "cpu-relations-crossed-long (two of its comparisons at 3000 "
                                                   "steps), the -more presets, "
                                                   "the earlier cpu and cpu-schemes (places), and gpu, "
                                                   "gpu-relations (one GPU); docs/ablation.md says what each "
                                                   "measures (default: cpu)")
    p.add_argument("--seeds", type=int, help="seeds per arm, 0..N-1 (default: the grid file's)")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder (default: runs/ablation)")
    p.add_argument("--max-steps", type=int, help="training steps of every run (default: the preset's max_steps)")
    p.add_argument("--arms", help="comma-separated arms to run instead of the preset's, e.g. "
                                  "rope2d-mrope,rope1d_flat-mrope (any <encoder>-<scheme> of the grid)")
    p.add_argument("--device", help="device for scoring: cpu, cuda, cuda:N or mps (default: the fastest there is); "
                                    "training uses the base config's trainer settings")
    p.add_argument("--reuse", type=Path, metavar="DIR",
                   help="the --out of another preset: each run of this one that --out lacks and DIR holds trained "
                        "to the same budget with the same settings (arm.json) is copied from DIR rather than "
                        "trained again (the crossed block's blind column is cpu-relations' runs); DIR is only read")
    p.add_argument("--dry-run", action="store_true", help="print the training command of every run and stop")
    cluster = p.add_argument_group("on a Ray cluster", "every run (stacked engine: every arm) as a Ray task; --out "
                                   "must be on storage every node sees (pip install -e \".[cluster]\")")
    cluster.add_argument("--cluster", choices=["ray"], help="run the grid's tasks on a Ray cluster")
    cluster.add_argument("--address", help="the cluster: auto (one `ray start` began on this machine, or "
                                           "RAY_ADDRESS) or HOST:PORT of its head (default: auto)")
    cluster.add_argument("--cpus-per-task", type=float, help="CPUs each task asks for (default: 1)")
    cluster.add_argument("--gpus-per-task", type=float, help="GPUs each task asks for (default: the base config's "
                                                             "trainer.devices when it trains on a GPU, divided by "
                                                             "the preset's parallel; else 0)")
    cluster.add_argument("--max-retries", type=int, default=3, help="times a task whose worker or node died is run "
                                                                    "again, resuming from last.ckpt (default: 3); a "
                                                                    "run that fails is reported, not retried")
    p.set_defaults(func=run_ablate)


def run_ablate(args: argparse.Namespace) -> int:
    import shlex

    from mmrope.ablation.plan import arm_name, load_plan
    from mmrope.ablation.progress import progress_kept_in
    from mmrope.ablation.reuse import check_source, reuse_runs
    from mmrope.ablation.runner import stacked_command, train_command

    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    cluster = ray_cluster(args)
    plan = load_plan(args.config, args.preset, seeds=args.seeds, max_steps=args.max_steps, arms=arms)
    runs = len(plan.arms) * len(plan.seeds)
    header = (f"{args.preset}: {plural(len(plan.arms), 'arm')} x {plural(len(plan.seeds), 'seed')} = "
              f"{plural(runs, 'run')} of {plan.max_steps} steps "
              f"on {plan.base}; scored on {', '.join(plan.splits)} at {', '.join(map(str, plan.sizes))} px"
              + (f" x {', '.join(map(str, plan.frames))} frames ({plan.clip_mode})" if plan.frames else "")
              + f", {plan.n} {'clips' if plan.frames else 'scenes'} each")
    if args.dry_run:
        print(header, file=sys.stderr)
        if cluster is not None:
            from mmrope.ablation.cluster import task_resources

            asks = task_resources(plan, cluster)
            print(f"each {'arm' if plan.engine == 'stacked' else 'run'} a Ray task asking for {asks['num_cpus']:g} "
                  f"CPU and {asks['num_gpus']:g} GPU, running:", file=sys.stderr)
        for encoder, scheme in plan.arms:
            run_dirs = [(seed, args.out / arm_name(encoder, scheme) / f"seed{seed}") for seed in plan.seeds]
            if plan.engine == "stacked":  # an arm's seeds in one process
                print(shlex.join(stacked_command(plan, encoder, scheme, run_dirs)))
                continue
            for seed, run_dir in run_dirs:
                print(shlex.join(train_command(plan, encoder, scheme, seed, run_dir)))
        return 0
    if args.reuse is not None:
        check_source(args.reuse, args.out)
    write_plan(plan, args.out)
    with progress_kept_in(args.out):
        print(header, file=sys.stderr)
        if args.reuse is not None:
            reuse_runs(plan, args.out, args.reuse, say=lambda line: print(line, file=sys.stderr))
        return _run(plan, args, cluster, runs)


def _run(plan, args: argparse.Namespace, cluster, runs: int) -> int:
    """Train what is missing, score, write the tables; progress on stderr (and in OUT/ablate.log)."""
    from mmrope.ablation.report import results_text, write_results
    from mmrope.ablation.runner import RunInterrupted, run_ablation

    try:
        rows, failures = run_ablation(plan, args.out, args.device, cluster)
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


def ray_cluster(args: argparse.Namespace):
    """The ``--cluster`` options as a :class:`~mmrope.ablation.cluster.RayCluster`, or None to run here."""
    from mmrope.ablation.cluster import RayCluster, import_ray

    given = [flag for flag, value in (("--address", args.address), ("--cpus-per-task", args.cpus_per_task),
                                      ("--gpus-per-task", args.gpus_per_task)) if value is not None]
    if args.cluster is None:
        if given:
            raise ValueError(f"{given[0]} is an option of --cluster ray")
        return None
    if args.max_retries < 0:
        raise ValueError(f"--max-retries={args.max_retries}: expected a whole number >= 0")
    if not args.dry_run:
        import_ray()  # one line saying how to install it, before anything else is done
    return RayCluster(address=args.address or "auto", cpus=args.cpus_per_task, gpus=args.gpus_per_task,
                      retries=args.max_retries)


def write_plan(plan, out: Path) -> None:
    """``OUT/plan.json``: which grid and preset (and command-line seeds, steps and arms) the folder holds, so that
    ``mmrope serve --ablation OUT`` can read it; the last preset run into a folder is the one results.md shows."""
    import json
    import uuid

    from mmrope.ablation.plan import arm_name

    out.mkdir(parents=True, exist_ok=True)
    plan_json = {"grid": str(Path(plan.grid).resolve()), "preset": plan.preset, "seeds": len(plan.seeds),
                 "max_steps": plan.max_steps, "arms": [arm_name(e, s) for e, s in plan.arms]}
    tmp = out / f".plan.json.{uuid.uuid4().hex}.tmp"  # commands sharing OUT (a SLURM array's) each their own
    tmp.write_text(json.dumps(plan_json) + "\n", encoding="utf-8")
    tmp.replace(out / "plan.json")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
