"""ProxyProtocolMixIn on live servers: real addresses, trust, leftovers, failures."""

from __future__ import annotations

import ast
import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from peers import make_certificates

import pyserve
from pyserve import StreamRequestHandler, TCPServer, ThreadingMixIn, ThreadPoolMixIn
from pyserve.net.proxy import ProxiedAddress, ProxyProtocolMixIn
from pyserve.net.proxy_header import PP2_TYPE_AUTHORITY, V2_SIGNATURE
from pyserve.net.tls import TLSMixIn
from pyserve.testing import serving

pytestmark = pytest.mark.timeout(60)


class Report(StreamRequestHandler):
    """Reply with what the server saw: real client, proxy, first line of data."""

    def handle(self) -> None:
        address = self.client_address
        first_line = self.rfile.readline()
        proxy = address.proxy_address if isinstance(address, ProxiedAddress) else None
        self.wfile.write(repr((tuple(address), proxy, first_line)).encode() + b"\n")


class ProxiedServer(ProxyProtocolMixIn, ThreadingMixIn, TCPServer):
    daemon_threads = True


def make_server(**options: Any) -> ProxiedServer:
    options.setdefault("trusted_proxies", ["127.0.0.0/8"])
    return ProxiedServer(("127.0.0.1", 0), Report, **options)


def exchange(address: Any, data: bytes) -> Any:
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(data)
        reply = client.makefile("rb").readline()
        return ast.literal_eval(reply.decode()) if reply else None  # the handler's repr()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def v2_tcp4(source: tuple[str, int], destination: tuple[str, int], tlvs: bytes = b"") -> bytes:
    body = (
        socket.inet_aton(source[0])
        + socket.inet_aton(destination[0])
        + struct.pack("!HH", source[1], destination[1])
        + tlvs
    )
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


def test_v1_header_sets_the_real_client_and_keeps_the_proxy() -> None:
    with serving(make_server()) as server:
        seen, proxy, line = exchange(
            server.server_address, b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\nhello\n"
        )
    assert seen == ("203.0.113.9", 40000)
    assert proxy[0] == "127.0.0.1"
    assert line == b"hello\n"  # sent in the same packet as the header, not lost


def test_v2_header_with_tlvs_reaches_the_handler() -> None:
    class TLVReport(StreamRequestHandler):
        def handle(self) -> None:
            header = self.client_address.header
            self.wfile.write(repr((header.version, header.tlv(PP2_TYPE_AUTHORITY))).encode())
            self.wfile.write(b"\n")

    authority = struct.pack("!BH", PP2_TYPE_AUTHORITY, 11) + b"example.com"
    server = ProxiedServer(("127.0.0.1", 0), TLVReport, trusted_proxies=["127.0.0.1"])
    with serving(server):
        header = v2_tcp4(("198.51.100.4", 1), ("10.0.0.1", 2), authority)
        reply = exchange(server.server_address, header)
    assert reply == (2, b"example.com")


def test_v2_header_byte_by_byte_then_data() -> None:
    header = v2_tcp4(("198.51.100.4", 5555), ("10.0.0.1", 443))
    with serving(make_server()) as server, socket.create_connection(
        server.server_address, timeout=10
    ) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in header:
            client.sendall(bytes([byte]))
        client.sendall(b"payload\n")
        seen, _proxy, line = ast.literal_eval(client.makefile("rb").readline().decode())
    assert seen == ("198.51.100.4", 5555)
    assert line == b"payload\n"


def test_local_command_keeps_the_proxy_address() -> None:
    local = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    with serving(make_server()) as server:
        seen, proxy, line = exchange(server.server_address, local + b"health\n")
    assert seen == proxy
    assert line == b"health\n"


