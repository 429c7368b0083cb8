"""``mmrope viz``: pictures of the position maths and of a model's attention.

    mmrope viz similarity [--ckpt CKPT]          q·k against (Δrow, Δcol): 2D axial, flattened 1D, RoPE-Mixed
    mmrope viz ids [--scheme SCHEME]             the (t, h, w) ids a scheme gives an image + caption sequence
    mmrope viz attention --ckpt CKPT IMAGE       where the decoder looked for each word it wrote
    mmrope viz spectrum [--config CONFIG]        how far each decoder rotary pair turns along t, h, w
    mmrope viz curves RUN [RUN ...]              runs' validation scores against step: a table and a plot

Heavy imports stay inside the ``run_*`` functions so that ``mmrope --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrope.cli.common import refuse_nul


def register(subparsers: argparse._SubParsersAction) -> None:
    viz = subparsers.add_parser("viz", help="pictures of the position maths and of a model's attention",
                                description="Write PNGs: q·k similarity maps, (t, h, w) ids, attention overlays, the "
                                            "decoder spectrum, learning curves.")
    commands = viz.add_subparsers(dest="figure", metavar="FIGURE", required=True)

    p = commands.add_parser(
        "similarity", help="q·k against relative (Δrow, Δcol): 2D axial, flattened 1D and RoPE-Mixed",
        description="q·k similarity (q = k = ones, so only position speaks) between the centre patch of a grid and "
                    "every other patch, for 2D axial RoPE, flattened 1D RoPE and RoPE-Mixed. With a rope2d_mixed "
                    "checkpoint, Mixed uses the learned frequencies of --layer and --head; otherwise a fresh "
                    "initialisation, labelled 'init'. A checkpoint also sets head_dim and theta.")
    p.add_argument("--ckpt", help="a checkpoint or exported folder (default: none; head_dim 64, theta 100)")
    p.add_argument("--layer", type=int, default=0, help="encoder layer of the Mixed frequencies (default: 0)")
    p.add_argument("--head", type=int, default=0, help="head of the Mixed frequencies (default: 0)")
    p.add_argument("--grid", type=int, default=16, help="patch grid side (default: 16)")
    p.add_argument("--out", type=Path, default=Path("viz_similarity.png"), help="(default: viz_similarity.png)")
    p.set_defaults(func=run_viz_similarity)

    p = commands.add_parser("ids", help="the (t, h, w) ids of an image (or clip) + caption sequence as a coloured "
                                        "grid",
                            description="The position ids the decoder gives [vision_start, image tokens, "
                                        "vision_end, words]: three coloured rows t, h, w, one column per token. "
                                        "--frames > 1 makes it a clip: a (t, h, w) block of video tokens.")
    p.add_argument("--height", type=int, default=64, help="image height in pixels (default 64)")
    p.add_argument("--width", type=int, default=96, help="image width in pixels (default 96)")
    p.add_argument("--patch-size", type=int, default=8, help="(default 8)")
    p.add_argument("--merge", type=int, default=2, help="spatial merge size (default 2, as Qwen2-VL)")
    p.add_argument("--frames", type=int, default=1, help="temporal patches of a clip (default 1: an image)")
    p.add_argument("--text", default="red circle left of blue square", help="the words after the image")
    p.add_argument("--scheme", default="mrope",
                   help="a decoder position scheme, any registered one (README \"Model\"; mrope_interleaved gives "
                        "mrope's ids, it only allocates the rotary pairs otherwise) (default: mrope)")
    p.add_argument("--out", type=Path, default=Path("viz_ids.png"), help="(default: viz_ids.png)")
    p.set_defaults(func=run_viz_ids)

    p = commands.add_parser(
        "spectrum", help="how far each decoder rotary pair turns along t, h and w, per step and across a grid",
        description="For each decoder position scheme, the angle every rotary pair turns between neighbouring media "
                    "tokens and from one end of the grid to the other, along t, h and w, measured on the ids the "
                    "scheme gives a media block of that grid. An axis whose fastest pair turns under 0.1 rad across "
                    "the grid is one the decoder can hardly tell apart (the same test warns at model build). Prints "
                    "a table and writes a PNG.")
    p.add_argument("--config", help="a training YAML: its model (head_dim, theta) and its training grid "
                                    "(default: the model defaults)")
    p.add_argument("--schemes", help="comma-separated schemes (default: every registered one)")
    p.add_argument("--grid", help="decoder grid T,H,W in merged tokens (default: 1 x the training image's grid)")
    p.add_argument("--out", type=Path, default=Path("viz_spectrum.png"), help="(default: viz_spectrum.png)")
    p.set_defaults(func=run_viz_spectrum)

    p = commands.add_parser(
        "attention", help="a caption's attention over the image patches, one panel per word",
        description="Caption IMAGE (greedy), then for each generated word show where the query that chose it "
                    "attended over the image tokens (averaged over heads; one decoder layer or the mean of all), "
                    "upsampled to the image and laid over it. Recomputed with an explicit softmax attention that "
                    "reuses the model's weights and rotary tables (mmrope.viz.attention).")
    p.add_argument("image", help="an image file")
    p.add_argument("--ckpt", required=True, help="a checkpoint or exported folder")
    p.add_argument("--layer", type=int, help="decoder layer, negative counts from the end (default: mean of all)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the training size)")
    p.add_argument("--max-new-tokens", type=int, default=12, help="(default: 12)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cpu)", default="cpu")
    p.add_argument("--out", type=Path, default=Path("viz_attention.png"), help="(default: viz_attention.png)")
    p.set_defaults(func=run_viz_attention)

    p = commands.add_parser(
        "curves", help="runs' validation scores against step: a markdown table and a plot",
        description="The learning curves of training runs (each RUN a run folder: its logs/version_*/metrics.csv, "
                    "every version of a resumed run): val/METRIC at every validated step, printed as a markdown "
                    "table (one row per run and metric) and drawn in one panel per metric.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (label=folder names the row)")
    p.add_argument("--metrics", default="relation", help="comma-separated validation metrics without 'val/' "
                                                         "(default: relation)")
    p.add_argument("--every", type=int, help="table columns every N steps (default: every validated step)")
    p.add_argument("--out", type=Path, default=Path("viz_curves.png"), help="(default: viz_curves.png)")
    p.set_defaults(func=run_viz_curves)


def run_viz_similarity(args: argparse.Namespace) -> int:
    from mmrope.viz.similarity import plot_similarity_maps, similarity_maps

    refuse_nul(args, "ckpt", "out")
    if args.grid < 2 or args.head < 0:
        raise ValueError(f"--grid {args.grid} --head {args.head}: expected a grid of at least 2 and a head >= 0")
    model = None
    if args.ckpt:
        from mmrope.inference import load

        model = load(args.ckpt, device="cpu").model
    maps = similarity_maps(model, args.layer, args.head, args.grid)
    v = model.config.vision if model is not None else None
    head_dim, theta = (v.head_dim, v.rope_theta) if v else (64, 100.0)
    title = f"q·k against relative offset ({args.grid}x{args.grid} grid, head_dim {head_dim}, theta {theta:g})"
    path = plot_similarity_maps(maps, args.out, title=title)
    print(f"{', '.join(maps)}: wrote {path}")
    return 0


def run_viz_ids(args: argparse.Namespace) -> int:
    from mmrope.viz.figures import plot_position_ids
    from mmrope.viz.sequence_ids import sequence_ids

    refuse_nul(args, "out")
    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: expected at least 1")
    ids = sequence_ids(args.scheme, args.height, args.width, args.patch_size, args.merge, args.frames, args.text)
    media = f"{args.frames}-frame clip" if args.frames > 1 else "image"
    title = (f"{args.scheme} ids: {args.height}x{args.width} {media}, patch {args.patch_size}, merge {args.merge} "
             f"-> {'x'.join(map(str, ids.merged))} tokens")
    path = plot_position_ids(ids.labels(), ids.position_ids, args.out, title=title)
    print(f"wrote {path}")
    return 0


def run_viz_attention(args: argparse.Namespace) -> int:
    import torch

    from mmrope.inference import load
    from mmrope.viz.attention import image_attention_maps
    from mmrope.viz.figures import plot_attention_overlay

    refuse_nul(args, "ckpt", "out", positional=("image",))
    pipeline = load(args.ckpt, device=args.device)
    pixels = pipeline.preprocess(args.image, size=args.size)
    with torch.inference_mode():
        caption_ids = pipeline.model.generate([pixels.to(pipeline.device)], max_new_tokens=args.max_new_tokens)[0]
    if len(caption_ids) == 0:
        raise ValueError(f"{args.image}: the model wrote an empty caption: nothing to show")
    maps = image_attention_maps(pipeline.model, pixels.to(pipeline.device), caption_ids, args.layer)
    words = [pipeline.tokenizer.decode([t]) or "?" for t in caption_ids.tolist()]
    which = "mean of layers" if args.layer is None else f"layer {args.layer}"
    caption = pipeline.tokenizer.decode(caption_ids.tolist())
    path = plot_attention_overlay(pixels, maps, words, args.out,
                                  title=f'"{caption}": decoder attention over the image ({which}, mean of heads)')
    print(f"{args.image}\t{caption}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def run_viz_spectrum(args: argparse.Namespace) -> int:
    from mmrope.model.config import CaptionerConfig
    from mmrope.model.decoder_schemes import SCHEMES
    from mmrope.viz.spectrum import plot_spectrum, spectrum, spectrum_table

    refuse_nul(args, "config", "out")
    config = CaptionerConfig()
    if args.config:
        from mmrope.resources import find_config
        from mmrope.train.config_reader import read_config

        model = read_config(["--config", str(find_config(args.config))])["model"]
        config = CaptionerConfig.from_model_section(model)
    side = config.vision.merged_grid_side
    grid = (1, side, side)
    if args.grid:
        try:
            grid = tuple(int(x) for x in args.grid.split(","))
        except ValueError:
            grid = ()
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"--grid {args.grid!r}: expected three positive whole numbers T,H,W, e.g. 1,4,4")
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()] if args.schemes else list(SCHEMES)
    turns = spectrum(config, schemes, grid)
    print(f"head_dim {config.text.head_dim}, theta {config.text.rope_theta:g}, grid {'x'.join(map(str, grid))} "
          "(t x h x w merged tokens)")
    print(spectrum_table(turns, grid))
    print(f"wrote {plot_spectrum(turns, grid, args.out)}", file=sys.stderr)
    return 0


def run_viz_curves(args: argparse.Namespace) -> int:
    from mmrope.viz.curves import curves_table, plot_validation_curves, validation_curves

    refuse_nul(args, "out", positional=("runs",))
    metrics = [m.strip().removeprefix("val/") for m in args.metrics.split(",") if m.strip()]
    curves = {}
    for run in args.runs:
        label, _, folder = run.rpartition("=") if "=" in run else (Path(run).name, "", run)
        if not Path(folder).is_dir():
            raise ValueError(f"{folder}: no such run folder")
        curves[label] = {m: validation_curves(folder, m) for m in metrics}
        if not any(curves[label].values()):
            raise ValueError(f"{folder}: no val/{', val/'.join(metrics)} in its logs/version_*/metrics.csv "
                             "(was it validated during training?)")
    print(curves_table(curves, args.every))
    print(f"wrote {plot_validation_curves(curves, args.out)}", file=sys.stderr)
    return 0
