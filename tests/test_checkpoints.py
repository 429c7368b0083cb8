"""Checkpoints that hold what they say and never run code: ``last.ckpt`` is the last step after a finished and after a
resumed run; a new run never replaces an old one unasked; ``--ckpt_path`` resumes the very file it checked; a crafted
pickle is refused even when torch is told to allow pickles; every bad file, a model setting that disagrees with the
checkpoint, a full disk and a broken export end in one line; an export is whole or absent."""

from __future__ import annotations

import errno
import io
import json
import os
import random
from pathlib import Path

import pytest
import torch
from test_train import ROOT, tiny_args

from mmrope import checkpoints
from mmrope.checkpoints import read_exported, write_exported
from mmrope.inference import load
from mmrope.train import cli as train
from mmrope.train.checkpoint_io import AtomicCheckpointIO

MARKER_NAME = "pwned"


class Payload:
    """What a crafted checkpoint would run on unpickling: it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_last_ckpt_holds_the_final_step_and_a_resume_overwrites_it(tmp_path):
    """Validation at step 3 and 6 of 7: Lightning alone leaves last.ckpt at the last new best, and writes
    last-v1.ckpt beside it when a run resumes."""
    assert train.main(tiny_args(tmp_path, "--trainer.val_check_interval=3", steps=7)) == 0
    assert step_of(tmp_path / "checkpoints/last.ckpt") == 7
    assert train.main(tiny_args(tmp_path, "--trainer.val_check_interval=3", "--ckpt_path=last", steps=11)) == 0
    assert step_of(tmp_path / "checkpoints/last.ckpt") == 11
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("last*")) == ["last.ckpt"]


def test_a_new_run_refuses_a_folder_that_holds_one(tmp_path, capsys):
    """A second fresh fit into a folder replaced its last.ckpt without a word, and its best-*.ckpt joined the first
    run's, which mmrope serve then offered side by side."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert train.main(tiny_args(run, "--trainer.val_check_interval=2", steps=2)) == 0
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    assert sorted(before) == ["best-2.ckpt", "last.ckpt"]
    capsys.readouterr()
    assert train.main(tiny_args(run, "--trainer.val_check_interval=3", steps=3)) == 1
    assert capsys.readouterr().err.strip() == (
        f"mmrope train: error: {run} holds a run already ({ckpts / 'last.ckpt'}): continue it with --ckpt_path last, "
        "start over with --overwrite (its checkpoints are deleted), or choose another --trainer.default_root_dir")
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(before["last.ckpt"])
    assert train.main(tiny_args(run, f"--ckpt_path={elsewhere}", steps=3)) == 1  # nor continued from another file
    assert "holds a run already" in capsys.readouterr().err
    assert train.main(tiny_args(run, "--overwrite", "--ckpt_path=last", steps=3)) == 1
    assert "--overwrite deletes the checkpoints in" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before

    assert train.main(tiny_args(run, "--trainer.val_check_interval=3", "--overwrite", steps=3)) == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-3.ckpt", "last.ckpt"]  # none of the first run's
    assert step_of(ckpts / "last.ckpt") == 3
    saved = sorted(run.glob("logs/version_*/config.yaml"))[-1].read_text()
    assert "overwrite: false" in saved  # run again, the saved config continues nothing and replaces nothing


def test_ckpt_path_last_and_hpc_resume_the_file_they_check(tmp_path, capsys):
    """Lightning resumed the newest last*.ckpt, so a last-v1.ckpt beside last.ckpt (which turn-2 folders hold) was
    read unchecked: 47 lines of traceback for a crafted file, 85 for another architecture. --ckpt_path hpc was not
    checked at all."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert train.main(tiny_args(run, steps=2)) == 0
    torch.save({"state_dict": {}, "payload": Payload(tmp_path / MARKER_NAME)}, ckpts / "last-v1.ckpt")  # the newest
    assert train.main(tiny_args(run, "--ckpt_path=last", steps=3)) == 0
    assert step_of(ckpts / "last.ckpt") == 3 and not (tmp_path / MARKER_NAME).exists()
    capsys.readouterr()

    assert train.main(tiny_args(run, "--ckpt_path=hpc", steps=4)) == 1
    assert capsys.readouterr().err.strip() == f"mmrope train: error: --ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {run}"
    (run / "hpc_ckpt_1.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes())
    (run / "hpc_ckpt_2.ckpt").write_bytes(b"")  # the highest: the one Lightning resumes
    assert train.main(tiny_args(run, "--ckpt_path=hpc", steps=4)) == 1
    err = capsys.readouterr().err
    assert "hpc_ckpt_2.ckpt" in err and "empty file" in err and err.count("\n") == 1


def test_a_crafted_pickle_is_refused_not_run(tmp_path, monkeypatch, capsys):
    """torch < 2.6 defaults to unpickling anything, and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD asks for it on any torch:
    every path that reads a checkpoint must still refuse."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / MARKER_NAME
    evil = tmp_path / "run" / "checkpoints" / "last.ckpt"  # found by --ckpt_path last, as a resume would
    evil.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": Payload(marker)}, evil)

    assert train.main(tiny_args(tmp_path / "run", "--ckpt_path=last")) == 1
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="pickled Python objects"):
        load(evil)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, as long as nothing runs
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


