"""The serve loop: waiting for requests, waking up, stopping, backing off.

Theory of operation
-------------------
A server is a loop around one question: *is a request waiting?* ``serve_forever()``
asks it of a selector that watches three kinds of file descriptor:

* the **listener** (the server itself, through ``fileno()``): readable means
  ``accept()`` or ``recvfrom()`` will not block, so the loop calls
  ``_handle_request_noblock()`` (see :mod:`pyserve.base`);
* a **wake-up socket pair** made for each ``serve_forever()`` call: ``shutdown()``
  writes one byte into it, so the loop leaves ``select()`` at once instead of
  waiting out ``poll_interval`` (the stdlib polls a flag every 0.5 s). The byte says
  what is wanted (stop, or just look again), so even a forked child can stop its
  parent's loop;
* **extra watches** registered by concurrency strategies (a forked child's pidfd, so
  the parent reaps it the moment it exits).

``poll_interval`` still bounds each wait, so ``service_actions()`` keeps its stdlib
rhythm, but nothing waits on it any more.

Whether the listener is watched is not the loop's decision: it belongs to the
server's :class:`~pyserve.lifecycle.gate.AcceptGate` (``server.accept_gate``).
Strategies that must stop accepting for a while (accept back-off, a full fork
table, a full worker pool) hold the gate (``_hold_accept(reason)`` is a shorthand)
and release it; drain and ``server_close()`` close it. The loop subscribes to the
gate: on every change it marks its selector dirty and wakes up, and only the loop
thread touches the selector, so holds are safe from any thread.

Accept back-off: when ``accept()`` fails for lack of a resource (EMFILE and
friends), ``_accept_backoff()`` holds the listener for a delay that doubles on each
repeat up to ``accept_backoff_max`` and logs only the first failure of an episode;
the first successful accept ends the episode with one INFO line.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import threading
import time

from pyserve.lifecycle.gate import AcceptGate
from pyserve.logs import DeferredLogger

__all__ = ["ServeLoop"]

logger = DeferredLogger("pyserve")

# poll(2) has no descriptor limit and no per-call setup cost; select(2) is the
# fallback where poll is missing. The stdlib makes the same choice.
_Selector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

# What a byte on the wake-up socket asks of the loop.
_WAKE_STOP = b"S"  # stop serving (written by shutdown(), possibly from a forked child)
_WAKE_LOOK = b"L"  # re-read holds and watches, nothing else

# Selector keys carry one of these (or a callback) as their data.
_LISTENER = "listener"
_WAKEUP = "wakeup"


class ServeLoop:
    """``serve_forever()`` and ``shutdown()``, and what the loop watches.

    :class:`~pyserve.base.BaseServer` inherits this; it is a separate class only so
    that each part reads in one sitting. Class attributes that may be overridden:

    - ``accept_backoff_initial`` / ``accept_backoff_max``: the pause after an accept
      failed for lack of resources, doubled on each repeat up to the maximum
    """

    #: First pause after accept() ran out of a resource. 10 ms lets a few in-flight
    #: requests finish and free descriptors without a visible stall.
    accept_backoff_initial: float = 0.01
    #: Cap of the doubling pause: near one second, as gevent and trio do, so the
    #: server notices freed resources quickly while the CPU stays idle.
    accept_backoff_max: float = 1.0

    def _init_loop_state(self) -> None:
        # Reentrant: shutdown() may run in a signal handler that interrupted this
        # very thread inside a wake-up (a plain lock would deadlock it).
        self._wake_lock = threading.RLock()
        self._stop_requested = False
        self._loop_exited = threading.Event()
        self._loop_exited.set()  # no loop is running yet
        self._loop_running = threading.Event()
        self._serving_ident: Optional[int] = None
        self._serving_pid: Optional[int] = None
        self._wake_sender: Optional[socket.socket] = None
        #: The one owner of "is the listener watched?" (see pyserve.lifecycle.gate).
        self.accept_gate = AcceptGate()
        self.accept_gate.subscribe(self._gate_changed)
        self._watches: dict[int, Callable[[], None]] = {}
        self._ready_probe: Optional[tuple[int, Any]] = None  # (listener fd, poll object)
        self._selector_dirty = True
        self._backoff_delay = 0.0  # 0.0: not in a back-off episode
        self._backoff_resume_at: Optional[float] = None
        self._backoff_failures = 0
        # Workers that accept may fail and recover at once: one episode, one line.
        self._backoff_lock = threading.Lock()

    if TYPE_CHECKING:  # provided by BaseServer, the class this one is a part of

        def fileno(self) -> int: ...

        def _handle_request_noblock(self) -> None: ...

    def service_actions(self) -> None:
        """Called on every turn of the ``serve_forever`` loop. May be overridden."""

    # -- stdlib-compatible private names -------------------------------------------

    @property
    def _BaseServer__shutdown_request(self) -> bool:  # noqa: N802 - stdlib's name
        """The stdlib's private stop flag; setting it now also wakes the loop."""
        return self._stop_requested

    @_BaseServer__shutdown_request.setter
    def _BaseServer__shutdown_request(self, value: bool) -> None:  # noqa: N802
        self._stop_requested = bool(value)
        if value:
            self._wake(_WAKE_STOP)

    @property
    def _BaseServer__is_shut_down(self) -> threading.Event:  # noqa: N802
        """The stdlib's private "loop has exited" event."""
        return self._loop_exited

    # -- the loop ----------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`shutdown` is called.

        ``poll_interval`` paces :meth:`service_actions`; shutdown does not wait for it.
        A shutdown requested before the loop started makes this return at once.
        """
        wake_receiver, wake_sender = socket.socketpair()
        wake_receiver.setblocking(False)
        wake_sender.setblocking(False)
        with self._wake_lock:
            if self._stop_requested:  # shutdown() came first: honour it
                self._stop_requested = False
                wake_receiver.close()
                wake_sender.close()
                return
            self._wake_sender = wake_sender
            self._serving_ident = threading.get_ident()
            self._serving_pid = os.getpid()
            self._loop_exited.clear()
        started = False
        try:
            with _Selector() as selector:
                selector.register(wake_receiver, selectors.EVENT_READ, _WAKEUP)
                self._selector_dirty = True
                started = True
                self._serving_started()
                self._loop_running.set()  # after the strategy is ready: "serving" is true
                while not self._stop_requested:
                    if self._selector_dirty:
                        self._sync_selector(selector)
                    ready = selector.select(self._turn_timeout(poll_interval))
                    if self._stop_requested_now():
                        break
                    for key, _events in ready:
                        if key.data is _LISTENER:
                            self._handle_request_noblock()
                        elif key.data is _WAKEUP:
                            self._read_wakeups(wake_receiver)
                        else:
                            key.data()
                    self.service_actions()
        finally:
            try:
                if started:
                    self._serving_stopped()
            finally:
                self._end_loop(wake_receiver, wake_sender)

    def _end_loop(self, wake_receiver: socket.socket, wake_sender: socket.socket) -> None:
        with self._wake_lock:
            self._loop_running.clear()
            self._wake_sender = None
            self._serving_ident = None
            self._stop_requested = False
            wake_sender.close()
            wake_receiver.close()
            self._loop_exited.set()

    def _serving_started(self) -> None:
        """Called in the loop thread once ``serve_forever()`` runs. Extend; call super()."""

    def _serving_stopped(self) -> None:
        """Called in the loop thread as ``serve_forever()`` ends, before ``shutdown()``
        returns. Extend; call super()."""

    def _stop_requested_now(self) -> bool:
        # A method, not the attribute: another thread may have set it during select().
        return self._stop_requested

    def shutdown(self) -> None:
        """Stop the :meth:`serve_forever` loop.

        - From another thread while the loop runs: returns once the loop has exited,
          within milliseconds unless a synchronous handler is still running.
        - From the serving thread itself (a handler of a synchronous server, or
          ``service_actions``): requests the stop and returns at once; the loop exits
          when the current turn ends. (The stdlib deadlocks here.)
        - From a forked child: tells the parent's loop to stop and returns at once.
        - Before ``serve_forever()`` started: records the request and returns at
          once; the next ``serve_forever()`` returns immediately.
        """
        with self._wake_lock:
            self._stop_requested = True
            serving_ident = self._serving_ident
            self._wake_locked(_WAKE_STOP)
        if serving_ident is None:
            return
        if os.getpid() != self._serving_pid or threading.get_ident() == serving_ident:
            return
        self._loop_exited.wait()

    # -- for derived classes: what the loop watches ---------------------------------

    def _hold_accept(self, reason: str) -> None:
        """Stop watching the listener until ``reason`` is released (any thread)."""
        self.accept_gate.hold(reason)

    def _release_accept(self, reason: str) -> None:
        """Withdraw one reason not to watch the listener (any thread)."""
        self.accept_gate.release(reason)

    @property
    def _accept_holds(self) -> frozenset[str]:
        """The reasons holding the listener now (read-only; see ``accept_gate``)."""
        return self.accept_gate.holds()

    def _may_accept_more(self) -> bool:
        """For strategies that accept in batches (the pool, multiplexing): True while
        the loop still wants requests and one is waiting on the listener now.

        Checked before every extra accept, because a drain may close the gate and
        the listener from another thread between two of them. The readiness check
        is a zero-timeout poll, so the listener's blocking mode is untouched.
        """
        if self._stop_requested or not self.accept_gate.is_open:
            return False
        fd = self.fileno()
        if fd < 0:
            return False  # closed since the check above
        probe = self._ready_probe
        if probe is None or probe[0] != fd:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            probe = self._ready_probe = (fd, poller)
        # POLLIN only: a closed listener reports POLLNVAL, which is no connection.
        return any(events & select.POLLIN for _fd, events in probe[1].poll(0))

    def _gate_changed(self) -> None:
        """The gate's subscriber: look at the listener again on the next turn."""
        self._selector_dirty = True
        self._wake(_WAKE_LOOK)

    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Make the loop call ``callback()`` whenever ``fd`` is readable."""
        self._watches[fd] = callback
        self._selector_dirty = True
        self._wake(_WAKE_LOOK)

    def _unwatch(self, fd: int) -> None:
        if self._watches.pop(fd, None) is not None:
            self._selector_dirty = True
            self._wake(_WAKE_LOOK)

    def _wake(self, what: bytes) -> None:
        with self._wake_lock:
            self._wake_locked(what)

    def _wake_locked(self, what: bytes) -> None:
        sender = self._wake_sender
        if sender is None or (threading.get_ident() == self._serving_ident and what != _WAKE_STOP):
            return  # nobody to wake, or we *are* the loop and will look anyway
        try:
            sender.send(what)
        except (BlockingIOError, OSError):
            pass  # the pipe is full of wake-ups already; the loop will look

    def _read_wakeups(self, receiver: socket.socket) -> None:
        try:
            data = receiver.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        if _WAKE_STOP in data:
            self._stop_requested = True

    def _sync_selector(self, selector: selectors.BaseSelector) -> None:
        """Make the selector watch exactly: listener (unless held) + extra watches."""
        self._selector_dirty = False
        wanted: dict[Any, Any] = dict(self._watches)
        if self.accept_gate.is_open:
            wanted[self.fileno()] = _LISTENER
        for key in list(selector.get_map().values()):
            if key.data is _WAKEUP:
                continue
            if wanted.get(key.fd) is not key.data:
                selector.unregister(key.fileobj)
            else:
                del wanted[key.fd]
        for fd, data in wanted.items():
            selector.register(fd, selectors.EVENT_READ, data)

    def _turn_timeout(self, poll_interval: Optional[float]) -> Optional[float]:
        """How long the next select() may wait: poll_interval, or less in back-off."""
        resume_at = self._backoff_resume_at
        if resume_at is None:
            return poll_interval
        remaining = resume_at - time.monotonic()
        if remaining <= 0:
            self._backoff_resume_at = None
            self._release_accept("accept-backoff")
            return 0.0
        return remaining if poll_interval is None else min(poll_interval, remaining)

    # -- accept back-off ---------------------------------------------------------------

    def _accept_backoff(self, exc: OSError) -> None:
        """Pause watching the listener; log the first failure of an episode only."""
        with self._backoff_lock:
            self._backoff_failures += 1
            first = not self._backoff_delay
            if first:
                self._backoff_delay = self.accept_backoff_initial
            else:
                self._backoff_delay = min(self._backoff_delay * 2, self.accept_backoff_max)
            delay = self._backoff_delay
        if first:
            logger.warning(
                "accept() failed: %s; not accepting for a while (retrying with back-off, "
                "logged once per episode)",
                exc,
            )
        if self._loop_running.is_set() and self._backoff_in_loop():
            self._backoff_resume_at = time.monotonic() + delay
            self._hold_accept("accept-backoff")
        else:  # handle_request(): no loop to pause, so pause the caller instead
            time.sleep(delay)

    def _backoff_in_loop(self) -> bool:
        """True if this thread accepts for the running loop (so holding pauses it)."""
        return threading.get_ident() == self._serving_ident

    def _accept_recovered(self) -> None:
        with self._backoff_lock:
            failures, self._backoff_failures = self._backoff_failures, 0
            self._backoff_delay = 0.0
        if failures:  # another thread may have reported this recovery already
            logger.info("accept() works again after %d failed attempts", failures)
