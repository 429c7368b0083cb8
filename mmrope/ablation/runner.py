"""Running an ablation: train every arm of a grid for the same budget, score it at several resolutions, collect the
rows. What ``mmrope ablate`` runs; :mod:`mmrope.ablation.report` turns the rows into tables and plots.

An arm is an (encoder ``pos_encoding``, decoder ``position_scheme``) pair, named ``<encoder>-<scheme>``. Its runs
differ from the grid's base config only in those two keys and the seed; every run trains for the same ``max_steps``
and its ``last.ckpt`` is scored (the best checkpoint by validation would give some arms more selection than
others). For arm A and seed k, ``<out>/A/seed<k>/`` holds:

    checkpoints/, logs/   the training run
    train.log             its output
    arm.json              what it is trained with, checked on every visit: a changed budget is refused, never mixed
    predictions.csv       every scene it was scored on: the caption it wrote and its scores, at every point
    eval.json             the done marker: settings and scores, written atomically once the run is scored

A run with ``last.ckpt`` but no marker resumes from it (``--ckpt_path last``, exact); one whose checkpoint already
reached ``max_steps`` is only scored; a run with a marker is not touched again. A run whose files are damaged (a
``last.ckpt``, ``eval.json`` or ``arm.json`` that is empty, cut short or random bytes) fails with one line naming
the file, like a run whose training fails, and the grid goes on; the failures are listed at the end.

Each run is a ``mmrope train`` subprocess (:mod:`mmrope.ablation.processes`) rather than a call in this process. A
crash, NaN or out-of-memory of one arm then cannot take the runner down, and no process-wide state leaks from one arm
into the next: torch.compile's caches (whose recompile limit would quietly send later arms to eager mode), CUDA
memory, logging and signal handlers. The price is Lightning's import, 5-15 s a run. Ctrl-C or SIGTERM is passed on
to the run, which saves ``last.ckpt`` after its current step; the same command then resumes it.

With ``engine: stacked`` (the gpu preset) the seeds of an arm that are not done train together, as one set of
batched weights, in one ``mmrope train stacked`` subprocess (:func:`run_arm_stacked`); each run still gets
its own folder, signature, checkpoint, marker and scores, exactly as above. With ``parallel: N`` as well, N arms train
at once, each in its own processes (:mod:`mmrope.ablation.parallel`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrope.ablation.parallel import run_workers
from mmrope.ablation.plan import Plan, arm_name, stacked_args, train_args
from mmrope.ablation.processes import last_error, run_process, signal_name
from mmrope.ablation.scoring import SCENES_FILE, score_run, write_scenes
from mmrope.errors import one_line

if TYPE_CHECKING:
    from mmrope.ablation.cluster import RayCluster


def train_command(plan: Plan, encoder: str, scheme: str, seed: int, run_dir: Path, resume: bool = False) -> list[str]:
    """One run as a command: the installed package's ``mmrope train``, so a wheel needs no source checkout."""
    return [sys.executable, "-m", "mmrope", "train", *train_args(plan, encoder, scheme, seed, run_dir, resume)]


def stacked_command(plan: Plan, encoder: str, scheme: str, runs: list[tuple[int, Path]], resume: bool = False
                    ) -> list[str]:
    """Several seeds of one arm as one command (``engine: stacked``): ``mmrope train stacked``."""
    return [sys.executable, "-m", "mmrope", "train", "stacked", *stacked_args(plan, encoder, scheme, runs, resume)]


def run_signature(plan: Plan, encoder: str, scheme: str, seed: int) -> dict:
    """What a run folder is trained with (its arm.json); the engine only when it is not Lightning's, so that folders
    of the CPU presets keep their signature."""
    signature = {"base": str(plan.base), "encoder": encoder, "scheme": scheme, "seed": seed,
                 "max_steps": plan.max_steps, "train": plan.train}
    return signature | ({"engine": plan.engine} if plan.engine != "lightning" else {})


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a Lightning checkpoint has taken; a file that is not one is a one-line ``ValueError``
    naming it (read as every checkpoint is: no code run, tensors mapped rather than read)."""
    from mmrope.checkpoints import load_torch_file

    checkpoint = load_torch_file(path, mmap=True)
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: not a training checkpoint (no global_step)")
    return step


def _run_step(run_dir: Path) -> int:
    """The steps the run in ``run_dir`` has taken: 0 without a checkpoint, :class:`RunFailed` for one that cannot be
    read (nothing can resume from it)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        return 0
    try:
        return checkpoint_step(ckpt)
    except ValueError as e:
        raise RunFailed(f"{e}; delete {run_dir} to train the run again") from None


