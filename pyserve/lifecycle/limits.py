"""Protection per connection: connection limits, idle timeout, deadline, line length.

Theory of operation
-------------------
A threaded server spends a thread (or a pool worker) per connection, so a peer
that connects and then dawdles costs real capacity. Two kinds of guard exist,
all off by default (the stdlib's behaviour) and on, with safe values, in pyserve's
own thread-pool servers (:mod:`pyserve.pool.workers`):

**On the server** (:class:`ConnectionLimits`, inherited by every server), checked
as each connection is accepted, before ``verify_request()``, in the locked step
that enters it in the registry (``RequestRegistry.admit``):

- ``max_connections``: requests in flight at once, server-wide;
- ``max_connections_per_client``: in flight at once from one client host.

A connection over a limit is closed at once, counted as ``rejected`` and logged;
the log is rate-limited (one line per reason per ``rejection_log_interval``
seconds, carrying the number suppressed) so a flood cannot flood the log.

**In the stream handler** (:class:`~pyserve.request.StreamRequestHandler`), each
read from ``rfile`` obeys:

- ``idle_timeout``: no byte for this many seconds ends the connection;
- ``request_deadline``: the whole connection may last this many seconds (the
  stdlib's ``timeout`` is per ``recv()``, so a client sending one byte a second
  holds a thread forever);
- ``max_line_length``: ``rfile.readline()`` (and iteration) raise
  :class:`~pyserve.errors.LineTooLong` instead of buffering an endless line, so a
  200 MB line costs at most this many bytes of memory;
- ``busy_idle_timeout``: on a server that can be *saturated* (the thread pool:
  every worker busy and requests waiting), a connection idle this long while it
  is saturated is closed. Idle keep-alive clients would otherwise hold every
  worker while new clients wait out the full ``idle_timeout``; this frees a
  worker within seconds, and only when someone is waiting for one. The pool
  also frees one at once, the moment a client waits, from a connection that has
  sent nothing yet or is idle past this already (:meth:`SocketReader.give_up`).

These limits sit at the socket, under ``rfile``'s buffer, for plain and TLS
sockets alike.

Each may be set on the handler class or, for every handler of a server, on the
server (the handler's value wins when not None). An expired timer raises
:class:`~pyserve.errors.RequestTimedOut`; like ``LineTooLong`` it closes the
connection with one WARNING line naming the reason and the client, and counts as
``timed_out`` or ``errored`` in ``server.stats``.

With all three unset, ``rfile`` is the fast reader of :mod:`pyserve.request`:
one small Python frame per buffer refill (it notes whether the connection is
idle, for graceful drain), C from ``readline()`` to ``recv_into`` otherwise. A
deadline also recomputes the remaining time per refill; the line limit needs a
frame per ``readline()``. Only handlers that ask for them pay.
"""

from __future__ import annotations

import io
import select
import socket
import sys
import time

from pyserve.errors import LineTooLong, RequestTimedOut
from pyserve.lifecycle.registry import RequestRegistry
from pyserve.logs import WARNING, DeferredLogger, RateLimitedLog, escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

__all__ = ["ConnectionLimits", "DeadlineReader", "LineLimitedReader", "SocketReader", "client_host"]

logger = DeferredLogger("pyserve")

_NEVER = float("inf")


def client_host(client_address: Any) -> Any:
    """The part of an address that identifies a client: the host of (host, port)."""
    if type(client_address) is tuple and client_address:
        return client_address[0]
    return client_address


