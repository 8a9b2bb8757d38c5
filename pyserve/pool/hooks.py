"""The accept path's hooks run one connection at a time, whichever thread accepts.

Theory of operation
-------------------
The stdlib calls ``get_request``, ``verify_request`` and ``process_request`` (and
``_handle_request_noblock`` around them) from its one loop thread, one
connection after the other, and code written for it may rely on that: a counter
without a lock, a database handle made in that thread. When pool workers accept
(:mod:`pyserve.pool.accept`), several threads are on the accept path at once, so
the pool decides per server, when ``serve_forever()`` starts:

* **Nothing overridden** (every one of those hooks is pyserve's own, which are
  thread-safe: an ``accept()``, the registry under its lock, ``return True``):
  workers accept freely, with no lock at all. pyserve's tracing
  (:mod:`pyserve.explain`) wraps the hooks but is pyserve's own too.
* **A hook overridden**, in the class or on the instance, and
  ``workers_accept = None`` (the default): the workers do not accept; the loop
  thread accepts and hands over, so the hooks run exactly as in the stdlib, in
  its order and in its one thread.
* **A hook overridden and** ``workers_accept = True``: workers accept and take
  turns. The accepting worker holds ``_hooks_lock`` from before ``get_request``
  until its request starts (``_leave_hooks()`` in ``_serve_here()``) or the
  accept path ends, so one connection's hooks end before the next one's begin,
  in accept order, though not always in the same thread; and ``process_request``
  returns only when the request is done (it runs it). After a hook raised, no
  worker runs them again (the exception ends ``serve_forever()``). A drain, which
  takes the last queued connections in its own thread, takes the same lock.

``handle_error``, ``shutdown_request`` and ``close_request`` do not count: every
threaded server, the stdlib's too, calls them from request threads at once.

Why the lock is not the default for overridden hooks: it costs nothing while
nobody waits, but on a connect-echo-close load a second worker is often woken
for the next connection while the first is inside the hooks; it sleeps on the
lock and is woken again, the thread switch this whole mode exists to avoid. With
the lock the pool cost what the hand-off costs (figures in the docs' engineering
notes), and the hand-off also keeps the stdlib's thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from pyserve.base import BaseServer

__all__ = ["AcceptHooksInTurn"]

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

#: The hooks the stdlib runs one connection at a time in its loop thread.
SERIAL_HOOKS = ("get_request", "verify_request", "process_request", "_handle_request_noblock")


class _Accepting(Protocol):
    """A worker on the accept path (pyserve.pool.accept's ``_Worker``)."""

    in_hooks: bool  # it holds the hooks lock


def _is_pyserves(hook: Any) -> bool:
    module = getattr(hook, "__module__", None) or ""
    return module == "pyserve" or module.startswith("pyserve.")


class AcceptHooksInTurn(_Base):
    """Whether the accept-path hooks are overridden, and the lock they take turns
    on (see the module documentation). State made by ThreadPoolMixIn."""

    _hooks_lock: Any  # a threading.Lock
    #: Take turns at the hooks (decided when serve_forever() starts).
    _serial_hooks: bool = True
    _in_accept: dict[int, Any]  # thread ident -> the worker accepting in it
    _accept_exit_timeout: float

    def _overrides_accept_hooks(self) -> bool:
        """True unless every hook in ``SERIAL_HOOKS`` is pyserve's own."""
        on_instance = vars(self)
        for name in SERIAL_HOOKS:
            for hook in (getattr(type(self), name, None), on_instance.get(name)):
                if hook is not None and not _is_pyserves(hook):
                    return True
        return False

    def _enter_hooks(self, worker: _Accepting) -> None:
        """Wait for this worker's turn at the hooks (when ``_serial_hooks``)."""
        self._hooks_lock.acquire()
        worker.in_hooks = True

    def _leave_hooks(self, worker: _Accepting) -> None:
        """Let the next worker into the hooks (if this one is in)."""
        if worker.in_hooks:
            worker.in_hooks = False
            self._hooks_lock.release()

    def _withdraw_listener(self) -> int:
        """A drain's last accepts wait their turn at the hooks like a worker's
        (unless this thread *is* the worker in the hooks: a hook that drains)."""
        me = self._in_accept.get(threading.get_ident())
        if me is not None and me.in_hooks:
            return super()._withdraw_listener()
        # Bounded: a hook that never returns must not stop the drain for good.
        entered = self._hooks_lock.acquire(timeout=self._accept_exit_timeout)
        try:
            return super()._withdraw_listener()
        finally:
            if entered:
                self._hooks_lock.release()
