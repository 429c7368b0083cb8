"""Train, validate, test or predict a captioner from a YAML config: ``mmrope train``, Lightning's engine.

    mmrope train fit --config configs/shapes_small.yaml
    mmrope train fit --config configs/debug.yaml --model.vision.pos_encoding rope1d_flat
    mmrope train fit --config configs/shapes_small.yaml --ckpt_path last        # resume where it stopped
    mmrope train validate --config configs/shapes_small.yaml --ckpt_path last
    mmrope train fit --config configs/debug.yaml --print_config                 # the full resolved config
    mmrope train fit --config configs/debug.yaml --overwrite                    # a new run over runs/debug's

A thin LightningCLI over :mod:`mmrope.train.module` and :mod:`mmrope.train.datamodule`: ``--model.*`` are the
model's config (:mod:`mmrope.model.config`), ``--data.*`` the data module's, ``--trainer.*`` Lightning's Trainer.
The run itself (seed, data module, model) is built by :func:`mmrope.train.run.build_run`, as the stacked engine
builds its runs; the parser builds only what the trainer is given. Checkpoints go to
<trainer.default_root_dir>/checkpoints/; a new ``fit`` refuses a folder that holds a run's ``last.ckpt`` unless it
continues it (``--ckpt_path last``) or replaces it (``--overwrite``).

``python -m mmrope.train`` and, in a checkout, ``python train.py`` are the same command: every message starts with
``mmrope train:`` whichever way it was started (:data:`mmrope.train.PROG`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from mmrope.errors import one_line
from mmrope.model.config import ARCHITECTURE_KEYS, CaptionerConfig
from mmrope.model.decoder_schemes import SCHEMES
from mmrope.train import PROG
from mmrope.train.callbacks import TrainingInterrupted, default_callbacks, resume_hint
from mmrope.train.checkpoint_io import AtomicCheckpointIO
from mmrope.train.config_files import check_config_files, config_error, explicit_model_keys, flatten_keys
from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.loggers import LoggingConfig, LogRunConfig
from mmrope.train.module import CaptionModule, NonFiniteLossError
from mmrope.train.run import build_run, run_loggers

DESCRIPTION = ("Train, validate, test or predict a captioner from YAML configs with Lightning (`mmrope train fit "
               "--help` lists every key). `mmrope train stacked --run SEED=DIR ... -- fit ...` trains several seeds "
               "of one config at once, as one set of batched weights.")
# the data module cuts images into the model's patches at the model's training size: model.vision.X -> data.Y
VISION_TO_DATA = {"patch_size": "patch_size", "spatial_merge_size": "merge_size",
                  "temporal_patch_size": "temporal_patch_size", "image_size": "image_size"}
# Lightning's warnings about what mmrope does on purpose: silenced while `mmrope train` runs, never at import, so a
# user's own loop that imports mmrope keeps all of them
EXPECTED_WARNINGS = (
    # the sampler resumes through CaptionDataModule.state_dict, which Lightning cannot see
    ".*dataloader is not resumable.*",
    # a shard stream's len() is exact over any number of workers (mmrope.data.shards plans them)
    ".*IterableDataset. has .__len__. defined.*",
    # on_before_batch_transfer belongs to the module, where the model that lays out the batch is
    "You have overridden `on_before_batch_transfer` in `LightningModule`",
    # a new run in a folder that holds one is refused (refuse_to_replace): a non-empty one is being resumed
    "Checkpoint directory .* exists and is not empty",
)


@contextlib.contextmanager
def expected_warnings_silenced():
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


class CaptionCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        given = kwargs.get("args")
        self.command_line = list(sys.argv[1:] if given is None else given)
        self.explicit_model_keys = explicit_model_keys(self.command_line)
        # a parse error comes back as an exception, said in one line (parse_arguments), not under 130 lines of usage
        kwargs["parser_kwargs"] = {"exit_on_error": False, "prog": PROG, "description": DESCRIPTION,
                                   **(kwargs.get("parser_kwargs") or {})}
        self._overwrite: Path | None = None
        kwargs.setdefault("save_config_callback", LogRunConfig)  # config.yaml, and the config and tags for trackers
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        with warnings.catch_warnings():
            # main() passes the command line itself (with configs/... resolved to the package's copy), which
            # LightningCLI warns about when the process has arguments of its own: they are the same ones
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as err:
                parsers = getattr(self, "_subcommand_parsers", {})
                subcommand = next((a for a in self.command_line if a in parsers), None)
                keys = set((parsers[subcommand] if subcommand else parser).get_defaults().keys())
                raise ValueError(config_error(str(err), self.command_line, keys)) from None

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.add_argument("--overwrite", type=bool, nargs="?", const=True, default=False,
                                help="start a new run in a folder that holds one: its checkpoints are deleted")
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        for source, target in VISION_TO_DATA.items():  # written once, in the model's config
            parser.link_arguments(f"model.vision.{source}", f"data.{target}")
        # the scheme decides the media block's layout: Pixtral's rows end in break tokens
        parser.link_arguments("model.position_scheme", "data.row_breaks", compute_fn=scheme_row_breaks)
        parser.link_arguments("data.tokenizer_state", "model.tokenizer", apply_on="instantiate")
        parser.add_class_arguments(LoggingConfig, "logging")  # TensorBoard, MLflow and tags: mmrope.train.loggers

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path`` to the one file Lightning will read, check it, and reconcile the model config with
        the checkpoint's; refuse a new ``fit`` into a folder that holds a run.

        Lightning would resume the newest ``last*.ckpt`` (``last-v1.ckpt`` beside the ``last.ckpt`` checked here),
        read a bad file with a long traceback and, for a file path, silently replace the model config with the
        checkpoint's, explicit ``--model.*`` flags included. Here the exact file is handed on, read safely (one line
        for an empty, torn, crafted or foreign file), settings left at their defaults take the checkpoint's values
        (with a note), and a setting the config or a flag gives explicitly that disagrees with the checkpoint is
        refused, naming it: the weights would not fit, or the run would not be the one asked for."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        root = Path(config.trainer.get("default_root_dir") or "runs/default")
        asked = config.get("ckpt_path")
        path = checkpoint_file(asked, root)
        if asked in ("last", "hpc", None):  # Lightning gets the file checked below, not a keyword to resolve its way
            config["ckpt_path"] = None if path is None else str(path)
        if asked == "last" and path is None:
            starts = "a new run starts" if subcommand == "fit" else "the model is not trained"
            print(f"{PROG}: note: --ckpt_path last: no {root / 'checkpoints' / 'last.ckpt'} yet, so {starts}",
                  file=sys.stderr)
        if subcommand == "fit":
            self._overwrite = refuse_to_replace(root, path, bool(config.get("overwrite")))
            config["overwrite"] = False  # the saved config.yaml must not replace the run when it is run again
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
            print(f"{PROG}: note: model settings left at their defaults are taken from {path}: {shown}",
                  file=sys.stderr)
        self._checkpoint_weights = (path, state)

    def before_fit(self) -> None:
        """``--overwrite``: the old run's checkpoints go once the new run is built, just before it trains, so a
        mistake in the new config leaves them alone; its logs stay, in their own version folders. Under DDP every
        rank gets here, before the ranks connect: before the new run can have written anything."""
        if self._overwrite is None:
            return
        old = sorted(self._overwrite.glob("*.ckpt"))
        for path in old:
            path.unlink(missing_ok=True)
        if old:
            print(f"{PROG}: note: --overwrite: deleted the {len(old)} checkpoints in {self._overwrite}",
                  file=sys.stderr)

    def instantiate_classes(self) -> None:
        """The run from :func:`build_run`, as the stacked engine builds its runs; the parser instantiates only what
        the trainer is given (callbacks, loggers, plugins named by class path)."""
        config = self.config.get(str(self.subcommand), self.config)
        self.model, self.datamodule = build_run(config.as_dict())
        trainer_only = config.clone()
        del trainer_only["model"], trainer_only["data"]
        instantiated = self._parser(self.subcommand).instantiate(trainer_only)
        self.config_init = self.config.clone()
        if self.subcommand:
            self.config_init[self.subcommand] = instantiated
        else:
            self.config_init = instantiated
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

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
            kwargs.setdefault("logger", run_loggers(root, self._get(self.config_init, "logging")))
        callbacks = list(config.get("callbacks") or [])
        callbacks += [c for c in default_callbacks(root, self.datamodule.monitor)
                      if not any(isinstance(t, type(c)) for t in callbacks)]  # a config's own ModelCheckpoint wins
        kwargs.setdefault("callbacks", callbacks)
        return super().instantiate_trainer(**kwargs)


def scheme_row_breaks(position_scheme: str) -> bool:
    """Whether the scheme's media rows end in break tokens: ``data.row_breaks``, linked from the model's scheme."""
    return SCHEMES[position_scheme].row_breaks


def checkpoint_file(ckpt_path: str | None, root: str | Path) -> Path | None:
    """The one file ``--ckpt_path`` resumes or evaluates: ``last`` is ``<root>/checkpoints/last.ckpt`` (None when
    there is none yet: a new run starts), ``hpc`` the highest ``<root>/hpc_ckpt_<n>.ckpt`` (as on SLURM without
    ``--ckpt_path``, where Lightning resumes it by itself); ``best`` and ``registry`` are left to Lightning."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if ckpt_path in ("best", "registry") or (not ckpt_path and not SLURMEnvironment.detect()):
        return None
    if ckpt_path == "last":
        path = Path(root) / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None
    if ckpt_path in ("hpc", None):
        saved = {int(n): p for p in Path(root).glob("hpc_ckpt_*.ckpt")
                 if (n := p.stem.removeprefix("hpc_ckpt_")).isdigit()}
        if not saved and ckpt_path == "hpc":
            raise ValueError(f"--ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {root}")
        return saved[max(saved)] if saved else None
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return path


