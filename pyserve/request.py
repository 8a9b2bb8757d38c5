"""Request handlers: the classes users subclass to write ``handle()``.

Theory of operation
-------------------
A handler object lives for exactly one request. The server constructs it, and the
constructor runs the whole request: ``setup()``, then ``handle()``, then always
``finish()``. Subclasses usually write only ``handle()``.

* :class:`BaseRequestHandler` gives ``self.request``, ``self.client_address`` and
  ``self.server``.
* :class:`StreamRequestHandler` adds file objects over the connection:
  ``self.rfile`` (buffered reads: ``readline()``, ``read(n)``) and ``self.wfile``
  (every ``write()`` is sent in full before it returns).
* :class:`DatagramRequestHandler` presents one datagram as ``self.rfile`` and
  collects the reply in ``self.wfile``, sent when the handler finishes (if it
  wrote, even ``b""``; a handler that never wrote sends nothing).

Why the stream files are faster than the stdlib's
-------------------------------------------------
The stdlib's ``rfile`` is ``socket.makefile('rb')``: a C ``BufferedReader`` over
``socket.SocketIO``, whose ``readinto()`` is Python code that re-checks its state
and translates errors on *every* refill. Here the raw layer's ``readinto`` is a
few attribute stores around the socket's own ``recv_into`` (they tell a
graceful drain whether the connection is idle: see
:class:`~pyserve.lifecycle.limits.SocketReader`), and ``wfile.write()`` is one
``sendall()`` and one store. With this, a ``readline``/``write`` echo outruns
the stdlib's own raw ``recv``/``sendall`` echo, which allocates a 64 KiB buffer
per ``recv``.

Idle connections and drain
--------------------------
A drain (:mod:`pyserve.lifecycle.drain`) closes *idle* connections at once: a
handler waiting in ``rfile`` for a request after answering the last one gets
EOF and ends normally. ``setup()`` hands the reader to the server
(``_watch_reader``) and to ``wfile``, which notes after each write whether
everything read was consumed. A handler reading ``self.request`` directly, or
files from ``makefile()`` (``rbufsize = 0``, a socket subclass, ``wbufsize``
set), is never taken for idle: the drain waits for it as before.

Typing
------
Handlers are generic over their server type, so ``self.server`` is precise::

    class Handler(StreamRequestHandler["MyServer"]):
        def handle(self) -> None:
            self.server.my_attribute  # known to be MyServer's
"""

from __future__ import annotations

import io
import socket
import sys
from collections.abc import Iterable

from pyserve.lifecycle.limits import SocketReader, make_rfile

