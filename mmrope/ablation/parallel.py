"""Several runs of a grid at once (``parallel: N``): one worker process per run, or per arm with the stacked engine.

A worker (:mod:`mmrope.ablation.worker`, a private entry) trains one run, or one arm's seeds together, and scores
it, writing the same folders, signatures and markers as a sequential run. The runner then makes its usual pass, which
finds every finished run done and collects its rows. On a CPU each worker of single runs gets an equal share of the
cores (``OMP_NUM_THREADS``): small models train faster as N one-thread runs than as one N-thread run.

Why processes rather than CUDA streams in one process: arms are different programs (each encoder and scheme is its
own graph), so each pays its own compile anyway, and separate processes compile them in parallel on the host's cores
instead of one after another under one interpreter; a crash, NaN or out-of-memory of one arm cannot take the others
down; each arm's host-side work (scene sampling, collation, scoring with Pillow) runs on its own core. The price is
that kernels of different processes time-share the GPU rather than overlap (no MPS here), which stacking the seeds
of each arm, several times larger kernels, is there to soften. Ctrl-C or SIGTERM is passed on to every worker, which
saves its checkpoints (:mod:`mmrope.ablation.processes`); the same command resumes them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mmrope.ablation.plan import Plan, arm_name
from mmrope.ablation.processes import run_processes


def worker_command(plan: Plan, encoder: str, scheme: str, out: Path, device: str | None,
                   seed: int | None = None) -> list[str]:
    """The worker for one run (``seed``) or, without a seed, for all the arm's seeds trained together."""
    return [sys.executable, "-m", "mmrope.ablation.worker", "--grid", str(plan.grid), "--preset", plan.preset,
            "--out", str(out), "--arm", arm_name(encoder, scheme), "--seeds", str(len(plan.seeds)),
            "--max-steps", str(plan.max_steps), *(["--device", device] if device else []),
            *(["--seed", str(seed)] if seed is not None else [])]


def run_workers(plan: Plan, out: Path, device: str | None, todo: list[tuple[str, str, int | None]]) -> list[str]:
    """Train and score each (encoder, scheme, seed) of ``todo`` in a worker, ``plan.parallel`` at a time (a seed of
    None: the arm's seeds together) -> the names of the workers a Ctrl-C or SIGTERM stopped. Failures are left for
    the runner's pass to report."""
    jobs = [(arm_name(e, s) + (f" seed {k}" if k is not None else ""), worker_command(plan, e, s, out, device, k),
             out / arm_name(e, s) / (f"seed{k}" if k is not None else "") / "worker.log") for e, s, k in todo]
    env = None
    if any(k is not None for _, _, k in todo):  # single runs: an equal share of the CPU's threads each
        threads = str(max(1, (os.cpu_count() or 1) // plan.parallel))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    codes, _ = run_processes(jobs, plan.parallel, lambda m: print(f"[parallel] {m}", file=sys.stderr, flush=True),
                             env)
    return [name for name, code in codes.items() if code >= 128]
