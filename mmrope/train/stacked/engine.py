"""The stacked trainer: the runs of one configuration that differ only in their seed, built as ``mmrope train fit``
builds a run, trained as one set of batched weights, logged and checkpointed as every run is.

Einstein legend: r runs, p parameter elements.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmrope.errors import one_line
from mmrope.train.stacked.checkpoint import read_run_checkpoints, write_run_checkpoint
from mmrope.train.stacked.data import RENDERERS, RunData, StepBatches, to_device
from mmrope.train.stacked.optim import AdamWState, FlatParameters
from mmrope.train.stacked.step import COMPILE_MODES, STACKS, StackedStep

PRECISIONS = ("32-true", "bf16-mixed")  # what the step supports: fp16 would need a loss scaler, "true" half casts


@dataclass
class EngineOptions:
    """How the runs are trained together; none of these changes what a run learns beyond float rounding."""

    stack: str = "auto"  # vmap | loop | auto (vmap on CUDA, loop on CPU)
    renderer: str = "auto"  # pillow | torch | auto (torch on CUDA for shapes and clips, else pillow)
    compile: str = "none"  # none, or a torch.compile mode for the whole step
    save_steps: list[int] = field(default_factory=list)  # also keep checkpoints/step<N>.ckpt at these steps

    def __post_init__(self):
        for name, value, allowed in (("stack", self.stack, STACKS), ("renderer", self.renderer, RENDERERS + ("auto",)),
                                     ("compile", self.compile, COMPILE_MODES)):
            if value not in allowed:
                raise ValueError(f"engine {name}={value!r} is unknown: expected one of {', '.join(allowed)}")


@dataclass
class Run:
    seed: int
    root: Path
    module: object  # its CaptionModule: the model the checkpoint is written from, its hyper-parameters
    config: dict  # the resolved train config
    failed: str | None = None  # why the run stopped (on_nonfinite: raise)
    loggers: list = field(default_factory=list)  # run_loggers: metrics.csv (and TensorBoard) in logs/version_N


class StackedTrainer:
    """``runs``: (seed, folder) pairs; ``train_args``: a ``mmrope train fit ...`` command line (``fit`` first), which
    each run resolves with its seed and folder added (``--seed_everything``, ``--data.seed``,
    ``--trainer.default_root_dir``). :meth:`train` trains them all to ``trainer.max_steps``."""

    def __init__(self, runs: list[tuple[int, Path]], train_args: list[str], options: EngineOptions | None = None,
                 resume: bool = False, overwrite: bool = False):
        from lightning.fabric import Fabric
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from mmrope.train.config_reader import read_config
        from mmrope.train.run import build_run

        self.options = options or EngineOptions()
        if not runs:
            raise ValueError("stacked training needs at least one --run SEED=DIR")
        if train_args[:1] != ["fit"]:
            raise ValueError("stacked training takes the arguments of `mmrope train fit ...`")
        check_run_folders(runs, resume, overwrite)
        self.overwrite = overwrite  # the runs' earlier checkpoints are deleted when training starts
        self.runs: list[Run] = []
        data = []
        for seed, root in runs:
            config = read_config([*train_args[1:], f"--seed_everything={seed}", f"--data.seed={seed}",
                                  f"--trainer.default_root_dir={root}"])
            module, datamodule = build_run(config)
            self.runs.append(Run(seed, Path(root), module, config))
            data.append(RunData.of(datamodule))
        self._check_same()
        first = self.runs[0].config
        trainer = first["trainer"]
        self.max_steps = int(trainer["max_steps"])
        if self.max_steps <= 0:
            raise ValueError("stacked training needs trainer.max_steps (a positive number of steps)")
        if trainer.get("gradient_clip_algorithm") not in (None, "norm"):
            raise ValueError("stacked training clips gradients by norm only (trainer.gradient_clip_algorithm)")
        self.log_every = int(trainer.get("log_every_n_steps") or 50)
        # the device and precision as Lightning's Trainer reads trainer.accelerator and trainer.precision
        try:
            fabric = Fabric(accelerator=trainer.get("accelerator") or "auto", devices=1,
                            precision=trainer.get("precision") or "32-true")
        except (RuntimeError, ValueError, MisconfigurationException) as e:  # Lightning's words: no CUDA, a typo
            raise ValueError(f"trainer.accelerator={trainer.get('accelerator')}, trainer.precision="
                             f"{trainer.get('precision')}: {one_line(e)}") from None
        if fabric.strategy.precision.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision={trainer.get('precision')}: stacked training supports "
                             f"{' and '.join(PRECISIONS)}")
        self.device = fabric.device
        self.optim = self.runs[0].module.optim
        self.on_nonfinite = self.runs[0].module.on_nonfinite

        layout_model = copy.deepcopy(self.runs[0].module.model)  # positions are worked out on the host
        model = self.runs[0].module.model.to(self.device)  # the structure every run's parameters fill in
        self.flat = FlatParameters.of(model, self.optim.weight_decay)
        self.params = self.flat.stack([r.module.model for r in self.runs]).to(self.device)  # (r, p)
        self.state = AdamWState.zeros(len(self.runs), self.flat.size, self.device)
        self.global_step = torch.zeros((), dtype=torch.long, device=self.device)
        self.start = 0
        if resume:
            paths = [r.root / "checkpoints" / "last.ckpt" for r in self.runs]
            self.start, self.state = read_run_checkpoints(paths, [r.module for r in self.runs], self.flat,
                                                          self.device)
            self.params = self.flat.stack([r.module.model for r in self.runs]).to(self.device)
            self.global_step.fill_(self.start)

        cuda = self.device.type == "cuda"
        self.stack = self.options.stack if self.options.stack != "auto" else ("vmap" if cuda else "loop")
        renderer = self.options.renderer
        if renderer == "auto":
            kinds = {getattr(d.dataset, "name", None) for d in data}
            plain = all(getattr(d.dataset, "transform", None) is None for d in data)
            renderer = "torch" if cuda and plain and kinds <= {"shapes", "clips"} else "pillow"
        self.renderer = renderer
        max_caption = int(first["data"]["max_caption_tokens"])
        self.batches = StepBatches(data, range(self.start, self.max_steps), layout_model.layout, renderer,
                                   caption_room=max_caption if self.options.compile != "none" else None)
        self.num_workers = int(first["data"].get("num_workers") or 0)
        self.stepper = StackedStep(model, self.flat, self.optim, trainer.get("gradient_clip_val"), self.max_steps,
                                   len(self.runs), self.stack, fabric.autocast, self.device)
        self.step = self.stepper.train_step if self.options.compile == "none" else self.stepper.compiled(
            self.options.compile, (self.params, *self.state.tensors(), self.global_step))

    def _check_same(self) -> None:
        """Runs stacked together must differ only in their seed and folder: the same model, data and schedule."""
        def strip(config: dict) -> dict:
            c = {k: v for k, v in config.items() if k not in ("seed_everything", "config")}
            c["data"] = {k: v for k, v in c["data"].items() if k != "seed"}
            c["trainer"] = {k: v for k, v in c["trainer"].items() if k != "default_root_dir"}
            return c

        base = strip(self.runs[0].config)
        for run in self.runs[1:]:
            if strip(run.config) != base:
                raise ValueError(f"run {run.seed} resolves to another configuration than run {self.runs[0].seed}: "
                                 "stacked runs may differ only in their seed and folder")
        trainer = self.runs[0].config["trainer"]
        if (trainer.get("devices") not in (None, 1, "1", "auto")) or trainer.get("num_nodes") not in (None, 1):
            raise ValueError("stacked training runs on one device (trainer.devices: 1)")
        if trainer.get("accumulate_grad_batches") not in (None, 1):
            raise ValueError("stacked training does not accumulate gradients (trainer.accumulate_grad_batches: 1)")
        tokenizers = {repr(r.module.tokenizer.to_dict()) for r in self.runs}
        if len(tokenizers) != 1:
            raise ValueError("stacked runs need one tokenizer")
        if self.runs[0].config["model"].get("vision_init"):
            raise ValueError("stacked training does not start from model.vision_init (train those runs with "
                             "`mmrope train fit`)")
        template = self.runs[0].module.model
        if any(not p.requires_grad for p in template.parameters()):
            raise ValueError("stacked training trains every parameter; this model has frozen ones")
        from mmrope.model.draws import TrainingDraws

        if isinstance(template.vision.positions, TrainingDraws):  # it would draw for every run from run 0's stream
            raise ValueError(f"model.vision.pos_encoding={template.vision.positions.name!r} draws in training from "
                             "its own generator, which stacked runs would share: train it with `mmrope train fit`")
        for run in self.runs[1:]:  # one template's buffers serve every run: they must not depend on the seed
            for (name, mine), (_, theirs) in zip(template.named_buffers(), run.module.model.named_buffers()):
                if not torch.equal(mine, theirs):
                    raise ValueError(f"buffer {name} differs between seeds {self.runs[0].seed} and {run.seed}: "
                                     "stacked runs share one model's buffers")

    def train(self, say=print) -> int:
        """Train every run to ``max_steps`` -> 0, 1 when a run failed, or 128 + a signal after a clean stop."""
        from torch.utils.data import DataLoader

        from mmrope.train.callbacks import StopOnSignal

        if self.start >= self.max_steps:
            say(f"every run is at step {self.start} of {self.max_steps} already: nothing to train")
            return 0
        if self.overwrite:
            old = [path for run in self.runs for path in sorted((run.root / "checkpoints").glob("*.ckpt"))]
            for path in old:
                path.unlink(missing_ok=True)
            if old:
                say(f"--overwrite: deleted the {len(old)} checkpoints of the runs' earlier training")
        self._open_logs()
        loader = DataLoader(self.batches, batch_size=None, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.num_workers else None,
                            persistent_workers=False)
        say(f"training {len(self.runs)} runs (seeds {', '.join(str(r.seed) for r in self.runs)}) together on "
            f"{self.device}: steps {self.start}-{self.max_steps}, stack={self.stack}, renderer={self.renderer}, "
            f"compile={self.options.compile}")
        stop = StopOnSignal()
        stop.install()
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        started, step, first = time.monotonic(), self.start, 0.0
        try:
            graphs = self.options.compile == "reduce-overhead"
            for batch in loader:
                step = batch["step"]
                inputs = to_device(batch, self.device)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # each call is a new iteration of the graph
                losses, lr = self.step(self.params, *self.state.tensors(), self.global_step, inputs["images"],
                                       inputs["input_ids"], inputs["labels"], inputs["position_ids"],
                                       inputs["media_slots"])
                # a replay overwrites the graph's outputs: keep copies (a device copy, not a wait)
                pending.append((step, losses.clone(), lr.clone()) if graphs else (step, losses, lr))
                if step == self.start:  # once, for the report: the first step holds the compile
                    _synchronize(self.device)
                    first = time.monotonic() - started
                if (step + 1) % self.log_every == 0 or step + 1 == self.max_steps:
                    self._write_logs(pending, say)  # reads the losses: one wait every log_every steps
                    pending = []
                if step + 1 in self.options.save_steps:
                    self.save(step + 1, f"step{step + 1}.ckpt")
                if stop.signum is not None:
                    break
        finally:
            stop.restore()
        self._write_logs(pending, say)
        _synchronize(self.device)
        seconds, done = time.monotonic() - started, step + 1
        rest = done - self.start - 1
        images = len(self.runs) * self.batches.runs[0].batch_size
        say(f"trained steps {self.start}-{done} in {seconds:.1f} s: the first step (compile included) "
            f"{first:.1f} s, then {rest / max(seconds - first, 1e-9):.2f} steps/s for all runs together "
            f"({rest * images / max(seconds - first, 1e-9):.0f} images/s)")
        self.save(done)
        for run in self.runs:
            for logger in run.loggers:
                logger.finalize("failed" if run.failed else "success")
        if stop.signum is not None and done < self.max_steps:
            say(f"stopped by {signal.Signals(stop.signum).name} at step {done}: saved every run's last.ckpt; "
                "continue with --resume")
            return 128 + stop.signum
        return 1 if any(r.failed for r in self.runs) else 0

    def _open_logs(self) -> None:
        """Each run logs where ``mmrope train fit`` logs (:func:`mmrope.train.run.run_loggers`): the next
        ``logs/version_N``, with the module's hyper-parameters beside its metrics."""
        from mmrope.train.run import run_loggers

        for run in self.runs:
            run.loggers = run_loggers(run.root, run.config.get("logging"))
            for logger in run.loggers:
                logger.log_hyperparams(run.module.hparams)

    def _write_logs(self, pending: list, say) -> None:
        """The losses of the steps in ``pending``: logged at every ``log_every_n_steps``-th step (as Lightning logs
        them), a non-finite one reported for its run (skipped, or the run failed with ``on_nonfinite: raise``)."""
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending]).float().cpu()  # (steps, r)
        rates = torch.stack([p[2] for p in pending]).cpu()
        per_epoch = self.batches.runs[0].batches_per_epoch
        for r, run in enumerate(self.runs):
            for (step, _, _), loss, lr in zip(pending, losses[:, r].tolist(), rates.tolist()):
                if not math.isfinite(loss):
                    if run.failed is None and self.on_nonfinite == "raise":
                        run.failed = f"training loss is {loss} at step {step}"
                        say(f"seed {run.seed}: error: {run.failed}: lower model.optim.lr, check the data, or set "
                            "model.on_nonfinite: skip (the other runs go on)")
                    elif run.failed is None:
                        say(f"seed {run.seed}: skipping batch: training loss is {loss} at step {step}")
                    continue
                if (step + 1) % self.log_every == 0 and run.failed is None:
                    for logger in run.loggers:
                        logger.log_metrics({"train/loss": loss, "train/lr": lr, "epoch": step // per_epoch}, step)
            for logger in run.loggers:
                logger.save()

    def save(self, step: int, name: str = "last.ckpt") -> None:
        """Every run's checkpoint at ``step`` (a run that failed keeps what it had)."""
        from mmrope.train.optim import cosine_with_warmup

        lr = self.optim.lr * cosine_with_warmup(self.optim.warmup_steps, self.max_steps, self.optim.min_lr_ratio)(step)
        epoch = step // self.batches.runs[0].batches_per_epoch
        for r, run in enumerate(self.runs):
            if not run.failed:
                write_run_checkpoint(run.root / "checkpoints" / name, run.module, self.flat, self.params, self.state,
                                     r, len(self.runs), run.seed, step, epoch, lr)


def check_run_folders(runs: list[tuple[int, Path]], resume: bool, overwrite: bool) -> None:
    """Refuse runs that would destroy one another's checkpoints, or an earlier run's unasked (``--overwrite``)."""
    if resume and overwrite:
        raise ValueError("--resume continues the runs' checkpoints and --overwrite deletes them: give one of the two")
    seen: dict[Path, int] = {}
    for seed, root in runs:
        folder = Path(root).resolve()
        if folder in seen:
            raise ValueError(f"--run {seen[folder]}={root} and --run {seed}={root} share one folder: each run needs "
                             "its own")
        seen[folder] = seed
        last = Path(root) / "checkpoints" / "last.ckpt"
        if not resume and not overwrite and last.is_file():
            raise ValueError(f"{root} holds a run already ({last}): continue it with --resume, start over with "
                             "--overwrite (its checkpoints are deleted), or choose another folder")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
