"""Per-connection protections: deadline, idle timeout, line length, connection limits."""

from __future__ import annotations

import io
import logging
import os
import resource
import shutil
import socket
import tempfile
import threading
import time

import pytest
from conftest import wait_until

import pyserve
from pyserve.logs import RateLimitedLog
from pyserve.testing import serving

DEADLINE = 10.0


class LineEcho(pyserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def pool(handler=LineEcho, **attributes):
    server_class = type("Pool", (pyserve.ThreadPoolTCPServer,), attributes)
    return server_class(("127.0.0.1", 0), handler)


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=DEADLINE)


def closed_by_server(client: socket.socket) -> bool:
    try:
        return client.recv(100) == b""
    except ConnectionResetError:
        return True


# -- defaults ------------------------------------------------------------------------


def test_plain_servers_and_handlers_have_no_protection_by_default() -> None:
    for owner in (pyserve.ThreadingTCPServer, pyserve.TCPServer, pyserve.StreamRequestHandler):
        assert owner.idle_timeout is None
        assert owner.request_deadline is None
        assert owner.max_line_length is None
    assert pyserve.ThreadingTCPServer.max_connections is None
    assert pyserve.ThreadingTCPServer.max_connections_per_client is None


def test_pool_servers_protect_by_default() -> None:
    assert pyserve.ThreadPoolTCPServer.idle_timeout == 60.0
    assert pyserve.ThreadPoolTCPServer.request_deadline == 300.0
    assert pyserve.ThreadPoolTCPServer.max_line_length == 65536


def test_unprotected_rfile_is_the_fast_reader() -> None:
    kinds = []

    class Look(pyserve.StreamRequestHandler):
        def handle(self) -> None:
            kinds.append(type(self.rfile.raw).__name__)  # type: ignore[attr-defined]

    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Look)
    with serving(server), connect(server) as client:
        assert client.recv(10) == b""
    assert kinds == ["SocketReader"]


# -- deadline and idle timeout ---------------------------------------------------------


def test_slowloris_is_dropped_at_its_deadline_while_a_normal_client_is_served(caplog) -> None:
    server = pool(request_deadline=0.5, idle_timeout=5.0)
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        slow = connect(server)
        stop = threading.Event()

        def dribble() -> None:  # one byte every 50 ms, never a newline
            while not stop.wait(0.05):
                try:
                    slow.send(b"x")
                except OSError:
                    return

        dribbler = threading.Thread(target=dribble)
        dribbler.start()
        try:
            started = time.monotonic()
            with connect(server) as normal:
                normal.sendall(b"hello\n")
                assert normal.recv(100) == b"hello\n"
            normal_round_trip = time.monotonic() - started
            assert closed_by_server(slow)
            slow_lifetime = time.monotonic() - started
        finally:
            stop.set()
            dribbler.join(DEADLINE)
            slow.close()
        wait_until(lambda: server.stats.timed_out == 1)
    assert normal_round_trip < slow_lifetime
    # Served at once, not after the slow client's deadline (a fifth of it: 100 ms).
    assert normal_round_trip < 0.1
    assert 0.4 < slow_lifetime < DEADLINE
    assert caplog.text.count("request deadline of 0.5s passed") == 1


def test_silent_client_is_dropped_after_idle_timeout(caplog) -> None:
    server = pool(idle_timeout=0.2)
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        with connect(server) as client:
            client.sendall(b"one\n")
            assert client.recv(100) == b"one\n"
            assert closed_by_server(client)
        wait_until(lambda: server.stats.timed_out == 1)
    assert "no data for idle_timeout=0.2s" in caplog.text


def test_handler_attribute_overrides_the_servers() -> None:
    class Patient(LineEcho):
        idle_timeout = 30.0

    server = pool(Patient, idle_timeout=0.01)
    with serving(server), connect(server) as client:
        time.sleep(0.1)  # longer than the server's idle timeout, not the handler's
        client.sendall(b"late\n")
        assert client.recv(100) == b"late\n"


# -- line length -----------------------------------------------------------------------


