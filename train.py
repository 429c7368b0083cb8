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
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mmrope.lit import (
    AtomicCheckpointIO,
    CaptionDataModule,
    CaptionModule,
    NonFiniteLossError,
    TrainingInterrupted,
    default_callbacks,
)

MODEL_KEYS = ("vision", "text", "position_scheme", "tokens_per_second")  # what the weights' shapes depend on


class CaptionCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        given = kwargs.get("args")
        self.explicit_model_keys = explicit_model_keys(sys.argv[1:] if given is None else list(given))
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # the data module cuts images into the model's patches, and the model reads the data's tokenizer
        parser.link_arguments("model.vision.patch_size", "data.patch_size")
        parser.link_arguments("model.vision.spatial_merge_size", "data.merge_size")
        parser.link_arguments("model.vision.temporal_patch_size", "data.temporal_patch_size")
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
        if dotted == "text.vocab_size":  # from the tokenizer, checked with the weights
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


def explicit_model_keys(args: list[str]) -> set[str]:
    """The ``model.`` settings a command line gives, by flag or in a ``--config`` file, as dotted keys under
    ``model`` (``vision.dim``); a whole section given at once counts as every key under it."""
    import yaml

    keys: set[str] = set()
    for i, arg in enumerate(args):
        flag, _, _ = arg.partition("=")
        if flag.startswith("--model."):
            keys.add(flag.removeprefix("--model."))
        name = _config_file_argument(args, i)
        if name is not None:
            try:
                config = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # check_config_files has said so already
            model = config.get("model") if isinstance(config, dict) else None
            if isinstance(model, dict):
                keys.update(dotted for dotted, _ in _flatten(model))
    return keys


def _config_file_argument(args: list[str], i: int) -> str | None:
    """The file ``args[i]`` names when it is ``--config=FILE``, or ``--config`` / ``-c`` followed by FILE."""
    arg = args[i]
    name = arg.split("=", 1)[1] if arg.startswith("--config=") else args[i + 1] if (
        arg in ("--config", "-c") and i + 1 < len(args)) else None
    if name is None or name.lstrip().startswith("{"):  # an inline YAML/JSON string, not a file
        return None
    return name


def _is_explicit(dotted: str, explicit: set[str]) -> bool:
    parts = dotted.split(".")
    return any(".".join(parts[:n]) in explicit for n in range(1, len(parts) + 1))


def _plain(value):
    return value.as_dict() if hasattr(value, "as_dict") else value


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _lookup(d, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return list(d) if isinstance(d, tuple) else d


def check_config_files(args: list[str]) -> None:
    """Read every ``--config`` file first, so a YAML mistake names its file and line (jsonargparse would say
    ``<unicode string>``) and a missing file is one line."""
    import yaml

    for i in range(len(args)):
        name = _config_file_argument(args, i)
        if name is None:
            continue
        path = Path(name)
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"--config {name}: no such file") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            context = getattr(e, "context", None)
            raise ValueError(f"{name}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None


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
        check_config_files(sys.argv[1:] if args is None else list(args))
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
