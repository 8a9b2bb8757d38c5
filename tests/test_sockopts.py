"""Declarative socket options, SO_BROADCAST, and their validation.

Handlers report the options they find on their own connection, so each test
checks what the kernel holds, under every concurrency strategy. Servers bind
127.0.0.1 port 0; broadcasts go to 127.255.255.255, loopback's broadcast address.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any, Optional

import pytest

import pyserve.sockets
from pyserve import (
    ForkingMixIn,
    StreamRequestHandler,
    TCPServer,
    ThreadingMixIn,
    UDPServer,
    sockopts,
)
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.testing import serving
from pyserve.unix import UnixStreamServer

TIMEOUT = 10.0
LINUX = sys.platform.startswith("linux")

STRATEGIES = [
    pytest.param(None, id="sync"),
    pytest.param(ThreadingMixIn, id="threading"),
    pytest.param(ThreadPoolMixIn, id="pool"),
    pytest.param(ForkingMixIn, id="forking"),
]


def server_class(base: type[Any], strategy: Optional[type[Any]], **attributes: Any) -> Any:
    return type("Server", (strategy, base) if strategy else (base,), attributes)


class ReportOptions(StreamRequestHandler):
    """Writes the options of its own connection: nodelay keepalive idle intvl cnt."""

    def handle(self) -> None:
        sock = self.connection
        values = [
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        ]
        if LINUX:
            values += [
                sock.getsockopt(socket.IPPROTO_TCP, option)
                for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
            ]
        self.wfile.write(" ".join(map(str, values)).encode() + b"\n")


def report(address: Any) -> list[int]:
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        return [int(v) for v in client.makefile("rb").readline().split()]


# ------------------------------------------------------------ accepted sockets


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_accepted_socket_options_are_set_on_every_connection(
    strategy: Optional[type[Any]],
) -> None:
    options = sockopts.tcp_keepalive(idle=42, interval=7, count=3) + sockopts.tcp_nodelay()
    server = server_class(TCPServer, strategy, accepted_socket_options=options)(
        ("127.0.0.1", 0), ReportOptions
    )
    with serving(server):
        for _ in range(3):
            nodelay, keepalive, *knobs = report(server.server_address)
            assert nodelay != 0
            assert keepalive != 0
            if LINUX:
                assert knobs == [42, 7, 3]


def test_without_options_connections_keep_the_kernel_defaults() -> None:
    with serving(TCPServer(("127.0.0.1", 0), ReportOptions)) as server:
        nodelay, keepalive, *_ = report(server.server_address)
        assert (nodelay, keepalive) == (0, 0)


def test_accept_path_does_no_option_work_when_none_are_configured(monkeypatch: Any) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("apply_socket_options called without options")

    monkeypatch.setattr(pyserve.sockets, "apply_socket_options", refuse)
    with serving(TCPServer(("127.0.0.1", 0), ReportOptions)) as server:
        assert len(report(server.server_address)) >= 2


def test_option_the_kernel_refuses_fails_the_constructor_naming_it(tmp_path: Any) -> None:
    # TCP_NODELAY means nothing on a Unix socket: caught once, at startup.
    cls = server_class(UnixStreamServer, None, accepted_socket_options=sockopts.tcp_nodelay())
    path = str(tmp_path / "s.sock")
    with pytest.raises(OSError, match=r"accepted_socket_options: the kernel refused"):
        cls(path, ReportOptions)
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ([(socket.SOL_SOCKET, socket.SO_KEEPALIVE)], r"\(1, 9\)"),
        ([("SOL_SOCKET", socket.SO_KEEPALIVE, 1)], "'SOL_SOCKET'"),
        ("SO_KEEPALIVE", "'SO_KEEPALIVE'"),
        ([(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1.5)], "1.5"),
    ],
)
def test_malformed_options_are_refused_naming_them(options: Any, named: str) -> None:
    cls = server_class(TCPServer, None, listen_socket_options=options)
    with pytest.raises(ValueError, match=f"listen_socket_options.*{named}"):
        cls(("127.0.0.1", 0), ReportOptions)


# ------------------------------------------------------------ listening socket


def test_listen_socket_options_are_set_on_the_listener() -> None:
    cls = server_class(TCPServer, None, listen_socket_options=sockopts.receive_buffer(65536))
    with serving(cls(("127.0.0.1", 0), ReportOptions)) as server:
        # Linux doubles the request for its bookkeeping; others keep it.
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536
        assert len(report(server.server_address)) >= 2


def test_send_buffer_is_set_on_accepted_connections() -> None:
    class Report(StreamRequestHandler):
        def handle(self) -> None:
            size = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.wfile.write(b"%d\n" % size)

    cls = server_class(TCPServer, None, accepted_socket_options=sockopts.send_buffer(200_000))
    with serving(cls(("127.0.0.1", 0), Report)) as server:
        assert report(server.server_address)[0] >= 200_000


@pytest.mark.skipif(not hasattr(socket, "SO_BINDTODEVICE"), reason="no SO_BINDTODEVICE here")
def test_bind_to_device_lo_serves_loopback() -> None:
    cls = server_class(TCPServer, None, listen_socket_options=sockopts.bind_to_device("lo"))
    try:
        server = cls(("127.0.0.1", 0), ReportOptions)
    except PermissionError:
        pytest.skip("SO_BINDTODEVICE needs CAP_NET_RAW on this kernel")
    with serving(server):
        device = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        assert device.rstrip(b"\0") == b"lo"
        assert len(report(server.server_address)) >= 2


# --------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: sockopts.tcp_keepalive(idle=0), "tcp_keepalive idle.*0"),
        (lambda: sockopts.tcp_keepalive(count=1000), "tcp_keepalive count.*1000"),
        (lambda: sockopts.tcp_keepalive(interval="10"), "tcp_keepalive interval.*'10'"),
        (lambda: sockopts.receive_buffer(-1), "receive_buffer size.*-1"),
        (lambda: sockopts.send_buffer(True), "send_buffer size.*True"),
        (lambda: sockopts.bind_to_device(""), "bind_to_device.*''"),
        (lambda: sockopts.bind_to_device("x" * 16), "bind_to_device.*too long"),
    ],
)
def test_helpers_refuse_bad_values_naming_them(call: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        call()


def test_helpers_concatenate_into_one_option_list() -> None:
    options = sockopts.tcp_nodelay() + sockopts.receive_buffer(1024)
    assert options == (
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_RCVBUF, 1024),
    )


# ------------------------------------------------------------------- broadcast


class Broadcast(DatagramRequestHandler):
    """Broadcasts the datagram to the port it names, then tells the client how it went."""

    def handle(self) -> None:
        port = int(self.rfile.read())
        try:
            self.socket.sendto(b"announcement", ("127.255.255.255", port))
        except OSError as exc:
            self.wfile.write(f"refused {exc.errno}".encode())
        else:
            self.wfile.write(b"sent")


def broadcast_through(server: Any) -> tuple[bytes, Optional[bytes]]:
    """Ask ``server`` to broadcast; return its answer and what a listener heard."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener, client:
        listener.settimeout(TIMEOUT)
        client.settimeout(TIMEOUT)
        listener.bind(("127.255.255.255", 0))
        client.sendto(str(listener.getsockname()[1]).encode(), server.server_address)
        answer = client.recvfrom(100)[0]
        heard = listener.recvfrom(100)[0] if answer == b"sent" else None
        return answer, heard


