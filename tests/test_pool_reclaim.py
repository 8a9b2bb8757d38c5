"""A saturated pool gives a waiting client a worker at once, and one host cannot
take the whole pool.

Issue "Safe by default": ``pyserve echo --concurrency pool`` with every worker
held by connections that never say anything made the next client wait
``busy_idle_timeout`` (5 s; before that, the 60 s idle timeout). A worker held by
a connection that has sent nothing, or by one answered and idle for
``busy_idle_timeout`` already, is now given to the waiting client the moment it
waits; a client that is talking keeps its worker. And a pool server refuses a
host's connections beyond ``max_workers + queue_size // 2`` in flight, so a flood
from one address leaves room in the queue for everyone else.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Optional

import pytest
from faults import wait_until
from peers import Certificates, make_certificates

import pyserve
from pyserve.net.proxy import ProxyProtocolMixIn
from pyserve.net.tls import TLSMixIn
from pyserve.testing import serving

DEADLINE = 10.0
WORKERS = 4
pytestmark = pytest.mark.timeout(60)


class LineEcho(pyserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class TLSPool(TLSMixIn, pyserve.ThreadPoolTCPServer):
    """The ready pool server with TLS: every protection at its default."""


class ProxiedPool(ProxyProtocolMixIn, pyserve.ThreadPoolTCPServer):
    """The ready pool server behind a PROXY-protocol proxy on this machine."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


TRANSPORTS = ["workers-accept", "hand-off", "tls"]


@contextmanager
def pool(transport: str, certs: Certificates, **options: Any) -> Iterator[Any]:
    server: Any
    if transport == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certs.cert), str(certs.key))
        server = TLSPool(("127.0.0.1", 0), LineEcho, ssl_context=context, max_workers=WORKERS)
    elif transport == "proxy":
        server = ProxiedPool(("127.0.0.1", 0), LineEcho, trusted_proxies=["127.0.0.1"],
                             max_workers=WORKERS)
    else:
        server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho, max_workers=WORKERS)
        server.workers_accept = None if transport == "workers-accept" else False
    for name, value in options.items():
        setattr(server, name, value)
    with serving(server):
        yield server


