"""The ablation: train every arm of a grid for the same budget, score it at several resolutions, and report the mean
and 95% confidence interval across seeds as tables and plots. What ``mmrope ablate`` runs.

An arm is an (encoder ``pos_encoding``, decoder ``position_scheme``) pair, named ``<encoder>-<scheme>``. Its runs
differ from the grid's base config only in those two keys and the seed; every run trains for the same ``max_steps``
and its ``last.ckpt`` is scored (the best checkpoint by validation would give some arms more selection than
others). For arm A and seed k, ``<out>/A/seed<k>/`` holds:

    checkpoints/, logs/   the train.py run
    train.log             its output
    arm.json              what it is trained with, checked on every visit: a changed budget is refused, never mixed
    eval.json             the done marker: settings and scores, written atomically once the run is scored

A run with ``last.ckpt`` but no marker resumes from it (``--ckpt_path last``, exact); one whose checkpoint already
reached ``max_steps`` is only scored; a run with a marker is not touched again.

Each run is a ``python train.py`` subprocess rather than a call in this process. A crash, NaN or out-of-memory of one
arm then cannot take the runner down, and no process-wide state leaks from one arm into the next: torch.compile's
caches (whose recompile limit would quietly send later arms to eager mode), CUDA memory, logging and signal handlers.
The price is Lightning's import, 5-15 s a run. Ctrl-C or SIGTERM is passed on to the run, which saves ``last.ckpt``
after its current step; the same command then resumes it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
METRICS = ("exact", "attribute", "relation", "axis", "event", "motion", "order", "change", "bleu4", "cider")
CSV_COLUMNS = ("encoder", "scheme", "seed", "split", "factor", "size", "frames", "n") + METRICS
PRESET_KEYS = ("base", "arms", "encoders", "schemes", "seeds", "max_steps", "eval", "train")
EVAL_KEYS = ("splits", "factors", "frames", "n", "batch_size", "max_new_tokens")
SPLITS = ("val", "test", "compositional")

# t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf); beyond, the Cornish-Fisher expansion below is within 1e-4.
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom: the two-sided 95% multiplier."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval, t_{0.975, n-1} * s / sqrt(n) with s the sample
    standard deviation. Student's t, not the normal 1.96: with 3 seeds the multiplier is 4.30. One value: no CI."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * s / math.sqrt(n)


@dataclass
class Plan:
    """One preset of a grid file, resolved: what to train, how long, and how to score it."""

    grid: Path
    preset: str
    base: Path
    arms: list[tuple[str, str]]  # (encoder, scheme)
    seeds: list[int]
    max_steps: int
    train: dict[str, Any]  # dotted train.py keys added to every run
    splits: list[str]
    factors: list[float]
    n: int
    batch_size: int
    max_new_tokens: int
    train_size: int  # model.vision.image_size of the base config
    frames: list[int] | None = None  # clip grids: the frame counts each run is scored at; None for images
    clip_mode: str = "block"  # clip grids: data.clips.clip_mode of every run (a train override)
    train_frames: int | None = None  # clip grids: data.clips.frames of the base config
    level: int | None = None  # shapes grids: data.shapes.level of the base config (the scenes it is scored on)

    @property
    def points(self) -> list[tuple[float, int | None]]:
        """Every (factor, frames) each run is scored at, in table order."""
        return [(f, n) for f in self.factors for n in (self.frames or [None])]

    @property
    def sizes(self) -> list[int]:
        return [round(f * self.train_size) for f in self.factors]

    @property
    def metric(self) -> str:
        """The headline accuracy: relation on shapes, event on clips."""
        return "relation" if self.frames is None else "event"

    @property
    def label(self) -> str:
        """What the headline metric is called in tables, plots and file names: at level 1 the relation column
        holds place accuracy (one object, nine places)."""
        return "place" if self.level == 1 else self.metric

    def eval_settings(self) -> dict:
        clips = {} if self.frames is None else {"frames": self.frames, "clip_mode": self.clip_mode}
        return {"splits": self.splits, "factors": self.factors, "sizes": self.sizes, **clips, "n": self.n,
                "max_new_tokens": self.max_new_tokens, "data": str(self.base)}


def arm_name(encoder: str, scheme: str) -> str:
    return f"{encoder}-{scheme}"


def load_plan(grid: str | Path, preset: str = "cpu", seeds: int | None = None, max_steps: int | None = None,
              arms: list[str] | None = None) -> Plan:
    """Read ``grid`` (see configs/ablation/shapes.yaml) and resolve ``preset``; ``seeds``, ``max_steps`` and
    ``arms`` (names such as ``rope2d-mrope``, any pair of the grid) override the file."""
    import yaml

    from mmrope.config import PosEncoding, PositionScheme, VisionConfig

    grid = Path(grid)
    try:
        spec = yaml.safe_load(grid.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{grid}: cannot read the ablation grid ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("presets"), dict):
        raise ValueError(f"{grid}: not an ablation grid: expected a mapping with encoders, schemes, eval and presets")
    if preset not in spec["presets"]:
        raise ValueError(f"{grid}: no preset {preset!r}: expected one of {', '.join(spec['presets'])}")
    p = spec["presets"][preset] or {}
    _check_keys(p, PRESET_KEYS, f"{grid}: presets.{preset}")
    encoders = _names(spec.get("encoders"), PosEncoding, f"{grid}: encoders")
    schemes = _names(spec.get("schemes"), PositionScheme, f"{grid}: schemes")

    if arms is None and p.get("arms") is not None:
        arms = p["arms"]
    if arms is not None:
        pairs = [_parse_arm(a, encoders, schemes, grid) for a in arms]
    else:
        pairs = list(product(_names(p.get("encoders", encoders), PosEncoding, f"{grid}: presets.{preset}.encoders"),
                             _names(p.get("schemes", schemes), PositionScheme, f"{grid}: presets.{preset}.schemes")))
    pairs = list(dict.fromkeys(pairs))  # an arm named twice would count its seeds twice
    if not pairs:
        raise ValueError(f"{grid}: presets.{preset} has no arms")

    n_seeds = _positive(seeds if seeds is not None else p.get("seeds", spec.get("seeds", 1)), "seeds", grid)
    steps = _positive(max_steps if max_steps is not None else p.get("max_steps"), "max_steps", grid)
    _check_keys(spec.get("eval") or {}, EVAL_KEYS, f"{grid}: eval")
    _check_keys(p.get("eval") or {}, EVAL_KEYS, f"{grid}: presets.{preset}.eval")
    ev = {**(spec.get("eval") or {}), **(p.get("eval") or {})}
    splits = list(ev.get("splits", ["test", "compositional"]))
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"{grid}: eval.splits={splits}: expected some of {', '.join(SPLITS)}")
    factors = [float(f) for f in ev.get("factors", [1])]
    if not factors or any(f <= 0 for f in factors):
        raise ValueError(f"{grid}: eval.factors={factors}: expected positive factors of the training size")

    base = Path(p.get("base") or "")
    if not base.is_file():
        raise ValueError(f"{grid}: presets.{preset}.base={str(base)!r} is not a file (relative paths are read from "
                         "the current folder: run from the repository root)")
    train = p.get("train") or {}
    if not isinstance(train, dict):
        raise ValueError(f"{grid}: presets.{preset}.train must be a mapping of train.py keys to values")
    scored = [k for k in train if k.split(".")[:2] in (["data", "shapes"], ["data", "clips"])
              and k.split(".")[-1] in ("level", "canvas", "colours", "shapes", "background", "duration")]
    if scored:
        raise ValueError(f"{grid}: presets.{preset}.train sets {scored[0]}, but runs are scored on the scenes of "
                         f"{base}'s data section: set it there (a base config of its own)")
    vision, data = _base_vision(base, train), _base_data(base)
    frames = None
    if data.get("dataset") == "clips":
        frames = [int(f) for f in ev.get("frames", [(data.get("clips") or {}).get("frames", 4)])]
        if any(f < 2 for f in frames):
            raise ValueError(f"{grid}: eval.frames={frames}: expected frame counts of at least 2")
    elif "frames" in ev:
        raise ValueError(f"{grid}: eval.frames is for clip grids, but {base} trains on {data.get('dataset', 'shapes')}")
    defaults = VisionConfig()
    size = int(vision.get("image_size", defaults.image_size))
    window = int(vision.get("patch_size", defaults.patch_size)) * int(
        vision.get("spatial_merge_size", defaults.spatial_merge_size))
    for f in factors:
        if f * size != round(f * size) or round(f * size) % window:
            raise ValueError(f"{grid}: eval factor {f:g} of the training size {size} gives {f * size:g} px, not a "
                             f"multiple of patch_size * spatial_merge_size = {window}")
    n, batch_size, max_new_tokens = (_positive(ev.get(k, default), f"eval.{k}", grid)
                                     for k, default in (("n", 500), ("batch_size", 100), ("max_new_tokens", 12)))
    level = None if frames else int((data.get("shapes") or {}).get("level", 2))
    return Plan(grid, preset, base, pairs, list(range(n_seeds)), steps, train, splits, factors, n, batch_size,
                max_new_tokens, size, frames, str(train.get("data.clips.clip_mode", "block")),
                int(train.get("data.clips.frames", (data.get("clips") or {}).get("frames", 4))) if frames else None,
                level)


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}: expected one of {', '.join(allowed)}")


def _names(values: Any, literal: Any, where: str) -> list[str]:
    from typing import get_args

    allowed = get_args(literal)
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list, some of {', '.join(allowed)}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{where}: {v!r} is unknown: expected one of {', '.join(allowed)}")
    return list(values)


def _parse_arm(name: Any, encoders: list[str], schemes: list[str], grid: Path) -> tuple[str, str]:
    encoder, _, scheme = str(name).partition("-")
    if encoder not in encoders or scheme not in schemes:
        raise ValueError(f"arm {name!r} is not in {grid}: expected <encoder>-<scheme> with an encoder of "
                         f"{', '.join(encoders)} and a scheme of {', '.join(schemes)}")
    return encoder, scheme


def _positive(value: Any, name: str, grid: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{grid}: {name}={value!r}: expected a positive whole number")
    return value


def _base_config(base: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{base}: cannot read the base config ({' '.join(str(e).split())[:200]})") from None
    return config if isinstance(config, dict) else {}


def _base_data(base: Path) -> dict:
    return dict(_base_config(base).get("data") or {})


def _base_vision(base: Path, train: dict) -> dict:
    """model.vision of the base config, with the preset's train overrides of it applied."""
    vision = dict((_base_config(base).get("model") or {}).get("vision") or {})
    vision.update({k.removeprefix("model.vision."): v for k, v in train.items() if k.startswith("model.vision.")})
    return vision


