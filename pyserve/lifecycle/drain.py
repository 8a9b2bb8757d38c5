"""A server's life around its requests: tracking, counters, observers, drain.

Theory of operation
-------------------
:class:`~pyserve.base.BaseServer` inherits :class:`Lifecycle`. Each concurrency
strategy calls three small methods on the request path:

* ``_track(request, client_address)`` when it takes a request on (the entry the
  loop made when it accepted the request, ``queued``), ``_started(entry)`` when a
  handler begins (or both at once, ``_track_running(request, client_address,
  thread)``, for a request that runs in the thread that took it), and
  ``_ended(entry, exc)`` when the request is over, classifying the ending as
  finished, errored or timed out. They keep the registry
  (:mod:`pyserve.lifecycle.registry`, ``server.registry``) and the counters, and
  tell observers (:mod:`pyserve.lifecycle.events`).

On top of the registry sits **graceful drain**, :meth:`Lifecycle.drain`:

1. set ``server.draining`` (a :class:`threading.Event` handlers may check or wait
   on, e.g. to stop a keep-alive loop after the current reply) and stop accepting,
   as a *barrier*: close the server's accept gate (:mod:`pyserve.lifecycle.gate`),
   wait until no thread is between ``accept()`` and the registry, serve what the
   kernel already queued, and close the listener, so the kernel completes no
   handshake nobody will serve and a load balancer retries elsewhere (a listener
   shared with other processes is only withdrawn from this one). From here on the
   registry holds exactly what the drain must wait for;
2. close the *idle* connections (below) and wait what is left of ``grace``
   seconds (counted from the call) for the requests in flight to finish;
3. *force* what is left: ``shutdown(SHUT_RD)`` on each open connection, so a
   handler blocked in a read gets EOF and ends on its own; ``SIGTERM`` to each
   forked child;
4. wait up to ``force_timeout`` more; ``SIGKILL`` the children still running and
   log every straggler by client address;
5. stop the ``serve_forever()`` loop and return a :class:`DrainReport`.

Idle connections
----------------
A keep-alive client that was answered and is now silent keeps its handler
blocked in a read, with nothing in progress; waiting for it would make every
stop last the whole grace period (as Ctrl-C with one idle ``nc`` did). So, as
production servers close idle keep-alive connections when they stop, a drain
closes them at once. A connection is **idle** when its handler is blocked
waiting for input on ``rfile`` *and* has answered everything it received:
nothing is left in ``rfile``'s buffer and no byte arrived since the handler
last wrote to ``wfile`` (a connection that never sent anything counts as
answered). A client in the middle of a request (say, half a line sent) has
sent bytes since the last write: it is not idle, and is waited for.

* The reader and writer pyserve gives stream handlers track this with a few
  attribute stores per read and write (:class:`~pyserve.lifecycle.limits.SocketReader`);
  the handler's ``setup()`` hands the reader to the registry entry
  (``_watch_reader``). Right after the listener is closed, the drain asks every
  reader in the registry to shut its connection for reading (``SHUT_RD``,
  on the plain socket even under TLS) if it is idle now, and from then on when
  it becomes idle: a handler that answers one more request during the drain
  and waits to read again gets EOF then. Its read returns end-of-file and the
  handler ends normally (``finish()``, ``shutdown_request()``): these count
  as *completed*, not forced.
* A handler that reads the raw socket (``self.request.recv()``) or uses files
  from ``makefile()`` is never taken for idle: it is waited for as before.
* The multiplexing server applies the same rule in its I/O thread: a
  connection with no input received since its handler last called
  ``write()`` and nothing left to send is closed at the drain's start, or as
  soon as it becomes so during the drain.
* A request run in a forked child (``ForkingMixIn``) is waited for as before:
  the child holds the reader, and the drain signals it only when the grace
  ends. (A prefork worker runs this drain itself, so the rule applies there.)

A request that arrives just as its idle connection is shut may be cut (for a
blocking handler: also one whose first bytes a read returned a moment before
the reader noted them): the race every keep-alive server has, which is why
clients retry a request on a connection that closed before answering.

``server_close()`` of the threading, pool and forking strategies runs steps 2-4
with ``close_timeout`` as the grace, so closing never waits without bound on a
keep-alive client (the stdlib waits until the client hangs up).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from pyserve.lifecycle.events import (
    DRAINED,
    ERRORED,
    FINISHED,
    REJECTED,
    STARTED,
    TIMED_OUT,
    Observer,
    ServerEvent,
    Stats,
)
from pyserve.lifecycle.gate import AcceptGate
from pyserve.lifecycle.registry import InFlight, LiveRequest, RequestRegistry
from pyserve.logs import DeferredLogger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, Optional
else:
    from pyserve._typing_free import NamedTuple

__all__ = ["DrainReport", "Lifecycle"]

logger = DeferredLogger("pyserve")

# POSIX fixes these numbers, so a drain needs no `import signal` (which every
# importer of pyserve would pay for) to send them.
_SIGTERM, _SIGKILL = 15, 9

# Timeouts of every flavour end a request as "timed out" rather than "errored".
_TIMEOUTS = (socket.timeout, TimeoutError)


class DrainReport(NamedTuple):
    """What a drain (or a bounded close) achieved.

    ``completed``: requests that finished on their own; ``forced``: requests cut
    short (connection shut for reading, or child signalled); ``stragglers``: the
    requests still in flight at the deadline (already logged); ``elapsed``: seconds
    the drain took.
    """

    completed: int
    forced: int
    stragglers: tuple[InFlight, ...]
    elapsed: float


class Lifecycle:
    """Request tracking, counters, observers and graceful drain (a server base).

    For the caller: ``in_flight()``, ``stats``, ``add_observer()``,
    ``remove_observer()``, ``drain(grace)``, ``draining``.

    Class attributes that may be overridden:

    - ``drain_force_timeout``: seconds a drain waits after forcing (SHUT_RD or
      SIGTERM) before it gives up on (and SIGKILLs) what is left
    """

    #: After forcing, handlers usually end within milliseconds (a read returns EOF);
    #: five seconds covers a slow write to a slow client, then SIGKILL / give up.
    drain_force_timeout: float = 5.0

    # Provided by ServeLoop.
    _loop_running: threading.Event

    accept_gate: AcceptGate

    if TYPE_CHECKING:  # provided by ServeLoop, beside this class in BaseServer

        def shutdown(self) -> None: ...

    def _init_lifecycle_state(self) -> None:
        self._registry = RequestRegistry()
        self._observers: list[Observer] = []
        self._observers_lock = threading.Lock()
        #: Set when a drain begins: handlers may check it or wait on it.
        self.draining = threading.Event()

    # -- for the caller -----------------------------------------------------------------

    @property
    def registry(self) -> RequestRegistry:
        """The requests in flight and the lifetime counters (one lock; see
        :mod:`pyserve.lifecycle.registry`). Read it; strategies write it."""
        return self._registry

    def in_flight(self) -> tuple[InFlight, ...]:
        """Read-only records of the requests in flight now, oldest first."""
        return self._registry.snapshot()

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters: active, queued, peak and lifetime totals."""
        return self._registry.stats()

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` on every lifecycle event (:mod:`pyserve.lifecycle.events`)."""
        if not callable(observer):
            raise TypeError(f"observer must be callable, got {observer!r}")
        with self._observers_lock:  # copy on write: emitters iterate without a lock
            self._observers = [*self._observers, observer]

    def remove_observer(self, observer: Observer) -> None:
        with self._observers_lock:
            self._observers = [o for o in self._observers if o is not observer]

    # -- for strategies: the request path ----------------------------------------------

    def _emit(
        self, kind: str, client_address: Any, request_id: Optional[int], reason: str = ""
    ) -> None:
        event = ServerEvent(kind, self, client_address, request_id, reason)
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                logger.exception("observer %r failed; removed", observer)
                self.remove_observer(observer)

    def _rejected(self, client_address: Any, reason: str) -> None:
        self._registry.count("rejected")
        if self._observers:
            self._emit(REJECTED, client_address, None, reason)

    def _track(self, request: Any, client_address: Any) -> LiveRequest:
        """The request's registry entry: the one made when it was accepted, or a
        new one (``process_request()`` called directly, not from the loop)."""
        entry = self._registry.get(request)
        return entry if entry is not None else self._registry.add(request, client_address)

    def _track_running(
        self, request: Any, client_address: Any, thread: threading.Thread
    ) -> LiveRequest:
        """``_track()`` and ``_started()`` in one step, for a request run in ``thread``."""
        entry = self._registry.run(request, client_address, thread)
        if self._observers:
            self._emit(STARTED, client_address, entry.id)
        return entry

    def _started(self, entry: LiveRequest, pid: Optional[int] = None) -> None:
        self._registry.start(entry, pid)
        if self._observers:
            self._emit(STARTED, entry.client_address, entry.id)

    def _failed(self, request: Any, exc: BaseException) -> None:
        """Note what a request's handler raised (before ``handle_error()`` runs)."""
        entry = self._registry.get(request)
        if entry is not None:
            entry.error = exc

    def _ended(self, entry: LiveRequest, exc: Optional[BaseException] = None) -> None:
        if exc is None:
            exc = entry.error
        if exc is None:
            outcome = FINISHED
        elif isinstance(exc, _TIMEOUTS):
            outcome = TIMED_OUT
        else:
            outcome = ERRORED
        if self._registry.remove(entry, outcome) and self._observers:
            self._emit(outcome, entry.client_address, entry.id, "" if exc is None else repr(exc))

    # -- drain ------------------------------------------------------------------------

    def drain(self, grace: float, force_timeout: Optional[float] = None) -> DrainReport:
        """Stop accepting, let requests in flight finish, force the rest, stop serving.

        Waits up to ``grace`` seconds, then shuts open connections for reading
        (their handlers read EOF) and sends SIGTERM to forked children, then waits
        up to ``force_timeout`` (default :attr:`drain_force_timeout`) more, SIGKILLs
        children still running and logs the stragglers. Finally stops
        ``serve_forever()``. Call it from any thread except a handler's.
        """
        if grace < 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        started = time.monotonic()
        # The barrier: no accept starts after the close, and the ones under way
        # finish entering the registry before anything is counted.
        self.accept_gate.close("draining")
        self.accept_gate.wait_quiet(grace)
        at_start = len(self._registry)  # before handlers see `draining` and hurry
        self.draining.set()
        at_start += self._withdraw_listener()
        self._close_idle()
        remaining = max(0.0, grace - (time.monotonic() - started))
        report = self._settle(remaining, force_timeout, "drain", at_start, started)
        self._registry.count_many("drained", report.forced)
        # Unconditionally: a drain that lands just before serve_forever() starts must
        # still stop it, and shutdown() before the loop makes it return at once.
        self.shutdown()
        if self._observers:
            self._emit(
                DRAINED, None, None,
                f"completed={report.completed} forced={report.forced} "
                f"stragglers={len(report.stragglers)} elapsed={report.elapsed:.3f}s",
            )
        return report

    def _withdraw_listener(self) -> int:
        """Stop the kernel from completing handshakes nobody will serve (drain);
        return how many queued connections were taken on before closing.

        Socket servers close their listener here (see ``SocketServer``); a listener
        shared with other processes is only withdrawn from this one."""
        return 0

    def _watch_reader(self, request: Any, reader: Any) -> None:
        """A stream handler's ``setup()`` hands over its ``rfile`` reader, which
        knows whether the connection is idle (see "Idle connections")."""
        entry = self._registry.get(request)
        if entry is None:
            return
        entry.reader = reader
        # After the store: a drain that began before it did not see this reader.
        if self.draining.is_set():
            reader.drain_requested = True

    def _close_idle(self) -> None:
        """Shut every idle connection for reading, and have the others shut
        themselves when they become idle (drain, after the listener closed)."""
        for entry in self._registry.entries():
            reader = entry.reader
            if reader is not None:
                reader.shut_if_idle()

    def _settle(
        self,
        grace: float,
        force_timeout: Optional[float],
        what: str,
        at_start: Optional[int] = None,
        started: Optional[float] = None,
    ) -> DrainReport:
        """Steps 2-4 of a drain: wait, force, wait, kill; log and report."""
        if force_timeout is None:
            force_timeout = self.drain_force_timeout
        if started is None:
            started = time.monotonic()
        registry = self._registry
        if at_start is None:
            at_start = len(registry)
        forced = 0
        if not self._wait_settled(grace):
            for entry in registry.entries():
                self._force(entry)
                forced += 1
            self._wait_settled(force_timeout)
        left = registry.entries()
        for entry in left:
            if entry.pid is not None:  # a forked child's
                _signal(entry.pid, _SIGKILL)
        now = time.monotonic()
        records = tuple(entry.record(now, time.time()) for entry in left)
        for record in records:
            logger.warning(
                "%s: request from %s still in flight after %.1fs (thread %s, pid %d)",
                what, record.client_address, record.age, record.thread_name, record.pid,
            )
        return DrainReport(
            completed=max(0, at_start - forced),
            forced=forced,
            stragglers=records,
            elapsed=now - started,
        )

    def _wait_settled(self, timeout: float) -> bool:
        """Wait for the registry to empty, reaping children if no loop does it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._loop_running.is_set() or not self._reaps_children():
                return self._registry.wait_empty(max(0.0, remaining))
            self._reap_children_now()
            if not len(self._registry):
                return True
            if remaining <= 0:
                return False
            self._registry.wait_empty(min(remaining, 0.05))  # children need reaping

    def _force(self, entry: LiveRequest) -> None:
        """Cut one request short: SHUT_RD its connection, or SIGTERM its child."""
        entry.forced = True
        if entry.pid is not None:  # a forked child's
            _signal(entry.pid, _SIGTERM)
            return
        if entry.reader is not None:
            # The handler's own socket: under TLS the registry holds the plain
            # socket the TLS one was made from, which no longer has a descriptor.
            entry.reader.shut()
            return
        request = entry.request
        if isinstance(request, socket.socket):
            try:
                request.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already closed by its handler: it is ending anyway

    # Hooks for ForkingMixIn: a server without a running loop reaps during drain.
    def _reaps_children(self) -> bool:
        return False

    def _reap_children_now(self) -> None:
        """Reap exited children (ForkingMixIn)."""


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it exited in the meantime
