"""``mmrope data shapes``: write the shapes benchmark to disk as an imagefolder (PNGs plus ``metadata.jsonl``);
``mmrope data shard`` and ``mmrope data index`` (WebDataset shards) are in :mod:`mmrope.cli.shards`.

The same arguments give byte-identical files: scenes depend only on (split, seed, index), PNGs are written with
fixed settings and no timestamp, and JSON keys are sorted. Heavy imports stay inside the functions so that
``mmrope --help`` stays fast.
"""

import argparse
from pathlib import Path

from mmrope.cli import shards


def register(subparsers) -> None:
    """Add ``data`` (with its ``shapes`` subcommand) to the top-level CLI's subparsers."""
    data = subparsers.add_parser("data", help="make or export datasets")
    commands = data.add_subparsers(dest="data_command", metavar="{shapes,shard,index}", required=True)
    p = commands.add_parser(
        "shapes",
        help="export the shapes benchmark as PNGs + metadata.jsonl",
        description="Export the shapes benchmark (images/*.png + metadata.jsonl, Hugging Face imagefolder format).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=20000, help="number of samples (default: 20000)")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels, a multiple of 16 (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="random stream (default: 0)")
    p.add_argument("--level", type=int, default=2, choices=(1, 2, 3), help="1 place, 2 relation, 3 many (default: 2)")
    p.add_argument("--split", default="train", choices=("train", "val", "test", "compositional"),
                   help="(default: train)")
    p.add_argument("--background", default="plain", choices=("plain", "noisy"), help="(default: plain)")
    p.add_argument("--max-objects", type=int, default=4, help="most objects at level 3 (default: 4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the metadata.jsonl and images/NNNNNN.png already in --out (refused otherwise)")
    p.set_defaults(func=run)
    shards.register(commands)


def run(args: argparse.Namespace) -> None:
    # a bad argument raises a one-line ValueError, which the CLI prints without a traceback
    n = export_shapes(args.out, n=args.n, size=args.size, seed=args.seed, level=args.level, split=args.split,
                      background=args.background, max_objects=args.max_objects, overwrite=args.overwrite)
    print(f"wrote {n} images and metadata.jsonl to {args.out}")


def export_shapes(
    out: str | Path,
    n: int = 20000,
    size: int = 64,
    seed: int = 0,
    level: int = 2,
    split: str = "train",
    background: str = "plain",
    max_objects: int = 4,
    overwrite: bool = False,
) -> int:
    """Write ``out/images/000000.png ...`` and ``out/metadata.jsonl``; returns the number of samples. Files of
    those names already in ``out`` are refused, naming them, unless ``overwrite`` (then they are removed first, the old
    ``metadata.jsonl`` with them, so a folder is never left describing images it no longer holds)."""
    import json
    import os

    from mmrope.data.shapes import render_scene, sample_scene

    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if size <= 0 or size % 16:
        raise ValueError(f"--size must be a positive multiple of 16 (32, 48, 64, 96, 128), got {size}")
    out = Path(out)
    digits = max(6, len(str(n - 1)))
    names = [f"images/{i:0{digits}d}.png" for i in range(n)]
    held = ["metadata.jsonl"] if os.path.lexists(out / "metadata.jsonl") else []
    images = [name for name in names if os.path.lexists(out / name)]
    if images:
        held.append(f"{len(images)} images ({images[0]}{' ... ' + images[-1] if len(images) > 1 else ''})")
    if held and not overwrite:
        raise ValueError(f"{out}: holds {' and '.join(held)}, which this export would overwrite: choose another "
                         "--out, or pass --overwrite")
    for name in ["metadata.jsonl", *images]:  # replaced, not written through: a link's target stays as it was
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = sample_scene(seed, i, split=split, level=level, max_objects=max_objects, background=background,
                             canvas=size)
        name = names[i]
        render_scene(scene).save(out / name, format="PNG", compress_level=6)
        row = {"file_name": name, "text": scene["captions"], "scene": scene}
        lines.append(json.dumps(row, sort_keys=True, separators=(",", ":")))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n
