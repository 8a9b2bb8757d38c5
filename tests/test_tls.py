"""TLSMixIn: handshakes in the worker, bounded; real clients (ssl, openssl, urllib)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from peers import Certificates, make_certificates, require_binary

from pyserve import StreamRequestHandler, TCPServer, ThreadingMixIn, ThreadPoolMixIn
from pyserve.net.tls import TLSMixIn
from pyserve.testing import serving

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server_context(certs: Certificates) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.cert), str(certs.key))
    return context


@pytest.fixture
def client_context(certs: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


class TwoLineEcho(StreamRequestHandler):
    """Echo two lines (rfile/wfile over the TLS socket), then end by itself.

    Not "until EOF": a forked child inherits the test's client socket, so the
    client closing its copy would never reach it as EOF.
    """

    def handle(self) -> None:
        for _ in range(2):
            self.wfile.write(self.rfile.readline())


class OneLineEcho(StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class SyncTLSServer(TLSMixIn, TCPServer):
    pass


class ThreadingTLSServer(TLSMixIn, ThreadingMixIn, TCPServer):
    daemon_threads = True


class PoolTLSServer(TLSMixIn, ThreadPoolMixIn, TCPServer):
    """TLS on the bounded thread pool: the handshake runs in a pool worker."""


STRATEGIES: list[type[TCPServer]] = [SyncTLSServer, ThreadingTLSServer, PoolTLSServer]
if hasattr(os, "fork"):
    from pyserve import ForkingMixIn

    class ForkingTLSServer(TLSMixIn, ForkingMixIn, TCPServer):
        pass

    STRATEGIES.append(ForkingTLSServer)


def tls_client(address: Any, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def tls_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pyserve.tls"]


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    """Poll a condition the server changes from its worker, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("server_class", STRATEGIES, ids=lambda c: c.__name__)
def test_stream_handler_works_unchanged_over_tls(
    server_class: type[TCPServer], server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = server_class(("127.0.0.1", 0), TwoLineEcho, ssl_context=server_context)  # type: ignore[call-arg]
    with serving(server), tls_client(server.server_address, client_context) as client:
        client.sendall(b"first\nsecond\n")
        received = b""
        while received.count(b"\n") < 2:
            received += client.recv(100)
        assert received == b"first\nsecond\n"
        assert client.version() in ("TLSv1.2", "TLSv1.3")


def test_session_ends_with_close_notify(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = ThreadingTLSServer(("127.0.0.1", 0), OneLineEcho, ssl_context=server_context)
    with serving(server), tls_client(server.server_address, client_context) as client:
        client.sendall(b"bye\n")
        assert client.recv(100) == b"bye\n"
        # A clean TLS end reads as b""; a bare FIN would raise SSLEOFError.
        assert client.recv(100) == b""


def test_silent_clients_do_not_delay_a_tls_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = ThreadingTLSServer(
        ("127.0.0.1", 0), OneLineEcho, ssl_context=server_context, tls_handshake_timeout=30
    )
    with serving(server):
        silent = [socket.create_connection(server.server_address, timeout=10) for _ in range(100)]
        try:
            with tls_client(server.server_address, client_context) as client:
                client.sendall(b"served\n")
                assert client.recv(100) == b"served\n"
            # Served while all 100 were still mid-handshake: none had failed yet.
            assert server.tls_handshake_failures == 0
        finally:
            for sock in silent:
                sock.close()
        assert wait_for(lambda: server.tls_handshake_failures == 100)


def test_handshake_timeout_cuts_off_a_silent_client(
    server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyserve")
    server = ThreadingTLSServer(
        ("127.0.0.1", 0), OneLineEcho, ssl_context=server_context, tls_handshake_timeout=0.5
    )
    with serving(server), socket.create_connection(server.server_address, timeout=10) as idle:
        assert idle.recv(100) == b""  # the server closed it (or the recv timeout fails us)
        assert wait_for(lambda: server.tls_handshake_failures == 1)
    [record] = tls_records(caplog)
    assert "timed out" in record.getMessage()
    assert record.exc_info is None


def test_trickling_client_is_cut_off_at_the_total_deadline(server_context: ssl.SSLContext) -> None:
    server = ThreadingTLSServer(
        ("127.0.0.1", 0), OneLineEcho, ssl_context=server_context, tls_handshake_timeout=1.0
    )
    with serving(server), socket.create_connection(server.server_address, timeout=10) as slow:
        slow.settimeout(0.2)
        started = time.monotonic()
        # A TLS record header, then a ClientHello body byte by byte: each byte
        # arrives well within any per-read timeout, so only a total deadline ends it.
        prefix, body_byte = b"\x16\x03\x01\x02\x00", b"\x01"
        slow.sendall(prefix)
        closed = False
        while time.monotonic() - started < 10 and not closed:
            try:
                closed = slow.recv(100) == b""
            except socket.timeout:
                try:
                    slow.sendall(body_byte)
                except OSError:
                    closed = True
            except OSError:
                closed = True
        assert closed, "a trickling client was not cut off"
        assert wait_for(lambda: server.tls_handshake_failures == 1)


def test_plain_text_clients_cost_one_rate_limited_log_line_and_a_count_each(
    server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyserve")
    server = ThreadingTLSServer(("127.0.0.1", 0), OneLineEcho, ssl_context=server_context)
    with serving(server):
        for _ in range(3):
            with socket.create_connection(server.server_address, timeout=10) as plain:
                plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
                try:
                    plain.recv(1000)  # an alert or nothing, then EOF
                except ConnectionResetError:
                    pass
        assert wait_for(lambda: server.tls_handshake_failures == 3)
    records = tls_records(caplog)
    assert len(records) == 1  # the same reason again within a minute: counted, not logged
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_untrusting_client_does_not_disturb_the_server(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = ThreadingTLSServer(("127.0.0.1", 0), OneLineEcho, ssl_context=server_context)
    with serving(server):
        stranger = ssl.create_default_context()  # does not trust the test CA
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_client(server.server_address, stranger).close()
        with tls_client(server.server_address, client_context) as client:
            client.sendall(b"still here\n")
            assert client.recv(100) == b"still here\n"
        assert wait_for(lambda: server.tls_handshake_failures == 1)


def test_openssl_s_client_talks_to_the_server(
    certs: Certificates, server_context: ssl.SSLContext
) -> None:
    openssl = require_binary("openssl", "openssl")
    server = ThreadingTLSServer(("127.0.0.1", 0), OneLineEcho, ssl_context=server_context)
    with serving(server):
        host, port = server.server_address
        result = subprocess.run(
            [openssl, "s_client", "-quiet", "-connect", f"{host}:{port}",
             "-CAfile", str(certs.ca), "-verify_return_error", "-verify_ip", host],
            input=b"hello from openssl\n",
            check=False,
            capture_output=True,
            timeout=20,
        )  # fmt: skip
    assert result.stdout == b"hello from openssl\n", result.stderr.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def test_http_server_handler_over_https_with_urllib(
    tmp_path: Path, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello over https\n")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = ThreadingTLSServer(("127.0.0.1", 0), handler, ssl_context=server_context)
    with serving(server):
        host, port = server.server_address
        url = f"https://{host}:{port}/hello.txt"
        with urllib.request.urlopen(url, context=client_context, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b"hello over https\n"


def test_missing_context_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="ssl_context"):
        ThreadingTLSServer(("127.0.0.1", 0), OneLineEcho)


def test_bad_handshake_timeout_names_the_value(server_context: ssl.SSLContext) -> None:
    with pytest.raises(ValueError, match="-1"):
        ThreadingTLSServer(
            ("127.0.0.1", 0), OneLineEcho, ssl_context=server_context, tls_handshake_timeout=-1
        )


def test_handshake_runs_in_the_worker_not_the_loop(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    seen: list[str] = []

    class Recording(ThreadingTLSServer):
        def tls_handshake(self, request: socket.socket, client_address: Any) -> Any:
            seen.append(threading.current_thread().name)
            return super().tls_handshake(request, client_address)

    server = Recording(("127.0.0.1", 0), OneLineEcho, ssl_context=server_context)
    with serving(server), tls_client(server.server_address, client_context) as client:
        client.sendall(b"x\n")
        assert client.recv(10) == b"x\n"
    assert len(seen) == 1
    assert not seen[0].startswith("pyserve serving")  # not the loop's thread


# ------------------------------------- the stdlib's recipe: an SSL-wrapped listener


class RecordingServer(ThreadingMixIn, TCPServer):
    """A server whose handle_error, like much real code, expects a real request."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.errors: list[tuple[Any, Any]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append((request, client_address))
        request.getpeername()  # an override that trusts it has a request
        super().handle_error(request, client_address)


def test_plain_client_on_an_ssl_wrapped_listener_is_one_quiet_event(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``server.socket = ctx.wrap_socket(server.socket, server_side=True)`` (the
    stdlib's HTTPS recipe): a client speaking plain TCP fails the handshake inside
    get_request(). That is the client's business: a DEBUG line and a count, never
    handle_error(None, None) with a traceback, and the next TLS client is served."""
    caplog.set_level(logging.DEBUG, logger="pyserve")
    server = RecordingServer(("127.0.0.1", 0), OneLineEcho)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                plain.recv(100)  # an alert, EOF or a reset: the handshake failed
        with tls_client(server.server_address, client_context) as client:
            client.sendall(b"after\n")
            assert client.recv(100) == b"after\n"
        assert server.tls_handshake_failures == 1
    assert server.errors == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("handshake" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