def test_bad_checkpoint_files_stop_train_py_with_one_line(tmp_path, trained_checkpoint, capsys):
    good = torch.load(trained_checkpoint, weights_only=True)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "truncated.ckpt").write_bytes(trained_checkpoint.read_bytes()[:4000])
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    narrower = {**good["mmrope"]["config"], "vision": {**good["mmrope"]["config"]["vision"], "dim": 32}}
    torch.save({**good, "mmrope": {**good["mmrope"], "config": narrower}}, tmp_path / "other_architecture.ckpt")
    weights_only = {k: v for k, v in good.items() if k not in ("optimizer_states", "loops")}
    torch.save(weights_only, tmp_path / "weights_only.ckpt")
    cases = {"empty.ckpt": "empty file", "random.ckpt": "cannot be read as a PyTorch checkpoint",
             "truncated.ckpt": "torn or truncated", "foreign.ckpt": "no 'mmrope' entry",
             "other_architecture.ckpt": "vision.patch_embed.weight has shape (64, 3, 8, 8), the config expects "
                                        "(32, 3, 8, 8)",
             "weights_only.ckpt": "holds no training state", "missing.ckpt": "no such checkpoint file"}
    for name, words in cases.items():
        command = "validate" if name == "other_architecture.ckpt" else "fit"
        code = train.main([command, f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false",
                           f"--ckpt_path={tmp_path / name}"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("mmrope train: error:")]
        assert code == 1 and len(lines) == 1 and words in lines[0] and name in lines[0], (name, err)
        assert "Traceback" not in err


def test_model_settings_are_reconciled_with_the_checkpoint(tmp_path, trained_checkpoint, capsys):
    """An explicit setting that disagrees is refused; settings left at their defaults take the checkpoint's values,
    and train.py says so."""
    args = ["validate", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--ckpt_path={trained_checkpoint}", "--data.shapes.n_val=4",
            "--model.max_new_tokens=4"]
    assert train.main([*args, "--model.vision.dim=128"]) == 1  # 128 is the default, but given: refused
    err = capsys.readouterr().err
    assert "model.vision.dim=64, but the config asks for 128" in err and err.count("\n") == 1
    assert train.main(["validate", "--config", str(ROOT / "configs/shapes_small.yaml"), *args[1:]]) == 1
    assert "but the config asks for" in capsys.readouterr().err
    assert train.main(args) == 0
    assert "model settings left at their defaults are taken from" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"the previous checkpoint")
    (folder / ".saving-999999999.tmp").write_bytes(b"left by a process killed mid-save")
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nmore lines of C++ context")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as e:
        AtomicCheckpointIO().save_checkpoint({"a": 1}, folder / "last.ckpt")
    assert "cannot write checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert (folder / "last.ckpt").read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # its own and the stale temporary are gone

    assert train.main(tiny_args(tmp_path / "run", steps=2)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmrope train:")]
    assert len(lines) == 1 and "cannot write checkpoint" in lines[0] and "Traceback" not in err
    assert not list((tmp_path / "run/checkpoints").glob(".saving-*"))
    monkeypatch.setattr(torch, "save", real_save)


class NearlyFullDisk(io.FileIO):
    """A disk with ``room`` bytes left: the write that crosses it fails with ENOSPC, as the kernel says it, and
    close has nothing left to flush. torch's writer reported it as ``[enforce fail at inline_container.cc:672]
    . unexpected pos``."""

    room = 1000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "open", lambda path, mode: NearlyFullDisk(path, mode), raising=False)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError) as e:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000), "steps": list(range(100))}, target)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == f"[Errno 28] cannot write checkpoint {target}: No space left on device"
    assert list(target.parent.iterdir()) == []

    assert train.main(tiny_args(tmp_path / "run", steps=2)) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmrope train:")]
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert lines == [f"mmrope train: error: [Errno 28] cannot write checkpoint {last}: No space left on device"]


def test_export_is_whole_or_absent(trained_checkpoint, tmp_path, monkeypatch):
    import safetensors.torch

    pipeline = load(trained_checkpoint)
    out = tmp_path / "exported"
    real = safetensors.torch.save_model

    def full_disk(model, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    with pytest.raises(OSError, match="cannot write the export .*exported: No space left on device"):
        pipeline.export(out)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    monkeypatch.setattr(safetensors.torch, "save_model", real)
    pipeline.export(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_model", full_disk)
    with pytest.raises(OSError):
        pipeline.export(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]


@pytest.mark.parametrize("field, value, words", [
    ("dim", 96.0, "text.dim=96.0: expected a whole number"),
    ("dim", "64", "text.dim='64': expected a whole number"),
    ("norm_eps", "Infinity", "Infinity is not a number a config may hold"),
    ("mrope_section", [4, 6.5, 5.5], "expected a list of whole numbers"),
])
def test_exported_config_json_is_type_checked(trained_checkpoint, tmp_path, field, value, words):
    out = load(trained_checkpoint).export(tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    config["text"][field] = value
    text = json.dumps(config).replace('"Infinity"', "Infinity")  # as json.dumps writes float("inf")
    (out / "config.json").write_text(text)
    with pytest.raises(ValueError) as e:
        read_exported(out)
    assert words in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)


def test_write_exported_refuses_a_file_in_the_way(trained_checkpoint, tmp_path):
    pipeline = load(trained_checkpoint)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        write_exported(tmp_path / "taken", pipeline.config, pipeline.model, pipeline.tokenizer)
