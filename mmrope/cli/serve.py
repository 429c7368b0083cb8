"""``mmrope serve``: a local web page that captions an uploaded image or clip with a checkpoint chosen from a folder,
and shows the beam alternatives, where the decoder looked for each word, and the (t, h, w) ids (:mod:`mmrope.serve`);
with ``--ablation OUT``, a page that reads an ablation folder (:mod:`mmrope.serve.ablation`).

Heavy imports stay inside ``run_serve`` so that ``mmrope --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="a local web page: drop an image or a clip, get its caption, the beam alternatives, the "
                      "attention over the image for each word and the (t, h, w) ids",
        description="Serve a page on http://127.0.0.1:PORT/ where an image or a clip (an animated GIF / WebP / PNG) "
                    "is captioned with a checkpoint chosen from those under --ckpt-dir (.ckpt files and exported "
                    "folders). It shows the caption, the beam search's best captions, one attention overlay per "
                    "word (as `mmrope viz attention`) and the (t, h, w) position ids of the prompt and caption. "
                    "Runs offline; uploads live in a temporary folder only while they are captioned. With "
                    "--ablation OUT it serves instead a page that reads an ablation folder `mmrope ablate` wrote: "
                    "the arms x sizes table with its intervals and stated tests, the learning curves, every scene's "
                    "captions, and two arms' attention and (t, h, w) ids on one scene, at the training size and "
                    "off it.")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="the folder whose checkpoints the page offers, searched recursively (default: runs)")
    p.add_argument("--ablation", type=Path, metavar="OUT",
                   help="serve the page of this ablation folder (the --out of `mmrope ablate`) instead; only files "
                        "under it are read")
    p.add_argument("--grid", type=Path,
                   help="with --ablation: the grid file the folder was run with, when it holds no plan.json")
    p.add_argument("--preset", help="with --ablation and --grid: the preset it was run with")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only, as is any loopback address; "
                        "any other lets other machines upload files, and warns)")
    p.add_argument("--port", type=int, default=8765, help="0 to 65535 (default: 8765; 0 picks a free one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="refuse uploads larger than this, before reading them (default: 32 MiB)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this, from their header (default: 50 million)")
    p.add_argument("--max-frames", type=int, default=32, help="thin longer clips to this many frames (default: 32)")
    p.add_argument("--max-clip-pixels", type=int, default=None,
                   help="refuse a clip whose frames to decode hold more pixels than this, all together, before "
                        "decoding any (default: 200 million)")
    p.add_argument("--max-clip-frames", type=int, default=None,
                   help="refuse an animated file with more frames than this, before decoding any (default: 1000)")
    p.add_argument("--max-queued", type=int, default=None,
                   help="uploads that may wait while one is captioned; more are answered 503 (busy) at once "
                        "(default: 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest caption in tokens (default: 32)")
    p.add_argument("--size", type=int, help="run at SIZE x SIZE pixels (default: the training size)")
    p.add_argument("--resize", choices=("fixed", "native"), default="fixed",
                   help="fixed: stretch to a square, as shapes training does; native: keep the aspect ratio "
                        "(default: fixed)")
    p.add_argument("--clip-mode", choices=("block", "frames"), default="block",
                   help="read a clip as one (t, h, w) block, or one image per frame, as the model was trained "
                        "(default: block)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS
    from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
    from mmrope.serve.local_server import MAX_QUEUED
    from mmrope.serve.server import MAX_UPLOAD_BYTES, CheckpointFolder, Settings

    if args.ablation is not None:
        return run_ablation_page(args)
    if args.grid is not None or args.preset is not None:
        raise ValueError("--grid and --preset go with --ablation OUT")
    args.ckpt_dir = args.ckpt_dir or Path("runs")

    for flag, value in (("--max-bytes", args.max_bytes), ("--max-pixels", args.max_pixels),
                        ("--max-frames", args.max_frames), ("--max-clip-pixels", args.max_clip_pixels),
                        ("--max-clip-frames", args.max_clip_frames), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.max_queued is not None and args.max_queued < 0:
        raise ValueError(f"--max-queued must be 0 or more, got {args.max_queued}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0 to 65535 (0 picks a free one)")
    settings = Settings(ckpt_dir=args.ckpt_dir, device=args.device, max_bytes=args.max_bytes or MAX_UPLOAD_BYTES,
                        max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, max_frames=args.max_frames,
                        max_clip_pixels=args.max_clip_pixels or DEFAULT_MAX_CLIP_PIXELS,
                        max_clip_frames=args.max_clip_frames or DEFAULT_MAX_CLIP_FRAMES,
                        max_queued=MAX_QUEUED if args.max_queued is None else args.max_queued,
                        max_new_tokens=args.max_new_tokens, size=args.size, resize=args.resize,
                        clip_mode=args.clip_mode)
    offered = CheckpointFolder(args.ckpt_dir).names()
    if not offered:
        print(f"mmrope serve: warning: no checkpoints under {args.ckpt_dir} yet (.ckpt files or exported folders); "
              "the page lists them as they appear", file=sys.stderr)

    def announce(server) -> None:
        if not server.loopback_only:  # decided by the address bound: 127.0.0.2 is this machine only, 0.0.0.0 is not
            print(f"mmrope serve: warning: listening on {args.host}, not a loopback address: anyone who can reach "
                  "this machine can upload files and use its CPU; the page has no login", file=sys.stderr)
        print(f"mmrope serve: {server.url} ({len(offered)} checkpoints under {args.ckpt_dir}; Ctrl-C stops)",
              flush=True)
        print(f"mmrope serve: uploads go to {server.upload_dir}, removed at exit", file=sys.stderr, flush=True)

    return serve_until_stopped(settings, args, announce)


def run_ablation_page(args: argparse.Namespace) -> int:
    from mmrope.serve.ablation import AblationFolder, read_plan
    from mmrope.serve.ablation_server import AblationSettings
    from mmrope.serve.local_server import MAX_QUEUED

    if args.ckpt_dir is not None:
        raise ValueError("--ckpt-dir is the caption page's; --ablation OUT serves the ablation's page")
    if args.max_queued is not None and args.max_queued < 0:
        raise ValueError(f"--max-queued must be 0 or more, got {args.max_queued}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0 to 65535 (0 picks a free one)")
    plan = read_plan(args.ablation, args.grid, args.preset)
    folder = AblationFolder(args.ablation, plan, device=args.device)
    settings = AblationSettings(folder, max_queued=MAX_QUEUED if args.max_queued is None else args.max_queued)
    scored = len(folder.read_runs())

    def announce(server) -> None:
        if not server.loopback_only:
            print(f"mmrope serve: warning: listening on {args.host}, not a loopback address: anyone who can reach "
                  "this machine can read the ablation's results and use its CPU; the page has no login",
                  file=sys.stderr)
        print(f"mmrope serve: {server.url} (preset {plan.preset} of {plan.grid}: {len(plan.arms)} arms x "
              f"{len(plan.seeds)} seeds, {scored} runs scored, under {args.ablation}; Ctrl-C stops)", flush=True)

    return serve_until_stopped(settings, args, announce)


def serve_until_stopped(settings, args: argparse.Namespace, announce) -> int:
    import signal

    from mmrope.serve.server import serve

    def stop(signum, frame):
        raise KeyboardInterrupt  # so that the temporary folder is removed on SIGTERM too

    signal.signal(signal.SIGTERM, stop)
    try:
        serve(settings, args.host, args.port, announce)
    except KeyboardInterrupt:
        print("mmrope serve: stopped", file=sys.stderr)
    return 0
