"""What the inference commands share: model, preprocessing and generation options, input expansion, skip lists."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
PROGRESS_ABOVE = 32  # images; fewer finish before a bar would tell anything (a terminal always gets one)


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
