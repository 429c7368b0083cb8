"""Where the time of a CPU ablation run goes: rendering, collation, the model's step, Lightning, scoring, start-up.

    python benchmarks/bench_place_run.py [--steps 60]

Measures, side by side in one process and then through the real command, what one run of the ablation's cpu preset
(configs/shapes_place.yaml) spends its time on, for the preset's model (patch 16, no merge) and for the first
preset's patch 8 with a 2 x 2 merge, each built from the config as train.py builds it:

    render       drawing a batch of scenes with Pillow (ShapesDataset.__getitem__)
    collate      turning them into a batch (CaptionCollator)
    model step   forward, backward and AdamW on that batch (Captioner.layout first, as the training module does)
    run          `python -m mmrope.train fit` for --steps steps, no validation: start-up + steps; the per-step
                 remainder after render + collate + model step is Lightning's loop and logging
    score        the ablation's scoring of a checkpoint: 2 splits x 5 sizes x 100 scenes, greedy

Prints markdown tables; a benchmark, not a test. Figures move with the load of a shared machine: quote ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, time_call

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"the cpu preset (patch 16, no merge)": [],  # configs/shapes_place.yaml as it is
            "patch 8, 2 x 2 merge (the first preset)": ["--model.vision.patch_size=8",
                                                        "--model.vision.spatial_merge_size=2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="steps of the timed training command (default 60)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from mmrope.train.config_reader import read_config
    from mmrope.train.datamodule import CaptionDataModule
    from mmrope.train.module import CaptionModule

    rows = []
    for name, overrides in VARIANTS.items():
        config = read_config(["--config", str(ROOT / "configs/shapes_place.yaml"), *overrides])
        torch.manual_seed(0)
        datamodule = CaptionDataModule(**config["data"])  # as train.py builds them
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        data, collate = loader.dataset, loader.collate_fn
        model = CaptionModule(**{**config["model"], "tokenizer": datamodule.tokenizer_state}).model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        samples = [data[i] for i in range(loader.batch_size)]
        batch = collate(samples)

        def step(model=model, optimizer=optimizer, batch=batch):
            layout = model.layout(batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"])
            loss = model(batch["images"], batch["input_ids"], labels=batch["labels"], layout=layout).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def render(data=data, n=loader.batch_size):
            return [data[i] for i in range(n)]

        def collation(collate=collate, samples=samples):
            return collate(samples)

        rows += [[f"render a batch ({len(samples)} scenes), {name}", f"{time_call(render, args.repeats, 1) * 1e3:.1f}"],
                 [f"collate, {name}", f"{time_call(collation, args.repeats, 1) * 1e3:.1f}"],
                 [f"model step, {name}", f"{time_call(step, args.repeats, 1) * 1e3:.1f}"]]
    print(f"one batch of the place recipe (configs/shapes_place.yaml), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(markdown_table(["part", "median ms"], rows))

    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "mmrope.train", "fit", "--config", str(ROOT / "configs/shapes_place.yaml"),
                   f"--trainer.default_root_dir={root}", "--trainer.limit_val_batches=0",
                   "--trainer.enable_progress_bar=false", "--data.eval_sizes=[]", "--overwrite"]  # one folder, 2 runs
        timed = {}
        for steps in (1, args.steps):
            start = time.perf_counter()
            subprocess.run([*command, f"--trainer.max_steps={steps}"], check=True, capture_output=True, cwd=ROOT)
            timed[steps] = time.perf_counter() - start
        per_step = (timed[args.steps] - timed[1]) / (args.steps - 1)

        from mmrope.ablation.plan import load_plan
        from mmrope.ablation.runner import score_run

        plan = load_plan(ROOT / "configs/ablation/shapes.yaml", "cpu")
        ckpt = Path(root) / "checkpoints" / "last.ckpt"
        start = time.perf_counter()
        score_run(plan, ckpt, device="cpu")
        score = time.perf_counter() - start
    print()
    print(f"`python -m mmrope.train fit --config configs/shapes_place.yaml`, no validation: 1 and {args.steps} steps")
    print(markdown_table(["part", "seconds"], [
        ["start-up (the 1-step run)", f"{timed[1]:.1f}"],
        ["one step inside the run (render, collate, model step, Lightning)", f"{per_step:.3f}"],
        [f"scoring ({len(plan.splits)} splits x {len(plan.sizes)} sizes x {plan.n} scenes)", f"{score:.1f}"],
        [f"one cpu-preset run ({plan.max_steps} steps), start-up + steps + scoring",
         f"{timed[1] + per_step * plan.max_steps + score:.0f}"],
    ]))


if __name__ == "__main__":
    main()
