"""``mmrope data shard``: WebDataset shards from any caption format the project reads (COCO JSON, imagefolder
``metadata.jsonl``, CSV, a Hugging Face dataset saved with ``save_to_disk`` or as parquet, the shapes benchmark);
``mmrope data index``: the index of shards written elsewhere (img2dataset's), so that training can split them exactly.
Formats: data/README.md, "Shards".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands) -> None:
    """Add ``shard`` and ``index`` to the ``mmrope data`` subcommands."""
    p = commands.add_parser(
        "shard", help="write WebDataset shards (+ index.json) from COCO, imagefolder, CSV, HF datasets or shapes",
        description="Write image-caption shards as img2dataset does ({key}.jpg + {key}.txt + {key}.json, "
                    "000000.tar ...), their index.json and captions.txt. Image files, and images held in a "
                    "Hugging Face dataset, are copied byte for byte (JPEG, PNG, WebP; other formats are stored as "
                    "PNG). The same input gives the same files.")
    p.add_argument("source", nargs="+",
                   help="'shapes', or caption files: a COCO captions .json, a folder with metadata.jsonl, a .csv, "
                        "a Hugging Face datasets save_to_disk folder, a .parquet file (several are written one after "
                        "the other)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the shards")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="(default: 1000)")
    p.add_argument("--image-dir", action="append", type=Path, default=None,
                   help="the images of a COCO .json or .csv source; give it once per source, in the same order "
                        "(default: the caption file's folder)")
    p.add_argument("--karpathy-split", type=Path, help="Karpathy's dataset_coco.json: keep the images of --split")
    p.add_argument("--split", default=None,
                   help="with --karpathy-split: train (with restval), val or test; for shapes: train, val, test or "
                        "compositional (default: train)")
    p.add_argument("--image-column", default=None,
                   help="a Hugging Face dataset's image column (default: image)")
    p.add_argument("--caption-column", default=None,
                   help="a Hugging Face dataset's caption column (default: the first of caption, text, captions)")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let caption files name images outside their folder (see data/README.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the index.json, captions.txt and NNNNNN.tar shards already in --out (refused "
                        "otherwise); other files there are left alone")
    shapes = p.add_argument_group("shapes (source 'shapes')")
    shapes.add_argument("--n", type=int, default=20000, help="scenes (default: 20000)")
    shapes.add_argument("--size", type=int, default=64, help="canvas side, a multiple of 16 (default: 64)")
    shapes.add_argument("--seed", type=int, default=0, help="(default: 0)")
    shapes.add_argument("--level", type=int, default=2, choices=(1, 2, 3), help="(default: 2)")
    shapes.add_argument("--background", default="plain", choices=("plain", "noisy"), help="(default: plain)")
    p.set_defaults(func=run_shard)

    q = commands.add_parser(
        "index", help="index existing shards (img2dataset's): sample counts and captions",
        description="Read shards once (images are not decoded) and write an index.json with each shard's sample "
                    "count, and captions.txt beside it, which training needs to split the shards exactly.")
    q.add_argument("shards", nargs="+",
                   help="shard paths or URLs, or brace patterns such as 'data/laion/{00000..00099}.tar' (quoted)")
    q.add_argument("--out", type=Path, required=True, help="the index to write, e.g. data/laion/index.json")
    q.add_argument("--trust-shard-index", action="store_true",
                   help="let the index name URLs, pipe: commands or shards outside its folder (refused otherwise; "
                        "reading it then needs data.shards.trust_index: true, or --trust-shard-index)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out and the captions.txt beside it (refused otherwise)")
    q.set_defaults(func=run_index)


def run_shard(args: argparse.Namespace) -> int:
    from mmrope.data.shards import record_samples, shapes_samples, write_shards

    if args.source == ["shapes"]:
        if args.size <= 0 or args.size % 16:
            raise ValueError(f"--size must be a positive multiple of 16, got {args.size}")
        if args.n <= 0:
            raise ValueError(f"--n must be positive, got {args.n}")
        samples = shapes_samples(args.n, size=args.size, seed=args.seed, level=args.level,
                                 split=args.split or "train", background=args.background)
    elif "shapes" in args.source:
        raise ValueError("'shapes' is a source of its own: write it to its own --out")
    else:
        samples = record_samples(_records(args))
    shard_set, skipped = write_shards(samples, args.out, args.samples_per_shard, overwrite=args.overwrite)
    size = sum(Path(s.url).stat().st_size for s in shard_set.shards)
    print(f"wrote {shard_set.num_samples} samples in {len(shard_set.shards)} shards ({size / 1e6:.1f} MB) to "
          f"{args.out}; index {shard_set.where}")
    if skipped:
        from mmrope.cli.common import report_skipped

        report_skipped("data shard", skipped, shard_set.num_samples + len(skipped))
        return 1
    return 0


def _records(args: argparse.Namespace) -> list:
    from mmrope.data.captions import load_caption_records

    dirs = args.image_dir or []
    if dirs and len(dirs) != len(args.source):
        raise ValueError(f"--image-dir given {len(dirs)} times for {len(args.source)} sources: give it once per "
                         "source, or not at all")
    coco = {}
    if args.karpathy_split:
        coco = {"karpathy_split": args.karpathy_split, "split": args.split or "train"}
    records = []
    for i, source in enumerate(args.source):
        path = Path(source)
        records += load_caption_records(path, dirs[i] if dirs else None, args.allow_outside_paths,
                                        args.image_column, args.caption_column,
                                        **(coco if path.suffix == ".json" else {}))
    return records


def run_index(args: argparse.Namespace) -> int:
    from mmrope.data.shards import index_shards

    urls = [u for pattern in args.shards for u in _expand(pattern)]
    shard_set, uncaptioned = index_shards(urls, args.out, trust=args.trust_shard_index, overwrite=args.overwrite)
    print(f"indexed {shard_set.num_samples} samples in {len(shard_set.shards)} shards: {shard_set.where}")
    if uncaptioned:
        print(f"mmrope data index: {uncaptioned} samples have no usable caption (training skips them)",
              file=sys.stderr)
    return 0


def _expand(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    return expand_urls(pattern)
