"""Argument parsing shared by the benchmark's servers (stdlib only).

Every server listens on 127.0.0.1:PORT and runs until SIGTERM.  ``--backlog``
sets the listen backlog; without it each library keeps its own default (the
stdlib's socketserver uses 5, pyserve ``SOMAXCONN``, asyncio 100, gevent 256).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, Optional


def parse_args(
    description: Optional[str], extra: Optional[Callable[[argparse.ArgumentParser], None]] = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("port", type=int)
    parser.add_argument("--backlog", type=int, default=None)
    args = parser.parse_args()
    # SIGTERM is how run.py stops a server; exiting through SystemExit runs the
    # servers' context managers so sockets are closed in order.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return args
