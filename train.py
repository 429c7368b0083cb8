"""Train, validate, test or predict a captioner from a YAML config: ``python -m mmrope.train``, kept at the top of
the repository so that ``python train.py fit --config configs/debug.yaml`` works in a checkout."""

import signal
import sys

from mmrope.train.cli import main

if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
