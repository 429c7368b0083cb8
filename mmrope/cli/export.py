"""``mmrope export``: a checkpoint -> a folder (config.json, model.safetensors, tokenizer.json) that loads without
Lightning."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint as config.json + model.safetensors + tokenizer.json",
        description="Export a Lightning checkpoint to a folder that `mmrope caption --ckpt` and mmrope.load() read "
                    "without Lightning: config.json, model.safetensors and tokenizer.json.")
    p.add_argument("--ckpt", required=True, help="a Lightning checkpoint (last.ckpt, best-*.ckpt)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: created if missing; an empty folder or a previous export is replaced, a "
                        "folder holding anything else is refused")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mmrope.checkpoints import EXPORT_FILES, export_target
    from mmrope.cli.common import refuse_nul
    from mmrope.inference import load
    from mmrope.model.flops import num_parameters

    refuse_nul(args, "ckpt", "out")
    export_target(args.out)  # refused before the checkpoint is read; write_exported checks again
    pipeline = load(args.ckpt, device="cpu")
    pipeline.export(args.out)
    print(f"wrote {', '.join(EXPORT_FILES)} to {args.out} ({num_parameters(pipeline.model):,} parameters)")
    return 0
