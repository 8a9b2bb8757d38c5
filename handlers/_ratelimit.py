"""Peer-fault logging for the ready handlers: rate-limited, and with peer bytes escaped.

Theory of operation
-------------------
A hostile or broken client can make a handler fail thousands of times a second
(bad frames, wrong HMAC answers, floods). One WARNING per failure would turn the
log into the attacker's amplifier, so every *peer fault* goes through a
:class:`PeerFaultLog`: it logs the first occurrence of a *reason* (a short fixed
key such as ``"bad frame"``) at once, then at most one line per reason per
``interval`` seconds (60 by default), and that line says how many similar faults
were not logged meanwhile ("... (and 4,211 more since the last report)"). The
count survives until the next report, so nothing is lost, only summarised.

Each server has its own logs (:func:`fault_log`, keyed by the server and a
handler name in a weak mapping, so the server class is not modified and the
logs die with it): one noisy server does not silence another's reports.

The table of reasons is bounded (``max_reasons``): reasons are fixed strings
chosen by the handler, never peer bytes, so it stays tiny; the bound is a guard
against a programming mistake, not against peers.

Anything a peer chose (a path, a nickname attempt, the start of a bad line) is
passed through :func:`escaped` before it reaches a log line: ``repr``-style, so a
terminal escape sequence, a newline that would forge a second log line, or a
megabyte of junk shows as a short, inert Python literal.

pyserve's core has its own rate limiting for its rejections, but it is not part
of the public API, and the handlers use only the public API: hence this module.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ["PeerFaultLog", "escaped", "fault_log"]

#: Longest escaped text put in a log line: enough to recognise, too little to flood.
MAX_SHOWN = 80


def escaped(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr``-style text of a peer-controlled value, cut to about ``limit`` chars.

    Control characters (ESC, CR, LF, BEL...) come out as ``\\x1b``-style escapes,
    so the result is always one inert line.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = repr(raw[:limit])
        return text + ("..." if len(raw) > limit else "")
    if not isinstance(value, str):
        value = str(value)
    # str's repr escapes every non-printable character, format characters such as
    # bidi overrides included, and keeps readable non-ASCII text (names in Chinese).
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


class PeerFaultLog:
    """Log peer faults on ``logger``: at most one line per reason per ``interval``."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        max_reasons: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval {interval!r} must be a positive number of seconds")
        self.logger = logger
        self.interval = interval
        self.max_reasons = max_reasons
        self._clock = clock
        self._lock = threading.Lock()
        #: reason -> [time of the last line logged, faults suppressed since then]
        self._reasons: dict[str, list[float]] = {}

    def report(self, reason: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` as a WARNING unless ``reason`` was logged recently.

        ``reason`` is a fixed key chosen by the handler; ``args`` that came from the
        peer must already be :func:`escaped`. Returns whether a line was written.
        """
        now = self._clock()
        with self._lock:
            entry = self._reasons.get(reason)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            suppressed = int(entry[1]) if entry is not None else 0
            if entry is None and len(self._reasons) >= self.max_reasons:
                self._forget_oldest()
            self._reasons[reason] = [now, 0]
        if suppressed:
            message += " (and %d more since the last report)"
            args = (*args, suppressed)
        self.logger.warning(message, *args)
        return True

    def _forget_oldest(self) -> None:
        oldest = min(self._reasons, key=lambda reason: self._reasons[reason][0])
        del self._reasons[oldest]


_logs_lock = threading.Lock()
_logs: weakref.WeakKeyDictionary[Any, dict[str, PeerFaultLog]] = weakref.WeakKeyDictionary()
#: For a server that cannot be weakly referenced (``__slots__`` without
#: ``__weakref__``): one shared set of logs, still bounded.
_shared: dict[str, PeerFaultLog] = {}


def fault_log(server: Any, name: str, logger: logging.Logger) -> PeerFaultLog:
    """The :class:`PeerFaultLog` of handler ``name`` on ``server`` (made on first use)."""
    with _logs_lock:
        try:
            logs = _logs.setdefault(server, {})
        except TypeError:
            logs = _shared
        log = logs.get(name)
        if log is None:
            log = logs[name] = PeerFaultLog(logger)
        return log