def train_args(plan: Plan, encoder: str, scheme: str, seed: int, run_dir: Path, resume: bool = False) -> list[str]:
    """The ``train.py`` arguments of one run (``train.main(args)`` takes them as they are)."""
    extra = [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in plan.train.items()]
    return ["fit", "--config", str(plan.base), f"--trainer.default_root_dir={run_dir}",
            f"--trainer.max_steps={plan.max_steps}", f"--seed_everything={seed}", f"--data.seed={seed}",
            f"--model.vision.pos_encoding={encoder}", f"--model.position_scheme={scheme}",
            "--data.eval_sizes=[]",  # the scoring after training covers the sizes
            "--trainer.enable_progress_bar=false", *extra, *(["--ckpt_path=last"] if resume else [])]


def train_command(plan: Plan, encoder: str, scheme: str, seed: int, run_dir: Path, resume: bool = False) -> list[str]:
    if not TRAIN_SCRIPT.is_file():
        raise ValueError(f"{TRAIN_SCRIPT} not found: mmrope ablate needs a source checkout (pip install -e .)")
    return [sys.executable, str(TRAIN_SCRIPT), *train_args(plan, encoder, scheme, seed, run_dir, resume)]


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a Lightning checkpoint has taken."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a file that exists is complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_signature(run_dir: Path, signature: dict) -> None:
    path = run_dir / "arm.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != signature:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in signature.items() if old.get(k) != v)
            raise ValueError(f"{run_dir} was trained with other settings ({diff}): use another --out, or delete "
                             "the folder to train it again")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, signature)


