"""``mmrope eval``: score a checkpoint at one or more resolutions (and, for clips, frame counts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrope.cli.common import add_model_arguments, generation_options, refuse_nul, report_skipped


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="BLEU-4, CIDEr-D (and shapes / clips accuracies) of a checkpoint at one or more resolutions",
        description="Caption an evaluation set at each size (and, for clips, frame count) and score it: BLEU-4 and "
                    "CIDEr-D, on shapes the exact, attribute and relation accuracies, on clips the exact, "
                    "attribute and event accuracies. Prints a markdown table; --out writes JSON.")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint or an exported folder")
    p.add_argument("--data", required=True,
                   help="a training YAML (its data: section), a dataset (folder with metadata.jsonl, COCO .json, "
                        ".csv), shards (their index.json or its folder), or `shapes`")
    p.add_argument("--sizes", help="comma-separated sides in pixels, e.g. 64,96,128 (default: the training size)")
    p.add_argument("--frames", help="clips: comma-separated frame counts, e.g. 4,8 (default: the config's)")
    p.add_argument("--clip-mode", choices=("block", "frames"), default="block",
                   help="clips: one (t, h, w) block, or one image per frame, as trained (default: block)")
    p.add_argument("--n", type=int, help="number of images (default: 500 shapes scenes, or the whole dataset)")
    p.add_argument("--split", default="test", choices=("val", "test", "compositional"),
                   help="shapes split to draw scenes from (default: test)")
    p.add_argument("--level", type=int, default=2, choices=(1, 2, 3), help="shapes level for --data shapes "
                                                                         "(default: 2)")
    p.add_argument("--out", type=Path, help="also write the results as JSON, and plotted against size (or frame count) "
                                            "as a PNG of the same name")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let the dataset's file names lead outside its folder (refused by default: a downloaded "
                        "dataset could otherwise make eval read any file)")
    p.add_argument("--trust-shard-index", action="store_true",
                   help="let a shard index name URLs, pipe: commands (run by the shell) and shards outside its "
                        "folder, as data.shards.trust_index does (refused by default)")
    add_model_arguments(p, batch_size=32, resize_default=None)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import json

    from mmrope.eval.evaluation import evaluate, format_table, parse_sizes, resolve_data
    from mmrope.inference import load

    refuse_nul(args, "ckpt", "data", "out")
    pipeline = load(args.ckpt, device=args.device)
    train_size = pipeline.config.vision.image_size
    sizes = parse_sizes(args.sizes) if args.sizes else [train_size]
    data = args.data
    if data.endswith((".yaml", ".yml")):  # a training config: its data section, resolved as training resolves it
        from mmrope.resources import find_config
        from mmrope.train.config_reader import read_config

        data = read_config(["--config", str(find_config(data))])["data"]
    eval_set = resolve_data(data, train_size, split=args.split, n=args.n, level=args.level,
                            allow_outside=args.allow_outside_paths, trust_shards=args.trust_shard_index)
    resize = args.resize or eval_set.resize
    frames = parse_sizes(args.frames, "--frames") if args.frames else None
    if frames and eval_set.frames is None:
        raise ValueError(f"--frames is for clips, but {eval_set.name} holds images")
    rows, skipped = evaluate(pipeline, eval_set, sizes, resize=resize, progress=True, frames=frames,
                             clip_mode=args.clip_mode, **generation_options(args))
    print(f"{eval_set.name}, {len(eval_set)} images, {args.strategy} decoding, {resize} resize; "
          f"trained at {train_size} px")
    print(format_table(rows, train_size))
    if args.out:
        results = {"checkpoint": str(args.ckpt), "data": eval_set.name, "train_size": train_size, "resize": resize,
                   **{k: v for k, v in generation_options(args).items() if k != "batch_size"}, "results": rows}
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        from mmrope.viz.curves import plot_eval_results

        plot = args.out.with_suffix(".png") if args.out.suffix != ".png" else args.out.with_name(args.out.name + ".png")
        plot_eval_results(rows, plot, train_size, title=f"{args.ckpt} on {eval_set.name}")
        print(f"wrote {args.out} and {plot}", file=sys.stderr)
    if skipped:
        report_skipped("eval", skipped, len(eval_set))
        return 1
    return 0
