"""``mmrope serve``: a local web page that captions an uploaded image or clip with a checkpoint chosen from a folder,
and shows the beam alternatives, where the decoder looked for each word, and the (t, h, w) ids (:mod:`mmrope.serve`).

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
                    "Runs offline; uploads live in a temporary folder only while they are captioned.")
    p.add_argument("--ckpt-dir", type=Path, default=Path("runs"),
                   help="the folder whose checkpoints the page offers, searched recursively (default: runs)")
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
    import signal

    from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS
    from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
    from mmrope.serve.server import MAX_QUEUED, MAX_UPLOAD_BYTES, CheckpointFolder, Settings, serve

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

    def stop(signum, frame):
        raise KeyboardInterrupt  # so that the temporary folder is removed on SIGTERM too

    signal.signal(signal.SIGTERM, stop)
    try:
        serve(settings, args.host, args.port, announce)
    except KeyboardInterrupt:
        print("mmrope serve: stopped", file=sys.stderr)
    return 0
