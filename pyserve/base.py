"""BaseServer: the hooks of a server and one request's path through them.

Theory of operation
-------------------
``serve_forever()`` (in :mod:`pyserve.loop`) waits until the listener is readable,
then calls ``_handle_request_noblock()`` here, which takes one request along this
path (each name is a hook a subclass may override)::

    _handle_request_noblock()
      get_request()                  accept() / recvfrom()
      verify_request()               False -> shutdown_request()
      process_request()              concurrency strategy: here, synchronous
        finish_request()             RequestHandlerClass(request, address, self)
        shutdown_request()           close_request()
      handle_error()                 any Exception above; BaseException propagates

``handle_request()`` takes the same path for a single request, honouring
``timeout``.

Accept errors are sorted, not swallowed (the sets live in :mod:`pyserve.errors`):
transient ones are retried on the next turn; resource exhaustion (EMFILE, ENFILE,
ENOBUFS, ENOMEM) starts a back-off in which the loop stops watching the listener
while work already accepted goes on (the stdlib spins at 100 % CPU); a dead
listener raises; anything else goes to ``handle_error()`` and serving continues.

Errors are logged, never printed: ``handle_error()`` writes to the ``pyserve``
logger in the stdlib's words. A peer that simply hung up costs one DEBUG line.

Mix-in state
------------
The stdlib's mix-ins create their state lazily (``vars(self).setdefault``) because
real code often calls ``TCPServer.__init__(self, ...)`` directly from a
``ThreadingMixIn`` subclass, skipping the mix-in's ``__init__``. pyserve keeps that
code working *and* declares its state up front: ``BaseServer.__init__`` calls the
cooperative hook ``_init_dispatch_state()``, which every strategy extends, so the
state exists however ``__init__`` was reached.
"""

from __future__ import annotations

import selectors
import sys
import threading
import time

from pyserve import explain
from pyserve.errors import (
    ACCEPT_CAPACITY,
    ACCEPT_FATAL,
    ACCEPT_TRANSIENT,
    PeerFault,
    PeerGone,
    RequestDropped,
)
from pyserve.lifecycle.drain import Lifecycle
from pyserve.lifecycle.events import ACCEPTED
from pyserve.lifecycle.limits import ConnectionLimits
from pyserve.lifecycle.registry import LiveRequest
from pyserve.logs import WARNING, DeferredLogger, RateLimitedLog, escape
from pyserve.loop import ServeLoop, _Selector

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

__all__ = ["BaseServer"]

logger = DeferredLogger("pyserve")


