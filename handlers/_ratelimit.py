"""Each server's peer-fault logs for the ready handlers.

Theory of operation
-------------------
A hostile or broken client can make a handler fail thousands of times a second
(bad frames, wrong HMAC answers, floods). The handlers report every *peer fault*
through a :class:`pyserve.logs.RateLimitedLog` (at most one line per reason per
minute, with a count of what was held back) and pass anything a peer chose
through :func:`pyserve.logs.escape` first: pyserve's public helpers, the same
the core uses.

What this module adds is ownership: each server has its own logs
(:func:`fault_log`, keyed by the server and a handler name in a weak mapping,
so the server class is not modified and the logs die with it), so one noisy
server does not silence another's reports.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from handlers._per_server import PerServer
from pyserve.logs import RateLimitedLog

__all__ = ["fault_log"]

#: A server that cannot be weakly referenced shares one set of logs with every
#: such server (see :class:`~handlers._per_server.PerServer`), still bounded by the
#: handlers' names.
_logs: PerServer[dict[str, RateLimitedLog]] = PerServer(dict)
_names_lock = threading.Lock()


def fault_log(server: Any, name: str, logger: logging.Logger) -> RateLimitedLog:
    """The :class:`~pyserve.logs.RateLimitedLog` of handler ``name`` on ``server``."""
    logs = _logs.get(server)
    with _names_lock:
        log = logs.get(name)
        if log is None:
            log = logs[name] = RateLimitedLog(logger)
        return log