@pytest.mark.skipif(not LINUX, reason="127.255.255.255 is loopback's broadcast on Linux")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_allow_broadcast_lets_handlers_broadcast(strategy: Optional[type[Any]]) -> None:
    server = server_class(UDPServer, strategy, allow_broadcast=True)(("127.0.0.1", 0), Broadcast)
    with serving(server):
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        assert broadcast_through(server) == (b"sent", b"announcement")


@pytest.mark.skipif(not LINUX, reason="127.255.255.255 is loopback's broadcast on Linux")
def test_without_allow_broadcast_the_kernel_refuses_broadcasts() -> None:
    with serving(UDPServer(("127.0.0.1", 0), Broadcast)) as server:
        answer, _ = broadcast_through(server)
        assert answer == f"refused {errno.EACCES}".encode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="socket filters are Linux's")
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_listener_that_drops_new_handshakes_keeps_its_queue(family: int) -> None:
    """What drain relies on: queued connections are still accepted, a new SYN is
    dropped (no handshake the closing server would reset), and once closed the
    listener refuses."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        listener = socket.socket(family)
        listener.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} here")
    with listener:
        listener.listen(8)
        address = listener.getsockname()[:2]
        queued = socket.create_connection(address, timeout=5)
        with queued:
            assert sockopts.drop_new_handshakes(listener)
            queued.sendall(b"x")
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(1) == b"x"
            with pytest.raises(socket.timeout):
                socket.create_connection(address, timeout=0.3).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
