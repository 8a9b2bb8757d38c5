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
thread instead. Connections are accepted with the usual hooks, limits, holds
and back-off (by the I/O thread itself once it runs, see below), and the I/O
thread (:mod:`pyserve.multiplex.ioloop`) waits on all connections at once in one
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

* ``write()`` sends at the end of the I/O loop's turn, with the other replies of
  that turn (see :mod:`pyserve.multiplex.sending`); what the kernel does not
  take waits in the handler's buffer and goes out when the socket is writable
  again. When more than ``max_write_buffer`` bytes wait, the connection stops
  being read until the buffer drains, so a peer that sends requests but never
  reads replies costs bounded memory and cannot slow the others.
* ``close()`` sends what is buffered, then shuts the connection down
  (``shutdown_request()``: FIN, then close) and calls ``connection_lost(None)``.
* An exception from a callback (a ``pyserve.ProtocolError`` from a parser, say)
  goes to ``handle_error()`` (one WARNING line for a peer's fault) and closes that
  connection only.
* ``idle_timeout`` (on the handler, or the server): no byte for that many seconds
  closes the connection as *timed out*.
* Callbacks run in the I/O thread, so ``write()`` and ``close()`` belong there.
  Another thread asks for work in that thread with ``server.call_soon(fn)``.

Accepting in the I/O thread
---------------------------
Once the I/O thread runs (it starts with the first connection) and
``serve_forever()`` is running, the I/O thread also *accepts*: the serve loop
holds the listener (the ``"multiplex-io-accepts"`` hold of the server's accept
gate, :mod:`pyserve.lifecycle.gate`) and the I/O thread watches it in its own
poller instead. A readable listener there takes the same path as in the loop
(``get_request()``, the gate's critical section, admission to the registry,
``verify_request()``, ``process_request()``) for up to ``accept_batch``
connections, and each connection is opened right there: no hand-over from one
thread to another, no wake-up, one system call fewer per connection. The hooks
still run serially, in one thread (the I/O thread, not the loop's).

The gate still decides: the I/O thread watches the listener only while the
gate is held by that one reason. Any other hold (accept back-off, which the
serve loop still times and releases), a drain or ``server_close()`` makes it
stop watching until the gate is released; a drain's barrier waits for an accept
under way in the I/O thread as for one in the loop. What would end
``serve_forever()`` when the loop accepts (a failed listener, an exception from
``get_request()`` or ``verify_request()``) ends it here too: the I/O thread stops
watching and the loop re-raises it. When the loop stops, the listener goes back
to it. ``accept_in_io_thread = False`` keeps every accept in the loop's thread.

Each connection is one entry of the server's registry from accept to
``connection_lost``, so ``stats``, events, connection limits, ``drain()`` (its
force step shuts connections for reading: their handlers see EOF) and the bounded
``server_close()`` all work as for the threading strategies.
"""

from __future__ import annotations

import os
import select
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


#: The serve loop's hold on the listener while the I/O thread accepts.
IO_ACCEPTS = "multiplex-io-accepts"


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
    - ``accept_batch``: the most connections accepted per readiness of the listener
    - ``accept_in_io_thread``: accept in the I/O thread while ``serve_forever()``
      runs (see the module documentation); False: in the serve loop's thread
    """

    block_on_close: bool = True
    close_timeout: Optional[float] = 30.0
    #: Connections waiting in the backlog are taken in one turn of the serve loop
    #: (a zero-timeout poll per extra accept instead of a whole loop turn), as the
    #: thread pool does; 16 bounds how long holds and shutdown wait for the turn.
    accept_batch: int = 16
    accept_in_io_thread: bool = True

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
        # Accepting in the I/O thread: wanted (serving, but the I/O thread has not
        # started yet); on (the loop holds the listener, the I/O thread watches it).
        self._io_accept_wanted = False
        self._io_accepting = False
        self._accept_fatal: Optional[BaseException] = None
        self._io_probe: Optional[tuple[int, Any]] = None  # (listener fd, poll object)
        self.accept_gate.subscribe(self._io_gate_changed)

    def _handle_request_noblock(self) -> None:
        """Take one connection, then more while the backlog has them (one wake-up)."""
        super()._handle_request_noblock()
        if threading.get_ident() != self._serving_ident:
            return  # handle_request(): exactly one request
        if self._io_accept_wanted and self._io is not None:
            self._start_io_accept()  # the listener is the I/O thread's from now on
            return
        for _ in range(self.accept_batch - 1):
            if not self._may_accept_more():
                return
            super()._handle_request_noblock()

    # -- accepting in the I/O thread ------------------------------------------------

    def _io_may_accept(self) -> bool:
        """True if this server's listener suits accepting in the I/O thread."""
        listener = getattr(self, "socket", None)
        return (
            bool(self.accept_in_io_thread)
            # A plain socket: an ssl.SSLSocket's accept shakes hands, which blocks.
            and type(listener) is socket.socket
            and listener.type == socket.SOCK_STREAM
            and listener.gettimeout() is None
            and listener.fileno() == self.fileno()
            # A blocking listener other processes may share (adopted, inherited):
            # one of them may take the connection a poll showed, and accept()
            # would then block the thread that serves every connection.
            and not (getattr(self, "socket_adopted", False) and os.get_blocking(listener.fileno()))
        )

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """As ``BaseServer.serve_forever()``; what ends it when the loop accepts (a
        failed listener, an exception from a hook on the accept path) ends it with
        the same exception when the I/O thread accepts."""
        self._accept_fatal = None
        try:
            super().serve_forever(poll_interval)
        finally:
            fatal, self._accept_fatal = self._accept_fatal, None
        if fatal is not None:
            raise fatal

    def _serving_started(self) -> None:
        super()._serving_started()
        if self._io_may_accept():
            if self._io is None:
                self._io_accept_wanted = True  # the first connection starts the thread
            else:
                self._start_io_accept()

    def _start_io_accept(self) -> None:
        """In the loop thread: give the listener to the I/O thread."""
        self._io_accept_wanted = False
        self._io_accepting = True
        self._hold_accept(IO_ACCEPTS)  # announced: the I/O thread watches it

    def _serving_stopped(self) -> None:
        self._io_accept_wanted = False
        self._io_accepting = False
        # Even if a failed listener turned accepting off already: no hold outlives
        # the loop (releasing what is not held changes nothing).
        self._release_accept(IO_ACCEPTS)  # announced: the I/O thread lets go
        super()._serving_stopped()

    def _io_gate_changed(self) -> None:
        """The gate's subscriber (any thread): the I/O thread looks again."""
        io_loop = self._io
        if io_loop is not None and self.accept_in_io_thread:
            io_loop.call_soon(io_loop.sync_listener)

    def _io_listener(self) -> int:
        """The descriptor the I/O thread should watch for connections, or -1."""
        if (
            self._io_accepting
            and not self._stop_requested
            and self.accept_gate.held_only_by(IO_ACCEPTS)
        ):
            return self.fileno()
        return -1

    def _io_accept(self) -> None:
        """In the I/O thread: the listener is readable. Take up to ``accept_batch``
        connections, each through the whole accept path, opened right here."""
        io_loop = self._io
        assert io_loop is not None
        try:
            for _ in range(self.accept_batch):
                if self._io_listener() < 0:  # held, closed or stopped meanwhile
                    io_loop.sync_listener()
                    return
                super()._handle_request_noblock()
                if not self._io_listener_ready():
                    return
        except BaseException as exc:
            # What ends serve_forever() when the loop accepts ends it here too:
            # stop watching, and hand the exception to the loop, which re-raises it.
            self._io_accepting = False
            io_loop.sync_listener()
            if self._accept_fatal is None:
                self._accept_fatal = exc
            self._BaseServer__shutdown_request = True

    def _io_listener_ready(self) -> bool:
        """A zero-timeout poll of the listener: is another connection waiting?

        The listener stays in blocking mode (as the loop left it), so the I/O
        thread accepts only what a poll has just shown waiting; nobody else takes
        it in between (a drain accepts only after the gate's barrier)."""
        fd = self.fileno()
        probe = self._io_probe
        if probe is None or probe[0] != fd:
            if fd < 0:
                return False
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            probe = self._io_probe = (fd, poller)
        ready = probe[1].poll(0)
        # POLLIN only: a closed listener reports POLLNVAL, which is no connection.
        return bool(ready) and bool(ready[0][1] & select.POLLIN)

    def _backoff_in_loop(self) -> bool:
        # Accept back-off in the I/O thread holds the gate; the loop times it.
        io_loop = self._io
        return super()._backoff_in_loop() or (
            io_loop is not None and threading.get_ident() == io_loop.ident
        )

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
                io_loop = IOLoop(self, self._io_accept)
                try:
                    io_loop.thread.start()
                except BaseException:
                    io_loop.discard()  # the next connection tries again
                    raise
                self._io = io_loop
            return self._io

    def process_request(self, request: Any, client_address: Any) -> None:
        """Open the connection in the I/O thread (hand it over from any other)."""
        io_loop = self._io
        if io_loop is not None and threading.get_ident() == io_loop.ident:
            io_loop.open(request.fileno(), request, client_address, self._track(
                request, client_address), registered=False)
            return
        io_loop = self._io_loop()  # first: a closed server tracks nothing
        entry = self._track(request, client_address)
        if not io_loop.hand_over(request, client_address, entry):
            self._ended(entry)
            raise RuntimeError(f"{type(self).__name__} is closed: no I/O thread runs")

    def _close_idle(self) -> None:
        """Drain: the I/O thread shuts idle connections (``IOLoop.close_idle``)."""
        io_loop = self._io
        if io_loop is not None:
            io_loop.call_soon(io_loop.close_idle)

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
