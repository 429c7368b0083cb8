"""``mmrope train``: train, validate, test or predict a captioner from a YAML config.

    mmrope train fit --config configs/debug.yaml [--key value ...]          Lightning (mmrope.train.cli)
    mmrope train validate | test | predict --config ... --ckpt_path last
    mmrope train stacked --run 0=DIR0 --run 1=DIR1 -- fit --config ...       several seeds as one set of batched
                                                                             weights (mmrope.train.stacked)

Everything after ``train`` goes to the trainer untouched (LightningCLI has its own parser and ``--help``);
``python -m mmrope.train`` and a checkout's ``python train.py`` are this command under other names.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a captioner from a YAML config (fit, validate, test, predict; stacked seeds)",
        add_help=False, prefix_chars="\0",  # every argument, --help included, is the trainer's own
        description="Train, validate, test or predict from a YAML config: `mmrope train fit --config "
                    "configs/debug.yaml`; `mmrope train fit --help` lists every key. `mmrope train stacked --run "
                    "SEED=DIR ... -- fit --config ...` trains several seeds at once as one set of batched weights.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    return main(args.args)


def main(argv: list[str]) -> int:
    """The trainer -> its exit status: ``stacked ...`` to the stacked engine, anything else to LightningCLI."""
    if argv[:1] == ["stacked"]:
        from mmrope.train.stacked import main as stacked

        return stacked(argv[1:])
    from mmrope.train.cli import main as lightning

    return lightning(argv)
