"""PROXY protocol behind real proxies: HAProxy (v1, v2, round-robin) and nginx (v1).

Each test starts its proxy on a loopback listener the test bound (see
``tests/peers.py``) and ends it by PID; the proxies skip with their reason when
their binary is missing (CI installs them: .ci/run).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from peers import ProxyProcess, start_haproxy, start_nginx

from pyserve import StreamRequestHandler, TCPServer, ThreadingMixIn
from pyserve.net.proxy import ProxiedAddress, ProxyProtocolMixIn
from pyserve.net.proxy_header import PP2_TYPE_UNIQUE_ID
from pyserve.testing import serving

pytestmark = pytest.mark.timeout(90)


class Recording(StreamRequestHandler):
    """Record what the server saw, then echo one line."""

    def handle(self) -> None:
        address = self.client_address
        assert isinstance(address, ProxiedAddress)
        line = self.rfile.readline()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.seen.append((tuple(address), address.header, line))  # type: ignore[attr-defined]
        self.wfile.write(line)


class Backend(ProxyProtocolMixIn, ThreadingMixIn, TCPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recording, trusted_proxies=["127.0.0.1"])
        self.seen: list[tuple[Any, Any, bytes]] = []
        self.lock = threading.Lock()


def through(proxy: ProxyProcess, line: bytes) -> tuple[str, int]:
    """Send a line through the proxy; return the client's own address."""
    with socket.create_connection(proxy.address, timeout=10) as client:
        client.sendall(line)
        reply = client.makefile("rb").readline()
        assert reply == line, f"no echo through the proxy; its log:\n{proxy.output()}"
        host, port = client.getsockname()
        return host, port


@pytest.mark.parametrize(("option", "version"), [("send-proxy", 1), ("send-proxy-v2", 2)])
def test_haproxy_passes_the_real_client(tmp_path: Path, option: str, version: int) -> None:
    with serving(Backend()) as backend, start_haproxy(
        tmp_path, [backend.server_address], option
    ) as proxy:
        client = through(proxy, b"via haproxy\n")
    [(seen, header, line)] = backend.seen
    assert seen == client
    assert header.version == version
    assert line == b"via haproxy\n"


def test_haproxy_v2_tlvs_reach_the_handler(tmp_path: Path) -> None:
    options = "send-proxy-v2 proxy-v2-options unique-id"
    with serving(Backend()) as backend, start_haproxy(
        tmp_path, [backend.server_address], options
    ) as proxy:
        host, port = through(proxy, b"tlv\n")
    [(_seen, header, _line)] = backend.seen
    # unique-id-format in the generated config is "pyserve-%ci-%cp".
    assert header.tlv(PP2_TYPE_UNIQUE_ID) == f"pyserve-{host}-{port}".encode()


def test_haproxy_round_robin_over_two_servers_each_sees_real_clients(tmp_path: Path) -> None:
    with serving(Backend()) as first, serving(Backend()) as second, start_haproxy(
        tmp_path, [first.server_address, second.server_address], "send-proxy-v2"
    ) as proxy:
        clients = [through(proxy, f"request {n}\n".encode()) for n in range(6)]
    assert len(first.seen) == 3
    assert len(second.seen) == 3
    seen = [address for address, _header, _line in first.seen + second.seen]
    assert sorted(seen) == sorted(clients)


def test_nginx_stream_proxy_protocol(tmp_path: Path) -> None:
    with serving(Backend()) as backend, start_nginx(tmp_path, backend.server_address) as proxy:
        client = through(proxy, b"via nginx\n")
    [(seen, header, line)] = backend.seen
    assert seen == client
    assert header.version == 1
    assert line == b"via nginx\n"
