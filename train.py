"""Train, validate, test or predict a captioner from a YAML config.

    python train.py fit --config configs/shapes_small.yaml
    python train.py fit --config configs/debug.yaml --model.vision.pos_encoding rope1d_flat
    python train.py fit --config configs/shapes_small.yaml --ckpt_path last        # resume where it stopped
    python train.py validate --config configs/shapes_small.yaml --ckpt_path last
    python train.py fit --config configs/debug.yaml --print_config                 # the full resolved config

A thin LightningCLI over mmrope.lit: `--model.*` are the model's config (mmrope.config), `--data.*` the data
module's, `--trainer.*` Lightning's Trainer. Checkpoints go to <trainer.default_root_dir>/checkpoints/.
"""

from __future__ import annotations

import os
import signal
import sys

from lightning.pytorch.cli import LightningCLI

from mmrope.lit import (
    AtomicCheckpointIO,
    CaptionDataModule,
    CaptionModule,
    NonFiniteLossError,
    TrainingInterrupted,
    default_callbacks,
)


class CaptionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # the data module cuts images into the model's patches, and the model reads the data's tokenizer
        parser.link_arguments("model.vision.patch_size", "data.patch_size")
        parser.link_arguments("model.vision.spatial_merge_size", "data.merge_size")
        parser.link_arguments("model.vision.temporal_patch_size", "data.temporal_patch_size")
        parser.link_arguments("data.tokenizer_state", "model.tokenizer", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        root = config.get("default_root_dir") or "runs/default"
        kwargs.setdefault("plugins", list(config.get("plugins") or []) + [AtomicCheckpointIO()])
        if config.get("logger") in (None, True):
            kwargs.setdefault("logger", default_loggers(root))
        callbacks = list(config.get("callbacks") or [])
        callbacks += [c for c in default_callbacks(root, self.datamodule.monitor)
                      if not any(isinstance(t, type(c)) for t in callbacks)]  # a config's own ModelCheckpoint wins
        kwargs.setdefault("callbacks", callbacks)
        return super().instantiate_trainer(**kwargs)


def default_loggers(root: str):
    """CSV always (the training loss at every logged step); TensorBoard too when it is installed."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(root, name="logs")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(root, name="logs", version=loggers[0].version))
    except ImportError:
        pass
    return loggers


def main(args: list[str] | None = None) -> int:
    if os.environ.get("MMROPE_DEBUG"):
        CaptionCLI(CaptionModule, CaptionDataModule, args=args, save_config_kwargs={"overwrite": True})
        return 0
    try:
        CaptionCLI(CaptionModule, CaptionDataModule, args=args, save_config_kwargs={"overwrite": True})
    except TrainingInterrupted as err:
        print(f"train.py: stopped by {err}", file=sys.stderr)
        return 128 + err.signum
    except (NonFiniteLossError, ValueError, OSError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
