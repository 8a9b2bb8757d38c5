"""Lifecycle events, the counters' snapshot, and observers.

Theory of operation
-------------------
Every request passes through a few named moments, and a server can tell anyone who
listens about each of them:

=============  ===============================================================
``accepted``   ``get_request()`` returned a connection or datagram
``rejected``   refused before a handler ran: ``verify_request()`` said no, or a
               connection limit (see :mod:`pyserve.lifecycle.limits`) was reached
``started``    a handler began (in whatever thread or process runs it)
``finished``   the handler returned
``errored``    the handler raised (the exception went to ``handle_error()``)
``timed_out``  the handler ended on a timeout (idle, deadline, or ``timeout``)
``drained``    a ``drain()`` ended; ``reason`` summarises its report
=============  ===============================================================

Counting costs nothing extra: the request registry (:mod:`pyserve.lifecycle.registry`)
already takes one lock per request to add and remove it, and counts under that
same lock. ``server.stats`` copies the numbers into an immutable :class:`Stats`.

Events are built only when an observer is registered, so an unobserved server pays
one truth test per moment. An observer is any callable taking a
:class:`ServerEvent`; it runs in the thread where the moment happened (the loop,
a worker, or the parent after a forked child exits), so it must be quick and
thread-safe. An observer that raises is logged once and removed: monitoring must
never take a server down. Example, counting finished requests per client host::

    >>> import collections, threading, pyserve
    >>> per_host, lock = collections.Counter(), threading.Lock()
    >>> def count(event):  # observers run in many threads: += needs the lock
    ...     if event.kind == pyserve.FINISHED:
    ...         with lock:
    ...             per_host[event.client_address[0]] += 1
    >>> server = pyserve.TCPServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    >>> server.add_observer(count)
    >>> server.add_observer(pyserve.LoggingObserver())  # or log every event
    >>> server.server_close()
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyserve.logs import INFO, DeferredLogger

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, NamedTuple, Optional
else:
    from pyserve._typing_free import NamedTuple

__all__ = [
    "ACCEPTED",
    "DRAINED",
    "ERRORED",
    "EVENT_KINDS",
    "FINISHED",
    "REJECTED",
    "STARTED",
    "TIMED_OUT",
    "LoggingObserver",
    "Observer",
    "ServerEvent",
    "Stats",
]

ACCEPTED = "accepted"
REJECTED = "rejected"
STARTED = "started"
FINISHED = "finished"
ERRORED = "errored"
TIMED_OUT = "timed_out"
DRAINED = "drained"

#: Every event kind, in the order a request meets them.
EVENT_KINDS = (ACCEPTED, REJECTED, STARTED, FINISHED, ERRORED, TIMED_OUT, DRAINED)

logger = DeferredLogger("pyserve.events")


class ServerEvent:
    """One lifecycle moment: what happened, to whom, when.

    Attributes: ``kind`` (one of :data:`EVENT_KINDS`), ``server``,
    ``client_address`` (None for ``drained``), ``request_id`` (the registry's id,
    or None), ``monotonic`` and ``wall`` (``time.monotonic()`` and ``time.time()``
    when it happened), ``reason`` (why, for ``rejected``, ``timed_out``, ``errored``
    and ``drained``; else empty).
    """

    __slots__ = ("client_address", "kind", "monotonic", "reason", "request_id", "server", "wall")

    def __init__(
        self,
        kind: str,
        server: Any,
        client_address: Any = None,
        request_id: Optional[int] = None,
        reason: str = "",
    ) -> None:
        self.kind = kind
        self.server = server
        self.client_address = client_address
        self.request_id = request_id
        self.monotonic = time.monotonic()
        self.wall = time.time()
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"ServerEvent({self.kind!r}, client_address={self.client_address!r}, "
            f"request_id={self.request_id!r}, reason={self.reason!r})"
        )


#: What ``server.add_observer()`` accepts: a callable taking one event.
Observer = Callable[[ServerEvent], None]


class Stats(NamedTuple):
    """A snapshot of a server's counters (``server.stats``).

    Gauges: ``active`` (handlers running now), ``queued`` (accepted, waiting for a
    worker), ``peak`` (the most requests in flight at once: active plus queued).
    Totals since the server was made: ``accepted``, ``rejected``, ``started``,
    ``finished``, ``errored``, ``timed_out``, ``drained`` (requests a drain cut
    short: their connection was shut for reading or their child signalled).
    """

    active: int = 0
    queued: int = 0
    peak: int = 0
    accepted: int = 0
    rejected: int = 0
    started: int = 0
    finished: int = 0
    errored: int = 0
    timed_out: int = 0
    drained: int = 0


class LoggingObserver:
    """An observer that logs every event: a ready example of the interface.

    ``LoggingObserver(logger=None, level=logging.INFO)`` logs to
    ``pyserve.lifecycle.events`` by default, one line per event, e.g.
    ``finished ('127.0.0.1', 51234) request 7``.
    """

    def __init__(self, logger: Optional[logging.Logger] = None, level: int = INFO) -> None:
        self.logger = logger if logger is not None else DeferredLogger("pyserve.events")
        self.level = level

    def __call__(self, event: ServerEvent) -> None:
        if event.reason:
            self.logger.log(
                self.level, "%s %s request %s: %s",
                event.kind, event.client_address, event.request_id, event.reason,
            )
        else:
            self.logger.log(
                self.level, "%s %s request %s", event.kind, event.client_address, event.request_id
            )
