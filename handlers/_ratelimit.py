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
import weakref
from typing import Any

from pyserve.logs import RateLimitedLog

__all__ = ["fault_log"]

_logs_lock = threading.Lock()
_logs: weakref.WeakKeyDictionary[Any, dict[str, RateLimitedLog]] = weakref.WeakKeyDictionary()
#: For a server that cannot be weakly referenced (``__slots__`` without
#: ``__weakref__``): one shared set of logs, still bounded by the handlers' names.
_shared: dict[str, RateLimitedLog] = {}


def fault_log(server: Any, name: str, logger: logging.Logger) -> RateLimitedLog:
    """The :class:`~pyserve.logs.RateLimitedLog` of handler ``name`` on ``server``."""
    with _logs_lock:
        try:
            logs = _logs.setdefault(server, {})
        except TypeError:
            logs = _shared
        log = logs.get(name)
        if log is None:
            log = logs[name] = RateLimitedLog(logger)
        return log
