"""The network side of the RESP server: the handler forms, the server class, output limits.

Everything else (parser, encoding, store, sessions, command tables) is sans-IO and
lives beside this module; :mod:`handlers.resp` explains how they cooperate.

Output is bounded per client. A pipeline is answered in pieces
(``reply_chunk`` bytes of replies at a time, the store lock released between
them). The multiplexed form runs one piece per turn of its I/O loop, so other
clients are served between the pieces, and stops running a client's commands
while more than ``max_write_buffer`` bytes of its replies wait to be sent (the
I/O loop stops reading from it too), resuming in ``write_buffer_drained()``; the threaded form
blocks in ``sendall()`` between pieces. A single reply that would take a client's
pending output past ``max_output_buffer`` closes that connection instead (Redis's
client-output-buffer-limit). So a client that pipelines big GETs and never reads
costs at most about ``max_write_buffer + max_output_buffer`` bytes, whatever it
asks for.

Faults of a peer (a protocol error, an output over the limit, silence past the
idle timeout) are logged on ``pyserve.resp`` with every peer-controlled character
escaped, at most one line per reason per ``fault_log_interval`` seconds (with the
number of lines left out).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Optional

from handlers._per_server import PerServer
from handlers.resp.commands import open_session
from handlers.resp.encoding import encode_error
from handlers.resp.protocol import Command, CommandParser
from handlers.resp.session import ServerState, Session
from handlers.resp.store import DEFAULT_MAX_MEMORY
from pyserve import (
    ConnectionHandler,
    MultiplexingTCPServer,
    ProtocolError,
    StreamRequestHandler,
)

__all__ = ["RespConnection", "RespHandler", "RespServer", "server_state"]

logger = logging.getLogger("pyserve.resp")

_states: PerServer[ServerState] = PerServer(ServerState)


def server_state(server: Any, max_memory: int = DEFAULT_MAX_MEMORY) -> ServerState:
    """The shared state (store and counters) of ``server``, created on first use."""
    state = getattr(server, "resp_state", None)
    if isinstance(state, ServerState):
        return state
    return _states.get(server, lambda: ServerState(max_memory))


class _RespSettings:
    """What both forms of the handler share: the settings (documented on
    :class:`RespHandler`), how a connection starts, and the peer-fault log."""

    server: Any
    client_address: Any
    max_memory: int = DEFAULT_MAX_MEMORY
    max_bulk_length: int = CommandParser.max_bulk_length
    max_array_length: int = CommandParser.max_array_length
    max_inline_length: int = CommandParser.max_inline_length
    max_command_size: int = CommandParser.max_command_size
    #: 64 KiB holds a few thousand pipelined small commands: one recv per batch.
    receive_size: int = 65536
    #: Replies sent per piece of a pipeline; the store lock is released between
    #: pieces. 64 KiB is far above a -P 16 batch of small replies (no cost there).
    reply_chunk: int = 64 * 1024
    #: A reply that would take a client's unsent output past this closes the
    #: connection. 64 MiB: above the largest value (8 MiB) and a KEYS reply over
    #: a full default store, far below what one client may pin otherwise.
    max_output_buffer: int = 64 * 1024 * 1024
    #: At most one log line per fault reason this often (seconds).
    fault_log_interval: float = 60.0

    def _new_parser(self) -> CommandParser:
        return CommandParser(
            max_bulk_length=self.max_bulk_length,
            max_array_length=self.max_array_length,
            max_inline_length=self.max_inline_length,
            max_command_size=self.max_command_size,
        )

    def _open_session(self) -> Session:
        session = open_session(server_state(self.server, self.max_memory), self.client_address)
        session.max_reply_size = self.max_output_buffer  # refused before it is built
        return session

    def _fault(self, reason: str, detail: str) -> None:
        state = server_state(self.server, self.max_memory)
        state.faults.warn(self.fault_log_interval, reason, self.client_address, detail)

    def _refusal(self, error: ProtocolError) -> bytes:
        """Log a peer's protocol error; the reply that goes before closing."""
        self._fault("protocol error", str(error))
        return encode_error(f"ERR Protocol error: {error}")

    def _too_big(self, pending: int, reply: int) -> bool:
        if pending + reply <= self.max_output_buffer:
            return False
        self._fault(
            "output buffer limit",
            f"a reply of {reply} bytes with {pending} unsent would pass"
            f" {self.max_output_buffer}",
        )
        return True


