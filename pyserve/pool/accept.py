"""Pool workers that accept connections themselves: no hand-off per connection.

Theory of operation
-------------------
:mod:`pyserve.pool.workers` hands each request from the loop to a parked worker. That
hand-off costs a thread switch per connection: the loop wakes, accepts,
wakes a worker, and the worker runs. For short connections that switch is most of
the server's work (the bench's connect-echo-close rate was 2.8x the stdlib with it,
3.7x without). So while ``serve_forever()`` runs, *idle workers wait on the
listener themselves*, each in its own ``epoll`` with the listener registered
``EPOLLEXCLUSIVE``: the kernel wakes one idle worker per connection, and that
worker runs the whole path (``get_request`` -> ``verify_request`` ->
``process_request`` -> the handler) with no hand-off.

* Only a few workers wait on the listener at a time: there are ``_accept_slots``
  (two) epoll instances on it, and a worker holds one while it waits. Each epoll
  registered on a listener is one more entry the kernel walks, and marks ready,
  for *every* incoming connection, busy or not: with one per worker, 32 workers
  cost about a tenth more CPU per short connection than 8 did (measured with
  bare-thread prototypes on the bench's connect-echo-close load). A worker that
  takes a connection hands its slot back at once; idle workers beyond the slots
  park on their own lock, and one is woken when nobody is left waiting on the
  listener.
* The loop thread no longer watches the listener (it holds it); it keeps pacing
  ``service_actions()`` and waiting for ``shutdown()``.
* Backpressure is free: a busy worker does not accept, so when all
  ``max_workers`` are busy nobody accepts and the kernel backlog holds the burst.
  ``queue_size`` is not used in this mode. Meanwhile the loop watches the
  listener once, so a connection waiting there still logs "pool saturated".
* A worker that takes a connection while no other worker waits on the listener
  recruits one (a parked worker, or a new one up to ``max_workers``), so the pool
  grows on demand exactly as in hand-off mode.
* A *gate* (a socket pair every worker's epoll also watches) stops them: it is
  closed whenever the loop is not running or any hold applies (accept back-off,
  drain, ``server_close()``); waiting workers then park, and ``shutdown()``
  returns only once no worker is left in the accept path.
* A worker woken for a connection takes it even if the gate closed meanwhile:
  the exclusive wake-up went to it alone, and a connection it left would wait
  unseen by every other waiter (another process sharing the socket during a
  prefork roll) until the next one arrives.
* Two workers may occasionally wake for one connection, so the listener's
  descriptor is switched to non-blocking while workers accept (its Python
  timeout is untouched) and restored when ``serve_forever()`` returns; the loser's
  ``accept()`` fails with EAGAIN, which is ignored.
* Connection limits are checked and the request registered in one locked step
  (the registry's ``admit``), so workers accepting at once never admit more than
  the limits allow.
* An exception from a hook on the accept path ends ``serve_forever()`` as it
  does when the loop accepts (the worker hands it to the loop), never a worker
  that dies at the listener and a server that no longer accepts.

Which hooks may run here, and how they take turns, is
:mod:`pyserve.pool.hooks`.

This module holds that mode, as :class:`WorkersAccept`, the base of
:class:`~pyserve.pool.workers.ThreadPoolMixIn`, which owns the workers and the hand-off.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from pyserve.lifecycle.registry import LiveRequest
from pyserve.pool.hooks import AcceptHooksInTurn

__all__ = ["WorkersAccept"]

_WORKERS_ACCEPT = "pool-workers-accept"  # the loop's hold while workers accept
_LISTENER_FAILED = "pool-listener-failed"  # a worker's accept() met ACCEPT_FATAL

# Linux's value where the select module lacks the name (PyPy); a kernel older than
# 4.5 refuses it, which the probe in _serving_started() turns into the hand-off.
_EPOLLEXCLUSIVE: Optional[int] = getattr(
    select, "EPOLLEXCLUSIVE", 1 << 28 if sys.platform.startswith("linux") else None
)

_Job = tuple[Any, Any, LiveRequest]


class _Action:
    """What a worker does next, when it is not a job: accept, park or exit."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_ACCEPT, _PARK, _EXIT = _Action("accept"), _Action("park"), _Action("exit")


class _Slot:
    """A place at the listener: an epoll watching the gate and, with
    EPOLLEXCLUSIVE, the listener. A worker holds one while it waits to accept."""

    __slots__ = ("listener_fd", "poller")

    def __init__(self, listener_fd: int, gate_fd: int) -> None:
        self.listener_fd = listener_fd
        self.poller = _exclusive_poller(listener_fd, gate_fd)


