"""One way to read a run's config everywhere: training, the stacked engine, ``mmrope eval --data``, the ablation's
grids.

A run's config is what ``mmrope train`` resolves from its command line: ``--config`` files stacked in order,
``--key=value`` overrides, the defaults of the model and data module, and the links between them (the data module
cuts images into the model's patches at the model's size). :func:`read_config` resolves exactly that, with the
command's own parser (:class:`mmrope.train.cli.CaptionCLI`) and without building anything, so no caller re-reads
YAML with defaults of its own; :func:`mmrope.train.run.build_run` then builds what it describes.
"""

from __future__ import annotations

import sys

from mmrope.train.cli import CaptionCLI
from mmrope.train.config_files import check_config_files
from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.module import CaptionModule


def read_config(args: list[str]) -> dict:
    """The resolved config of a train command line without its subcommand (``["--config", "a.yaml",
    "--data.seed=1"]``) -> a plain dict with ``model``, ``data``, ``trainer`` and ``seed_everything``; one
    ``ValueError`` line when it does not parse, naming the key and the file or flag that set it."""

    class Reader(CaptionCLI):
        def _parse_ckpt_path(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

    args = check_config_files(args)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when the process has arguments of its own
    try:
        reader = Reader(CaptionModule, CaptionDataModule, run=False, args=args, save_config_callback=None)
    except SystemExit:
        raise ValueError(f"the train config {' '.join(args)} does not parse (see the message above)") from None
    finally:
        sys.argv = argv
    return reader.config.as_dict()
