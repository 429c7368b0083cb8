"""Lightning glue: the training loop around :class:`mmrope.model.Captioner`, and the data it reads.

The model knows nothing of Lightning; this module adds what a training run needs: the optimizer and schedule,
validation that generates captions and scores them, checkpoints that hold the model config and tokenizer, exact
resume mid-epoch, and a clean stop on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
import signal
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler

from mmrope import __version__
from mmrope.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.data.collate import SkippedBatch
from mmrope.metrics import bleu4, cider_d
from mmrope.model import Captioner, num_parameters
from mmrope.tokenizer import Tokenizer, load_tokenizer
from mmrope.vision import is_clip

log = logging.getLogger("mmrope")


class NonFiniteLossError(FloatingPointError):
    pass


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the state of the last finished step is safely on disk."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {path}; "
                         "continue with --ckpt_path last")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to norms, biases, embeddings of positions or RoPE-Mixed frequencies
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step

    def __post_init__(self):
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"model.optim.{name}={getattr(self, name)!r}: expected {expected}")

        if not _finite_number(self.lr) or not self.lr > 0:
            raise bad("lr", "a positive, finite learning rate")
        if not _finite_number(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite number >= 0")
        betas = list(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(_finite_number(b) and 0 <= b < 1 for b in betas):
            raise bad("betas", "two numbers in [0, 1), such as [0.9, 0.98]")
        self.betas = (float(betas[0]), float(betas[1]))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("warmup_steps", "a whole number >= 0")
        if not _finite_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "a number in [0, 1]")


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as(cls, value):
    """Dataclass from a dataclass, a dict (checkpoint hyper-parameters) or None (defaults)."""
    if value is None:
        return cls()
    if not isinstance(value, dict):
        return value
    part = {VisionConfig: "vision", TextConfig: "text"}.get(cls)
    if part:  # CaptionerConfig.from_dict validates keys with one-line errors
        return getattr(CaptionerConfig.from_dict({part: value}), part)
    return cls(**value)


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases (ndim < 2) and parameters flagged ``no_weight_decay`` are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or getattr(p, "no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class CaptionModule(L.LightningModule):
    """A :class:`Captioner` with its training and evaluation loop.

    The first four arguments are those of :class:`CaptionerConfig`, so the YAML reads ``model.vision.dim`` and the
    command line ``--model.vision.pos_encoding rope1d_flat``. ``tokenizer`` is filled in from the data module.
    """

    def __init__(self, vision: VisionConfig = VisionConfig(), text: TextConfig = TextConfig(),  # noqa: B008
                 position_scheme: Literal["mrope", "mrope_interleaved", "flat"] = "mrope",
                 tokens_per_second: float | None = None,
                 optim: OptimConfig = OptimConfig(), max_new_tokens: int = 24,  # noqa: B008
                 on_nonfinite: Literal["raise", "skip"] = "raise", compile: bool = False,
                 log_samples: int = 8, tokenizer: dict | None = None):
        super().__init__()
        # copies: the defaults above are shared, and checkpoints hand back plain dicts
        vision, text, optim = (copy.deepcopy(_as(cls, v)) for cls, v in
                               ((VisionConfig, vision), (TextConfig, text), (OptimConfig, optim)))
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"model.on_nonfinite={on_nonfinite!r}: expected 'raise' or 'skip'")
        self.tokenizer: Tokenizer | None = load_tokenizer(tokenizer) if tokenizer is not None else None
        if self.tokenizer is not None:
            text.vocab_size = self.tokenizer.vocab_size
        self.config = CaptionerConfig(vision=vision, text=text, position_scheme=position_scheme,
                                      tokens_per_second=tokens_per_second)
        self.optim, self.max_new_tokens, self.on_nonfinite = optim, max_new_tokens, on_nonfinite
        self.log_samples = log_samples
        # plain dicts only, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({**self.config.to_dict(), "optim": asdict(optim), "max_new_tokens": max_new_tokens,
                                   "on_nonfinite": on_nonfinite, "compile": compile, "log_samples": log_samples,
                                   "tokenizer": tokenizer})
        self.model = Captioner(self.config)
        if compile:
            self.model.compile()
        self._eval_outputs: dict[int, list[dict]] = {}

    # checkpoints carry what inference needs, independent of Lightning's hyper-parameters
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmrope"] = {"version": __version__, "config": self.config.to_dict(),
                                "tokenizer": self.tokenizer.to_dict() if self.tokenizer else None}

    def on_fit_start(self) -> None:
        if self.global_rank == 0:
            log.info("model: %s parameters", f"{num_parameters(self.model):,}")

    def forward(self, images, input_ids, attention_mask=None, labels=None):
        return self.model(images, input_ids, attention_mask, labels)

    def training_step(self, batch: dict | SkippedBatch, batch_idx: int):
        if isinstance(batch, SkippedBatch):  # every image of the batch was unreadable (BadDataGuard counts it)
            return None
        loss = self._loss(batch)
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:  # every rank must agree, or a skipping rank hangs the others
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            if self.on_nonfinite == "raise":
                raise NonFiniteLossError(f"training loss is {loss.item()} at {where}: lower model.optim.lr, check "
                                         "the data, or set model.on_nonfinite: skip")
            warnings.warn(f"skipping batch: training loss is {loss.item()} at {where}", stacklevel=1)
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["prompts"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(parameter_groups(self.model, self.optim.weight_decay), lr=self.optim.lr,
                                betas=tuple(self.optim.betas), fused=self.device.type == "cuda" or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(self.optim.warmup_steps, total, self.optim.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_batch_transfer(self, batch: dict | SkippedBatch, dataloader_idx: int) -> dict | SkippedBatch:
        """Work out positions, the attention mask and the media slots while the batch is still on the host (see
        :meth:`Captioner.layout`): on a GPU, the step then never waits on the device, and a compiled model runs as
        one graph."""
        if isinstance(batch, dict) and "labels" in batch:
            batch["layout"] = self.model.layout(batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"],
                                                is_clip(batch["images"]), batch["second_per_grid_t"])
        return batch

    def _loss(self, batch: dict) -> torch.Tensor:
        return self.model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                          second_per_grid_t=batch["second_per_grid_t"], layout=batch.get("layout")).loss

    # evaluation: generate, then score once every rank's captions are in
    @torch.no_grad()
    def _generate_batch(self, batch: dict) -> list[str]:
        ids = self.model.generate(batch["prompts"], max_new_tokens=self.max_new_tokens,
                                  second_per_grid_t=batch["second_per_grid_t"])
        return [self.tokenizer.decode(t.tolist()) for t in ids]

    def validation_step(self, batch: dict | SkippedBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, SkippedBatch):
            return
        if dataloader_idx == 0:
            loss = self._loss(batch)
            self.log("val/loss", loss, batch_size=len(batch["prompts"]), add_dataloader_idx=False, sync_dist=True)
        captions = self._generate_batch(batch)
        outputs = self._eval_outputs.setdefault(dataloader_idx, [])
        for i, caption in enumerate(captions):
            outputs.append({"id": batch["ids"][i], "prediction": caption, "references": batch["references"][i],
                            "scene": batch["scenes"][i],
                            "image": filmstrip(batch["prompts"][i]) if len(outputs) < 16 else None})

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def _gather(self, outputs: list[dict]) -> list[dict]:
        """Every rank's captions, each sample once: the distributed sampler pads with duplicates."""
        if self.trainer.world_size > 1:
            light = [{k: v for k, v in o.items() if k != "image"} for o in outputs]
            gathered: list[list[dict]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, light)
            outputs = [o for rank in gathered for o in rank]
        unique = {o["id"]: o for o in outputs}
        return [unique[k] for k in sorted(unique)]

    def _score(self, stage: str) -> None:
        from mmrope.data.clips import score_clip_captions
        from mmrope.data.scoring import score_captions

        names = getattr(getattr(self.trainer, "datamodule", None), "eval_names", [])
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank asks
        for idx in sorted(self._eval_outputs):
            local = self._eval_outputs[idx]
            outputs = self._gather(local)
            prefix = stage if idx == 0 else f"{stage}@{names[idx - 1]}"
            preds = [o["prediction"] for o in outputs]
            metrics = {"bleu4": bleu4(preds, [o["references"] for o in outputs]),
                       "cider": cider_d(preds, [o["references"] for o in outputs]),
                       "num_samples": float(len(outputs))}
            if outputs and all(o["scene"] is not None for o in outputs):
                scenes = [o["scene"] for o in outputs]
                score = score_clip_captions if scenes[0].get("kind") == "clip" else score_captions
                metrics.update({k: v for k, v in score(preds, scenes).items() if k != "n" and v is not None})
            for name, value in metrics.items():
                self.log(f"{prefix}/{name}", float(value), add_dataloader_idx=False, rank_zero_only=False)
            if idx == 0 and self.global_rank == 0 and not self.trainer.sanity_checking:
                self._write_samples(stage, local, log_dir)
        self._eval_outputs = {}

    def _write_samples(self, stage: str, outputs: list[dict], log_dir: str | None) -> None:
        """A few images with their generated captions: a PNG under the log folder, and TensorBoard when used."""
        shown = [o for o in outputs if o["image"] is not None][: self.log_samples]
        if not shown or log_dir is None:
            return
        from mmrope.viz import plot_captioned_images

        path = Path(log_dir) / "samples" / f"{stage}_step{self.global_step:06d}.png"
        plot_captioned_images([o["image"] for o in shown], [o["prediction"] for o in shown], path,
                              [o["references"][0] for o in shown])
        for logger in self.loggers:
            if hasattr(getattr(logger, "experiment", None), "add_text"):
                text = "\n\n".join(f"{o['prediction']}  (reference: {o['references'][0]})" for o in shown)
                logger.experiment.add_text(f"{stage}/samples", text, self.global_step)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return [{"id": i, "caption": c} for i, c in zip(batch["ids"], self._generate_batch(batch))]


