"""Runs one ablation folder can take from another: ``mmrope ablate --reuse DIR``.

Two presets often share arms (the crossed block's blind column is ``cpu-relations``' runs). A run of this plan that
``--out`` lacks is copied from DIR when DIR holds it trained to this plan's budget with the same settings (its
arm.json, as the runner checks it on every visit), so it is scored here, or found done, instead of trained again.
DIR is only read. A run there that is unfinished, damaged, trained otherwise or holds a link (which could point
anywhere) stays where it is, and is trained here as if DIR did not have it; nothing in ``--out`` is overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmrope.ablation.plan import Plan, arm_name
from mmrope.ablation.runner import checkpoint_step, run_signature, settings_changed


def reuse_runs(plan: Plan, out: Path, source: Path, say=print) -> int:
    """Copy into ``out`` each run of ``plan`` that it lacks and ``source`` holds finished with the same settings;
    ``say`` gets one line per arm copied from and one per run passed over -> how many runs were copied."""
    out, source = Path(out), check_source(source, out)
    copied = 0
    for encoder, scheme in plan.arms:
        arm, seeds = arm_name(encoder, scheme), []
        for seed in plan.seeds:
            src, dst = source / arm / f"seed{seed}", out / arm / f"seed{seed}"
            if dst.exists() or not src.is_dir():
                continue
            reason = _not_reusable(src, run_signature(plan, encoder, scheme, seed), plan.max_steps)
            if reason:
                say(f"{arm} seed {seed}: not taken from {source} ({reason}); it trains here")
                continue
            _copy_run(src, dst)
            seeds.append(seed)
        if seeds:
            say(f"{arm}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} copied from {source} "
                "(trained there with the same settings)")
            copied += len(seeds)
    return copied


def check_source(source: Path, out: Path) -> Path:
    """``source`` when it can be reused from, else a one-line ``ValueError`` (before anything is written)."""
    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"--reuse {source}: no such folder (expected the --out of an earlier mmrope ablate)")
    if source.resolve() == Path(out).resolve():
        raise ValueError(f"--reuse {source}: that is the --out folder itself, whose finished runs are kept anyway")
    return source


def _not_reusable(run_dir: Path, signature: dict, max_steps: int) -> str:
    """Why the run in ``run_dir`` cannot stand for this plan's run, or "" when it can."""
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                return f"{Path(folder, name)} is a link"
    try:
        old = json.loads((run_dir / "arm.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "its arm.json is missing or damaged"
    if not isinstance(old, dict):
        return "its arm.json is damaged"
    changed = settings_changed(old, signature)
    if changed:
        return f"trained with other settings: {changed}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return "no checkpoints/last.ckpt"
    try:
        step = checkpoint_step(ckpt)
    except ValueError:
        return f"{ckpt} is damaged"
    return "" if step == max_steps else f"its last.ckpt is at step {step}, not {max_steps}"


def _copy_run(src: Path, dst: Path) -> None:
    """Whole or not at all: copied beside ``dst`` under a temporary name, then renamed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.copying")
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a copy that was killed
    shutil.copytree(src, tmp, symlinks=True)
    os.replace(tmp, dst)
