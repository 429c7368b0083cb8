"""Training from a config, as a user runs it: every shipped YAML parses, a tiny run writes what it promises,
an interrupted run resumes exactly, a non-finite loss stops with a clear message, and DDP keeps ranks in step."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmrope.train import cli as train
from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.module import CaptionModule

ROOT = Path(__file__).resolve().parents[1]
# mmrope ablate's grids, not train.py configs: tests/test_ablation.py and tests/test_clips_end_to_end.py read them
GRIDS = (ROOT / "configs/ablation/shapes.yaml", ROOT / "configs/ablation/clips.yaml")
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p not in GRIDS)


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


def test_unknown_config_key_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", "--config", str(ROOT / "configs/debug.yaml"), "--model.vision.pos_encodng=rope2d"])
    assert exit_.value.code != 0
    assert "pos_encodng" in capsys.readouterr().err


def test_bad_config_value_is_one_line_error(tmp_path, capsys):
    code = train.main(tiny_args(tmp_path, "--model.vision.dim=66"))
    err = capsys.readouterr().err
    assert code == 1 and "vision.head_dim=33" in err and "rope2d" in err and "Traceback" not in err
    assert err.count("train.py: error:") == 1


def test_tiny_run_writes_checkpoints_logs_and_samples(tmp_path, capsys):
    assert train.main(tiny_args(tmp_path, "--trainer.val_check_interval=4")) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train.py: validation at")]
    relation = logged(tmp_path, "val/relation")
    assert last == [last[0]] and last[0].startswith("train.py: validation at step 8,")  # one line, at the end
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


def test_resume_after_sigterm_continues_exactly(tmp_path, monkeypatch):
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
    assert train.main(tiny_args(tmp_path / "resumed", *extra, "--ckpt_path=last", steps=steps)) == 0
    resumed = logged(tmp_path / "resumed", "train/loss")
    assert sorted(resumed) == list(range(steps))
    assert resumed == straight
    ckpts = tmp_path / "resumed" / "checkpoints"  # the interrupted step's file is overwritten, not kept beside
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == steps
    assert sorted(p.name for p in ckpts.glob("last*")) == ["last.ckpt"]


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
    assert "train.py: error: no training sample of epoch 0 could be read (6 skipped" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_too_many_unreadable_samples_stop_the_run(tmp_path, capsys):
    data = _broken_images(tmp_path / "some_bad", bad=2, good=4)
    args = tiny_args(tmp_path / "run", "--data.dataset=captions", f"--data.train={data}", f"--data.val={data}",
                     "--data.batch_size=3", "--trainer.limit_val_batches=0", "--data.max_skipped_fraction=0.1",
                     steps=8)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "2 of the 6 training samples drawn so far could not be read, over data.max_skipped_fraction=0.1" in err
    assert train.main([*args, "--data.max_skipped_fraction=0.5"]) == 0  # a third bad is within a limit of half


def test_config_file_mistakes_name_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  vision: [dim: 3\n")
    assert train.main(["fit", "--config", str(broken)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"train.py: error: {broken} line 3") and "invalid YAML" in err and "\n" not in err
    assert train.main(["fit", "--config", str(tmp_path / "nowhere.yaml")]) == 1
    assert "--config " + str(tmp_path / "nowhere.yaml") + ": no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, words", [("--model.optim.lr=-1", "model.optim.lr=-1.0: expected a positive"),
                                         ("--model.optim.betas=[0.9, 1.5]", "model.optim.betas"),
                                         ("--model.optim.min_lr_ratio=2", "model.optim.min_lr_ratio=2.0")])
def test_bad_optimiser_settings_name_the_field(tmp_path, capsys, flag, words):
    assert train.main(tiny_args(tmp_path, flag, steps=1)) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("train.py: error:") == 1


def test_the_decoder_mlp_width_follows_the_configs_dim():
    """jsonargparse takes its defaults from a TextConfig(); a width derived there (for dim 128) stuck to every
    config that set dim but not hidden_dim: shapes_small's decoder had a 352-wide MLP instead of 256."""
    cli = train.CaptionCLI(CaptionModule, CaptionDataModule, run=False,
                           args=["--config", str(ROOT / "configs/shapes_small.yaml")])
    assert cli.model.model.text.blocks[0].mlp.fc2.in_features == 256
