"""The per-connection limits hold on every transport, with default settings.

Issue "Safe by default": with TLS, ``rfile`` used to fall back to the socket's own
file object, so ``idle_timeout``, ``request_deadline`` and ``max_line_length`` did
nothing; a pool whose workers were all held by idle clients made the next client
wait out the whole idle timeout, and nothing was logged.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Optional

import pytest
from peers import Certificates, make_certificates

import pyserve
from pyserve.net.tls import TLSMixIn
from pyserve.testing import serving

DEADLINE = 10.0
pytestmark = pytest.mark.timeout(60)


class LineEcho(pyserve.StreamRequestHandler):
    """Echo lines until the client hangs up (what a keep-alive protocol does)."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class RawEcho(pyserve.BaseRequestHandler):
    """Reads the raw socket, never rfile: protected at the socket all the same."""

    def handle(self) -> None:
        while True:
            data = self.request.recv(4096)
            if not data:
                return
            self.request.sendall(data)


class TLSPool(TLSMixIn, pyserve.ThreadPoolTCPServer):
    """The ready pool server with TLS: every protection at its default."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_pool(certs: Certificates) -> Iterator[TLSPool]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.cert), str(certs.key))
    server = TLSPool(("127.0.0.1", 0), LineEcho, ssl_context=context, max_workers=4)
    with serving(server):
        yield server


@contextmanager
def tls_client(server: pyserve.TCPServer, certs: Certificates) -> Iterator[ssl.SSLSocket]:
    context = ssl.create_default_context(cafile=str(certs.ca))
    raw = socket.create_connection(server.server_address, timeout=DEADLINE)
    with context.wrap_socket(raw, server_hostname="localhost") as client:
        yield client


def test_a_tls_line_over_the_limit_closes_the_connection(
    tls_pool: TLSPool, certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    limit = tls_pool.max_line_length
    assert limit is not None
    with tls_client(tls_pool, certs) as client:
        client.sendall(b"short\n")
        assert client.recv(64) == b"short\n"
        try:
            client.sendall(b"x" * (limit * 3))  # 192 KiB without a newline
        except OSError:
            pass  # the server may close while we still send: that is the point
        assert client.recv(64) == b""
    assert any("max_line_length" in r.getMessage() for r in caplog.records)


def test_a_silent_tls_client_is_dropped_after_the_idle_timeout(
    tls_pool: TLSPool, certs: Certificates
) -> None:
    tls_pool.idle_timeout = 0.3
    with tls_client(tls_pool, certs) as client:
        client.sendall(b"hello\n")
        assert client.recv(64) == b"hello\n"
        started = time.monotonic()
        assert client.recv(64) == b""
        assert time.monotonic() - started < DEADLINE / 2


@pytest.mark.parametrize("workers_accept", [None, False], ids=["default", "hand-off"])
def test_idle_clients_holding_every_worker_give_one_up_to_a_waiting_client(
    caplog: pytest.LogCaptureFixture, workers_accept: Optional[bool]
) -> None:
    """Defaults but for a small pool: four idle keep-alive clients hold every worker;
    a fifth client is served within busy_idle_timeout (5 s by default), not idle_timeout (60 s),
    and one WARNING says the pool is saturated and what helps (also when workers
    accept, and the fifth client waits in the kernel's backlog, not in a queue)."""
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho, max_workers=4)
    server.workers_accept = workers_accept
    assert server.busy_idle_timeout == 5.0  # the default; a second here keeps the test short
    server.busy_idle_timeout = 1.0
    with serving(server), ExitStack() as stack:
        for _ in range(4):
            idle = stack.enter_context(socket.create_connection(server.server_address))
            idle.settimeout(DEADLINE)
            idle.sendall(b"hi\n")
            assert idle.recv(16) == b"hi\n"  # now it holds a worker, silent
        with socket.create_connection(server.server_address, timeout=DEADLINE * 2) as late:
            started = time.monotonic()
            late.sendall(b"my turn\n")
            assert late.recv(64) == b"my turn\n"
            waited = time.monotonic() - started
        assert waited < server.busy_idle_timeout * 3
    warnings = [r for r in caplog.records if "saturated" in r.getMessage()]
    assert len(warnings) == 1
    assert "max_workers" in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
    where = "in the listen backlog" if workers_accept is None else "1 waiting for a worker"
    assert where in warnings[0].getMessage()