def run_training(command: list[str], log_path: Path) -> int:
    """Run ``command`` with its output appended to ``log_path`` -> its exit status, or 128 + signal if a Ctrl-C or
    SIGTERM was passed on to it. The child has its own session, so a terminal's Ctrl-C reaches it only through here,
    once: train.py then saves last.ckpt after its step and exits (a second Ctrl-C stops it at once)."""
    forwarded: list[int] = []

    def forward(signum: int) -> None:
        forwarded.append(signum)
        proc.send_signal(signum)

    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: forward(signum)) if main else None
        try:
            while True:
                try:
                    code = proc.wait()
                    break
                except KeyboardInterrupt:
                    forward(signal.SIGINT)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    return 128 + forwarded[0] if forwarded else code


def score_run(plan: Plan, ckpt: Path, device: str | None = None) -> list[dict]:
    """Score ``ckpt`` on every split at every size (and frame count) -> rows ``{split, factor, size, [frames,] n,
    <metrics>}``."""
    from mmrope.evaluation import evaluate, resolve_data
    from mmrope.inference import load

    pipeline = load(ckpt, device=device)
    if pipeline.config.vision.image_size != plan.train_size:
        raise ValueError(f"{ckpt}: trained at {pipeline.config.vision.image_size} px, the grid's base config says "
                         f"{plan.train_size}")
    rows = []
    for split in plan.splits:
        eval_set = resolve_data(str(plan.base), plan.train_size, split=split, n=plan.n)
        clips = {} if plan.frames is None else {"frames": plan.frames, "clip_mode": plan.clip_mode}
        results, _ = evaluate(pipeline, eval_set, plan.sizes, batch_size=plan.batch_size,
                              max_new_tokens=plan.max_new_tokens, **clips)
        factor = dict(zip(plan.sizes, plan.factors))
        rows += [{"split": split, "factor": factor[r["size"]], **r} for r in results]
    return rows


