"""``python -m pyserve``: the command line (see :mod:`pyserve.cli`)."""

import sys

from pyserve.cli import main

sys.exit(main())
