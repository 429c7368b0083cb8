"""Relation accuracy against training steps, from the checkpoints a stacked run kept (``--save-steps``).

    python benchmarks/learning_curve.py RUN_DIR [RUN_DIR ...] --data configs/shapes_gpu.yaml [--n 200]
                                        [--split test] [--device cuda]

Each RUN_DIR is a run folder (``<root>/checkpoints/step<N>.ckpt`` and ``last.ckpt``); every checkpoint is scored at
the training size on ``--n`` scenes of ``--split`` (greedy captions, the ablation's scorer), and one markdown row
per step gives each run's relation (level 1: place) and attribute accuracy and their mean. What the gpu preset's
``max_steps`` is sized from (docs/performance.md, "Many runs at once").
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--data", required=True, help="the training YAML the runs used (its data section)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--split", default="test")
    p.add_argument("--device")
    args = p.parse_args()

    from mmrope.eval.evaluation import data_set, evaluate
    from mmrope.inference import load
    from mmrope.train.config_reader import read_config

    data = read_config(["--config", args.data])["data"]
    eval_set = data_set(data, split=args.split, n=args.n)
    size = data["image_size"]
    scores: dict[int, list[tuple[float, float]]] = {}
    for run in args.runs:
        for ckpt in sorted((run / "checkpoints").glob("step*.ckpt")):
            step = int(re.sub(r"\D", "", ckpt.stem))
            results, _ = evaluate(load(ckpt, device=args.device), eval_set, [size], batch_size=250,
                                  max_new_tokens=12)
            scores.setdefault(step, []).append((results[0]["relation"], results[0]["attribute"]))
            print(f"{ckpt}: relation {results[0]['relation']:.3f}, attribute {results[0]['attribute']:.3f}",
                  file=sys.stderr, flush=True)
    rows = []
    for step in sorted(scores):
        relation, attribute = zip(*scores[step])
        rows.append([step, " / ".join(f"{r:.3f}" for r in relation), f"{sum(relation) / len(relation):.3f}",
                     " / ".join(f"{a:.3f}" for a in attribute), f"{sum(attribute) / len(attribute):.3f}"])
    level = data["shapes"]["level"] if data["dataset"] == "shapes" else None
    what = "place" if level == 1 else "relation"
    print(f"\n{args.split} split, {args.n} scenes at {size} px (the training size), {len(args.runs)} runs")
    print(markdown_table(["step", f"{what} per run", f"{what} mean", "attribute per run", "attribute mean"], rows))


if __name__ == "__main__":
    main()
