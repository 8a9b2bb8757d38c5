"""The handler of a multiplexing server: callbacks that never block.

A :class:`ConnectionHandler` is what :class:`~pyserve.multiplex.server.MultiplexingMixIn`
runs for each connection. Unlike a request handler it does not *run*: the
server's I/O thread calls it when something happens (``connection_made()``,
``data_received(data)`` for every chunk that arrives, ``eof_received()``,
``connection_lost(exc)`` once at the end, ``write_buffer_drained()`` when output
that had to wait is all sent), and it answers with ``write(data)`` and ends the
connection with ``close()``. None of these may block: a callback
that waits stalls every connection of the server. How the I/O thread drives
them is in :mod:`pyserve.multiplex.server`.

Output is *gathered* per turn of the I/O loop: what ``write()`` is given in a
turn (the callbacks for the readiness one ``poll()`` reported) waits in the
handler's buffer, and the loop sends every connection's buffer at the end of the
turn, one system call each. A client waiting on many connections (a benchmark,
a proxy, a pool) is then woken once per burst of replies instead of once per
reply: on a busy server that wake-up is the costliest part of a send. A handler
on another transport (one that gathers nothing) sends at once.

What a handler needs from the loop that drives it is written down here, as the
:class:`Transport` protocol (two methods), so this module does not import the
server's loop and the loop is one implementation among possible others (a test
double, another event loop).
"""

from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from pyserve.lifecycle.registry import LiveRequest
from pyserve.request import ServerT_co

if TYPE_CHECKING:
    from typing import Generic
else:  # ServerT_co is pyserve._typing_free's at run time, as for the request handlers
    from pyserve._typing_free import Generic

__all__ = ["ConnectionHandler", "Transport"]

_write = os.write


def _not_open() -> bytes:
    raise RuntimeError("the connection is not open")


class Transport(Protocol):
    """What a :class:`ConnectionHandler` needs from the loop that drives it.

    Both are called in the loop's own thread (from a callback, or from ``write()``
    and ``close()`` which belong there).
    """

    def watch(self, handler: ConnectionHandler[Any]) -> None:
        """Watch what ``handler`` needs now: room to write its buffered output,
        and data to read unless it is closing, at EOF or over ``max_write_buffer``."""

    def finish(self, handler: ConnectionHandler[Any], exc: Optional[BaseException]) -> None:
        """End the connection now: shut it down, then ``connection_lost(exc)`` once."""


