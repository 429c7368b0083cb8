"""Fixtures shared by test files: a tiny trained checkpoint, made once per session."""

import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """``last.ckpt`` of the debug model after 30 steps (about 15 s on 2 cores): real weights, a real tokenizer and
    the checkpoint layout train.py writes. Its captions are poor; tests compare them, they do not judge them."""
    from mmrope.train import cli as train

    root = tmp_path_factory.mktemp("trained")
    args = ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=30", "--trainer.val_check_interval=30", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.batch_size=16",
            "--data.shapes.n_val=8", "--model.max_new_tokens=6"]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI warns when it also sees pytest's arguments
        assert train.main(args) == 0
    return root / "checkpoints" / "last.ckpt"
