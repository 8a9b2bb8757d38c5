"""Lifecycle events, the stats snapshot, and observers."""

from __future__ import annotations

import doctest
import logging
import socket
import threading

import pytest
from conftest import held_clients, held_handler, wait_until

import pyserve
import pyserve.lifecycle.events
from pyserve.testing import serving

DEADLINE = 10.0


class Echo(pyserve.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(100)
        if data == b"boom":
            raise RuntimeError("boom")
        self.request.sendall(data)


class Recorder:
    def __init__(self) -> None:
        self.events: list[pyserve.ServerEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: pyserve.ServerEvent) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]


def exchange(server, payload: bytes) -> bytes:
    with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
        client.sendall(payload)
        return client.recv(100)


@pytest.mark.parametrize(
    "server_class",
    [pyserve.TCPServer, pyserve.ThreadingTCPServer, pyserve.ThreadPoolTCPServer],
    ids=lambda c: c.__name__,
)
def test_one_request_emits_accepted_started_finished_in_order(server_class) -> None:
    recorder = Recorder()
    server = server_class(("127.0.0.1", 0), Echo)
    server.add_observer(recorder)
    with serving(server):
        assert exchange(server, b"hi") == b"hi"
        wait_until(lambda: len(recorder.kinds()) == 3)
    assert recorder.kinds() == [pyserve.ACCEPTED, pyserve.STARTED, pyserve.FINISHED]
    accepted, started, finished = recorder.events
    assert started.request_id == finished.request_id is not None
    assert accepted.client_address == finished.client_address
    assert accepted.monotonic <= started.monotonic <= finished.monotonic


def test_a_raising_handler_emits_errored_with_the_reason(caplog) -> None:
    recorder = Recorder()
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)
    server.add_observer(recorder)
    with serving(server), caplog.at_level(logging.CRITICAL, logger="pyserve"):
        assert exchange(server, b"boom") == b""
        wait_until(lambda: pyserve.ERRORED in recorder.kinds())
    (errored,) = [e for e in recorder.events if e.kind == pyserve.ERRORED]
    assert "boom" in errored.reason
    assert server.stats.errored == 1


def test_a_timed_out_handler_emits_timed_out() -> None:
    class Slow(pyserve.StreamRequestHandler):
        timeout = 0.05

        def handle(self) -> None:
            self.rfile.readline()

    recorder = Recorder()
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    server.add_observer(recorder)
    with serving(server), socket.create_connection(server.server_address, timeout=DEADLINE):
        wait_until(lambda: pyserve.TIMED_OUT in recorder.kinds())
    assert server.stats.timed_out == 1


def test_verify_request_refusal_emits_rejected() -> None:
    class Picky(pyserve.ThreadingTCPServer):
        def verify_request(self, request, client_address) -> bool:
            return False

    recorder = Recorder()
    server = Picky(("127.0.0.1", 0), Echo)
    server.add_observer(recorder)
    with serving(server):
        assert exchange(server, b"hi") == b""
    assert recorder.kinds() == [pyserve.ACCEPTED, pyserve.REJECTED]
    assert recorder.events[1].reason == "verify_request"
    assert server.stats.rejected == 1


def test_drain_emits_drained_with_its_summary() -> None:
    recorder = Recorder()
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.add_observer(recorder)
    with serving(server):
        server.drain(grace=1.0)
    assert recorder.kinds() == [pyserve.DRAINED]
    assert "completed=0 forced=0 stragglers=0" in recorder.events[0].reason


def test_stats_count_active_queued_and_peak() -> None:
    release = threading.Event()

    held = held_handler(release)
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), held, max_workers=2, queue_size=4)
    server.workers_accept = False  # the hand-off mode has a queue to count
    with serving(server):
        with held_clients(server.server_address, 3, release):
            wait_until(lambda: server.stats.accepted == 3)
            stats = server.stats
            assert (stats.active, stats.queued, stats.peak) == (2, 1, 3)
        wait_until(lambda: server.stats.finished == 3)
    stats = server.stats
    assert (stats.active, stats.queued, stats.peak, stats.started) == (0, 0, 3, 3)


def test_a_failing_observer_is_logged_once_and_removed(caplog) -> None:
    calls = []

    def broken(event: pyserve.ServerEvent) -> None:
        calls.append(event)
        raise ValueError("observer bug")

    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.add_observer(broken)
    with serving(server), caplog.at_level(logging.ERROR, logger="pyserve"):
        assert exchange(server, b"a") == b"a"
        assert exchange(server, b"b") == b"b"  # the server goes on
    assert len(calls) == 1
    assert len([r for r in caplog.records if "failed; removed" in r.getMessage()]) == 1


def test_remove_observer_stops_events() -> None:
    recorder = Recorder()
    server = pyserve.TCPServer(("127.0.0.1", 0), Echo)
    server.add_observer(recorder)
    server.remove_observer(recorder)
    with serving(server):
        assert exchange(server, b"x") == b"x"
    assert recorder.kinds() == []


def test_add_observer_refuses_a_non_callable_by_value() -> None:
    with pyserve.TCPServer(("127.0.0.1", 0), Echo) as server, pytest.raises(TypeError, match="42"):
        server.add_observer(42)  # type: ignore[arg-type]


def test_logging_observer_logs_one_line_per_event(caplog) -> None:
    server = pyserve.TCPServer(("127.0.0.1", 0), Echo)
    server.add_observer(pyserve.LoggingObserver())
    with caplog.at_level(logging.INFO, logger="pyserve.events"), serving(server):
        assert exchange(server, b"x") == b"x"
    messages = [r.getMessage() for r in caplog.records if r.name == "pyserve.events"]
    assert [m.split()[0] for m in messages] == ["accepted", "started", "finished"]


def test_events_module_example_runs() -> None:
    failures, tests = doctest.testmod(pyserve.lifecycle.events)
    assert tests > 0
    assert failures == 0
