"""Seeds trained together (``mmrope train stacked``) against each seed trained alone by train.py: the same losses,
checkpoints that load everywhere (and that Lightning refuses to resume, in one line), a non-finite loss that skips one
run only, an exact resume, the torch renderer's batches equal to Pillow's, and the ablation's stacked engine end to
end.

Tolerance: per-step training losses within 2e-6 of train.py's (measured: at most 7.2e-7 over 8 steps of the debug
model, 3 seeds, both stacking modes; the loop mode is sometimes exact), weights within 2e-5 after 8 steps (measured
4.4e-6). The runs differ from train.py's only in float rounding: torch.func's gradients, vmap's batched matmuls and
the math attention kernel sum in another order."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image

from mmrope import cli
from mmrope.ablation.plan import load_plan
from mmrope.train import cli as train
from mmrope.train import stacked
from mmrope.train.module import CaptionModule

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
STEPS = 8
LOSS_TOLERANCE = 2e-6
WEIGHT_TOLERANCE = 2e-5


def train_args(*extra: str, steps: int = STEPS) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.max_steps={steps}",
            "--trainer.log_every_n_steps=1", "--data.batch_size=8", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def logged(root: Path) -> dict[int, float]:
    values = {}
    for path in sorted(root.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            values |= {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    return values


def alone(root: Path, seed: int, *extra: str) -> dict[int, float]:
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(train_args(f"--seed_everything={seed}", f"--data.seed={seed}",
                                     f"--trainer.default_root_dir={root}", *extra)) == 0
    return logged(root)


def together(root: Path, *options: str, seeds=SEEDS, steps: int = STEPS) -> int:
    return stacked.main([*(f"--run={k}={root / f'seed{k}'}" for k in seeds), *options, "--",
                         *train_args(steps=steps)])


def assert_close(a: dict[int, float], b: dict[int, float], what: str) -> None:
    assert sorted(a) == sorted(b), what
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= LOSS_TOLERANCE, f"{what}: losses differ by up to {worst:.2e}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Each seed trained alone by train.py, and the three trained together (loop stacking)."""
    root = tmp_path_factory.mktemp("stacked")
    runs = {k: alone(root / f"alone{k}", k) for k in SEEDS}
    assert together(root / "loop", "--stack=loop") == 0
    return {"root": root, "alone": runs, "loop": {k: logged(root / "loop" / f"seed{k}") for k in SEEDS}}


def test_seeds_trained_together_match_each_trained_alone(reference, tmp_path):
    from mmrope.checkpoints import read_checkpoint
    from mmrope.inference import load

    assert together(tmp_path, "--stack=vmap") == 0
    for k in SEEDS:
        assert sorted(reference["alone"][k]) == list(range(STEPS))
        assert_close(reference["loop"][k], reference["alone"][k], f"seed {k}, loop")
        assert_close(logged(tmp_path / f"seed{k}"), reference["alone"][k], f"seed {k}, vmap")
    assert len({round(reference["alone"][k][0], 4) for k in SEEDS}) == 3  # three inits, three data orders

    mine, theirs = (read_checkpoint(r / "checkpoints/last.ckpt") for r in (tmp_path / "seed1",
                                                                           reference["root"] / "alone1"))
    assert mine[0].to_dict() == theirs[0].to_dict() and mine[1].to_dict() == theirs[1].to_dict()
    worst = max(float((mine[2][n] - theirs[2][n]).abs().max()) for n in theirs[2])
    assert worst <= WEIGHT_TOLERANCE, f"weights differ by up to {worst:.1e}"
    assert mine[3]["global_step"] == theirs[3]["global_step"] == STEPS
    adam, adam_alone = mine[3]["stacked"]["optimizer"], theirs[3]["optimizer_states"][0]  # each engine's own format
    assert len(adam["parameters"]) == sum(len(g["params"]) for g in adam_alone["param_groups"])
    assert adam["exp_avg"].numel() == sum(s["exp_avg"].numel() for s in adam_alone["state"].values())
    assert adam["lr"] == adam_alone["param_groups"][0]["lr"]  # the schedule's own number, not an imitation of it
    assert adam["step"] == STEPS and all(float(s["step"]) == STEPS for s in adam_alone["state"].values())
    assert CaptionModule.load_from_checkpoint(tmp_path / "seed1/checkpoints/last.ckpt", weights_only=True)
    captions = load(tmp_path / "seed1/checkpoints/last.ckpt", device="cpu").caption([Image.new("RGB", (32, 32))])
    assert len(captions) == 1 and isinstance(captions[0], str)
    with pytest.raises(ValueError, match=r"holds no training state .*\(mmrope train stacked \.\.\. --resume\)"):
        read_checkpoint(tmp_path / "seed1/checkpoints/last.ckpt", training_state=True)  # Lightning cannot resume it
    with pytest.raises(ValueError, match=r"holds no training state the stacked engine .* --ckpt_path"):
        read_checkpoint(reference["root"] / "alone1/checkpoints/last.ckpt", training_state=True, engine="stacked")