def connect(server: Any, transport: str, certs: Certificates, stack: ExitStack,
            source: Optional[str] = None) -> socket.socket:
    raw = socket.create_connection(
        server.server_address, timeout=DEADLINE,
        source_address=None if source is None else (source, 0),
    )
    if transport == "proxy":
        raw.sendall(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n")
    if transport != "tls":
        return stack.enter_context(raw)
    context = ssl.create_default_context(cafile=str(certs.ca))
    return stack.enter_context(context.wrap_socket(raw, server_hostname="localhost"))


def workers_blocked_in_read(server: Any, count: int) -> bool:
    readers = [entry.reader for entry in server._registry.entries()]
    return sum(1 for r in readers if r is not None and r.waiting) >= count


def ended(sock: socket.socket) -> bool:
    """Whether the server closed this connection (refused, or given up); what it
    sent first (a TLS alert) is read and dropped."""
    sock.settimeout(0.2)
    try:
        for _ in range(100):
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def served(server: Any, transport: str, certs: Certificates, stack: ExitStack,
           source: Optional[str] = None) -> tuple[socket.socket, float]:
    """A new client, and the seconds from its connect to its first answer
    (the wait for a worker, the handshake and one line)."""
    started = time.monotonic()
    client = connect(server, transport, certs, stack, source)
    round_trip(client, b"my turn\n")
    return client, time.monotonic() - started


def round_trip(client: socket.socket, line: bytes) -> float:
    started = time.monotonic()
    client.sendall(line)
    assert client.recv(64) == line
    return time.monotonic() - started


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_silent_connections_give_their_workers_to_a_waiting_client_at_once(
    transport: str, certs: Certificates
) -> None:
    """Every worker held by a connection that never spoke: the next client is
    served at once (busy_idle_timeout is 30 s here: the old rule would make it
    wait that long), and the oldest silent connection is the one closed."""
    with pool(transport, certs, busy_idle_timeout=30.0) as server, ExitStack() as stack:
        silent = [connect(server, transport, certs, stack) for _ in range(WORKERS)]
        wait_until(lambda: workers_blocked_in_read(server, WORKERS), DEADLINE)
        late, waited = served(server, transport, certs, stack)
        assert waited < 2.0, f"waited {waited:.3f}s for a worker"
        assert silent[0].recv(16) == b""  # the longest-held one gave its worker up
        # The served client keeps its worker while it talks.
        for _ in range(3):
            assert round_trip(late, b"again\n") < 2.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_connection_idle_past_busy_idle_timeout_is_given_up_the_moment_one_waits(
    transport: str, certs: Certificates
) -> None:
    """Answered clients idle longer than busy_idle_timeout already: the waiting
    client does not wait for their next check (a slice of busy_idle_timeout)."""
    idle_for = 1.0
    with pool(transport, certs, busy_idle_timeout=idle_for) as server, ExitStack() as stack:
        talkers = [connect(server, transport, certs, stack) for _ in range(WORKERS)]
        for talker in talkers:
            round_trip(talker, b"hi\n")
        wait_until(lambda: workers_blocked_in_read(server, WORKERS), DEADLINE)
        time.sleep(idle_for * 1.2)  # the point of the test: they have been idle that long
        _, waited = served(server, transport, certs, stack)
        assert waited < idle_for * 0.5, f"waited {waited:.3f}s for a worker"


@pytest.mark.parametrize("transport", ["workers-accept", "hand-off"])
def test_a_client_in_the_middle_of_a_request_keeps_its_worker(
    transport: str, certs: Certificates
) -> None:
    """Half a line sent, the rest later: never cut for a waiting client."""
    with pool(transport, certs, busy_idle_timeout=30.0, max_workers=1) as server, \
            ExitStack() as stack:
        busy = connect(server, transport, certs, stack)
        busy.sendall(b"half")
        wait_until(lambda: any(
            e.reader is not None and e.reader.received and e.reader.waiting
            for e in server._registry.entries()), DEADLINE)
        late = connect(server, transport, certs, stack)
        late.sendall(b"waiting\n")
        wait_until(server.saturated, DEADLINE)
        busy.sendall(b" and the rest\n")
        assert busy.recv(64) == b"half and the rest\n"
        busy.close()  # now the worker is free for the waiting client
        assert late.recv(64) == b"waiting\n"


def test_the_default_per_client_limit_is_a_share_of_the_pool() -> None:
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho, bind_and_activate=False)
    try:
        assert server.max_connections_per_client == 32 + 64 // 2
        sized = pyserve.ThreadPoolTCPServer(
            ("127.0.0.1", 0), LineEcho, max_workers=8, queue_size=4, bind_and_activate=False
        )
        assert sized.max_connections_per_client == 10
        sized.max_connections_per_client = None  # explicitly off
        assert sized.max_connections_per_client is None
        sized.server_close()

        class Fixed(pyserve.ThreadPoolTCPServer):
            max_connections_per_client = 3

        fixed = Fixed(("127.0.0.1", 0), LineEcho, bind_and_activate=False)
        assert fixed.max_connections_per_client == 3
        fixed.server_close()
    finally:
        server.server_close()


