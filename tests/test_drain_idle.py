"""Drain closes idle connections at once (issue 16: Ctrl-C with one idle ``nc``
waited the whole drain timeout).

The rule (pyserve.lifecycle.drain): a connection is *idle* when its handler waits
for input on ``rfile`` and has answered everything it received. A drain shuts
an idle connection for reading as soon as it starts (or, during the drain, as
soon as the connection becomes idle), so its handler reads EOF and ends
normally. A client in the middle of a request is not cut; a request that
arrived before the connection went idle is answered.

Every cell runs for each strategy and transport (TCP, Unix, TLS; the
multiplexing server has no TLS).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from faults import TIMEOUT, Leaks, Running, server_has_read, wait_until
from peers import Certificates, make_certificates
from test_cli import Command, host_port

import pyserve
from pyserve.net.tls import TLSMixIn

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the kernel's socket queues"
)

GRACE = 10.0  # the drain timeout a user would have (the CLI's default)
PROMPT = 2.0  # a drain with only idle connections returns well within this
QUIET = 0.5  # how long a connection that must not be cut is watched for EOF


# -- handlers ------------------------------------------------------------------------


class LineEcho(pyserve.StreamRequestHandler):
    """A keep-alive line echo over rfile/wfile; a ``slow`` line waits for the
    server's ``release`` event first (a request in progress)."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"slow\n":
                self.server.in_slow.set()  # type: ignore[attr-defined]
                self.server.release.wait(TIMEOUT)  # type: ignore[attr-defined]
            self.wfile.write(line)


class LineEchoConnection(pyserve.ConnectionHandler):  # type: ignore[type-arg]
    """LineEcho for the multiplexing server: answers whole lines; a ``slow`` line
    holds every answer until the test calls ``release()`` in the I/O thread."""

    def connection_made(self) -> None:
        self.buffer = b""
        self.held = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.answer()

    def answer(self) -> None:
        while not self.held and b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            if line == b"slow" and not self.server.release.is_set():  # type: ignore[attr-defined]
                self.held = True
                self.buffer = line + b"\n" + self.buffer
                self.server.held.append(self)  # type: ignore[attr-defined]
                self.server.in_slow.set()  # type: ignore[attr-defined]
                return
            self.write(line + b"\n")

    def release(self) -> None:
        self.held = False
        self.answer()


# -- servers -------------------------------------------------------------------------


STRATEGIES = ["sync", "thread", "pool", "pool-workers-accept", "multiplex"]
TRANSPORTS = ["tcp", "unix", "tls"]


def _base_classes(strategy: str, transport: str) -> tuple[type, ...]:
    unix = transport == "unix"
    tcp_base: type = pyserve.UnixStreamServer if unix else pyserve.TCPServer
    mixin: dict[str, tuple[type, ...]] = {
        "sync": (),
        "thread": (pyserve.ThreadingMixIn,),
        "pool": (pyserve.ThreadPoolMixIn,),
        "pool-workers-accept": (pyserve.ThreadPoolMixIn,),
        "multiplex": (pyserve.MultiplexingMixIn,),
    }
    tls: tuple[type, ...] = (TLSMixIn,) if transport == "tls" else ()
    return (*tls, *mixin[strategy], tcp_base)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