class ConnectionHandler(Generic[ServerT_co]):
    """Handle one connection of a multiplexing server by callbacks (never blocking).

    For derived classes: ``connection_made()``, ``data_received(data)``,
    ``eof_received()``, ``connection_lost(exc)``, ``write_buffer_drained()``. For
    them: ``write(data)``, ``write_buffer_size``, ``close()``, ``closing``. The
    instance has ``request``, ``client_address`` and ``server``, as a request
    handler does.

    Class attributes that may be overridden:

    - ``receive_size``: the most bytes read per ``recv()`` (read once, after
      ``connection_made()``)
    - ``max_write_buffer``: buffered output above which reading pauses
    - ``idle_timeout``: seconds without a byte from the peer before the connection
      is closed (None: the server's ``idle_timeout``, else never)
    """

    receive_size: int = 65536
    max_write_buffer: int = 1024 * 1024
    idle_timeout: Optional[float] = None
    #: Input arrived since the last ``write()`` (set by the I/O loop): while true,
    #: a drain waits for the connection rather than closing it as idle.
    _unanswered = False

    def __init__(self, request: Any, client_address: Any, server: ServerT_co) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self._loop: Optional[Transport] = None  # set by the I/O thread before connection_made
        self._entry: Optional[LiveRequest] = None
        self._output: collections.deque[bytes] = collections.deque()
        self._output_size = 0
        self._closing = False
        self._closed = False
        self._eof = False  # the peer finished sending: never read again
        self._events = 0  # what the I/O loop's poller watches for this connection
        self._idle: Optional[float] = None  # idle_timeout, read once when it opens
        self._last_read = 0.0
        # Set by the I/O loop when the connection opens: its descriptor (what the
        # poller reports), how to read (request.recv, or os.read on the descriptor
        # of a plain socket: no argument tuple to build and parse per read),
        # request.send, looked up once rather than per call, and for a plain
        # socket the request itself, which write() gives to os.write by its
        # fileno() *at the time* (-1 once closed: never another connection's).
        self._fd = -1
        self._recv: Callable[[], bytes] = _not_open
        # _recv reads up to a few hundred bytes until a read fills that, then
        # becomes this, which reads receive_size (see pyserve.multiplex.reading).
        self._recv_full: Callable[[], bytes] = _not_open
        self._receive_size = 0  # receive_size, as it was when the connection opened
        self._send: Callable[[bytes], int] = self._send_unopened
        self._raw: Any = None  # the request, when the loop writes to it with os.write
        # The loop's list of connections whose output waits for the end of the
        # turn (None: write() sends at once), and whether this one is in it.
        self._gathered: Optional[list[ConnectionHandler[Any]]] = None
        self._later = False

    def _send_unopened(self, data: bytes) -> int:
        """``_send`` until a loop opens the connection (which sets it directly)."""
        if self._loop is None:
            raise RuntimeError("write() before connection_made(): the connection is not open")
        return int(self.request.send(data))

    # -- callbacks: override these ---------------------------------------------------

    def connection_made(self) -> None:
        """The connection is ready. May be overridden."""

    def data_received(self, data: bytes) -> None:
        """``data`` arrived from the peer (any amount: frames are the handler's job)."""

    def eof_received(self) -> None:
        """The peer will send nothing more. By default: ``close()``."""
        self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        """The connection is closed; ``exc`` is why, when it was not a normal end."""

    def write_buffer_drained(self) -> None:
        """Everything ``write()`` had to buffer is sent. May be overridden.

        A handler that stops producing output while ``write_buffer_size`` is high
        (a peer that sends requests but reads replies slowly) resumes here.
        """

    # -- actions ---------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once ``close()`` was called or the connection is gone."""
        return self._closing

    @property
    def write_buffer_size(self) -> int:
        """Bytes given to ``write()`` that the kernel has not taken yet."""
        return self._output_size

    def write(self, data: bytes) -> None:
        """Send ``data``: at the end of the I/O loop's turn (see the module's
        text) as far as the kernel takes it, the rest when it can."""
        if self._closing:
            return
        self._unanswered = False  # for a drain: what arrived has been answered
        # (A size compared with 0 is cheaper than a deque's truth: the hot path.)
        if self._output_size == 0:  # nothing queued (the usual case)
            gathered = self._gathered
            if gathered is not None:  # sent with the turn's other output
                if data:
                    self._output.append(data)
                    self._output_size = len(data)
                    self._later = True
                    gathered.append(self)
                return
            try:
                # A plain socket: write(2) on its descriptor, without the argument
                # tuple send() parses (closed under us, fileno() is -1: EBADF).
                raw = self._raw
                sent = self._send(data) if raw is None else _write(raw.fileno(), data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the peer is gone: end now, as close() would
                if self._loop is not None:
                    self._loop.finish(self, exc)
                return
            if sent == len(data):
                return  # all of it (or nothing to send)
            data = data[sent:]
        elif not data:
            return
        self._output.append(data)
        self._output_size += len(data)
        if self._loop is not None and not self._later:  # (gathered: the turn's end sends)
            self._loop.watch(self)

    def close(self) -> None:
        """Send what is buffered, then end the connection."""
        if self._closing:
            return
        self._closing = True
        if self._loop is not None and not self._later:  # (gathered: finished once sent)
            if self._output:
                self._loop.watch(self)  # stops reading; finish() once the buffer is out
            else:
                self._loop.finish(self, None)
