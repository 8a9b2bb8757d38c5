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

Workers accept (Linux, stream listeners, the default)
-----------------------------------------------------
The hand-off above costs a thread switch per connection: the loop wakes, accepts,
wakes a worker, and the worker runs. For short connections that switch is most of
the server's work (the bench's connect-echo-close rate was 2.8x the stdlib with it,
3.7x without). So while ``serve_forever()`` runs, *idle workers wait on the
listener themselves*, each in its own ``epoll`` with the listener registered
``EPOLLEXCLUSIVE``: the kernel wakes one idle worker per connection, and that
worker runs the whole path (``get_request`` -> ``verify_request`` ->
``process_request`` -> the handler) with no hand-off. The loop thread no longer
watches the listener (it holds it); it keeps pacing ``service_actions()`` and
waiting for ``shutdown()``.

* Backpressure is free: a busy worker does not accept, so when all
  ``max_workers`` are busy nobody accepts and the kernel backlog holds the burst.
  ``queue_size`` is not used in this mode.
* A worker that takes a connection while no other worker waits on the listener
  recruits one (a parked worker, or a new one up to ``max_workers``), so the pool
  grows on demand exactly as in hand-off mode.
* A *gate* (a socket pair every worker's epoll also watches) stops them: it is
  closed whenever the loop is not running or any hold applies (accept back-off,
  drain, ``server_close()``); waiting workers then park, and ``shutdown()``
  returns only once no worker is left in the accept path.
* Two workers may occasionally wake for one connection, so the listener's
  descriptor is switched to non-blocking while workers accept (its Python
  timeout is untouched) and restored when ``serve_forever()`` returns; the loser's
  ``accept()`` fails with EAGAIN, which is ignored.
* Connection limits are checked and the request registered under one lock, so
  workers accepting at once never admit more than the limits allow.

``workers_accept = False`` restores the hand-off; it is also used where epoll's
``EPOLLEXCLUSIVE`` is missing, for datagram servers, for a listener with a
timeout, and for ``handle_request()``. There, when the listener is readable, the
loop accepts up to ``accept_batch`` connections before it sleeps again (checking
readiness with a zero-timeout poll, so the listener's blocking mode is untouched).

Workers are daemon threads: a pool never keeps a process alive by itself.
``server_close()`` waits at most ``close_timeout`` for requests in flight (see
:mod:`pyserve.lifecycle`), then stops and joins the workers.

The pool servers protect themselves by default (see :mod:`pyserve.limits`): a
pool has few threads, so a client that dawdles must not keep one.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from pyserve.base import BaseServer
from pyserve.registry import LiveRequest

__all__ = ["ThreadPoolMixIn"]

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

_POOL_FULL = "pool-full"
_WORKERS_ACCEPT = "pool-workers-accept"  # the loop's hold while workers accept

_Job = tuple[Any, Any, LiveRequest]


class _Action:
    """What a worker does next, when it is not a job: accept, park or exit."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_ACCEPT, _PARK, _EXIT = _Action("accept"), _Action("park"), _Action("exit")


class _Worker:
    __slots__ = ("job", "poller", "thread", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # held: acquiring again parks the worker
        self.job: Optional[_Job] = None
        self.thread: Optional[threading.Thread] = None
        self.poller: Any = None  # its epoll, made on its first turn at the listener


def _exclusive_poller(listener_fd: int, gate_fd: Optional[int]) -> Any:
    """An epoll watching the gate, and the listener with EPOLLEXCLUSIVE."""
    poller = select.epoll()
    try:
        if gate_fd is not None:
            poller.register(gate_fd, select.EPOLLIN)
        poller.register(listener_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
    except BaseException:
        poller.close()
        raise
    return poller


class ThreadPoolMixIn(_Base):
    """Run requests on at most ``max_workers`` reused threads, with backpressure.

    ``ThreadPoolMixIn.__init__`` accepts the keyword arguments ``max_workers`` and
    ``queue_size`` before the server's own arguments, e.g.
    ``ThreadPoolTCPServer(address, Handler, max_workers=8)``.

    Class attributes that may be overridden:

    - ``max_workers``: the most worker threads (each serves one request at a time)
    - ``workers_accept``: idle workers wait on the listener themselves (Linux,
      stream servers, ``serve_forever()``); False hands each request over from
      the loop
    - ``queue_size``: in hand-off mode, accepted requests that may wait for a
      worker before the server stops accepting
    - ``accept_batch``: in hand-off mode, the most connections accepted per loop
      wake-up
    - ``close_timeout``: seconds ``server_close()`` waits for requests in flight
      before forcing them to end (None: wait as long as they run)
    - ``idle_timeout`` (60 s), ``request_deadline`` (300 s), ``max_line_length``
      (64 KiB): protections for stream handlers, on by default here
    """

    #: A connection holds a worker for its whole life, so the pool must be large
    #: enough for the keep-alive clients you expect; 32 serves a small service.
    max_workers: int = 32
    #: No hand-off per connection where the platform allows (see the module doc).
    workers_accept: bool = True
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
    #: How long shutdown() waits for workers to leave the accept path.
    _accept_exit_timeout: float = 5.0

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
        # A zero-timeout poll on the listener, for batch accepts: (fd, poll object).
        self._ready_poll: Optional[tuple[int, Any]] = None
        # Workers accept: the gate (receiver, sender), whether it is open, the
        # workers now in the accept path (by thread ident), and the registry entries
        # made at admission (by thread ident), when limits apply.
        self._gate: Optional[tuple[socket.socket, socket.socket]] = None
        self._gate_open = False
        self._worker_mode = False
        self._listener_was_blocking = True
        self._listener_fd = -1
        self._in_accept: dict[int, _Worker] = {}
        self._admit_lock = threading.Lock()
        self._admitted: dict[int, LiveRequest] = {}

    # -- workers accept: entering and leaving the mode -----------------------------

    def _workers_can_accept(self) -> bool:
        listener = getattr(self, "socket", None)
        return (
            bool(self.workers_accept)
            and hasattr(select, "EPOLLEXCLUSIVE")
            and isinstance(listener, socket.socket)
            and listener.type == socket.SOCK_STREAM
            and listener.gettimeout() is None
            and listener.fileno() == self.fileno()
        )

    def _serving_started(self) -> None:
        super()._serving_started()
        if not self._workers_can_accept():
            return
        fd = self.fileno()
        try:
            _exclusive_poller(fd, None).close()
        except OSError:  # a kernel older than 4.5: the loop hands requests over
            return
        with self._pool_lock:
            if self._pool_closed:
                return
            if self._gate is None:
                receiver, sender = socket.socketpair()
                receiver.setblocking(False)
                sender.setblocking(False)
                self._gate = (receiver, sender)
            self._listener_fd = fd
            self._listener_was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            self._worker_mode = True
        self._hold_accept(_WORKERS_ACCEPT)  # the loop stops watching; the gate opens

    def _serving_stopped(self) -> None:
        if self._worker_mode:
            with self._pool_lock:
                self._worker_mode = False
            self._release_accept(_WORKERS_ACCEPT)  # closes the gate
            deadline = time.monotonic() + self._accept_exit_timeout
            with self._pool_lock:
                while self._in_accept and time.monotonic() < deadline:
                    self._pool_changed.wait(deadline - time.monotonic())
            try:
                os.set_blocking(self.fileno(), self._listener_was_blocking)
            except (OSError, ValueError):
                pass  # the listener is closed already
        super()._serving_stopped()

    def _hold_accept(self, reason: str) -> None:
        super()._hold_accept(reason)
        self._sync_gate()

    def _release_accept(self, reason: str) -> None:
        super()._release_accept(reason)
        self._sync_gate()

    def _sync_gate(self) -> None:
        """Open the gate exactly when workers should accept; wake them accordingly."""
        if self._gate is None:
            return
        with self._pool_lock:
            gate = self._gate
            want = (
                self._worker_mode
                and not self._pool_closed
                and self._accept_holds == {_WORKERS_ACCEPT}
            )
            if gate is None or want == self._gate_open:
                return
            self._gate_open = want
            receiver, sender = gate
            if not want:
                try:
                    sender.send(b"x")  # level-triggered: every waiting worker wakes
                except OSError:
                    pass  # already full: the gate is closed anyway
                return
            try:
                while receiver.recv(4096):
                    pass
            except OSError:
                pass  # drained
            parked, self._idle = self._idle, []
            for worker in parked:
                worker.job = None
                worker.wake.release()  # it will find the gate open and accept
            if not parked and not self._in_accept and len(self._workers) < self.max_workers:
                self._start_worker(None)

    def _backoff_in_loop(self) -> bool:
        return threading.get_ident() in self._in_accept or super()._backoff_in_loop()

    def _within_limits(self, client_address: Any, request: Any = None) -> bool:
        """In a worker that accepts: check the limits and register, atomically."""
        ident = threading.get_ident()
        if ident not in self._in_accept:
            return super()._within_limits(client_address, request)
        with self._admit_lock:
            if not super()._within_limits(client_address, request):
                return False
            self._admitted[ident] = self._track(request, client_address)
            return True

    # -- the loop side (hand-off) ---------------------------------------------------

    def _handle_request_noblock(self) -> None:
        """Take one request, then more while the listener is ready (one wake-up)."""
        super()._handle_request_noblock()
        if threading.get_ident() != self._serving_ident:
            return  # handle_request(), or a worker that accepts: exactly one request
        ready = self._listener_ready
        for _ in range(self.accept_batch - 1):
            if self._accept_holds or self._stop_requested or not ready():
                return
            super()._handle_request_noblock()

    def _listener_ready(self) -> bool:
        fd = self.fileno()
        probe = self._ready_poll
        if probe is None or probe[0] != fd:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            probe = self._ready_poll = (fd, poller)
        return bool(probe[1].poll(0))

    def process_request(self, request: Any, client_address: Any) -> None:
        """Run here (a worker that accepted it), or hand over to a worker or the queue."""
        ident = threading.get_ident()
        if self._in_accept and self._in_accept.pop(ident, None) is not None:
            self._serve_here(ident, request, client_address)
            return
        job = (request, client_address, self._track(request, client_address))
        with self._pool_lock:
            if self._pool_closed:
                raise RuntimeError("the thread pool is closed")
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.wake.release()
            elif len(self._workers) < self.max_workers:
                self._start_worker(job)
            else:
                self._pending.append(job)
            if (
                not self._pool_held
                and not self._idle
                and len(self._workers) >= self.max_workers
                and len(self._pending) >= self.queue_size
            ):
                self._pool_held = True
                self._hold_accept(_POOL_FULL)

    def _serve_here(self, ident: int, request: Any, client_address: Any) -> None:
        entry = self._admitted.pop(ident, None) if self._admitted else None
        if entry is None:
            entry = self._track(request, client_address)
        if not self._in_accept:  # nobody waits on the listener now
            with self._pool_lock:
                if not self._gate_open:
                    self._pool_changed.notify_all()  # for _serving_stopped()
                elif not self._in_accept:  # recruit someone to wait there
                    if self._idle:
                        worker = self._idle.pop()
                        worker.job = None
                        worker.wake.release()
                    elif len(self._workers) < self.max_workers:
                        self._start_worker(None)
        self._run((request, client_address, entry))

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
            if worker.poller is not None:
                worker.poller.close()

    def _next_job(self, worker: _Worker) -> Union[_Job, _Action]:
        """The oldest queued request, else accept, park or leave."""
        if self._gate_open and not (self._pending or self._pool_held or self._pool_closed):
            # The common case, without the lock: if the gate closes meanwhile, the
            # worker sees it in its epoll and leaves at once.
            self._in_accept[threading.get_ident()] = worker
            return _ACCEPT
        with self._pool_lock:
            action: Union[_Job, _Action]
            if self._pending:
                action = self._pending.popleft()
            elif self._pool_closed:
                self._workers.discard(worker)
                action = _EXIT
            elif self._gate_open:
                self._in_accept[threading.get_ident()] = worker
                action = _ACCEPT
            else:
                self._idle.append(worker)
                action = _PARK
            if self._pool_held:  # a worker or a queue slot is free again
                self._pool_held = False
                self._release_accept(_POOL_FULL)
            return action

    def _accept_turn(self, worker: _Worker) -> None:
        """Wait for a connection or the gate; take at most one connection."""
        gate = self._gate
        if gate is None:
            return
        poller = worker.poller
        if poller is None:
            poller = worker.poller = _exclusive_poller(self.fileno(), gate[0].fileno())
        for fd, _ in poller.poll():
            if fd != self._listener_fd:
                return  # the gate: stop accepting
        if self._gate_open:
            self._handle_request_noblock()

    def _left_accept(self, ident: int) -> None:
        if ident in self._in_accept or not self._gate_open:
            with self._pool_lock:
                self._in_accept.pop(ident, None)
                self._pool_changed.notify_all()

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
        if gate is not None:
            for end in gate:
                end.close()