class Cell:
    """A live server of one strategy and transport, and how to reach it."""

    def __init__(self, strategy: str, transport: str, certs: Optional[Certificates]) -> None:
        self.transport = transport
        self.directory = tempfile.mkdtemp(prefix="pyserve-idle-")  # short: sun_path
        attributes: dict[str, Any] = {"close_timeout": 1.0, "drain_force_timeout": 1.0}
        if strategy.startswith("pool"):
            attributes["workers_accept"] = strategy == "pool-workers-accept"
            attributes["max_workers"] = 4
        if strategy == "thread":
            attributes["daemon_threads"] = True
        server_class = type("Server", _base_classes(strategy, transport), attributes)
        handler = LineEchoConnection if strategy == "multiplex" else LineEcho
        kwargs: dict[str, Any] = {}
        self.client_context: Optional[ssl.SSLContext] = None
        if transport == "tls":
            assert certs is not None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certs.cert), str(certs.key))
            kwargs["ssl_context"] = context
            self.client_context = ssl.create_default_context(cafile=str(certs.ca))
        address: Any = (
            os.path.join(self.directory, "s") if transport == "unix" else ("127.0.0.1", 0)
        )
        self.server = server_class(address, handler, **kwargs)
        self.server.release = threading.Event()
        self.server.in_slow = threading.Event()
        self.server.held = []
        self.running = Running(self.server)

    def connect(self) -> socket.socket:
        family = socket.AF_UNIX if self.transport == "unix" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self.server.server_address)
        if self.client_context is not None:
            return self.client_context.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def release(self) -> None:
        """Let a held ``slow`` request be answered."""
        self.server.release.set()
        if isinstance(self.server, pyserve.MultiplexingMixIn):
            for handler in list(self.server.held):
                self.server.call_soon(handler.release)

    def stop(self) -> None:
        self.server.release.set()
        try:
            self.running.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(params=[(s, t) for s in STRATEGIES for t in TRANSPORTS if
                        not (s == "multiplex" and t == "tls")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def cell(request: pytest.FixtureRequest, certs: Certificates) -> Iterator[Cell]:
    strategy, transport = request.param
    leaks = Leaks()
    live = Cell(strategy, transport, certs if transport == "tls" else None)
    try:
        yield live
    finally:
        live.stop()
    leaks.check(live.server)


class Drain:
    """``server.drain(GRACE)`` in a thread: its report and how long it took."""

    def __init__(self, server: Any) -> None:
        self.report: Optional[pyserve.DrainReport] = None
        self.started = time.monotonic()
        self.elapsed = -1.0
        self.thread = threading.Thread(target=self._run, args=(server,), daemon=True)
        self.thread.start()
        wait_until(server.draining.is_set, what="the drain to begin")
        # The listener is closed just before the idle connections are shut.
        wait_until(lambda: server.socket.fileno() < 0, what="the listener to close")

    def _run(self, server: Any) -> None:
        self.report = server.drain(GRACE)
        self.elapsed = time.monotonic() - self.started

    def returned(self, within: float) -> bool:
        self.thread.join(within)
        return not self.thread.is_alive()


def _round_trip(sock: socket.socket, line: bytes) -> None:
    sock.sendall(line)
    assert _read_line(sock) == line


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def _at_eof(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ssl.SSLEOFError:
        return True  # the server closed without close_notify: EOF all the same


def _mid_request(server: Any, client: socket.socket) -> bool:
    """The server has read what the client sent and knows it: a blocking handler
    is waiting for the rest with the bytes noted as unanswered. (Between its
    recv() returning and that note, a drain would take the connection for idle:
    the race of a request arriving just as a keep-alive connection closes.)"""
    if not server_has_read(server, client):
        return False
    (entry,) = server.registry.entries()
    reader = entry.reader
    if reader is None:
        return True  # the multiplexing server decides in its I/O thread: no race
    return bool(reader.waiting and not reader.answered)


def _not_cut(sock: socket.socket) -> bool:
    """Nothing arrives (no EOF either) for QUIET seconds: the connection is kept.
    (A read, not select(): a TLS client's socket is readable with the session
    tickets the server sent, which are no data.)"""
    previous = sock.gettimeout()
    sock.settimeout(QUIET)
    try:
        sock.recv(1)
    except socket.timeout:
        return True
    finally:
        sock.settimeout(previous)
    return False


# -- the cells -------------------------------------------------------------------------


def test_an_idle_client_is_closed_at_once_and_the_drain_returns_promptly(cell: Cell) -> None:
    with cell.connect() as client:
        _round_trip(client, b"hello\n")
        wait_until(lambda: server_has_read(cell.server, client))
        drain = Drain(cell.server)
        assert drain.returned(PROMPT), "the drain waited on an idle connection"
        assert _at_eof(client)
    assert drain.report is not None
    assert drain.report.forced == 0
    assert drain.report.stragglers == ()
    assert drain.report.completed == 1


def test_a_client_never_heard_from_is_idle_too(cell: Cell) -> None:
    with cell.connect() as client:
        wait_until(lambda: cell.server.stats.active == 1, what="the handler to run")
        drain = Drain(cell.server)
        assert drain.returned(PROMPT), "the drain waited on a silent connection"
        assert _at_eof(client)
    assert drain.report is not None
    assert drain.report.forced == 0


def test_a_client_in_the_middle_of_a_request_is_answered_then_closed(cell: Cell) -> None:
    with cell.connect() as client:
        _round_trip(client, b"first\n")
        client.sendall(b"sec")  # a request begun: no newline yet
        wait_until(lambda: _mid_request(cell.server, client))
        drain = Drain(cell.server)
        assert _not_cut(client), "the drain cut a client in the middle of a request"
        client.sendall(b"ond\n")
        assert _read_line(client) == b"second\n"
        assert _at_eof(client)
        assert drain.returned(PROMPT)
    assert drain.report is not None
    assert drain.report.forced == 0


def test_a_request_sent_while_the_previous_one_runs_is_answered(cell: Cell) -> None:
    with cell.connect() as client:
        client.sendall(b"slow\n")
        assert cell.server.in_slow.wait(TIMEOUT)
        drain = Drain(cell.server)
        client.sendall(b"one more\n")  # during the drain, before the first answer
        assert _not_cut(client)
        cell.release()
        assert _read_line(client) == b"slow\n"
        assert _read_line(client) == b"one more\n"
        assert _at_eof(client)
        assert drain.returned(PROMPT)
    assert drain.report is not None
    assert drain.report.forced == 0


# -- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "stop"),
    [((), signal.SIGINT), (("--processes", "2"), signal.SIGTERM)],
    ids=["sigint", "prefork-sigterm"],
)
def test_cli_stop_with_an_idle_client_exits_at_once(
    options: tuple[str, ...], stop: signal.Signals
) -> None:
    """Issue 16: ``pyserve echo`` and Ctrl-C with one idle ``nc`` took the whole
    10 s drain; now it exits 0 as soon as the idle connection is closed. Prefork
    workers drain the same way."""
    command = Command(
        "echo", "--bind", "127.0.0.1:0", *options, cwd=Path(tempfile.gettempdir())
    )
    try:
        [address] = command.addresses()
        with socket.create_connection(host_port(address), timeout=TIMEOUT) as client:
            _round_trip(client, b"hello\n")
            started = time.monotonic()
            command.process.send_signal(stop)
            command.process.wait(TIMEOUT)
            elapsed = time.monotonic() - started
            assert _at_eof(client)
        assert command.process.returncode == 0, command.finish()
        assert elapsed < PROMPT, f"{stop.name} with an idle client stopped after {elapsed:.2f} s"
    finally:
        if command.process.poll() is None:
            command.process.kill()
        command.finish()


@pytest.mark.parametrize("strategy", ["thread", "pool"])
def test_the_force_step_reaches_a_tls_request_in_progress(
    strategy: str, certs: Certificates
) -> None:
    """The force step shut the plain socket the TLS one was made from (it has
    no descriptor left), so a TLS handler blocked in a read mid-request stayed
    until the force timeout and was reported as a straggler."""
    leaks = Leaks()
    live = Cell(strategy, "tls", certs)
    try:
        with live.connect() as client:
            client.sendall(b"half a li")
            wait_until(lambda: _mid_request(live.server, client))
            report = live.server.drain(0.2, force_timeout=GRACE)
            assert report.elapsed < PROMPT, report
            assert (report.forced, report.stragglers) == (1, ())
            assert _read_line(client) == b"half a li"  # the handler's readline() got EOF
    finally:
        live.stop()
    leaks.check(live.server)
