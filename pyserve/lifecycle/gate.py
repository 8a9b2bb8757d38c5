"""The accept gate: the one owner of "may the server accept now?".

Theory of operation
-------------------
Many parts of a server have a reason to stop accepting for a while: a back-off
after ``accept()`` ran out of descriptors, a full worker pool or fork table, a
drain, ``server_close()``. Before this object existed each of them poked the
loop's private state from its own thread; now each asks the gate, and the gate
alone decides, under one lock. ``server.accept_gate`` is an :class:`AcceptGate`.

Its state is derived, never stored twice::

    state    holds     closed   the listener is ...
    -------  --------  -------  ------------------------------------------------
    OPEN     none      no       watched: readable means "take one request"
    HELD     some      no       not watched; the kernel backlog absorbs arrivals;
                                 watched again when the last hold is released
    CLOSED   any       yes      withdrawn for good (drain, server_close): no new
                                 accept starts, and the owner closes the socket

    OPEN  --hold(r)-->     HELD   --release(last r)--> OPEN
    OPEN, HELD  --close(r)-->  CLOSED   (final: hold/release change nothing visible)

A *hold* has a reason (``"accept-backoff"``, ``"pool-full"``, ...); holding twice
for one reason is one hold, so a reason is released by whoever holds it, once.

**The accept path is a critical section.** Whoever is about to accept calls
:meth:`AcceptGate.enter` (False once the gate is closed: do not accept) and
:meth:`AcceptGate.leave` once the request it took is in the registry. So
:meth:`AcceptGate.close` followed by :meth:`AcceptGate.wait_quiet` is a *barrier*:
after it, no connection is between ``accept()`` and the registry, which is what
lets a drain count exactly what it must wait for. A thread that closes the gate
from inside the accept path (a signal handler, or a hook that drains) is not
waited for: it cannot leave while it waits.

**Changes are announced, not polled.** Every state change calls the subscribers
(the loop, which re-reads the gate and wakes its ``select()``; the thread pool,
which opens or shuts its workers' own gate) *after* the lock is released, so a
subscriber may take its own locks and read the gate without deadlock. Two changes
from two threads may announce in either order; subscribers therefore read the
current state rather than trusting the announcement's order.

Why one lock and not atomic set operations: a release must never be lost between
"is anyone still holding?" and "watch again", and the accept path's entry must
never slip past a close. Both are check-then-act steps, which need a lock on
free-threaded Python and are clearer with one everywhere.
"""

from __future__ import annotations

import enum
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

_get_ident = threading.get_ident

__all__ = ["AcceptGate", "GateState"]


class GateState(enum.Enum):
    """Whether the listener is watched (see the module documentation)."""

    OPEN = "open"
    HELD = "held"
    CLOSED = "closed"


class AcceptGate:
    """Holds, closes and the accept path's critical section, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)
        self._holds: set[str] = set()
        self._closed_by: Optional[str] = None
        self._accepting: dict[int, int] = {}  # thread ident -> nesting depth
        self._waiting = 0  # threads in wait_quiet(): leave() notifies only then
        self._subscribers: tuple[Callable[[], None], ...] = ()

    # -- reading ---------------------------------------------------------------------

    @property
    def state(self) -> GateState:
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> GateState:
        if self._closed_by is not None:
            return GateState.CLOSED
        return GateState.HELD if self._holds else GateState.OPEN

    @property
    def is_open(self) -> bool:
        """True while the listener should be watched (no hold, not closed)."""
        # One read of each field: both only ever change under the lock, and a
        # stale answer is corrected by the announcement that follows the change.
        return not self._holds and self._closed_by is None

    @property
    def is_closed(self) -> bool:
        return self._closed_by is not None

    def holds(self) -> frozenset[str]:
        """The reasons holding the gate now."""
        with self._lock:
            return frozenset(self._holds)

    def held_only_by(self, reason: str) -> bool:
        """True if ``reason`` is the one hold and the gate is not closed."""
        with self._lock:
            return self._closed_by is None and self._holds == {reason}

    # -- changing ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every change of state (any thread)."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

    def hold(self, reason: str) -> None:
        """Stop watching the listener until ``reason`` is released."""
        with self._lock:
            if reason in self._holds:
                return
            self._holds.add(reason)
        self._announce()

    def release(self, reason: str) -> None:
        """Withdraw one reason not to watch the listener (no-op if not held)."""
        with self._lock:
            if reason not in self._holds:
                return
            self._holds.discard(reason)
        self._announce()

    def close(self, reason: str) -> bool:
        """Withdraw the listener for good. True for the first close, else False."""
        with self._lock:
            if self._closed_by is not None:
                return False
            self._closed_by = reason
        self._announce()
        return True

    def reopen(self) -> None:
        """Undo :meth:`close` (a server reused after ``shutdown()``; tests)."""
        with self._lock:
            if self._closed_by is None:
                return
            self._closed_by = None
        self._announce()

    def _announce(self) -> None:
        for callback in self._subscribers:
            callback()

    # -- the accept path -----------------------------------------------------------------

    # enter() and leave() run once per connection: ``acquire()``/``release()``
    # rather than ``with`` (half the cost on CPython 3.11), and leave() wakes the
    # condition only when a drain waits on it (notify_all() is Python code).

    def enter(self) -> bool:
        """Begin taking one request; False (and nothing to leave) once closed."""
        ident = _get_ident()
        lock = self._lock
        lock.acquire()
        try:
            if self._closed_by is not None:
                return False
            accepting = self._accepting
            accepting[ident] = accepting.get(ident, 0) + 1
            return True
        finally:
            lock.release()

    def leave(self) -> None:
        """The request taken since :meth:`enter` is registered (or was refused)."""
        ident = _get_ident()
        lock = self._lock
        lock.acquire()
        try:
            accepting = self._accepting
            depth = accepting.pop(ident, 0) - 1
            if depth > 0:
                accepting[ident] = depth
            elif self._waiting:
                self._quiet.notify_all()
        finally:
            lock.release()

    def wait_quiet(self, timeout: Optional[float] = None) -> bool:
        """Wait until no other thread is in the accept path; False on timeout."""
        me = _get_ident()
        with self._lock:
            self._waiting += 1
            try:
                return self._quiet.wait_for(
                    lambda: all(ident == me for ident in self._accepting), timeout
                )
            finally:
                self._waiting -= 1