@pytest.mark.parametrize("transport", ["workers-accept", "hand-off"])
def test_a_flood_from_one_address_does_not_starve_another(
    transport: str, certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """127.0.0.1 opens far more silent connections than the pool and its queue
    hold; a client from 127.0.0.2 is still served promptly. In the hand-off the
    flood's surplus is refused with one WARNING (the queue keeps room for others);
    when workers accept, nothing queues and the silent ones give their workers up
    in turn."""
    queue = 4
    limit = WORKERS + queue // 2
    with pool(transport, certs, queue_size=queue, busy_idle_timeout=30.0) as server, \
            ExitStack() as stack:
        assert server.max_connections_per_client == limit
        flood = [connect(server, transport, certs, stack) for _ in range(limit * 4)]
        if transport == "hand-off":  # workers-accept has no queue to fill
            wait_until(lambda: server.stats.rejected > 0, DEADLINE)
        _, waited = served(server, transport, certs, stack, source="127.0.0.2")
        assert waited < 2.0
        assert server._registry.from_host("127.0.0.1") <= limit
        assert sum(ended(sock) for sock in flood) >= server.stats.rejected
    lines = [r for r in caplog.records if "max_connections_per_client" in r.getMessage()]
    assert len(lines) == (transport == "hand-off")


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_socket_pools_have_no_default_per_client_limit(tmp_path: Any) -> None:
    """Every Unix-socket peer has the same (empty) address: a per-client limit
    there would be a server-wide one."""
    server = pyserve.ThreadPoolUnixStreamServer(str(tmp_path / "s"), LineEcho, max_workers=1,
                                                queue_size=0)
    try:
        assert server.max_connections_per_client is None
    finally:
        server.server_close()


@pytest.mark.parametrize("transport", ["tls", "proxy"])
def test_a_connection_silent_before_its_handshake_or_header_gives_its_worker_up(
    transport: str, certs: Certificates
) -> None:
    """Plain TCP connections that never send a TLS hello (or a PROXY header) hold
    every worker in the handshake (header) phase, before any handler reads: the
    next client is served at once, not after tls_handshake_timeout (10 s) or
    proxy_header_timeout (5 s)."""
    with pool(transport, certs, busy_idle_timeout=30.0) as server, ExitStack() as stack:
        silent = [
            stack.enter_context(socket.create_connection(server.server_address, timeout=DEADLINE))
            for _ in range(WORKERS)
        ]
        wait_until(lambda: workers_blocked_in_read(server, WORKERS), DEADLINE)
        _, waited = served(server, transport, certs, stack)
        assert waited < 2.0, f"waited {waited:.3f}s for a worker"
        assert ended(silent[0])


def test_a_drain_does_not_cut_a_tls_handshake_in_progress(certs: Certificates) -> None:
    """A client that has begun its TLS hello is not idle: a drain waits for it."""
    with pool("tls", certs) as server, ExitStack() as stack:
        raw = stack.enter_context(socket.create_connection(server.server_address,
                                                           timeout=DEADLINE))
        raw.sendall(b"\x16\x03\x01")  # a hello's first bytes
        wait_until(lambda: any(
            e.reader is not None and e.reader.received for e in server._registry.entries()),
            DEADLINE)
        server._close_idle()  # what a drain does to idle connections
        assert not ended(raw)  # the server waits for the rest of the hello


def test_a_trickled_proxy_header_gives_its_worker_up_at_once(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A real proxy sends its header whole: peers trickling one are cut the moment
    a client waits (their header ends in end-of-file), not by the half-second
    check of a saturated pool (which ends it as a timeout)."""
    caplog.set_level(logging.INFO, logger="pyserve")
    with pool("proxy", certs, busy_idle_timeout=30.0) as server, ExitStack() as stack:
        for _ in range(WORKERS):
            raw = stack.enter_context(socket.create_connection(server.server_address,
                                                               timeout=DEADLINE))
            raw.sendall(b"PROX")
        wait_until(lambda: workers_blocked_in_read(server, WORKERS), DEADLINE)
        _, waited = served(server, "proxy", certs, stack)
        assert waited < 2.0
    reasons = [r.getMessage() for r in caplog.records if "Bad PROXY header" in r.getMessage()]
    assert any("before the PROXY header ended" in m for m in reasons), reasons
    assert not any("timed out" in m for m in reasons), reasons


def test_a_trickled_tls_hello_gives_its_worker_up_within_a_second_when_others_wait(
    certs: Certificates,
) -> None:
    """Clients that send one byte of a hello and stop hold every worker in the
    handshake: a waiting client is served within about a second, not after
    tls_handshake_timeout (10 s)."""
    with pool("tls", certs, busy_idle_timeout=30.0) as server, ExitStack() as stack:
        trickling = []
        for _ in range(WORKERS):
            raw = stack.enter_context(socket.create_connection(server.server_address,
                                                               timeout=DEADLINE))
            raw.sendall(b"\x16")  # a handshake record begins...
            trickling.append(raw)
        wait_until(lambda: sum(
            1 for e in server._registry.entries() if e.reader is not None and e.reader.received
        ) >= WORKERS, DEADLINE)
        _, waited = served(server, "tls", certs, stack)
        assert waited < server.tls_handshake_timeout / 2, f"waited {waited:.3f}s"