class RespHandler(_RespSettings, StreamRequestHandler[Any]):
    """Serve one Redis client connection, blocking in its own thread.

    Class attributes that may be overridden:

    - ``max_memory``: the memory cap of the store created for a server that does
      not bring its own (see :class:`RespServer`; default 256 MiB, 0: none)
    - ``max_bulk_length``, ``max_array_length``, ``max_inline_length``,
      ``max_command_size``: the parser's limits (see
      :class:`~handlers.resp.protocol.CommandParser`)
    - ``receive_size``: the most bytes read per ``recv()``
    - ``reply_chunk``, ``max_output_buffer``: output limits (see the module's text)
    - ``idle_timeout``: seconds a connection may stay silent (None: the server's
      ``idle_timeout``, else forever)
    - ``fault_log_interval``: seconds between log lines for one kind of peer fault
    """

    # Replies go out in one send per batch; Nagle would only delay them.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        if self.request.family not in (socket.AF_INET, socket.AF_INET6):
            self.disable_nagle_algorithm = False  # no TCP_NODELAY on Unix sockets
        super().setup()
        idle = self.idle_timeout
        if idle is None:
            idle = getattr(self.server, "idle_timeout", None)
        self.idle: Optional[float] = idle
        if idle is not None:
            self.request.settimeout(idle)
        self.session = self._open_session()

    def handle(self) -> None:
        session = self.session
        parser = self._new_parser()
        recv = self.request.recv
        sendall = self.request.sendall
        size = self.receive_size
        chunk = self.reply_chunk
        while not session.closing:
            try:
                data = recv(size)
            except socket.timeout:
                self._fault("idle timeout", f"no data for {self.idle:g} s")
                return
            if not data:
                return
            parser.feed(data)
            try:
                commands = parser.drain()
            except ProtocolError as exc:
                sendall(self._refusal(exc))
                return
            done = 0
            while done < len(commands) and not session.closing:
                reply, done = session.execute_some(commands, done, chunk)
                if session.too_big:  # a reply refused before it was built
                    self._too_big(0, session.too_big)
                    return
                if not reply and session.stepping is not None:
                    # A step of a long command (KEYS, SCAN): the store lock is not
                    # fair, so let a thread waiting for it in before the next step.
                    time.sleep(0.001)
                    continue
                if self._too_big(0, len(reply)):
                    return
                sendall(reply)
            if parser.error is not None and not session.closing:
                sendall(self._refusal(parser.error))  # met after the commands answered
                return

    def finish(self) -> None:
        self.session.close()
        super().finish()


class RespConnection(_RespSettings, ConnectionHandler[Any]):
    """Serve one Redis client on a multiplexing server (see :class:`RespServer`).

    The class attributes of :class:`RespHandler` apply here too, and
    ``max_write_buffer``: unsent output above which the client's commands wait.
    """

    def connection_made(self) -> None:
        if self.request.family in (socket.AF_INET, socket.AF_INET6):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = self._new_parser()
        self.session = self._open_session()
        # Commands parsed but not run yet (their replies would not fit), and the
        # index of the next one to run.
        self.pending: list[Command] = []
        self.next_command = 0
        self.resume_scheduled = False
        self.peer_done = False  # the peer half-closed: close once all is answered

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self._answer()

    def eof_received(self) -> None:
        # The peer sent everything (a half-close): answer what is still waiting,
        # then close (in _answer), instead of dropping the commands not yet run.
        self.peer_done = True
        self._answer()

    def write_buffer_drained(self) -> None:
        if self.next_command < len(self.pending) or self.parser.buffered or self.peer_done:
            self._answer()

    def _answer(self) -> None:
        """Run the next piece of the client's commands, and send its replies.

        A pipeline whose replies pass ``reply_chunk`` is run one piece per turn of
        the I/O loop (the next piece is scheduled with ``call_soon``, so every
        other connection is served in between), and not at all while more than
        ``max_write_buffer`` bytes of replies wait: ``write_buffer_drained()``
        resumes it.
        """
        unsent = self.write_buffer_size
        if unsent > self.max_write_buffer:
            return  # resumed by write_buffer_drained()
        parser = self.parser
        pending = self.pending
        if self.next_command >= len(pending):
            try:
                pending = self.pending = parser.drain()
            except ProtocolError as exc:
                self._refuse(exc)
                return
            self.next_command = 0
            if not pending:
                if self.peer_done:
                    self.close()
                return
        session = self.session
        reply, done = session.execute_some(pending, self.next_command, self.reply_chunk)
        self.next_command = done
        size = len(reply) + session.too_big  # too_big: a reply refused before it was built
        if unsent + size > self.max_output_buffer and self._too_big(unsent, size):
            self.close()
            return
        self.write(reply)
        if session.closing:
            self.close()
            return
        if done < len(pending):
            self._schedule()
            return
        self.pending = []
        if parser.error is not None:  # met after the commands just answered
            self._refuse(parser.error)
        elif parser.buffered:
            self._schedule()  # bytes that arrived while a long pipeline ran
        elif self.peer_done:
            self.close()

    def _schedule(self) -> None:
        """Run the next piece on the I/O loop's next turn (or when output drains)."""
        if not self.resume_scheduled and self.write_buffer_size <= self.max_write_buffer:
            self.resume_scheduled = True
            self.server.call_soon(self._resume)

    def _resume(self) -> None:
        """The next piece of a long pipeline (called by the I/O loop)."""
        self.resume_scheduled = False
        if self.closing:
            return
        try:
            self._answer()
        except Exception:  # as a callback's error: logged, and this connection ends
            self.server.handle_error(self.request, self.client_address)
            self.close()

    def _refuse(self, error: ProtocolError) -> None:
        self.write(self._refusal(error))
        self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()


class RespServer(MultiplexingTCPServer):
    """A TCP server with its own key-value store, serving every client from one thread.

    ``max_memory``: the store's cap in counted bytes (default 256 MiB; 0: none).
    The store is ``server.resp_state.store``.
    """

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any = RespConnection,
        bind_and_activate: bool = True,
        *,
        max_memory: int = DEFAULT_MAX_MEMORY,
    ) -> None:
        _check_settings(RequestHandlerClass)
        self.resp_state: Optional[ServerState] = ServerState(max_memory)
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)


def _check_settings(handler_class: Any) -> None:
    """Refuse a handler class whose limits make no sense, naming the bad value."""
    for name in ("reply_chunk", "max_output_buffer", "receive_size", "max_bulk_length",
                 "max_array_length", "max_inline_length", "max_command_size"):
        value = getattr(handler_class, name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{handler_class.__name__}.{name} must be a positive integer,"
                             f" not {value!r}")
    interval = getattr(handler_class, "fault_log_interval", 0.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ValueError(f"{handler_class.__name__}.fault_log_interval must be a"
                         f" non-negative number, not {interval!r}")