def test_a_nonfinite_loss_skips_that_run_alone(reference, tmp_path, monkeypatch):
    """Seed 1's batch at step 2 is poisoned: it skips that step as train.py does with on_nonfinite: skip (weights,
    moments and step count kept, the schedule moving on), and seeds 0 and 2 train as if nothing happened."""
    original = CaptionModule.training_step

    def poisoned(self, batch, batch_idx):
        if self.global_step == 2:
            batch = {**batch, "images": [torch.full_like(im, float("nan")) for im in batch["images"]]}
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CaptionModule, "training_step", poisoned)
    with pytest.warns(UserWarning, match="skipping batch"):
        skipped_alone = alone(tmp_path / "alone1", 1, "--model.on_nonfinite=skip")
    monkeypatch.setattr(CaptionModule, "training_step", original)
    skipped_alone.pop(2, None)  # Lightning logs the step before's loss again for a skipped step; the engine nothing

    from mmrope.train.stacked.data import StepBatches

    item = StepBatches.__getitem__

    def poison_run_1(self, i):
        batch = item(self, i)
        if batch["step"] == 2:
            batch["images"][1] = float("nan")
        return batch

    monkeypatch.setattr(StepBatches, "__getitem__", poison_run_1)
    assert stacked.main([*(f"--run={k}={tmp_path / f'seed{k}'}" for k in SEEDS), "--",
                         *train_args("--model.on_nonfinite=skip")]) == 0
    assert_close(logged(tmp_path / "seed1"), skipped_alone, "the poisoned run")
    for k in (0, 2):
        assert_close(logged(tmp_path / f"seed{k}"), reference["alone"][k], f"seed {k} beside it")
    steps = [torch.load(tmp_path / f"seed{k}/checkpoints/last.ckpt", weights_only=True)["stacked"]["optimizer"]["step"]
             for k in SEEDS]
    assert steps == [STEPS, STEPS - 1, STEPS]

    monkeypatch.setattr(StepBatches, "__getitem__", poison_run_1)  # on_nonfinite: raise fails that run only
    assert together(tmp_path / "raise") == 1
    assert not (tmp_path / "raise/seed1/checkpoints/last.ckpt").exists()
    assert all(torch.load(tmp_path / f"raise/seed{k}/checkpoints/last.ckpt", weights_only=True)["global_step"]
               == STEPS for k in (0, 2))