def _read_json(path: Path, remedy: str) -> dict:
    """A file this runner wrote, or :class:`RunFailed` naming it when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e, 120)
        raise RunFailed(f"{path}: damaged, cannot be read ({reason}); {remedy}") from None
    if not isinstance(data, dict):
        raise RunFailed(f"{path}: damaged, not a JSON object; {remedy}")
    return data


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a file that exists is complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _same_base(old: Any, new: Any) -> bool:
    """One base config, however it was spelled: ``configs/x.yaml`` from the repository and its absolute path are the
    same file (a relative path is read from the current folder, as the runner reads it)."""
    return old == new or (isinstance(old, str) and Path(old).resolve() == Path(new).resolve())


def settings_changed(old: dict, signature: dict) -> str:
    """How a run folder's arm.json differs from ``signature`` ("max_steps 1500 -> 3000"), or "" when it is the
    same run."""
    if _same_base(old.get("base"), signature["base"]):
        old = old | {"base": signature["base"]}
    if old == signature:
        return ""
    return ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in signature.items() if old.get(k) != v) or "other keys"


def _check_signature(run_dir: Path, signature: dict) -> None:
    path = run_dir / "arm.json"
    if path.exists():
        diff = settings_changed(_read_json(path, f"delete {run_dir} to train the run again"), signature)
        if diff:
            raise ValueError(f"{run_dir} was trained with other settings ({diff}): use another --out, or delete "
                             "the folder to train it again")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, signature)


class RunFailed(Exception):
    """A training run exited with an error, or its files are damaged; the other runs go on."""


class RunInterrupted(Exception):
    """A training run stopped on Ctrl-C / SIGTERM after saving its last step."""


def _visit(plan: Plan, encoder: str, scheme: str, seed: int, out: Path) -> tuple[Path, list[dict] | None]:
    """A run's folder, checked against its signature, and its rows when its marker says it is done."""
    run_dir = out / arm_name(encoder, scheme) / f"seed{seed}"
    _check_signature(run_dir, run_signature(plan, encoder, scheme, seed))
    marker = run_dir / "eval.json"
    if marker.exists():
        done = _read_json(marker, "delete it to score the run again")
        if done.get("eval") == plan.eval_settings() and (run_dir / SCENES_FILE).is_file():
            if not isinstance(done.get("rows"), list):
                raise RunFailed(f"{marker}: damaged, holds no rows; delete it to score the run again")
            return run_dir, done["rows"]
    return run_dir, None


def is_done(plan: Plan, encoder: str, scheme: str, seed: int, out: Path) -> bool:
    """Whether a run's marker says it is scored; a damaged one is not (the run's next visit reports it)."""
    try:
        return _visit(plan, encoder, scheme, seed, out)[1] is not None
    except RunFailed:
        return False


def run_arm(plan: Plan, encoder: str, scheme: str, seed: int, out: Path, device: str | None = None,
            say=None) -> list[dict]:
    """Train (or resume) and score one run unless its marker says it is done -> its result rows."""
    say = say or (lambda message: None)
    run_dir, done = _visit(plan, encoder, scheme, seed, out)
    if done is not None:
        say("done before")
        return done
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    step = _run_step(run_dir)
    train_seconds = 0.0
    if step < plan.max_steps:
        what = f"resuming at step {step}" if step else "training"
        say(f"{what} to {plan.max_steps} steps (log: {run_dir / 'train.log'})")
        start = time.monotonic()
        code = run_process(train_command(plan, encoder, scheme, seed, run_dir, resume=ckpt.exists()),
                            run_dir / "train.log")
        train_seconds = time.monotonic() - start
        if code >= 128:  # the trainer's clean stop: last.ckpt holds its last finished step
            raise RunInterrupted(f"stopped by {signal_name(code - 128)}; its checkpoint is {ckpt}: run the same "
                                 "command again to resume")
        if code < 0:
            raise RunFailed(f"mmrope train was killed by {signal_name(-code)}, out of memory perhaps "
                            f"(see {run_dir / 'train.log'})")
        if code:
            raise RunFailed(f"mmrope train exited with status {code}: {last_error(run_dir / 'train.log')}")
        step = _run_step(run_dir)
        if step != plan.max_steps:
            raise RunFailed(f"{ckpt} holds step {step}, not max_steps={plan.max_steps}")
    return _score(plan, encoder, scheme, seed, run_dir, step, train_seconds, device, say)


