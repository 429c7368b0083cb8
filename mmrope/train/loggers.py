"""Experiment trackers beside the CSV logs: TensorBoard and MLflow, chosen in a config's ``logging`` section.

The CSV logger always writes ``<run>/logs/version_N/metrics.csv`` (``curves.png`` and ``mmrope ablate`` read it).
``logging.tensorboard`` adds TensorBoard's event files in the same folder; ``logging.mlflow`` adds an MLflow run in
the tracking store it names, ``sqlite:///mlflow.db`` for a local file (MLflow's own default store, no server).
Every logger gets the training loss and the validation scores over the steps (``self.log``); :class:`LogRunConfig`
gives the trackers the run's resolved config and ``logging.tags`` (the ablation's arm and seed): TensorBoard as
hparams (its HPARAMS tab) and text, MLflow as params, run tags and the run's name.

    python train.py fit --config configs/debug.yaml --config configs/loggers/tensorboard.yaml
    python train.py fit --config configs/debug.yaml --config configs/loggers/mlflow.yaml \\
        --logging.tags '{"arm": "rope2d-mrope", "seed": 0}'

A ``trainer.logger`` of one's own (any Lightning logger) replaces these; it gets the config and tags all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback

from mmrope.errors import one_line

INSTALL = "pip install 'mmrope[loggers]'"


@dataclass
class LoggingConfig:
    """``logging``: the trackers that write beside the CSV logs, and what the run is tagged with."""

    # None: when the tensorboard package is installed (what runs did before this switch); true: required; false: off
    tensorboard: bool | None = None
    # an MLflow tracking URI; None: no MLflow. sqlite:///mlflow.db is a file in the folder training runs from, which
    # `mlflow ui` there reads; MLflow 3 refuses its older file: store unless MLFLOW_ALLOW_FILE_STORE=true
    mlflow: str | None = None
    experiment: str = "mmrope"  # the MLflow experiment the runs are filed under
    # {"arm": "rope2d-mrope", "seed": 0}: every logger gets them (mmrope ablate tags each run with its arm and seed)
    tags: dict[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self):
        if self.tensorboard not in (None, True, False):
            raise ValueError(f"logging.tensorboard={self.tensorboard!r}: expected true, false or null")
        if self.mlflow is not None and not (isinstance(self.mlflow, str) and self.mlflow.strip()):
            raise ValueError(f"logging.mlflow={self.mlflow!r}: expected an MLflow tracking URI such as "
                             "sqlite:///mlflow.db, or null")
        if not (isinstance(self.experiment, str) and self.experiment.strip()):
            raise ValueError(f"logging.experiment={self.experiment!r}: expected a non-empty name")
        for key, value in dict(self.tags or {}).items():
            if not (isinstance(key, str) and key.strip()) or not isinstance(value, str | int | float | bool):
                raise ValueError(f"logging.tags: {key!r}: {value!r}: expected names with a string or number each")


def run_loggers(root: str | Path, config: LoggingConfig) -> list:
    """The loggers of a run in ``root``: CSV always, then TensorBoard (same folder and version) and MLflow as
    ``config`` asks; a tracker asked for but not installed is one line saying what to install."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(root, name="logs")]
    tensorboard = config.tensorboard
    if tensorboard is not False and importlib.util.find_spec("tensorboard") is None:
        if tensorboard:
            raise ValueError(f"logging.tensorboard: true needs the tensorboard package: {INSTALL}")
        tensorboard = False
    if tensorboard is not False:
        # hparams are written by LogRunConfig (no hp_metric placeholder: the HPARAMS tab reads the run's scalars)
        loggers.append(TensorBoardLogger(root, name="logs", version=loggers[0].version, default_hp_metric=False))
    if config.mlflow:
        loggers.append(mlflow_logger(config.mlflow, config.experiment))
    return loggers


def mlflow_logger(uri: str, experiment: str):
    """Lightning's MLFlowLogger on the store ``uri``, with the store and the experiment made first under a lock: a
    new SQLite store creates its tables when first opened, and runs started at once (the ablation's ``parallel``)
    would otherwise all create them together and break the file."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ValueError(f"logging.mlflow needs MLflow: {INSTALL} (or pip install mlflow-skinny sqlalchemy alembic, "
                         "enough to write a sqlite:/// store)") from None
    from lightning.pytorch.loggers import MLFlowLogger

    try:
        with _store_lock(uri):
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                client.create_experiment(experiment)
        logger = MLFlowLogger(experiment_name=experiment, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - MlflowException, SQLAlchemy's errors, no sqlalchemy, a bad folder: one line
        raise ValueError(f"logging.mlflow={uri}: cannot open the store ({one_line(e, 300)})") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise ValueError(f"logging.mlflow={uri}: the experiment {experiment!r} was deleted there: restore it "
                         "(mlflow experiments restore) or choose another logging.experiment")
    return logger


def _store_lock(uri: str):
    """A lock for a store on this machine's disk (``sqlite:///path``, ``file:path``), kept in the temporary folder
    so that none is left beside the store; a server's URI needs none."""
    from filelock import FileLock  # torch's dependency

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif uri.startswith("file:"):
        path = Path(uri.removeprefix("file:").removeprefix("//"))
    else:
        return contextlib.nullcontext()
    path.absolute().parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    key = hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"mmrope-mlflow-{key}.lock")


class LogRunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` beside ``metrics.csv``, and the resolved config and ``logging.tags`` for the
    trackers: TensorBoard gets them as hparams (the session TensorBoard's HPARAMS tab lists, its metrics the run's
    own scalars) and as text; MLflow as params, tags and a run name made of the tags (unless its logger was given
    one); the CSV logger, whose folder holds ``config.yaml`` already, the tags in its ``hparams.yaml``; any other
    Lightning logger both, through ``log_hyperparams``. Runs on rank zero only, once per run."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        import yaml
        from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        tags = {k: _scalar(v) for k, v in ((config.get("logging") or {}).get("tags") or {}).items()}
        params = dict(flatten_config(config))
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                if tags:
                    logger.log_hyperparams({"tags": tags})
            elif isinstance(logger, TensorBoardLogger):
                _tensorboard_config(logger.experiment, params, text, tags)
            elif isinstance(logger, MLFlowLogger):
                logger.log_hyperparams(params)
                client, run = logger.experiment, logger.run_id
                for key, value in tags.items():
                    client.set_tag(run, key, str(value))
                if tags and getattr(logger, "_run_name", None) is None:
                    client.set_tag(run, "mlflow.runName", run_name(tags))
            else:
                logger.log_hyperparams({**params, **{f"tags.{k}": v for k, v in tags.items()}})


def run_name(tags: dict) -> str:
    """``arm=rope2d-mrope seed=0``: what MLflow lists a tagged run as."""
    return " ".join(f"{k}={v}" for k, v in tags.items())


def flatten_config(config: dict, prefix: str = ""):
    """(dotted key, value) for every setting, as ``--model.vision.dim`` names it; values a tracker can compare:
    numbers, booleans and strings as they are, null as ``"null"``, lists as JSON."""
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from flatten_config(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _scalar(value)


def _scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


def _tensorboard_config(writer, params: dict, text: str, tags: dict) -> None:
    from torch.utils.tensorboard.summary import hparams

    # only the session start: with no experiment summary, TensorBoard takes every scalar of the run as its metrics
    _, session_start, _ = hparams(params, {})
    writer._get_file_writer().add_summary(session_start)  # as Lightning's TensorBoardLogger.log_hyperparams does
    writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))  # markdown: a code block
    if tags:
        writer.add_text("tags", run_name(tags))
    writer.flush()
