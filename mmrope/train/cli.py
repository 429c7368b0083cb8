"""Train, validate, test or predict a captioner from a YAML config: ``python -m mmrope.train``.

    python train.py fit --config configs/shapes_small.yaml
    python train.py fit --config configs/debug.yaml --model.vision.pos_encoding rope1d_flat
    python train.py fit --config configs/shapes_small.yaml --ckpt_path last        # resume where it stopped
    python train.py validate --config configs/shapes_small.yaml --ckpt_path last
    python train.py fit --config configs/debug.yaml --print_config                 # the full resolved config

A thin LightningCLI over :mod:`mmrope.train.module` and :mod:`mmrope.train.datamodule`: ``--model.*`` are the
model's config (:mod:`mmrope.model.config`), ``--data.*`` the data module's, ``--trainer.*`` Lightning's Trainer.
Checkpoints go to <trainer.default_root_dir>/checkpoints/. ``python train.py`` in a checkout is the same command.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mmrope.model.decoder_schemes import SCHEMES
from mmrope.train.callbacks import TrainingInterrupted, default_callbacks
from mmrope.train.checkpoint_io import AtomicCheckpointIO
from mmrope.train.config_reader import _flatten, check_config_files, explicit_model_keys
from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.module import CaptionModule, NonFiniteLossError

MODEL_KEYS = ("vision", "text", "position_scheme", "tokens_per_second")  # what the weights' shapes depend on
# the data module cuts images into the model's patches at the model's training size: model.vision.X -> data.Y
VISION_TO_DATA = {"patch_size": "patch_size", "spatial_merge_size": "merge_size",
                  "temporal_patch_size": "temporal_patch_size", "image_size": "image_size"}


class CaptionCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        given = kwargs.get("args")
        self.explicit_model_keys = explicit_model_keys(sys.argv[1:] if given is None else list(given))
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        for source, target in VISION_TO_DATA.items():  # written once, in the model's config
            parser.link_arguments(f"model.vision.{source}", f"data.{target}")
        # the scheme decides the media block's layout: Pixtral's rows end in break tokens
        parser.link_arguments("model.position_scheme", "data.row_breaks", compute_fn=scheme_row_breaks)
        parser.link_arguments("data.tokenizer_state", "model.tokenizer", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before Lightning reads it, and reconcile the model config with the checkpoint's.

        Lightning would read a bad file with a long traceback and, for a file path, silently replace the model
        config with the checkpoint's, explicit ``--model.*`` flags included. Here the file is read safely (one line
        for an empty, torn, crafted or foreign file), settings left at their defaults take the checkpoint's values
        (with a note), and a setting the config or a flag gives explicitly that disagrees with the checkpoint is
        refused, naming it: the weights would not fit, or the run would not be the one asked for."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        path = checkpoint_file(config.get("ckpt_path"), config.trainer.get("default_root_dir") or "runs/default")
        if path is None:
            return
        from mmrope.checkpoints import read_checkpoint

        saved, _, state, _ = read_checkpoint(path, training_state=subcommand == "fit")
        taken = reconcile_model_config(config.model, saved.to_dict(), path, self.explicit_model_keys)
        for source, target in VISION_TO_DATA.items():  # the links ran at parse time, before the checkpoint spoke
            config[f"data.{target}"] = config[f"model.vision.{source}"]
        config["data.row_breaks"] = scheme_row_breaks(config["model.position_scheme"])
        if taken:
            shown = ", ".join(taken[:4]) + (f" and {len(taken) - 4} more" if len(taken) > 4 else "")
            print(f"train.py: note: model settings left at their defaults are taken from {path}: {shown}",
                  file=sys.stderr)
        self._checkpoint_weights = (path, state)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if getattr(self, "_checkpoint_weights", None) is not None:
            from mmrope.checkpoints import check_weights

            path, state = self._checkpoint_weights
            check_weights(self.model.model, state, path)  # one line, where Lightning would print a traceback
            self._checkpoint_weights = None

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


def scheme_row_breaks(position_scheme: str) -> bool:
    """Whether the scheme's media rows end in break tokens: ``data.row_breaks``, linked from the model's scheme."""
    return SCHEMES[position_scheme].row_breaks


def checkpoint_file(ckpt_path: str | None, root: str) -> Path | None:
    """The file ``--ckpt_path`` names: ``last`` is ``<root>/checkpoints/last.ckpt`` (None when there is none yet:
    Lightning then starts from scratch, as it says); Lightning's other keywords are left to it."""
    if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
        return None
    if ckpt_path == "last":
        path = Path(root) / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return path


def reconcile_model_config(model, saved: dict, path: Path, explicit: set[str]) -> list[str]:
    """Make the parsed ``model`` namespace describe the checkpoint's architecture -> the settings taken from it.

    A setting that no config file or flag gave (``explicit``: dotted keys under ``model.``) takes the checkpoint's
    value; one given explicitly with another value is a conflict, refused in one line."""
    given = {key: _plain(model.get(key)) for key in MODEL_KEYS}
    taken = []
    for dotted, value in _flatten(saved):
        if dotted == "text.vocab_size" or dotted.split(".")[0] not in MODEL_KEYS:  # vocab: checked with the weights
            continue
        mine = _lookup(given, dotted)
        if mine == value:
            continue
        if _is_explicit(dotted, explicit) and mine is not None:
            raise ValueError(f"--ckpt_path {path} was trained with model.{dotted}={value!r}, but the config asks for "
                             f"{mine!r}: drop that setting to use the checkpoint's, or start a new run")
        model[dotted] = value
        taken.append(f"model.{dotted}={value!r}")
    return taken


def _is_explicit(dotted: str, explicit: set[str]) -> bool:
    parts = dotted.split(".")
    return any(".".join(parts[:n]) in explicit for n in range(1, len(parts) + 1))


def _plain(value):
    return value.as_dict() if hasattr(value, "as_dict") else value


def _lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return list(d) if isinstance(d, tuple) else d


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
        args = check_config_files(sys.argv[1:] if args is None else list(args))
        CaptionCLI(CaptionModule, CaptionDataModule, args=args, save_config_kwargs={"overwrite": True})
    except TrainingInterrupted as err:
        print(f"train.py: stopped by {err}", file=sys.stderr)
        return 128 + err.signum
    except (NonFiniteLossError, ValueError, OSError) as err:
        print(f"train.py: error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
