"""How Lightning writes and reads training checkpoints: through :mod:`mmrope.checkpoints`, as the stacked engine
does, so both are atomic and neither ever unpickles code."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmrope.checkpoints import save_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are never torn and never run code.

    Saving is :func:`mmrope.checkpoints.save_checkpoint` (temporary file, fsync, rename; a full disk is one
    ``OSError`` line). Loading always passes ``weights_only=True``: a checkpoint holds tensors and plain data, so a
    crafted file's pickled objects are refused rather than run, whatever torch's default or
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
