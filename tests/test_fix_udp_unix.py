"""Issue 2, fixes 7 and 8: datagrams are never truncated silently, an empty reply
is no reply, and Unix servers own their socket file (remove it on close, replace
it when stale, never a live socket or a regular file).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT

HOST = "127.0.0.1"
MAX = 64  # max_packet_size of the servers below


def _recording_udp_server(impl: Any) -> Any:
    """A UDPServer (max_packet_size=64) that records what its handler receives."""

    class Record(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            with self.server.changed:
                self.server.received.append(self.request[0])
                self.server.changed.notify_all()

    class Server(impl.UDPServer):  # type: ignore[misc]
        max_packet_size = MAX

        def __init__(self) -> None:
            super().__init__((HOST, 0), Record)
            self.received: list[bytes] = []
            self.changed = threading.Condition()

        def wait_for(self, data: bytes) -> list[bytes]:
            """What the handler received, once ``data`` is among it."""
            with self.changed:
                self.changed.wait_for(lambda: data in self.received, TIMEOUT)
                return list(self.received)

    return Server()


def _send(server: Any, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for datagram in datagrams:
            client.sendto(datagram, server.server_address)


# The datagrams are handled in order by a synchronous server: once the last one
# (exactly max_packet_size long) has arrived, the over-long ones before it have
# been dealt with.
EXACT = b"e" * MAX
TOO_LONG = b"x" * (MAX + 1)


@pytest.mark.stdlib_defect("a datagram longer than max_packet_size reaches the handler cut short")
def test_overlong_datagram_never_reaches_the_handler(impl, running):
    server = _recording_udp_server(impl)
    with running(server):
        _send(server, TOO_LONG, EXACT)
        assert server.wait_for(EXACT) == [EXACT]


def test_datagram_of_exactly_max_packet_size_is_delivered_whole(impl, running):
    server = _recording_udp_server(impl)
    with running(server):
        _send(server, EXACT)
        assert server.wait_for(EXACT) == [EXACT]


@pytest.mark.stdlib_defect("truncated datagrams are not counted")
def test_overlong_datagrams_are_counted(impl, running):
    server = _recording_udp_server(impl)
    with running(server):
        _send(server, TOO_LONG, TOO_LONG, EXACT)
        server.wait_for(EXACT)
        assert server.datagrams_truncated == 2


@pytest.mark.stdlib_defect("truncation is silent: nothing is logged")
def test_overlong_datagrams_log_one_warning(impl, running, pyserve_log):
    server = _recording_udp_server(impl)
    with running(server):
        _send(server, TOO_LONG, TOO_LONG, TOO_LONG, EXACT)
        server.wait_for(EXACT)
    warnings = [r for r in pyserve_log.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "max_packet_size" in warnings[0].getMessage()


@pytest.mark.stdlib_defect("a DatagramRequestHandler that wrote nothing sends an empty datagram")
def test_datagram_handler_that_writes_nothing_sends_no_reply(impl, running):
    class ReplyToSecondOnly(impl.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            if self.rfile.read() == b"second":
                self.wfile.write(b"second")

    server = impl.UDPServer((HOST, 0), ReplyToSecondOnly)
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"first", server.server_address)
        client.sendto(b"second", server.server_address)
        # Handled in order: an empty reply to "first" would arrive before this.
        assert client.recv(100) == b"second"


# ------------------------------------------------------------------ fix 8: Unix


UNIX = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: AF_UNIX paths are limited to ~107 bytes."""
    path = tempfile.mkdtemp(prefix="pys-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Echo:
    """Mixed into a handler of either implementation: echo one message."""

    request: Any
    client_address: Any

    def handle(self) -> None:
        if isinstance(self.request, tuple):  # datagram: (data, server socket)
            data, sock = self.request
            sock.sendto(data, self.client_address)
        else:
            self.request.sendall(self.request.recv(64))


def _unix_server(impl: Any, kind: str, path: str) -> Any:
    base = impl.UnixStreamServer if kind == "stream" else impl.UnixDatagramServer
    handler = type("UnixEcho", (Echo, impl.BaseRequestHandler), {})
    return base(path, handler)


def _bind_error(impl: Any, kind: str, path: str) -> Any:
    """The errno of the OSError that creating a server on ``path`` raises."""
    try:
        server = _unix_server(impl, kind, path)
    except OSError as exc:
        return exc.errno
    server.server_close()
    return None


def _echo_over(kind: str, path: str, directory: str) -> bytes:
    if kind == "stream":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"ping")
            return client.recv(64)
    # A datagram client needs an address of its own to be answered at.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client_path = os.path.join(directory, "client")
        client.bind(client_path)
        try:
            client.sendto(b"ping", path)
            return client.recv(64)
        finally:
            os.unlink(client_path)


KINDS = pytest.mark.parametrize("kind", ["stream", "datagram"])


@UNIX
@KINDS
@pytest.mark.stdlib_defect("server_close() leaves the socket file behind")
def test_unix_server_removes_its_socket_file_on_close(impl, kind, short_dir):
    path = os.path.join(short_dir, "s")
    server = _unix_server(impl, kind, path)
    assert os.path.exists(path)
    server.server_close()
    assert not os.path.exists(path)


@UNIX
@KINDS
@pytest.mark.stdlib_defect("a stale socket file makes bind() fail with EADDRINUSE")
def test_stale_socket_file_is_replaced(impl, kind, short_dir, running):
    path = os.path.join(short_dir, "s")
    sock_type = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_UNIX, sock_type) as dead:
        dead.bind(path)  # closed without unlinking: a crashed server's leftover
    server = _unix_server(impl, kind, path)
    with running(server):
        assert _echo_over(kind, path, short_dir) == b"ping"


@UNIX
@KINDS
def test_live_server_path_is_refused_and_the_live_server_keeps_working(
    impl, kind, short_dir, running
):
    path = os.path.join(short_dir, "s")
    with running(_unix_server(impl, kind, path)):
        assert _bind_error(impl, kind, path) == errno.EADDRINUSE
        assert _echo_over(kind, path, short_dir) == b"ping"


@UNIX
@KINDS
def test_regular_file_at_the_path_is_never_replaced(impl, kind, short_dir):
    path = os.path.join(short_dir, "s")
    with open(path, "w") as precious:
        precious.write("precious data")
    assert _bind_error(impl, kind, path) == errno.EADDRINUSE
    with open(path) as precious:
        assert precious.read() == "precious data"