def filmstrip(media: list[torch.Tensor]) -> torch.Tensor:
    """A sample's images and clip frames side by side, (3, H, sum of widths), for the sample PNGs."""
    frames = [f for m in media for f in (m if m.ndim == 4 else [m])]
    height = min(f.shape[-2] for f in frames)
    return torch.cat([f[..., :height, :] for f in frames], dim=-1)


def default_callbacks(root: str | Path, monitor: str) -> list[Callback]:
    """Checkpoints in a fixed folder under the run's root (not under the logger's version folder), so that
    ``--ckpt_path last`` finds them after a restart; a clean stop on Ctrl-C; a stop when the data cannot be read."""
    folder = Path(root) / "checkpoints"
    return [LastAndBestCheckpoint(folder, monitor), GracefulInterrupt(folder), BadDataGuard()]


class LastAndBestCheckpoint(ModelCheckpoint):
    """``best-<step>.ckpt``, the best by ``monitor``, and ``last.ckpt``: the state after the last finished step.

    Lightning's ``save_last`` writes ``last`` only when it also writes a new best, and nothing at the end of
    training, so a run whose last validation did not improve, or that ends between validations, would leave a
    ``last.ckpt`` some steps behind. Here ``last.ckpt`` is written at every validation, at the end of training and
    when a run is interrupted (:meth:`write_last`), always to the same name: a resumed run overwrites it rather than
    writing ``last-v1.ckpt`` beside it.
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


class GracefulInterrupt(Callback):
    """Ctrl-C or SIGTERM: finish the step in flight, write ``last.ckpt`` (atomically), then stop.

    The checkpoint is written at the end of the step, the point Lightning's own mid-epoch checkpoints are taken
    from, so it holds the weights, optimizer, schedule and data position of one consistent step; the run stops at
    the next hook, once the step's metrics are logged. It is written through :class:`LastAndBestCheckpoint`, so the
    resumed run goes on writing the same ``last.ckpt``. A second Ctrl-C stops at once.
    """

    def __init__(self, folder: Path):
        self.folder, self.signum, self.saved, self._previous = Path(folder), None, None, {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: give up on the clean stop
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:  # all ranks stop at the same step, or the collectives hang
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved is None:
            checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, LastAndBestCheckpoint)]
            if checkpoints:
                checkpoints[0].write_last(trainer)
                self.saved = Path(checkpoints[0].last_model_path)
            else:  # a config that brings its own ModelCheckpoint
                self.saved = self.folder / "last.ckpt"
                trainer.save_checkpoint(self.saved, weights_only=False)

    def _stop_if_saved(self, trainer, *args) -> None:
        if self.saved is not None:
            raise TrainingInterrupted(self.signum or signal.SIGTERM, trainer.global_step, self.saved)

    on_train_batch_start = on_train_epoch_end = _stop_if_saved

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._stop_if_saved(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class BadDataError(ValueError):
    """The training data cannot be read: every sample of an epoch, or more than ``data.max_skipped_fraction``."""


class BadDataGuard(Callback):
    """Stops a run whose training images cannot be read, with one line, instead of letting it train on a sliver of
    its data or, when nothing can be read, cycle through empty epochs without ever taking a step.

    Unreadable samples are skipped (each named once in a warning by the dataset); this counts them. The run stops
    when an epoch ends without one readable sample, or, once ``min(500, len(train set))`` samples were drawn, when
    more than ``data.max_skipped_fraction`` of them were skipped. Under DDP the ranks agree before stopping.
    """

    CHECK_EVERY = 20  # steps between checks of the share (each is a collective under DDP)
    MIN_SAMPLES = 500  # drawn before the share is judged, so a few bad images early on do not stop a run

    def __init__(self):
        self.read = self.skipped = self.epoch_read = self.epoch_skipped = self.batches = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_read = self.epoch_skipped = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        skipped = batch.num_skipped if isinstance(batch, SkippedBatch) else int(batch.get("num_skipped", 0))
        read = 0 if isinstance(batch, SkippedBatch) else len(batch["input_ids"])
        self.read, self.skipped = self.read + read, self.skipped + skipped
        self.epoch_read, self.epoch_skipped = self.epoch_read + read, self.epoch_skipped + skipped
        self.batches += 1
        if self.batches % self.CHECK_EVERY == 0:
            self._check_share(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        nothing = self.epoch_read == 0 and self.epoch_skipped > 0
        if trainer.world_size > 1:
            nothing = trainer.strategy.reduce_boolean_decision(nothing, all=True)
        if nothing:
            raise BadDataError(f"no training sample of epoch {trainer.current_epoch} could be read "
                               f"({self.epoch_skipped} skipped; the warnings above name the files): check data.train "
                               "and data.image_dir")
        self._check_share(trainer)

    def _check_share(self, trainer) -> None:
        limit = getattr(trainer.datamodule, "max_skipped_fraction", None) if trainer.datamodule else None
        total = self.read + self.skipped
        dataset_size = _train_set_size(trainer)
        enough = total >= min(self.MIN_SAMPLES, dataset_size or self.MIN_SAMPLES)
        stop = limit is not None and enough and self.skipped > limit * total
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            raise BadDataError(f"{self.skipped} of the {total} training samples drawn so far could not be read, over "
                               f"data.max_skipped_fraction={limit} (the warnings above name the files): fix the data, "
                               "or raise the limit to train on what can be read")


def _train_set_size(trainer) -> int | None:
    try:
        return len(trainer.train_dataloader.dataset)
    except (AttributeError, TypeError):
        return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are never torn and never run code.

    Saving writes a temporary file beside the target, fsyncs it, then renames it over the target: a crash mid-save
    never leaves a torn checkpoint, and the previous one stays intact until the new one is complete. A failed save
    (a full disk) removes its temporary file and raises one ``OSError`` line naming the checkpoint; temporary files
    left by a process that was killed mid-save are removed on the next save into the folder.

    Loading always passes ``weights_only=True``: a checkpoint holds tensors and plain data, so a crafted file's
    pickled objects are refused rather than run, whatever torch's default or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        tmp = path.with_name(f".saving-{os.getpid()}.tmp")  # no "last" in the name: Lightning globs for it
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001 - torch's writer raises RuntimeError for a full disk, not OSError
            tmp.unlink(missing_ok=True)
            raise OSError(errno.EIO, f"cannot write checkpoint {path}: {_one_line(e)}") from None

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.saving-<pid>.tmp`` files whose process is gone (it was killed while saving)."""
    for tmp in folder.glob(".saving-*.tmp"):
        pid = tmp.name.removeprefix(".saving-").removesuffix(".tmp")
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _one_line(e: BaseException) -> str:
    """An exception as one short line: a disk-full error from torch's writer spans several."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


class ResumableSampler(DistributedSampler):
    """Seeded shuffle per epoch, one shard per rank, and an optional start mid-epoch after a resume.

    It also passes the epoch to the dataset, whose augmentation and caption choice are seeded by
    (seed, epoch, index): no global RNG is involved, so a resumed run sees exactly the same samples.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples of this rank's shard already seen)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            indices = indices[self.resume_at[1]:]
        self.resume_at = None
        return iter(indices)


