"""The I/O thread of a multiplexing server: one poller, many connections.

:class:`IOLoop` is what :class:`~pyserve.multiplex.server.MultiplexingMixIn` starts
(see that module for the whole picture). It owns one poller (epoll on Linux, else
poll), the open connections by file descriptor, what other threads hand over,
and, while it may accept, the listener:

* ``hand_over()`` (a connection another thread accepted: the serve loop's first
  one, which starts this thread, or a drain's last ones) and ``call_soon()``
  (any thread) go through the loop's :class:`~pyserve.multiplex.inbox.Inbox`
  (the only state other threads touch); a connection handed over reports
  itself writable, and ``arrive()`` opens it: the handler is made, watched
  for reading, and gets ``connection_made()``;
* the listener, while the server lets this thread accept (``sync_listener()``
  watches it or stops, as the server's accept gate says): when it is readable,
  the server's accept function (``_io_accept()``, given to the loop) takes
  connections and opens each here at once.

``dispatch()`` is the hot path: the usual event (readable, and reading is all
the connection waits for) is served inline: one read (the function
:mod:`~pyserve.multiplex.reading` chose when it opened), the bytes to
``data_received()``; any other event goes to ``serve_other()``, which flushes
buffered output when writable, then reads. What the handlers write in a turn
is sent at its end, each connection's with one call (``send_gathered()``, see
:mod:`~pyserve.multiplex.sending`).
``watch()`` re-registers what a handler needs (write when output waits; read
unless closing, at EOF or over ``max_write_buffer``);
``finish()`` ends a connection exactly once. An exception from a callback ends
that connection only (``handle_error()`` logs it). The loop implements the
:class:`~pyserve.multiplex.connection.Transport` protocol its handlers rely on.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Optional

from pyserve.base import BaseServer
from pyserve.errors import RequestTimedOut
from pyserve.lifecycle.limits import handler_setting
from pyserve.lifecycle.registry import LiveRequest
from pyserve.multiplex.connection import ConnectionHandler
from pyserve.multiplex.inbox import Inbox
from pyserve.multiplex.reading import SMALL_READ, prepare, read_rest
from pyserve.multiplex.sending import flush, send_gathered

__all__ = ["IOLoop"]

logger = logging.getLogger("pyserve")

# The poller: epoll where there is one (Linux), else poll(2). Both take the same
# event bits (EPOLLIN == POLLIN, ...) and the same register/modify/unregister
# calls; only poll()'s timeout unit differs. The selectors module would add a key
# object lookup and a tuple per ready connection, on every event.
_EPOLL = hasattr(select, "epoll")
_READ, _WRITE = select.POLLIN, select.POLLOUT
# Reported whether asked for or not: the connection failed or hung up. Whatever is
# watched (reading, writing or both) then runs, and finds out how.
_FAULT = select.POLLERR | select.POLLHUP | getattr(select, "POLLNVAL", 0)
_NEVER = float("inf")


def _new_poller() -> tuple[Any, float]:
    """A poller and what a timeout in seconds is multiplied by for its ``poll()``."""
    if _EPOLL:
        return select.epoll(), 1.0
    return select.poll(), 1000.0


class IOLoop:
    """The I/O thread of one server: its poller, connections and hand-over queue.

    It implements :class:`~pyserve.multiplex.connection.Transport` (``watch``,
    ``finish``) for its handlers.
    """

    def __init__(self, server: BaseServer, accept: Callable[[], None]) -> None:
        self.server = server
        self.accept = accept  # the server's: takes what the listener has, opens it here
        self.poller, self.timeout_scale = _new_poller()
        self.inbox = Inbox(self.poller)  # what other threads hand over
        self.wake_fd = self.inbox.wake_fd
        # Open connections by file descriptor: what poll() reports is a number.
        self.connections: dict[int, ConnectionHandler[Any]] = {}
        self.listener_fd = -1  # the listener, while this thread accepts
        self.stopping = False
        # The connections given output in this turn, sent at its end (see
        # pyserve.multiplex.sending); every handler opened here appends to it.
        self.gathered: list[ConnectionHandler[Any]] = []
        # A drain began: shut connections for reading as soon as they are idle.
        self.closing_idle = False
        # Idle timeouts: the earliest moment one may have expired (inf: none set).
        # Reads only push expiries later, so one scan at that moment is enough.
        self.next_expiry = _NEVER
        self.thread = threading.Thread(target=self.run, name="pyserve-io", daemon=True)
        self.ident: Optional[int] = None  # the thread's, once it runs (read per connection)

    # -- from any thread -------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.inbox.call_soon(callback)

    def hand_over(self, request: Any, client_address: Any, entry: LiveRequest) -> bool:
        """Give the I/O thread a connection just accepted (False: it has stopped).

        No wake-up byte: the connection is watched at once for reading *and*
        writing, and a new connection is writable, so the next ``poll()`` reports
        it and the I/O thread opens it (``arrive()``) in the same turn as any
        other work. That saves two system calls and a callback per connection.
        """
        return self.inbox.hand_over(request, client_address, entry)

    def discard(self) -> None:
        """Release what a loop whose thread never started holds."""
        self.close_poller()
        self.inbox.release()

    def close_poller(self) -> None:
        if _EPOLL:  # (a poll object holds no descriptor)
            self.poller.close()

    # -- in the I/O thread -----------------------------------------------------------

    def report(self, request: Any, client_address: Any) -> None:
        """``handle_error()`` for the exception being handled; if that raises too,
        log it and carry on: the one I/O thread serves every connection, so a
        broken error hook must cost one connection, never all of them."""
        try:
            self.server.handle_error(request, client_address)
        except Exception:
            logger.exception("handle_error() failed in the I/O thread")

    def shut(self, request: Any, client_address: Any) -> None:
        """``shutdown_request()``; if that raises, report it and close the socket
        anyway, so the client is not left waiting for the garbage collector."""
        try:
            self.server.shutdown_request(request)
        except Exception:
            self.report(request, client_address)
            request.close()

    def run(self) -> None:
        self.ident = threading.get_ident()
        try:
            self.serve()
        finally:  # stopped, or a BaseException escaped a callback: close everything
            self.stopping = True
            for handler in list(self.connections.values()):
                self.finish(handler, None)
            for request, client_address, entry in self.inbox.close(self.close_poller):
                self.shut(request, client_address)
                self.server._ended(entry)

    def serve(self) -> None:
        poll = self.poller.poll
        scale = self.timeout_scale
        gathered = self.gathered
        while not self.stopping:
            timeout = -1.0  # forever: both pollers take -1 (PyPy's epoll refuses None)
            if gathered:
                timeout = 0.0  # output gathered after the last turn: a turn now
            elif self.next_expiry != _NEVER:
                timeout = max(0.0, self.next_expiry - time.monotonic()) * scale
            self.dispatch(poll(timeout))
            if gathered:
                send_gathered(self)
            if self.next_expiry != _NEVER and self.next_expiry <= time.monotonic():
                self.expire_idle()  # no clock read per turn while no idle timeout is set

    def dispatch(self, ready: list[tuple[int, int]]) -> None:
        """Serve one poll()'s readiness: the hot path, so the read is written inline."""
        connections = self.connections
        closing_idle = self.closing_idle
        small = SMALL_READ
        read_only = _READ
        for fd, reported in ready:
            try:
                handler = connections[fd]  # cheaper than get() when found: the usual case
            except KeyError:
                handler = None  # (handled outside: no KeyError context on what follows)
            if handler is None:
                self.serve_loop_event(fd)
                continue
            if reported != read_only or handler._events != read_only:
                self.serve_other(handler, reported)  # writable, failed, or paused
                continue
            # The usual event, inline: readable, and reading is all it waits for.
            # (_recv is an instance attribute: read as an attribute, then called,
            # it is a specialised load; handler._recv() would look up a method.)
            recv = handler._recv
            try:
                data = recv()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                self.call(handler, _raise, exc)  # a reset: logged as the peer's going
                continue
            if data:
                if len(data) >= small and handler._recv is not handler._recv_full:
                    data = read_rest(handler, data)  # once per connection at most
                if handler._idle is not None:
                    handler._last_read = time.monotonic()
                handler._unanswered = True  # until the handler writes
                try:
                    handler.data_received(data)
                except Exception as exc:
                    self.failed(handler, exc)
                if closing_idle:
                    self.shut_if_idle(handler)
                continue
            self.ended(handler)

    def serve_loop_event(self, fd: int) -> None:
        """An event for no open connection: a wake-up, the listener, a connection
        handed over, or a stale event of one ended earlier in this turn."""
        if fd == self.wake_fd:
            self.take_incoming()
        elif fd == self.listener_fd and fd not in self.inbox.arriving:
            self.accept()
        else:
            self.arrive(fd)

    def serve_other(self, handler: ConnectionHandler[Any], reported: int) -> None:
        """Any other event of an open connection: flush, then read if it may."""
        # (An fd ended earlier in this turn may already serve a new connection:
        # then this event is stale, and reading or writing finds nothing.)
        events = (_READ | _WRITE if reported & _FAULT else reported) & handler._events
        if events & _WRITE:
            flush(self, handler)
        if not events & _READ or handler._closing:
            return
        try:
            data = handler._recv()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.call(handler, _raise, exc)
            return
        if not data:
            self.ended(handler)
            return
        if len(data) >= SMALL_READ and handler._recv is not handler._recv_full:
            data = read_rest(handler, data)
        if handler._idle is not None:
            handler._last_read = time.monotonic()
        handler._unanswered = True
        self.call(handler, handler.data_received, data)
        if self.closing_idle:
            self.shut_if_idle(handler)

    def ended(self, handler: ConnectionHandler[Any]) -> None:
        """The peer finished sending."""
        handler._eof = True  # EOF stays readable: stop watching for it
        try:
            handler.eof_received()  # by default: close(), which finishes it at once
        except Exception as exc:
            self.failed(handler, exc)
        if not handler._closed:
            self.watch(handler)

    def take_incoming(self) -> None:
        # Only what was queued before this turn (the batch taken here): a callback
        # that queues another (a long job done in pieces) lets every connection be
        # served in between.
        for callback in self.inbox.take_callbacks():
            try:
                callback()
            except Exception:
                self.report(None, None)
        if self.closing_idle:  # a callback may have answered the last request
            for handler in list(self.connections.values()):
                self.shut_if_idle(handler)

    def sync_listener(self) -> None:
        """Watch the listener exactly while the server lets this thread accept."""
        server: Any = self.server
        wanted = server._io_listener()
        watched = self.listener_fd
        if wanted == watched:
            return
        if watched >= 0:
            self.listener_fd = -1
            # Closing a descriptor takes it out of the poller: a closed listener's
            # number may belong to a new socket by now, never unregister that.
            if server.fileno() == watched:
                try:
                    self.poller.unregister(watched)
                except OSError:
                    pass
        if wanted >= 0:
            self.poller.register(wanted, _READ)
            self.listener_fd = wanted

    def arrive(self, fd: int) -> None:
        """Open the connection handed over on ``fd``, if one was (else: stale)."""
        arrival = self.inbox.take_arrival(fd)
        if arrival is not None:
            self.open(fd, *arrival)

    def open(
        self,
        fd: int,
        request: Any,
        client_address: Any,
        entry: LiveRequest,
        registered: bool = True,
    ) -> None:
        """Make the handler and start watching the connection (``registered``:
        ``hand_over()`` registered it already), then ``connection_made()``."""
        server = self.server
        try:
            request.setblocking(False)
            handler: ConnectionHandler[Any] = server.RequestHandlerClass(
                request, client_address, server
            )
            if not isinstance(handler, ConnectionHandler):
                raise TypeError(f"{handler!r} is not a pyserve.ConnectionHandler")
        except Exception as exc:
            if registered:
                self.poller.unregister(fd)  # before the close frees the number
            server._failed(request, exc)
            self.report(request, client_address)
            self.shut(request, client_address)
            server._ended(entry, exc)
            return
        handler._loop = self
        handler._entry = entry
        handler._send = request.send
        handler._gathered = self.gathered
        handler._fd = fd
        handler._idle = handler_setting(handler, "idle_timeout")
        if handler._idle is not None:
            handler._last_read = time.monotonic()
            self.next_expiry = min(self.next_expiry, handler._last_read + handler._idle)
        if registered:
            self.poller.modify(fd, _READ)  # hand_over() watched writing too, to be seen
        else:
            self.poller.register(fd, _READ)
        self.connections[fd] = handler
        handler._events = _READ
        server._started(entry)
        try:
            handler.connection_made()
        except Exception as exc:
            self.failed(handler, exc)
        prepare(handler, request, fd)
        if self.closing_idle:
            self.shut_if_idle(handler)

    def call(
        self, handler: ConnectionHandler[Any], callback: Callable[..., None], *args: Any
    ) -> None:
        """Run one callback; an exception ends that connection (and is logged)."""
        try:
            callback(*args)
        except Exception as exc:
            self.failed(handler, exc)

    def failed(self, handler: ConnectionHandler[Any], exc: Exception) -> None:
        """A callback raised ``exc`` (handled now): log it, end that connection."""
        self.server._failed(handler.request, exc)
        self.report(handler.request, handler.client_address)
        self.finish(handler, exc)

    def watch(self, handler: ConnectionHandler[Any]) -> None:
        """Watch what ``handler`` needs now: output to send, room to read."""
        if handler._closed or handler._later:
            return  # (gathered output: watched once the turn's end has sent it)
        events = _WRITE if handler._output else 0
        if (
            not handler._closing
            and not handler._eof
            and handler._output_size <= handler.max_write_buffer
        ):
            events |= _READ
        if events != handler._events:
            fd = handler._fd
            if not events:
                self.poller.unregister(fd)
            elif handler._events:
                self.poller.modify(fd, events)
            else:
                self.poller.register(fd, events)
            handler._events = events

    def finish(self, handler: ConnectionHandler[Any], exc: Optional[BaseException]) -> None:
        if handler._closed:
            return
        handler._closed = handler._closing = True
        request = handler.request
        fd = handler._fd
        if handler._events:
            handler._events = 0
            try:
                self.poller.unregister(fd)
            except OSError:
                pass  # the handler closed its socket itself: the kernel forgot it
        # Forget the fd before the socket closes: the number is free for reuse then.
        if self.connections.get(fd) is handler:
            del self.connections[fd]
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

    def close_idle(self) -> None:
        """A drain began (see :mod:`pyserve.lifecycle.drain`): shut every idle
        connection for reading now, and each other one as soon as it is idle."""
        self.closing_idle = True
        for handler in list(self.connections.values()):
            self.shut_if_idle(handler)

    def shut_if_idle(self, handler: ConnectionHandler[Any]) -> None:
        """``shutdown(SHUT_RD)`` if the connection is idle: no input since the
        handler last wrote, nothing left to send. What the client sent before is
        still read (the kernel keeps it), then EOF: ``eof_received()`` ends it."""
        if handler._unanswered or handler._output or handler._closing or handler._eof:
            return
        try:
            handler.request.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # reset or closed already: the loop finds out when it reads

    def expire_idle(self) -> None:
        """Close the connections silent for longer than their idle timeout."""
        now = time.monotonic()
        self.next_expiry = _NEVER
        for handler in list(self.connections.values()):
            if handler._idle is None or handler._closed:
                continue
            expiry = handler._last_read + handler._idle
            if expiry <= now:
                error = RequestTimedOut(f"no data for {handler._idle:g} s")
                self.call(handler, _raise, error)
            else:
                self.next_expiry = min(self.next_expiry, expiry)


def _raise(exc: BaseException) -> None:
    raise exc