class RunFailed(Exception):
    """A training run exited with an error; the other runs go on."""


class RunInterrupted(Exception):
    """A training run stopped on Ctrl-C / SIGTERM after saving its last step."""


def run_arm(plan: Plan, encoder: str, scheme: str, seed: int, out: Path, device: str | None = None,
            say=None) -> list[dict]:
    """Train (or resume) and score one run unless its marker says it is done -> its result rows."""
    say = say or (lambda message: None)
    run_dir = out / arm_name(encoder, scheme) / f"seed{seed}"
    _check_signature(run_dir, {"base": str(plan.base), "encoder": encoder, "scheme": scheme, "seed": seed,
                               "max_steps": plan.max_steps, "train": plan.train})
    marker = run_dir / "eval.json"
    if marker.exists():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("eval") == plan.eval_settings():
            say("done before")
            return done["rows"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    step = checkpoint_step(ckpt) if ckpt.exists() else 0
    train_seconds = 0.0
    if step < plan.max_steps:
        what = f"resuming at step {step}" if step else "training"
        say(f"{what} to {plan.max_steps} steps (log: {run_dir / 'train.log'})")
        start = time.monotonic()
        code = run_training(train_command(plan, encoder, scheme, seed, run_dir, resume=ckpt.exists()),
                            run_dir / "train.log")
        train_seconds = time.monotonic() - start
        if code >= 128:  # train.py's clean stop: last.ckpt holds its last finished step
            raise RunInterrupted(f"stopped by {_signal_name(code - 128)}; its checkpoint is {ckpt}: run the same "
                                 "command again to resume")
        if code < 0:
            raise RunFailed(f"train.py was killed by {_signal_name(-code)}, out of memory perhaps "
                            f"(see {run_dir / 'train.log'})")
        if code:
            raise RunFailed(f"train.py exited with status {code}: {_last_error(run_dir / 'train.log')}")
        step = checkpoint_step(ckpt)
        if step != plan.max_steps:
            raise RunFailed(f"{ckpt} holds step {step}, not max_steps={plan.max_steps}")
    start = time.monotonic()
    rows = score_run(plan, ckpt, device)
    eval_seconds = time.monotonic() - start
    _write_json(marker, {"arm": arm_name(encoder, scheme), "seed": seed, "steps": step, "checkpoint": str(ckpt),
                         "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
                         "eval": plan.eval_settings(), "rows": rows})
    at_1x = next((r.get(plan.metric) for r in rows if r["factor"] == 1 and r["split"] == plan.splits[0]), None)
    score = f"; {plan.label} at 1x ({plan.splits[0]}) {at_1x:.3f}" if at_1x is not None else ""
    trained = f"trained in {_duration(train_seconds)}, " if train_seconds else ""
    say(f"{trained}scored in {_duration(eval_seconds)}{score}")
    return rows


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300] + f" (see {log_path})"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_ablation(plan: Plan, out: str | Path, device: str | None = None) -> tuple[list[dict], list[str]]:
    """Every arm x seed of ``plan``, in order -> (result rows, one line per run that failed). Progress on stderr;
    a run stopped by Ctrl-C / SIGTERM raises :class:`RunInterrupted` once its checkpoint is saved."""
    out = Path(out)
    runs = [(e, s, k) for e, s in plan.arms for k in plan.seeds]
    rows, failures = [], []
    for i, (encoder, scheme, seed) in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {arm_name(encoder, scheme)} seed {seed}"

        def say(message: str, prefix: str = prefix) -> None:
            print(f"{prefix}: {message}", file=sys.stderr, flush=True)

        try:
            run_rows = run_arm(plan, encoder, scheme, seed, out, device, say)
        except RunFailed as e:
            say(f"failed: {e}")
            failures.append(f"{arm_name(encoder, scheme)} seed {seed}: {e}")
            continue
        except RunInterrupted as e:
            raise RunInterrupted(f"{arm_name(encoder, scheme)} seed {seed} {e}") from None
        rows += [{"encoder": encoder, "scheme": scheme, "seed": seed, **r} for r in run_rows]
    return rows, failures