def test_over_long_line_closes_the_connection_with_one_logged_reason(caplog) -> None:
    server = pool(max_line_length=1024)
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        with connect(server) as client:
            client.sendall(b"x" * 5000)
            assert closed_by_server(client)
        wait_until(lambda: server.stats.errored == 1)
    lines = [r for r in caplog.records if "max_line_length" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None


def test_lines_within_the_limit_and_explicit_sizes_pass() -> None:
    data = io.BytesIO(b"abc\n" + b"y" * 20 + b"\n")
    reader = pyserve.lifecycle.limits.LineLimitedReader(data, 64, 8)
    assert reader.readline() == b"abc\n"
    assert reader.readline(3) == b"yyy"
    with pytest.raises(pyserve.LineTooLong):
        reader.readline()


def test_200_megabyte_line_costs_bounded_memory() -> None:
    server = pool(max_line_length=65536)
    chunk = memoryview(b"z" * (1 << 20))
    sent = 0
    memory = _PeakMemory()
    try:
        with serving(server), connect(server) as client:
            try:
                for _ in range(200):  # 200 MiB, no newline
                    client.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed the connection: what we wanted
            wait_until(lambda: server.stats.errored == 1)
        peak = memory.peak()
    finally:
        memory.stop()
    assert sent < 200 << 20  # refused long before the end
    assert peak < memory.bound  # the line limit plus buffers, not the line


# -- connection limits -----------------------------------------------------------------


class Hold(pyserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"hi")
        while self.request.recv(100):
            pass


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_client"])
def test_connections_over_a_limit_are_closed_counted_and_logged(limit, caplog) -> None:
    server_class = type("Limited", (pyserve.ThreadingTCPServer,), {limit: 2})
    server = server_class(("127.0.0.1", 0), Hold)
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        first, second = connect(server), connect(server)
        try:
            assert first.recv(2) == second.recv(2) == b"hi"
            with connect(server) as third:
                assert closed_by_server(third)
        finally:
            first.close()
            second.close()
        wait_until(lambda: server.stats.finished == 2)
    assert server.stats.rejected == 1
    assert caplog.text.count(f"{limit}=2 reached") == 1


def test_a_flood_of_rejections_is_logged_once(caplog) -> None:
    server_class = type("Limited", (pyserve.ThreadingTCPServer,), {"max_connections": 0})
    server = server_class(("127.0.0.1", 0), Hold)
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        for _ in range(5):
            with connect(server) as client:
                assert closed_by_server(client)
    assert server.stats.rejected == 5
    assert caplog.text.count("max_connections=0 reached") == 1


@pytest.mark.parametrize("observed", [False, True], ids=["unobserved", "observed"])
def test_a_connection_refused_by_a_limit_still_counts_as_accepted(observed) -> None:
    # Unobserved, the registry counts "accepted" in the step that admits (or
    # refuses) the connection; observed, before the "accepted" event. Same totals.
    server_class = type("Limited", (pyserve.ThreadPoolTCPServer,), {"max_connections": 0})
    server = server_class(("127.0.0.1", 0), Hold)
    if observed:
        server.add_observer(lambda event: None)
    with serving(server):
        for _ in range(2):
            with connect(server) as client:
                assert closed_by_server(client)
    stats = server.stats
    assert (stats.accepted, stats.rejected, stats.started) == (2, 2, 0)


def test_rejections_held_back_are_counted_in_the_next_line(caplog) -> None:
    now = [0.0]
    server_class = type("Limited", (pyserve.ThreadingTCPServer,), {"max_connections": 0})
    server = server_class(("127.0.0.1", 0), Hold)
    # The server's own rate-limited log, on a clock the test moves.
    server._peer_fault_log = RateLimitedLog(
        logging.getLogger("pyserve"), server.rejection_log_interval, clock=lambda: now[0]
    )
    with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
        # Four rejections at once, then one a minute later.
        for count, seconds in enumerate((0.0, 0.0, 0.0, 0.0, 61.0), start=1):
            now[0] = seconds
            with connect(server) as client:
                assert closed_by_server(client)
            wait_until(lambda count=count: server.stats.rejected == count)
    lines = [r.getMessage() for r in caplog.records if "Rejected" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].endswith(": max_connections=0 reached")
    assert lines[1].endswith(
        ": max_connections=0 reached (3 more like this since the last such line)"
    )


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix-domain sockets")
def test_a_rejected_clients_socket_path_is_escaped_in_the_log(caplog) -> None:
    directory = tempfile.mkdtemp(prefix="ps-")  # short: Unix paths end at 108 bytes
    try:
        server_class = type("Limited", (pyserve.ThreadingUnixStreamServer,), {"max_connections": 0})
        server = server_class(os.path.join(directory, "s"), Hold)
        with serving(server), caplog.at_level(logging.WARNING, logger="pyserve"):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(DEADLINE)
                client.bind(os.path.join(directory, "c\nFAKE \x1b[2J"))
                client.connect(server.server_address)
                assert closed_by_server(client)
            wait_until(lambda: server.stats.rejected == 1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    [line] = [r.getMessage() for r in caplog.records if "Rejected" in r.getMessage()]
    assert "\n" not in line
    assert "\x1b" not in line
    assert "c\\nFAKE \\x1b[2J'" in line


def test_limits_free_up_as_connections_end() -> None:
    server_class = type("Limited", (pyserve.ThreadingTCPServer,), {"max_connections": 1})
    with serving(server_class(("127.0.0.1", 0), Hold)) as server:
        for _ in range(3):
            with connect(server) as client:
                assert client.recv(2) == b"hi"
            wait_until(lambda: not server.in_flight())
    assert server.stats.rejected == 0


class _PeakMemory:
    """Peak memory growth while a block runs: tracemalloc where it exists (CPython,
    exact, 4 MiB bound); elsewhere (PyPy has no tracemalloc) the growth of the
    process's peak RSS, with a looser 64 MiB bound that is still far below the
    200 MB line the test sends."""

    def __init__(self) -> None:
        try:
            import tracemalloc  # noqa: PLC0415 - absent on PyPy; probed here
        except ImportError:
            self._tracemalloc = None
            self.bound = 64 << 20
            self._start_rss = self._max_rss()
        else:
            self._tracemalloc = tracemalloc
            self.bound = 4 << 20
            tracemalloc.start()

    @staticmethod
    def _max_rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def peak(self) -> int:
        if self._tracemalloc is not None:
            return int(self._tracemalloc.get_traced_memory()[1])
        return self._max_rss() - self._start_rss

    def stop(self) -> None:
        if self._tracemalloc is not None:
            self._tracemalloc.stop()