def refuse_to_replace(root: Path, resumed: Path | None, overwrite: bool) -> Path | None:
    """Refuse a ``fit`` that would replace the run in ``root``: a new one (or one continued from another folder's
    checkpoint) where ``checkpoints/last.ckpt`` exists -> the checkpoint folder ``--overwrite`` empties, if any.

    Without this, the new run's ``last.ckpt`` replaced the old one's and its ``best-*.ckpt`` joined the old run's,
    which ``mmrope serve`` then offered side by side."""
    folder = root / "checkpoints"
    last = folder / "last.ckpt"
    ours = resumed is not None and (resumed.resolve().parent == folder.resolve()
                                    or resumed.name.startswith("hpc_ckpt_"))
    if overwrite:
        if ours:
            raise ValueError(f"--overwrite deletes the checkpoints in {folder}, which --ckpt_path {resumed} would "
                             "resume: give one of the two")
        return folder if folder.is_dir() else None
    if last.is_file() and not ours:
        raise ValueError(f"{root} holds a run already ({last}): continue it with --ckpt_path last, start over "
                         "with --overwrite (its checkpoints are deleted), or choose another --trainer.default_root_dir")
    return None


def reconcile_model_config(model, saved: dict, path: Path, explicit: set[str]) -> list[str]:
    """Make the parsed ``model`` namespace describe the checkpoint's architecture -> the settings taken from it.

    A setting that no config file or flag gave (``explicit``: dotted keys under ``model.``) takes the checkpoint's
    value; one given explicitly with another value is a conflict, refused in one line. A setting the config leaves
    to be derived (``text.mrope_section``) that derives to the checkpoint's value is taken without a word."""
    given = {key: _plain(model.get(key)) for key in ARCHITECTURE_KEYS}
    try:
        derived = CaptionerConfig.from_dict({k: v for k, v in given.items() if v is not None}).to_dict()
    except ValueError:  # a config the checkpoint's values will complete
        derived = {}
    taken = []
    for dotted, value in flatten_keys(saved):
        # text.vocab_size is checked with the weights
        if dotted == "text.vocab_size" or dotted.split(".")[0] not in ARCHITECTURE_KEYS:
            continue
        mine = _lookup(given, dotted)
        if mine == value:
            continue
        if _is_explicit(dotted, explicit) and mine is not None:
            raise ValueError(f"--ckpt_path {path} was trained with model.{dotted}={value!r}, but the config asks for "
                             f"{mine!r}: drop that setting to use the checkpoint's, or start a new run")
        model[dotted] = value
        if _lookup(derived, dotted) != value:
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


def main(args: list[str] | None = None) -> int:
    if os.environ.get("MMROPE_DEBUG"):
        with expected_warnings_silenced():
            CaptionCLI(CaptionModule, CaptionDataModule, args=args, save_config_kwargs={"overwrite": True})
        return 0
    try:
        args = check_config_files(sys.argv[1:] if args is None else list(args))
        with expected_warnings_silenced():
            CaptionCLI(CaptionModule, CaptionDataModule, args=args, save_config_kwargs={"overwrite": True})
    except TrainingInterrupted as err:
        print(f"{PROG}: stopped by {err}", file=sys.stderr)
        return 128 + err.signum
    except (NonFiniteLossError, ValueError, OSError, MisconfigurationException) as err:
        print(f"{PROG}: error: {one_line(err)}{resume_hint(err)}", file=sys.stderr)
        return 1
    return 0


