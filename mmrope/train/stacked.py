"""Train several seeds of one configuration at once, as one set of batched weights: ``python -m mmrope.train.stacked``.

    python -m mmrope.train.stacked --run 0=runs/a/seed0 --run 1=runs/a/seed1 --run 2=runs/a/seed2 \\
        -- fit --config configs/shapes_place.yaml --trainer.max_steps=1200

Each ``--run SEED=DIR`` is the run ``python -m mmrope.train <args> --seed_everything SEED --data.seed SEED
--trainer.default_root_dir DIR`` would train, and ends the same way: ``DIR/checkpoints/last.ckpt`` in the standard
format (weights, the ``mmrope`` entry, AdamW's state) and the training loss in ``DIR/logs/version_N/metrics.csv``, so
``mmrope eval``, ``mmrope.inference.load`` and the ablation's scoring read it unchanged. What stays each run's own:

- **initialisation**: each run's model is built as the training CLI builds it (``seed_everything(SEED)``, then the
  data module, then ``CaptionModule``), and its weights become one row of a (runs, P) tensor
  (:mod:`mmrope.train.stacked_optim`);
- **data**: its own data module, sampler and collator give its batch at every step
  (:mod:`mmrope.train.stacked_data`);
- **optimiser**: its own AdamW moments and step count, gradient clipping by its own norm, the config's schedule;
  a non-finite loss skips that run's step alone, decided on the device (``torch.where``), never by a host sync.

The step computes every run's loss and gradients in one call: ``torch.func.vmap`` over ``functional_call`` of the
model with each run's parameters (``stack: vmap``: batched matmuls, kernels r times larger), or a loop over the runs
(``stack: loop``). ``auto`` takes vmap on a GPU and the loop on a CPU, where vmap's batched matmuls and attention
measured slower than r plain steps (docs/performance.md, "Many runs at once"). ``compile`` wraps the whole step
(forward, backward, clipping, AdamW) in ``torch.compile``; nothing in it waits for the host, so with
``reduce-overhead`` it can replay as CUDA graphs. What is not done here: validation during training (the ablation
scores each run after it), several devices, real caption files (shapes and clips only).

Resume: ``--resume`` continues every run from its ``last.ckpt`` (written by this engine; all at one step), with the
same data order. Ctrl-C or SIGTERM finishes the step in flight, writes every run's ``last.ckpt`` and exits with
128 + the signal. Without ``--resume`` a folder that holds a ``last.ckpt`` (this engine's or train.py's) is refused
unless ``--overwrite`` says to delete its checkpoints; two runs may not share a folder.

Einstein legend: r runs, b samples of a run's batch, n tokens, p parameter elements.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, vmap

from mmrope.model.captioner import Layout
from mmrope.model.layers import Attention
from mmrope.model.rotary_apply import reference, triton_or_compiled, triton_or_reference
from mmrope.train.optim import OptimConfig, cosine_with_warmup
from mmrope.train.stacked_data import RENDERERS, RunData, StepBatches, to_device
from mmrope.train.stacked_optim import AdamWState, FlatParameters, adamw_update, clip_per_run, scheduled_lr

STACKS = ("auto", "vmap", "loop")
TRITON_APPLIES = (triton_or_reference, triton_or_compiled)  # the applies that may take the Triton kernel on CUDA
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
ENGINE = "mmrope.train.stacked"  # checkpoints written here say so; --resume refuses others
PROG = "stacked"  # what its messages start with (the ablation's runner looks for "stacked: seed <k>: error")


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
    log: Path | None = None


class StackedTrainer:
    """The runs of one configuration that differ only in their seed, trained as one set of batched weights."""

    def __init__(self, runs: list[tuple[int, Path]], train_args: list[str], options: EngineOptions | None = None,
                 resume: bool = False, overwrite: bool = False):
        from lightning.pytorch import seed_everything

        from mmrope.train.config_reader import read_config
        from mmrope.train.datamodule import CaptionDataModule
        from mmrope.train.module import CaptionModule

        self.options = options or EngineOptions()
        if not runs:
            raise ValueError("stacked training needs at least one --run SEED=DIR")
        if train_args[:1] != ["fit"]:
            raise ValueError("stacked training takes the arguments of `python -m mmrope.train fit ...`")
        check_run_folders(runs, resume, overwrite)
        self.overwrite = overwrite  # the runs' earlier checkpoints are deleted when training starts
        self.runs: list[Run] = []
        data = []
        for seed, root in runs:
            config = read_config([*train_args[1:], f"--seed_everything={seed}", f"--data.seed={seed}",
                                  f"--trainer.default_root_dir={root}"])
            seed_everything(seed, verbose=False)  # as LightningCLI does, before it builds the data and the model
            datamodule = CaptionDataModule(**config["data"])
            model_args = {**config["model"], "compile": False, "tokenizer": datamodule.tokenizer_state}
            module = CaptionModule(**model_args)
            module.hparams["compile"] = config["model"].get("compile", False)  # as the config says, for the file
            self.runs.append(Run(seed, Path(root), module, config))
            data.append(RunData.of(datamodule))
        self._check_same()
        first = self.runs[0].config
        trainer = first["trainer"]
        self.max_steps = int(trainer["max_steps"])
        if self.max_steps <= 0:
            raise ValueError("stacked training needs trainer.max_steps (a positive number of steps)")
        self.clip = trainer.get("gradient_clip_val")
        if trainer.get("gradient_clip_algorithm") not in (None, "norm"):
            raise ValueError("stacked training clips gradients by norm only (trainer.gradient_clip_algorithm)")
        self.log_every = int(trainer.get("log_every_n_steps") or 50)
        self.device = _device(trainer)
        self.autocast = _autocast(trainer.get("precision"), self.device)
        self.optim: OptimConfig = self.runs[0].module.optim
        self.on_nonfinite = self.runs[0].module.on_nonfinite

        layout_model = copy.deepcopy(self.runs[0].module.model)  # positions are worked out on the host
        self.model = self.runs[0].module.model.to(self.device)  # the structure every run's parameters fill in
        for module in self.model.modules():  # the plain rotary maths: torch.func cannot see through the Triton
            if isinstance(module, Attention) and module.rotary in TRITON_APPLIES:  # kernel's autograd.Function,
                module.rotary = reference  # and a compiled step fuses the plain maths anyway
        self.flat = FlatParameters.of(self.model, self.optim.weight_decay)
        self.decay = self.flat.decay.to(self.device)
        self.params = self.flat.stack([r.module.model for r in self.runs]).to(self.device)  # (r, p)
        self.state = AdamWState.zeros(len(self.runs), self.flat.size, self.device)
        self.global_step = torch.zeros((), dtype=torch.long, device=self.device)
        self.start = 0
        if resume:
            self._resume()

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
        self._step = self._compiled_step() if self.options.compile != "none" else self._train_step
        self.stop_signal: int | None = None

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
            raise ValueError("stacked training does not start from model.vision_init (train those runs with train.py)")
        template = self.runs[0].module.model
        if any(not p.requires_grad for p in template.parameters()):
            raise ValueError("stacked training trains every parameter; this model has frozen ones")
        for run in self.runs[1:]:  # one template's buffers serve every run: they must not depend on the seed
            for (name, mine), (_, theirs) in zip(template.named_buffers(), run.module.model.named_buffers()):
                if not torch.equal(mine, theirs):
                    raise ValueError(f"buffer {name} differs between seeds {self.runs[0].seed} and {run.seed}: "
                                     "stacked runs share one model's buffers")

    # the step ---------------------------------------------------------------------------------------------------
    def _loss(self, params: dict, images, input_ids, labels, position_ids, media_slots) -> torch.Tensor:
        layout = Layout(position_ids, None, media_slots, self.model.scheme.attention_groups(input_ids))
        with self.autocast():
            out = functional_call(self.model, params, (images, input_ids), {"labels": labels, "layout": layout})
        return out.loss

    def _grads(self, params: dict, images, input_ids, labels, position_ids, media_slots):
        """Every run's gradients (name -> (r, ...)) and losses (r,)."""
        if self.stack == "vmap":
            # SDPA's fused CPU kernel has no batching rule (vmap would loop over the runs inside it); its plain
            # formulation batches. On CUDA vmap gets the fused kernels (whether they batch is not measured yet).
            backend = _math_attention() if self.device.type == "cpu" else nullcontext()
            with backend:
                return vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, 0, 0, None))(
                    params, images, input_ids, labels, position_ids, media_slots)
        grads, losses = [], []
        for r in range(len(self.runs)):
            g, loss = grad_and_value(self._loss)({k: v[r] for k, v in params.items()}, images[r], input_ids[r],
                                                 labels[r], position_ids[r], media_slots)
            grads.append(g)
            losses.append(loss)
        return {k: torch.stack([g[k] for g in grads]) for k in grads[0]}, torch.stack(losses)

    def _train_step(self, params, exp_avg, exp_avg_sq, adam_step, global_step, images, input_ids, labels,
                    position_ids, media_slots) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of every run, in place on the state tensors -> (losses (r,), the learning rate)."""
        grads, losses = self._grads(self.flat.views(params), images, input_ids, labels, position_ids, media_slots)
        finite = torch.isfinite(losses.detach())  # a run whose loss is not finite keeps its state: no host sync
        _, factor = clip_per_run(grads, self.clip)
        flat_grads = self.flat.flatten(grads) * factor[:, None]
        lr = scheduled_lr(global_step, self.optim, self.max_steps)
        new, state = adamw_update(params, flat_grads, AdamWState(exp_avg, exp_avg_sq, adam_step), lr, self.decay,
                                  self.optim, finite)
        params.copy_(new)
        exp_avg.copy_(state.exp_avg)
        exp_avg_sq.copy_(state.exp_avg_sq)
        adam_step.copy_(state.step)
        global_step.add_(1)
        return losses.detach(), lr

    def _compiled_step(self):
        mode = None if self.options.compile == "default" else self.options.compile
        if mode == "reduce-overhead":  # state the graphs update in place: at fixed addresses, so they can replay
            for t in (self.params, *self.state.tensors(), self.global_step):
                torch._dynamo.mark_static_address(t)
        return torch.compile(self._train_step, mode=mode, dynamic=False)

    # the loop -------------------------------------------------------------------------------------------------------
    def train(self, say=print) -> int:
        """Train every run to ``max_steps`` -> 0, 1 when a run failed, or 128 + a signal after a clean stop."""
        from torch.utils.data import DataLoader

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
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
            if _main_thread() else {}
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        started, step, first = time.monotonic(), self.start, 0.0
        try:
            graphs = self.options.compile == "reduce-overhead"
            for batch in loader:
                step = batch["step"]
                inputs = to_device(batch, self.device)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # each call is a new iteration of the graph
                losses, lr = self._step(self.params, *self.state.tensors(), self.global_step, inputs["images"],
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
                if self.stop_signal is not None:
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self._write_logs(pending, say)
        _synchronize(self.device)
        seconds, done = time.monotonic() - started, step + 1
        rest = done - self.start - 1
        images = len(self.runs) * self.batches.runs[0].batch_size
        say(f"trained steps {self.start}-{done} in {seconds:.1f} s: the first step (compile included) "
            f"{first:.1f} s, then {rest / max(seconds - first, 1e-9):.2f} steps/s for all runs together "
            f"({rest * images / max(seconds - first, 1e-9):.0f} images/s)")
        self.save(done)
        if self.stop_signal is not None and done < self.max_steps:
            say(f"stopped by {signal.Signals(self.stop_signal).name} at step {done}: saved every run's last.ckpt; "
                "continue with --resume")
            return 128 + self.stop_signal
        return 1 if any(r.failed for r in self.runs) else 0

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _open_logs(self) -> None:
        for run in self.runs:
            logs = run.root / "logs"
            version = 0
            while (logs / f"version_{version}").exists():
                version += 1
            run.log = logs / f"version_{version}" / "metrics.csv"
            run.log.parent.mkdir(parents=True)
            with open(run.log, "w", newline="") as f:
                csv.writer(f).writerow(["epoch", "step", "train/loss", "train/lr"])

    def _write_logs(self, pending: list, say) -> None:
        """The losses of the steps in ``pending``: logged at every ``log_every_n_steps``-th step (as Lightning logs
        them), a non-finite one reported for its run (skipped, or the run failed with ``on_nonfinite: raise``)."""
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending]).float().cpu()  # (steps, r)
        rates = torch.stack([p[2] for p in pending]).cpu()
        per_epoch = self.batches.runs[0].batches_per_epoch
        for r, run in enumerate(self.runs):
            rows = []
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
                    rows.append([step // per_epoch, step, loss, lr])
            with open(run.log, "a", newline="") as f:
                csv.writer(f).writerows(rows)

    # checkpoints ----------------------------------------------------------------------------------------------------
    def save(self, step: int, name: str = "last.ckpt") -> None:
        """Every run's checkpoint at ``step`` (a run that failed keeps what it had)."""
        import lightning

        from mmrope import __version__
        from mmrope.train.checkpoint_io import AtomicCheckpointIO

        params = self.params.detach().cpu()
        lr = float(self.optim.lr * cosine_with_warmup(self.optim.warmup_steps, self.max_steps,
                                                      self.optim.min_lr_ratio)(step))
        for r, run in enumerate(self.runs):
            if run.failed:
                continue
            module = run.module
            with torch.no_grad():
                for n, value in self.flat.row(params[r]).items():
                    module.model.get_parameter(n).copy_(value)
            checkpoint = {
                "epoch": step // self.batches.runs[0].batches_per_epoch,
                "global_step": step,
                "pytorch-lightning_version": lightning.__version__,  # CaptionModule.load_from_checkpoint reads it
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "hparams_name": "kwargs",
                "hyper_parameters": dict(module.hparams),
                "optimizer_states": [self.state.to_torch(r, self.flat, self.optim, lr, self.optim.lr)],
                "lr_schedulers": [{"base_lrs": [self.optim.lr] * 2, "last_epoch": step, "_step_count": step + 1,
                                   "_last_lr": [lr] * 2, "lr_lambdas": [None, None]}],
                "stacked": {"engine": ENGINE, "version": __version__, "seed": run.seed, "runs": len(self.runs)},
            }
            module.on_save_checkpoint(checkpoint)  # the "mmrope" entry: config and tokenizer
            AtomicCheckpointIO().save_checkpoint(checkpoint, run.root / "checkpoints" / name)

    def _resume(self) -> None:
        from mmrope.checkpoints import read_checkpoint

        steps, states = set(), []
        for run in self.runs:
            path = run.root / "checkpoints" / "last.ckpt"
            if not path.is_file():
                raise ValueError(f"--resume: {path} does not exist")
            _, _, weights, checkpoint = read_checkpoint(path)
            if (checkpoint.get("stacked") or {}).get("engine") != ENGINE:
                raise ValueError(f"--resume: {path} was not written by {ENGINE}; resume it with train.py")
            run.module.model.load_state_dict(weights, strict=False)
            steps.add(int(checkpoint["global_step"]))
            states.append(checkpoint["optimizer_states"][0])
        if len(steps) != 1:
            raise ValueError(f"--resume: the runs' checkpoints hold different steps ({sorted(steps)}); resume them "
                             "apart")
        self.start = steps.pop()
        self.params = self.flat.stack([r.module.model for r in self.runs]).to(self.device)
        self.state = AdamWState.from_torch(states, self.flat, self.device)
        self.global_step.fill_(self.start)


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