def test_untrusted_peer_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserve")
    server = make_server(trusted_proxies=["10.0.0.0/8"])
    with serving(server):
        reply = exchange(server.server_address, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi\n")
    assert reply is None  # closed without an answer
    assert server.proxy_rejected == 1
    [record] = [r for r in caplog.records if r.name == "pyserve.proxy"]
    assert record.levelno == logging.WARNING
    assert "not a trusted proxy" in record.getMessage()


def test_bad_header_closes_with_one_line_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pyserve")
    server = make_server()
    with serving(server):
        assert exchange(server.server_address, b"GET / HTTP/1.0\r\n\r\n") is None
        assert wait_for(lambda: server.proxy_header_failures == 1)
        # The next, well-behaved connection is served as usual.
        seen, _, _ = exchange(server.server_address, b"PROXY TCP4 9.9.9.9 1.1.1.1 9 1\r\n\n")
        assert seen == ("9.9.9.9", 9)
    records = [r for r in caplog.records if r.name.startswith("pyserve")]
    assert len(records) == 1
    assert "not a PROXY protocol header" in records[0].getMessage()
    assert records[0].exc_info is None


def test_silent_peer_times_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserve.proxy")
    server = make_server(proxy_header_timeout=0.3)
    with serving(server), socket.create_connection(server.server_address, timeout=10) as idle:
        assert idle.recv(10) == b""
        assert wait_for(lambda: server.proxy_header_failures == 1)
    assert "timed out" in caplog.records[-1].getMessage()


def test_ipv4_mapped_peer_matches_an_ipv4_network() -> None:
    server = make_server(trusted_proxies=["127.0.0.1"])
    try:
        assert server.is_trusted_proxy(("::ffff:127.0.0.1", 5, 0, 0))
        assert not server.is_trusted_proxy(("::1", 5, 0, 0))
        assert not server.is_trusted_proxy("/run/haproxy.sock")
    finally:
        server.server_close()


@pytest.mark.parametrize(
    ("trusted", "error"),
    [([], "needs trusted_proxies"), (["not-an-ip"], "'not-an-ip'"), ("10.0.0.1", "collection")],
)
def test_bad_trusted_proxies_name_the_value(trusted: Any, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        make_server(trusted_proxies=trusted)


def test_unix_listener_trusts_unix_peers(tmp_path: Path) -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix-domain sockets here")
    UnixStreamServer = pyserve.UnixStreamServer  # noqa: N806 (a class)

    class UnixProxied(ProxyProtocolMixIn, ThreadingMixIn, UnixStreamServer):
        daemon_threads = True

    path = str(tmp_path / "s.sock")
    with serving(UnixProxied(path, Report, trusted_proxies=["unix"])), socket.socket(
        socket.AF_UNIX
    ) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(b"PROXY TCP6 2001:db8::5 ::1 6000 80\r\nunix\n")
        seen, _proxy, line = ast.literal_eval(client.makefile("rb").readline().decode())
    assert seen == ("2001:db8::5", 6000)
    assert line == b"unix\n"


def test_proxy_header_then_tls(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(certs.cert), str(certs.key))
    client_context = ssl.create_default_context(cafile=str(certs.ca))

    class Server(ProxyProtocolMixIn, TLSMixIn, ThreadingMixIn, TCPServer):
        daemon_threads = True

    server = Server(
        ("127.0.0.1", 0), Report, trusted_proxies=["127.0.0.1"], ssl_context=server_context
    )
    with serving(server):
        raw = socket.create_connection(server.server_address, timeout=10)
        raw.sendall(b"PROXY TCP4 192.0.2.1 10.0.0.1 1234 443\r\n")
        with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
            client.sendall(b"secret\n")
            seen, _proxy, line = ast.literal_eval(client.makefile("rb").readline().decode())
    assert seen == ("192.0.2.1", 1234)
    assert line == b"secret\n"


if hasattr(os, "fork"):
    from pyserve import ForkingMixIn

    def test_works_with_forking_children() -> None:
        class Forking(ProxyProtocolMixIn, ForkingMixIn, TCPServer):
            pass

        server = Forking(("127.0.0.1", 0), Report, trusted_proxies=["127.0.0.1"])
        with serving(server):
            seen, _, line = exchange(
                server.server_address, b"PROXY TCP4 192.0.2.77 10.0.0.1 7 80\r\nfork\n"
            )
        assert seen == ("192.0.2.77", 7)
        assert line == b"fork\n"


def test_works_with_the_thread_pool() -> None:
    class Pooled(ProxyProtocolMixIn, ThreadPoolMixIn, TCPServer):
        pass

    server = Pooled(("127.0.0.1", 0), Report, trusted_proxies=["127.0.0.1"])
    with serving(server):
        seen, _, line = exchange(
            server.server_address, b"PROXY TCP4 192.0.2.78 10.0.0.1 8 80\r\npool\n"
        )
    assert seen == ("192.0.2.78", 8)
    assert line == b"pool\n"


# --------------------------------------- peer faults: escaped, one line per reason


def test_refusals_of_untrusted_peers_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserve")
    server = make_server(trusted_proxies=["10.0.0.0/8"])
    with serving(server):
        for _ in range(5):
            assert exchange(server.server_address, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n") is None
        assert wait_for(lambda: server.proxy_rejected == 5)
    records = [r for r in caplog.records if r.name == "pyserve.proxy"]
    assert len(records) == 1
    assert "not a trusted proxy" in records[0].getMessage()


def test_bad_headers_are_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyserve")
    server = make_server()
    with serving(server):
        for _ in range(4):
            assert exchange(server.server_address, b"GET / HTTP/1.0\r\n\r\n") is None
        assert wait_for(lambda: server.proxy_header_failures == 4)
    records = [r for r in caplog.records if r.name == "pyserve.proxy"]
    assert len(records) == 1


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
def test_untrusted_unix_peer_path_is_escaped_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Unix client names its own socket: a newline in it must not forge a line."""
    caplog.set_level(logging.INFO, logger="pyserve")

    class UnixProxied(ProxyProtocolMixIn, ThreadingMixIn, pyserve.UnixStreamServer):
        daemon_threads = True

    path = str(tmp_path / "s")
    forged = str(tmp_path / "c\nCRITICAL forged line\x1b[2J")
    with serving(UnixProxied(path, Report, trusted_proxies=["10.0.0.1"])) as server, socket.socket(
        socket.AF_UNIX
    ) as client:
        client.settimeout(10)
        client.bind(forged)
        client.connect(path)
        assert client.recv(10) == b""
        assert wait_for(lambda: server.proxy_rejected == 1)
    [record] = [r for r in caplog.records if r.name == "pyserve.proxy"]
    message = record.getMessage()
    assert "\n" not in message
    assert "\x1b" not in message
    assert "\\nCRITICAL forged line\\x1b[2J" in message


def v2_unix(source: bytes, destination: bytes) -> bytes:
    body = source.ljust(108, b"\0") + destination.ljust(108, b"\0")
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, len(body)) + body


def test_proxied_unix_source_path_is_escaped_in_the_tls_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trusted proxy's v2 header names a Unix source path: the TLS failure line
    that quotes the client address must escape it."""
    caplog.set_level(logging.INFO, logger="pyserve")
    certs = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.cert), str(certs.key))

    class Server(ProxyProtocolMixIn, TLSMixIn, ThreadingMixIn, TCPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Report, trusted_proxies=["127.0.0.1"], ssl_context=context)
    with serving(server), socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(v2_unix(b"/run/x\nCRITICAL forged", b"/run/y") + b"not TLS\r\n\r\n")
        assert wait_for(lambda: server.tls_handshake_failures == 1)
    [record] = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert "\n" not in record.getMessage()
    assert "\\nCRITICAL forged" in record.getMessage()