def test_busy_clients_are_never_cut_off_while_the_pool_is_saturated() -> None:
    """Only a silent connection gives up its worker: one that keeps talking stays.
    (One that has not said anything yet gives its worker up at once, see
    test_pool_reclaim.py: the talker speaks before the waiter comes.)"""
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho, max_workers=1)
    server.busy_idle_timeout = 0.2
    with serving(server), socket.create_connection(server.server_address) as talker:
        talker.settimeout(DEADLINE)
        talker.sendall(b"hello\n")
        assert talker.recv(16) == b"hello\n"
        waiter = socket.create_connection(server.server_address, timeout=DEADLINE)
        with waiter:
            waiter.sendall(b"waiting\n")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # keeps its worker busy, never idle 0.2 s
                talker.sendall(b"ping\n")
                assert talker.recv(16) == b"ping\n"
                time.sleep(0.05)
            assert server.saturated()
        talker.sendall(b"still here\n")
        assert talker.recv(32) == b"still here\n"


def test_a_raw_socket_handler_is_held_to_the_idle_timeout() -> None:
    """A handler that never touches rfile reads a socket whose timeout is the
    server's idle_timeout: a silent client cannot hold a pool worker forever."""
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), RawEcho, max_workers=2)
    server.idle_timeout = 0.3
    with serving(server), socket.create_connection(server.server_address) as client:
        client.settimeout(DEADLINE)
        client.sendall(b"x")
        assert client.recv(8) == b"x"
        started = time.monotonic()
        assert client.recv(8) == b""
        assert time.monotonic() - started < DEADLINE / 2
        # Served and logged quietly: a timeout is the peer's doing.
    assert server.stats.timed_out + server.stats.errored == 1


def test_a_flood_of_peer_faults_logs_one_line_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    """Fifty clients each send an over-long line: fifty connections closed, one
    WARNING (the rest are counted into the next line for that kind of fault)."""
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho, max_workers=4)
    server.max_line_length = 64
    with serving(server):
        for _ in range(50):
            with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
                client.sendall(b"x" * 200 + b"\n")
                assert client.recv(64) == b""
    closed = [r for r in caplog.records if "Closed the connection" in r.getMessage()]
    assert len(closed) == 1
    assert "LineTooLong" not in closed[0].getMessage()  # the reason, not the class
    assert "max_line_length=64" in closed[0].getMessage()


class ProxiedPool(pyserve.ProxyProtocolMixIn, pyserve.ThreadPoolTCPServer):
    """The PROXY protocol on the ready pool; local peers are the trusted proxy."""

    trusted_proxies = ("127.0.0.1",)


def test_trickling_proxy_headers_cannot_hold_a_saturated_pool() -> None:
    """Two peers trickle a PROXY header a byte at a time and hold both workers;
    a real proxy's connection is served within about a second, not after the
    five-second header timeout."""
    server = ProxiedPool(("127.0.0.1", 0), LineEcho, max_workers=2)
    with serving(server), ExitStack() as stack:
        header = b"PROXY TCP4 192.0.2.9 192.0.2.2 6666 80\r\n"
        tricklers = []
        for _ in range(2):
            trickler = stack.enter_context(socket.create_connection(server.server_address))
            trickler.settimeout(DEADLINE)
            trickler.sendall(header[:1])
            tricklers.append(trickler)
        with socket.create_connection(server.server_address, timeout=DEADLINE) as real:
            started = time.monotonic()
            real.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 80\r\nhello\n")
            for step in range(1, 21):  # keep trickling (bounded) while the real one waits
                for trickler in tricklers:
                    try:
                        trickler.sendall(header[step : step + 1])
                    except OSError:
                        pass  # cut off: that is the point
                real.settimeout(0.3)
                try:
                    reply = real.recv(64)
                    break
                except socket.timeout:
                    continue
            else:
                raise AssertionError("the real proxy's client was never served")
            assert reply == b"hello\n"
            assert time.monotonic() - started < server.proxy_header_timeout
