"""Fault matrix: a thread that cannot start (``RuntimeError: can't start new thread``).

The next ``threading.Thread.start()`` after the server runs raises, as it does when
a process reaches its thread limit. That start is the request's own thread
(threading server), a pool worker (hand-off: the worker that would run the
request; workers accept: the one recruited to the listener) or the multiplexing
server's I/O thread.

The stdlib's threading server raises from ``process_request()``, inside the
loop's ``try``: ``handle_error()`` reports it, ``shutdown_request()`` closes that
connection, and serving goes on. Every strategy must do as well: the error is
reported, the connection closed, no registry entry stays behind, and the next
client is served.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from faults import (
    IMPLEMENTATIONS,
    SERVES,
    STRATEGIES,
    Leaks,
    Running,
    build_server,
    cells,
    client_socket,
    connection_ended,
    outcome_after,
    wait_until,
)

import pyserve

THREADED = ["thread", "pool-handoff", "pool-accept", "multiplex"]


@pytest.fixture
def next_thread_start_fails(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``arm()`` makes the next Thread.start() (in any thread) raise RuntimeError."""
    real_start = threading.Thread.start
    armed = threading.Event()
    lock = threading.Lock()

    def start(thread: threading.Thread) -> None:
        with lock:
            fail = armed.is_set()
            armed.clear()
        if fail:
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    return armed.set


@pytest.mark.parametrize(
    ("impl_name", "strategy_name"),
    [pytest.param(i, s, id=f"{i}-{s}") for i, s in cells(THREADED)],
)
def test_thread_that_cannot_start_is_reported_and_the_next_client_is_served(
    impl_name: str, strategy_name: str, next_thread_start_fails: Any
) -> None:
    leaks = Leaks()
    server = build_server(IMPLEMENTATIONS[impl_name], STRATEGIES[strategy_name])
    running = Running(server)
    try:
        next_thread_start_fails()
        with client_socket() as client:
            client.connect(server.server_address)
            client.sendall(b"first\n")
            outcome = outcome_after(running, client, lambda: server.reported)
            assert outcome == SERVES, f"{outcome} (serve_forever raised {running.error!r})"
            assert any("can't start new thread" in text for text in server.reported), (
                server.reported
            )
            # The request whose thread never started is over: closed, not stranded.
            wait_until(lambda: connection_ended(client), what="the first connection to close")
        if impl_name == "pyserve":
            wait_until(lambda: not server.in_flight(), timeout=5.0, what="no request in flight")
    finally:
        running.stop()
    leaks.check(server)


def test_handoff_pool_worker_that_cannot_start_leaves_no_phantom_request(
    next_thread_start_fails: Any,
) -> None:
    """Bug 6: in the hand-off pool a worker that could not start left the request
    queued in the registry forever: with ``max_connections=1`` every later client
    was refused, and drain() waited on a ghost. The error must be handled (here:
    reported through handle_error, the connection closed), nothing stays in
    flight, the next client is served and a drain finds nothing to wait for."""
    leaks = Leaks()
    server = build_server(
        pyserve, STRATEGIES["pool-handoff"], extra={"max_workers": 1, "max_connections": 1}
    )
    running = Running(server)
    try:
        next_thread_start_fails()
        with client_socket() as client:
            client.connect(server.server_address)
            client.sendall(b"first\n")
            wait_until(lambda: server.reported or connection_ended(client), what="the failure")
        wait_until(lambda: not server.in_flight(), timeout=5.0, what="no request in flight")
        assert outcome_after(running) == SERVES
        report = server.drain(grace=2.0)
        assert report.stragglers == (), report
        assert report.forced == 0, report
    finally:
        running.stop()
    leaks.check(server)
