"""The network side of the RESP server: the handler forms and the server class.

Everything else (parser, encoding, store, sessions, command tables) is sans-IO and
lives beside this module; :mod:`handlers.resp` explains how they cooperate.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from typing import Any, Optional

from handlers.resp.commands import open_session
from handlers.resp.encoding import encode_error
from handlers.resp.protocol import CommandParser
from handlers.resp.session import ServerState, Session
from pyserve import (
    ConnectionHandler,
    MultiplexingTCPServer,
    ProtocolError,
    StreamRequestHandler,
)

__all__ = ["RespConnection", "RespHandler", "RespServer", "server_state"]

logger = logging.getLogger("pyserve.resp")

_states: weakref.WeakKeyDictionary[Any, ServerState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def server_state(server: Any, max_memory: int = 0) -> ServerState:
    """The shared state (store and counters) of ``server``, created on first use."""
    state = getattr(server, "resp_state", None)
    if isinstance(state, ServerState):
        return state
    with _states_lock:
        state = _states.get(server)
        if state is None:
            state = _states[server] = ServerState(max_memory)
        return state


class _RespSettings:
    """What both forms of the handler share: the settings (documented on
    :class:`RespHandler`) and how a connection starts."""

    server: Any
    client_address: Any
    max_memory: int = 0
    max_bulk_length: int = CommandParser.max_bulk_length
    max_array_length: int = CommandParser.max_array_length
    max_inline_length: int = CommandParser.max_inline_length
    max_command_size: int = CommandParser.max_command_size
    #: 64 KiB holds a few thousand pipelined small commands: one recv per batch.
    receive_size: int = 65536

    def _new_parser(self) -> CommandParser:
        return CommandParser(
            max_bulk_length=self.max_bulk_length,
            max_array_length=self.max_array_length,
            max_inline_length=self.max_inline_length,
            max_command_size=self.max_command_size,
        )

    def _open_session(self) -> Session:
        return open_session(server_state(self.server, self.max_memory), self.client_address)


class RespHandler(_RespSettings, StreamRequestHandler[Any]):
    """Serve one Redis client connection, blocking in its own thread.

    Class attributes that may be overridden:

    - ``max_memory``: the memory cap (bytes of keys plus values, 0: none) of the
      store created for a server that does not bring its own (see
      :class:`RespServer`)
    - ``max_bulk_length``, ``max_array_length``, ``max_inline_length``,
      ``max_command_size``: the parser's limits (see
      :class:`~handlers.resp.protocol.CommandParser`)
    - ``receive_size``: the most bytes read per ``recv()``
    - ``timeout``: seconds a connection may stay silent (None: forever)
    """

    # Replies go out in one send per batch; Nagle would only delay them.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        if self.request.family not in (socket.AF_INET, socket.AF_INET6):
            self.disable_nagle_algorithm = False  # no TCP_NODELAY on Unix sockets
        super().setup()
        self.session = self._open_session()

    def handle(self) -> None:
        session = self.session
        parser = self._new_parser()
        recv = self.request.recv
        sendall = self.request.sendall
        feed = parser.feed
        drain = parser.drain
        execute = session.execute
        size = self.receive_size
        while not session.closing:
            data = recv(size)
            if not data:
                return
            feed(data)
            try:
                commands = drain()
            except ProtocolError as exc:
                self._refuse(exc)
                return
            if commands:
                sendall(execute(commands))
                if parser.error is not None:  # met after the commands just answered
                    self._refuse(parser.error)
                    return

    def _refuse(self, error: ProtocolError) -> None:
        self.request.sendall(_refusal(self.client_address, error))

    def finish(self) -> None:
        self.session.close()
        super().finish()


class RespConnection(_RespSettings, ConnectionHandler[Any]):
    """Serve one Redis client on a multiplexing server (see :class:`RespServer`).

    The class attributes of :class:`RespHandler` apply here too (``timeout`` is
    spelled ``idle_timeout``).
    """

    def connection_made(self) -> None:
        if self.request.family in (socket.AF_INET, socket.AF_INET6):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = self._new_parser()
        self.session = self._open_session()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        try:
            commands = parser.drain()
        except ProtocolError as exc:
            self._refuse(exc)
            return
        if commands:
            session = self.session
            self.write(session.execute(commands))
            if session.closing:
                self.close()
            elif parser.error is not None:  # met after the commands just answered
                self._refuse(parser.error)

    def _refuse(self, error: ProtocolError) -> None:
        self.write(_refusal(self.client_address, error))
        self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()


def _refusal(client_address: Any, error: ProtocolError) -> bytes:
    """Log a peer's protocol error once; the reply that goes before closing."""
    logger.warning("closing RESP connection from %s: protocol error: %s", client_address, error)
    return encode_error(f"ERR Protocol error: {error}")


class RespServer(MultiplexingTCPServer):
    """A TCP server with its own key-value store, serving every client from one thread.

    ``max_memory``: the store's cap in bytes of keys plus values (0: no cap).
    The store is ``server.resp_state.store``.
    """

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any = RespConnection,
        bind_and_activate: bool = True,
        *,
        max_memory: int = 0,
    ) -> None:
        self.resp_state: Optional[ServerState] = ServerState(max_memory)
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)
