"""Seeds trained together against one after another, and the batched torch renderer against Pillow, on this machine.

    python benchmarks/bench_stacked.py [--config configs/shapes_place.yaml] [--seeds 3] [--rounds 3] [--threads N]
                                       [--parts steps render processes] [--steps 60]

``steps``: the training steps of S seeds of one recipe (default: the CPU place recipe, batch 64 at 64 px), timed
side by side in interleaved rounds, each contender's S runs at the same step of the same data:

- ``one after another``: what S ``python -m mmrope.train`` processes do per step, without Lightning's own
  overhead: each seed's batch drawn by Pillow and collated, its layout, forward + backward, clip_grad_norm_, AdamW;
- ``stacked (loop | vmap), pillow | torch``: :mod:`mmrope.train.stacked.step` of all S runs (per-run gradients by
  a loop over the runs or by vmap, the flat AdamW), the batches drawn by Pillow or by the torch renderer.

Each row also splits the step into its data part (draw, collate, layout; torch: draw included) and its model part
(forward, backward, optimiser). "run-steps/s" counts one step of one run: S per contender's step.

``processes``: whole runs, start-up included: ``python -m mmrope.train`` once per seed against one
``mmrope train stacked`` for all seeds (``--steps`` each; torch threads as the environment sets them).

``render``: images/s of ``shapes.render_scene`` + ``to_tensor`` (Pillow, one image at a time) against
:func:`mmrope.data.render.render_scenes` (one batch), level-2 scenes, batch 64 and 256, at 64 and 128 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, time_side_by_side

ROOT = Path(__file__).resolve().parents[1]


def step_contenders(config: str, seeds: int, steps: int) -> dict:
    from mmrope.model.captioner import Layout
    from mmrope.train.optim import cosine_with_warmup, parameter_groups
    from mmrope.train.stacked import EngineOptions, StackedTrainer
    from mmrope.train.stacked.data import to_device

    root = Path(tempfile.mkdtemp())
    runs = [(k, root / f"seed{k}") for k in range(seeds)]
    args = ["fit", "--config", str(config)]
    trainers = {(stack, renderer): StackedTrainer(runs, args, EngineOptions(stack=stack, renderer=renderer))
                for stack in ("loop", "vmap") for renderer in ("pillow", "torch")}
    base = trainers["loop", "pillow"]
    counter = {"step": 0}

    def data(trainer):
        return to_device(trainer.batches[counter["step"] % steps], trainer.device)

    def model_step(trainer, inputs):
        trainer.step(trainer.params, *trainer.state.tensors(), trainer.global_step, inputs["images"],
                     inputs["input_ids"], inputs["labels"], inputs["position_ids"], inputs["media_slots"])

    # one after another: each seed's own model and torch.optim.AdamW, as CaptionModule configures them
    models = [r.module.model for r in base.runs]
    optimizers = [torch.optim.AdamW(parameter_groups(m, base.optim.weight_decay), lr=base.optim.lr,
                                    betas=tuple(base.optim.betas)) for m in models]
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, cosine_with_warmup(base.optim.warmup_steps, base.max_steps,
                                                                         base.optim.min_lr_ratio))
                 for o in optimizers]
    alone_data, orders = base.batches.runs, [{} for _ in models]

    def alone_batches():
        batches = []
        for r, data_ in enumerate(alone_data):
            indices = data_.indices(counter["step"] % steps, orders[r])
            batch = data_.collate([data_.dataset[j] for j in indices])
            layout = models[r].layout(batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"])
            batches.append((torch.stack(batch["images"]), batch, layout))
        return batches

    def alone_model(batches):
        for (images, batch, layout), model, opt, schedule in zip(batches, models, optimizers, schedules):
            loss = model(images, batch["input_ids"], labels=batch["labels"],
                         layout=Layout(layout.position_ids, layout.attention_mask, layout.media_slots)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), base.clip or float("inf"))
            opt.step()
            opt.zero_grad()
            schedule.step()

    contenders = {"one after another": (alone_batches, alone_model)}
    for (stack, renderer), trainer in trainers.items():
        contenders[f"stacked ({stack}), {renderer}"] = (lambda t=trainer: data(t),
                                                         lambda inputs, t=trainer: model_step(t, inputs))
    return contenders, counter, base


def bench_steps(config: str, seeds: int, rounds: int) -> None:
    contenders, counter, base = step_contenders(config, seeds, steps=8)
    prepared = {name: make() for name, (make, _) in contenders.items()}  # the model parts reuse one batch each

    def whole(make, run):
        def call():
            run(make())
            counter["step"] += 1
        return call

    full = time_side_by_side({n: whole(m, r) for n, (m, r) in contenders.items()}, rounds=rounds, repeats=2)
    data = time_side_by_side({n: m for n, (m, _) in contenders.items()}, rounds=rounds, repeats=2)
    model = time_side_by_side({n: (lambda r=r, b=prepared[n]: r(b)) for n, (_, r) in contenders.items()},
                              rounds=rounds, repeats=2)
    first = full["one after another"]
    rows = [[name, f"{full[name] * 1e3:.0f}", f"{data[name] * 1e3:.0f}", f"{model[name] * 1e3:.0f}",
             f"{seeds / full[name]:.2f}", f"{first / full[name]:.2f}x"] for name in contenders]
    print(f"\n{seeds} seeds of {Path(config).name} (batch {base.batches.runs[0].batch_size}, "
          f"{base.runs[0].config['model']['vision']['image_size']} px), {torch.get_num_threads()} threads; "
          "one step of every seed")
    print(markdown_table(["contender", "ms", "data ms", "model ms", "run-steps/s", "vs one after another"], rows))


def bench_end_to_end(config: str, seeds: int, steps: int) -> None:
    """Whole processes, start-up included: ``python -m mmrope.train`` once per seed, one after another, against
    ``mmrope train stacked`` for all seeds (loop stacking, Pillow data, as ``auto`` picks on a CPU)."""
    import subprocess
    import time

    root = Path(tempfile.mkdtemp())
    common = ["fit", "--config", str(config), f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    timings = {}
    start = time.monotonic()
    for k in range(seeds):
        subprocess.run([sys.executable, "-m", "mmrope.train", *common, f"--seed_everything={k}", f"--data.seed={k}",
                        f"--trainer.default_root_dir={root / f'alone{k}'}"], check=True, capture_output=True)
    timings["train.py per seed, one after another"] = time.monotonic() - start
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mmrope", "train", "stacked", *(f"--run={k}={root / f'stacked{k}'}"
                                                                     for k in range(seeds)), "--", *common],
                   check=True, capture_output=True)
    timings["mmrope.train.stacked, all seeds"] = time.monotonic() - start
    first = timings["train.py per seed, one after another"]
    rows = [[name, f"{t:.1f}", f"{seeds * steps / t:.2f}", f"{first / t:.2f}x"] for name, t in timings.items()]
    print(f"\n{seeds} seeds x {steps} steps of {Path(config).name}, whole processes (start-up included)")
    print(markdown_table(["how", "wall s", "run-steps/s", "vs train.py"], rows))


def bench_render(rounds: int) -> None:
    from mmrope.data.images import to_tensor
    from mmrope.data.render import render_scenes
    from mmrope.data.shapes import render_scene, sample_scene

    rows = []
    for size in (64, 128):
        for batch in (64, 256):
            scenes = [sample_scene(0, i, "train", 2, canvas=size) for i in range(batch)]
            times = time_side_by_side({
                "pillow": lambda s=scenes, z=size: torch.stack([to_tensor(render_scene(x, z)) for x in s]),
                "torch": lambda s=scenes, z=size: render_scenes(s, z),
            }, rounds=rounds, repeats=1)
            rows.append([size, batch, f"{batch / times['pillow']:.0f}", f"{batch / times['torch']:.0f}",
                         f"{times['pillow'] / times['torch']:.2f}x"])
    print(f"\nrendering level-2 scenes on the CPU, {torch.get_num_threads()} threads: images/s")
    print(markdown_table(["px", "batch", "Pillow", "torch renderer", "torch vs Pillow"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/shapes_place.yaml"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--parts", nargs="+", choices=("steps", "render", "processes"), default=["steps", "render"])
    p.add_argument("--steps", type=int, default=60, help="training steps of each run in the processes part")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "steps" in args.parts:
        bench_steps(args.config, args.seeds, args.rounds)
    if "render" in args.parts:
        bench_render(args.rounds)
    if "processes" in args.parts:
        bench_end_to_end(args.config, args.seeds, args.steps)


if __name__ == "__main__":
    main()
