"""``mmrope caption``: images and clips -> captions, one ``path<TAB>caption`` line per input (or JSONL).

Captions go to stdout, everything else (progress, the list of skipped files) to stderr, so ``mmrope caption photos/ >
captions.tsv`` holds captions only. A bad file is skipped and listed; the others are still captioned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrope.cli.common import (
    PROGRESS_ABOVE,
    add_model_arguments,
    expand_inputs,
    generation_options,
    image_id,
    report_skipped,
)


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
