"""``TCPServer.get_request()`` gives what ``socket.accept()`` gives.

pyserve accepts from a plain listening socket without ``socket.accept()``'s
per-call enum conversions (see ``TCPServer.get_request``). These tests hold it to
the stdlib's result: the same family, type and protocol, the same timeout and
blocking mode under every combination of default timeout and listener timeout,
the peer's address, and a socket subclass (an ``ssl.SSLSocket`` listener, say)
still accepting its own way.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT

import pyserve


@pytest.fixture
def default_timeout() -> Iterator[None]:
    saved = socket.getdefaulttimeout()
    yield
    socket.setdefaulttimeout(saved)


def _describe(conn: socket.socket) -> tuple[Any, ...]:
    return (conn.family, conn.type, conn.proto, conn.gettimeout(), os.get_blocking(conn.fileno()))


def _accept_both(server: Any, reference: socket.socket) -> tuple[Any, Any, Any, Any]:
    """One connection to each listener; what each side's accept returned."""
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as one, \
            socket.create_connection(reference.getsockname(), timeout=TIMEOUT) as two:
        ours, ours_address = server.get_request()
        theirs, theirs_address = reference.accept()
        with ours, theirs:
            assert ours_address == one.getsockname()
            assert theirs_address == two.getsockname()
            return _describe(ours), _describe(theirs), ours.getpeername(), one.getsockname()


@pytest.mark.parametrize("default", [None, 2.5], ids=["default-none", "default-2.5"])
@pytest.mark.parametrize("listener_timeout", [None, 1.5, 0.0], ids=["block", "timeout", "nonblock"])
def test_accepted_socket_matches_socket_accept(
    default_timeout: None, default: Any, listener_timeout: Any
) -> None:
    socket.setdefaulttimeout(default)
    server = pyserve.TCPServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    reference = socket.create_server(("127.0.0.1", 0))
    with server, reference:
        server.socket.settimeout(listener_timeout)
        reference.settimeout(listener_timeout)
        ours, theirs, peer, client = _accept_both(server, reference)
    assert ours == theirs
    assert peer == client


def test_a_replaced_listener_is_accepted_from() -> None:
    server = pyserve.TCPServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    other = socket.create_server(("127.0.0.1", 0))
    with server, other:
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            conn, _ = server.get_request()
            conn.close()
        server.socket, old = other, server.socket  # e.g. an inherited socket swapped in
        try:
            with socket.create_connection(other.getsockname(), timeout=TIMEOUT) as client:
                conn, address = server.get_request()
                with conn:
                    assert address == client.getsockname()
                    assert conn.getsockname() == other.getsockname()
        finally:
            server.socket = old


def test_a_socket_subclass_listener_accepts_its_own_way() -> None:
    calls = []

    class Wrapped(socket.socket):  # what ssl.SSLSocket is to a listener
        def accept(self) -> tuple[socket.socket, Any]:
            calls.append(1)
            return super().accept()

    server = pyserve.TCPServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    with server:
        plain = server.socket
        server.socket = Wrapped(plain.family, plain.type, plain.proto, plain.detach())
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            conn, address = server.get_request()
            with conn:
                assert address == client.getsockname()
    assert calls == [1]


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix-domain sockets")
def test_unix_stream_server_accepts_like_socket_accept(tmp_path: Any) -> None:
    server = pyserve.UnixStreamServer(str(tmp_path / "s"), pyserve.BaseRequestHandler)
    reference = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reference.bind(str(tmp_path / "r"))
    reference.listen()
    with server, reference:
        clients = []
        for path in (server.server_address, reference.getsockname()):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(TIMEOUT)
            client.connect(path)
            clients.append(client)
        ours, ours_address = server.get_request()
        theirs, theirs_address = reference.accept()
        with ours, theirs:
            assert _describe(ours) == _describe(theirs)
            assert ours_address == theirs_address
        for client in clients:
            client.close()