class BaseServer(ServeLoop, Lifecycle, ConnectionLimits):
    """The base of every server: a request loop and the hooks it calls.

    For the caller:

    - ``__init__(server_address, RequestHandlerClass)``
    - ``serve_forever(poll_interval=0.5)``: handle requests until ``shutdown()``
    - ``shutdown()``: stop ``serve_forever`` (returns within milliseconds)
    - ``handle_request()``: handle one request, honouring :attr:`timeout`
    - ``server_close()``, ``fileno()``, and use as a context manager

    May be overridden:

    - ``server_bind()``, ``server_activate()``, ``get_request()``
    - ``verify_request(request, client_address)``
    - ``process_request(request, client_address)``  (the concurrency strategy)
    - ``finish_request(request, client_address)``
    - ``shutdown_request(request)``, ``close_request(request)``
    - ``handle_error(request, client_address)``, ``handle_timeout()``
    - ``service_actions()``: called on every turn of ``serve_forever``

    For derived classes:

    - ``_hold_accept(reason)`` / ``_release_accept(reason)``: stop and resume watching
      the listener (safe from any thread)
    - ``_watch(fd, callback)`` / ``_unwatch(fd)``: extra descriptors for the loop
    - ``_init_dispatch_state()``: cooperative hook to declare strategy state
    - ``_track()``, ``_started()`` (or ``_track_running()``), ``_ended()``: the
      request registry (see
      :mod:`pyserve.lifecycle.drain`); every strategy reports its requests through them

    Lifecycle (see :mod:`pyserve.lifecycle.drain` and :mod:`pyserve.lifecycle.events`):
    ``in_flight()``, ``stats``, ``add_observer()``, ``drain(grace)``, ``draining``.
    Connection limits (see :mod:`pyserve.lifecycle.limits`): ``max_connections``,
    ``max_connections_per_client``, and the handler protections ``idle_timeout``,
    ``request_deadline``, ``max_line_length``.

    Class attributes that may be overridden:

    - ``timeout``: seconds ``handle_request()`` waits before ``handle_timeout()``
      (``None``: wait forever)
    - ``accept_backoff_initial`` / ``accept_backoff_max``: the pause after an accept
      failed for lack of resources, doubled on each repeat up to the maximum
    """

    #: Seconds handle_request() waits for a request; None waits forever (stdlib).
    timeout: Optional[float] = None
    _explain_setting: Any = False

    @property
    def explain(self) -> Any:
        """Trace every hook call (True: to the "pyserve.explain" logger; or a text
        stream). See pyserve.explain; PYSERVE_EXPLAIN=1 turns it on everywhere.

        A class attribute of a subclass is read when the server is built; setting
        it on a server (``server.explain = True``) turns explain mode on from then
        on. (Turning it off again is not supported: the hooks stay traced.)"""
        return self._explain_setting

    @explain.setter
    def explain(self, value: Any) -> None:
        self._explain_setting = value
        if value:
            explain.install(self)  # idempotent: hooks already traced stay as they are

    def __init__(self, server_address: Any, RequestHandlerClass: Callable[..., Any]) -> None:
        self.server_address: Any = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._init_loop_state()
        self._init_lifecycle_state()
        # Peer faults (handle_error) and connections over a limit (ConnectionLimits):
        # at most one line per reason per rejection_log_interval.
        self._peer_fault_log = RateLimitedLog(logger, self.rejection_log_interval)
        self._init_dispatch_state()
        if explain.requested(self):  # the attribute, then the environment; free when off
            explain.install(self)

    def _init_dispatch_state(self) -> None:
        """Declare the state of the concurrency strategy. Extend; call super()."""

    def handle_request(self) -> None:
        """Wait for one request (at most :attr:`timeout` seconds) and handle it."""
        timeout = self._socket_timeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Selector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    self._handle_request_noblock()
                    return
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        self.handle_timeout()
                        return

    def _socket_timeout(self) -> Optional[float]:
        listener = getattr(self, "socket", None)
        return listener.gettimeout() if listener is not None else None

    def _handle_request_noblock(self) -> None:
        """Handle one request that :meth:`get_request` can take without blocking."""
        gate = self.accept_gate
        if not gate.enter():
            return  # closed by a drain or server_close(): accept nothing more
        try:
            taken = self._accept_and_admit()
        finally:
            gate.leave()
        if taken is not None:
            self._serve_accepted(*taken)

    def _accept_and_admit(self) -> Optional[tuple[Any, Any, LiveRequest]]:
        """Accept one request and enter it in the registry (within the limits).

        The part of the request path between ``accept()`` and the registry: the
        accept gate's critical section, kept free of user hooks but
        ``get_request()``, so a drain's barrier is short.
        """
        try:
            request, client_address = self.get_request()
        except RequestDropped:
            return None
        except OSError as exc:
            self._accept_failed(exc)
            return None
        if self._backoff_delay:
            self._accept_recovered()
        # Inline, not helper calls: this runs once per connection on every strategy.
        # Unobserved (the usual case), the registry counts the connection as
        # accepted in the same locked step that admits it; an observer sees the
        # count already made when its "accepted" event arrives.
        observed = bool(self._observers)
        if observed:
            self._registry.count("accepted")
            self._emit(ACCEPTED, client_address, None)
        try:
            # Within the connection limits, in the registry's one locked step.
            entry = self._registry.admit(
                request,
                client_address,
                self.max_connections,
                self.max_connections_per_client,
                not observed,
            )
            if isinstance(entry, str):  # the limit it is over
                self._over_limit(client_address, entry)
        except BaseException:
            self.shutdown_request(request)
            raise
        if isinstance(entry, str):
            self.shutdown_request(request)
            return None
        return request, client_address, entry

    def _serve_accepted(self, request: Any, client_address: Any, entry: LiveRequest) -> None:
        """``verify_request()`` then ``process_request()``, with the stdlib's errors.

        An exception from ``verify_request()`` propagates (it ends
        ``serve_forever()``, as in the stdlib), but the request is closed and leaves
        the registry first; one from ``process_request()`` goes to
        ``handle_error()``. Either way nothing stays in the registry for a request
        that no strategy took on (a worker thread that could not start, say).
        """
        try:
            allowed = self.verify_request(request, client_address)
        except BaseException:
            self._registry.remove(entry, None)
            self.shutdown_request(request)
            raise
        if not allowed:
            self._registry.remove(entry, None)
            self._rejected(client_address, "verify_request")
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception as exc:
            try:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                self._ended(entry, exc)  # a no-op if the strategy ended it already
        except BaseException as exc:
            self.shutdown_request(request)
            self._ended(entry, exc)
            raise

    # -- hooks with stdlib defaults -------------------------------------------------

    def fileno(self) -> int:
        """The descriptor the loop watches for requests."""
        raise NotImplementedError

    def get_request(self) -> tuple[Any, Any]:
        """Take one request: ``(request, client_address)``. Must be overridden."""
        raise NotImplementedError

    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def handle_timeout(self) -> None:
        """Called when :meth:`handle_request` waited :attr:`timeout` in vain."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return False to refuse the request (it is then shut down). May be overridden."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Run the request: here synchronously. Concurrency mix-ins override this."""
        entry = self._track_running(request, client_address, threading.current_thread())
        self._guard_request(request)
        try:
            self.finish_request(request, client_address)
        except BaseException as exc:
            self._ended(entry, exc)
            raise
        self.shutdown_request(request)
        self._ended(entry)

    def _serve_off_loop(self, request: Any, client_address: Any) -> None:
        """Run one request away from the loop, with the stdlib's error contract.

        What a request thread or a pool worker does: ``finish_request()``; an
        ``Exception`` goes to ``handle_error()`` (a ``BaseException`` propagates);
        ``shutdown_request()`` always. Strategies call it from their
        ``process_request_thread()``.
        """
        self._guard_request(request)
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            self._failed(request, exc)
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Instantiate the handler class, which does the work in its constructor."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """End a request: by default just :meth:`close_request`."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Release a request's resources. May be overridden."""

    def server_close(self) -> None:
        """Release the server's resources. May be overridden."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an exception raised while handling a request. May be overridden.

        A peer that hung up (reset, broken pipe, timeout) is logged at DEBUG in one
        line, so no client can flood the log; anything else at ERROR with the
        traceback, in the stdlib's wording. A peer's fault that pyserve detected (an
        over-long line, a missed deadline, a protocol error) is one WARNING line
        giving the reason, at most once per kind of fault per
        ``rejection_log_interval`` (the next line counts the ones held back).
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, PeerFault):
            # The peer's doing, as often as it likes: one line per kind of fault
            # per rejection_log_interval, with the peer's values escaped.
            self._peer_fault_log.report(
                WARNING,
                type(exc).__name__,
                "Closed the connection from %s: %s",
                escape(client_address),
                escape(str(exc)),
            )
        elif isinstance(exc, PeerGone):
            logger.debug("Connection from %s ended by the peer: %r", client_address, exc)
        else:
            logger.error(
                "Exception occurred during processing of request from %s",
                client_address,
                exc_info=True,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()

    # -- accept errors ---------------------------------------------------------------

    def _accept_failed(self, exc: OSError) -> None:
        code = exc.errno
        if code in ACCEPT_TRANSIENT:
            return
        if code in ACCEPT_CAPACITY:
            self._accept_backoff(exc)
            return
        if code in ACCEPT_FATAL:
            raise exc
        try:
            self.handle_error(None, None)
        except Exception:
            logger.exception("handle_error() failed on an accept error")