class ConnectionLimits:
    """Server-side connection limits (a base of every server).

    Class attributes that may be overridden (None: no limit):

    - ``max_connections``: requests in flight at once
    - ``max_connections_per_client``: requests in flight at once per client host
    - ``idle_timeout``, ``request_deadline``, ``max_line_length``: defaults for
      every stream handler of this server (see the module docstring)
    - ``rejection_log_interval``: at most one log line per reason this often
    """

    max_connections: Optional[int] = None
    max_connections_per_client: Optional[int] = None
    idle_timeout: Optional[float] = None
    request_deadline: Optional[float] = None
    max_line_length: Optional[int] = None
    #: A flood of rejections is summarised: one line per reason per minute at most.
    rejection_log_interval: float = 60.0

    # Provided by Lifecycle, beside this class in BaseServer.
    _registry: RequestRegistry
    # Provided by BaseServer: one line per reason per rejection_log_interval.
    _peer_fault_log: RateLimitedLog

    if TYPE_CHECKING:

        def _rejected(self, client_address: Any, reason: str) -> None: ...

    def _guard_request(self, request: Any) -> None:
        """Give a connection's socket the server's ``idle_timeout`` as its timeout
        (if it has none), so a handler that reads the raw socket (``recv()``, not
        ``rfile``) is protected too."""
        idle = self.idle_timeout
        if idle is not None and isinstance(request, socket.socket):
            try:
                if request.gettimeout() is None:
                    request.settimeout(idle)
            except OSError:
                pass  # closed already: the handler will find out

    def _over_limit(self, client_address: Any, reason: str) -> None:
        self._rejected(client_address, reason)
        # ``reason`` is the registry's own text ("max_connections=2 reached"),
        # never the peer's, so it may key the log.
        self._peer_fault_log.report(
            WARNING,
            reason,
            "Rejected a connection from %s: %s",
            escape(client_address),
            reason,
        )


def saturation_probe(server: Any) -> Optional[Callable[[], bool]]:
    """The server's ``saturated()`` (a thread pool's: requests wait for a worker),
    or None for a server that cannot be saturated."""
    saturated = getattr(server, "saturated", None)
    return saturated if callable(saturated) else None


def handler_setting(handler: Any, name: str) -> Any:
    """The handler's own value of a protection, else its server's, else None."""
    value = getattr(handler, name, None)
    if value is None:
        value = getattr(handler.server, name, None)
    return value


