"""The ablation runner: a tiny grid writes every output, a finished run is not touched again, an interrupted run
resumes where it stopped, signals reach the training run, and the confidence interval is Student's t."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from PIL import Image

from mmrope import cli
from mmrope.ablation import plan as plan_module
from mmrope.ablation import report, runner
from mmrope.ablation.plan import load_plan
from mmrope.ablation.processes import run_process
from mmrope.ablation.report import write_results
from mmrope.ablation.stats import mean_ci, t_quantile_975
from mmrope.eval.evaluation import data_set

ROOT = Path(__file__).resolve().parents[1]
TINY_ARMS = ("rope2d-mrope", "rope1d_flat-flat")


def tiny_grid(tmp_path: Path, seeds: int = 1) -> Path:
    """Two arms of the debug model, 4 steps, ``seeds`` seeds, 8 scenes per split at 0.5x and 1x (16 and 32 px)."""
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(f"""\
        encoders: [rope2d, rope1d_flat]
        schemes: [mrope, flat]
        seeds: {seeds}
        eval: {{splits: [test, compositional], factors: [0.5, 1], n: 8, batch_size: 8, max_new_tokens: 6}}
        presets:
          tiny:
            base: {ROOT / "configs/debug.yaml"}
            arms: [{", ".join(TINY_ARMS)}]
            max_steps: 4
            train:
              data.batch_size: 8
              data.shapes.n_val: 8
              trainer.limit_val_batches: 0
              trainer.log_every_n_steps: 1
              trainer.enable_model_summary: false
        """))
    return path


def logged_steps(run_dir: Path) -> list[list[int]]:
    """The steps with a training loss, per CSV log version."""
    versions = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            versions.append(sorted(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")))
    return versions


def assert_png(path: Path, max_kb: int = 100) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert path.stat().st_size < max_kb * 1024


def test_tiny_ablation_writes_everything_skips_finished_runs_and_resumes(tmp_path, capsys):
    """Two runs left as a crash would leave them, trained here in-process (a subprocess costs Lightning's import):
    the first stopped after 2 of its 4 steps, the second trained but never scored. The runner resumes the first in
    a train.py subprocess and only scores the second."""
    from mmrope.train import cli as train

    grid, out = tiny_grid(tmp_path), tmp_path / "out"
    interrupted, unscored = (out / arm / "seed0" for arm in TINY_ARMS)
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI would also read pytest's arguments
        assert train.main(plan_module.train_args(load_plan(grid, "tiny", max_steps=2), "rope2d", "mrope", 0,
                                              interrupted)) == 0
        assert train.main(plan_module.train_args(load_plan(grid, "tiny"), "rope1d_flat", "flat", 0, unscored)) == 0
    unscored_ckpt = (unscored / "checkpoints/last.ckpt").stat().st_mtime_ns

    args = ["ablate", "--config", str(grid), "--preset", "tiny", "--out", str(out)]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "rope2d-mrope seed 0: resuming at step 2 to 4 steps" in captured.err
    assert "| rope1d_flat-flat |" in captured.out

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 1 * 2 * 2  # arms x seeds x splits x factors
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert {(r["encoder"], r["scheme"], r["split"], r["size"]) for r in rows} == {
        (e, s, split, size) for e, s in (("rope2d", "mrope"), ("rope1d_flat", "flat"))
        for split in ("test", "compositional") for size in ("16", "32")}
    assert all(r["n"] == "8" and 0 <= float(r["relation"]) <= 1 for r in rows)
    table = (out / "results.md").read_text()
    assert "## compositional: relation accuracy" in table and "32 px (1x) train" in table
    for split in ("test", "compositional"):
        assert_png(out / f"relation_vs_resolution_{split}.png")
        assert_png(out / f"relation_bars_{split}.png")

    # resumed, not restarted: steps 0-1 in the first log, 2-3 in the second; both runs got the same budget
    assert logged_steps(interrupted) == [[0, 1], [2, 3]]
    assert all(runner.checkpoint_step(d / "checkpoints/last.ckpt") == 4 for d in (interrupted, unscored))
    assert (unscored / "checkpoints/last.ckpt").stat().st_mtime_ns == unscored_ckpt
    assert not (unscored / "train.log").exists()  # scored without starting train.py

    # a rerun touches nothing
    files = [d / name for d in (interrupted, unscored) for name in ("checkpoints/last.ckpt", "eval.json")]
    stamps = [p.stat().st_mtime_ns for p in files]
    assert cli.main(args) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert capsys.readouterr().err.count("done before") == 2

    # another budget in the same folder is refused, never mixed with the old one
    assert cli.main(args + ["--max-steps", "5"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("mmrope ablate: error: ") and "(max_steps 4 -> 5)" in error


def test_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    plan = load_plan(tiny_grid(tmp_path), "tiny")
    monkeypatch.setattr(runner, "train_command",
                        lambda *a, **k: [sys.executable, "-c", "print('mmrope train: error: loss is nan'); exit(1)"])
    rows, failures = runner.run_ablation(plan, tmp_path / "out")
    assert rows == [] and len(failures) == 2
    assert "status 1: mmrope train: error: loss is nan" in failures[0]
    assert cli.main(["ablate", "--config", str(tmp_path / "grid.yaml"), "--preset", "tiny",
                     "--out", str(tmp_path / "out")]) == 1
    assert "2 of 2 runs failed" in capsys.readouterr().err

    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"  # as the out-of-memory killer would
    monkeypatch.setattr(runner, "train_command", lambda *a, **k: [sys.executable, "-c", killed])
    _, failures = runner.run_ablation(plan, tmp_path / "out")
    assert len(failures) == 2 and "killed by SIGKILL" in failures[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_runner_reaches_the_training_run_once(tmp_path, signum):
    """The child runs in its own session; the runner passes Ctrl-C / SIGTERM on and waits for its clean exit."""
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGINT, lambda s, f: sys.exit(128 + s))\n"
             "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))\n"
             "print('ready', flush=True)\n"
             "time.sleep(30)\n")
    log = tmp_path / "train.log"

    def send_when_ready():
        deadline = time.monotonic() + 20
        while "\nready\n" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)  # to the runner only, as a terminal or a job scheduler would

    handler = signal.getsignal(signal.SIGTERM)
    # as at a terminal: a shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so a test run launched with `&` would see no Ctrl-C at all
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=send_when_ready, daemon=True).start()
    start = time.monotonic()
    try:
        assert run_process([sys.executable, "-c", child], log) == 128 + signum
    finally:
        signal.signal(signal.SIGINT, interrupt)
    assert time.monotonic() - start < 20
    assert signal.getsignal(signal.SIGTERM) == handler  # the runner's own handling is back

def test_interrupted_run_stops_the_ablation(tmp_path, monkeypatch):
    plan = load_plan(tiny_grid(tmp_path), "tiny")
    monkeypatch.setattr(runner, "train_command", lambda *a, **k: [sys.executable, "-c", "exit(130)"])
    with pytest.raises(runner.RunInterrupted, match="rope2d-mrope seed 0 stopped by SIGINT; its checkpoint is"):
        runner.run_ablation(plan, tmp_path / "out")


def test_ci_on_known_numbers():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3: t_{0.975, 2} / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert mean_ci([0.5]) == (0.5, None)  # one seed: a mean, no interval
    assert mean_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.0))
    mean, half = mean_ci([0.2, 0.4])  # s = 0.1414, t_{0.975, 1} = 12.706
    assert half == pytest.approx(12.706205 * math.sqrt(0.02) / math.sqrt(2), rel=1e-6)
    assert t_quantile_975(30) == pytest.approx(2.042272)
    assert t_quantile_975(60) == pytest.approx(2.000298, abs=1e-4)  # past the table: the expansion
    assert t_quantile_975(10**6) == pytest.approx(1.959964, abs=1e-5)


def fake_predictions(plan, out: Path, right: dict[str, list[list[int]]]) -> list[dict]:
    """Per-scene predictions as the runner writes them, with known outcomes: ``right[arm][seed][scene]`` is the
    headline score of every point of that scene (attribute is 0.5 throughout) -> the aggregated rows."""
    rows = []
    for arm, seeds in right.items():
        encoder, scheme = arm.split("-")
        for seed, scores in enumerate(seeds):
            scenes = [{"split": split, "protocol": protocol, "factor": factor, "size": round(factor * 32),
                       "index": i, "prediction": "a caption", plan.metric: score, "attribute": 0.5}
                      for split in plan.splits for protocol, factor in plan.scored for i, score in enumerate(scores)]
            (out / arm / f"seed{seed}").mkdir(parents=True)
            runner.write_scenes(out / arm / f"seed{seed}" / runner.SCENES_FILE, scenes)
            rows += [{"encoder": encoder, "scheme": scheme, "seed": seed, "split": split, "protocol": protocol,
                      "factor": factor, "size": round(factor * 32), "n": len(scores),
                      plan.metric: sum(scores) / len(scores), "attribute": 0.5}
                     for split in plan.splits for protocol, factor in plan.scored]
    return rows


def test_results_come_from_per_scene_predictions_with_paired_tests(tmp_path):
    """Known per-scene outcomes -> bootstrap cells inside [0, 1], a stated comparison that separates (24 discordant
    pairs one way: p = 2 * 0.5^24) and one that does not, with its minimum detectable difference."""
    from mmrope.ablation.plan import Comparison

    plan = load_plan(tiny_grid(tmp_path), "tiny", seeds=3)
    a, b = TINY_ARMS
    plan.comparisons = [Comparison(a, b, "test")]
    ones, zeros = [[1] * 8] * 3, [[0] * 8] * 3
    rows = fake_predictions(plan, tmp_path, {a: ones, b: zeros})
    write_results(rows, plan, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert f"| {a} | 1.000 [1.00, 1.00] | 1.000 [1.00, 1.00] |" in table
    assert f"| {b} | 0.000 [0.00, 0.00] | 0.000 [0.00, 0.00] |" in table
    assert f"| {b} | 0.500 [0.50, 0.50] |" in table  # attribute
    comparison = next(line for line in table.splitlines() if line.startswith(f"| {a} | {b} |"))
    assert "24 / 0" in comparison and "A > B" in comparison and "< 1e-4" in comparison
    for name in ("relation_vs_resolution_test", "relation_bars_compositional"):
        assert_png(tmp_path / f"{name}.png")

    # two arms that differ on a few scenes only: a null, reported with the difference it could have missed
    other = tmp_path / "null"
    mixed = [[1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1, 1, 0]]
    flipped = [row[1:] + row[:1] for row in mixed]
    write_results(fake_predictions(plan, other, {a: mixed, b: flipped}), plan, other)
    comparison = next(line for line in (other / "results.md").read_text().splitlines()
                      if line.startswith(f"| {a} | {b} |"))
    assert "no difference detected" in comparison and "could be missed" in comparison

    # one seed all one way, two seeds alike: McNemar separates these runs (8 / 0, p = 0.008), the interval over seeds
    # does not exclude 0 (a third of the resamples leave that seed out): not read as separated
    one_seed = tmp_path / "one_seed"
    a_right, b_right = [[1] * 8, [1, 0] * 4, [0, 1] * 4], [[0] * 8, [1, 0] * 4, [0, 1] * 4]
    write_results(fake_predictions(plan, one_seed, {a: a_right, b: b_right}), plan, one_seed)
    comparison = next(line for line in (one_seed / "results.md").read_text().splitlines()
                      if line.startswith(f"| {a} | {b} |"))
    assert "8 / 0" in comparison and "these runs differ; the interval over seeds includes 0" in comparison


def test_a_preset_read_in_two_looks_is_tested_at_half_the_level(tmp_path):
    """``looks: 2`` (seeds added after a first look left a comparison open): Holm, the interval and the MDD at 0.025.
    Six discordant pairs all one way (McNemar p = 2 * 0.5^6 = 0.031) separate at 0.05 and not at 0.025."""
    from mmrope.ablation.plan import Comparison

    grid = tiny_grid(tmp_path)
    grid.write_text(grid.read_text().replace("max_steps: 4", "max_steps: 4\n    looks: 2"))
    plan = load_plan(grid, "tiny", seeds=3)
    assert plan.looks == 2
    a, b = TINY_ARMS
    plan.comparisons = [Comparison(a, b, "test")]
    # two scenes per seed where only a is right, at other scenes in each seed
    a_right = [[1, 1, 0, 0, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1, 1, 0]]
    b_right = [[0, 0, 0, 0, 0, 0, 1, 0]] * 3
    tables = {}
    for looks in (1, 2):
        plan.looks, out = looks, tmp_path / f"looks{looks}"
        write_results(fake_predictions(plan, out, {a: a_right, b: b_right}), plan, out)
        tables[looks] = (out / "results.md").read_text()
    once, twice = ([line for line in tables[k].splitlines() if line.startswith(f"| {a} | {b} |")][-1] for k in (1, 2))
    assert "6 / 0 | 0.031 | 0.031 |" in once and "A > B" in once and "A - B [95% CI]" in tables[1]
    assert "6 / 0 | 0.031 | 0.031 |" in twice and "no difference detected" in twice
    assert "A - B [97.5% CI]" in tables[2] and "Read at 0.025 = 0.05 / 2" in tables[2]
    width = [float(x) for line in (once, twice) for x in line.split("[")[1].split("]")[0].split(",")]
    assert width[3] - width[2] > width[1] - width[0]  # the 97.5% interval is the wider

    grid.write_text(grid.read_text().replace("looks: 2", "looks: 0"))
    with pytest.raises(ValueError, match=r"presets\.tiny\.looks=0: expected a positive whole number"):
        load_plan(grid, "tiny")


def test_an_interaction_is_tested_on_the_contrast_of_two_differences(tmp_path):
    """``minus``: does what arm a adds over b differ from what c adds over d? Four arms with known outcomes: a beats b
    on every scene, c and d are alike -> the contrast (a - b) - (c - d) is +1 on all 24 pairs (p = 2 * 0.5^24);
    the same difference under both pairs -> contrast 0 everywhere, a null."""
    grid = tiny_grid(tmp_path)
    grid.write_text(grid.read_text().replace("encoders: [rope2d, rope1d_flat]", "encoders: [rope2d, rope1d_flat, none]")
                    .replace(f"arms: [{', '.join(TINY_ARMS)}]",
                             "arms: [rope2d-mrope, none-mrope, rope2d-flat, none-flat]\n    compare:\n"
                             "      - {arms: [rope2d-mrope, none-mrope], minus: [rope2d-flat, none-flat]}"))
    plan = load_plan(grid, "tiny", seeds=3)
    [c] = plan.comparisons
    assert c.sides == ("rope2d-mrope - none-mrope", "rope2d-flat - none-flat") and len(c.arms) == 4
    ones, zeros = [[1] * 8] * 3, [[0] * 8] * 3
    out = tmp_path / "apart"
    write_results(fake_predictions(plan, out, {"rope2d-mrope": ones, "none-mrope": zeros, "rope2d-flat": ones,
                                               "none-flat": ones}), plan, out)
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| rope2d-mrope - none-mrope |"))
    assert "| +1.000 | +0.000 | +1.000 [+1.000, +1.000] | 24 / 0 | < 1e-4 |" in row and "A > B" in row
    assert "sign test on the per-pair contrast" in table
    out = tmp_path / "alike"
    write_results(fake_predictions(plan, out, {"rope2d-mrope": ones, "none-mrope": zeros, "rope2d-flat": ones,
                                               "none-flat": zeros}), plan, out)
    row = next(line for line in (out / "results.md").read_text().splitlines()
               if line.startswith("| rope2d-mrope - none-mrope |"))
    assert "| +1.000 | +1.000 | +0.000 [+0.000, +0.000] | 0 / 0 | 1 |" in row and "no difference detected" in row

    for minus, words in ((["rope2d-flat"], r"\['rope2d-flat'\]: expected two different arms"),
                         (["none-mrope", "rope2d-mrope"], "an interaction needs another pair of arms"),
                         (["rope2d-flat", "none-xyz"], "expected two different arms of the preset")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(grid.read_text().replace("minus: [rope2d-flat, none-flat]", f"minus: [{', '.join(minus)}]"))
        with pytest.raises(ValueError, match=r"presets\.tiny\.compare\[0\]: minus=.*" + words):
            load_plan(bad, "tiny")


def test_shipped_grid_and_bad_grids(tmp_path):
    grid = ROOT / "configs/ablation/shapes.yaml"
    gpu = load_plan(grid, "gpu")  # every registered encoder, and every registered scheme, each on one axis
    from mmrope.model.decoder_schemes import SCHEMES
    from mmrope.model.pos_encodings import ENCODERS

    # every encoder but rope3d (clips) and rope2d_norm_aug (draws in training: not stackable), every scheme
    assert len(gpu.arms) == len(ENCODERS) - 2 + len(SCHEMES) - 1 and gpu.seeds == [0, 1, 2]
    assert gpu.sizes == [32, 48, 64, 96, 128] and {("rope2d", "flat"), ("none", "mrope_interleaved")} <= set(gpu.arms)
    cpu = load_plan(grid, "cpu", max_steps=10, arms=["rope2d_mixed-mrope"])
    assert cpu.arms == [("rope2d_mixed", "mrope")] and cpu.max_steps == 10 and cpu.sizes == [32, 48, 64, 96, 128]
    place = load_plan(grid, "cpu")  # level-1 scenes: the model is trained and scored on places
    assert place.splits == ["test", "compositional"]
    assert place.base.name == "shapes_place.yaml" and len(place.arms) == 8
    assert {s for e, s in place.arms if e == "rope2d"} == {"mrope", "mrope_interleaved", "flat"}  # every scheme
    assert {e for e, s in place.arms if s == "mrope_interleaved"} == {
        "rope2d", "rope1d_flat", "sincos2d", "learned", "rope2d_learned", "rope2d_norm"}  # every encoder family
    assert (place.metric, place.label) == ("place", "place")
    scenes = data_set(place.data, "test", n=3).scenes
    assert [len(s["objects"]) for s in scenes] == [1, 1, 1] and all(s["level"] == 1 for s in scenes)
    relation = load_plan(grid, "cpu-relations")  # the encoder question: relations under the position-blind decoder
    assert (relation.metric, relation.base.name) == ("relation", "shapes_relation_cpu.yaml")
    assert {s for _, s in relation.arms} == {"blind"} and relation.seeds == [0, 1, 2, 3, 4]
    assert relation.protocols == ["scaled", "same_pixels", "anchored"] and len(relation.comparisons) == 7
    crossed = load_plan(grid, "cpu-relations-crossed")  # 4 encoders x 3 decoders, two interactions at 1x, one at 2x
    assert len(crossed.arms) == 12 and [c.minus is not None for c in crossed.comparisons] == [0, 0, 1, 1, 1]
    assert ("anchored", 0.5) not in relation.scored and ("same_pixels", 1.0) not in relation.scored
    places = load_plan(grid, "cpu-places")
    assert places.sizes == [32, 48, 64, 96, 144] and places.metric == "place" and places.threshold == 0.9
    import yaml

    recipe = ROOT / "configs/ablation/relation_recipe.yaml"  # each attempt at the relation plateau, one seed
    presets = yaml.safe_load(recipe.read_text())["presets"]
    attempts = {name: load_plan(recipe, name) for name in presets}
    assert all(p.metric == "relation" and p.arms == [("rope2d", "mrope_interleaved")] for p in attempts.values())
    assert attempts["recipe"].seeds == [0, 1, 2] and attempts["random"].seeds == [0]

    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_grid(tmp_path).read_text().replace("factors: [0.5, 1]", "factors: [0.75, 1]"))
    with pytest.raises(ValueError, match=r"factor 0.75 of the training size 32 gives 24 px, not a multiple .* 16"):
        load_plan(bad, "tiny")
    overridden = tmp_path / "level.yaml"  # a train override of the scenes: runs are scored on what they trained on
    overridden.write_text(tiny_grid(tmp_path).read_text().replace("data.batch_size: 8", "data.shapes.level: 1"))
    levels = load_plan(overridden, "tiny")
    assert levels.metric == "place" and all(s["level"] == 1 for s in data_set(levels.data, "test", n=2).scenes)
    with pytest.raises(ValueError, match="no preset 'huge'"):
        load_plan(bad, "huge")
    with pytest.raises(ValueError, match="arm 'rope2d-xyz' is not in"):
        load_plan(grid, "cpu", arms=["rope2d-xyz"])


def damage_runs(plan, out: Path, damage: str) -> dict[str, str]:
    """Four runs of ``plan`` (two arms x two seeds): one scored before, and three with a damaged file each ->
    the words each failure must hold, by run."""
    import json

    import torch

    runs = {(a, k): out / a / f"seed{k}" for a in TINY_ARMS for k in (0, 1)}
    for run_dir in runs.values():
        (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = runs[TINY_ARMS[0], 0] / "checkpoints/last.ckpt"
    if damage == "truncated":
        torch.save({"global_step": 2, "state_dict": {"w": torch.zeros(4096)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:3000])
    else:
        ckpt.write_bytes(os.urandom(4096) if damage == "random" else b"")
    (runs[TINY_ARMS[0], 1] / "eval.json").write_text('{"arm": "rope2d-mrope", "seed": 1, "ro')  # cut short
    (runs[TINY_ARMS[1], 1] / "arm.json").write_text("")
    rows = [{"split": split, "factor": f, "size": round(32 * f), "n": 8, "relation": 0.5, "attribute": 0.5}
            for split in plan.splits for f in plan.factors]
    scenes = [{"split": r["split"], "protocol": "scaled", "factor": r["factor"], "size": r["size"], "index": i,
               "prediction": "", "relation": 0.5, "attribute": 0.5} for r in rows for i in range(8)]
    runner.write_scenes(runs[TINY_ARMS[1], 0] / runner.SCENES_FILE, scenes)
    (runs[TINY_ARMS[1], 0] / "eval.json").write_text(json.dumps({"eval": plan.eval_settings(), "rows": rows}))
    reason = {"truncated": "cannot be read as a PyTorch checkpoint", "random": "cannot be read as a PyTorch checkpoint",
              "empty": "empty file, not a checkpoint"}[damage]
    return {f"{TINY_ARMS[0]} seed 0": f"{ckpt}: {reason}",
            f"{TINY_ARMS[0]} seed 1": f"{runs[TINY_ARMS[0], 1] / 'eval.json'}: damaged, cannot be read",
            f"{TINY_ARMS[1]} seed 1": f"{runs[TINY_ARMS[1], 1] / 'arm.json'}: damaged, cannot be read"}


@pytest.mark.parametrize("damage", ["random", "empty", "truncated"])
def test_damaged_run_files_fail_their_run_and_the_grid_goes_on(tmp_path, monkeypatch, capsys, damage):
    """A damaged last.ckpt once stopped the whole grid with a 25-line traceback, and a cut eval.json with one line
    that named no file: now each is its run's failure, named, and the others are scored and reported."""
    grid, out = tiny_grid(tmp_path), tmp_path / "out"
    plan = load_plan(grid, "tiny", seeds=2)
    expected = damage_runs(plan, out, damage)
    monkeypatch.setattr(runner, "train_command", lambda *a, **k: pytest.fail("nothing here is to be trained"))
    assert cli.main(["ablate", "--config", str(grid), "--preset", "tiny", "--seeds", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "| rope1d_flat-flat | 0.500 [0.50, 0.50] |" in captured.out
    listed = captured.err[captured.err.index("mmrope ablate: 3 of 4 runs failed (rerun to retry them):"):]
    lines = listed.splitlines()[1:]
    assert len(lines) == 3
    for line, (run, words) in zip(lines, expected.items()):
        assert line.startswith(f"  {run}: ") and words in line, line
    assert (out / "results.csv").exists()
    assert "delete it to score the run again" in lines[1] and f"delete {out / TINY_ARMS[1] / 'seed1'}" in lines[2]
    kept = (out / "ablate.log").read_text().splitlines()  # what stderr said, each line with its time, in OUT
    assert [line[20:] for line in kept] == captured.err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d tiny: 2 arms x 2 seeds = 4 runs .*", kept[0])

    stacked = dataclasses.replace(plan, engine="stacked")  # the same damage, an arm's seeds at a time
    expected = damage_runs(stacked, tmp_path / "stacked", damage)
    rows, failures = runner.run_ablation(stacked, tmp_path / "stacked")
    assert {(r["encoder"], r["seed"]) for r in rows} == {("rope1d_flat", 0)} and len(failures) == 3
    for line, (run, words) in zip(failures, expected.items()):
        assert line.startswith(f"{run}: ") and words in line, line


def test_a_run_folder_keeps_its_settings_however_the_base_is_spelled(tmp_path, monkeypatch):
    """A folder trained from the repository with ``configs/x.yaml`` is the same run when the grid is later named by
    its absolute path (it was refused as 'other settings'); other steps are still refused, in one line."""
    import json

    monkeypatch.chdir(ROOT)
    plan = load_plan("configs/ablation/shapes.yaml", "cpu-relations")
    run_dir = tmp_path / "rope2d-blind" / "seed0"
    runner._check_signature(run_dir, runner.run_signature(plan, "rope2d", "blind", 0))
    assert json.loads((run_dir / "arm.json").read_text())["base"] == "configs/shapes_relation_cpu.yaml"
    absolute = load_plan(ROOT / "configs/ablation/shapes.yaml", "cpu-relations")
    assert str(absolute.base) != str(plan.base)
    runner._check_signature(run_dir, runner.run_signature(absolute, "rope2d", "blind", 0))  # accepted
    longer = load_plan(ROOT / "configs/ablation/shapes.yaml", "cpu-relations", max_steps=3000)
    with pytest.raises(ValueError, match=r"seed0 was trained with other settings \(max_steps 1500 -> 3000\)"):
        runner._check_signature(run_dir, runner.run_signature(longer, "rope2d", "blind", 0))


def test_reuse_copies_finished_runs_of_another_folder_and_leaves_it_alone(tmp_path, monkeypatch, capsys):
    """``--reuse DIR``: a run DIR holds trained to this budget with these settings is copied and only scored here;
    one DIR holds unfinished, or with a link in it, is passed over in one line and trains here; DIR is not touched,
    nothing in --out is overwritten, and a DIR that is no folder or is --out itself is refused before anything."""
    from mmrope.train import cli as train

    grid, source, out = tiny_grid(tmp_path), tmp_path / "source", tmp_path / "out"
    plan = load_plan(grid, "tiny")
    finished, unfinished = (source / arm / "seed0" for arm in TINY_ARMS)
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(plan_module.train_args(plan, "rope2d", "mrope", 0, finished)) == 0
        assert train.main(plan_module.train_args(load_plan(grid, "tiny", max_steps=2), "rope1d_flat", "flat", 0,
                                                 unfinished)) == 0
    for (encoder, scheme), run_dir in zip((("rope2d", "mrope"), ("rope1d_flat", "flat")), (finished, unfinished)):
        runner._check_signature(run_dir, runner.run_signature(plan, encoder, scheme, 0))  # as the runner writes it
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    trained = []
    monkeypatch.setattr(runner, "train_command", lambda plan, encoder, *a, **k: trained.append(encoder) or
                        [sys.executable, "-c", "print('mmrope train: error: not here'); exit(1)"])

    args = ["ablate", "--config", str(grid), "--preset", "tiny", "--out", str(out), "--reuse", str(source)]
    assert cli.main(args) == 1  # the unfinished run trains here, and the stand-in trainer fails it
    err = capsys.readouterr().err
    assert f"rope2d-mrope: seed 0 copied from {source} (trained there with the same settings)" in err
    assert (f"rope1d_flat-flat seed 0: not taken from {source} (its last.ckpt is at step 2, not 4); it trains here"
            in err)
    assert trained == ["rope1d_flat"]
    assert (out / "rope2d-mrope/seed0/eval.json").is_file() and "| rope2d-mrope |" in (out / "results.md").read_text()
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before
    assert not list(out.glob("*/.seed0.*"))  # no half copy left behind

    # a run --out has is never replaced; a run with a link in it is not copied
    (unfinished / "checkpoints/elsewhere.ckpt").symlink_to("/etc/hostname")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "copied from" not in err and "rope2d-mrope seed 0: done before" in err
    assert "(its last.ckpt is at step 2, not 4)" not in err and "elsewhere.ckpt is a link" not in err  # --out has it
    shutil.rmtree(out / "rope1d_flat-flat")
    assert cli.main(args) == 1
    assert "elsewhere.ckpt is a link); it trains here" in capsys.readouterr().err

    fresh = tmp_path / "fresh"
    for into, bad, words in ((fresh, tmp_path / "nowhere", "no such folder (expected the --out of an earlier "
                                                            "mmrope ablate)"),
                             (out, out, "that is the --out folder itself, whose finished runs are kept anyway")):
        assert cli.main(args[:-3] + [str(into), "--reuse", str(bad)]) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"mmrope ablate: error: --reuse {bad}: {words}"
    assert not fresh.exists()
