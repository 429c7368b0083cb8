"""Training from a config, as a user runs it: every shipped YAML parses and a bad one is one line, a tiny run writes
what it promises, an interrupted or killed run resumes exactly, a new run never replaces an old one unasked, a
non-finite loss or unreadable data stops with a clear message (keeping the last finished step), and DDP keeps ranks
in step."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from mmrope.train import cli as train
from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.module import CaptionModule

ROOT = Path(__file__).resolve().parents[1]


def is_grid(path: Path) -> bool:
    """mmrope ablate's grids (a top-level ``presets:``), not training configs: tests/test_ablation.py reads them."""
    return any(line.startswith("presets:") for line in path.read_text().splitlines())


CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not is_grid(p))


def tiny_args(root: Path, *extra: str, steps: int = 8) -> list[str]:
    """The debug config, shrunk further: a few steps on 32 px images."""
    return ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={steps}", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.shapes.n_val=8", "--data.batch_size=8",
            "--model.max_new_tokens=6", *extra]


def logged(root: Path, name: str) -> dict[int, float]:
    """step -> value of one metric from the run's CSV log(s)."""
    values = {}
    for path in sorted(root.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(name):
                    values[int(row["step"])] = float(row[name])
    return values


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses(path, capsys):
    args = ["fit", "--config", str(path), "--print_config"]
    if path.parent.name == "ablation":  # an arm: only the keys it ablates
        args = ["fit", "--config", str(ROOT / "configs/shapes_small.yaml"), "--config", str(path), "--print_config"]
    with pytest.raises(SystemExit) as exit_:
        train.main(args)
    assert exit_.value.code in (0, None)
    assert "pos_encoding" in capsys.readouterr().out


@pytest.mark.parametrize("config, flag, words", [
    ("- model\n- data\n", None, "{file}: expected a mapping of keys (model:, data:, trainer:, ...), found a list"),
    ("model:\n  vison: {dim: 64}\n", None, "{file}: model.vison.dim: unknown key (did you mean model.vision?)"),
    ("model:\n  position_scheme: ropey\n", None, "{file}: model.position_scheme: expected one of 'mrope', "),
    (None, "--model.vision.pos_encodng=rope2d", "--model.vision.pos_encodng: unknown key (did you mean "
                                                 "model.vision.pos_encoding?)"),
    (None, "--trainer.max_steps=-5", "`max_steps` must be a non-negative integer or -1"),
], ids=["list", "unknown-key", "unknown-scheme", "unknown-flag", "negative-max-steps"])
def test_config_mistakes_are_one_line_naming_file_and_key(tmp_path, capsys, config, flag, words):
    """Before: 128-130 lines of usage above jsonargparse's message, which named no file; a 33-line traceback for
    a negative max_steps."""
    file = tmp_path / "mine.yaml"
    extra = ["--config", str(file)] if config else [flag]
    if config:
        file.write_text(config)
    code = train.main(["fit", "--config", str(ROOT / "configs/debug.yaml"), *extra,
                       f"--trainer.default_root_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert code == 1 and lines == [lines[0]] and lines[0].startswith("mmrope train: error: "), err
    assert words.format(file=file) in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_billion_laughs_config_is_refused_at_once(tmp_path, capsys):
    """413 bytes of nested anchors: jsonargparse expanded them for 54 s and 3.5 GB and printed 464 MB."""
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    file = tmp_path / "laughs.yaml"
    file.write_text("\n".join([*laughs, "model: {vision: *i}"]) + "\n")
    start = time.perf_counter()
    assert train.main(["fit", "--config", str(file)]) == 1
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 5 and len(err) < 300
    assert err.strip() == f"mmrope train: error: {file}: more than 10000 values once its aliases are expanded " \
                          "(nested anchors?): refused"


def test_bad_config_value_is_one_line_error(tmp_path, capsys):
    code = train.main(tiny_args(tmp_path, "--model.vision.dim=66"))
    err = capsys.readouterr().err
    assert code == 1 and "vision.head_dim=33" in err and "rope2d" in err and "Traceback" not in err
    assert err.count("mmrope train: error:") == 1


def test_one_way_in_and_one_program_name(tmp_path, capsys):
    """`mmrope train`, `python -m mmrope.train` and a checkout's train.py are one command, whose messages and usage
    say `mmrope train` however it was started (they said `train.py:` from a wheel that has no train.py)."""
    from mmrope import cli

    missing = tmp_path / "missing.yaml"
    assert cli.main(["train", "fit", "--config", str(missing)]) == 1
    assert capsys.readouterr().err.strip() == f"mmrope train: error: --config {missing}: no such file"
    with pytest.raises(SystemExit):
        cli.main(["train", "fit", "--help"])  # LightningCLI's own help, under the command's name
    assert capsys.readouterr().out.startswith("usage: mmrope train [options] fit")
    assert "train" in cli.build_parser().format_help()
    proc = subprocess.run([sys.executable, "-m", "mmrope.train", "fit", "--config", str(missing)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip() == f"mmrope train: error: --config {missing}: no such file"


def test_tiny_run_writes_checkpoints_logs_and_samples(tmp_path, capsys):
    assert train.main(tiny_args(tmp_path, "--trainer.val_check_interval=4")) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mmrope train: validation at")]
    relation = logged(tmp_path, "val/relation")
    assert last == [last[0]] and last[0].startswith("mmrope train: validation at step 8,")  # one line, at the end
    assert f"relation {relation[max(relation)]:.3f}" in last[0]  # the last validation's score, as logged
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "last.ckpt").exists() and list(ckpts.glob("best-*.ckpt"))
    assert not list(ckpts.glob(".saving-*"))  # atomic writes leave no partial files
    losses = logged(tmp_path, "train/loss")
    assert sorted(losses) == list(range(8))  # the loss at every step
    assert logged(tmp_path, "val/relation") and logged(tmp_path, "val/cider")  # each logged at the validations
    assert list(tmp_path.glob("logs/version_*/samples/val_step*.png"))
    assert list(tmp_path.glob("logs/version_*/curves.png"))  # beside metrics.csv: the loss and validation curves
    checkpoint = torch.load(ckpts / "last.ckpt", weights_only=True)  # no pickled objects
    assert checkpoint["mmrope"]["config"]["vision"]["pos_encoding"] == "rope2d"
    assert checkpoint["mmrope"]["tokenizer"]["kind"] in ("word", "byte")
    module = CaptionModule.load_from_checkpoint(ckpts / "last.ckpt", weights_only=True)
    assert module.config.to_dict() == checkpoint["mmrope"]["config"]


def test_override_changes_the_model(tmp_path):
    assert train.main(tiny_args(tmp_path, "--model.vision.pos_encoding=rope1d_flat",
                                "--model.position_scheme=flat", steps=2)) == 0
    config = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["mmrope"]["config"]
    assert config["vision"]["pos_encoding"] == "rope1d_flat" and config["position_scheme"] == "flat"


def test_resume_after_sigterm_continues_exactly(tmp_path, monkeypatch, capsys):
    """Shuffling and augmentation on; SIGTERM mid-epoch; the resumed losses equal the uninterrupted ones."""
    extra = ["--data.augment=true", "--data.shapes.n_train=48", "--trainer.val_check_interval=5"]
    steps = 14  # 48 samples / batch 8 = 6 steps an epoch: the stop lands mid-epoch 1, the run crosses epoch 2
    assert train.main(tiny_args(tmp_path / "straight", *extra, steps=steps)) == 0
    straight = logged(tmp_path / "straight", "train/loss")

    original = CaptionModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CaptionModule, "training_step", training_step)
    assert train.main(tiny_args(tmp_path / "resumed", *extra, steps=steps)) == 128 + signal.SIGTERM
    monkeypatch.setattr(CaptionModule, "training_step", original)
    first = logged(tmp_path / "resumed", "train/loss")
    assert max(first) == 8  # stopped right after the step in flight
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(tiny_args(tmp_path / "resumed", *extra, "--ckpt_path=last", steps=steps)) == 0
    assert not [w for w in caught if "args parameter" in str(w.message)]  # sys.argv holds pytest's arguments
    assert "taken from" not in capsys.readouterr().err  # nothing changed: no note on mrope_section
    resumed = logged(tmp_path / "resumed", "train/loss")
    assert sorted(resumed) == list(range(steps))
    assert resumed == straight
    ckpts = tmp_path / "resumed" / "checkpoints"  # the interrupted step's file is overwritten, not kept beside
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == steps
    assert last["CaptionDataModule"] == {"epoch": 2, "batches": 2}  # 14 = 6 + 6 + 2; it said epoch 3 before
    assert sorted(p.name for p in ckpts.glob("last*")) == ["last.ckpt"]


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from mmrope.train import cli as train
from mmrope.train.callbacks import LastAndBestCheckpoint

write = LastAndBestCheckpoint.on_validation_end

def on_validation_end(self, trainer, pl_module):
    write(self, trainer, pl_module)
    time.sleep(120)  # the parent's SIGKILL lands here, the validation-time last.ckpt on disk, as after a crash

LastAndBestCheckpoint.on_validation_end = on_validation_end
sys.exit(train.main(sys.argv[1:]))
"""


def test_resume_after_sigkill_at_a_validation_continues_exactly(tmp_path, request):
    """A crash, an out-of-memory kill or kill -9 leaves only the last validation's last.ckpt, which held no data
    position (the trainer was validating): the resumed run restarted its epoch, and its losses drifted."""
    extra = ["--data.augment=true", "--data.shapes.n_train=48", "--trainer.val_check_interval=4"]
    steps = 10  # 6 steps an epoch: the validation at step 4 is mid-epoch 0
    # the killed child trains on one thread: so do the runs here, or float rounding alone tells them apart
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    assert train.main(tiny_args(tmp_path / "straight", *extra, steps=steps)) == 0
    straight = logged(tmp_path / "straight", "train/loss")

    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(root=str(ROOT))))
    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as output:
        child = subprocess.Popen([sys.executable, str(script), *tiny_args(run, *extra, steps=steps)], cwd=tmp_path,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=output)
        try:
            deadline = time.monotonic() + 120
            while not last.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint.get("CaptionDataModule") == {"epoch": 0, "batches": 4}

    assert train.main(tiny_args(run, *extra, "--ckpt_path=last", steps=steps)) == 0
    resumed = {step: loss for step, loss in logged(run, "train/loss").items() if step >= 4}
    assert sorted(resumed) == list(range(4, steps))
    assert resumed == {step: straight[step] for step in resumed}


def test_validating_during_training_leaves_the_training_run_unchanged(tmp_path):
    """A learning curve is of the run the preset scores: validating every few steps, on more or fewer scenes, takes
    nothing from the training data's random stream (the sin-cos curve of docs/ablation.md read 0.68 at step 2000
    where the preset's run, not validated, read 1.00: not from this)."""
    extra = ["--data.augment=true", "--data.shapes.n_train=48"]
    assert train.main(tiny_args(tmp_path / "validated", *extra, "--trainer.val_check_interval=3",
                                "--data.shapes.n_val=16", steps=9)) == 0
    assert train.main(tiny_args(tmp_path / "plain", *extra, "--trainer.limit_val_batches=0", steps=9)) == 0
    validated, plain = logged(tmp_path / "validated", "train/loss"), logged(tmp_path / "plain", "train/loss")
    assert sorted(plain) == list(range(9)) and validated == plain


def test_nonfinite_loss_stops_with_the_step_or_skips(tmp_path, monkeypatch, capsys):
    original = CaptionModule.training_step

    def poisoned(self, batch, batch_idx):
        if self.global_step == 2:
            for p in self.model.parameters():
                p.data.fill_(float("nan"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CaptionModule, "training_step", poisoned)
    assert train.main(tiny_args(tmp_path / "raise", steps=4)) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 2" in err and "Traceback" not in err

    calls = {"n": 0}

    def one_bad_batch(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 2:
            batch = {**batch, "images": [torch.full_like(im, float("nan")) for im in batch["images"]]}
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CaptionModule, "training_step", one_bad_batch)
    with pytest.warns(UserWarning, match="skipping batch"):
        assert train.main(tiny_args(tmp_path / "skip", "--model.on_nonfinite=skip", steps=4)) == 0
    assert len(logged(tmp_path / "skip", "train/loss")) == 4


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from mmrope.train import cli as train
from mmrope.train.module import CaptionModule

def on_train_end(self):
    flat = torch.cat([p.detach().flatten() for p in self.parameters()])
    torch.save(flat, {out!r} + f"/weights_rank{{self.global_rank}}.pt")

CaptionModule.on_train_end = on_train_end
sys.exit(train.main(sys.argv[1:]))
"""


def test_two_process_ddp_on_cpu_keeps_ranks_identical(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), out=str(tmp_path))))
    args = tiny_args(tmp_path / "run", "--trainer.strategy=ddp", "--trainer.devices=2", "--data.shapes.n_val=5",
                     "--trainer.val_check_interval=4", "--data.eval_batch_size=2", steps=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    # 5 validation samples over 2 ranks: the sampler pads to 6, the metrics count each sample once
    assert set(logged(tmp_path / "run", "val/num_samples").values()) == {5.0}


def test_trains_on_real_caption_files(tmp_path):
    """The imagefolder format with native-resolution resizing: images of different sizes in one batch."""
    samples = ROOT / "data/samples"
    args = tiny_args(tmp_path, "--data.dataset=captions", f"--data.train={samples}",
                     f"--data.val={samples / 'captions.csv'}", "--data.resize=native", "--data.max_pixels=4096",
                     "--data.batch_size=3", "--data.eval_batch_size=6", "--trainer.val_check_interval=2", steps=2)
    assert train.main(args) == 0
    assert logged(tmp_path, "val/cider") and not logged(tmp_path, "val/relation")
    assert (tmp_path / "checkpoints/last.ckpt").exists()


def _broken_images(folder: Path, bad: int, good: int = 0) -> Path:
    """An imagefolder of ``bad`` unreadable and ``good`` readable images."""
    from PIL import Image

    folder.mkdir(parents=True)
    rows = []
    for i in range(bad + good):
        name = f"img{i}.png"
        if i < bad:
            (folder / name).write_text("not an image")
        else:
            Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / name)
        rows.append(f'{{"file_name": "{name}", "text": "red square"}}')
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_training_on_unreadable_data_stops_with_one_line(tmp_path):
    """Before, every batch came back empty, no step was taken and the run cycled through empty epochs forever."""
    data = _broken_images(tmp_path / "all_bad", bad=6)
    args = tiny_args(tmp_path / "run", "--data.dataset=captions", f"--data.train={data}", f"--data.val={data}",
                     "--data.batch_size=3", "--trainer.limit_val_batches=0", steps=4)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 1
    assert "mmrope train: error: no training sample of epoch 0 could be read (6 skipped" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_too_many_unreadable_samples_stop_the_run(tmp_path, capsys):
    data = _broken_images(tmp_path / "some_bad", bad=2, good=4)
    args = tiny_args(tmp_path / "run", "--data.dataset=captions", f"--data.train={data}", f"--data.val={data}",
                     "--data.batch_size=3", "--trainer.limit_val_batches=0", "--data.max_skipped_fraction=0.1",
                     steps=8)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "2 of the 6 training samples drawn so far could not be read, over data.max_skipped_fraction=0.1" in err
    assert f"(saved {tmp_path / 'run/checkpoints/last.ckpt'} at step 2: once the data is fixed, continue" in err
    # a third bad is within a limit of half: the run goes on from where it stopped
    assert train.main([*args, "--data.max_skipped_fraction=0.5", "--ckpt_path=last"]) == 0


def _move_images_at_step(monkeypatch, folder: Path, step: int) -> None:
    """Move a caption set's images away during training step ``step``, as a user's cleanup might."""
    original = CaptionModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step:
            for image in folder.glob("*.png"):
                image.rename(image.with_suffix(".moved"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CaptionModule, "training_step", training_step)


@pytest.mark.parametrize("stop", ["raise", "skip", "skip-mid-epoch"])
def test_a_stop_for_bad_data_keeps_the_last_finished_step(tmp_path, monkeypatch, capsys, stop):
    """Images moved away mid-run: with on_bad_image raise the loader stops the run, with skip the share of
    skipped samples does (judged at an epoch's end, or every CHECK_EVERY steps). Before, last.ckpt stayed at the last
    validation (here there is none, so there was no last.ckpt at all): a stop at step 284 kept step 200."""
    from mmrope.train.callbacks import BadDataGuard

    data = _broken_images(tmp_path / "images", bad=0, good=12)
    extra = ["--data.dataset=captions", f"--data.train={data}", f"--data.val={data}", "--data.batch_size=3",
             "--trainer.limit_val_batches=0", f"--data.on_bad_image={stop.split('-')[0]}"]  # 4 steps an epoch
    steps = 10
    if stop == "raise":
        assert train.main(tiny_args(tmp_path / "straight", *extra, steps=steps)) == 0
    if stop == "skip-mid-epoch":
        monkeypatch.setattr(BadDataGuard, "CHECK_EVERY", 1)
    _move_images_at_step(monkeypatch, data, 5)  # in epoch 1: its batches 2 and 3 are lost
    run = tmp_path / "run"
    assert train.main(tiny_args(run, *extra, steps=steps)) == 1
    err = capsys.readouterr().err
    # raise: steps 0-5; skip: an empty batch still counts as a step, stopped at the end of epoch 1 (8 steps) or
    # when its first empty batch (step 6) was judged
    trained = {"raise": 6, "skip": 8, "skip-mid-epoch": 7}[stop]
    assert f"(saved {run / 'checkpoints/last.ckpt'} at step {trained}: once the data is fixed, continue with " \
           "--ckpt_path last)" in err and "Traceback" not in err
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == trained

    monkeypatch.undo()
    for image in data.glob("*.moved"):
        image.rename(image.with_suffix(".png"))
    assert train.main(tiny_args(run, *extra, "--ckpt_path=last", steps=steps)) == 0
    resumed = logged(run, "train/loss")
    assert sorted(resumed) == list(range(steps))
    if stop == "raise":  # stopped between steps: the run goes on as if nothing happened
        assert resumed == logged(tmp_path / "straight", "train/loss")


def test_config_file_mistakes_name_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  vision: [dim: 3\n")
    assert train.main(["fit", "--config", str(broken)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmrope train: error: {broken} line 3") and "invalid YAML" in err and "\n" not in err
    assert train.main(["fit", "--config", str(tmp_path / "nowhere.yaml")]) == 1
    assert "--config " + str(tmp_path / "nowhere.yaml") + ": no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, words", [("--model.optim.lr=-1", "model.optim.lr=-1.0: expected a positive"),
                                         ("--model.optim.betas=[0.9, 1.5]", "model.optim.betas"),
                                         ("--model.optim.min_lr_ratio=2", "model.optim.min_lr_ratio=2.0")])
def test_bad_optimiser_settings_name_the_field(tmp_path, capsys, flag, words):
    assert train.main(tiny_args(tmp_path, flag, steps=1)) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("mmrope train: error:") == 1


def test_the_decoder_mlp_width_follows_the_configs_dim():
    """jsonargparse takes its defaults from a TextConfig(); a width derived there (for dim 128) stuck to every
    config that set dim but not hidden_dim: shapes_small's decoder had a 352-wide MLP instead of 256."""
    cli = train.CaptionCLI(CaptionModule, CaptionDataModule, run=False,
                           args=["--config", str(ROOT / "configs/shapes_small.yaml")])
    assert cli.model.model.text.blocks[0].mlp.fc2.in_features == 256