class SocketReader(io.RawIOBase):
    """The raw layer under ``rfile``: reads go to ``socket.recv_into``, and note
    whether the connection is *idle* for graceful drain.

    It answers what ``socket.SocketIO`` (the stdlib's raw layer) answers, so code
    inspecting ``rfile.raw``, ``rfile.name`` or ``rfile.mode`` works unchanged.

    Idle tracking (:mod:`pyserve.lifecycle.drain` states the rule): ``waiting``
    is true while a read blocks; ``answered`` is true until a read returns bytes,
    and ``wfile`` sets it again when the handler writes with nothing left in
    ``rfile``'s buffer (it compares ``received``, the bytes read so far, which
    :meth:`tell` returns, with ``rfile.tell()``). Plain attribute stores, no
    lock: the drain reads them from another thread, and the one ordering that
    matters (a read starting as the drain starts) is covered from both sides:
    the drain sets ``drain_requested`` and then looks at ``waiting``, the reader
    sets ``waiting`` and then looks at ``drain_requested``.
    """

    #: The mode ``makefile()`` would have been given.
    mode = "rb"

    # Class-level defaults: a connection stores only what changes.
    waiting = False  #: a read is blocked on the connection now
    answered = True  #: everything received has been answered (nothing yet, at first)
    received = 0  #: bytes read from the connection so far
    drain_requested = False  #: a drain asked: shut for reading as soon as idle
    #: ``time.monotonic()`` when the blocked read began (readers that time their
    #: reads say; infinity: unknown), for :meth:`give_up`.
    idle_since = _NEVER

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._recv_into: Callable[[Any], int] = sock.recv_into
        if not isinstance(sock, socket.socket) or type(sock) is socket.socket:
            return
        ssl = sys.modules.get("ssl")  # only a process that imported ssl has TLS sockets
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            self._recv_into = self._tls_recv_into
            self._readable = select.poll()
            self._readable.register(sock.fileno(), select.POLLIN)

    def _tls_recv_into(self, buffer: Any) -> int:
        """``recv_into`` of a TLS socket, waiting for the socket *before* OpenSSL
        reads it: a drain's ``SHUT_RD`` then ends the read here, with the TLS
        session intact, so the server still says close_notify. (Seen by
        OpenSSL, the same EOF is a protocol error: it answers with an alert.)"""
        sock: Any = self._sock
        if not sock.pending():
            timeout = sock.gettimeout()
            if timeout != 0.0:
                if not self._readable.poll(None if timeout is None else timeout * 1000.0):
                    raise socket.timeout("timed out")
                if self.drain_requested and _at_eof(sock):
                    return 0
        count: int = sock.recv_into(buffer)
        return count

    def readinto(self, buffer: Any) -> int:
        self.waiting = True
        if self.drain_requested and self.answered:
            self.shut()  # idle during a drain: this read returns EOF
        try:
            count: int = self._recv_into(buffer)
        finally:
            self.waiting = False
        if count:
            self.answered = False
            self.received += count
        return count

    @classmethod
    def standing_in(cls, sock: socket.socket) -> SocketReader:
        """A reader for a connection whose handler has not begun: what a server
        reads before it (a TLS handshake, a PROXY header) is waiting for the
        peer, so a drain or a saturated pool may end it like an idle read. The
        server sets ``received`` (and clears ``answered``) once the peer is
        mid-way through what it sends (a TLS hello; never for a PROXY header,
        which a real proxy sends whole), and clears ``waiting`` when it is
        done; the handler's own reader then replaces it."""
        reader = cls(sock)
        reader.waiting = True
        return reader

    def tell(self) -> int:
        """Bytes read from the connection so far (``rfile.tell()``: bytes consumed)."""
        return self.received

    def shut_if_idle(self) -> bool:
        """For a drain (any thread): from now on, shut the connection for reading
        when it is idle; True if it is idle now and was shut."""
        self.drain_requested = True
        if self.waiting and self.answered:
            self.shut()
            return True
        return False

    def give_up(self, now: float, idle_for: float) -> bool:
        """For a saturated pool (any thread): shut the connection for reading if
        its worker is better spent on a waiting client; True if it was shut.

        Two kinds qualify, and only while their read blocks: a connection that
        has not sent a byte since it was accepted, and one that was answered and
        has been idle at least ``idle_for`` seconds (``now`` is
        ``time.monotonic()``). A client in the middle of a request, or one that
        talks again within ``idle_for``, keeps its worker. The handler sees
        end-of-file, as in a drain; a TLS session still ends with close_notify.
        """
        if not self.waiting or self.drain_requested:
            return False
        if self.received and not (self.answered and now - self.idle_since >= idle_for):
            return False
        self.drain_requested = True  # its next idle read ends too; TLS closes cleanly
        self.shut()
        return True

    def shut(self) -> None:
        """``shutdown(SHUT_RD)``: a blocked read returns EOF, writes still work.

        Called on the plain socket's method even for TLS: ``SSLSocket.shutdown()``
        would also drop the TLS session, and a reply written after it would go
        out unencrypted."""
        try:
            _shutdown(self._sock, socket.SHUT_RD)
        except OSError:
            pass  # closed or reset already: its handler is ending anyway

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def name(self) -> int:
        """The socket's descriptor (-1 once closed), as ``SocketIO.name`` is."""
        return self._sock.fileno()

    def write(self, data: Any) -> int:
        """Refuse, as a read-only ``SocketIO`` does (PyPy's RawIOBase has no write)."""
        raise io.UnsupportedOperation("rfile is not writable")


# The plain socket's methods: on a TLS socket they act on the transport only.
_shutdown = socket.socket.shutdown
_peek = socket.socket.recv


