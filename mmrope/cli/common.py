"""What the inference commands share: model, preprocessing and generation options, input expansion, skip lists."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

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


def refuse_nul(args: argparse.Namespace, *flags: str, positional: tuple[str, ...] = ()) -> None:
    """One line naming the argument when a file name given to it holds a NUL byte (no file can have one; Python
    would say only "embedded null byte", naming neither)."""
    for name in flags + positional:
        value = getattr(args, name, None)
        if value is not None and "\0" in str(value):
            label = name if name in positional else f"--{name.replace('_', '-')}"
            raise ValueError(f"{label} {str(value)!r}: a file name cannot contain a NUL byte")


def expand_inputs(inputs: list[str], recursive: bool = False, clips: bool = False) -> tuple[list[str], list[str]]:
    """Image files to caption, in input order without repeats, and one ``"input: reason"`` line for each folder or
    glob that names none, and each name that cannot be a file. A path that exists is taken as it is, so a missing
    file reaches ``load_image``, which says so; folders give their image files (by suffix, hidden files left out),
    sorted, or with ``clips`` are kept as they are: one clip each. Entries that are not regular files (a named
    pipe, a device) are kept too, never opened: ``load_image`` names them."""
    import glob

    files, problems = [], []
    for spec in inputs:
        path = Path(spec)
        if "\0" in spec:
            problems.append(f"{spec!r}: a file name cannot contain a NUL byte")
        elif path.is_dir() and clips:
            files.append(spec)
        elif path.is_dir():
            try:
                entries = list(path.rglob("*") if recursive else path.iterdir())
            except OSError as e:
                problems.append(f"{spec}: cannot list this folder ({e.strerror or e})")
                continue
            # a symbolic link is kept even when it leads nowhere, and a named pipe or device too, so that
            # load_image says what is wrong with it; subfolders are listed by --recursive
            found = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                           and (p.is_symlink() or not p.is_dir()))
            if not found:
                hint = "" if recursive else "; --recursive looks in subfolders"
                problems.append(f"{spec}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)}){hint}")
            files += map(str, found)
        elif not path.exists() and glob.has_magic(spec):
            found = sorted(m for m in glob.glob(spec, recursive=True) if not Path(m).is_dir())
            if not found:
                problems.append(f"{spec}: no file matches this pattern")
            files += found
        else:
            files.append(spec)
    return list(dict.fromkeys(files)), problems


@contextlib.contextmanager
def replace_when_done(path: Path, flag: str = "--out") -> Iterator[TextIO]:
    """A text file whose contents replace ``path`` only once all is written: it is written beside ``path`` and
    renamed over it at the end, so a full disk, an error or Ctrl-C leaves an existing ``path`` as it was and no
    file cut mid-line. Through a symbolic link the file it leads to is replaced; a ``path`` that is not a regular
    file (``/dev/null``, a named pipe) is written as it is, having nothing to keep."""
    import stat

    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    if target.exists() and not target.is_file():
        with open(target, "w", encoding="utf-8") as f:
            yield f
        return
    if not target.parent.is_dir():
        raise ValueError(f"{flag} {path}: no such folder {path.parent}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if target.exists():
                os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:  # a full disk, a read-only folder, a quota
        kept = "left as it was" if target.exists() else "not written"
        raise OSError(f"{flag} {path}: cannot write it ({e.strerror or e}); {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