def summarize(rows: list[dict]) -> list[dict]:
    """Rows grouped by arm, split and factor -> ``{encoder, scheme, split, factor, size, seeds, <metric>: (mean,
    ci)}``, in the order the groups first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["scheme"], r["split"], r["factor"], r.get("frames")), []).append(r)
    summary = []
    for (encoder, scheme, split, factor, frames), group in groups.items():
        s = {"encoder": encoder, "scheme": scheme, "split": split, "factor": factor, "size": group[0]["size"],
             "frames": frames,
             "seeds": len(group)}
        for m in METRICS:
            values = [r[m] for r in group if r.get(m) is not None]
            if values:
                s[m] = mean_ci(values)
        summary.append(s)
    return summary


def format_cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return ""
    mean, ci = value
    return f"{mean:.3f}" if ci is None else f"{mean:.3f} ± {ci:.3f}"


def format_results(summary: list[dict], plan: Plan, metrics: tuple[str, ...] | None = None) -> str:
    """Markdown: per split and metric, one row per arm and one column per size (and frame count), cells
    "mean ± 95% CI"."""
    metrics = metrics or (plan.metric, "attribute")
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    cells = {(arm_name(s["encoder"], s["scheme"]), s["split"], s["factor"], s.get("frames")): s for s in summary}
    counts = sorted({min(s["seeds"] for s in summary), max(s["seeds"] for s in summary)})
    seeds = f"{'-'.join(map(str, counts))} {'seed' if counts == [1] else 'seeds'}"
    read_as = "one (t, h, w) block" if plan.clip_mode == "block" else "separate images"
    clips = "" if plan.frames is None else f" Clips of {plan.train_frames} frames in training, read as {read_as}."
    lines = [f"# Ablation results: preset {plan.preset}", "",
             f"Base `{plan.base}`, {plan.max_steps} training steps per run, {seeds} per arm; `last.ckpt` of each "
             f"run, greedy decoding, {plan.n} {'clips' if plan.frames else 'scenes'} per split (the same for every "
             "run). Cells: mean ± half-width of the 95% confidence interval across seeds (Student's t; no interval "
             f"with one seed). Trained at {plan.train_size} px.{clips}"]
    columns = []
    for f, n in plan.points:
        train = f == 1 and (n is None or n == plan.train_frames)
        columns.append(f"{round(f * plan.train_size)} px ({f:g}x)" + (f", {n} frames" if n else "")
                       + (" train" if train else ""))
    for split in plan.splits:
        for metric in metrics:
            name = plan.label if metric == plan.metric else metric
            lines += ["", f"## {split}: {name} accuracy", "", "| arm | " + " | ".join(columns) + " |",
                      "| --- |" + " ---: |" * len(columns)]
            for arm in arms:
                row = [format_cell(cells.get((arm, split, f, n), {}).get(metric)) for f, n in plan.points]
                lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_resolution(summary: list[dict], split: str, path: Path, train_size: int,
                              metric: str = "relation", along: str = "size", label: str | None = None) -> Path:
    """One line per arm (mean across seeds) with its 95% CI band, against image side (``along="size"``) or, for
    clips at the training size, frame count (``along="frames"``); the training value marked. ``label`` names the
    metric on the plot (default: ``metric``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    for i, arm in enumerate(arms):
        points = sorted((s[along], *s[metric]) for s in summary
                        if s["split"] == split and arm_name(s["encoder"], s["scheme"]) == arm and metric in s
                        and (along == "size" or s["factor"] == 1))
        if not points:
            continue
        x = [p[0] for p in points]
        y = [p[1] for p in points]
        colour = f"C{i}"
        ax.plot(x, y, marker="o", color=colour, label=arm)
        if all(p[2] is not None for p in points):
            ax.fill_between(x, [m - c for _, m, c in points], [m + c for _, m, c in points], color=colour, alpha=0.18,
                            linewidth=0)
    ax.axvline(train_size, color="grey", linestyle="--", linewidth=1)
    ax.annotate("training " + ("size" if along == "size" else "frames"), (train_size, 0.02), xytext=(3, 0),
                textcoords="offset points", fontsize=8, color="grey")
    ticks = sorted({s[along] for s in summary})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(s) for s in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("image side (px)" if along == "size" else "frames per clip")
    ax.set_ylabel(f"{label or metric} accuracy")
    ax.set_title(f"{split}: {label or metric} accuracy, mean and 95% CI across seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_metric_bars(summary: list[dict], split: str, path: Path, points: list[tuple[float, int | None]],
                     metric: str = "relation", label: str | None = None) -> Path:
    """Grouped bars, one group per (factor of the training size, frames) point, one bar per arm, 95% CIs as error
    bars; ``label`` as for :func:`plot_metric_vs_resolution`."""
    plt = _pyplot()
    arms = list(dict.fromkeys(arm_name(s["encoder"], s["scheme"]) for s in summary))
    cells = {(arm_name(s["encoder"], s["scheme"]), s["factor"], s.get("frames")): s for s in summary
             if s["split"] == split}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        values = [cells.get((arm, *p), {}).get(metric, (math.nan, None)) for p in points]
        errors = [c if c is not None else 0.0 for _, c in values]
        xs = [g + (i - (len(arms) - 1) / 2) * width for g in range(len(points))]
        ax.bar(xs, [m for m, _ in values], width, yerr=errors, capsize=3, color=f"C{i}", label=arm)
    ax.set_xticks(range(len(points)), [f"{f:g}x ({cells.get((arms[0], f, n), {}).get('size', '?')} px"
                                       + (f", {n} frames)" if n else ")") for f, n in points])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{label or metric} accuracy")
    ax.set_title(f"{split}: {label or metric} accuracy at the training size and beyond (95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_results(rows: list[dict], plan: Plan, out: str | Path) -> list[Path]:
    """results.csv, results.md and, per split, <metric>_vs_resolution_<split>.png (images) or
    <metric>_vs_frames_<split>.png (clips), and <metric>_bars_<split>.png, where metric is relation on shapes (place
    at level 1) and event on clips."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    paths = [write_csv(rows, out / "results.csv")]
    (out / "results.md").write_text(format_results(summary, plan), encoding="utf-8")
    paths.append(out / "results.md")
    metric, label = plan.metric, plan.label
    if plan.frames is None:
        along, train_value = "size", plan.train_size
        bars = [(f, None) for f in dict.fromkeys((1.0, max(plan.factors))) if f in plan.factors] or plan.points
    else:
        along, train_value = "frames", plan.train_frames
        bars = [p for p in plan.points if p[0] == 1 and p[1] in (plan.train_frames, max(plan.frames))] or plan.points
    axis = "resolution" if along == "size" else "frames"
    for split in plan.splits:
        paths.append(plot_metric_vs_resolution(summary, split, out / f"{label}_vs_{axis}_{split}.png", train_value,
                                               metric, along, label))
        paths.append(plot_metric_bars(summary, split, out / f"{label}_bars_{split}.png", bars, metric, label))
    return paths