def _score(plan: Plan, encoder: str, scheme: str, seed: int, run_dir: Path, step: int, train_seconds: float,
           device: str | None, say, **extra) -> list[dict]:
    """Score a trained run's last.ckpt and write its marker -> its rows."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    start = time.monotonic()
    try:
        rows, scenes = score_run(plan, ckpt, device)
    except ValueError as e:  # a checkpoint that loads but is not this grid's model, one line naming it
        raise RunFailed(str(e)) from None
    eval_seconds = time.monotonic() - start
    write_scenes(run_dir / SCENES_FILE, scenes)  # before the marker: a marked run always has its predictions
    _write_json(run_dir / "eval.json", {"arm": arm_name(encoder, scheme), "seed": seed, "steps": step,
                                        "checkpoint": str(ckpt), "train_seconds": round(train_seconds, 1),
                                        "eval_seconds": round(eval_seconds, 1), **extra,
                                        "eval": plan.eval_settings(), "rows": rows})
    at_1x = next((r.get(plan.metric) for r in rows if r["factor"] == 1 and r["split"] == plan.splits[0]
                  and r["protocol"] == "scaled"), None)
    score = f"; {plan.label} at 1x ({plan.splits[0]}) {at_1x:.3f}" if at_1x is not None else ""
    trained = f"trained in {_duration(train_seconds)}, " if train_seconds else ""
    say(f"{trained}scored in {_duration(eval_seconds)}{score}")
    return rows


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_arm_stacked(plan: Plan, encoder: str, scheme: str, out: Path, device: str | None = None, say=None,
                    train: bool = True) -> tuple[dict[int, list[dict]], list[str]]:
    """Train the seeds of one arm that are not done together (``engine: stacked``), then score each as
    :func:`run_arm` does -> (rows per seed, one line per run that failed). The same folders, signatures and markers
    as one run at a time; the arm's output goes to ``<out>/<arm>/stacked.log``. ``train=False`` only scores what
    is trained (after a parallel pass has tried the rest)."""
    say = say or (lambda message: None)
    rows, failures, pending = {}, [], {}
    for seed in plan.seeds:
        try:
            run_dir, done = _visit(plan, encoder, scheme, seed, out)
            if done is not None:
                rows[seed] = done
                continue
            pending[seed] = (run_dir, _run_step(run_dir))
        except RunFailed as e:
            failures.append(f"seed {seed}: {e}")
    if rows:
        say(f"seed{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))} done before")
    log = out / arm_name(encoder, scheme) / "stacked.log"
    seconds, together = {seed: 0.0 for seed in pending}, {}
    for step in sorted({s for _, s in pending.values() if s < plan.max_steps and train}):  # one step: together
        group = [(seed, run_dir) for seed, (run_dir, s) in pending.items() if s == step]
        seeds = ", ".join(str(seed) for seed, _ in group)
        what = f"resuming seeds {seeds} at step {step}" if step else f"training seeds {seeds} together"
        say(f"{what} to {plan.max_steps} steps (log: {log})")
        start = time.monotonic()
        code = run_process(stacked_command(plan, encoder, scheme, group, resume=step > 0), log)
        for seed, _ in group:
            seconds[seed], together[seed] = time.monotonic() - start, [k for k, _ in group]
        if code >= 128:
            raise RunInterrupted(f"seeds {seeds} stopped by {signal_name(code - 128)}; their checkpoints are in "
                                 f"{out / arm_name(encoder, scheme)}: run the same command again to resume")
        if code < 0:
            failures += [f"seed {seed}: the stacked trainer was killed by {signal_name(-code)}, out of memory perhaps "
                         f"(see {log})" for seed, _ in group]
    for seed, (run_dir, _) in pending.items():
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        try:
            step = _run_step(run_dir)
            if step != plan.max_steps:
                if not any(f.startswith(f"seed {seed}:") for f in failures):
                    failures.append(f"seed {seed}: {ckpt} holds step {step}, not max_steps={plan.max_steps}: "
                                    f"{last_error(log, f'mmrope train stacked: seed {seed}: error')}")
                continue
            rows[seed] = _score(plan, encoder, scheme, seed, run_dir, step, seconds[seed], device,
                                lambda message, seed=seed: say(f"seed {seed}: {message}"),
                                **({"trained_with_seeds": together[seed]} if seed in together else {}))
        except RunFailed as e:
            failures.append(f"seed {seed}: {e}")
    return rows, failures


def run_ablation(plan: Plan, out: str | Path, device: str | None = None, cluster: RayCluster | None = None
                 ) -> tuple[list[dict], list[str]]:
    """Every arm x seed of ``plan``, in order -> (result rows, one line per run that failed). Progress on stderr;
    a run stopped by Ctrl-C / SIGTERM raises :class:`RunInterrupted` once its checkpoint is saved. With ``engine:
    stacked`` each arm's seeds train together, and with ``parallel`` N arms at once (:mod:`mmrope.ablation.parallel`)
    before this pass collects them. With a ``cluster``, every run (stacked: every arm) is a task of that Ray cluster
    (:mod:`mmrope.ablation.cluster`), and this process only collects what the tasks wrote."""
    out = Path(out)
    if cluster is not None:
        return _run_on_cluster(plan, out, device, cluster)
    if plan.engine == "lightning" and plan.parallel > 1:  # the pass below finds them done and collects their rows
        _raise_if_stopped("runs", run_workers(plan, out, device, _todo(plan, out)))
    if plan.engine == "stacked":
        parallel = plan.parallel > 1 and len(plan.arms) > 1
        if parallel:
            _raise_if_stopped("arms", run_workers(plan, out, device, _todo(plan, out)))
        return _run_stacked(plan, out, device, train=not parallel)
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


def _todo(plan: Plan, out: Path) -> list[tuple[str, str, int | None]]:
    """What is left for workers or cluster tasks: each run not done, or with the stacked engine each arm with a seed
    not done (seed None). Each run's folder is visited first, so a changed budget is refused before anything starts."""
    if plan.engine == "stacked":
        return [(e, s, None) for e, s in plan.arms if not all([is_done(plan, e, s, k, out) for k in plan.seeds])]
    return [(e, s, k) for e, s in plan.arms for k in plan.seeds if not is_done(plan, e, s, k, out)]


