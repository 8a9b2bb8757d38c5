"""The registry of live requests, graceful drain, and bounded server_close()."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import pytest
from conftest import wait_until

import pyserve
from pyserve.testing import serving

DEADLINE = 10.0


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=DEADLINE)


class Hold(pyserve.BaseRequestHandler):
    """Reads until EOF or a "." (a forked child shares the test's client socket, so
    it never sees EOF): a keep-alive client that never hangs up."""

    def handle(self) -> None:
        while True:
            data = self.request.recv(100)
            if not data or data.endswith(b"."):
                return


# -- the registry ----------------------------------------------------------------


def _server_classes():
    classes = [pyserve.ThreadingTCPServer, pyserve.ThreadPoolTCPServer]
    if hasattr(os, "fork"):
        classes.append(pyserve.ForkingTCPServer)
    return classes


@pytest.mark.parametrize("server_class", _server_classes(), ids=lambda c: c.__name__)
def test_in_flight_lists_each_running_request_with_client_and_place(server_class) -> None:
    server = server_class(("127.0.0.1", 0), Hold)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
            wait_until(lambda: [r.state for r in server.in_flight()] == ["running"])
            (record,) = server.in_flight()
            assert record.client_address == client.getsockname()
            assert 0 <= record.age < DEADLINE
            assert abs(record.since_wall - time.time()) < DEADLINE
            if server_class is pyserve.ForkingTCPServer:
                assert record.pid != os.getpid()
            else:
                assert record.pid == os.getpid()
                assert record.thread_name is not None
            client.sendall(b".")
        wait_until(lambda: not server.in_flight())
    assert server.stats.finished == 1


class _HandOff(pyserve.ThreadPoolTCPServer):
    workers_accept = False


@pytest.mark.parametrize(
    "server_class",
    [pyserve.TCPServer, pyserve.ThreadingTCPServer, pyserve.ThreadPoolTCPServer, _HandOff],
    ids=["sync", "thread", "pool-workers-accept", "pool-hand-off"],
)
def test_the_record_names_the_thread_that_runs_the_handler(server_class) -> None:
    seen: dict[str, object] = {}

    class Where(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            here = threading.current_thread()
            seen["thread"] = (here.ident, here.name)
            seen["records"] = self.server.in_flight()
            seen["stats"] = self.server.stats

    server = server_class(("127.0.0.1", 0), Where)
    with serving(server), connect(server) as client:
        assert client.recv(10) == b""
    (record,) = seen["records"]
    assert (record.state, record.thread_ident, record.thread_name) == ("running", *seen["thread"])
    stats = seen["stats"]
    assert (stats.accepted, stats.started, stats.active, stats.queued) == (1, 1, 1, 0)
    wait_until(lambda: server.stats.finished == 1)
    assert server.in_flight() == ()


def test_synchronous_server_registers_the_request_while_it_runs() -> None:
    seen = []

    class Look(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            seen.extend(self.server.in_flight())

    server = pyserve.TCPServer(("127.0.0.1", 0), Look)
    with serving(server), connect(server) as client:
        assert client.recv(10) == b""
    assert [r.state for r in seen] == ["running"]
    assert seen[0].thread_ident != threading.get_ident()
    assert server.in_flight() == ()


def test_in_flight_records_are_read_only() -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Hold)
    with serving(server), connect(server):
        wait_until(lambda: len(server.in_flight()) == 1)
        with pytest.raises(AttributeError):
            server.in_flight()[0].state = "finished"  # type: ignore[misc]


# -- drain -----------------------------------------------------------------------


_handled_lock = threading.Lock()  # `+=` from fifty threads loses counts (PyPy CI saw it)


class Replies(pyserve.StreamRequestHandler):
    """Request/response loop that stops after the current reply once draining."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)
            with _handled_lock:
                self.server.handled += 1  # type: ignore[attr-defined]
            if self.server.draining.is_set():
                return


def test_drain_under_load_loses_no_response() -> None:
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Replies, max_workers=60)
    server.handled = 0  # type: ignore[attr-defined]
    received = [0] * 50
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            with socket.create_connection(server.server_address, timeout=DEADLINE) as sock:
                reader = sock.makefile("rb")
                stop_at = time.monotonic() + DEADLINE
                while time.monotonic() < stop_at:
                    message = b"%d\n" % number
                    try:
                        sock.sendall(message)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # closed after our last reply: nothing was lost
                    reply = reader.readline()
                    if not reply:
                        return
                    assert reply == message
                    with lock:
                        received[number] += 1
        except BaseException as exc:
            errors.append(exc)

    with serving(server):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(received))  # everyone is in its loop
        report = server.drain(grace=DEADLINE)
        for thread in threads:
            thread.join(DEADLINE)
    assert not errors
    assert report.forced == 0
    assert report.stragglers == ()
    assert report.completed == 50
    assert sum(received) == server.handled  # type: ignore[attr-defined]
    assert server.stats.finished == 50


