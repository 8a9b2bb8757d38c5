"""The log of a RESP server's peer faults: escaped, and rate-limited per reason.

A peer that misbehaves on purpose can do it thousands of times a second, so each
kind of fault (``reason``: "protocol error", "output buffer limit", "idle timeout")
is logged at most once per interval, and the next line says how many were left
out. Whatever the peer chose (the detail, its address) goes through
:func:`pyserve.logs.escape`, so control bytes, newlines and escape sequences
arrive in the log escaped, never raw. The counting is
:class:`pyserve.logs.RateLimitedLog`'s; a :class:`FaultLog` keeps one per
interval, for one server (each server's :class:`~handlers.resp.session.ServerState`
has its own, so one server's flood does not silence another's).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pyserve.logs import RateLimitedLog, escape

__all__ = ["FaultLog"]

logger = logging.getLogger("pyserve.resp")


class FaultLog:
    """One WARNING line per reason per interval, carrying how many were left out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[float, RateLimitedLog] = {}

    def warn(self, interval: float, reason: str, client_address: Any, detail: str) -> None:
        """Log that the connection from ``client_address`` closes for ``reason``."""
        with self._lock:
            log = self._logs.get(interval)
            if log is None:
                log = self._logs[interval] = RateLimitedLog(logger, interval)
        log.report(
            logging.WARNING, reason, "closing RESP connection from %s: %s: %s",
            escape(client_address), reason, escape(detail),
        )
