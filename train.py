"""``mmrope train`` in a checkout: ``python train.py fit --config configs/debug.yaml`` is
``mmrope train fit --config configs/debug.yaml``."""

import sys

from mmrope.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
