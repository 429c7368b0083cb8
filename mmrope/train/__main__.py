"""``python -m mmrope.train ...`` is ``mmrope train ...``."""

import sys

from mmrope.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
