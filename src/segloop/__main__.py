"""``python -m segloop``: the command line, as the ``segloop`` script."""

import sys

from segloop.cli import main

sys.exit(main())
