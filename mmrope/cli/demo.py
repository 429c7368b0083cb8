"""`mmrope demo`: the position maths at a glance, with no training and no data.

Prints the (t, h, w) ids M-RoPE gives an image + caption sequence (`mmrope viz ids` draws them, for any scheme),
and draws q·k similarity against relative (Δrow, Δcol) offset for 2D axial RoPE next to flattened 1D RoPE (`mmrope
viz similarity` adds RoPE-Mixed and a checkpoint's frequencies): the first is round, the second smears along rows
and repeats every grid width, because vertical neighbours sit W apart in raster order.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="print M-RoPE ids of an image + text sequence; plot 2D vs flat RoPE",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=64, help="image height in pixels (default 64)")
    p.add_argument("--width", type=int, default=96, help="image width in pixels (default 96)")
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--merge", type=int, default=2, help="spatial merge size (default 2, as Qwen2-VL)")
    p.add_argument("--text", default="red circle left of blue square", help="caption words after the image")
    p.add_argument("--out", default="mmrope_demo.png", help="where to write the similarity plot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrope.viz.figures import format_id
    from mmrope.viz.sequence_ids import format_ids, sequence_ids
    from mmrope.viz.similarity import plot_similarity_maps, relative_similarity

    ids = sequence_ids("mrope", args.height, args.width, args.patch_size, args.merge, text=args.text)
    (_, rows, columns), (_, merged_rows, merged_columns) = ids.patches, ids.merged
    print(f"{args.height}x{args.width} image, patch {args.patch_size}: encoder grid {rows}x{columns} patches, "
          f"merged {args.merge}x{args.merge} into {merged_rows}x{merged_columns} = {merged_rows * merged_columns} "
          f"decoder tokens")
    print(format_ids(ids.tokens, ids.position_ids))
    print(f"rope_delta = {format_id(ids.rope_delta)} (the token decoded at cache index c takes id c + delta on t, h "
          "and w)")
    maps = {"2D axial RoPE": relative_similarity("rope2d"), "flattened 1D RoPE": relative_similarity("rope1d_flat")}
    path = plot_similarity_maps(maps, args.out, title="q·k against relative offset (16x16 grid, head_dim 64)")
    print(f"wrote {path}")
    return 0