@dataclass
class ShapesConfig:
    """The built-in benchmark (see :mod:`mmrope.data.shapes`)."""
    level: int = 2
    canvas: int = 64
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    background: Literal["plain", "noisy"] = "plain"
    fresh_each_epoch: bool = True  # new scenes every epoch: no memorising
    val_split: Literal["val", "compositional"] = "val"


@dataclass
class ClipsConfig:
    """Synthetic clips of moving, appearing and recolouring shapes (see :mod:`mmrope.data.clips`)."""
    frames: int = 4  # frames per training clip; temporal patches = ceil(frames / temporal_patch_size)
    canvas: int = 64
    duration: float = 2.0  # seconds every clip lasts, whatever its frame count (sets fps, for tokens_per_second)
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    fresh_each_epoch: bool = True
    val_split: Literal["val", "compositional"] = "val"
    clip_mode: Literal["block", "frames"] = "block"  # one (t, h, w) video block, or each frame its own image
    eval_frames: list[int] | None = None  # extra validation sets at these frame counts: temporal extrapolation


class CaptionDataModule(L.LightningDataModule):
    """Shapes (default), synthetic clips, or a real caption set (COCO JSON, imagefolder ``metadata.jsonl`` or CSV).

    ``eval_sizes`` adds one validation set per extra resolution (objects scale with the canvas), logged as
    ``val@96/relation`` and so on; for clips, ``clips.eval_frames`` adds one per frame count (``val@8f/event``).
    ``patch_size``, ``merge_size`` and ``temporal_patch_size`` are linked from the model's config. Unreadable
    images are skipped (``on_bad_image: skip``) until more than ``max_skipped_fraction`` of the samples drawn were
    (see :class:`BadDataGuard`); ``on_bad_image: raise`` stops at the first. Caption files may only name images
    inside their folder (or ``image_dir``) unless ``allow_outside_paths`` is set.
    """

    def __init__(self, dataset: Literal["shapes", "clips", "captions"] = "shapes",
                 shapes: ShapesConfig = ShapesConfig(),  # noqa: B008
                 clips: ClipsConfig = ClipsConfig(),  # noqa: B008
                 train: str | None = None, val: str | None = None, test: str | None = None,
                 image_dir: str | None = None, karpathy_split: str | None = None,
                 image_size: int = 64, resize: Literal["fixed", "native"] = "fixed",
                 min_pixels: int = 32 * 32, max_pixels: int = 512 * 512, augment: bool = False,
                 tokenizer: Literal["word", "byte"] | str = "word", batch_size: int = 64, num_workers: int = 0,
                 eval_sizes: list[int] | None = None, eval_batch_size: int | None = None,
                 max_caption_tokens: int = 32, seed: int = 0,
                 on_bad_image: Literal["skip", "raise"] = "skip", max_skipped_fraction: float = 0.1,
                 allow_outside_paths: bool = False,
                 patch_size: int = 8, merge_size: int = 2, temporal_patch_size: int = 1):
        super().__init__()
        if dataset not in ("shapes", "clips", "captions"):
            raise ValueError(f"data.dataset={dataset!r}: expected 'shapes', 'clips' or 'captions'")
        if not (isinstance(max_skipped_fraction, (int, float)) and 0 <= max_skipped_fraction <= 1):
            raise ValueError(f"data.max_skipped_fraction={max_skipped_fraction!r}: expected a share in [0, 1]")
        if dataset == "captions" and not train:
            raise ValueError("data.train is required with data.dataset: captions (a COCO captions JSON, a folder "
                             "with metadata.jsonl, or a CSV file)")
        self.dataset, self.shapes = dataset, copy.deepcopy(_as(ShapesConfig, shapes))
        self.clips = copy.deepcopy(_as(ClipsConfig, clips))
        self.paths = {"train": train, "val": val, "test": test}
        self.image_dir, self.karpathy_split = image_dir, karpathy_split
        self.image_size, self.resize = image_size, resize
        self.min_pixels, self.max_pixels, self.augment = min_pixels, max_pixels, augment
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_sizes = list(eval_sizes or [])
        self.max_caption_tokens, self.seed, self.on_bad_image = max_caption_tokens, seed, on_bad_image
        self.max_skipped_fraction = float(max_skipped_fraction)
        self.allow_outside_paths = allow_outside_paths
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size
        self.eval_frames = list(self.clips.eval_frames or []) if dataset == "clips" else []
        self.tokenizer = self._build_tokenizer(tokenizer)
        self._resume: dict | None = None
        self._sets: dict[str, Any] = {}

    @property
    def tokenizer_state(self) -> dict:
        return self.tokenizer.to_dict()

    @property
    def monitor(self) -> str:
        """The metric the best checkpoint is chosen by: relation accuracy on shapes, event accuracy on clips,
        CIDEr-D on real captions."""
        return {"shapes": "val/relation", "clips": "val/event"}.get(self.dataset, "val/cider")

    @property
    def eval_names(self) -> list[str]:
        """What each extra validation set is logged as, after the ``@``: its size, or its frame count + "f"."""
        return [str(s) for s in self.eval_sizes] + [f"{f}f" for f in self.eval_frames]

    def _build_tokenizer(self, kind: str) -> Tokenizer:
        from mmrope.tokenizer import build_tokenizer

        if kind not in ("word", "byte"):
            return load_tokenizer(kind)  # a saved tokenizer.json
        if kind == "byte":
            return build_tokenizer("byte", [])
        return build_tokenizer("word", self._training_captions())

    def _training_captions(self) -> list[str]:
        if self.dataset == "shapes":
            from mmrope.data.shapes import vocabulary_captions

            return vocabulary_captions()
        if self.dataset == "clips":
            from mmrope.data.clips import clip_vocabulary_captions

            return clip_vocabulary_captions()
        return [c for r in self._records("train") for c in r.captions]

    def _records(self, split: str):
        """Caption records of a split: its own file, or with a Karpathy split file, the train file's share."""
        from mmrope.data.captions import load_caption_records

        path = self.paths[split] or (self.paths["train"] if self.karpathy_split else None)
        if path is None:
            raise ValueError(f"data.{split} is not set: give a caption file for it (or data.karpathy_split)")
        coco = {"karpathy_split": self.karpathy_split, "split": split} if self.karpathy_split else {}
        return load_caption_records(path, self.image_dir, self.allow_outside_paths, **coco)

    def _transform(self, train: bool, size: int | None = None):
        from mmrope.data.images import ImageTransform

        return ImageTransform(mode=self.resize, size=size or self.image_size, patch_size=self.patch_size,
                              merge_size=self.merge_size, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                              augment=self.augment and train)

    def _make(self, split: str, size: int | None = None, frames: int | None = None):
        if self.dataset == "clips":
            from mmrope.data.clips import ClipsDataset

            c = self.clips
            n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
            name = {"train": "train", "val": c.val_split, "test": "test"}[split]
            transform = self._transform(split == "train", size) if (self.augment and split == "train") else None
            return ClipsDataset(n, split=name, seed=self.seed, frames=frames or c.frames, canvas=c.canvas, size=size,
                                duration=c.duration, transform=transform,
                                fresh_each_epoch=c.fresh_each_epoch and split == "train")
        if self.dataset == "shapes":
            from mmrope.data.shapes import ShapesDataset

            c = self.shapes
            n = {"train": c.n_train, "val": c.n_val, "test": c.n_test}[split]
            name = {"train": "train", "val": c.val_split, "test": "test"}[split]
            transform = self._transform(split == "train", size) if (self.augment and split == "train") else None
            return ShapesDataset(n, split=name, seed=self.seed, level=c.level, canvas=c.canvas, size=size,
                                 background=c.background, transform=transform,
                                 fresh_each_epoch=c.fresh_each_epoch and split == "train")
        from mmrope.data.captions import CaptionDataset

        return CaptionDataset(self._records(split), self._transform(split == "train", size), train=split == "train",
                              seed=self.seed, on_bad_image=self.on_bad_image)  # max_pixels: the resize budget

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self._sets["train"] = self._make("train")
        for split, stages in (("val", ("fit", "validate", None)), ("test", ("test", None))):
            if stage in stages:
                self._sets[split] = ([self._make(split)] + [self._make(split, size=s) for s in self.eval_sizes]
                                     + [self._make(split, frames=f) for f in self.eval_frames])
        if stage == "predict":
            self._sets["predict"] = self._make("test")

    def _loader(self, dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        from mmrope.data.collate import CaptionCollator

        collate = CaptionCollator(self.tokenizer, self.patch_size, self.merge_size, self.max_caption_tokens,
                                  self.temporal_patch_size, self.clips.clip_mode)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(self._sets["train"], world, rank, shuffle=True, seed=self.seed)
        if self._resume is not None:
            sampler.resume_at = (self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return self._loader(self._sets["train"], self.batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self._sets["val"]]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self._sets["test"]]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._sets["predict"], self.eval_batch_size, shuffle=False)

    # where in the epoch the last finished step left the data: saved in every checkpoint
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None


# Our sampler resumes through CaptionDataModule.state_dict; Lightning cannot see that and warns otherwise.
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