def _run_on_cluster(plan: Plan, out: Path, device: str | None, cluster: RayCluster) -> tuple[list[dict], list[str]]:
    """The grid's tasks on a Ray cluster, then every run's rows from its marker, in order; a run without one is a
    failure, with what its task said."""
    from mmrope.ablation.cluster import run_on_ray

    todo = _todo(plan, out)
    problems = run_on_ray(plan, out, device, cluster, todo) if todo else {}
    rows, failures = [], []
    for encoder, scheme in plan.arms:
        for seed in plan.seeds:
            name = f"{arm_name(encoder, scheme)} seed {seed}"
            try:
                _, done = _visit(plan, encoder, scheme, seed, out)
            except RunFailed as e:
                done, problems[encoder, scheme, seed] = None, str(e)
            if done is None:
                failures.append(f"{name}: {problems.get((encoder, scheme, seed), 'not scored (see its worker.log)')}")
                continue
            rows += [{"encoder": encoder, "scheme": scheme, "seed": seed, **r} for r in done]
    return rows, failures


def _raise_if_stopped(what: str, stopped: list[str]) -> None:
    if stopped:
        raise RunInterrupted(f"{what} {', '.join(stopped)} stopped; their checkpoints are saved: run the same command "
                             "again to resume")


def _run_stacked(plan: Plan, out: Path, device: str | None, train: bool = True) -> tuple[list[dict], list[str]]:
    rows, failures = [], []
    for i, (encoder, scheme) in enumerate(plan.arms, 1):
        prefix = f"[{i}/{len(plan.arms)}] {arm_name(encoder, scheme)}"

        def say(message: str, prefix: str = prefix) -> None:
            print(f"{prefix}: {message}", file=sys.stderr, flush=True)

        try:
            arm_rows, arm_failures = run_arm_stacked(plan, encoder, scheme, out, device, say, train)
        except RunInterrupted as e:
            raise RunInterrupted(f"{arm_name(encoder, scheme)} {e}") from None
        for line in arm_failures:
            say(f"failed: {line}")
        failures += [f"{arm_name(encoder, scheme)} {line}" for line in arm_failures]
        rows += [{"encoder": encoder, "scheme": scheme, "seed": seed, **r}
                 for seed in plan.seeds if seed in arm_rows for r in arm_rows[seed]]
    return rows, failures
