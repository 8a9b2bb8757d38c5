"""A bounded pool of reused worker threads, with accept backpressure.

Theory of operation
-------------------
:class:`ThreadPoolMixIn` replaces "a new thread per request" with at most
``max_workers`` threads that live as long as the server and take requests one
after another. Starting a thread costs tens of microseconds and a megabyte of
address space; handing a request to a parked thread costs one lock release.

The hand-off is built for speed, on three pieces of state guarded by one lock:

* ``_idle``: a stack of parked workers. Each parks on its *own* lock, so the loop
  wakes exactly the worker it chose (the most recently parked one, whose stack is
  warm in the caches), never a herd;
* ``_pending``: a deque of requests that found every worker busy, at most
  ``queue_size`` long;
* the workers: created on demand, up to ``max_workers``.

``process_request()`` (in the loop) gives the request to an idle worker, or starts
a worker, or queues it. A worker that finishes takes the oldest queued request, or
parks. **Backpressure**: when every worker is busy and the queue is full, the pool
*holds* the listener (``_hold_accept("pool-full")``); the loop stops watching it
and the kernel's backlog absorbs the burst. The first worker to free a slot
releases the hold. So the number of threads never exceeds ``max_workers``, and no
accepted connection is ever dropped: at worst, new ones wait in the backlog.

Who accepts
-----------
On Linux, while ``serve_forever()`` runs, idle workers wait on the listener
themselves and run the whole request path with no hand-off (see
:mod:`pyserve.pool.accept`): about a third more short connections per second on
one core. The hooks on the accept path (``get_request``, ``verify_request``,
``process_request``) still run one connection at a time: a server that overrides
one of them keeps the hand-off by default (``workers_accept = None``), so the
loop thread runs them as in the stdlib; ``workers_accept = True`` lets workers
accept anyway, taking turns at those hooks; ``False`` always hands over.

In the hand-off, the loop thread accepts and, when the listener is readable,
takes up to ``accept_batch`` connections before it sleeps again (checking
readiness with a zero-timeout poll, so the listener's blocking mode is
untouched). It is also what runs where epoll's ``EPOLLEXCLUSIVE`` is missing,
for datagram servers, for a listener with a timeout, for an adopted listener
that is still blocking, and for ``handle_request()``.

If a worker thread cannot start (``RuntimeError: can't start new thread``), the
request waits in the queue for a worker that exists; with no worker at all the
request fails like any other ``process_request()`` error (``handle_error()``, the
connection closed, nothing left in the registry).

Workers are daemon threads: a pool never keeps a process alive by itself.
``server_close()`` waits at most ``close_timeout`` for requests in flight (see
:mod:`pyserve.lifecycle.drain`), then stops and joins the workers.

The pool servers protect themselves by default (see :mod:`pyserve.lifecycle.limits`): a
pool has few threads, so a client that dawdles must not keep one. When a request
waits for a worker, ``_reclaim_worker()`` at once shuts the oldest connection that
has not sent anything yet (or is idle past ``busy_idle_timeout``) for reading; its
handler ends and its worker takes the waiting request. And one client host may
have at most ``max_workers`` plus half the queue in flight, so a flood from one
address leaves queue room for the rest.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from pyserve.base import BaseServer
from pyserve.logs import RateLimitedLog
from pyserve.pool.accept import (
    _ACCEPT,
    _EXIT,
    _PARK,
    WorkersAccept,
    _Action,
    _Job,
    _Slot,
    _Worker,
)

__all__ = ["ThreadPoolMixIn"]

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

logger = logging.getLogger("pyserve")

_POOL_FULL = "pool-full"
#: ThreadPoolMixIn.max_connections_per_client's default: a share of the pool.
_SHARE_OF_POOL = object()
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

class ThreadPoolMixIn(WorkersAccept):
    """Run requests on at most ``max_workers`` reused threads, with backpressure.

    ``ThreadPoolMixIn.__init__`` accepts the keyword arguments ``max_workers`` and
    ``queue_size`` before the server's own arguments, e.g.
    ``ThreadPoolTCPServer(address, Handler, max_workers=8)``.

    Class attributes that may be overridden:

    - ``max_workers``: the most worker threads (each serves one request at a time)
    - ``workers_accept``: None (the default) lets idle workers wait on the
      listener themselves (Linux, stream servers, ``serve_forever()``) unless an
      accept-path hook is overridden; True even then (those hooks take turns,
      in several threads); False hands each request over from the loop (see
      the module documentation)
    - ``queue_size``: in hand-off mode, accepted requests that may wait for a
      worker before the server stops accepting
    - ``accept_batch``: in hand-off mode, the most connections accepted per loop
      wake-up
    - ``close_timeout``: seconds ``server_close()`` waits for requests in flight
      before forcing them to end (None: wait as long as they run)
    - ``idle_timeout`` (60 s), ``request_deadline`` (300 s), ``max_line_length``
      (64 KiB), ``busy_idle_timeout`` (5 s while saturated): protections for
      stream handlers, on by default here
    - ``max_connections_per_client``: ``max_workers`` plus half of
      ``queue_size`` by default (see the property)
    - ``saturation_log_interval``: at most one "pool saturated" WARNING this often

    :meth:`saturated` says whether requests are waiting for a worker now.
    """

    #: A connection holds a worker for its whole life, so the pool must be large
    #: enough for the keep-alive clients you expect; 32 serves a small service.
    max_workers: int = 32
    #: None: idle workers accept unless a hook of the accept path is overridden,
    #: which then runs in the loop thread, as in the stdlib (see the module doc).
    workers_accept: Optional[bool] = None
    #: Twice the workers: a burst is accepted promptly, a flood waits in the backlog.
    queue_size: int = 64
    #: Enough to drain a burst per wake-up; small enough to keep the loop responsive.
    accept_batch: int = 32
    #: See ThreadingMixIn.close_timeout.
    close_timeout: Optional[float] = 30.0
    #: A client silent this long is dropped: a minute covers slow humans and links.
    idle_timeout: Optional[float] = 60.0
    #: No single connection may hold a worker more than five minutes.
    request_deadline: Optional[float] = 300.0
    #: The longest line rfile.readline() returns, as http.server's own limit.
    max_line_length: Optional[int] = 65536
    #: While requests wait for a worker, a connection silent this long gives its
    #: worker up: five seconds spares a client between two requests of one
    #: exchange, yet frees a worker long before idle_timeout.
    busy_idle_timeout: Optional[float] = 5.0
    #: At most one "pool saturated" warning this often (seconds).
    saturation_log_interval: float = 60.0
    #: How long shutdown() waits for workers to leave the accept path.
    _accept_exit_timeout: float = 5.0

    @property
    def max_connections_per_client(self) -> Optional[int]:
        """Connections in flight at once from one client host; beyond it a new one
        is refused (see :mod:`pyserve.lifecycle.limits`).

        By default ``max_workers`` plus half of ``queue_size`` (rounded up): one
        host may fill every worker and half the queue, so a flood from one address always leaves
        queue room for everyone else, and an honest host is refused only what
        would otherwise wait in the listen backlog. None on Unix sockets, whose
        peers all share one (empty) address. Set a number, or None for no limit,
        on the server or in a subclass.
        """
        if self._per_client_limit is _SHARE_OF_POOL:
            if getattr(self, "address_family", None) not in _IP_FAMILIES:
                return None  # Unix-socket peers have no address to tell them apart
            return self.max_workers + (self.queue_size + 1) // 2
        return self._per_client_limit  # type: ignore[return-value]

    @max_connections_per_client.setter
    def max_connections_per_client(self, value: Optional[int]) -> None:
        self._per_client_limit = value

    _per_client_limit: object = _SHARE_OF_POOL

    def __init__(
        self,
        *args: Any,
        max_workers: Optional[int] = None,
        queue_size: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if max_workers is not None:
            self.max_workers = max_workers
        if queue_size is not None:
            self.queue_size = queue_size
        super().__init__(*args, **kwargs)

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        workers, queue = self.max_workers, self.queue_size
        if type(workers) is not int or workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {workers!r}")
        if type(queue) is not int or queue < 0:
            raise ValueError(f"queue_size must be an int >= 0, got {queue!r}")
        # Reentrant: holding the listener (under the lock) re-reads the gate state.
        self._pool_lock = threading.RLock()
        self._pool_changed = threading.Condition(self._pool_lock)
        self._idle: list[_Worker] = []
        self._pending: collections.deque[_Job] = collections.deque()
        self._workers: set[_Worker] = set()
        self._pool_closed = False
        self._pool_held = False
        self._worker_serial = 0
        self._saturation_log = RateLimitedLog(logger, self.saturation_log_interval)
        # The workers' own gate follows the server's accept gate.
        self.accept_gate.subscribe(self._sync_gate)
        # Workers accept: the gate (receiver, sender), whether it is open, the
        # workers now in the accept path (by thread ident), and the registry entries
        # made at admission (by thread ident), when limits apply.
        self._gate: Optional[tuple[socket.socket, socket.socket]] = None
        self._gate_open = False
        self._worker_mode = False
        self._listener_was_blocking = True
        self._listener_fd = -1
        self._in_accept: dict[int, _Worker] = {}
        # Held by the one worker running the accept path's hooks (see pool.hooks).
        self._hooks_lock = threading.Lock()
        self._backlog_watched = False
        self._slots: list[_Slot] = []  # places at the listener (see pool_accept)
        self._free_slots: list[_Slot] = []

    # -- the loop side (hand-off) ---------------------------------------------------

    def _handle_request_noblock(self) -> None:
        """Take one request, then more while the listener is ready (one wake-up)."""
        super()._handle_request_noblock()
        if threading.get_ident() != self._serving_ident:
            return  # handle_request(), or a worker that accepts: exactly one request
        for _ in range(self.accept_batch - 1):
            if not self._may_accept_more():
                return
            super()._handle_request_noblock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Run here (a worker that accepted it), or hand over to a worker or the queue."""
        if self._in_accept:
            worker = self._in_accept.pop(threading.get_ident(), None)
            if worker is not None:
                self._serve_here(worker, request, client_address)
                return
        job = (request, client_address, self._track(request, client_address))
        queued = False
        with self._pool_lock:
            if self._pool_closed:
                raise RuntimeError("the thread pool is closed")
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.wake.release()
            elif len(self._workers) < self.max_workers:
                try:
                    self._start_worker(job)
                except RuntimeError:
                    if not self._workers:
                        raise  # nobody could ever run it: the request fails
                    # The system refused a thread (its limit, or memory): the
                    # request waits for a worker that exists.
                    self._pending.append(job)
                    queued = True
            else:
                self._pending.append(job)
                queued = True
                self._note_saturation()
            if (
                not self._pool_held
                and not self._idle
                and len(self._workers) >= self.max_workers
                and len(self._pending) >= self.queue_size
            ):
                self._pool_held = True
                self._hold_accept(_POOL_FULL)
        if queued:
            self._reclaim_worker()

    def saturated(self) -> bool:
        """True while requests wait for a worker (every worker is busy).

        Idle connections give their worker up after ``busy_idle_timeout`` while
        this holds (see :mod:`pyserve.lifecycle.limits`).
        """
        if self._pending or self._pool_held:
            return True
        # Workers accept: waiting connections sit in the kernel's backlog, unseen;
        # every worker holding a request is the sign. Counted in the registry, not
        # from the idle list: a worker between two requests is neither idle nor
        # at the listener for a moment, yet free.
        return self._worker_mode and len(self._registry) >= self.max_workers

    def _reclaim_worker(self) -> bool:
        """A request waits for a worker: free one held by a connection that is not
        using it (see :meth:`SocketReader.give_up
        <pyserve.lifecycle.limits.SocketReader.give_up>`), the longest-held first.
        True if one was shut (its worker takes the waiting request as the handler
        ends). Called without the pool lock: it takes the registry's.
        """
        idle_for = self.busy_idle_timeout
        if idle_for is None:
            return False
        now = time.monotonic()
        for entry in self._registry.entries():  # oldest first
            reader = entry.reader
            if reader is not None and reader.give_up(now, idle_for):
                return True
        return False

    def _note_saturation(self) -> None:
        """One WARNING per ``saturation_log_interval`` while the pool is saturated
        (called with the pool lock held)."""
        # Workers that accept leave waiting connections in the kernel's backlog,
        # where they cannot be counted: say where they wait instead of "0".
        waiting = (
            f"{len(self._pending)} waiting for a worker"
            if self._pending or not self._worker_mode
            else "new connections waiting in the listen backlog"
        )
        self._saturation_log.report(
            logging.WARNING,
            "saturated",
            "thread pool saturated: all %d workers busy, %s; connections that "
            "sent nothing give up their worker at once, idle ones after "
            "busy_idle_timeout=%ss; raise max_workers (or --max-workers) if this persists",
            self.max_workers,
            waiting,
            self.busy_idle_timeout,
        )

    def _start_worker(self, job: Optional[_Job]) -> None:
        worker = _Worker()
        worker.job = job
        self._worker_serial += 1
        worker.thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"pyserve-pool-{self._worker_serial}",
            daemon=True,
        )
        self._workers.add(worker)
        try:
            worker.thread.start()
        except BaseException:
            self._workers.discard(worker)
            raise

    # -- the worker side ---------------------------------------------------------------

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run one request in a worker: the stdlib's error contract."""
        self._serve_off_loop(request, client_address)

    def _run(self, job: _Job) -> None:
        request, client_address, entry = job
        self._started(entry)
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._ended(entry)

    def _work(self, worker: _Worker) -> None:
        ident = threading.get_ident()
        job, worker.job = worker.job, None
        try:
            while True:
                if job is not None:
                    self._run(job)
                action = self._next_job(worker)
                job = None
                if action is _EXIT:
                    return
                if action is _ACCEPT:
                    try:
                        self._accept_turn(worker)
                    finally:
                        if ident in self._in_accept or not self._gate_open:
                            self._left_accept(ident)
                elif action is _PARK:
                    worker.wake.acquire()  # until process_request(), the gate or close
                    job, worker.job = worker.job, None
                else:
                    job = action  # type: ignore[assignment]
        finally:
            with self._pool_lock:  # normally done already; not if a BaseException hit
                self._workers.discard(worker)
                self._in_accept.pop(ident, None)
                slot, worker.slot = worker.slot, None
                if slot is not None:
                    self._return_slot(slot)

    def _next_job(self, worker: _Worker) -> Union[_Job, _Action]:
        """The oldest queued request, else accept, park or leave."""
        if self._gate_open and not (self._pending or self._pool_held or self._pool_closed):
            # The common case, without the lock: if the gate closes meanwhile, the
            # worker sees it in its epoll and leaves at once.
            if worker.slot is None:
                try:
                    worker.slot = self._free_slots.pop()
                except IndexError:
                    pass  # every slot is held: park (below)
            if worker.slot is not None:
                self._in_accept[threading.get_ident()] = worker
                return _ACCEPT
        with self._pool_lock:
            action: Union[_Job, _Action]
            slot, worker.slot = worker.slot, None
            if slot is not None:  # not going to the listener now
                self._return_slot(slot)
            if self._pending:
                action = self._pending.popleft()
            elif self._pool_closed:
                self._workers.discard(worker)
                action = _EXIT
            elif self._gate_open and self._free_slots:
                worker.slot = self._free_slots.pop()
                self._in_accept[threading.get_ident()] = worker
                action = _ACCEPT
            else:  # until the gate opens, or nobody is left at the listener
                self._idle.append(worker)
                action = _PARK
            if self._pool_held:  # a worker or a queue slot is free again
                self._pool_held = False
                self._release_accept(_POOL_FULL)
            return action

    # -- closing ---------------------------------------------------------------------

    def server_close(self) -> None:
        with self._pool_lock:
            self._pool_closed = True  # workers stop accepting before the listener closes
        self._sync_gate()
        super().server_close()
        if self.close_timeout is None:
            self._registry.wait_empty(None)
        else:
            self._settle(self.close_timeout, None, "server_close")
        with self._pool_lock:
            parked, self._idle = self._idle, []
            for worker in parked:
                self._workers.discard(worker)
                worker.job = None
                worker.wake.release()
            everyone = [w.thread for w in parked] + [w.thread for w in self._workers]
        deadline = time.monotonic() + self.drain_force_timeout
        for thread in everyone:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._pool_lock:
            gate, self._gate = self._gate, None
            self._close_free_slots()
        if gate is not None:
            for end in gate:
                end.close()