def test_an_interrupted_stack_resumes_exactly(reference, tmp_path, monkeypatch):
    from mmrope.train.stacked.step import StackedStep

    original = StackedStep.train_step

    def step(self, params, exp_avg, exp_avg_sq, adam_step, global_step, *batch):
        if int(global_step) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, params, exp_avg, exp_avg_sq, adam_step, global_step, *batch)

    monkeypatch.setattr(StackedStep, "train_step", step)
    assert together(tmp_path, "--stack=loop") == 128 + signal.SIGTERM
    monkeypatch.setattr(StackedStep, "train_step", original)
    assert all(torch.load(tmp_path / f"seed{k}/checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
               for k in SEEDS)
    assert together(tmp_path, "--stack=loop", "--resume") == 0
    for k in SEEDS:
        assert logged(tmp_path / f"seed{k}") == reference["loop"][k]  # bit for bit
    assert together(tmp_path / "nothing", "--resume") == 1  # nothing to resume from: one line


@pytest.mark.parametrize("config", ["debug.yaml", "clips_debug.yaml"])
def test_the_torch_renderer_gives_the_pillow_batches(tmp_path, config):
    from mmrope.train.stacked.data import to_device

    args = ["fit", "--config", str(ROOT / "configs" / config), "--data.batch_size=4", "--data.shapes.n_train=6",
            "--data.clips.n_train=6"]  # two batches an epoch, the second short
    runs = [(0, tmp_path / "a"), (5, tmp_path / "b")]
    pil, drawn = (stacked.StackedTrainer(runs, args, stacked.EngineOptions(renderer=r)) for r in ("pillow", "torch"))
    for i in (0, 1, 2):  # the first and the short last batch of epoch 0, the first of epoch 1
        a, b = to_device(pil.batches[i], pil.device), to_device(drawn.batches[i], drawn.device)
        for key in ("input_ids", "labels", "position_ids", "media_slots", "images"):
            assert torch.equal(a[key], b[key]), f"{config} step {i}: {key}"
    assert a["images"].shape[:2] == (2, 4) and b["input_ids"].shape[1] == a["input_ids"].shape[1]
    assert [len(pil.batches[i]["input_ids"][0]) for i in (0, 1)] == [4, 2]


def test_every_arm_of_the_gpu_grid_steps_stacked(tmp_path):
    """Each arm of the gpu preset (every registered encoder and scheme, resolved now): one vmapped step of two runs on
    the CPU, drawn by the torch renderer, gives each run the loss of its own model's forward."""
    import logging

    from mmrope.model.captioner import Layout
    from mmrope.train.stacked.data import to_device

    plan = load_plan(ROOT / "configs/ablation/shapes.yaml", "gpu")
    logging.disable(logging.WARNING)  # the still-axis warning of some schemes, once per model
    try:
        for encoder, scheme in plan.arms:
            args = ["fit", "--config", str(plan.base), "--trainer.accelerator=cpu", "--trainer.precision=32",
                    "--data.batch_size=4", "--data.num_workers=0", f"--model.vision.pos_encoding={encoder}",
                    f"--model.position_scheme={scheme}"]
            trainer = stacked.StackedTrainer([(0, tmp_path / "a"), (1, tmp_path / "b")], args,
                                             stacked.EngineOptions(stack="vmap", renderer="torch"))
            x = to_device(trainer.batches[0], trainer.device)
            own = [r.module.model(x["images"][i], x["input_ids"][i], labels=x["labels"][i],
                                  layout=Layout(x["position_ids"][i], None, x["media_slots"],
                                                r.module.model.scheme.attention_groups(x["input_ids"][i]))).loss.item()
                   for i, r in enumerate(trainer.runs)]  # before the step: run 0's model is the stack's template
            losses, _ = trainer.step(trainer.params, *trainer.state.tensors(), trainer.global_step, x["images"],
                                      x["input_ids"], x["labels"], x["position_ids"], x["media_slots"])
            assert losses.tolist() == pytest.approx(own, abs=LOSS_TOLERANCE), f"{encoder}-{scheme}"
    finally:
        logging.disable(logging.NOTSET)


def test_options_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="stack='sideways' is unknown"):
        stacked.EngineOptions(stack="sideways")
    assert stacked.main(["--run=0=x", "fit"]) == 1
    assert "usage: mmrope train stacked --run SEED=DIR" in capsys.readouterr().err
    assert stacked.main(["--run=zero", "--", "fit"]) == 1
    assert "expected SEED=DIR" in capsys.readouterr().err
    code = stacked.main(["--run=0=a", "--run=1=b", "--", *train_args("--model.vision.dim=66")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("mmrope train stacked: error: ") and "vision.head_dim=33" in err
    code = stacked.main(["--run=0=a", "--run=1=b", "--", *train_args("--model.vision.pos_encoding=rope2d_norm_aug")])
    err = capsys.readouterr().err
    assert code == 1 and "pos_encoding='rope2d_norm_aug' draws in training from its own generator" in err
    assert cli.main(["train", "stacked", "--run=0=x", "fit"]) == 1  # the same engine through `mmrope train`
    assert capsys.readouterr().err.startswith("mmrope train stacked: error: usage: mmrope train stacked")


def test_stacked_runs_never_replace_a_run(tmp_path, capsys):
    """--run 0=<a folder with a train.py run> without --resume overwrote its checkpoint, and --run 0=<s>/x
    --run 1=<s>/x kept only one of the two seeds."""
    last = tmp_path / "seed0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a train.py run's checkpoint")
    assert together(tmp_path, seeds=(0, 1)) == 1
    assert capsys.readouterr().err.strip() == (
        f"mmrope train stacked: error: {tmp_path / 'seed0'} holds a run already ({last}): continue it with --resume, "
        "start over with --overwrite (its checkpoints are deleted), or choose another folder")
    assert last.read_bytes() == b"a train.py run's checkpoint" and not (tmp_path / "seed1").exists()
    shared = tmp_path / "shared"
    assert stacked.main([f"--run=0={shared}", f"--run=1={shared}", "--", *train_args()]) == 1
    assert f"--run 0={shared} and --run 1={shared} share one folder" in capsys.readouterr().err
    assert not shared.exists()
    assert together(tmp_path, "--resume", "--overwrite", seeds=(0, 1)) == 1
    assert "give one of the two" in capsys.readouterr().err

    assert together(tmp_path, "--overwrite", seeds=(0, 1), steps=2) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 2


def tiny_grid(tmp_path: Path, preset: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(f"""\
        encoders: [rope2d, rope1d_flat]
        schemes: [mrope, flat]
        seeds: 2
        eval: {{splits: [test, compositional], factors: [0.5, 1], n: 4, batch_size: 8, max_new_tokens: 6}}
        presets:
          tiny:
            base: {ROOT / "configs/debug.yaml"}
            arms: [rope2d-mrope, rope1d_flat-flat]
            max_steps: 3
            PRESET
            train:
              data.batch_size: 8
              trainer.limit_val_batches: 0
              trainer.log_every_n_steps: 1
              trainer.enable_model_summary: false
        """).replace("PRESET", preset.replace("\n", "\n    ")))
    return path


def test_the_ablation_trains_each_arms_seeds_together(tmp_path, capsys):
    """engine: stacked with parallel: 2: both arms at once, each arm's two seeds in one process; the same folders,
    signatures, markers and results as one run at a time, and a rerun touches nothing."""
    grid, out = tiny_grid(tmp_path, "engine: stacked\nparallel: 2"), tmp_path / "out"
    plan = load_plan(grid, "tiny")
    assert (plan.engine, plan.parallel) == ("stacked", 2)
    args = ["ablate", "--config", str(grid), "--preset", "tiny", "--out", str(out)]
    assert cli.main(args + ["--dry-run"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all("-m mmrope train stacked --run=0=" in c and "--run=1=" in c for c in commands)

    assert cli.main(args) == 0, (out / "rope2d-mrope/worker.log").read_text()[-2000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2  # arms x seeds x splits x factors
    assert {(r["encoder"], r["seed"]) for r in rows} == {(e, str(k)) for e in ("rope2d", "rope1d_flat") for k in (0, 1)}
    for arm in ("rope2d-mrope", "rope1d_flat-flat"):
        assert (out / arm / "stacked.log").exists() and (out / arm / "worker.log").exists()
        for k in (0, 1):
            run = out / arm / f"seed{k}"
            assert json.loads((run / "arm.json").read_text())["engine"] == "stacked"
            marker = json.loads((run / "eval.json").read_text())
            assert marker["steps"] == 3 and marker["trained_with_seeds"] == [0, 1]
            assert sorted(logged(run)) == [0, 1, 2]

    stamps = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*.ckpt"))
    capsys.readouterr()
    assert cli.main(args) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*.ckpt")) == stamps
    assert capsys.readouterr().err.count("seeds 0, 1 done before") == 2


def test_engine_keys_of_a_preset(tmp_path):
    grid = ROOT / "configs/ablation/shapes.yaml"
    gpu = load_plan(grid, "gpu")
    assert gpu.engine == "stacked" and gpu.parallel > 1
    assert load_plan(grid, "cpu").engine == "lightning"
    assert load_plan(tiny_grid(tmp_path, "parallel: 2"), "tiny").parallel == 2  # train.py runs side by side too
    for preset, message in (("engine: jax", "engine='jax' is unknown"),
                            ("parallel: 0", "parallel=0: expected a positive whole number"),
                            ("engine: stacked\nengine_options: {stack: sideways}", "stack='sideways' is unknown"),
                            ("engine_options: {compile: default}", "add engine: stacked"),
                            ("engine: stacked\nengine_options: {speed: 11}", "unknown key 'speed'")):
        with pytest.raises(ValueError, match=message):
            load_plan(tiny_grid(tmp_path, preset), "tiny")
