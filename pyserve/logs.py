"""Logging a peer's faults: escaped, and at most one line per reason per interval.

Theory of operation
-------------------
Whatever a peer sends can end up in a log line: a PROXY header's source path, a
client's socket path, the bytes of a malformed request. Two rules keep the log
trustworthy and small whatever the peer does:

* **Escape every peer-controlled value.** :func:`escape` renders bytes or text
  the way ``repr()`` does (quotes, ``\\n``, ``\\x1b``, ``\\u202e``...), so no peer
  can end a log line early, forge the next one, or drive a terminal with escape
  sequences, and it cuts the result at :data:`MAX_ESCAPED` characters, so no
  peer can write kilobytes into the log either.
* **Rate-limit per reason.** A :class:`RateLimitedLog` writes the first event of
  a *reason* (a fixed string the program chooses, such as ``"untrusted proxy"``)
  and then stays quiet about that reason for ``interval`` seconds, counting what
  it suppressed; the next line it writes says how many were suppressed. A flood
  of bad peers therefore costs one line a minute per reason, not one per peer,
  and an operator still learns how big the flood was.

The reasons are keys of a dictionary, so they must come from the program, never
from the peer (a peer could otherwise grow the dictionary without bound).

Importing :mod:`logging` costs a process several milliseconds (it brings
:mod:`traceback`, :mod:`re`, :mod:`string`...), and most processes that import
pyserve never log a line. So the modules of the core name their logger with
``DeferredLogger``: it imports logging and fetches
``logging.getLogger(name)`` on first use, and from then on hands every call to
that very logger (same name, level, handlers and propagation as if it had been
fetched at import time).
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, Callable

    _LoggerView = logging.Logger
else:
    _LoggerView = object  # DeferredLogger stands in for a Logger: the checker sees one

# DeferredLogger and the level numbers serve pyserve's own modules: not exported.
__all__ = ["MAX_ESCAPED", "RateLimitedLog", "escape"]

# logging's level numbers, fixed by its documentation: using them needs no import.
NOTSET, DEBUG, INFO, WARNING, ERROR = 0, 10, 20, 30, 40

#: The longest escaped value a log line carries. Long enough for any real Unix
#: socket path (108 bytes) or host name (253) once escaped; a peer that sends
#: more gets the start and a count of the rest.
MAX_ESCAPED = 300


def escape(value: object) -> str:
    """``value`` as one safe line of log text: ``repr()``-style, cut at ``MAX_ESCAPED``.

    Text and bytes come out quoted with every control or invisible character
    escaped (bytes lose their ``b`` prefix: the log is text either way); any
    other value (an address tuple, None) is its ``repr()``, which escapes the
    strings inside it the same way::

        >>> escape("/tmp/a\\nFAKE LINE")
        "'/tmp/a\\\\nFAKE LINE'"
        >>> escape(b"\\x1b[2J")
        "'\\\\x1b[2J'"
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value))[1:]
    else:
        text = repr(value)
    if len(text) > MAX_ESCAPED:
        return f"{text[:MAX_ESCAPED]}... ({len(text) - MAX_ESCAPED} more characters)"
    return text


class DeferredLogger(_LoggerView):
    """``logging.getLogger(name)``, fetched (and logging imported) on first use."""

    def __init__(self, name: str) -> None:  # no super().__init__(): not a Logger itself
        self.__dict__["name"] = name

    def __getattr__(self, attribute: str) -> Any:
        import logging  # noqa: PLC0415 - paid for by the first line logged

        real = logging.getLogger(self.__dict__["name"])
        return getattr(real, attribute)

    def __setattr__(self, attribute: str, value: Any) -> None:
        import logging  # noqa: PLC0415 - see __getattr__

        setattr(logging.getLogger(self.__dict__["name"]), attribute, value)

    def __repr__(self) -> str:
        return f"<DeferredLogger {self.__dict__['name']!r}>"


class _Reason:
    """What a :class:`RateLimitedLog` remembers of one reason."""

    __slots__ = ("logged_at", "suppressed")

    def __init__(self, logged_at: float) -> None:
        self.logged_at = logged_at
        self.suppressed = 0


class RateLimitedLog:
    """Writes at most one line per reason per ``interval`` seconds to ``logger``.

    ``report(level, reason, message, *args)`` formats like ``logger.log`` (pass peer
    values through :func:`escape` first) and returns whether it wrote. A line
    written after some were suppressed ends with how many. Safe to use from
    several threads.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ValueError(f"interval must be a number of seconds >= 0, not {interval!r}")
        self.logger = logger
        self.interval = float(interval)
        self._clock = clock
        self._reasons: dict[str, _Reason] = {}
        self._lock = threading.Lock()

    def report(self, level: int, reason: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within ``interval``."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            state = self._reasons.get(reason)
            if state is None:
                self._reasons[reason] = _Reason(now)
                suppressed = 0
            elif now - state.logged_at < self.interval:
                state.suppressed += 1
                return False
            else:
                suppressed, state.suppressed, state.logged_at = state.suppressed, 0, now
        if suppressed:
            message += " (%d more like this since the last such line)"
            args += (suppressed,)
        self.logger.log(level, message, *args)
        return True
