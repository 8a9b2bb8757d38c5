"""The registry of live requests: what is in flight, since when, from whom, where.

Theory of operation
-------------------
A request enters the server's one :class:`RequestRegistry` (``server.registry``) the
moment it is accepted, before any user hook sees it (``verify_request`` may be slow:
a reverse-DNS check), and leaves when it is over or refused; every concurrency
strategy (synchronous, a thread per request, the thread pool, a child process per
request, the I/O thread) takes the entry over from there. So a drain that waits for
the registry waits for everything accepted. Connection limits are checked in the
same locked step that enters the request (:meth:`RequestRegistry.admit`). An entry
is a :class:`LiveRequest`: the request object, the client address, when it was
accepted (``time.monotonic()`` for arithmetic, ``time.time()`` for people), its
state (``queued`` until a handler starts, then ``running``) and where it runs
(thread ident and name, process id).

Adding, starting and removing are O(1) dict operations under one lock, and the
lifetime counters (:class:`~pyserve.lifecycle.events.Stats`) are updated under that same
lock, so counting costs no extra synchronisation. A strategy that runs the
request in the thread that took it (synchronous serving, a pool worker that
accepted it) adds it already ``running``, in one step. This is the hot path of a
short connection, so an entry stores only what differs per request (the rest are
class-level defaults) and keeps the :class:`threading.Thread`; the thread's
ident and name and the wall-clock time are derived only when somebody reads a
snapshot. Entries are keyed by the
request object's ``id()``; the entry holds the request, so the id cannot be
reused while the entry lives.

A stream handler whose ``rfile`` is pyserve's own hands its reader to the
entry (``reader``), which tells a drain whether the connection is idle.

Readers never see the live entries: :meth:`RequestRegistry.snapshot` returns
immutable :class:`InFlight` records (``server.in_flight()``). Graceful drain
(:mod:`pyserve.lifecycle.drain`) waits on ``RequestRegistry.wait_empty()`` and cuts
short what ``RequestRegistry.entries()`` still lists.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

from pyserve.lifecycle.events import ERRORED, FINISHED, TIMED_OUT, Stats

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, Optional, Union
else:
    from pyserve._typing_free import NamedTuple

_monotonic = time.monotonic

__all__ = ["InFlight", "LiveRequest", "RequestRegistry"]

QUEUED = "queued"
RUNNING = "running"


class InFlight(NamedTuple):
    """A read-only record of one request in flight (``server.in_flight()``)."""

    id: int
    client_address: Any
    state: str  #: ``"queued"`` or ``"running"``
    since: float  #: ``time.monotonic()`` when it was accepted
    #: ``time.time()`` when it was accepted (the wall clock at the snapshot, less the age)
    since_wall: float
    age: float  #: seconds since it was accepted, when the snapshot was taken
    thread_ident: Optional[int]  #: the thread running it (None while queued)
    thread_name: Optional[str]
    pid: int  #: the process running it (a forked child's pid, else the server's)
    forced: bool  #: a drain or close has cut it short


class LiveRequest:
    """The registry's mutable entry for one request (internal to pyserve).

    Made once per connection, so it stores only what differs per request; the
    rest are class-level defaults (no ``__slots__``, which would forbid them),
    and the wall-clock time is derived from the monotonic one when read.
    """

    state = QUEUED
    #: The thread running it (None while queued, or when it runs in a child).
    thread: Optional[threading.Thread] = None
    #: The child process running it; None: this process.
    pid: Optional[int] = None
    forced = False  #: a drain or close has cut it short
    error: Optional[BaseException] = None  #: what its handler raised, if anything
    #: The handler's ``rfile`` reader (a :class:`~pyserve.lifecycle.limits.SocketReader`),
    #: which knows whether the connection is idle; None: unknown (never idle).
    reader: Any = None

    def __init__(
        self, ident: int, request: Any, client_address: Any, host: Any, since: float
    ) -> None:
        self.id = ident
        self.request = request
        self.client_address = client_address
        self.host = host  # what max_connections_per_client counts by
        self.since = since

    def record(self, now: float, wall_now: float) -> InFlight:
        thread = self.thread
        return InFlight(
            self.id, self.client_address, self.state, self.since,
            wall_now - (now - self.since), now - self.since,
            None if thread is None else thread.ident,
            None if thread is None else thread.name,
            os.getpid() if self.pid is None else self.pid, self.forced,
        )


class RequestRegistry:
    """Live requests of one server, with the server's lifetime counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._live: dict[int, LiveRequest] = {}
        self._per_host: dict[Any, int] = {}  # for max_connections_per_client
        self._ids = itertools.count(1)
        self._waiting = 0  # threads in wait_empty(): notify only when someone waits
        self._queued = 0
        self._peak = 0
        self._counts = dict.fromkeys(
            ("accepted", "rejected", "started", FINISHED, ERRORED, TIMED_OUT, "drained"), 0
        )

    # -- the request path ---------------------------------------------------------------

    # The calls every connection makes (admit, run or start, remove):
    # ``lock.acquire()``/``release()`` rather than ``with``, which costs twice as
    # much on CPython 3.11.

    def count(self, what: str) -> None:
        """Add one to a lifetime counter (``accepted``, ``rejected``, ``drained``)."""
        lock = self._lock
        lock.acquire()
        try:
            self._counts[what] += 1
        finally:
            lock.release()

    def count_many(self, what: str, number: int) -> None:
        with self._lock:
            self._counts[what] += number

    def add(
        self, request: Any, client_address: Any, thread: Optional[threading.Thread] = None
    ) -> LiveRequest:
        """Enter a request that a strategy has taken on: ``queued``, or ``running``
        in ``thread`` (counted as started) when that thread is already running it."""
        is_pair = type(client_address) is tuple and client_address  # (host, port, ...)
        host = client_address[0] if is_pair else client_address
        entry = LiveRequest(next(self._ids), request, client_address, host, _monotonic())
        lock = self._lock
        lock.acquire()
        try:
            live = self._live
            live[id(request)] = entry
            per_host = self._per_host
            per_host[host] = per_host.get(host, 0) + 1
            if thread is None:
                self._queued += 1
            else:
                entry.thread = thread
                entry.state = RUNNING
                self._counts["started"] += 1
            self._peak = max(self._peak, len(live))
        finally:
            lock.release()
        return entry

    def admit(
        self,
        request: Any,
        client_address: Any,
        max_total: Optional[int],
        max_per_host: Optional[int],
        accepted: bool = False,
    ) -> Union[LiveRequest, str]:
        """Enter a request just accepted, ``queued``, if it fits the limits.

        Checking and entering are one step under the lock, so threads that accept
        at once never admit more than the limits allow; ``accepted`` also counts
        it as accepted in that step (admitted or not). Returns the entry, or the
        reason it does not fit (nothing entered).
        """
        is_pair = type(client_address) is tuple and client_address
        host = client_address[0] if is_pair else client_address
        entry = LiveRequest(next(self._ids), request, client_address, host, _monotonic())
        lock = self._lock
        lock.acquire()
        try:
            if accepted:
                self._counts["accepted"] += 1
            live = self._live
            if max_total is not None and len(live) >= max_total:
                return f"max_connections={max_total} reached"
            per_host = self._per_host
            from_host = per_host.get(host, 0)
            if max_per_host is not None and from_host >= max_per_host:
                return f"max_connections_per_client={max_per_host} reached"
            live[id(request)] = entry
            per_host[host] = from_host + 1
            self._queued += 1
            self._peak = max(self._peak, len(live))
        finally:
            lock.release()
        return entry

    def run(self, request: Any, client_address: Any, thread: threading.Thread) -> LiveRequest:
        """The request's entry marked ``running`` in ``thread`` (the thread that
        took it): the entry made when it was accepted, or a new one (a request
        that did not come through :meth:`admit`)."""
        entry = self._live.get(id(request))
        if entry is None:
            return self.add(request, client_address, thread)
        self.start(entry, None, thread)
        return entry

    def start(
        self,
        entry: LiveRequest,
        pid: Optional[int] = None,
        thread: Optional[threading.Thread] = None,
    ) -> None:
        """Mark a request as running in ``thread`` (default: this one) or child ``pid``."""
        if pid is None:
            entry.thread = threading.current_thread() if thread is None else thread
        else:
            entry.pid = pid
        with self._lock:
            if entry.state is QUEUED:
                entry.state = RUNNING
                self._queued -= 1
                self._counts["started"] += 1

    def remove(self, entry: LiveRequest, outcome: Optional[str] = FINISHED) -> bool:
        """Take a request out; count ``outcome`` (None: a refusal, counted by the
        caller as ``rejected``). False if it was already out."""
        lock = self._lock
        lock.acquire()
        try:
            live = self._live
            if live.pop(id(entry.request), None) is None:
                return False
            if entry.state is QUEUED:
                self._queued -= 1
            per_host = self._per_host
            left = per_host.pop(entry.host) - 1
            if left:
                per_host[entry.host] = left
            if outcome is not None:
                self._counts[outcome] += 1
            if self._waiting and not live:
                self._emptied.notify_all()
        finally:
            lock.release()
        return True

    def from_host(self, host: Any) -> int:
        """How many requests from one client host are in flight."""
        return self._per_host.get(host, 0)

    def get(self, request: Any) -> Optional[LiveRequest]:
        return self._live.get(id(request))

    # -- for readers and for drain ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def entries(self) -> list[LiveRequest]:
        with self._lock:
            return list(self._live.values())

    def snapshot(self) -> tuple[InFlight, ...]:
        """Immutable records of every request in flight, oldest first."""
        now, wall_now = time.monotonic(), time.time()
        return tuple(entry.record(now, wall_now) for entry in self.entries())

    def wait_empty(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds (None: forever) for no request in flight."""
        with self._lock:
            self._waiting += 1
            try:
                return self._emptied.wait_for(lambda: not self._live, timeout)
            finally:
                self._waiting -= 1

    def stats(self) -> Stats:
        with self._lock:
            queued = self._queued
            return Stats(
                active=len(self._live) - queued, queued=queued, peak=self._peak, **self._counts
            )
