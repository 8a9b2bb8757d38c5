"""Issue 2, fixes 6 and 10: the defaults a production TCP server needs.

* The listen backlog is ``socket.SOMAXCONN``: a burst of connections to a server
  that is not accepting yet completes its handshakes (with the stdlib's 5, the
  kernel drops the SYNs and clients wait out retransmits).
* ``allow_reuse_address`` is true for TCP on POSIX: a server restarts on its port
  while the connections it closed sit in TIME_WAIT.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import TIMEOUT

HOST = "127.0.0.1"
BURST = 300
CONNECT_TIMEOUT = 3.0  # SYN retransmits start at 1 s and then back off


class LineEcho:
    """Mixed into a handler of either implementation: echo one line."""

    request: socket.socket

    def handle(self) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.request.recv(64)
            if not chunk:
                return
            data += chunk
        self.request.sendall(data)


def _echo_server(impl, **class_attributes):
    handler = type("LineEcho", (LineEcho, impl.BaseRequestHandler), {})
    server_class = type("Server", (impl.TCPServer,), class_attributes)
    return server_class((HOST, 0), handler)


@pytest.mark.stdlib_defect("the listen backlog is 5")
def test_default_backlog_is_somaxconn(impl):
    assert impl.TCPServer.request_queue_size == socket.SOMAXCONN


def _kernel_backlog_cap() -> int:
    """Linux caps every listen backlog at net.core.somaxconn."""
    try:
        with open("/proc/sys/net/core/somaxconn") as setting:
            return int(setting.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


@pytest.mark.skipif(
    _kernel_backlog_cap() < BURST, reason=f"the kernel caps backlogs below {BURST}"
)
@pytest.mark.stdlib_defect("a backlog of 5 drops a burst's SYNs: clients time out")
def test_burst_completes_handshakes_before_serving_starts(impl, running):
    server = _echo_server(impl)
    clients: list[socket.socket] = []
    try:
        # Nobody accepts yet: every handshake must complete in the kernel's backlog.
        for _ in range(BURST):
            client = socket.socket()
            clients.append(client)
            client.settimeout(CONNECT_TIMEOUT)
            client.connect(server.server_address)
            client.settimeout(TIMEOUT)
            client.sendall(b"hello\n")
        with running(server):
            replies = [client.recv(64) for client in clients]
            for client in clients:
                client.close()
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert replies == [b"hello\n"] * BURST


# ---------------------------------------------------------------- fix 10: reuse


@pytest.mark.skipif(os.name == "nt", reason="POSIX default")
@pytest.mark.stdlib_defect("TCPServer.allow_reuse_address is False")
def test_tcp_server_allows_address_reuse_by_default_on_posix(impl):
    assert impl.TCPServer.allow_reuse_address is True


def test_udp_server_does_not_allow_address_reuse_by_default(impl):
    # For UDP, SO_REUSEADDR would let two live servers share a port.
    assert impl.UDPServer.allow_reuse_address is False


def _tcp_states(port: int) -> set[str]:
    """The states (hex, as in /proc/net/tcp) of IPv4 TCP sockets on local ``port``."""
    states = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                states.add(fields[3])
    return states


TIME_WAIT = "06"


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
@pytest.mark.stdlib_defect("a restart on a port with TIME_WAIT connections fails: EADDRINUSE")
def test_server_restarts_on_its_port_while_connections_sit_in_time_wait(impl, running):
    class Goodbye(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.sendall(b"bye")  # then the server closes first

    for _attempt in range(3):  # bounded: see the outsider check below
        first = impl.TCPServer((HOST, 0), Goodbye)
        port = first.server_address[1]
        with running(first), socket.create_connection((HOST, port), timeout=TIMEOUT) as client:
            while client.recv(64):
                pass  # until the server's FIN
        # Our close answered the server's FIN: its side of the connection is in TIME_WAIT.
        deadline = time.monotonic() + TIMEOUT
        while TIME_WAIT not in _tcp_states(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert TIME_WAIT in _tcp_states(port), "precondition: a connection in TIME_WAIT"
        try:
            second = impl.TCPServer((HOST, port), Goodbye)
        except OSError:
            # On a busy machine another process's outgoing connection may take the
            # freed port as its ephemeral port: then the port is genuinely in use,
            # not by our TIME_WAIT. Only that case is retried, on a new port.
            if _tcp_states(port) - {TIME_WAIT}:
                continue
            raise
        second.server_close()
        return
    pytest.fail("three ports in a row were taken by other processes")