def test_drain_sets_draining_and_stops_the_loop() -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Hold)
    with serving(server):
        assert not server.draining.is_set()
        report = server.drain(grace=1.0)
        assert server.draining.is_set()
        assert not server._loop_running.is_set()
    assert report == pyserve.DrainReport(0, 0, (), report.elapsed)


def test_drain_shuts_blocked_reads_after_grace_so_handlers_finish() -> None:
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Hold)
    with serving(server), connect(server) as client:
        wait_until(lambda: server.stats.active == 1)
        report = server.drain(grace=0.05)
        assert client.recv(10) == b""  # the handler ended and the server sent FIN
    assert (report.completed, report.forced, report.stragglers) == (0, 1, ())
    assert server.stats.drained == 1


def test_drain_logs_stragglers_by_client_address(caplog) -> None:
    release = threading.Event()

    class Stubborn(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            release.wait(DEADLINE)  # never reads: SHUT_RD cannot end it

    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Stubborn)
    with serving(server), connect(server) as client:
        wait_until(lambda: server.stats.active == 1)
        with caplog.at_level(logging.WARNING, logger="pyserve"):
            report = server.drain(grace=0.05, force_timeout=0.05)
        release.set()
        address = client.getsockname()
    (straggler,) = report.stragglers
    assert straggler.client_address == address
    assert straggler.forced
    assert str(address) in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_drain_sends_sigterm_to_forked_children() -> None:
    server = pyserve.ForkingTCPServer(("127.0.0.1", 0), Hold)
    with serving(server), socket.create_connection(server.server_address, timeout=DEADLINE):
        wait_until(lambda: server.stats.active == 1)
        report = server.drain(grace=0.05)
    assert (report.forced, report.stragglers) == (1, ())
    assert server.active_children == set()
    assert server.stats.errored == 1  # killed by SIGTERM


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_drain_kills_children_that_ignore_sigterm_at_the_deadline() -> None:
    class Deaf(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.request.sendall(b"deaf")
            time.sleep(DEADLINE)

    server = pyserve.ForkingTCPServer(("127.0.0.1", 0), Deaf)
    with serving(server), connect(server) as client:
        assert client.recv(10) == b"deaf"  # SIGTERM is ignored from here on
        report = server.drain(grace=0.05, force_timeout=0.2)
    assert len(report.stragglers) == 1
    server.collect_children(blocking=True)
    assert server.active_children == set()


def test_negative_grace_is_refused_by_value() -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Hold)
    with server, pytest.raises(ValueError, match="-1"):
        server.drain(-1)


# -- bounded close -----------------------------------------------------------------


@pytest.mark.parametrize(
    "server_class",
    [pyserve.ThreadingTCPServer, pyserve.ThreadPoolTCPServer],
    ids=lambda c: c.__name__,
)
def test_server_close_does_not_wait_forever_on_a_keep_alive_client(server_class) -> None:
    class Bounded(server_class):  # type: ignore[misc, valid-type]
        close_timeout = 0.1

    server = Bounded(("127.0.0.1", 0), Hold)
    with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        wait_until(lambda: server.stats.active == 1)
        server.shutdown()
        thread.join(DEADLINE)
        started = time.monotonic()
        server.server_close()
        took = time.monotonic() - started
        assert client.recv(10) == b""  # the handler saw EOF and ended
    assert took < DEADLINE / 2
    assert server.in_flight() == ()


def test_close_timeout_default_is_documented_value() -> None:
    assert pyserve.ThreadingTCPServer.close_timeout == 30.0
    assert pyserve.ThreadPoolTCPServer.close_timeout == 30.0


def test_drain_before_serve_forever_starts_still_stops_it() -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    try:
        report = server.drain(0.0)
        assert report.forced == 0
        finished = threading.Event()

        def serve() -> None:
            server.serve_forever()
            finished.set()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert finished.wait(10), "serve_forever() kept serving after a drain"
        thread.join(10)
    finally:
        server.server_close()
