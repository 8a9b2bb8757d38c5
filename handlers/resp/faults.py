"""The log of a RESP server's peer faults: escaped, and rate-limited per reason.

A peer that misbehaves on purpose can do it thousands of times a second, so each
kind of fault (``reason``: "protocol error", "output buffer limit", "idle timeout")
is logged at most once per interval, and the next line says how many were left
out. Whatever the peer chose (the detail) goes through ``ascii()``, so control
bytes, newlines and escape sequences arrive in the log escaped, never raw.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["FaultLog"]

logger = logging.getLogger("pyserve.resp")


class FaultLog:
    """One WARNING line per reason per interval, carrying how many were left out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, interval: float, reason: str, client_address: Any, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last[reason] = now
            left_out = self._suppressed.pop(reason, 0)
        more = f" ({left_out} more since the last report)" if left_out else ""
        # ascii(): every byte a peer chose is escaped, so the log cannot be forged.
        logger.warning(
            "closing RESP connection from %s: %s: %s%s", client_address, reason,
            ascii(detail), more,
        )
