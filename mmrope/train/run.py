"""One training run, whichever engine trains it: :func:`build_run` makes its data module and model from its resolved
config, :func:`run_loggers` the logs it writes.

``mmrope train fit`` (Lightning, :mod:`mmrope.train.cli`) and ``mmrope train stacked`` (several seeds as one set of
batched weights, :mod:`mmrope.train.stacked`) both build their runs here, so a run's initial weights, tokenizer and
data order follow from its config alone, not from the engine: the stacked engine's seed k is the run
``mmrope train fit --seed_everything k --data.seed k`` trains, built by the same lines.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import seed_everything

from mmrope.train.datamodule import CaptionDataModule
from mmrope.train.module import CaptionModule


def build_run(config: dict) -> tuple[CaptionModule, CaptionDataModule]:
    """The run a resolved config describes (:func:`mmrope.train.config_reader.read_config`'s dict, or the CLI's
    parsed one) -> (module, data module).

    Every random generator is seeded with ``seed_everything`` first (as LightningCLI seeds before it builds; its
    ``true``, a random seed, is resolved to a number before this), then the data module is built, then the model,
    whose vocabulary and checkpoints take the data module's tokenizer. ``model.compile`` is left to the engine:
    a Trainer compiles the model (:meth:`CaptionModule.configure_model`), the stacked engine its whole step."""
    seed = config.get("seed_everything")
    if seed is not None and not isinstance(seed, bool):
        seed_everything(seed, workers=True, verbose=False)
    datamodule = CaptionDataModule(**config["data"])
    module = CaptionModule(**{**config["model"], "tokenizer": datamodule.tokenizer_state})
    return module, datamodule


def run_loggers(root: str | Path, logging=None) -> list:
    """Where a run logs: ``<root>/logs/version_N/metrics.csv`` always (the training loss at every logged step), and
    the trackers its ``logging`` section asks for (TensorBoard when installed, unless it says otherwise; MLflow):
    :mod:`mmrope.train.loggers`."""
    from mmrope.model.config import as_config
    from mmrope.train.loggers import LoggingConfig
    from mmrope.train.loggers import run_loggers as trackers

    return trackers(root, as_config(LoggingConfig, logging, "logging."))