__all__ = [
    "BaseRequestHandler",
    "DatagramRequestHandler",
    "StreamRequestHandler",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generic, Optional, TypeVar

    from typing_extensions import Buffer

    from pyserve.base import BaseServer

    #: The server type a handler is generic over (``self.server``'s type).
    ServerT_co = TypeVar("ServerT_co", bound="BaseServer", covariant=True)
else:  # the same names, without importing typing (see pyserve._typing_free)
    from pyserve._typing_free import Generic, TypeVar

    ServerT_co = TypeVar("ServerT_co")


class BaseRequestHandler(Generic[ServerT_co]):
    """Handle one request: ``setup()``, ``handle()``, then always ``finish()``.

    For derived classes: ``setup()``, ``handle()`` and ``finish()`` (each does
    nothing here). The instance has ``request``, ``client_address`` and ``server``.
    """

    request: Any

    def __init__(self, request: Any, client_address: Any, server: ServerT_co) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Prepare for ``handle()``. May be overridden."""

    def handle(self) -> None:
        """Serve the request. Override this."""

    def finish(self) -> None:
        """Clean up after ``handle()``, even when it raised. May be overridden."""


class _SocketWriter(io.BufferedIOBase):
    """``wfile``: each ``write()`` sends everything before returning.

    Unbuffered on purpose (the stdlib's ``wbufsize = 0``): a handler that writes a
    reply and then waits for the next request must not leave the reply in a buffer.
    ``sendall()`` also resumes after a signal interrupts it, so nothing is lost.
    """

    #: The connection's reader and ``rfile.tell``, when ``rfile`` is pyserve's:
    #: each write notes whether everything read was consumed (answered).
    _reader: Optional[SocketReader] = None
    _consumed: Any = None

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._sendall = sock.sendall

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        self._sendall(data)
        reader = self._reader
        if reader is not None:
            reader.answered = reader.received == self._consumed()
        if type(data) is bytes:  # the common case needs no memoryview
            return len(data)
        with memoryview(data) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


def _is_tls_socket(connection: Any) -> bool:
    # Only a process that imported ssl can hold an SSLSocket: no import here.
    ssl = sys.modules.get("ssl")
    return ssl is not None and type(connection) is ssl.SSLSocket


class StreamRequestHandler(BaseRequestHandler[ServerT_co]):
    """A handler for stream requests, with ``rfile`` and ``wfile`` file objects.

    Class attributes that may be overridden:

    - ``rbufsize``: ``rfile``'s buffer (-1: the io default; 0: unbuffered)
    - ``wbufsize``: ``wfile``'s buffer (0: every write is sent at once)
    - ``timeout``: seconds each socket operation may block (None: forever)
    - ``disable_nagle_algorithm``: set TCP_NODELAY on the connection
    - ``idle_timeout``, ``request_deadline``, ``max_line_length``: protections
      against slow or abusive peers (None: the server's value, if any; see
      :mod:`pyserve.lifecycle.limits`)
    """

    request: socket.socket
    rbufsize: int = -1
    wbufsize: int = 0
    timeout: Optional[float] = None
    disable_nagle_algorithm: bool = False
    idle_timeout: Optional[float] = None
    request_deadline: Optional[float] = None
    max_line_length: Optional[int] = None

    def setup(self) -> None:
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self._make_rfile()
        self.wfile = self._make_wfile()
        reader = getattr(self.rfile, "raw", None)
        if isinstance(reader, SocketReader):
            if type(self.wfile) is _SocketWriter:
                self.wfile._reader = reader
                self.wfile._consumed = self.rfile.tell
            watch = getattr(self.server, "_watch_reader", None)
            if watch is not None:
                watch(self.connection, reader)

    def _make_rfile(self) -> io.BufferedIOBase:
        connection = self.connection
        if self.rbufsize == 0 or (
            type(connection) is not socket.socket and not _is_tls_socket(connection)
        ):
            # Unbuffered reads, and socket subclasses that bring their own
            # makefile(): the socket's own file object.
            return connection.makefile("rb", self.rbufsize)  # type: ignore[return-value]
        # A TLS socket too: its recv_into() decrypts, and the protections of
        # make_rfile() must not depend on the transport.
        size = self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE
        raw = SocketReader(self.connection)
        protected = make_rfile(self, raw, size)
        return protected if protected is not None else io.BufferedReader(raw, size)

    def _make_wfile(self) -> io.BufferedIOBase:
        if self.wbufsize == 0:
            return _SocketWriter(self.connection)
        return self.connection.makefile("wb", self.wbufsize)  # type: ignore[return-value]

    def finish(self) -> None:
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer is gone; what was buffered cannot be delivered
        self.wfile.close()
        self.rfile.close()


class _ReplyBuffer(io.BytesIO):
    """``wfile`` of a datagram handler: a ``BytesIO`` that knows whether it was written.

    An empty reply is a reply (an echo of an empty datagram), but a handler that
    never wrote has nothing to say; the buffer's contents alone cannot tell the two
    apart.
    """

    written = False

    def write(self, data: Buffer) -> int:
        self.written = True
        return super().write(data)

    def writelines(self, lines: Iterable[Buffer]) -> None:
        self.written = True
        super().writelines(lines)


class DatagramRequestHandler(BaseRequestHandler[ServerT_co]):
    """A handler for one datagram: read it from ``rfile``, write the reply to ``wfile``.

    The reply is sent to the client when the handler finishes if the handler
    wrote to ``wfile``, even ``b""`` (an empty datagram); a handler that never
    wrote sends nothing (the stdlib sends an empty datagram then).
    ``self.packet`` is the data, ``self.socket`` the server's socket.
    """

    request: tuple[bytes, socket.socket]

    def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = _ReplyBuffer()

    def finish(self) -> None:
        reply = self.wfile.getvalue()
        # getattr: a handler may have replaced wfile with a plain BytesIO.
        if reply or getattr(self.wfile, "written", False):
            self.socket.sendto(reply, self.client_address)