def _device(trainer: dict) -> torch.device:
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator={accelerator}: CUDA is not available on this machine")
        return torch.device("cuda")
    if accelerator in ("cpu", "auto"):
        return torch.device("cpu")
    raise ValueError(f"trainer.accelerator={accelerator}: stacked training runs on cpu or cuda")


def _autocast(precision, device: torch.device):
    precision = str(precision or "32-true")
    if precision in ("32", "32-true"):
        return nullcontext
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"trainer.precision={precision}: stacked training supports 32 and bf16-mixed")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise ValueError("usage: python -m mmrope.train.stacked --run SEED=DIR [--run SEED=DIR ...] [options] -- fit "
                         "--config CONFIG [train.py arguments]")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m mmrope.train.stacked", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="SEED=DIR",
                   help="a run: its seed (seed_everything and data.seed) and its folder (trainer.default_root_dir)")
    p.add_argument("--stack", default="auto", choices=STACKS)
    p.add_argument("--renderer", default="auto", choices=RENDERERS + ("auto",))
    p.add_argument("--compile", default="none", choices=COMPILE_MODES)
    p.add_argument("--save-steps", default="", help="comma-separated steps to keep checkpoints/step<N>.ckpt at")
    p.add_argument("--resume", action="store_true", help="continue every run from its last.ckpt")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in folders that hold a run: their checkpoints are deleted")
    return p.parse_args(argv[:split]), argv[split + 1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def say(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    try:
        args, train_args = parse_args(argv)
        runs = []
        for spec in args.run:
            seed, sep, root = spec.partition("=")
            if not sep or not seed.strip().lstrip("-").isdigit() or not root:
                raise ValueError(f"--run {spec!r}: expected SEED=DIR, such as 0=runs/a/seed0")
            runs.append((int(seed), Path(root)))
        save_steps = [int(s) for s in args.save_steps.split(",") if s.strip()]
        options = EngineOptions(args.stack, args.renderer, args.compile, save_steps)
        trainer = StackedTrainer(runs, train_args, options, resume=args.resume, overwrite=args.overwrite)
        return trainer.train(say)
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
