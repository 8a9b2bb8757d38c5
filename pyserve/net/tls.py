"""TLS for stream servers: the handshake in the worker, under a deadline.

Theory of operation
-------------------
:class:`TLSMixIn` turns any stream server into a TLS server. It changes two
hooks and nothing else, so it composes with every concurrency strategy (the
synchronous default, ``ThreadingMixIn``, a thread pool, ``ForkingMixIn``):

* ``finish_request()`` runs in the worker (a request thread, a pool worker, a
  forked child; never the accept loop, which a slow client would otherwise
  stall for everyone). It wraps the accepted socket with the server's
  ``ssl_context`` and completes the handshake within ``tls_handshake_timeout``
  seconds *in total* (the socket is non-blocking and each wait gets what is left
  of the deadline, so a client trickling one byte at a time is cut off as
  surely as one that never speaks). On a saturated thread pool a handshake
  still unfinished after a second ends at once, and one whose client has sent
  nothing at all gives its worker to a waiting client immediately (see
  :mod:`pyserve.pool.workers`). Then the handler runs with the
  ``ssl.SSLSocket`` as its ``request``: ``StreamRequestHandler``'s ``rfile`` and
  ``wfile`` work over it unchanged.
* A failed handshake (a plain-text client, an untrusted certificate, a timeout,
  a reset) is one more in the ``tls_handshake_failures`` counter and an INFO
  line on the ``pyserve.tls`` logger, at most one a minute per kind of failure
  (:class:`pyserve.logs.RateLimitedLog`), with the client's address escaped (a
  PROXY header may have named it); the handler does not run. No traceback:
  a scanner must not be able to flood the log.
* ``shutdown_request()`` is given the *plain* socket by the strategy, but
  wrapping detached it (its descriptor now belongs to the ``SSLSocket``). So the
  mix-in remembers which ``SSLSocket`` each plain socket became, and ends that:
  it sends TLS ``close_notify`` without waiting for the client's answer (TLS 1.3
  allows this, and waiting would let a client hold the worker), then FIN, then
  closes.

Counters are per process: with ``ForkingMixIn`` they grow in the children.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyserve.base import BaseServer
from pyserve.lifecycle.limits import SocketReader, saturation_probe
from pyserve.logs import RateLimitedLog, escape

__all__ = ["TLSMixIn"]

logger = logging.getLogger("pyserve.tls")

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object


class TLSMixIn(_Base):
    """Serve TLS: wrap each connection with ``ssl_context`` in the worker.

    Place it before the concurrency mix-in and the server class, and give it a
    server-side context (as a keyword argument or a class attribute)::

        import ssl
        from pyserve import StreamRequestHandler, ThreadingMixIn, TCPServer, TLSMixIn

        class Echo(StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(line)

        class TLSServer(TLSMixIn, ThreadingMixIn, TCPServer):
            daemon_threads = True

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain("server.pem", "server.key")
        with TLSServer(("0.0.0.0", 8443), Echo, ssl_context=context) as server:
            server.serve_forever()

    Class attributes that may be overridden (or passed as keyword arguments):

    - ``ssl_context``: the server-side ``ssl.SSLContext`` (required)
    - ``tls_handshake_timeout``: seconds the whole handshake may take

    Counter: ``tls_handshake_failures``.
    """

    ssl_context: Optional[ssl.SSLContext] = None
    #: A handshake is two round trips; ten seconds survives a slow mobile link
    #: while bounding what a silent or trickling client costs a worker.
    tls_handshake_timeout: float = 10.0
    #: Seconds between two log lines about one kind of failed handshake.
    tls_log_interval: float = 60.0

    def __init__(
        self,
        *args: Any,
        ssl_context: Optional[ssl.SSLContext] = None,
        tls_handshake_timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if tls_handshake_timeout is not None:
            self.tls_handshake_timeout = tls_handshake_timeout
        super().__init__(*args, **kwargs)

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        if not isinstance(self.ssl_context, ssl.SSLContext):
            raise TypeError(
                f"TLSMixIn needs ssl_context to be an ssl.SSLContext, not {self.ssl_context!r}"
            )
        if not self.tls_handshake_timeout > 0:
            raise ValueError(
                f"tls_handshake_timeout must be positive, not {self.tls_handshake_timeout!r}"
            )
        self.tls_handshake_failures = 0
        self._tls_counter_lock = threading.Lock()
        self._tls_faults = RateLimitedLog(logger, self.tls_log_interval)
        # plain socket -> the SSLSocket it became. Each key is touched only by the
        # worker that owns that request, and single dict operations are atomic.
        self._tls_sockets: dict[socket.socket, ssl.SSLSocket] = {}
        # ... and back: the registry knows a request by its plain socket.
        self._tls_plain: dict[ssl.SSLSocket, socket.socket] = {}

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Complete the TLS handshake, then run the handler over the TLS socket."""
        tls = self.tls_handshake(request, client_address)
        if tls is not None:
            super().finish_request(tls, client_address)

    def tls_handshake(self, request: socket.socket, client_address: Any) -> Optional[ssl.SSLSocket]:
        """Wrap ``request`` and shake hands; None (logged, counted) if that failed."""
        assert self.ssl_context is not None
        previous_timeout = request.gettimeout()
        try:
            tls = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:  # ssl.SSLError is an OSError
            self._handshake_failed(client_address, exc)
            return None
        self._tls_sockets[request] = tls  # from here on, shutdown_request ends tls
        self._tls_plain[tls] = request
        # Until the handler reads, the handshake is the connection's reader: a
        # client that never sends its hello gives its worker up like a silent one.
        waiting = SocketReader.standing_in(tls)
        self._watch_reader(tls, waiting)
        try:
            deadline = time.monotonic() + self.tls_handshake_timeout
            _handshake(tls, deadline, waiting, saturation_probe(self))
        except OSError as exc:
            self._handshake_failed(client_address, exc)
            return None
        finally:
            waiting.waiting = False
        tls.settimeout(previous_timeout)
        return tls

    def _watch_reader(self, request: Any, reader: Any) -> None:
        """The handler's reader, entered under the plain socket the registry knows
        (a drain closes idle TLS connections as it does plain ones)."""
        super()._watch_reader(self._tls_plain.get(request, request), reader)

    def _handshake_failed(self, client_address: Any, exc: OSError) -> None:
        with self._tls_counter_lock:
            self.tls_handshake_failures += 1
        reason = _reason(exc)
        self._tls_faults.report(
            logging.INFO,
            f"handshake: {type(exc).__name__}",  # a bounded set of exception classes
            "TLS handshake with %s failed: %s",
            escape(client_address),
            reason,
        )

    def shutdown_request(self, request: Any) -> None:
        """End the TLS session (if one was made for ``request``), then the socket."""
        tls = self._tls_sockets.pop(request, None)
        if tls is None:
            super().shutdown_request(request)
            return
        self._tls_plain.pop(tls, None)
        try:
            tls.settimeout(0.0)
            tls.unwrap()  # sends close_notify, then would wait for the peer's: see above
        except (OSError, ValueError):
            pass  # no answer yet (SSLWantReadError), or the peer is gone already
        super().shutdown_request(tls)


#: While a pool is saturated, a handshake still unfinished after this long gives
#: its worker up: a client sends its hello at once, and the whole handshake takes
#: two round trips; a trickle is an attack.
_SATURATED_HANDSHAKE_WAIT = 1.0


def _handshake(
    tls: ssl.SSLSocket,
    deadline: float,
    waiting: SocketReader,
    saturated: Optional[Callable[[], bool]],
) -> None:
    """Drive a non-blocking handshake to its end, or raise ``socket.timeout``;
    ``waiting.received`` is set once the client has sent something. With
    ``saturated`` (a pool's), a handshake unfinished after a second ends as soon
    as requests wait for a worker."""
    started = time.monotonic()
    tls.settimeout(0.0)
    while True:
        if not waiting.received and _has_data(tls):  # the client spoke: mid-handshake,
            waiting.received, waiting.answered = 1, False  # not idle (for drain too)
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            readable, writable = True, False
        except ssl.SSLWantWriteError:
            readable, writable = False, True
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise socket.timeout("handshake timed out")
        wait = remaining
        if saturated is not None:
            if now - started >= _SATURATED_HANDSHAKE_WAIT and saturated():
                raise socket.timeout("handshake unfinished while every worker was busy")
            wait = min(remaining, _SATURATED_HANDSHAKE_WAIT / 2)  # then look at the pool
        if not _wait(tls, readable, writable, wait) and wait == remaining:
            raise socket.timeout("handshake timed out")


def _has_data(sock: socket.socket) -> bool:
    """Whether bytes wait on the connection, under any TLS layer (a peek)."""
    try:
        return bool(_peek(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing yet (BlockingIOError), or reset: the handshake will say
        return False


_peek = socket.socket.recv  # the plain socket's: an SSLSocket refuses flags


def _wait(sock: socket.socket, readable: bool, writable: bool, timeout: float) -> bool:
    """Wait until ``sock`` is ready; False on timeout."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        events = (select.POLLIN if readable else 0) | (select.POLLOUT if writable else 0)
        poller.register(sock, events)
        return bool(poller.poll(timeout * 1000))
    ready = select.select([sock] if readable else [], [sock] if writable else [], [], timeout)
    return any(ready)


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, ssl.SSLEOFError) or not str(exc):
        return type(exc).__name__
    return str(exc)
