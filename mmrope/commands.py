"""The inference commands: ``mmrope caption`` (images -> captions), ``mmrope eval`` (scores per resolution) and
``mmrope export`` (a checkpoint -> config.json, model.safetensors, tokenizer.json).

Each ``run_*`` is a thin layer over :mod:`mmrope.inference` and :mod:`mmrope.evaluation`; heavy imports stay inside
them so that ``mmrope --help`` answers at once. Captions go to stdout, everything else (progress, the list of
skipped files) to stderr, so ``mmrope caption photos/ > captions.tsv`` holds captions only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
PROGRESS_ABOVE = 32  # images; fewer finish before a bar would tell anything (a terminal always gets one)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "caption", help="caption images and clips (files, folders or globs) with a checkpoint or an exported model",
        description="Caption images and clips: one `path<TAB>caption` line per input on stdout, in input order, or "
                    "JSONL with --out. Animated GIF / WebP / PNG files are clips; with --clips each folder is one "
                    "clip (its frames in name order). Bad files are skipped, listed at the end on stderr, and make "
                    "the exit status 1.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image or clip files, folders (their images, sorted; with --clips, one clip each) or globs")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint (last.ckpt, best-*.ckpt) or an exported "
                                                 "folder")
    p.add_argument("--out", type=Path, help="write JSONL (file_name, image_id, caption per line) instead of stdout")
    p.add_argument("--recursive", action="store_true", help="take images from the subfolders of folders too")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this (default: 50 million)")
    p.add_argument("--size", type=int, help="run at SIZE x SIZE pixels, a multiple of patch_size * merge "
                                            "(default: the training size)")
    p.add_argument("--clips", action="store_true", help="each folder is one clip, its frame images in name order")
    p.add_argument("--clip-mode", choices=("block", "frames"), default="block",
                   help="read a clip as one (t, h, w) block, or as one image per frame: what the model was trained "
                        "with (data.clips.clip_mode; default: block)")
    p.add_argument("--max-frames", type=int, default=32, help="thin longer clips to this many evenly spaced "
                                                              "frames (default: 32)")
    p.add_argument("--fps", type=float, help="frame rate of folder clips, for models with tokens_per_second "
                                             "(default: 2; GIF / WebP give their own)")
    add_model_arguments(p)
    p.set_defaults(func=run_caption)

    p = subparsers.add_parser(
        "eval", help="BLEU-4, CIDEr-D (and shapes / clips accuracies) of a checkpoint at one or more resolutions",
        description="Caption an evaluation set at each size (and, for clips, frame count) and score it: BLEU-4 and "
                    "CIDEr-D, on shapes the exact, attribute and relation accuracies, on clips the exact, "
                    "attribute and event accuracies. Prints a markdown table; --out writes JSON.")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint or an exported folder")
    p.add_argument("--data", required=True,
                   help="a training YAML (its data: section), a dataset (folder with metadata.jsonl, COCO .json, "
                        ".csv), or `shapes`")
    p.add_argument("--sizes", help="comma-separated sides in pixels, e.g. 64,96,128 (default: the training size)")
    p.add_argument("--frames", help="clips: comma-separated frame counts, e.g. 4,8 (default: the config's)")
    p.add_argument("--clip-mode", choices=("block", "frames"), default="block",
                   help="clips: one (t, h, w) block, or one image per frame, as trained (default: block)")
    p.add_argument("--n", type=int, help="number of images (default: 500 shapes scenes, or the whole dataset)")
    p.add_argument("--split", default="test", choices=("val", "test", "compositional"),
                   help="shapes split to draw scenes from (default: test)")
    p.add_argument("--level", type=int, default=2, choices=(1, 2, 3), help="shapes level for --data shapes "
                                                                         "(default: 2)")
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let the dataset's file names lead outside its folder (refused by default: a downloaded "
                        "dataset could otherwise make eval read any file)")
    add_model_arguments(p, batch_size=32, resize_default=None)
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "export", help="write a checkpoint as config.json + model.safetensors + tokenizer.json",
        description="Export a Lightning checkpoint to a folder that `mmrope caption --ckpt` and mmrope.load() read "
                    "without Lightning: config.json, model.safetensors and tokenizer.json.")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint (last.ckpt, best-*.ckpt)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.set_defaults(func=run_export)


def add_model_arguments(p: argparse.ArgumentParser, batch_size: int = 16, resize_default: str | None = "fixed"):
    """Preprocessing, generation and device options shared by ``caption`` and ``eval``."""
    p.add_argument("--resize", choices=("fixed", "native"), default=resize_default,
                   help="fixed: stretch to a square, as shapes training does; native: keep the aspect ratio, at most "
                        f"size^2 pixels, for photos (default: {resize_default or 'the config data.resize, or fixed'})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")
    p.add_argument("--strategy", default="greedy", choices=("greedy", "beam", "sample"), help="(default: greedy)")
    p.add_argument("--num-beams", type=int, default=4, help="beams for --strategy beam (default: 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest caption in tokens (default: 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="for --strategy sample (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass for --strategy sample (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="makes --strategy sample repeatable (default: 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")


def generation_options(args: argparse.Namespace) -> dict:
    return {"strategy": args.strategy, "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "batch_size": args.batch_size}


def expand_inputs(inputs: list[str], recursive: bool = False, clips: bool = False) -> tuple[list[str], list[str]]:
    """Image files to caption, in input order without repeats, and one ``"input: reason"`` line for each folder or
    glob that names none. A path that exists is taken as it is, so a missing file reaches ``load_image``, which
    says so; folders give their image files (by suffix, hidden files left out), sorted, or with ``clips`` are kept
    as they are: one clip each."""
    import glob

    files, problems = [], []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir() and clips:
            files.append(spec)
        elif path.is_dir():
            try:
                entries = list(path.rglob("*") if recursive else path.iterdir())
            except OSError as e:
                problems.append(f"{spec}: cannot list this folder ({e.strerror or e})")
                continue
            # a symbolic link is kept even when it leads nowhere, so that load_image says what is wrong with it
            found = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                           and (p.is_file() or p.is_symlink()))
            if not found:
                hint = "" if recursive else "; --recursive looks in subfolders"
                problems.append(f"{spec}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)}){hint}")
            files += map(str, found)
        elif not path.exists() and glob.has_magic(spec):
            found = sorted(m for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not found:
                problems.append(f"{spec}: no file matches this pattern")
            files += found
        else:
            files.append(spec)
    return list(dict.fromkeys(files)), problems


def image_id(path: str) -> int | str:
    """The id COCO's results format wants: the number that is the file's stem or ends it after an underscore
    (``000000391895.jpg``, ``COCO_val2014_000000391895.jpg`` -> 391895), otherwise the stem."""
    stem = Path(path).stem
    match = re.search(r"(?:^|_)(\d+)$", stem)
    return int(match.group(1)) if match else stem


def report_skipped(command: str, problems: list[str], total: int) -> None:
    print(f"mmrope {command}: skipped {len(problems)} of {total} images:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)


def run_caption(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import signal

    from tqdm import tqdm

    from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError
    from mmrope.inference import load

    if hasattr(signal, "SIGPIPE"):  # `mmrope caption ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.max_pixels is not None and args.max_pixels <= 0:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    files, problems = expand_inputs(args.paths, args.recursive, args.clips)
    total = len(files) + len(problems)  # an empty folder or glob counts as one input that failed
    pipeline = load(args.ckpt, device=args.device)
    results = pipeline.caption_each(files, size=args.size, resize=args.resize,
                                    max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, clip_mode=args.clip_mode,
                                    max_frames=args.max_frames, fps=args.fps, **generation_options(args))
    show_progress = sys.stderr.isatty() or len(files) > PROGRESS_ABOVE
    with (open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext() as out,
          tqdm(total=len(files), unit="image", file=sys.stderr, leave=False, disable=not show_progress) as bar):
        write = bar.write if sys.stdout.isatty() else print  # above the bar when both share a terminal
        for path, result in zip(files, results):
            bar.update()
            if isinstance(result, ImageError):
                problems.append(str(result))
            elif out:
                out.write(json.dumps({"file_name": path, "image_id": image_id(path), "caption": result}) + "\n")
            else:
                write(f"{path}\t{result}")
    if args.out:
        print(f"wrote {total - len(problems)} captions to {args.out}", file=sys.stderr)
    if problems:
        report_skipped("caption", problems, total)
        return 1
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from mmrope.evaluation import evaluate, format_table, parse_sizes, resolve_data
    from mmrope.inference import load

    pipeline = load(args.ckpt, device=args.device)
    train_size = pipeline.config.vision.image_size
    sizes = parse_sizes(args.sizes) if args.sizes else [train_size]
    eval_set = resolve_data(args.data, train_size, split=args.split, n=args.n, level=args.level,
                            allow_outside=args.allow_outside_paths)
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
        print(f"wrote {args.out}", file=sys.stderr)
    if skipped:
        report_skipped("eval", skipped, len(eval_set))
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mmrope.checkpoints import EXPORT_FILES
    from mmrope.inference import load
    from mmrope.model import num_parameters

    pipeline = load(args.ckpt, device="cpu")
    pipeline.export(args.out)
    print(f"wrote {', '.join(EXPORT_FILES)} to {args.out} ({num_parameters(pipeline.model):,} parameters)")
    return 0