class _Worker:
    __slots__ = ("in_hooks", "job", "slot", "thread", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # held: acquiring again parks the worker
        self.job: Optional[_Job] = None
        self.thread: Optional[threading.Thread] = None
        self.slot: Optional[_Slot] = None  # held while it waits on the listener
        self.in_hooks = False  # holds the server's hooks lock (the accept path)


def _exclusive_poller(listener_fd: int, gate_fd: Optional[int]) -> Any:
    """An epoll watching the gate, and the listener with EPOLLEXCLUSIVE."""
    poller = select.epoll()
    try:
        if gate_fd is not None:
            poller.register(gate_fd, select.EPOLLIN)
        poller.register(listener_fd, select.EPOLLIN | (_EPOLLEXCLUSIVE or 0))
    except BaseException:
        poller.close()
        raise
    return poller


class WorkersAccept(AcceptHooksInTurn):
    """Idle pool workers wait on the listener (see the module documentation).

    The state and the worker machinery it uses belong to
    :class:`~pyserve.pool.workers.ThreadPoolMixIn`.
    """

    workers_accept: Optional[bool] = None
    max_workers: int
    _accept_exit_timeout: float = 5.0
    _pool_lock: Any
    _pool_changed: threading.Condition
    _pool_closed: bool
    _idle: list[_Worker]
    _workers: set[_Worker]
    _gate: Optional[tuple[socket.socket, socket.socket]]
    _gate_open: bool
    _worker_mode: bool
    _listener_fd: int
    _listener_was_blocking: bool
    _in_accept: dict[int, _Worker]
    _slots: list[_Slot]
    _free_slots: list[_Slot]
    #: How many workers may wait on the listener at once (see the module doc).
    _accept_slots: int = 2
    _accept_fatal: Optional[BaseException] = None
    _backlog_watched: bool  # the loop watches the listener for us: every worker is busy

    if TYPE_CHECKING:  # provided by ThreadPoolMixIn, the subclass that owns the workers

        def _start_worker(self, job: Optional[_Job]) -> None: ...

        def _run(self, job: _Job) -> None: ...

        def process_request_thread(self, request: Any, client_address: Any) -> None: ...

        def saturated(self) -> bool: ...

        def _note_saturation(self) -> None: ...

        def _reclaim_worker(self) -> bool: ...

    # -- workers accept: entering and leaving the mode -----------------------------

    def _workers_can_accept(self) -> bool:
        listener = getattr(self, "socket", None)
        wanted = self.workers_accept
        return (
            # None (the default): only if no overridden hook would see the
            # difference; such a server's loop thread runs them, as in the stdlib.
            (not self._overrides_accept_hooks() if wanted is None else bool(wanted))
            and _EPOLLEXCLUSIVE is not None
            and hasattr(select, "epoll")
            and isinstance(listener, socket.socket)
            and listener.type == socket.SOCK_STREAM
            and listener.gettimeout() is None
            and listener.fileno() == self.fileno()
            # Never toggle O_NONBLOCK on an open file description another process
            # may share (an adopted or inherited socket): one that is already
            # non-blocking (prefork's listeners are, for good) needs no toggle.
            and (not getattr(self, "socket_adopted", False) or not os.get_blocking(self.fileno()))
        )

    def _serving_started(self) -> None:
        super()._serving_started()
        if not self._workers_can_accept():
            return
        fd = self.fileno()
        with self._pool_lock:
            if self._pool_closed:
                return
            if self._gate is None:
                receiver, sender = socket.socketpair()
                receiver.setblocking(False)
                sender.setblocking(False)
                self._gate = (receiver, sender)
            if not self._slots or self._slots[0].listener_fd != fd:  # first run, new socket
                gate_fd = self._gate[0].fileno()
                try:
                    slots = [_Slot(fd, gate_fd) for _ in range(self._accept_slots)]
                except OSError:  # a kernel older than 4.5: the loop hands requests over
                    return
                self._close_free_slots()
                self._slots, self._free_slots = slots, list(slots)
            self._listener_fd = fd
            self._serial_hooks = self._overrides_accept_hooks()
            self._listener_was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            self._worker_mode = True
        self._hold_accept(_WORKERS_ACCEPT)  # the loop stops watching; the gate opens

    def _serving_stopped(self) -> None:
        if self._worker_mode:
            with self._pool_lock:
                self._worker_mode = False
                if self._backlog_watched:
                    self._backlog_watched = False
                    self._unwatch(self._listener_fd)
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

    def _sync_gate(self) -> None:
        """Open the gate exactly when workers should accept; wake them accordingly."""
        if self._gate is None:
            return
        with self._pool_lock:
            gate = self._gate
            want = (
                self._worker_mode
                and not self._pool_closed
                and self.accept_gate.held_only_by(_WORKERS_ACCEPT)
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
            woken = 0
            while self._idle and woken < len(self._free_slots):
                worker = self._idle.pop()
                worker.job = None
                worker.wake.release()  # it will find the gate open and accept
                woken += 1
            if not woken and not self._in_accept:
                self._recruit()

    def _recruit(self) -> None:
        """Send a parked worker, or a new one below ``max_workers``, to the listener
        (it takes a free slot there).

        Called with the pool lock held and the gate open.
        """
        if self._idle:
            worker = self._idle.pop()
            worker.job = None
            worker.wake.release()  # it will find the gate open and accept
        elif len(self._workers) < self.max_workers:
            self._start_worker(None)
        elif not self._backlog_watched and self.saturated():
            # Every worker is busy: a connection arriving now waits in the backlog,
            # unseen (the hand-off sees its queue fill). The loop tells us.
            self._backlog_watched = True
            self._watch(self._listener_fd, self._backlog_waits)

    def _backlog_waits(self) -> None:
        """In the loop: a connection waits in the backlog. Stop watching (it stays
        readable until a worker takes it); warn if every worker is still busy."""
        with self._pool_lock:
            if self._backlog_watched:
                self._backlog_watched = False
                self._unwatch(self._listener_fd)
            saturated = self.saturated()
            if saturated:
                self._note_saturation()
        if saturated:
            self._reclaim_worker()

    def _serve_here(self, worker: _Worker, request: Any, client_address: Any) -> None:
        """Run a request in the worker that accepted it (``process_request()``).

        The hot path of a short connection, so it enters the request as running
        in one step and calls ``process_request_thread()`` itself. The request's
        hooks on the accept path are done: the next worker may run its own.
        """
        if worker.in_hooks:  # inline test: the hot path, and usually False
            self._leave_hooks(worker)
        entry = self._track_running(
            request, client_address, worker.thread or threading.current_thread()
        )
        slot, worker.slot = worker.slot, None
        if slot is not None:
            self._return_slot(slot)
        if not self._in_accept:  # nobody waits on the listener now
            with self._pool_lock:
                if not self._gate_open:
                    self._pool_changed.notify_all()  # for _serving_stopped()
                elif not self._in_accept:
                    self._recruit()
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._ended(entry)

    def _backoff_in_loop(self) -> bool:
        return threading.get_ident() in self._in_accept or super()._backoff_in_loop()

    def _accept_turn(self, worker: _Worker) -> None:
        """Wait for a connection or the gate; take at most one connection.

        A worker woken for the listener takes the connection even if the gate
        closed meanwhile: EPOLLEXCLUSIVE woke *only* this worker for it, so leaving
        it would strand it in the backlog, unseen by every other waiter (a second
        process sharing the socket during a prefork roll, say) until the next
        connection arrives. Only after a close is the listener left alone.
        """
        slot = worker.slot
        if slot is None or self._pool_closed:
            return
        listener = slot.listener_fd
        for fd, _events in slot.poller.poll():
            if fd == listener:
                break
        else:
            return  # only the gate: stop accepting
        if self._serial_hooks:  # left in _serve_here(), or in the finally below
            self._enter_hooks(worker)
        try:
            if self._accept_fatal is not None:
                return  # an earlier hook ended serving: no hook runs after it
            self._handle_request_noblock()
        except BaseException as exc:
            # The listener failed (ACCEPT_FATAL), or a hook on the accept path
            # raised (get_request, verify_request, handle_error...). Where the loop
            # accepts, that exception ends serve_forever(); so it does here: the
            # worker hands it to the loop, which re-raises it, instead of dying at
            # the listener and leaving a server that no longer accepts.
            if isinstance(exc, OSError) and self._closing():
                return  # closed under our feet by server_close()
            with self._pool_lock:
                if self._accept_fatal is None:
                    self._accept_fatal = exc
            self._hold_accept(_LISTENER_FAILED)
            self._BaseServer__shutdown_request = True  # stop the loop; it re-raises
        finally:
            if worker.in_hooks:  # inline test: usually left in _serve_here() already
                self._leave_hooks(worker)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """As ``BaseServer.serve_forever()``; what ends it when the loop accepts (a
        failed listener, an exception from a hook on the accept path) ends it with
        the same exception when a worker accepts."""
        self._accept_fatal = None
        try:
            super().serve_forever(poll_interval)
        finally:
            fatal = self._take_fatal()
        if fatal is not None:
            raise fatal

    def _closing(self) -> bool:
        return self._pool_closed  # read afresh: another thread may set it

    def _take_fatal(self) -> Optional[BaseException]:
        fatal, self._accept_fatal = self._accept_fatal, None
        if fatal is not None:
            self._release_accept(_LISTENER_FAILED)
        return fatal

    def _return_slot(self, slot: _Slot) -> None:
        """Give a slot back (a list append: no lock); a stale one is closed."""
        if slot in self._slots and not self._pool_closed:
            self._free_slots.append(slot)
        else:  # the server closed, or the listener changed, while it was held
            slot.poller.close()

    def _close_free_slots(self) -> None:
        """Close the slots nobody holds (the pool lock is held); holders close theirs."""
        for slot in self._free_slots:
            slot.poller.close()
        self._slots, self._free_slots = [], []

    def _left_accept(self, ident: int) -> None:
        """A worker left the accept path without taking a request (or the gate
        closed): forget it, and tell ``_serving_stopped()``, which may wait for it."""
        with self._pool_lock:
            self._in_accept.pop(ident, None)
            self._pool_changed.notify_all()
