import sys

from mmrope.cli import main

sys.exit(main())
