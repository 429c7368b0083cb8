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
    refuse_nul,
    replace_when_done,
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
    p.add_argument("--max-clip-pixels", type=int, default=None,
                   help="refuse a clip whose frames to decode hold more pixels than this, all together, before "
                        "decoding any (default: 200 million)")
    p.add_argument("--max-clip-frames", type=int, default=None,
                   help="refuse an animated file with more frames than this, before decoding any (default: 1000)")
    add_model_arguments(p)
    p.set_defaults(func=run_caption)


def run_caption(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from tqdm import tqdm

    from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError
    from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
    from mmrope.inference import load

    for flag in ("max_pixels", "max_clip_pixels", "max_clip_frames"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    refuse_nul(args, "ckpt", "out")
    files, problems = expand_inputs(args.paths, args.recursive, args.clips)
    if args.out:
        refuse_input_as_output(args.out, files)
    total = len(files) + len(problems)  # an empty folder or glob counts as one input that failed
    pipeline = load(args.ckpt, device=args.device)
    results = pipeline.caption_each(files, size=args.size, resize=args.resize,
                                    max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, clip_mode=args.clip_mode,
                                    max_frames=args.max_frames, fps=args.fps,
                                    max_clip_pixels=args.max_clip_pixels or DEFAULT_MAX_CLIP_PIXELS,
                                    max_clip_frames=args.max_clip_frames or DEFAULT_MAX_CLIP_FRAMES,
                                    **generation_options(args))
    show_progress = sys.stderr.isatty() or len(files) > PROGRESS_ABOVE
    with (replace_when_done(args.out) if args.out else contextlib.nullcontext() as out,
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


def refuse_input_as_output(out: Path, files: list[str]) -> None:
    """Refuse an ``--out`` that is one of the inputs, or a frame of a clip folder that is one: the captions would
    replace the picture they were made from."""
    import os

    from mmrope.data.videos import FRAME_EXTENSIONS

    target = Path(os.path.realpath(out))
    for spec in files:
        path = Path(spec)
        same = target.exists() and path.exists() and os.path.samefile(path, target)
        in_clip = (path.is_dir() and target.parent == Path(os.path.realpath(path))
                   and target.suffix.lower() in FRAME_EXTENSIONS)
        if same or in_clip:
            what = "one of the inputs" if same else f"a frame of the clip {spec}"
            raise ValueError(f"--out {out} is {what}: the captions would replace it; write them to another file")
