"""Argument parsing shared by the benchmark's servers (stdlib only).

Every server listens on 127.0.0.1:PORT and runs until SIGTERM.  ``--backlog``
sets the listen backlog; without it each library keeps its own default (the
stdlib's socketserver uses 5, pyserve ``SOMAXCONN``, asyncio 100, gevent 256).
``work(turns)`` is the CPU-bound scenarios' per-request load.
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


def work(turns: int) -> int:
    """Pure-Python arithmetic: about 0.25 µs a turn on CPython 3.13 (5,000 turns,
    the ``cpu-*`` scenarios' load, take about 1.2 ms). It holds the interpreter the
    whole time and releases nothing, so with the GIL only one thread runs it at once."""
    total = 0
    for i in range(turns):
        total += i * i % 7
    return total
