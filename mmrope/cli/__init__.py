"""The ``mmrope`` command: one module per subcommand (``train``, ``caption``, ``eval``, ``export``, ``ablate``, ``viz``,
``demo``, ``data``, ``serve``), each registering its own parser. It is the one way in: ``python -m mmrope``,
``python -m mmrope.train`` and a checkout's ``train.py`` all call :func:`main`.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``func``; heavy imports stay inside
``func`` so that ``mmrope --help`` answers at once. Errors a user can fix (a bad file, field or value) come out as one
line and a non-zero status; set ``MMROPE_DEBUG=1`` to see the traceback instead. The files and modules
``MMROPE_PLUGINS`` lists are imported first (:mod:`mmrope.plugins`), so their arms and benchmarks are valid names.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from mmrope import __version__

COMMAND_MODULES = ("mmrope.cli.train", "mmrope.cli.demo", "mmrope.cli.data", "mmrope.cli.caption", "mmrope.cli.eval",
                   "mmrope.cli.export", "mmrope.cli.ablate", "mmrope.cli.viz", "mmrope.cli.serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrope",
        description="Multidimensional RoPE in a small vision-language captioner. "
                    "Train with `mmrope train fit --config configs/....yaml`.")
    parser.add_argument("--version", action="version", version=f"mmrope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mmrope ... | head` ends quietly, not with a traceback

    from mmrope.plugins import load_plugins

    try:
        load_plugins()  # MMROPE_PLUGINS: the user's own arms and benchmarks, before any name is read
    except ValueError as err:
        print(f"mmrope: error: {err}", file=sys.stderr)
        return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if os.environ.get("MMROPE_DEBUG"):
        return args.func(args) or 0
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as err:
        print(f"mmrope {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mmrope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
