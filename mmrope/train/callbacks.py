"""Callbacks every training run gets: ``last.ckpt`` that is the last step and ``best-<step>.ckpt``, a clean stop on
Ctrl-C or SIGTERM with the state of the last finished step on disk, and a stop when the training data cannot be read,
which leaves the last finished step on disk too.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mmrope.data.collate import SkippedBatch
from mmrope.train import PROG

log = logging.getLogger("mmrope")


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the state of the last finished step is safely on disk."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {path}; "
                         "continue with --ckpt_path last")


def default_callbacks(root: str | Path, monitor: str) -> list[Callback]:
    """Checkpoints in a fixed folder under the run's root (not under the logger's version folder), so that
    ``--ckpt_path last`` finds them after a restart; a clean stop on Ctrl-C; a stop when the data cannot be read;
    ``curves.png`` beside ``metrics.csv`` and the last validation's scores on the terminal at the end."""
    folder = Path(root) / "checkpoints"
    return [LastAndBestCheckpoint(folder, monitor), GracefulInterrupt(folder), BadDataGuard(folder), Throughput(),
            TrainingCurves(), FinalScores()]


class LastAndBestCheckpoint(ModelCheckpoint):
    """``best-<step>.ckpt``, the best by ``monitor``, and ``last.ckpt``: the state after the last finished step.

    Lightning's ``save_last`` writes ``last`` only when it also writes a new best, and nothing at the end of
    training, so a run whose last validation did not improve, or that ends between validations, would leave a
    ``last.ckpt`` some steps behind. Here ``last.ckpt`` is written at every validation, at the end of training, when
    a run is interrupted (:meth:`write_last`) and when it stops because its data cannot be read
    (:meth:`on_exception`), always to the same name: a resumed run overwrites it rather than writing
    ``last-v1.ckpt`` beside it.
    """

    def __init__(self, folder: str | Path, monitor: str):
        super().__init__(dirpath=folder, filename="best-{step}", monitor=monitor, mode="max", save_last=True,
                         auto_insert_metric_name=False, enable_version_counter=False)
        self._last_step = -1

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self.write_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write_last(trainer)

    def write_last(self, trainer) -> None:
        """Write ``last.ckpt`` for the current step, unless it already holds it or this is not a training run."""
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A run stopped by its data (a missing shard, an unreadable image with ``on_bad_image: raise``, too many
        skipped samples) keeps its last finished step, as Ctrl-C does, and says so in its error line.

        Only between steps: the loaders raise while fetching the next batch, before Lightning counts it, so the
        weights, optimizer and loop progress all describe the last finished step. Under DDP only when every rank
        stops together (:class:`BadDataError`): saving is a collective, and a rank alone would wait forever."""
        from mmrope.data.images import ImageError
        from mmrope.data.shards import BadSample, ShardError

        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        if (not isinstance(exception, (BadDataError, ImageError, ShardError, BadSample))
                or (trainer.world_size > 1 and not isinstance(exception, BadDataError))
                or batches.ready != batches.completed or trainer.global_step == 0):
            return
        self.write_last(trainer)
        if trainer.global_step == self._last_step and self.last_model_path:
            exception.saved_checkpoint = (Path(self.last_model_path), trainer.global_step)


def save_last(trainer, folder: Path) -> Path:
    """Write ``last.ckpt`` for the current step through the run's :class:`LastAndBestCheckpoint` -> its path (a
    config that brings its own ``ModelCheckpoint`` gets ``<folder>/last.ckpt``)."""
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, LastAndBestCheckpoint)]
    if checkpoints:
        checkpoints[0].write_last(trainer)
        return Path(checkpoints[0].last_model_path)
    path = Path(folder) / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    return path


def resume_hint(err: BaseException) -> str:
    """What to say after the error line of a run that kept its last finished step (:meth:`LastAndBestCheckpoint.
    on_exception`): where, and how to go on."""
    saved = getattr(err, "saved_checkpoint", None)
    if saved is None:
        return ""
    path, step = saved
    return f" (saved {path} at step {step}: once the data is fixed, continue with --ckpt_path last)"


class StopOnSignal:
    """Ctrl-C or SIGTERM asks for a clean stop (``signum`` is set; the loop stops after the step in flight); a second
    one stops at once (``KeyboardInterrupt``). Installed by :meth:`install` on the main thread only (signals reach
    no other), until :meth:`restore`. Both engines stop this way: Lightning through :class:`GracefulInterrupt`, the
    stacked engine around its loop."""

    def __init__(self, say=None):
        self.signum: int | None = None
        self.say = say or (lambda message: None)
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: give up on the clean stop
            raise KeyboardInterrupt
        self.signum = signum
        self.say(f"{signal.Signals(signum).name} received: stopping after this step")

    def install(self) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class GracefulInterrupt(Callback):
    """Ctrl-C or SIGTERM: finish the step in flight, write ``last.ckpt`` (atomically), then stop.

    The checkpoint is written at the end of the step, the point Lightning's own mid-epoch checkpoints are taken
    from, so it holds the weights, optimizer, schedule and data position of one consistent step; the run stops at
    the next hook, once the step's metrics are logged. It is written through :class:`LastAndBestCheckpoint`, so the
    resumed run goes on writing the same ``last.ckpt``. A second Ctrl-C stops at once.
    """

    def __init__(self, folder: Path):
        self.folder, self.saved = Path(folder), None
        self.stop = StopOnSignal(log.warning)

    @property
    def signum(self) -> int | None:
        return self.stop.signum

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:  # all ranks stop at the same step, or the collectives hang
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved is None:
            self.saved = save_last(trainer, self.folder)

    def _stop_if_saved(self, trainer, *args) -> None:
        if self.saved is not None:
            raise TrainingInterrupted(self.signum or signal.SIGTERM, trainer.global_step, self.saved)

    on_train_batch_start = on_train_epoch_end = _stop_if_saved

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._stop_if_saved(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.stop.restore()


class BadDataError(ValueError):
    """The training data cannot be read: every sample of an epoch, or more than ``data.max_skipped_fraction``."""


class BadDataGuard(Callback):
    """Stops a run whose training images cannot be read, with one line, instead of letting it train on a sliver of
    its data or, when nothing can be read, cycle through empty epochs without ever taking a step.

    Unreadable samples are skipped (each named once in a warning by the dataset); this counts them. The run stops
    when an epoch ends without one readable sample, or, once ``min(500, len(train set))`` samples were drawn, when
    more than ``data.max_skipped_fraction`` of them were skipped. Under DDP the ranks agree before stopping.

    Either way ``last.ckpt`` holds the last finished step first, as on Ctrl-C: the share is judged at a step's end,
    where that checkpoint is written, and the stop comes at the next hook, once the step's metrics are logged; an
    epoch's end raises at once, and :meth:`LastAndBestCheckpoint.on_exception` saves.
    """

    CHECK_EVERY = 20  # steps between checks of the share (each is a collective under DDP)
    MIN_SAMPLES = 500  # drawn before the share is judged, so a few bad images early on do not stop a run

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)  # where last.ckpt goes when a config brings its own ModelCheckpoint
        self.read = self.skipped = self.epoch_read = self.epoch_skipped = self.batches = 0
        self.stopping: BadDataError | None = None  # decided at a step's end, raised at the next hook

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_read = self.epoch_skipped = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._raise_if_stopping()
        skipped = batch.num_skipped if isinstance(batch, SkippedBatch) else int(batch.get("num_skipped", 0))
        read = 0 if isinstance(batch, SkippedBatch) else len(batch["input_ids"])
        self.read, self.skipped = self.read + read, self.skipped + skipped
        self.epoch_read, self.epoch_skipped = self.epoch_read + read, self.epoch_skipped + skipped
        self.batches += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.batches % self.CHECK_EVERY == 0 and self.stopping is None:
            try:
                self._check_share(trainer)
            except BadDataError as e:
                if trainer.global_step > 0:  # every rank decided alike: the save, a collective, runs on all
                    e.saved_checkpoint = (save_last(trainer, self.folder), trainer.global_step)
                self.stopping = e

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._raise_if_stopping()
        _stop_if(trainer, self.epoch_read == 0 and self.epoch_skipped > 0,
                 f"no training sample of epoch {trainer.current_epoch} could be read ({self.epoch_skipped} skipped; "
                 "the warnings above name the files): check data.train and data.image_dir")
        self._check_share(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._raise_if_stopping()

    def on_train_end(self, trainer, pl_module) -> None:  # the stop came at the last step
        self._raise_if_stopping()

    def _raise_if_stopping(self) -> None:
        if self.stopping is not None:
            raise self.stopping

    def _check_share(self, trainer) -> None:
        limit = getattr(trainer.datamodule, "max_skipped_fraction", None) if trainer.datamodule else None
        total = self.read + self.skipped
        enough = total >= min(self.MIN_SAMPLES, _train_set_size(trainer) or self.MIN_SAMPLES)
        _stop_if(trainer, limit is not None and enough and self.skipped > limit * total,
                 f"{self.skipped} of the {total} training samples drawn so far could not be read, over "
                 f"data.max_skipped_fraction={limit} (the warnings above name the files): fix the data, or raise the "
                 "limit to train on what can be read")


def _stop_if(trainer, stop: bool, message: str) -> None:
    """Raise :class:`BadDataError` when ``stop`` holds on any rank (all ranks agree, or the collectives hang)."""
    if trainer.world_size > 1:
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
    if stop:
        raise BadDataError(message)


def _train_set_size(trainer) -> int | None:
    try:
        dataset = trainer.train_dataloader.dataset
        return getattr(dataset, "num_samples", None) or len(dataset)  # a shard stream's len() counts batches
    except (AttributeError, TypeError):
        return None


class Throughput(Callback):
    """``train/images_per_s`` and ``train/tokens_per_s`` (decoder tokens, image and text, padding excluded) over the
    steps since the last log, wall clock, data loading included, summed over ranks (each rank's count times the
    number of ranks: they step together). The clock starts after the first step (warm-up, compilation) and again
    after each validation, which is not counted. Tokens are summed on the device, read only when logged."""

    def __init__(self):
        self.since: float | None = None
        self.images, self.tokens = 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.since is None:
            self.since, self.images, self.tokens = now, 0, 0
            return
        if isinstance(batch, dict):
            self.images += len(batch["prompts"])
            self.tokens = self.tokens + batch["attention_mask"].sum()
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0 and now > self.since:
            seconds, world = now - self.since, trainer.world_size
            pl_module.log("train/images_per_s", world * self.images / seconds, on_step=True, on_epoch=False,
                          rank_zero_only=True)
            pl_module.log("train/tokens_per_s", world * float(self.tokens) / seconds, on_step=True,
                          on_epoch=False, rank_zero_only=True)
            self.since, self.images, self.tokens = now, 0, 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.since = None


class TrainingCurves(Callback):
    """At the end of a training run, ``curves.png`` beside the CSV logger's ``metrics.csv``: the loss at every logged
    step, and each validation metric (:func:`mmrope.viz.curves.plot_training_curves`). Nothing without a CSV log."""

    def on_fit_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # the last rows are still in memory until the logger is finalised, after this hook
                metrics = Path(logger.experiment.metrics_file_path)
                if metrics.is_file():
                    from mmrope.viz.curves import plot_training_curves

                    if written := plot_training_curves(metrics, metrics.with_name("curves.png")):
                        log.info("wrote %s", written)


ACCURACIES = {"attribute": "attribute", "place": "place", "relation": "relation", "axis": "axis",
              "relation_named": "relation when both are named right", "count": "count", "event": "event",
              "exact": "exact", "cider": "CIDEr-D", "bleu4": "BLEU-4"}  # what the last line of a run reports


class FinalScores(Callback):
    """One line at the end of ``fit``: the last validation's scores on its own split, and the step it was taken at,
    so a run says how good it is without opening ``metrics.csv``."""

    def __init__(self):
        self.scores: dict[str, float] = {}
        self.step = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.step = trainer.global_step

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or "val/num_samples" not in self.scores:
            return
        shown = [f"{label} {self.scores[f'val/{key}']:.3f}" for key, label in ACCURACIES.items()
                 if f"val/{key}" in self.scores]
        behind = "" if self.step == trainer.global_step else f" (training went on to step {trainer.global_step})"
        print(f"{PROG}: validation at step {self.step}{behind}, {int(self.scores['val/num_samples'])} samples: "
              + ", ".join(shown), flush=True)
