"""Type-checked only (mypy, configured in pyproject.toml): never run.

Request handlers are generic over their server, so ``self.server`` is precise
without a cast, and ``self.request`` has the transport's type: a connected socket
for stream handlers, ``(data, socket)`` for datagram handlers. Each
``assert_type`` fails the type check if an annotation in pyserve regresses.
"""

from __future__ import annotations

import io
import socket

from typing_extensions import assert_type

from pyserve import (
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
    ThreadingTCPServer,
    UDPServer,
)


class MyServer(ThreadingTCPServer):
    greeting: str = "hello"


class MyUDPServer(UDPServer):
    replies_sent: int = 0


class Greeter(StreamRequestHandler["MyServer"]):
    def handle(self) -> None:
        assert_type(self.server, MyServer)
        assert_type(self.server.greeting, str)  # no cast needed
        assert_type(self.request, socket.socket)
        assert_type(self.connection, socket.socket)
        assert_type(self.rfile, io.BufferedIOBase)
        assert_type(self.wfile, io.BufferedIOBase)
        assert_type(self.wfile.write(self.server.greeting.encode()), int)


class Counter(DatagramRequestHandler["MyUDPServer"]):
    def handle(self) -> None:
        assert_type(self.server, MyUDPServer)
        assert_type(self.request, tuple[bytes, socket.socket])
        data, sock = self.request
        assert_type(data, bytes)
        assert_type(sock, socket.socket)
        self.server.replies_sent += 1


class Plain(BaseRequestHandler["MyServer"]):
    def handle(self) -> None:
        assert_type(self.server, MyServer)


def serve() -> None:
    with MyServer(("127.0.0.1", 0), Greeter) as server:
        assert_type(server, MyServer)  # __enter__ returns Self
    with MyUDPServer(("127.0.0.1", 0), Counter) as udp:
        assert_type(udp, MyUDPServer)
