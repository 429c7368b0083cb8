"""Several runs of a grid at once (``parallel: N``): one worker process per run, or per arm with the stacked engine.

A worker is ``python -m mmrope.ablation.parallel`` for one run (or one arm): it trains it
(:func:`mmrope.ablation.runner.run_arm`, or :func:`~mmrope.ablation.runner.run_arm_stacked` for an arm's seeds
together) and scores it, writing the same folders, signatures and markers as a sequential run. The runner then makes
its usual pass, which finds every finished run done and collects its rows. On a CPU each worker gets an equal share
of the cores (``OMP_NUM_THREADS``): small models train faster as N one-thread runs than as one N-thread run.

Why processes rather than CUDA streams in one process: arms are different programs (each encoder and scheme is its
own graph), so each pays its own compile anyway, and separate processes compile them in parallel on the host's cores
instead of one after another under one interpreter; a crash, NaN or out-of-memory of one arm cannot take the others
down; each arm's host-side work (scene sampling, collation, scoring with Pillow) runs on its own core. The price is
that kernels of different processes time-share the GPU rather than overlap (no MPS here), which stacking the seeds
of each arm, several times larger kernels, is there to soften. Ctrl-C or SIGTERM is passed on to every worker, which
saves its checkpoints; the same command resumes them.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mmrope.ablation.plan import Plan, arm_name, load_plan


def worker_command(plan: Plan, encoder: str, scheme: str, out: Path, device: str | None,
                   seed: int | None = None) -> list[str]:
    return [sys.executable, "-m", "mmrope.ablation.parallel", "--grid", str(plan.grid), "--preset", plan.preset,
            "--out", str(out), "--arm", arm_name(encoder, scheme), "--seeds", str(len(plan.seeds)),
            "--max-steps", str(plan.max_steps), *(["--device", device] if device else []),
            *(["--seed", str(seed)] if seed is not None else [])]


def run_runs_in_parallel(plan: Plan, out: Path, device: str | None = None) -> None:
    """Train and score every run of ``plan`` that is not done, ``plan.parallel`` at a time, each worker with an equal
    share of the CPU's threads. Failures are left for the runner's pass to report."""
    import os

    from mmrope.ablation.runner import RunInterrupted, is_done

    todo = [(e, s, k) for e, s in plan.arms for k in plan.seeds if not is_done(plan, e, s, k, out)]
    jobs = [(f"{arm_name(e, s)} seed {k}", worker_command(plan, e, s, out, device, k),
             out / arm_name(e, s) / f"seed{k}" / "worker.log") for e, s, k in todo]
    threads = str(max(1, (os.cpu_count() or 1) // plan.parallel))
    codes = run_commands(jobs, plan.parallel, lambda m: print(f"[parallel] {m}", file=sys.stderr, flush=True),
                         env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    stopped = [name for name, code in codes.items() if code >= 128]
    if stopped:
        raise RunInterrupted(f"runs {', '.join(stopped)} stopped; their checkpoints are saved: run the same command "
                             "again to resume")


def run_arms_in_parallel(plan: Plan, out: Path, device: str | None = None) -> None:
    """Train and score every arm of ``plan`` that has runs left, ``plan.parallel`` arms at a time. Failures are
    left for the runner's pass to report; a Ctrl-C or SIGTERM stops every worker cleanly and raises
    :class:`mmrope.ablation.runner.RunInterrupted`."""
    from mmrope.ablation.runner import RunInterrupted, is_done

    todo = [(e, s) for e, s in plan.arms if not all(is_done(plan, e, s, k, out) for k in plan.seeds)]
    jobs = [(arm_name(e, s), worker_command(plan, e, s, out, device), out / arm_name(e, s) / "worker.log")
            for e, s in todo]
    codes = run_commands(jobs, plan.parallel, lambda m: print(f"[parallel] {m}", file=sys.stderr, flush=True))
    stopped = [name for name, code in codes.items() if code >= 128]
    if stopped:
        raise RunInterrupted(f"arms {', '.join(stopped)} stopped; their checkpoints are saved: run the same command "
                             "again to resume")


def run_commands(jobs: list[tuple[str, list[str], Path]], processes: int, say, env: dict | None = None
                 ) -> dict[str, int]:
    """Run ``jobs`` (name, command, log) with at most ``processes`` at once -> exit status by name (128 + signal for
    a job stopped by a Ctrl-C or SIGTERM passed on to it). Each job has its own session, so a terminal's Ctrl-C
    reaches it once, through here; after one, no new job starts."""
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    codes: dict[str, int] = {}
    forwarded: list[int] = []
    queue = list(jobs)

    def forward(signum: int) -> None:
        forwarded.append(signum)
        for proc, _ in running.values():
            proc.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: forward(signum)) if main else None
    try:
        while queue or running:
            while queue and len(running) < processes and not forwarded:
                name, command, log = queue.pop(0)
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a", encoding="utf-8") as f:
                    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env)
                running[name] = (proc, time.monotonic())
                say(f"{name}: started (log: {log})")
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                forward(signal.SIGINT)
            for name, (proc, start) in list(running.items()):
                if proc.poll() is not None:
                    code = proc.returncode
                    codes[name] = 128 + forwarded[0] if forwarded and code != 0 else code
                    say(f"{name}: exited with status {code} after {time.monotonic() - start:.0f} s")
                    del running[name]
            if forwarded and not running:
                queue.clear()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return codes


def main(argv: list[str] | None = None) -> int:
    from mmrope.ablation.runner import RunInterrupted, run_arm_stacked

    p = argparse.ArgumentParser(prog="python -m mmrope.ablation.parallel", description="train and score one arm "
                                "of a grid with the stacked engine (a worker of parallel ablations)")
    p.add_argument("--grid", type=Path, required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seeds", type=int, required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, help="one run of the arm (train.py's engine); without it, all its seeds")
    args = p.parse_args(argv)
    plan = load_plan(args.grid, args.preset, seeds=args.seeds, max_steps=args.max_steps, arms=[args.arm])
    encoder, scheme = plan.arms[0]

    def say(message: str) -> None:
        print(f"{args.arm}: {message}", file=sys.stderr, flush=True)

    try:
        if args.seed is not None:
            from mmrope.ablation.runner import RunFailed, run_arm

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
