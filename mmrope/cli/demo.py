"""`mmrope demo`: the position maths at a glance, with no training and no data.

Prints the (t, h, w) ids M-RoPE gives an image + caption sequence, and draws q·k similarity against relative
(Δrow, Δcol) offset for 2D axial RoPE next to flattened 1D RoPE: the first is round, the second smears along rows
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


def format_ids(labels: list[str], position_ids) -> str:
    """A table with one column per token and the t, h, w rows."""
    cells = [labels] + [[str(v) for v in row] for row in position_ids.tolist()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(labels))]
    names = ["token", "t", "h", "w"]
    return "\n".join(f"{name:>5}  " + " ".join(c.rjust(w) for c, w in zip(row, widths))
                     for name, row in zip(names, cells))


def run(args: argparse.Namespace) -> int:
    import torch

    from mmrope.model.positions import get_rope_index
    from mmrope.model.tokens import IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID
    from mmrope.viz.similarity import plot_similarity_maps, relative_similarity

    factor = args.patch_size * args.merge
    if args.height % factor or args.width % factor or args.height <= 0 or args.width <= 0:
        raise ValueError(f"image size {args.height}x{args.width} must be positive multiples of patch_size x merge "
                         f"= {factor}")
    grid = [1, args.height // args.patch_size, args.width // args.patch_size]
    n_image = grid[1] * grid[2] // args.merge ** 2
    words = args.text.split()
    ids = [VISION_START_ID] + [IMAGE_TOKEN_ID] * n_image + [VISION_END_ID] + [100] * len(words)
    labels = ["<vs>"] + ["img"] * n_image + ["<ve>"] + words
    position_ids, deltas = get_rope_index(torch.tensor([ids]), torch.tensor([grid]), image_token_id=IMAGE_TOKEN_ID,
                                          spatial_merge_size=args.merge)
    print(f"{args.height}x{args.width} image, patch {args.patch_size}: encoder grid {grid[1]}x{grid[2]} patches, "
          f"merged {args.merge}x{args.merge} into {grid[1] // args.merge}x{grid[2] // args.merge} = {n_image} "
          f"decoder tokens")
    print(format_ids(labels, position_ids[:, 0]))
    print(f"rope_delta = {int(deltas)} (the token decoded at cache index c takes id c + delta on t, h and w)")
    maps = {"2D axial RoPE": relative_similarity("rope2d"), "flattened 1D RoPE": relative_similarity("rope1d_flat")}
    path = plot_similarity_maps(maps, args.out, title="q·k against relative offset (16x16 grid, head_dim 64)")
    print(f"wrote {path}")
    return 0