def _at_eof(sock: socket.socket) -> bool:
    """Whether the socket's next read is end-of-file (without reading data)."""
    try:
        return _peek(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset: the read will fail as well; end it here


class DeadlineReader(SocketReader):
    """A raw reader that enforces an idle timeout and a whole-connection deadline.

    With ``saturated`` (a callable the server provides) it also enforces
    ``busy_idle``: while the server has requests waiting for a worker, a
    connection idle that long is closed, so idle keep-alive clients cannot hold
    every worker while others wait. The wait is cut into slices of ``busy_idle``
    to look at the server again; a busy connection never notices.
    """

    def __init__(
        self,
        sock: socket.socket,
        idle: Optional[float],
        deadline: Optional[float],
        busy_idle: Optional[float] = None,
        saturated: Optional[Callable[[], bool]] = None,
    ) -> None:
        super().__init__(sock)
        self._idle = _NEVER if idle is None else idle
        self._deadline_at = _NEVER if deadline is None else time.monotonic() + deadline
        self._deadline = deadline
        self._saturated = saturated if busy_idle is not None else None
        self._busy_idle = _NEVER if busy_idle is None else busy_idle
        # SocketReader.readinto (and its idle tracking) reads through _recv_into:
        # here that is the timed wait, which reads through the socket's own.
        self._read_now = self._recv_into
        self._recv_into = self._wait_and_read

    def _wait_and_read(self, buffer: Any) -> int:
        self.idle_since = waited_since = time.monotonic()
        try:
            return self._wait_until_read(buffer, waited_since)
        finally:
            self.idle_since = _NEVER

    def _wait_until_read(self, buffer: Any, waited_since: float) -> int:
        while True:
            now = time.monotonic()
            remaining = self._deadline_at - now
            if remaining <= 0:
                raise RequestTimedOut(f"request deadline of {self._deadline}s passed")
            idle_left = self._idle - (now - waited_since)
            if idle_left <= 0:
                raise RequestTimedOut(f"no data for idle_timeout={self._idle}s")
            wait = min(idle_left, remaining, self._busy_idle)
            self._sock.settimeout(wait)
            try:
                return self._read_now(buffer)
            except socket.timeout:
                saturated = self._saturated
                if saturated is not None and saturated():
                    raise RequestTimedOut(
                        f"no data for {self._busy_idle}s while every worker was busy "
                        "and requests were waiting"
                    ) from None


class LineLimitedReader(io.BufferedReader):
    """A buffered reader whose ``readline()`` refuses lines over a limit.

    Reads at most ``max_line_length + 1`` bytes per call, so memory stays bounded
    however long the peer's line is; a line that has no newline within the limit
    raises :class:`~pyserve.errors.LineTooLong`.
    """

    def __init__(self, raw: io.RawIOBase, buffer_size: int, max_line_length: int) -> None:
        super().__init__(raw, buffer_size)
        self.max_line_length = max_line_length

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = self.max_line_length
        if size is not None and 0 <= size <= limit:
            return super().readline(size)
        line = super().readline(limit + 1)
        if len(line) > limit and not line.endswith(b"\n"):
            raise LineTooLong(f"line longer than max_line_length={limit} bytes")
        return line


def make_rfile(handler: Any, fast_raw: io.RawIOBase, size: int) -> Optional[io.BufferedIOBase]:
    """The protected ``rfile`` for a stream handler, or None if none is asked for.

    Works on any socket with ``recv_into`` (plain or TLS): the limits sit at the
    socket, under the buffer, so no transport skips them.
    """
    idle = handler_setting(handler, "idle_timeout")
    deadline = handler_setting(handler, "request_deadline")
    max_line = handler_setting(handler, "max_line_length")
    busy_idle = handler_setting(handler, "busy_idle_timeout")
    saturated = saturation_probe(handler.server) if busy_idle is not None else None
    if saturated is None:
        busy_idle = None
    if idle is None and deadline is None and max_line is None and busy_idle is None:
        return None
    sock = handler.connection
    raw = fast_raw
    if deadline is not None or idle is not None or busy_idle is not None:
        stdlib_timeout = handler.timeout
        if stdlib_timeout is not None and (idle is None or stdlib_timeout < idle):
            idle = stdlib_timeout
        raw = DeadlineReader(sock, idle, deadline, busy_idle, saturated)
    if max_line is None:
        return io.BufferedReader(raw, size)
    return LineLimitedReader(raw, size, max_line)
