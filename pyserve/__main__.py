"""``python -m pyserve``: the command line (see :mod:`pyserve.cli.command`)."""

import sys

from pyserve.cli.command import main

sys.exit(main())
