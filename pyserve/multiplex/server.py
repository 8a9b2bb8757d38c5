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
which waits on all connections at once in one ``selectors`` selector (epoll on
Linux) and, for each that is readable, calls ``recv()`` once and gives the bytes
to the handler. While many connections are busy, one wait returns many of them,
and no thread switch happens between them.

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

import collections
import logging
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyserve.base import BaseServer
from pyserve.errors import RequestTimedOut
from pyserve.lifecycle.limits import handler_setting
from pyserve.lifecycle.registry import LiveRequest
from pyserve.multiplex.connection import ConnectionHandler

__all__ = ["MultiplexingMixIn", "finish_request_overriders"]

logger = logging.getLogger("pyserve")

if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object

_WAKE = "wake"  # the selector key data of the wake-up socket
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_NEVER = float("inf")


class _IOLoop:
    """The I/O thread of one server: its selector, connections and hand-over queue."""

    def __init__(self, server: MultiplexingMixIn) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.receiver, self.sender = socket.socketpair()
        self.receiver.setblocking(False)
        self.sender.setblocking(False)
        self.selector.register(self.receiver, _READ, _WAKE)
        self.incoming: collections.deque[Callable[[], None]] = collections.deque()
        self.connections: set[ConnectionHandler[Any]] = set()
        self.stopping = False
        # Idle timeouts: the earliest moment one may have expired (inf: none set).
        # Reads only push expiries later, so one scan at that moment is enough.
        self.next_expiry = _NEVER
        self.thread = threading.Thread(target=self.run, name="pyserve-io", daemon=True)

    # -- from any thread -------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.incoming.append(callback)  # deque.append is atomic
        try:
            self.sender.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full of wake-ups already
        except OSError:
            pass  # stopped: nothing runs callbacks any more

    def discard(self) -> None:
        """Release what a loop whose thread never started holds."""
        self.selector.close()
        self.receiver.close()
        self.sender.close()

    # -- in the I/O thread -----------------------------------------------------------

    def report(self, request: Any, client_address: Any) -> None:
        """``handle_error()`` for the exception being handled; if that raises too,
        log it and carry on: the one I/O thread serves every connection, so a
        broken error hook must cost one connection, never all of them."""
        try:
            self.server.handle_error(request, client_address)
        except Exception:
            logger.exception("handle_error() failed in the I/O thread")

    def run(self) -> None:
        try:
            self.serve()
        finally:  # stopped, or a BaseException escaped a callback: close everything
            self.stopping = True
            for handler in list(self.connections):
                self.finish(handler, None)
            self.selector.close()
            self.receiver.close()
            self.sender.close()

    def serve(self) -> None:
        select = self.selector.select
        while not self.stopping:
            timeout = None
            if self.next_expiry != _NEVER:
                timeout = max(0.0, self.next_expiry - time.monotonic())
            for key, events in select(timeout):
                handler = key.data
                if handler is _WAKE:
                    self.take_incoming()
                    continue
                if handler._closed:
                    continue  # ended by another connection's callback this turn
                if events & _WRITE:
                    self.flush(handler)
                if events & _READ and not handler._closing:
                    self.read(handler)
            if self.next_expiry != _NEVER and self.next_expiry <= time.monotonic():
                self.expire_idle()  # no clock read per turn while no idle timeout is set

    def take_incoming(self) -> None:
        try:
            while self.receiver.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        # Only what was queued before this turn: a callback that queues another (a
        # long job done in pieces) lets every connection be served in between.
        for _ in range(len(self.incoming)):
            callback = self.incoming.popleft()
            try:
                callback()
            except Exception:
                self.report(None, None)

    def open(self, request: Any, client_address: Any, entry: LiveRequest) -> None:
        server = self.server
        try:
            request.setblocking(False)
            handler: ConnectionHandler[Any] = server.RequestHandlerClass(
                request, client_address, server
            )
            if not isinstance(handler, ConnectionHandler):
                raise TypeError(f"{handler!r} is not a pyserve.ConnectionHandler")
        except Exception as exc:
            server._failed(request, exc)
            self.report(request, client_address)
            self.shut(request, client_address)
            server._ended(entry, exc)
            return
        handler._loop = self
        handler._entry = entry
        handler._idle = handler_setting(handler, "idle_timeout")
        if handler._idle is not None:
            handler._last_read = time.monotonic()
            self.next_expiry = min(self.next_expiry, handler._last_read + handler._idle)
        self.connections.add(handler)
        handler._events = _READ
        self.selector.register(request, _READ, handler)
        server._started(entry)
        self.call(handler, handler.connection_made)

    def call(
        self, handler: ConnectionHandler[Any], callback: Callable[..., None], *args: Any
    ) -> None:
        """Run one callback; an exception ends that connection (and is logged)."""
        try:
            callback(*args)
        except Exception as exc:
            self.server._failed(handler.request, exc)
            self.report(handler.request, handler.client_address)
            self.finish(handler, exc)

    def read(self, handler: ConnectionHandler[Any]) -> None:
        try:
            data = handler.request.recv(handler.receive_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.call(handler, _raise, exc)  # a reset: logged as the peer's going
            return
        if data:
            if handler._idle is not None:
                handler._last_read = time.monotonic()
            self.call(handler, handler.data_received, data)
            return
        handler._eof = True  # EOF stays readable: stop watching for it
        self.call(handler, handler.eof_received)
        self.want(handler)

    def flush(self, handler: ConnectionHandler[Any]) -> None:
        output = handler._output
        while output:
            data = output[0]
            try:
                sent = handler.request.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.call(handler, _raise, exc)
                return
            handler._output_size -= sent
            if sent < len(data):
                output[0] = data[sent:]
                break
            output.popleft()
        if not output and handler._closing:
            self.finish(handler, None)
            return
        if not output:
            self.call(handler, handler.write_buffer_drained)
        self.want(handler)

    def want(self, handler: ConnectionHandler[Any]) -> None:
        """Watch what ``handler`` needs now: output to send, room to read."""
        if handler._closed:
            return
        events = _WRITE if handler._output else 0
        if (
            not handler._closing
            and not handler._eof
            and handler._output_size <= handler.max_write_buffer
        ):
            events |= _READ
        if events != handler._events:
            handler._events = events
            if events:
                self.selector.modify(handler.request, events, handler)
            else:
                self.selector.unregister(handler.request)

    def finish(self, handler: ConnectionHandler[Any], exc: Optional[BaseException]) -> None:
        if handler._closed:
            return
        handler._closed = handler._closing = True
        request = handler.request
        if handler._events:
            self.selector.unregister(request)
            handler._events = 0
        self.connections.discard(handler)
        handler._output.clear()
        server = self.server
        try:
            self.shut(request, handler.client_address)
        finally:
            try:
                handler.connection_lost(exc)
            except Exception as lost_error:
                server._failed(request, lost_error)
                self.report(request, handler.client_address)
                exc = exc or lost_error
            if handler._entry is not None:
                server._ended(handler._entry, exc)

    def shut(self, request: Any, client_address: Any) -> None:
        """``shutdown_request()``; if that raises, report it and close the socket
        anyway, so the client is not left waiting for the garbage collector."""
        try:
            self.server.shutdown_request(request)
        except Exception:
            self.report(request, client_address)
            request.close()

    def expire_idle(self) -> None:
        """Close the connections silent for longer than their idle timeout."""
        now = time.monotonic()
        self.next_expiry = _NEVER
        for handler in list(self.connections):
            if handler._idle is None or handler._closed:
                continue
            expiry = handler._last_read + handler._idle
            if expiry <= now:
                error = RequestTimedOut(f"no data for {handler._idle:g} s")
                self.call(handler, _raise, error)
            else:
                self.next_expiry = min(self.next_expiry, expiry)


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


def _raise(exc: BaseException) -> None:
    raise exc


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
    """

    block_on_close: bool = True
    close_timeout: Optional[float] = 30.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        handler_class = self.RequestHandlerClass
        if isinstance(handler_class, type) and not issubclass(handler_class, ConnectionHandler):
            raise TypeError(
                f"{type(self).__name__} needs a pyserve.ConnectionHandler subclass "
                f"(called on readiness, never blocking), not {handler_class.__qualname__}"
            )
        skipped = finish_request_overriders(type(self))
        if skipped:
            raise TypeError(
                f"{type(self).__name__}: a multiplexing server never calls finish_request(), "
                f"so what {', '.join(skipped)} does there would be skipped"
            )
        self._io: Optional[_IOLoop] = None
        self._io_closed = False
        self._io_lock = threading.Lock()

    def _io_loop(self) -> _IOLoop:
        with self._io_lock:
            if self._io_closed:
                raise RuntimeError(f"{type(self).__name__} is closed: no I/O thread runs")
            if self._io is None:
                socket_type = getattr(getattr(self, "socket", None), "type", None)
                if socket_type is not None and socket_type != socket.SOCK_STREAM:
                    raise TypeError(
                        f"{type(self).__name__}: multiplexing serves stream sockets only"
                    )
                io_loop = _IOLoop(self)
                try:
                    io_loop.thread.start()
                except BaseException:
                    io_loop.discard()  # the next connection tries again
                    raise
                self._io = io_loop
            return self._io

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the I/O thread."""
        entry = self._track(request, client_address)
        io_loop = self._io_loop()
        io_loop.call_soon(lambda: io_loop.open(request, client_address, entry))

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` in the I/O thread (safe from any thread)."""
        self._io_loop().call_soon(callback)

    def server_close(self) -> None:
        super().server_close()
        io_loop = self._io
        if io_loop is None:
            with self._io_lock:
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
