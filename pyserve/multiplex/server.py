"""One thread, many connections: a readiness loop for handlers that never block.

Theory of operation
-------------------
Every other strategy gives each connection a thread (or a process) that *blocks*
in ``recv()``. That is the simplest way to write a handler, and it costs one
thread switch per exchange: the kernel wakes the connection's thread, the thread
waits for the interpreter lock, replies, and blocks again. For small pipelined
requests on many connections (a Redis client) those switches cost more than the
work itself.

:class:`MultiplexingMixIn` serves every connection of a server from *one* I/O
thread instead. The serve loop still accepts (with its hooks, limits, holds and
back-off unchanged); ``process_request()`` hands the connection to the I/O thread,
(:mod:`pyserve.multiplex.ioloop`), which waits on all connections at once in one
poller (epoll on Linux, else poll) and, for each that is readable, calls
``recv()`` once and gives the bytes to the handler. While many connections are
busy, one wait returns many of them, and no thread switch happens between them.

The handler is therefore a different kind of object: a
:class:`~pyserve.multiplex.connection.ConnectionHandler` is *called*, it does not run.
It gets ``connection_made()``, then ``data_received(data)`` for every chunk that
arrives, ``eof_received()`` when the peer has finished sending, and
``connection_lost(exc)`` once at the end. It answers with ``write(data)`` and
ends the connection with ``close()``. None of these may block: a callback that
sleeps or waits stalls every connection. (A sans-IO parser, see
:mod:`handlers`, fits this shape exactly.)

* ``write()`` sends at once when it can; what the kernel does not take waits in
  the handler's buffer and goes out when the socket is writable again. When more
  than ``max_write_buffer`` bytes wait, the connection stops being read until the
  buffer drains, so a peer that sends requests but never reads replies costs
  bounded memory and cannot slow the others.
* ``close()`` sends what is buffered, then shuts the connection down
  (``shutdown_request()``: FIN, then close) and calls ``connection_lost(None)``.
* An exception from a callback (a ``pyserve.ProtocolError`` from a parser, say)
  goes to ``handle_error()`` (one WARNING line for a peer's fault) and closes that
  connection only.
* ``idle_timeout`` (on the handler, or the server): no byte for that many seconds
  closes the connection as *timed out*.
* Callbacks run in the I/O thread, so ``write()`` and ``close()`` belong there.
  Another thread asks for work in that thread with ``server.call_soon(fn)``.

Each connection is one entry of the server's registry from accept to
``connection_lost``, so ``stats``, events, connection limits, ``drain()`` (its
force step shuts connections for reading: their handlers see EOF) and the bounded
``server_close()`` all work as for the threading strategies.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyserve.base import BaseServer
from pyserve.multiplex.connection import ConnectionHandler
from pyserve.multiplex.ioloop import IOLoop

__all__ = ["MultiplexingMixIn", "finish_request_overriders"]

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

def finish_request_overriders(server_class: type) -> list[str]:
    """The classes of ``server_class`` that override ``finish_request()``.

    A multiplexing server never calls ``finish_request()`` (the I/O thread opens the
    handler itself), so what such a class adds there (a TLS handshake, a PROXY
    header, an access log) would be skipped without a word.
    """
    return [
        klass.__name__
        for klass in server_class.__mro__
        if "finish_request" in vars(klass) and klass is not BaseServer
    ]


def _nothing() -> None:
    """A wake-up with no work: the I/O thread looks at its stop flag."""


class MultiplexingMixIn(_Base):
    """Serve every connection from one I/O thread (see the module documentation).

    The handler class must be a :class:`~pyserve.multiplex.connection.ConnectionHandler`.
    For stream sockets only.

    Class attributes that may be overridden:

    - ``block_on_close`` / ``close_timeout``: ``server_close()`` lets open
      connections finish for at most ``close_timeout`` seconds, then shuts them
      for reading, as the threading strategy does
    - ``accept_batch``: the most connections accepted per wake-up of the serve loop
    """

    block_on_close: bool = True
    close_timeout: Optional[float] = 30.0
    #: Connections waiting in the backlog are taken in one turn of the serve loop
    #: (a zero-timeout poll per extra accept instead of a whole loop turn), as the
    #: thread pool does; 16 bounds how long holds and shutdown wait for the turn.
    accept_batch: int = 16

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        handler_class = self.RequestHandlerClass
        if isinstance(handler_class, type) and not issubclass(handler_class, ConnectionHandler):
            raise TypeError(
                f"{type(self).__name__} needs a pyserve.ConnectionHandler subclass "
                f"(called on readiness, never blocking), not {handler_class.__qualname__}"
            )
        batch = self.accept_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"accept_batch must be a whole number >= 1, not {batch!r}")
        skipped = finish_request_overriders(type(self))
        if skipped:
            raise TypeError(
                f"{type(self).__name__}: a multiplexing server never calls finish_request(), "
                f"so what {', '.join(skipped)} does there would be skipped"
            )
        self._io: Optional[IOLoop] = None
        self._io_closed = False
        self._io_lock = threading.Lock()

    def _handle_request_noblock(self) -> None:
        """Take one connection, then more while the backlog has them (one wake-up)."""
        super()._handle_request_noblock()
        if threading.get_ident() != self._serving_ident:
            return  # handle_request(): exactly one request
        for _ in range(self.accept_batch - 1):
            if not self._may_accept_more():
                return
            super()._handle_request_noblock()

    def _io_loop(self) -> IOLoop:
        with self._io_lock:
            if self._io_closed:
                raise RuntimeError(f"{type(self).__name__} is closed: no I/O thread runs")
            if self._io is None:
                socket_type = getattr(getattr(self, "socket", None), "type", None)
                if socket_type is not None and socket_type != socket.SOCK_STREAM:
                    raise TypeError(
                        f"{type(self).__name__}: multiplexing serves stream sockets only"
                    )
                io_loop = IOLoop(self)
                try:
                    io_loop.thread.start()
                except BaseException:
                    io_loop.discard()  # the next connection tries again
                    raise
                self._io = io_loop
            return self._io

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the I/O thread."""
        io_loop = self._io_loop()  # first: a closed server tracks nothing
        entry = self._track(request, client_address)
        if not io_loop.hand_over(request, client_address, entry):
            self._ended(entry)
            raise RuntimeError(f"{type(self).__name__} is closed: no I/O thread runs")

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in the I/O thread (safe from any thread)."""
        self._io_loop().call_soon(callback)

    def server_close(self) -> None:
        super().server_close()
        with self._io_lock:  # read and decide in one step: _io_loop() may be starting it
            io_loop = self._io
            if io_loop is None:
                self._io_closed = True
                return
        if self.block_on_close and self.close_timeout is not None:
            self._settle(self.close_timeout, None, "server_close")
        elif self.block_on_close:
            self._registry.wait_empty(None)
        with self._io_lock:
            self._io = None
            self._io_closed = True
        io_loop.stopping = True  # what is still open is closed as the thread ends
        io_loop.call_soon(_nothing)
        io_loop.thread.join()
